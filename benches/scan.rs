//! `make bench`, `keygate scan` (SPEC §15): (a) files per second and MB/s over a generated tree of
//! 100,000 files (1–8 KiB of code-like text, a few keys planted), median of 3 runs of
//! target/release/keygate; (b) `keygate scan --git-history` over this repository's own history:
//! commits, unique blobs read, blobs per second (median of 3).
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const FILES: usize = 100_000;
const PLANTED: usize = 7;
const RUNS: usize = 3;

const CONFIG: &str = r#"{"key_sources": [{"header": "x-api-key"}],
  "prefixes": [{"prefix": "sk_live_", "environment": "LIVE"},
               {"prefix": "sk_test_", "environment": "TEST"},
               {"prefix": "mf_", "checksum": "crc32"}], "keys": []}"#;

/// A small deterministic generator: the same tree every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const LINES: [&str; 8] = [
    "    let value = compute(input, &settings)?; // sk_live_... is a placeholder\n",
    "fn handler(req: Request) -> Response { respond(req.path(), 200) }\n",
    "import os, sys  # the API key comes from the environment (sk_test_xxx)\n",
    "const endpoint = `https://api.example.com/v1/orders/${id}?expand=items`;\n",
    "    if risk_level > threshold { alert(\"mf_ score over the limit\"); }\n",
    "SELECT id, name, created_at FROM customers WHERE tenant = $1 ORDER BY id;\n",
    "  - name: keygate\n    image: registry.example.com/keygate:0.1.0\n",
    "# Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n",
];

fn generate(root: &Path) -> (u64, usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut bytes = 0u64;
    let mut planted = 0;
    for i in 0..FILES {
        let dir = root.join(format!("d{:03}/s{:02}", i % 500, (i / 500) % 20));
        if i < 10_000 {
            std::fs::create_dir_all(&dir).expect("dir");
        }
        let size = 1024 + (rng.next() % 7169) as usize;
        let mut text = String::with_capacity(size + 100);
        while text.len() < size {
            text.push_str(LINES[(rng.next() % 8) as usize]);
        }
        if i % (FILES / PLANTED) == 1 && planted < PLANTED {
            let key = keygate_key_service::mint::new_key("sk_live_", false).expect("mint");
            text.push_str(&format!("API_KEY = \"{key}\"\n"));
            planted += 1;
        }
        bytes += text.len() as u64;
        std::fs::write(dir.join(format!("f{i}.rs")), text).expect("write");
    }
    (bytes, planted)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `keygate scan` RUNS times: the median seconds, and the JSON findings of the last run.
fn time_scan(args: &[&str], config: &Path, cwd: &Path) -> (f64, serde_json::Value, String) {
    let mut times = Vec::new();
    let mut last = (serde_json::Value::Null, String::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(common::keygate_bin())
            .args(["scan", "--format", "json"])
            .args(args)
            .env("KEYGATE_CONFIG", config)
            .current_dir(cwd)
            .output()
            .expect("keygate scan");
        times.push(t.elapsed().as_secs_f64());
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        last = (
            serde_json::from_slice(&out.stdout).expect("JSON"),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        );
    }
    (median(times), last.0, last.1)
}

fn main() {
    let dir = common::scratch_dir("bench-scan");
    let config = dir.join("keygate.json");
    std::fs::write(&config, CONFIG).expect("config");
    let tree = dir.join("tree");
    let t = Instant::now();
    let (bytes, planted) = generate(&tree);
    eprintln!(
        "generated {FILES} files ({:.1} MB) in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    // One unmeasured run reads the tree into the page cache.
    let _ = time_scan(&["tree"], &config, &dir);
    let (secs, found, summary) = time_scan(&["tree"], &config, &dir);
    let findings = found["findings"].as_array().map_or(0, Vec::len);
    assert_eq!(findings, planted, "every planted key found, nothing else");

    let repo = common::repo();
    let commits = Command::new("git")
        .args(["rev-list", "--all", "--count"])
        .current_dir(&repo)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let (hsecs, hfound, hsummary) = time_scan(&["--git-history", "."], &config, &repo);
    // "scanned N blobs, … M skipped" from the summary line keygate scan prints on stderr.
    let number_after = |word: &str| -> u64 {
        let words: Vec<&str> = hsummary.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == word)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0)
    };
    let blobs = number_after("scanned");
    let skipped: u64 = hsummary
        .split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&tree);

    println!("\n## keygate scan (benches/scan.rs)\n");
    println!(
        "target/release/keygate, {} CPUs, median of {RUNS} runs (the page cache warm).\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| what | size | seconds | rate | findings |");
    println!("|---|---|---|---|---|");
    println!(
        "| a tree of {FILES} files, 1–8 KiB | {:.1} MB | {secs:.2} | {:.0} files/s, {:.0} MB/s | {findings} (of {planted} planted) |",
        bytes as f64 / 1e6,
        FILES as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    println!(
        "| --git-history of this repository | {commits} commits, {blobs} unique text blobs scanned ({skipped} binary skipped) | {hsecs:.2} | {:.0} blobs/s | {} |",
        blobs as f64 / hsecs,
        hfound["findings"].as_array().map_or(0, Vec::len)
    );
    println!("\nkeygate scan's own summary (last runs): `{summary}`; `{hsummary}`");
}
