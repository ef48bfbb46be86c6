//! `keygate scan` and `keygate rules` (SPEC §15) as a user runs them: target/release/keygate
//! over files and a temporary git repository; the rules loaded by the `regex` crate (RE2
//! semantics, as gitleaks compiles them) and by the real detect-secrets (`make secrets-tools`).
mod common;

use common::service::{Service, ADMIN_TOKEN};
use common::*;
use keygate_key_service::mint::new_key;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIG: &str = r#"{
  "key_sources": [{"header": "x-api-key"}],
  "prefixes": [
    {"prefix": "sk_live_", "environment": "LIVE"},
    {"prefix": "sk_", "environment": "TEST"},
    {"prefix": "mf_", "environment": "LIVE", "checksum": "crc32"}
  ],
  "keys": []
}"#;

fn config(dir: &Path) -> PathBuf {
    let p = dir.join("keygate.json");
    std::fs::write(&p, CONFIG).unwrap();
    p
}

fn keygate(args: &[&str], config: Option<&Path>, cwd: &Path) -> Output {
    let mut cmd = Command::new(keygate_bin());
    cmd.args(args).current_dir(cwd).env_remove("KEYGATE_CONFIG");
    if let Some(c) = config {
        cmd.env("KEYGATE_CONFIG", c);
    }
    cmd.output().expect("run keygate")
}

fn fingerprint(key: &str) -> String {
    keygate::keys::digest_hex(key.as_bytes())
}

/// A checksummed key with its last checksum character changed.
fn bad_checksum(key: &str) -> String {
    let mut k = key.as_bytes().to_vec();
    let last = k.len() - 1;
    k[last] = if k[last] == b'A' { b'B' } else { b'A' };
    String::from_utf8(k).unwrap()
}

/// A tree with two real keys (one checksummed) and every near-miss.
struct Tree {
    dir: PathBuf,
    config: PathBuf,
    live: String,
    crc: String,
}

fn tree(name: &str) -> Tree {
    let dir = scratch_dir(name);
    let config = config(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("deep")).unwrap();
    let live = new_key("sk_live_", false).unwrap();
    let crc = new_key("mf_", true).unwrap();
    let allowed = new_key("sk_live_", false).unwrap();
    std::fs::write(
        src.join("app.py"),
        format!("import os\n\nKEY = \"{live}\"\nOTHER = '{allowed}'  # keygate:allow\n"),
    )
    .unwrap();
    // Git-ignored files are scanned all the same.
    std::fs::write(src.join(".gitignore"), ".env\n").unwrap();
    std::fs::write(src.join("deep/.env"), format!("A=1\nMF_KEY={crc}\n")).unwrap();
    std::fs::write(
        src.join("README.md"),
        format!(
            "Use sk_live_... or sk_live_xxx as placeholders.\nbad: {}\nword: xsk_live_{}\n",
            bad_checksum(&crc),
            &live["sk_live_".len()..]
        ),
    )
    .unwrap();
    // A binary file is skipped, a key in it or not.
    std::fs::write(src.join("blob.bin"), format!("\0\0{live}")).unwrap();
    Tree {
        dir,
        config,
        live,
        crc,
    }
}

fn assert_no_key(out: &Output, keys: &[&str]) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for k in keys {
        assert!(!all.contains(k), "a whole key in the output:\n{all}");
    }
}

#[test]
fn scan_finds_real_keys_and_nothing_else_in_every_format() {
    let t = tree("scan-formats");
    let c = t.config.to_str().unwrap();
    // JSON: exactly the documented shape, sorted by path.
    let out = keygate(
        &["scan", "src", "--format", "json", "--config", c],
        None,
        &t.dir,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_no_key(&out, &[&t.live, &t.crc]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = serde_json::json!({"findings": [
        {"path": "src/app.py", "line": 3, "commit": null, "prefix": "sk_live_",
         "environment": "LIVE", "masked": format!("{}…", &t.live[..12]),
         "fingerprint": fingerprint(&t.live)},
        {"path": "src/deep/.env", "line": 2, "commit": null, "prefix": "mf_",
         "environment": "LIVE", "masked": format!("{}…", &t.crc[..7]),
         "fingerprint": fingerprint(&t.crc)},
    ]});
    assert_eq!(v, want);
    // Field order too.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(r#"{"findings":[{"path":"src/app.py","line":3,"commit":null,"prefix":"sk_live_","environment":"LIVE","masked":"#), "{text}");

    // Text: one line per finding.
    let out = keygate(&["scan", "src"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(1));
    assert_no_key(&out, &[&t.live, &t.crc]);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "src/app.py:3: {}… (LIVE) {}",
                &t.live[..12],
                fingerprint(&t.live)
            ),
            format!(
                "src/deep/.env:2: {}… (LIVE) {}",
                &t.crc[..7],
                fingerprint(&t.crc)
            ),
        ]
    );

    // SARIF 2.1.0.
    let out = keygate(
        &["scan", "src", "--format", "sarif"],
        Some(&t.config),
        &t.dir,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_no_key(&out, &[&t.live, &t.crc]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(
        s["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "keygate");
    assert!(run["tool"]["driver"]["informationUri"].is_string());
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    // Longest prefix first, as the configuration is read.
    assert_eq!(rules, ["keygate/sk_live_", "keygate/sk_", "keygate/mf_"]);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(rules.contains(&r["ruleId"].as_str().unwrap()));
        assert_eq!(r["level"], "error");
        assert!(r["message"]["text"].as_str().unwrap().contains('…'));
        let loc = &r["locations"][0]["physicalLocation"];
        assert!(loc["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("src/"));
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert_eq!(
            r["partialFingerprints"]["keygate/v1"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    assert_eq!(
        results[1]["locations"][0]["physicalLocation"]["region"]["startLine"],
        2
    );
}

#[test]
fn exit_codes() {
    let t = tree("scan-exit");
    let clean = t.dir.join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::write(clean.join("a.txt"), "sk_live_... placeholder only\n").unwrap();
    let out = keygate(&["scan", "clean"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"");
    let out = keygate(
        &["scan", "clean", "--format", "json"],
        Some(&t.config),
        &t.dir,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"findings\":[]}\n");
    // A single file is a path too.
    let out = keygate(&["scan", "src/app.py"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(1));
    // Errors: no configuration, an unreadable or invalid one, a path that is not there, a bad flag.
    let out = keygate(&["scan", "clean"], None, &t.dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = keygate(&["scan", "--config", "missing.json"], None, &t.dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
    std::fs::write(t.dir.join("bad.json"), r#"{"prefixes": [{"prefix": ""}]}"#).unwrap();
    let out = keygate(&["scan", "--config", "bad.json"], None, &t.dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prefixes[0]"),
        "{out:?}"
    );
    std::fs::write(
        t.dir.join("none.json"),
        r#"{"key_sources": [{"header": "x-api-key"}], "keys": []}"#,
    )
    .unwrap();
    let out = keygate(&["scan", "--config", "none.json"], None, &t.dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no prefixes"),
        "{out:?}"
    );
    let out = keygate(&["scan", "nowhere"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(2));
    let out = keygate(&["scan", "--format", "xml"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(2));
    // --git-history outside a repository (scratch directories are inside this one).
    let outside = std::env::temp_dir().join(format!("keygate-scan-norepo-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    let out = Command::new(keygate_bin())
        .args(["scan", "--git-history"])
        .arg(&outside)
        .env("KEYGATE_CONFIG", &t.config)
        .env("GIT_CEILING_DIRECTORIES", std::env::temp_dir())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&outside);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("git"),
        "{out:?}"
    );
}

#[test]
fn symlinks_are_not_followed() {
    let t = tree("scan-links");
    let inside = t.dir.join("linked");
    std::fs::create_dir_all(&inside).unwrap();
    std::os::unix::fs::symlink(t.dir.join("src"), inside.join("to-src")).unwrap();
    std::os::unix::fs::symlink(t.dir.join("src/app.py"), inside.join("app.py")).unwrap();
    let out = keygate(&["scan", "linked"], Some(&t.config), &t.dir);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn history_finds_a_deleted_key_with_its_commit() {
    let base = scratch_dir("scan-history");
    let config = config(&base);
    let repo = base.join("repo");
    std::fs::create_dir_all(repo.join("conf")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let key = new_key("sk_live_", false).unwrap();
    std::fs::write(
        repo.join("conf/settings.ini"),
        format!("[api]\nurl = x\nkey = {key}\n"),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "add key"]);
    let leaked_in = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(
        repo.join("conf/settings.ini"),
        "[api]\nurl = x\nkey = from the environment\n",
    )
    .unwrap();
    git(&repo, &["commit", "-q", "-am", "remove key"]);

    let out = keygate(&["scan", "."], Some(&config), &repo);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = keygate(
        &["scan", "--git-history", "--format", "json"],
        Some(&config),
        &repo,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_no_key(&out, &[&key]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["findings"];
    assert_eq!(f.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(f[0]["commit"], leaked_in.as_str());
    assert_eq!(f[0]["path"], "conf/settings.ini");
    assert_eq!(f[0]["line"], 3);
    assert_eq!(f[0]["fingerprint"], fingerprint(&key));
    // Text and SARIF name the commit too, from a subdirectory of the repository.
    let out = keygate(&["scan", "--git-history", "conf"], Some(&config), &repo);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("conf/settings.ini:3: ")
            && text.trim_end().ends_with(&format!("commit {leaked_in}")),
        "{text}"
    );
    let out = keygate(
        &["scan", "--git-history", "--format", "sarif"],
        Some(&config),
        &repo,
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["runs"][0]["results"][0]["properties"]["commit"],
        leaked_in.as_str()
    );
    assert_no_key(&out, &[&key]);
}

#[test]
fn check_asks_the_key_service_which_keys_are_live() {
    let dir = scratch_dir("scan-check");
    let config = config(&dir);
    let s = Service::on(&format!("sqlite:{}", dir.join("ks.db").display()), &config);
    let (st, body) = s.admin("POST", "/v1/api-keys", Some(r#"{"prefix":"sk_live_"}"#));
    assert_eq!(st, 201, "{body}");
    let known = body["data"]["key"].as_str().unwrap().to_string();
    let unknown = new_key("sk_live_", false).unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), format!("{known}\n{unknown}\n")).unwrap();
    let out = Command::new(keygate_bin())
        .args([
            "scan",
            "src",
            "--check",
            "--format",
            "json",
            "--server",
            &s.url(),
        ])
        .arg("--config")
        .arg(&config)
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_no_key(&out, &[&known, &unknown]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let live: Vec<(u64, bool)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["line"].as_u64().unwrap(), f["live"].as_bool().unwrap()))
        .collect();
    assert_eq!(live, vec![(1, true), (2, false)]);
    // No admin token: an error, not "not live".
    let out = Command::new(keygate_bin())
        .args(["scan", "src", "--check", "--server", &s.url()])
        .arg("--config")
        .arg(&config)
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn check_fails_with_exit_2_when_the_service_cannot_answer() {
    let t = tree("scan-check-down");
    let out = Command::new(keygate_bin())
        .args([
            "scan",
            "src",
            "--check",
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .env("KEYGATE_CONFIG", &t.config)
        .env("KEYGATE_ADMIN_TOKEN", "x")
        .current_dir(&t.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_no_key(&out, &[&t.live, &t.crc]);
}

fn rules(format: &str, config: &Path, dir: &Path) -> String {
    let out = keygate(&["rules", "--format", format], Some(config), dir);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn gitleaks_rules_parse_compile_and_match_samples_only() {
    let dir = scratch_dir("rules-gitleaks");
    let config = config(&dir);
    let text = rules("gitleaks", &config, &dir);
    let doc: toml::Table = text.parse().expect("the gitleaks file is TOML");
    assert!(doc["title"].is_str());
    let rules = doc["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    let allow = &doc["allowlist"];
    assert_eq!(allow["regexTarget"].as_str(), Some("line"));
    assert_eq!(allow["regexes"][0].as_str(), Some("keygate:allow"));
    for (rule, (prefix, crc)) in
        rules
            .iter()
            .zip([("sk_live_", false), ("sk_", false), ("mf_", true)])
    {
        assert!(rule["id"].as_str().unwrap().starts_with("keygate-"));
        assert_eq!(rule["keywords"][0].as_str(), Some(prefix));
        assert_eq!(rule["secretGroup"].as_integer(), Some(1));
        let source = rule["regex"].as_str().unwrap();
        assert!(!source.contains("(?=") && !source.contains("(?!") && !source.contains("(?<"));
        let re = regex::Regex::new(source).expect("an RE2-safe regex");
        // Each minted sample in the file's comments matches as group 1.
        let samples: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#     "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|k| k.starts_with(prefix) && (prefix != "sk_" || !k.starts_with("sk_live_")))
            .collect();
        assert_eq!(samples.len(), 3, "{prefix}");
        for s in &samples {
            let line = format!("token = \"{s}\"");
            assert_eq!(
                re.captures(&line)
                    .and_then(|c| c.get(1))
                    .map(|m| m.as_str()),
                Some(*s)
            );
        }
        let minted = new_key(prefix, crc).unwrap();
        assert!(re.is_match(&format!("x={minted}\n")));
        for miss in [
            format!("{prefix}..."),
            format!("{prefix}xxx"),
            format!("a{minted}"),
        ] {
            assert!(!re.is_match(&miss), "{prefix}: {miss}");
        }
    }
}

#[test]
fn the_rules_file_does_not_trip_keygate_scan() {
    let dir = scratch_dir("rules-self");
    let config = config(&dir);
    std::fs::write(dir.join("gitleaks.toml"), rules("gitleaks", &config, &dir)).unwrap();
    std::fs::write(
        dir.join("plugin.py"),
        rules("detect-secrets", &config, &dir),
    )
    .unwrap();
    let out = keygate(&["scan", "gitleaks.toml", "plugin.py"], Some(&config), &dir);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn detect_secrets_finds_real_keys_with_the_plugin() {
    let ds = repo().join(".venv/bin/detect-secrets");
    assert!(
        ds.exists(),
        "{} is missing: make secrets-tools",
        ds.display()
    );
    let t = tree("rules-detect-secrets");
    let plugin = t.dir.join("keygate_plugin.py");
    std::fs::write(&plugin, rules("detect-secrets", &t.config, &t.dir)).unwrap();
    let mut found: Vec<(String, u64)> = Vec::new();
    for file in ["src/app.py", "src/deep/.env", "src/README.md"] {
        let out = Command::new(&ds)
            .args(["scan", "--plugin"])
            .arg(&plugin)
            .arg(file)
            .current_dir(&t.dir)
            .output()
            .expect("run detect-secrets");
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        for (path, list) in v["results"].as_object().unwrap() {
            for r in list.as_array().unwrap() {
                if r["type"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("keygate API key")
                {
                    found.push((path.clone(), r["line_number"].as_u64().unwrap()));
                    assert!(
                        r["hashed_secret"].is_string(),
                        "detect-secrets reports a hash: {r}"
                    );
                }
            }
        }
    }
    found.sort();
    // The live key (not the keygate:allow one), the checksummed key; not the placeholder, the
    // bad checksum or the key inside a word.
    assert_eq!(
        found,
        vec![
            ("src/app.py".to_string(), 3),
            ("src/deep/.env".to_string(), 2)
        ],
        "{}",
        t.crc
    );
}
