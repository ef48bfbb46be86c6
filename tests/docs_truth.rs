//! The docs tell the truth (issue 21): a metric name or a CLI flag the documentation shows must
//! exist in the code. (Configuration fields and error bodies are held both ways by unit tests
//! beside their code: `config::tests`, `reply::tests`.)
mod common;
use common::repo;

/// Every Markdown file a reader is sent to.
fn docs() -> Vec<(String, String)> {
    let mut out = vec![];
    for name in ["README.md", "ARCHITECTURE.md"] {
        out.push((name.to_string(), read(name)));
    }
    let mut entries: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    entries.sort();
    for p in entries {
        let name = format!(
            "docs/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        );
        out.push((name.clone(), read(&name)));
    }
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// All Rust source of a directory, concatenated.
fn source(dir: &str) -> String {
    let mut out = String::new();
    let mut stack = vec![repo().join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The metric names a table row documents: its Envoy stat names (second cell), or, where those
/// are a wildcard, its Prometheus names (first cell; `_x` replaces the first name's last part).
fn row_metrics(row: &str) -> Vec<String> {
    let cells: Vec<&str> = row.split(" | ").collect();
    let (Some(prom), Some(envoy)) = (cells.first(), cells.get(1)) else {
        return vec![];
    };
    let stats = backticked(envoy);
    if !stats.is_empty() && stats.iter().all(|s| !s.contains('*')) {
        return stats
            .iter()
            .map(|s| {
                let s = s
                    .strip_prefix('…')
                    .map(|rest| format!("wasmcustom.keygate.{rest}"))
                    .unwrap_or_else(|| s.clone());
                let name = s.strip_prefix("wasmcustom.keygate.").unwrap_or(&s);
                // The family: `requests.key_id.<id>` → `requests`, `rejected.reason.…` → `rejected`.
                name.split('.').next().unwrap_or_default().to_string()
            })
            .collect();
    }
    let names = backticked(prom);
    let Some(first) = names
        .first()
        .map(|n| n.trim_start_matches("keygate_").to_string())
    else {
        return vec![];
    };
    let base = first.rsplit_once('_').map_or(first.as_str(), |(b, _)| b);
    names
        .iter()
        .map(|n| match n.strip_prefix('_') {
            Some(rest) => format!("{base}_{rest}"),
            None => n.trim_start_matches("keygate_").to_string(),
        })
        .collect()
}

#[test]
fn every_documented_filter_metric_is_one_the_filter_defines() {
    let ops = read("docs/operations.md");
    let filter = source("src/filter");
    let rows: Vec<&str> = ops
        .lines()
        .filter(|l| l.starts_with("| `keygate_"))
        .collect();
    assert!(rows.len() >= 10, "the metrics table moved: {rows:?}");
    let mut checked = 0;
    for row in rows {
        for name in row_metrics(row) {
            // An operational metric is named by a literal (`event("sync_fetches")`), a usage
            // family by the format that builds it (`keygate.requests.key_id.{id}`).
            let defined = filter.contains(&format!("\"{name}\""))
                || filter.contains(&format!("keygate.{name}."));
            assert!(defined, "docs/operations.md documents metric {name:?}, which src/filter/ never defines\nrow: {row}");
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked}");
}

#[test]
fn every_documented_rate_limit_service_metric_exists() {
    let service = source("crates/rate-limit-service/src");
    let mut checked = 0;
    for (file, text) in docs() {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("keygate_ratelimit_")
                && (word.ends_with("_total") || word.ends_with("_seconds"))
            {
                // Registered under the registry's prefix; counters gain `_total` on export.
                let name = word.trim_start_matches("keygate_ratelimit_");
                let name = name.strip_suffix("_total").unwrap_or(name);
                assert!(
                    service.contains("with_prefix(\"keygate_ratelimit\")")
                        && service.contains(&format!("\"{name}\"")),
                    "{file} documents {word}, which keygate ratelimit does not export"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "{checked}");
}

#[test]
fn every_documented_cli_flag_exists() {
    let cli = source("crates/cli/src")
        + &source("crates/key-service/src")
        + &source("crates/rate-limit-service/src");
    let mut checked = 0;
    for (file, text) in docs() {
        for line in text.lines() {
            // The part of a line that is a keygate command, up to the next command.
            let Some(at) = line.find("keygate ") else {
                continue;
            };
            let command = line[at..]
                .split([';', '|', '#', ')'])
                .next()
                .unwrap_or_default();
            if ![
                "keygate new",
                "keygate hash",
                "keygate check",
                "keygate keys",
                "keygate serve",
                "keygate ratelimit",
            ]
            .iter()
            .any(|c| command.starts_with(c))
            {
                continue;
            }
            for word in command.split([' ', '`', '=', ',', '[', ']']) {
                let Some(flag) = word.strip_prefix("--").filter(|f| {
                    !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                }) else {
                    continue;
                };
                let field = flag.replace('-', "_");
                let defined = cli.contains(&format!("long = \"{flag}\""))
                    || cli.contains(&format!(" {field}: "))
                    || cli.contains(&format!("\"--{flag}\""));
                assert!(defined, "{file} shows `{command}`: the CLI has no --{flag}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked}");
}

/// docs/cli.md's reference of every command and flag is what the binary says of itself
/// (`keygate reference`, clap's definition): it cannot drift. `make cli-docs` rewrites it.
#[test]
fn the_cli_reference_is_the_binarys_own() {
    let out = std::process::Command::new(common::keygate_bin())
        .arg("reference")
        .output()
        .expect("keygate reference");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let doc = read("docs/cli.md");
    let begin = "<!-- keygate reference: begin -->\n";
    let start = doc.find(begin).expect("the reference's begin marker") + begin.len();
    let end = doc
        .find("<!-- keygate reference: end -->")
        .expect("its end marker");
    assert!(
        doc[start..end] == generated,
        "docs/cli.md's reference differs from `keygate reference`: run `make cli-docs`"
    );
    // Every command is in it, and the keys commands' list flags are spelled alike.
    for c in [
        "new",
        "hash",
        "check",
        "serve",
        "ratelimit",
        "keys create",
        "keys update",
        "keys requests",
    ] {
        assert!(generated.contains(&format!("#### `keygate {c}`")), "{c}");
    }
    for flag in [
        "--rate-limit <N/PER>",
        "--allowed-ip <IP_OR_CIDR>",
        "--allowed-path <PATTERN>",
    ] {
        assert_eq!(
            generated.matches(flag).count(),
            2,
            "{flag} in create and update"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_entry_and_uses_metrics_that_exist() {
    let rules = read("ops/prometheus/keygate-alerts.yml");
    let runbook = read("docs/alerts.md");
    let code = source("src/filter") + &source("crates/rate-limit-service/src");
    let service = source("crates/key-service/src");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in &alerts {
        assert!(
            runbook.contains(&format!("\n## {a}\n")),
            "docs/alerts.md has no entry for {a}"
        );
        assert!(
            rules.contains(&format!("docs/alerts.md#{}", a.to_ascii_lowercase())),
            "{a}'s runbook annotation does not point at its entry"
        );
    }
    // Every keygate metric an expression reads is one the filter or the service defines.
    let mut checked = 0;
    let expressions: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for word in expressions.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let Some(name) = word.strip_prefix("keygate_").filter(|n| !n.ends_with('_')) else {
            continue;
        };
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        let defined = if let Some(svc) = name
            .strip_prefix("serve_")
            .and_then(|n| n.strip_suffix("_total"))
        {
            // keygate serve's counters: registered under `keygate_serve` by their base name.
            service.contains(&format!("\"{svc}\""))
        } else if let Some(svc) = name
            .strip_prefix("ratelimit_")
            .filter(|n| n.ends_with("_total") || n.ends_with("_seconds"))
        {
            code.contains(&format!(
                "\"{}\"",
                svc.strip_suffix("_total").unwrap_or(svc)
            ))
        } else {
            code.contains(&format!("\"{name}\"")) || code.contains(&format!("keygate.{name}."))
        };
        assert!(
            defined,
            "the alert rules read keygate_{name}, which no code defines"
        );
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
}

/// Every file or folder the docs name by its path from the repository's root (`src/…`,
/// `crates/…`, `tests/…`, …, in backticks) exists: a move that leaves a doc behind fails here.
#[test]
fn paths_named_in_the_docs_exist() {
    let roots = [
        "src/", "crates/", "tests/", "benches/", "bench/", "envoy/", "ops/", "docs/", "fuzz/",
        "deploy/",
    ];
    let mut missing = vec![];
    for (name, text) in docs() {
        for (i, quoted) in text.split('`').enumerate() {
            // Odd pieces are inside backticks; one token, a path, nothing to expand.
            let path = quoted.split(['#', ' ']).next().unwrap_or("");
            let wild = ['*', '<', '…', '$', '{'].iter().any(|c| path.contains(*c));
            if i % 2 == 1 && !wild && roots.iter().any(|r| path.starts_with(r)) {
                let path = path.trim_end_matches([':', ',', '.']);
                if !repo().join(path).exists() {
                    missing.push(format!("{name}: `{path}`"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths the docs name that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The filter's manifest shows what goes into the `.wasm`: the root package depends on the
/// filter's crates only (the native programs are crates of their own under `crates/`), and
/// every test file is a target of the tests package (Cargo would skip an unlisted one silently).
#[test]
fn manifests_say_what_is_built() {
    let root = read("Cargo.toml");
    let deps: Vec<&str> = section(&root, "[dependencies]")
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        deps,
        ["proxy-wasm", "sha2", "hex", "log"],
        "the filter's [dependencies]"
    );
    assert!(
        !root.contains("[target."),
        "no target-specific sections in the filter's manifest"
    );

    let tests = read("tests/Cargo.toml");
    let mut listed: Vec<String> = tests
        .lines()
        .filter_map(|l| l.strip_prefix("path = \""))
        .filter(|p| !p.starts_with("../"))
        .map(|p| p.trim_end_matches('"').to_string())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(repo().join("tests"))
        .expect("tests/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rs"))
        .collect();
    listed.sort();
    files.sort();
    assert_eq!(listed, files, "tests/Cargo.toml lists every tests/*.rs");
}

/// The lines of a TOML section, up to the next one, without comments and blank lines.
fn section<'a>(toml: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    toml.lines()
        .skip_while(move |l| l.trim() != name)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}
