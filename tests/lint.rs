//! Linters and rule checks, part of the test command: `helm lint --strict` on the chart,
//! hadolint on the Dockerfile, kube-score on the rendered chart (default values,
//! namespace-scoped, HA) and on `deploy/`, and promtool on the chart's alerts (`check rules`,
//! and `test rules` with tests/fixtures/alerts.test.yaml: series in, alerts out, a firing and a
//! silent case for every alert). Each finding is fixed, or ignored in a checked-in config with a
//! reason: .hadolint.yaml, hack/kube-score-ignore.txt.

#[path = "support/tools.rs"]
mod tools;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use tools::*;

// ---------------------------------------------------------------------------------------------
// helm lint

#[test]
fn helm_lint_strict_passes_for_the_supported_value_sets() -> Result<()> {
    let sets: [(&str, &[&str]); 5] = [
        ("default values", &[]),
        (
            "locked down",
            &[
                "--set",
                "metrics.networkPolicy.enabled=true,metrics.networkPolicy.scraper.namespaceSelector.matchLabels.team=monitoring,rbac.rolloutRestartTargets.namespaces={team-a},replicas=1,leaderElection.enabled=false,strategy.type=Recreate",
            ],
        ),
        (
            "namespace-scoped",
            &["--set", "watchNamespaces={team-a,team-b}"],
        ),
        ("HA", &["--set", "replicas=3"]),
        (
            "monitoring on",
            &[
                "--set",
                "alerts.enabled=true,dashboard.enabled=true,metrics.serviceMonitor.enabled=true",
            ],
        ),
    ];
    for (what, args) in sets {
        let out = run(Command::new(helm()?)
            .args(["lint", "--strict", "--namespace", "ops"])
            .arg(root().join(CHART))
            .args(args))?;
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        ensure!(
            out.status.success(),
            "helm lint --strict ({what}) failed:\n{all}"
        );
        ensure!(
            all.contains("0 chart(s) failed"),
            "helm lint ({what}):\n{all}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hadolint

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() -> Result<()> {
    let out = run(Command::new(hadolint()?)
        .arg("--config")
        .arg(root().join(".hadolint.yaml"))
        .arg(root().join("Dockerfile")))?;
    ensure!(
        out.status.success(),
        "hadolint (config .hadolint.yaml) found:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kube-score

/// The checks hack/kube-score-ignore.txt turns off, each with its reason.
fn kube_score_ignored() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root().join("hack/kube-score-ignore.txt"))?;
    let mut ids = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("hack/kube-score-ignore.txt:{}: `CHECK-ID reason`", n + 1))?;
        ensure!(
            reason.trim().len() >= 20,
            "hack/kube-score-ignore.txt:{}: {id} needs a reason",
            n + 1
        );
        ids.push(id.to_string());
    }
    Ok(ids)
}

fn run_kube_score(what: &str, files: &[std::path::PathBuf]) -> Result<()> {
    let mut cmd = Command::new(kube_score()?);
    cmd.args(["score", "--output-format", "ci", "--exit-one-on-warning"]);
    for id in kube_score_ignored()? {
        if id.starts_with("--") {
            cmd.arg(&id);
        } else {
            cmd.args(["--ignore-test", &id]);
        }
    }
    cmd.args(files);
    let out = run(&mut cmd)?;
    let stdout = text(&out.stdout);
    let findings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[WARNING]") || l.starts_with("[CRITICAL]"))
        .collect();
    ensure!(
        out.status.success() && findings.is_empty(),
        "kube-score on {what} ({}): fix these or ignore them with a reason in hack/kube-score-ignore.txt:\n{}\n{}",
        out.status,
        findings.join("\n"),
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn kube_score_passes_on_the_rendered_chart_and_deploy() -> Result<()> {
    let dir = tempdir()?;
    let sets = [
        ("default values", json!({})),
        (
            "namespace-scoped",
            json!({"watchNamespaces": ["team-a", "team-b"]}),
        ),
        ("HA", json!({"replicas": 3})),
    ];
    for (what, values) in sets {
        let yaml = helm_template("sts-session-operator", "ops", &values, &[])?;
        let file = dir.join("chart.yaml");
        std::fs::write(&file, yaml)?;
        run_kube_score(&format!("the chart ({what})"), &[file])?;
    }
    let mut deploy: Vec<_> = std::fs::read_dir(root().join("deploy"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    deploy.retain(|p| {
        p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
    });
    deploy.sort();
    run_kube_score("deploy/", &deploy)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Alerts: promtool

const ALERT_TESTS: &str = "tests/fixtures/alerts.test.yaml";

#[test]
fn alerts_pass_promtool_check_and_unit_tests() -> Result<()> {
    let rules = alert_rules(&json!({"alerts": {"enabled": true}}))?;
    let dir = tempdir()?;
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&rules)?)?;
    std::fs::copy(root().join(ALERT_TESTS), dir.join("alerts.test.yaml"))?;
    run_ok(
        Command::new(promtool()?)
            .args(["check", "rules"])
            .arg(dir.join("rules.yaml")),
    )
    .context("promtool check rules")?;
    run_ok(
        Command::new(promtool()?)
            .args(["test", "rules"])
            .arg(dir.join("alerts.test.yaml"))
            .current_dir(&dir),
    )
    .context("promtool test rules")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Each alert has a case in the unit tests where it fires and one where it stays silent, a
/// severity, and a runbook_url naming a section of docs/alerts.md that exists.
#[test]
fn every_alert_is_tested_firing_and_silent_and_has_a_runbook() -> Result<()> {
    let rules = alert_rules(&json!({"alerts": {"enabled": true}}))?;
    let mut alerts = BTreeSet::new();
    let docs = std::fs::read_to_string(root().join("docs/alerts.md"))?;
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| github_anchor(l.trim_start_matches('#').trim()))
        .collect();
    for group in rules["groups"].as_array().context("groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts.insert(name.to_string());
            ensure!(
                rule["labels"]["severity"].is_string(),
                "{name}: no severity"
            );
            let runbook = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
            let (page, anchor) = runbook
                .split_once('#')
                .with_context(|| format!("{name}: runbook_url {runbook:?}"))?;
            ensure!(
                page == "docs/alerts.md",
                "{name}: runbook_url {runbook:?} (default values)"
            );
            ensure!(
                anchors.contains(anchor),
                "{name}: docs/alerts.md has no section #{anchor}"
            );
        }
    }
    ensure!(
        alerts.len() >= 9,
        "only {} alerts: {alerts:?}",
        alerts.len()
    );
    let tests: Value = serde_yaml::from_str(&std::fs::read_to_string(root().join(ALERT_TESTS))?)?;
    let mut firing: BTreeMap<String, usize> = BTreeMap::new();
    let mut silent: BTreeMap<String, usize> = BTreeMap::new();
    for t in tests["tests"].as_array().context("tests")? {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().context("alertname")?.to_string();
            let fired = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            *if fired { &mut firing } else { &mut silent }
                .entry(name)
                .or_default() += 1;
        }
    }
    let mut missing = vec![];
    for a in &alerts {
        if !firing.contains_key(a) {
            missing.push(format!("{a}: no firing case"));
        }
        if !silent.contains_key(a) {
            missing.push(format!("{a}: no silent case"));
        }
    }
    for a in firing.keys().chain(silent.keys()) {
        if !alerts.contains(a) {
            missing.push(format!("{a}: tested, but no such alert"));
        }
    }
    if !missing.is_empty() {
        bail!("{ALERT_TESTS}:\n{}", missing.join("\n"));
    }
    Ok(())
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// "auto" renders the PrometheusRule only where the cluster serves its kind; true and false
/// force it; the dashboard ConfigMap only when asked, with the sidecar's label.
#[test]
fn alerts_follow_the_cluster_and_the_values() -> Result<()> {
    let kinds = |values: Value, extra: &[&str]| -> Result<Vec<String>> {
        let yaml = helm_template("sts-session-operator", "ops", &values, extra)?;
        Ok(parse_docs(&yaml)?
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or("").to_string())
            .collect())
    };
    let crd = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"];
    ensure!(!kinds(json!({}), &[])?.contains(&"PrometheusRule".into()));
    ensure!(kinds(json!({}), &crd)?.contains(&"PrometheusRule".into()));
    ensure!(
        !kinds(json!({"alerts": {"enabled": false}}), &crd)?.contains(&"PrometheusRule".into())
    );
    ensure!(kinds(json!({"alerts": {"enabled": true}}), &[])?.contains(&"PrometheusRule".into()));
    // Thresholds and job come from the values.
    let rules = alert_rules(
        &json!({"alerts": {"enabled": true, "awaitingTokenCodeWarning": "1h30m", "job": "my-job"}}),
    )?;
    let text = serde_json::to_string(&rules)?;
    ensure!(
        text.contains("< 5400"),
        "awaitingTokenCodeWarning 1h30m is 5400 s: {text}"
    );
    ensure!(text.contains(r#"job=\"my-job\""#), "{text}");

    ensure!(!kinds(json!({}), &[])?.contains(&"ConfigMap".into()));
    let yaml = helm_template(
        "sts-session-operator",
        "ops",
        &json!({"dashboard": {"enabled": true}}),
        &[],
    )?;
    let docs = parse_docs(&yaml)?;
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .context("no dashboard ConfigMap")?;
    ensure!(cm["metadata"]["labels"]["grafana_dashboard"] == "1");
    let json_text = cm["data"]["sts-session-operator.json"]
        .as_str()
        .context("dashboard data")?;
    let dashboard: Value = serde_json::from_str(json_text).context("the dashboard is JSON")?;
    ensure!(dashboard["uid"] == "sts-session-operator");
    Ok(())
}

/// The name extraction the metric-name test relies on (tests/operator/monitoring.rs).
#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"sum by (job) (increase(sts_session_sts_calls_total{job="j", outcome!~"sts_session_x"}[5m])) > 0 unless on (namespace, name) (sts_session_awaiting_token_code == 1) or absent(up{job=~"$job"} == 1) + process_resident_memory_bytes"#,
    );
    assert_eq!(
        names,
        [
            "sts_session_sts_calls_total",
            "sts_session_awaiting_token_code",
            "up",
            "process_resident_memory_bytes"
        ]
    );
}
