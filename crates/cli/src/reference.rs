//! `keygate reference` (hidden): every command and flag as Markdown, read from the CLI's own
//! definition (clap), so that the reference in docs/cli.md cannot drift from the binary
//! (`make cli-docs` writes it there; tests/docs_truth.rs compares).

use clap::{Arg, ArgAction, Command};

/// One line of help: the first paragraph, on one line, with `|` escaped for a table.
fn help(a: Option<String>) -> String {
    a.unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn spelling(a: &Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_ascii_uppercase());
    let takes_value = matches!(a.get_action(), ArgAction::Set | ArgAction::Append);
    match a.get_long() {
        Some(long) if takes_value => format!("`--{long} <{value}>`"),
        Some(long) => format!("`--{long}`"),
        None => format!("`<{value}>`"),
    }
}

fn notes(a: &Arg) -> String {
    let mut n = Vec::new();
    if matches!(a.get_action(), ArgAction::Append) {
        n.push("repeatable".to_string());
    }
    if a.is_required_set() {
        n.push("required".to_string());
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        n.push(format!("default `{}`", defaults.join(",")));
    }
    if let Some(env) = a.get_env() {
        n.push(format!("env `{}`", env.to_string_lossy()));
    }
    n.join("; ")
}

fn command(out: &mut String, c: &Command, path: &str) {
    let name = format!("{path} {}", c.get_name());
    let name = name.trim();
    let args: Vec<&Arg> = c
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let subs: Vec<&Command> = c
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if path.is_empty() {
        // The program itself: its subcommands below.
    } else {
        out.push_str(&format!(
            "\n#### `{name}`\n\n{}\n",
            help(c.get_about().map(|s| s.to_string()))
        ));
        if !args.is_empty() {
            out.push_str("\n| argument | what | notes |\n|---|---|---|\n");
            for a in &args {
                out.push_str(&format!(
                    "| {} | {} | {} |\n",
                    spelling(a),
                    help(a.get_help().map(|s| s.to_string())),
                    notes(a)
                ));
            }
        }
    }
    for s in subs {
        command(out, s, name);
    }
}

/// The reference, Markdown.
pub fn markdown(c: &Command) -> String {
    let mut out = String::new();
    command(&mut out, c, "");
    out.trim_start_matches('\n').to_string()
}
