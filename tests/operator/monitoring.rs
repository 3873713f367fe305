//! The chart's alerts and dashboard name only metrics the operator really exposes: a running
//! operator is scraped after an approval (with a rejected code first), a rotation, an
//! AssumeRole and a reconcile error, so that labelled counters have series too (an empty
//! family is not exposed at all); every metric name in the PrometheusRule (default
//! values) and in the dashboard JSON must be among the scraped ones. Renaming a metric in the
//! operator, or mistyping one in the chart, fails here.

#[path = "../support/tools.rs"]
mod tools;

use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Metric names a scrape exposes: every sample's name, and for every family (`# TYPE`) the
/// names its samples take.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test]
async fn alerts_and_dashboard_use_only_metrics_the_operator_exposes() -> anyhow::Result<()> {
    // 12 s sessions: a rotation within seconds.
    let World {
        ns, sts, op, user, ..
    } = World::start(
        "monitoring",
        Some(Duration::from_secs(12)),
        CodePolicy::AcceptAny,
    )
    .await?;
    sts.set_rejected_codes(["111111"]);
    ns.create_session("auto", source_spec(json!({}))).await?;
    ns.create_session(
        "mfa",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    // A SessionToken whose source Secret is missing: a failure (not a STS call).
    ns.create_session(
        "broken",
        json!({"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "no-such-secret"}}}),
    )
    .await?;
    // A rotation.
    eventually(Duration::from_secs(60), "a rotation of `auto`", || async {
        let st = ns.session("auto").await?;
        Ok((st.status.as_ref().is_some_and(|s| s.rotations >= 2)).then_some(()))
    })
    .await?;
    // Longer sessions from here on (AssumeRole needs 15 minutes of session left).
    sts.set_returned_lifetime(None);
    // An AssumeRole (spec.assumeRole) with the session.
    let role = sts.add_role(testkit::sts_double::RoleSpec::named("deployer"));
    ns.create_session(
        "role",
        source_spec(json!({"assumeRole": {"roleArn": role.arn}})),
    )
    .await?;
    // A Secret the API server refuses (an invalid label): a reconcile error, SecretWrite.
    ns.create_session(
        "bad-label",
        source_spec(json!({"secret": {"labels": {"bad key!": "x"}}})),
    )
    .await?;
    wait_condition(&ns, "role", "RoleAssumed", "True", "Assumed", T).await?;
    wait_condition(&ns, "bad-label", "Ready", "False", "SecretWriteFailed", T).await?;
    // An approval refused by STS, then one that works.
    wait_condition(&ns, "mfa", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("mfa", "111111", "tester").await?;
    wait_condition(&ns, "mfa", "Issuing", "False", "TokenCodeRejected", T).await?;
    ns.approve("mfa", "222222", "tester").await?;
    wait_condition(&ns, "mfa", "Ready", "True", "Issued", T).await?;
    // An AssumedRole drawing on the approved session: its series.
    let ar: sts_session_operator::crd::AssumedRole = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
        "metadata": {"name": "drawn"},
        "spec": {"sessionTokenRef": {"name": "mfa"}, "roleArn": role.arn},
    }))?;
    let roles: kube::Api<sts_session_operator::crd::AssumedRole> =
        kube::Api::namespaced(ns.client.clone(), &ns.name);
    roles.create(&PostParams::default(), &ar).await?;
    eventually(T, "AssumedRole drawn Ready", || async {
        let ar = roles.get("drawn").await?;
        Ok(ar
            .condition("Ready")
            .is_some_and(|c| c.status == "True")
            .then_some(()))
    })
    .await?;

    let metrics = op.metrics().await?;
    let body = metrics.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let exposed = exposed_names(body);
    for must in [
        "sts_session_expiration_timestamp_seconds",
        "sts_session_sts_calls_total",
        "sts_session_reconcile_duration_seconds_bucket",
    ] {
        anyhow::ensure!(exposed.contains(must), "the scrape lacks {must}:\n{body}");
    }
    // Series that only appear after events did appear.
    for series in [
        r#"sts_session_sts_calls_total{outcome="success"}"#,
        r#"sts_session_sts_calls_total{outcome="token_code_rejected"}"#,
        r#"sts_session_assume_role_calls_total{outcome="success"}"#,
        r#"sts_session_reconcile_errors_total{reason="SecretWrite"}"#,
        r#"sts_assumed_role_ready_status{namespace=""#,
        r#"sts_assumed_role_expiration_timestamp_seconds{namespace=""#,
    ] {
        anyhow::ensure!(
            body.contains(series),
            "no {series} after an approval:\n{body}"
        );
    }

    // Prometheus' own series, not the operator's.
    let synthetic = ["up"];
    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (place, expr) in tools::chart_exprs()? {
        for name in tools::metric_names(&expr) {
            used.insert(name.clone());
            if !exposed.contains(&name) && !synthetic.contains(&name.as_str()) {
                unknown.entry(name).or_default().push(place.clone());
            }
        }
    }
    anyhow::ensure!(
        used.len() >= 10,
        "only {} metric names found in the chart: {used:?}",
        used.len()
    );
    anyhow::ensure!(
        unknown.is_empty(),
        "the chart's alerts or dashboard name metrics the operator does not expose:\n{}\nexposed: {exposed:?}",
        unknown
            .iter()
            .map(|(n, places)| format!("  {n} (in {})", places.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "monitoring: {} metric names in the chart, all exposed by the operator",
        used.len()
    );
    Ok(())
}

/// The check itself fails on a renamed metric (a scrape without it).
#[test]
fn a_renamed_metric_is_caught() -> anyhow::Result<()> {
    let scrape = "# TYPE sts_session_sts_calls counter\nsts_session_sts_calls_total{outcome=\"success\"} 1\n# TYPE sts_session_ready_status gauge\n";
    let exposed = exposed_names(scrape);
    assert!(exposed.contains("sts_session_sts_calls_total"));
    assert!(exposed.contains("sts_session_ready_status"));
    let renamed = exposed_names(&scrape.replace("ready_status", "ready"));
    let names = tools::metric_names("sum(sts_session_ready_status{job=\"j\"})");
    assert!(names.iter().all(|n| exposed.contains(n)));
    assert!(!names.iter().all(|n| renamed.contains(n)));
    Ok(())
}
