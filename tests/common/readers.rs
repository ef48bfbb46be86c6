//! The four ways an upstream reads a request path, each as the segments it serves: a
//! byte-literal router, RFC 3986 dot removal, decode-then-resolve, and `;`-parameter stripping
//! then resolve (Tomcat). Written independently of keygate's canonicalisation, to check it.
#![allow(dead_code)]

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 remove_dot_segments, as segments.
fn resolve(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if i + 1 == segs.len() {
                    out.push(String::new());
                }
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

/// (name, segments) for each kind of reader.
pub fn all(path: &str) -> Vec<(&'static str, Vec<String>)> {
    let stripped: Vec<&str> = path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    vec![
        (
            "byte-literal router",
            path.split('/').skip(1).map(str::to_string).collect(),
        ),
        ("RFC 3986 dot removal", resolve(path)),
        (
            "decode then resolve",
            resolve(&decode(path).replace('\\', "/")),
        ),
        ("`;` stripped then resolved", resolve(&stripped.join("/"))),
    ]
}
