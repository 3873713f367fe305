//! Security: tenants cannot reach each other's Secrets or send keys elsewhere, and no secret
//! value (long-term key, session secret or token, token code) leaves the Secrets it belongs in.

#[path = "../operator/common.rs"]
#[allow(dead_code)] // shared with tests/operator: not every helper is used here
mod common;
#[path = "../support/summary.rs"]
mod summary;

use common::*;
use serde_json::json;
use std::time::Duration;
use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(30);

fn double() -> StsDouble {
    StsDouble::start(StsDoubleConfig { code_policy: CodePolicy::AcceptAny, ..Default::default() }).expect("STS double")
}

fn opts(endpoint: String) -> OperatorOptions {
    OperatorOptions { sts_endpoint: endpoint, extra_args: vec![], leader_election: false, user: OPERATOR_USER }
}

#[tokio::test]
async fn a_session_token_cannot_reach_another_namespaces_secrets_or_send_keys_elsewhere() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let team_a = Ns::new(cp, "tenant-a").await?;
    let team_b = Ns::new(cp, "tenant-b").await?;
    let sts = double();
    let other = double();
    let user = sts.default_user();
    team_a.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key).await?;
    // one operator watching both namespaces (as cluster-wide, the code is what isolates them)
    let mut o = opts(sts.endpoint());
    o.extra_args.push(format!("--namespaces={},{}", team_a.name, team_b.name));
    let _op = Operator::start(cp, &team_b.name, &o).await?;

    // B names A's Secret: it is looked up in B only.
    team_b.create_session("steal", json!({"sourceCredentials": {"secretRef": {"name": "iam-keys"}}})).await?;
    let st = wait_condition(&team_b, "steal", "Ready", "False", "SourceCredentialsMissing", T).await?;
    assert!(condition(&st, "Ready").unwrap().message.contains("not found in this namespace"));

    // Name tricks are refused at apply: names are DNS subdomains, no '/'.
    let tricks = [
        json!({"sourceCredentials": {"secretRef": {"name": format!("../{}/iam-keys", team_a.name)}}}),
        json!({"sourceCredentials": {"secretRef": {"name": format!("{}/iam-keys", team_a.name)}}}),
        json!({"sourceCredentials": {"secretRef": {"name": "iam-keys%2F..%2F"}}}),
        json!({"sourceCredentials": {"secretRef": {"name": "x"}}, "secret": {"name": format!("../../namespaces/{}/secrets/iam-keys", team_a.name)}}),
        json!({"sourceCredentials": {"secretRef": {"name": "x", "namespace": team_a.name}}}),
    ];
    for (i, spec) in tricks.iter().enumerate() {
        let result = team_b.create_session(&format!("trick-{i}"), spec.clone()).await;
        match (i, result) {
            // an unknown field is pruned, not refused: the object exists, but reads B's "x"
            (4, Ok(_)) => {
                let st = wait_condition(&team_b, "trick-4", "Ready", "False", "SourceCredentialsMissing", T).await?;
                assert!(condition(&st, "Ready").unwrap().message.contains("\"x\""));
            }
            (_, Ok(_)) => anyhow::bail!("trick {i} was admitted: {spec}"),
            (_, Err(e)) => assert!(format!("{e:#}").contains("should match"), "trick {i}: {e:#}"),
        }
    }

    // Endpoint tricks: the allow-list (http://127.0.0.1:* here) holds against userinfo, other
    // hosts, paths and schemes; nothing reaches the other STS.
    let port = other.endpoint().rsplit(':').next().unwrap().to_string();
    let endpoints = [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:1@localhost:{port}"),
        format!("http://127.0.0.2:{port}"),
        format!("https://sts.amazonaws.com.127.0.0.1.nip.io:{port}"),
        format!("http://127.0.0.1.nip.io:{port}"),
        format!("ftp://127.0.0.1:{port}"),
    ];
    team_a.create_session("own", json!({"sourceCredentials": {"secretRef": {"name": "iam-keys"}}})).await?;
    wait_condition(&team_a, "own", "Ready", "True", "Issued", T).await?;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let name = format!("ep-{i}");
        team_a
            .create_session(&name, json!({"endpoint": endpoint, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}}))
            .await?;
        wait_condition(&team_a, &name, "Ready", "False", "EndpointNotAllowed", T).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(other.call_count(), 0, "keys were sent to a disallowed endpoint");
    assert_eq!(sts.call_count(), 1, "only the legitimate session reached STS");
    assert!(team_b.secret_data("steal").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn session_tokens_outside_the_watched_namespaces_are_ignored() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let watched = Ns::new(cp, "scoped").await?;
    let ignored = Ns::new(cp, "unscoped").await?;
    let sts = double();
    let user = sts.default_user();
    for ns in [&watched, &ignored] {
        ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key).await?;
        ns.create_session("app", json!({"sourceCredentials": {"secretRef": {"name": "iam-keys"}}})).await?;
    }
    let _op = Operator::start(cp, &watched.name, &opts(sts.endpoint())).await?;
    wait_condition(&watched, "app", "Ready", "True", "Issued", T).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ignored.session("app").await?.status.is_none());
    assert!(ignored.secret_data("app").await?.is_none());
    assert_eq!(sts.call_count(), 1);
    Ok(())
}

#[tokio::test]
async fn no_secret_value_reaches_logs_events_status_or_metrics() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "canary").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        returned_lifetime: Some(Duration::from_secs(6)),
        ..Default::default()
    })?;
    sts.set_rejected_codes(["864202"]);
    let user = sts.default_user();
    // The double's keys are random per run: canaries no text could contain by accident.
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key).await?;
    ns.create_source_secret("wrong-keys", &user.access_key_id, "CANARYwrongSECRETkey0000000000000000000000").await?;
    let op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    ns.create_session("auto", json!({"sourceCredentials": {"secretRef": {"name": "iam-keys"}}})).await?;
    ns.create_session("bad", json!({"sourceCredentials": {"secretRef": {"name": "wrong-keys"}}})).await?;
    ns.create_session("mfa", json!({"mfa": {"serialNumber": user.serial_number().unwrap()}, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}})).await?;
    wait_condition(&ns, "bad", "Ready", "False", "SourceCredentialsInvalid", T).await?;
    let codes = ["975311", "864202", "12ab56", "7531246"];
    ns.approve("mfa", codes[0], "alice").await?;
    wait_condition(&ns, "mfa", "Ready", "True", "Issued", T).await?;
    ns.approve("mfa", codes[1], "alice").await?;
    wait_condition(&ns, "mfa", "Issuing", "False", "TokenCodeRejected", T).await?;
    ns.approve("mfa", codes[2], "alice").await?;
    wait_condition(&ns, "mfa", "Issuing", "False", "InvalidTokenCode", T).await?;
    ns.approve("mfa", codes[3], "alice").await?;
    wait_condition(&ns, "mfa", "Issuing", "False", "InvalidTokenCode", T).await?;
    // let the automatic one rotate a few times (6 s sessions)
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut canaries: Vec<(String, String)> = vec![
        ("long-term secret key".into(), user.secret_access_key.clone()),
        ("wrong secret key".into(), "CANARYwrongSECRETkey0000000000000000000000".into()),
    ];
    for c in codes {
        canaries.push((format!("token code {c}"), c.to_string()));
    }
    for s in sts.issued_sessions() {
        canaries.push(("session secret".into(), s.secret_access_key.clone()));
        canaries.push(("session token".into(), s.session_token.clone()));
    }
    assert!(canaries.len() >= 10, "too few sessions issued to be a fair test: {}", canaries.len());
    let statuses = serde_json::to_string(&ns.sessions().list(&Default::default()).await?.items.iter().map(|s| &s.status).collect::<Vec<_>>())?;
    let events = serde_json::to_string(&ns.events().await?)?;
    let log = op.log();
    assert!(log.contains("DEBUG"), "the operator must run with debug logging for this test");
    let metrics = op.metrics().await?;
    let mut leaks = vec![];
    for (what, text) in [("log", &log), ("events", &events), ("status", &statuses), ("metrics", &metrics)] {
        for (kind, value) in &canaries {
            if text.contains(value.as_str()) {
                leaks.push(format!("{kind} in {what}"));
            }
        }
    }
    println!("canary sweep: {} canaries over {} bytes of logs, events, status and metrics: {} leaks", canaries.len(), log.len() + events.len() + statuses.len() + metrics.len(), leaks.len());
    summary::record("security::canary_sweep", &[("leaks", leaks.len() as u64)]);
    assert!(leaks.is_empty(), "leaks: {leaks:?}");
    Ok(())
}
