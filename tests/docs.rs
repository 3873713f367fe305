//! The docs (README.md and docs/*.md) stay in step with what the tests run and what the code
//! offers: no stale command. Checked in every fenced code block and every `inline` command:
//!
//! - `make TARGET` names a Makefile target; `ARGS="--test NAME"` a test target of this crate;
//! - `hack/...` and other repository paths exist; relative links (and their #anchors) resolve;
//! - `kubectl sts SUBCOMMAND` is a subcommand of the plugin, with flags it takes;
//! - `sts-session-operator --flag` and the flags listed in docs/flags.md are the operator's;
//! - commands the tests run verbatim (the table in [`TESTED`]) appear in the docs as written,
//!   and in the test that runs them.

use anyhow::{Context as _, Result, ensure};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every markdown page: README.md and docs/*.md, as (relative path, text).
fn pages() -> Result<Vec<(String, String)>> {
    let mut out = vec![(
        "README.md".to_string(),
        std::fs::read_to_string(root().join("README.md"))?,
    )];
    if let Ok(dir) = std::fs::read_dir(root().join("docs")) {
        let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "md"))
        {
            let rel = f.strip_prefix(root())?.to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&f)?));
        }
    }
    Ok(out)
}

/// Lines of fenced code blocks and inline `code` spans: the commands the docs show.
fn commands(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            let l = line.trim();
            out.push(l.strip_prefix("$ ").unwrap_or(l).to_string());
        } else {
            let mut parts = line.split('`');
            parts.next();
            while let Some(code) = parts.next() {
                out.push(code.to_string());
                parts.next();
            }
        }
    }
    out
}

fn makefile_targets() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("Makefile"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', '.']) && l.contains(':'))
        .map(|l| l.split(':').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty() && !t.contains(' '))
        .collect())
}

/// Test targets: tests/*.rs and tests/*/main.rs.
fn test_targets() -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(root().join("tests"))? {
        let p = e?.path();
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if p.extension().is_some_and(|x| x == "rs") || p.join("main.rs").is_file() {
            out.insert(stem);
        }
    }
    Ok(out)
}

#[test]
fn make_targets_test_names_and_paths_in_the_docs_exist() -> Result<()> {
    let targets = makefile_targets()?;
    let tests = test_targets()?;
    let mut stale = vec![];
    for (page, text) in pages()? {
        for cmd in commands(&text) {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                if *w == "make"
                    && let Some(t) = words
                        .get(i + 1)
                        .filter(|t| !t.starts_with('-') && !t.contains('='))
                    && !targets.contains(*t)
                {
                    stale.push(format!("{page}: `{cmd}`: no make target {t}"));
                }
                // `ARGS="--test faults"`: the value inside the quotes.
                let w = w.rsplit("=\"").next().unwrap_or(w);
                let w = w.trim_matches(|c| matches!(c, '"' | '\'' | '(' | ')' | ',' | ';'));
                if let Some(name) = w
                    .strip_prefix("--test=")
                    .or_else(|| (w == "--test").then(|| words.get(i + 1).copied()).flatten())
                {
                    let name = name.trim_matches(|c| matches!(c, '"' | '\''));
                    if !tests.contains(name) {
                        stale.push(format!("{page}: `{cmd}`: no test target {name}"));
                    }
                }
                for prefix in [
                    "hack/",
                    "tests/",
                    "examples/",
                    "charts/",
                    "deploy/",
                    "crds/",
                    "src/",
                    "docs/",
                ] {
                    // A path of this repository: the word itself, or after `=` / `@` (not inside
                    // a longer path or a URL).
                    let pos = if w.starts_with(prefix) {
                        Some(0)
                    } else {
                        w.find(&format!("={prefix}"))
                            .or_else(|| w.find(&format!("@{prefix}")))
                            .map(|p| p + 1)
                    };
                    if let Some(pos) = pos {
                        let path = &w[pos..];
                        let path = path.trim_end_matches(['.', ':']);
                        if path.contains(['<', '*', '{', '$']) || path.contains("..") {
                            continue;
                        }
                        let path = path.split('#').next().unwrap_or(path);
                        if !root().join(path).exists()
                            && !root().join(path.trim_end_matches('/')).exists()
                        {
                            stale.push(format!("{page}: `{cmd}`: no such path {path}"));
                        }
                    }
                }
            }
        }
    }
    ensure!(
        stale.is_empty(),
        "stale commands in the docs:\n{}",
        stale.join("\n")
    );
    Ok(())
}

/// Relative links between the pages resolve, anchors included.
#[test]
fn links_between_pages_resolve() -> Result<()> {
    let pages = pages()?;
    let anchors = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| {
                l.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    let mut broken = vec![];
    for (page, text) in &pages {
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        let mut rest = text.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let (path, text_of) = if file.is_empty() {
                (PathBuf::from(page), Some(text.clone()))
            } else {
                let p = dir.join(file);
                let t = std::fs::read_to_string(root().join(&p)).ok();
                if !root().join(&p).exists() {
                    broken.push(format!("{page}: ({target}): no {}", p.display()));
                    continue;
                }
                (p, t)
            };
            if !anchor.is_empty()
                && !text_of
                    .as_deref()
                    .map(anchors)
                    .unwrap_or_default()
                    .contains(anchor)
            {
                broken.push(format!(
                    "{page}: ({target}): {} has no #{anchor}",
                    path.display()
                ));
            }
        }
    }
    ensure!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    Ok(())
}

fn help(bin: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("{bin} {args:?}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `kubectl sts SUB --flag` in the docs: SUB is a subcommand and takes the flags.
#[test]
fn plugin_commands_in_the_docs_exist() -> Result<()> {
    let plugin = env!("CARGO_BIN_EXE_kubectl-sts");
    let mut stale = vec![];
    let mut seen = BTreeSet::new();
    for (page, text) in pages()? {
        for cmd in commands(&text) {
            let Some(pos) = cmd.find("kubectl sts ") else {
                continue;
            };
            // Up to a comment or an aside in parentheses.
            let tail = &cmd[pos + "kubectl sts ".len()..];
            let tail = tail.split(" #").next().unwrap_or(tail);
            let tail = tail.split(" (").next().unwrap_or(tail);
            let words: Vec<&str> = tail.split_whitespace().collect();
            let Some(sub) = words
                .first()
                .filter(|s| s.chars().all(|c| c.is_ascii_lowercase()))
            else {
                continue;
            };
            let h = help(plugin, &[sub, "--help"])?;
            if h.contains("unrecognized subcommand") {
                stale.push(format!("{page}: `{cmd}`: no subcommand {sub}"));
                continue;
            }
            seen.insert(sub.to_string());
            for w in &words[1..] {
                if w.starts_with("--") {
                    let flag = w
                        .split('=')
                        .next()
                        .unwrap_or(w)
                        .trim_end_matches([',', ')', '`']);
                    if !h.contains(flag) {
                        stale.push(format!("{page}: `{cmd}`: {sub} takes no {flag}"));
                    }
                }
            }
        }
    }
    ensure!(
        stale.is_empty(),
        "stale plugin commands in the docs:\n{}",
        stale.join("\n")
    );
    for sub in ["approve", "renew", "revoke", "status"] {
        ensure!(
            seen.contains(sub),
            "the docs never show `kubectl sts {sub}`"
        );
    }
    Ok(())
}

/// The operator's flags the docs name (`--flag` next to sts-session-operator, and every
/// `--flag` on the page about flags) are in `sts-session-operator --help`.
#[test]
fn operator_flags_in_the_docs_exist() -> Result<()> {
    let h = help(env!("CARGO_BIN_EXE_sts-session-operator"), &["--help"])?;
    let mut stale = vec![];
    for (page, text) in pages()? {
        let flags_page = page.ends_with("flags.md");
        for cmd in commands(&text) {
            if !(flags_page || cmd.starts_with("sts-session-operator "))
                || !cmd.starts_with("--") && !cmd.contains(" --")
            {
                continue;
            }
            for w in cmd.split_whitespace().filter(|w| w.starts_with("--")) {
                let flag = w
                    .split('=')
                    .next()
                    .unwrap_or(w)
                    .trim_end_matches([',', ')', '.', '`']);
                if flag.len() > 2 && !h.contains(flag) {
                    stale.push(format!("{page}: `{cmd}`: the operator has no {flag}"));
                }
            }
        }
    }
    ensure!(
        stale.is_empty(),
        "stale operator flags in the docs:\n{}",
        stale.join("\n")
    );
    Ok(())
}

/// Commands the tests run as written in the docs: (page, command as in the docs, test file,
/// what that test's source contains when it runs it).
const TESTED: &[(&str, &str, &str, &str)] = &[
    (
        "docs/install.md",
        "kubectl apply -k deploy/",
        "tests/install.rs",
        r#".arg("-k")"#,
    ),
    (
        "docs/install.md",
        "kubectl apply --server-side -k deploy/",
        "tests/install.rs",
        r#""apply", "--server-side", "-k""#,
    ),
    (
        "docs/install.md",
        "bash hack/generate-deploy.sh",
        "tests/install.rs",
        "hack/generate-deploy.sh",
    ),
    (
        "docs/install.md",
        "kubectl apply --server-side -f charts/sts-session-operator/crds/",
        "tests/install.rs",
        "upgrade_from_the_previous_crd",
    ),
    (
        "docs/revocation.md",
        "kubectl sts revoke app -n team-a",
        "tests/operator/plugin.rs",
        r#""revoke""#,
    ),
    (
        "docs/testing.md",
        "make test",
        "hack/test.sh",
        "cargo test --workspace --locked --no-fail-fast",
    ),
];

#[test]
fn commands_the_tests_run_are_shown_as_run() -> Result<()> {
    let pages = pages()?;
    let mut stale = vec![];
    for (page, command, test, needle) in TESTED {
        // Before the split into docs/, the same text lived in README.md.
        let text = pages
            .iter()
            .find(|(p, _)| p == page)
            .or_else(|| pages.iter().find(|(p, _)| p == "README.md"))
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let all_pages: String = pages.iter().map(|(_, t)| t.as_str()).collect();
        if !commands(&text)
            .iter()
            .chain(commands(&all_pages).iter())
            .any(|c| c.contains(command))
        {
            stale.push(format!("{page}: no longer shows `{command}`"));
        }
        let source =
            std::fs::read_to_string(root().join(test)).with_context(|| test.to_string())?;
        if !source.contains(needle) {
            stale.push(format!("{test}: no longer runs `{command}` ({needle:?})"));
        }
    }
    ensure!(
        stale.is_empty(),
        "docs and tests out of step:\n{}",
        stale.join("\n")
    );
    Ok(())
}
