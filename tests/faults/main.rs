//! Faults: the API server and etcd restarting under a running operator, and STS throttling,
//! failing and going away. The operator must converge without a restart of its own, keep its
//! STS calls bounded, and say in its conditions what is happening.

#[path = "../operator/common.rs"]
mod common;
mod crash;
mod shutdown;
#[path = "../support/summary.rs"]
mod summary;

use common::*;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use testkit::control_plane::{ControlPlane, StartOptions};
use testkit::sts_double::{CodePolicy, Fault, FaultKind, StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(30);

fn spec() -> serde_json::Value {
    json!({"durationSeconds": 900, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}})
}

fn opts(endpoint: String) -> OperatorOptions {
    OperatorOptions {
        sts_endpoint: endpoint,
        extra_args: vec![],
        leader_election: true,
        user: OPERATOR_USER,
    }
}

/// Distinct access keys seen in each Secret, sampled until every one has `want` of them or
/// the time runs out; fails if a Secret is ever seen holding expired credentials.
async fn watch_rotations(
    ns: &Ns,
    names: &[String],
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); names.len()];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for (i, name) in names.iter().enumerate() {
            if let Some(d) = ns.secret_data(name).await? {
                let exp: Timestamp = d["AWS_SESSION_EXPIRATION"].parse()?;
                anyhow::ensure!(
                    exp > Timestamp::now() - SignedDuration::from_secs(1),
                    "{name} holds expired credentials"
                );
                seen[i].insert(d["AWS_ACCESS_KEY_ID"].clone());
            }
        }
        if seen.iter().all(|s| s.len() >= want) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "rotations seen: {:?}",
            seen.iter().map(BTreeSet::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn operator_rides_out_an_api_server_and_etcd_restart() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cp = ControlPlane::start_with(StartOptions {
        crds: vec![root.join("crds")],
        ..Default::default()
    })
    .await?;
    cp.apply_yaml_file(root.join("tests/fixtures/operator-rbac.yaml"))
        .await?;
    let ns = Ns::new(&cp, "apirestart").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        returned_lifetime: Some(Duration::from_secs(8)),
        ..Default::default()
    })?;
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let op = Operator::start(&cp, &ns.name, &opts(sts.endpoint())).await?;
    let names: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();
    for name in &names {
        ns.create_session(name, spec()).await?;
    }
    for name in &names {
        wait_condition(&ns, name, "Ready", "True", "Issued", T).await?;
    }

    cp.restart().await?;

    // Still the same process, still rotating, and new objects are seen: the watches came back,
    // soon (their retries are capped at 5 s; kube's default 30 s left this one unseen for more
    // than half a minute once).
    let ns = Ns {
        name: ns.name.clone(),
        client: cp.admin_client().await?,
    };
    let back = tokio::time::Instant::now();
    ns.create_session("after-restart", spec()).await?;
    wait_condition(
        &ns,
        "after-restart",
        "Ready",
        "True",
        "Issued",
        Duration::from_secs(20),
    )
    .await?;
    println!(
        "a SessionToken created right after the API server came back was issued in {:?}",
        back.elapsed()
    );
    watch_rotations(&ns, &names, 3, Duration::from_secs(40)).await?;
    assert!(
        op.process.is_running(),
        "the operator exited:\n{}",
        op.process.log_tail(30)
    );
    summary::record("faults::api_server_restart", &[("restarts", 1)]);
    Ok(())
}

#[tokio::test]
async fn sts_throttling_errors_and_an_outage_are_survived_with_bounded_calls() -> anyhow::Result<()>
{
    let cp = control_plane().await;
    let ns = Ns::new(cp, "stsfaults").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        returned_lifetime: Some(Duration::from_secs(10)),
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let _op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;

    // The first calls fail for sure (throttled, then a 5xx: the test never depends on chance
    // for its point), and after them 30 % of calls: throttled or a 5xx.
    sts.inject_faults(Fault::Next {
        count: 2,
        kind: FaultKind::Throttling,
    });
    sts.inject_faults(Fault::Next {
        count: 2,
        kind: FaultKind::ServiceUnavailable,
    });
    sts.inject_faults(Fault::Random {
        probability: 0.15,
        kind: FaultKind::Throttling,
    });
    sts.inject_faults(Fault::Random {
        probability: 0.15,
        kind: FaultKind::ServiceUnavailable,
    });
    let names: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
    for name in &names {
        ns.create_session(name, spec()).await?;
    }
    watch_rotations(&ns, &names, 3, Duration::from_secs(60)).await?;
    let injected = sts.calls().iter().filter(|c| c.injected).count();
    assert!(
        injected >= 4,
        "only {injected} faults injected: the test proves too little"
    );

    // A full outage: renewals fail, the conditions say so, the Secrets stay until they expire.
    sts.clear_faults();
    let before = sts.call_count();
    sts.inject_faults(Fault::Outage(FaultKind::ServiceUnavailable));
    let outage = Duration::from_secs(15);
    let started = tokio::time::Instant::now();
    let mut saw_failing = false;
    while started.elapsed() < outage {
        for name in &names {
            let st = ns.session(name).await?;
            if cond(&st, "Issuing") == ("False".into(), "StsError".into()) {
                saw_failing = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        saw_failing,
        "no SessionToken reported Issuing=False/StsError during the outage"
    );
    let during = sts.call_count() - before;
    // retry base 1 s doubling to a 4 s cap, 3 SDK attempts per try: at most ~ (15 s / 1 s) * 3
    // per SessionToken even with no backoff at all; with backoff far fewer.
    let per_token = during as f64 / names.len() as f64;
    println!(
        "STS calls during a {}s outage: {during} for {} SessionTokens ({per_token:.1} each)",
        outage.as_secs(),
        names.len()
    );
    assert!(
        per_token <= 24.0,
        "{per_token} calls per SessionToken in {outage:?}: backoff is not working"
    );
    let st = ns.session(&names[0]).await?;
    let status = st.status.clone().unwrap();
    assert!(
        status.failed_attempts >= 1 && status.last_failure.is_some(),
        "{status:?}"
    );

    sts.end_outage();
    for name in &names {
        wait_condition(
            &ns,
            name,
            "Ready",
            "True",
            "Issued",
            Duration::from_secs(20),
        )
        .await?;
        wait_condition(
            &ns,
            name,
            "Issuing",
            "True",
            "Succeeded",
            Duration::from_secs(20),
        )
        .await?;
    }
    watch_rotations(&ns, &names, 2, Duration::from_secs(30)).await?;
    let faults = sts.calls().iter().filter(|c| c.injected).count() as u64;
    let rotations: i64 = ns
        .sessions()
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter_map(|s| s.status.as_ref())
        .map(|s| s.rotations)
        .sum();
    summary::record(
        "faults::sts_faults_and_outage",
        &[("faults", faults), ("rotations", rotations as u64)],
    );
    Ok(())
}
