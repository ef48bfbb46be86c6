//! `keygate scan --git-history`: every blob reachable in a repository, each read once. `git log
//! --all -m --raw` names the blobs each commit brought in (oldest commit first); each blob is
//! kept with the first commit that brought it in (the one to rewrite), then all of them are read
//! through one `git cat-file --batch`. The log's parsing is pure; the two processes are glue.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// A blob to scan: the commit that first brought it in and its path there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub commit: String,
    pub id: String,
    pub path: String,
}

/// Reads `git log -z --format='commit %H' --raw --no-abbrev --no-renames` output: each added or
/// modified blob (not a deletion, not a submodule), once, with the first commit naming it.
pub fn parse_log(out: &[u8]) -> Vec<Blob> {
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    let mut commit = String::new();
    let mut fields = out.split(|&b| b == 0).map(|t| {
        let t = t.strip_prefix(b"\n").unwrap_or(t);
        String::from_utf8_lossy(t).into_owned()
    });
    while let Some(token) = fields.next() {
        if let Some(c) = token.strip_prefix("commit ") {
            commit = c.trim().to_string();
            continue;
        }
        let Some(meta) = token.strip_prefix(':') else {
            continue;
        };
        let Some(path) = fields.next() else { break };
        // :old_mode new_mode old_id new_id status
        let parts: Vec<&str> = meta.split(' ').collect();
        let [_, new_mode, _, new_id, status] = parts[..] else {
            continue;
        };
        if status.starts_with('D')
            || new_mode == "160000"
            || new_id.bytes().all(|b| b == b'0')
            || commit.is_empty()
        {
            continue;
        }
        if seen.insert(new_id.to_string()) {
            blobs.push(Blob {
                commit: commit.clone(),
                id: new_id.to_string(),
                path,
            });
        }
    }
    blobs
}

fn git_failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("git {what}: {e}")
}

/// Every blob reachable in the repository holding `dir`, oldest commit first.
pub fn blobs(dir: &Path) -> Result<Vec<Blob>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.quotePath=false",
            // The scanned repository's own settings must not run anything (a signature check
            // runs gpg.program).
            "-c",
            "log.showSignature=false",
            "log",
            "--all",
            "-m",
            "-z",
            "--reverse",
            "--format=commit %H",
            "--raw",
            "--no-abbrev",
            "--no-renames",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| git_failed("log (is git installed?)", e))?;
    if !out.status.success() {
        return Err(format!(
            "{}: not a git repository with history, or git failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_log(&out.stdout))
}

/// Reads each blob once through `git cat-file --batch`, calling `each(index, contents)`;
/// blobs over `max_size` bytes are read past, `each` not called.
pub fn read_blobs(
    dir: &Path,
    blobs: &[Blob],
    max_size: u64,
    mut each: impl FnMut(usize, &[u8]),
) -> Result<(), String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| git_failed("cat-file", e))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("git cat-file: no pipes".into());
    };
    let ids: Vec<String> = blobs.iter().map(|b| b.id.clone()).collect();
    // The ids go in from a thread while the answers are read here: neither pipe fills up.
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(&mut stdin);
        for id in ids {
            writeln!(w, "{id}")?;
        }
        w.flush()
    });
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut header = Vec::new();
    let mut data = Vec::new();
    let mut result = Ok(());
    for (index, blob) in blobs.iter().enumerate() {
        header.clear();
        if let Err(e) = reader.read_until(b'\n', &mut header) {
            result = Err(git_failed("cat-file", e));
            break;
        }
        let line = String::from_utf8_lossy(&header);
        let parts: Vec<&str> = line.split_whitespace().collect();
        let size = match parts[..] {
            [_, "blob", size] => size.parse::<u64>().ok(),
            _ => None,
        };
        let Some(size) = size else {
            result = Err(format!(
                "git cat-file: unexpected answer for {}: {:?}",
                blob.id,
                line.trim()
            ));
            break;
        };
        if size > max_size {
            let skipped = std::io::copy(&mut (&mut reader).take(size + 1), &mut std::io::sink());
            if let Err(e) = skipped {
                result = Err(git_failed("cat-file", e));
                break;
            }
            continue;
        }
        data.clear();
        if let Err(e) = (&mut reader).take(size + 1).read_to_end(&mut data) {
            result = Err(git_failed("cat-file", e));
            break;
        }
        if data.len() as u64 != size + 1 {
            result = Err("git cat-file: its answer ended early".into());
            break;
        }
        data.pop();
        each(index, &data);
    }
    drop(reader);
    let written = writer.join();
    let status = child.wait().map_err(|e| git_failed("cat-file", e))?;
    result?;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(git_failed("cat-file", e)),
        Err(_) => return Err("git cat-file: the writer thread failed".into()),
    }
    if !status.success() {
        return Err(format!("git cat-file exited with {status}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gives_each_blob_once_with_its_first_commit() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let z = "0".repeat(40);
        let log = format!(
            "commit c1\0\n:000000 100644 {z} {a} A\0.env\0:000000 160000 {z} {c} A\0sub\0\
             commit c2\0\n:100644 100644 {a} {b} M\0.env\0:000000 100644 {z} {a} A\0copy of .env\0\
             commit c3\0\n:100644 000000 {b} {z} D\0.env\0"
        );
        assert_eq!(
            parse_log(log.as_bytes()),
            vec![
                Blob {
                    commit: "c1".into(),
                    id: a.clone(),
                    path: ".env".into()
                },
                Blob {
                    commit: "c2".into(),
                    id: b,
                    path: ".env".into()
                },
            ]
        );
    }
}
