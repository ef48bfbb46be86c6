//! `keygate scan` (SPEC §15): keys of the configured prefixes in files, or in every blob of a
//! git repository's history. The matching, masking and formats are pure ([`matcher`],
//! [`output`], [`history::parse_log`]); walking the tree, the git processes and the key
//! service's `--check` are the glue here.

pub mod history;
pub mod matcher;
pub mod output;

use matcher::{looks_binary, Matcher};
use output::Finding;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Files (and blobs) larger than this are skipped.
pub const MAX_FILE: u64 = 50 << 20;

/// Fingerprints per `/v1/leaks/check` call at most.
pub const CHECK_BATCH: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

pub struct Options {
    pub paths: Vec<PathBuf>,
    pub git_history: bool,
    pub format: Format,
    /// With `--check`: the key service's URL.
    pub check: Option<String>,
}

/// What was read: files (or blobs), bytes, and what was skipped.
#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    unreadable: AtomicU64,
}

/// Runs the scan: `Ok(true)` when nothing was found (exit 0), `Ok(false)` when keys were
/// found (exit 1), `Err` for exit 2.
pub fn run(matcher: &Matcher, opts: Options) -> Result<bool, String> {
    let started = Instant::now();
    let counts = Counts::default();
    let mut paths = opts.paths.clone();
    if paths.is_empty() {
        paths.push(PathBuf::from("."));
    }
    for p in &paths {
        if std::fs::symlink_metadata(p).is_err() {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    let mut findings = if opts.git_history {
        let mut all = Vec::new();
        for p in &paths {
            all.extend(scan_history(matcher, p, &counts)?);
        }
        all
    } else {
        scan_tree(matcher, &paths, &counts)
    };
    output::sort(&mut findings);
    if let Some(server) = &opts.check {
        check_live(server, &mut findings)?;
    }
    let out = match opts.format {
        Format::Text => output::text(&findings),
        Format::Json => format!("{}\n", output::json(&findings)),
        Format::Sarif => format!(
            "{}\n",
            serde_json::to_string_pretty(&output::sarif(&findings, matcher.patterns()))
                .unwrap_or_default()
        ),
    };
    print!("{out}");
    let secs = started.elapsed().as_secs_f64();
    let files = counts.files.load(Ordering::Relaxed);
    let bytes = counts.bytes.load(Ordering::Relaxed);
    eprintln!(
        "keygate scan: scanned {files} {}, {:.1} MB in {secs:.2} s ({:.0}/s); {} skipped (binary or over 50 MiB){}; {} {}",
        if opts.git_history { "blobs" } else { "files" },
        bytes as f64 / 1e6,
        files as f64 / secs.max(1e-9),
        counts.skipped.load(Ordering::Relaxed),
        match counts.unreadable.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} unreadable"),
        },
        findings.len(),
        if findings.len() == 1 { "key found" } else { "keys found" },
    );
    Ok(findings.is_empty())
}

/// The findings of one buffer.
fn findings_in(matcher: &Matcher, data: &[u8], path: &str, commit: Option<&str>) -> Vec<Finding> {
    matcher
        .find(data)
        .into_iter()
        .map(|h| {
            let p = &matcher.patterns()[h.pattern];
            Finding {
                path: path.to_string(),
                line: h.line,
                commit: commit.map(str::to_string),
                prefix: p.prefix.clone(),
                environment: p.environment.clone(),
                masked: h.masked,
                fingerprint: h.fingerprint,
                live: None,
            }
        })
        .collect()
}

/// A path as shown: `/` separators, without a leading `./`.
fn shown(path: &Path) -> String {
    let s = path.to_string_lossy();
    let s = s.strip_prefix("./").unwrap_or(&s);
    s.to_string()
}

/// Reads a regular file unless it is too large or looks binary.
fn read_file(path: &Path, counts: &Counts) -> Option<Vec<u8>> {
    let Ok(mut file) = std::fs::File::open(path) else {
        counts.unreadable.fetch_add(1, Ordering::Relaxed);
        eprintln!("keygate scan: {}: cannot be read", path.display());
        return None;
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE {
        counts.skipped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let mut data = Vec::with_capacity(size as usize + 1);
    if (&mut file)
        .take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .is_err()
    {
        counts.unreadable.fetch_add(1, Ordering::Relaxed);
        eprintln!("keygate scan: {}: cannot be read", path.display());
        return None;
    }
    if data.len() as u64 > MAX_FILE || looks_binary(&data) {
        counts.skipped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    counts.files.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    Some(data)
}

/// Walks the paths in parallel: no ignore files honoured (a git-ignored `.env` is where keys
/// leak), hidden files included, `.git` directories skipped, symlinks never followed.
fn scan_tree(matcher: &Matcher, paths: &[PathBuf], counts: &Counts) -> Vec<Finding> {
    let Some((first, rest)) = paths.split_first() else {
        return vec![];
    };
    let mut builder = ignore::WalkBuilder::new(first);
    for p in rest {
        builder.add(p);
    }
    builder
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git");
    let found = Mutex::new(Vec::new());
    builder.build_parallel().run(|| {
        let found = &found;
        Box::new(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    counts.unreadable.fetch_add(1, Ordering::Relaxed);
                    eprintln!("keygate scan: {e}");
                    return ignore::WalkState::Continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return ignore::WalkState::Continue;
            }
            if let Some(data) = read_file(entry.path(), counts) {
                let hits = findings_in(matcher, &data, &shown(entry.path()), None);
                if !hits.is_empty() {
                    if let Ok(mut f) = found.lock() {
                        f.extend(hits);
                    }
                }
            }
            ignore::WalkState::Continue
        })
    });
    found.into_inner().unwrap_or_default()
}

/// Every blob reachable in the repository holding `dir`.
fn scan_history(matcher: &Matcher, dir: &Path, counts: &Counts) -> Result<Vec<Finding>, String> {
    let dir = if dir.is_dir() {
        dir
    } else {
        dir.parent().unwrap_or(Path::new("."))
    };
    let blobs = history::blobs(dir)?;
    let mut found = Vec::new();
    let mut read = 0u64;
    history::read_blobs(dir, &blobs, MAX_FILE, |i, data| {
        read += 1;
        if looks_binary(data) {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counts.files.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let b = &blobs[i];
        found.extend(findings_in(matcher, data, &b.path, Some(&b.commit)));
    })?;
    // The blobs over MAX_FILE were read past.
    counts
        .skipped
        .fetch_add(blobs.len() as u64 - read, Ordering::Relaxed);
    Ok(found)
}

/// `--check`: which fingerprints the key service knows as live keys. Only digests travel.
fn check_live(server: &str, findings: &mut [Finding]) -> Result<(), String> {
    let mut unique: Vec<String> = findings.iter().map(|f| f.fingerprint.clone()).collect();
    unique.sort();
    unique.dedup();
    let mut live = std::collections::HashMap::new();
    for chunk in unique.chunks(CHECK_BATCH) {
        let answer = crate::client::call(
            server,
            "POST",
            "/v1/leaks/check",
            Some(&json!({ "fingerprints": chunk })),
        )
        .map_err(|e| format!("--check: {}", e.message()))?;
        read_check_answer(&answer, &mut live)?;
    }
    for f in findings.iter_mut() {
        f.live = Some(live.get(&f.fingerprint).copied().unwrap_or(false));
    }
    Ok(())
}

/// `{"success":true,"data":[{"fingerprint","live"}…]}` into `live`.
fn read_check_answer(
    answer: &Value,
    live: &mut std::collections::HashMap<String, bool>,
) -> Result<(), String> {
    let bad = || {
        "--check: the key service's answer to /v1/leaks/check is not the documented one".to_string()
    };
    let list = answer["data"].as_array().ok_or_else(bad)?;
    for item in list {
        let (Some(fp), Some(l)) = (item["fingerprint"].as_str(), item["live"].as_bool()) else {
            return Err(bad());
        };
        live.insert(fp.to_string(), l);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_answer_is_read_strictly() {
        let mut live = std::collections::HashMap::new();
        let ok = json!({"success": true, "data": [{"fingerprint": "ab", "live": true}]});
        read_check_answer(&ok, &mut live).unwrap();
        assert_eq!(live.get("ab"), Some(&true));
        let bad = json!({"success": true, "data": [{"fingerprint": "ab"}]});
        assert!(read_check_answer(&bad, &mut live).is_err());
        assert!(read_check_answer(&json!({"success": true}), &mut live).is_err());
    }

    #[test]
    fn shown_paths_drop_a_leading_dot_slash() {
        assert_eq!(shown(Path::new("./a/b")), "a/b");
        assert_eq!(shown(Path::new("a/b")), "a/b");
    }
}
