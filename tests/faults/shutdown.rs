//! SIGTERM (a pod deleted, a rolling update) while a token code is in use: the operator
//! finishes what it started — the STS call with the code, the Secret, `Issuing=True` — within
//! its shutdown bound, releases its Lease, and exits. A code spent for nothing (`Interrupted`)
//! is for SIGKILL and crashes only.

use crate::common::*;
use anyhow::{Context as _, ensure};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::time::Duration;
use testkit::sts_double::{CodePolicy, Fault, StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(30);
/// The operator's shutdown bound (`--shutdown-timeout`, default 20 s).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(20);
/// How long the STS double takes to answer.
const STS_DELAY: Duration = Duration::from_secs(3);

#[tokio::test]
async fn sigterm_while_a_code_is_in_use_finishes_the_approval() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "sigterm").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let opts = OperatorOptions {
        sts_endpoint: sts.endpoint(),
        extra_args: vec![],
        leader_election: true,
        user: OPERATOR_USER,
    };
    let op = Operator::start(cp, &ns.name, &opts).await?;
    let serial = user.serial_number().context("an MFA device")?.to_string();
    ns.create_session(
        "app",
        serde_json::json!({"durationSeconds": 900, "mfa": {"serialNumber": serial},
            "sourceCredentials": {"secretRef": {"name": "iam-keys"}}}),
    )
    .await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;

    sts.inject_faults(Fault::Delay(STS_DELAY));
    let code = "424242";
    ns.approve("app", code, "admin").await?;
    // Claimed: the annotation is gone and the claim is on record; the STS call is under way
    // (it takes STS_DELAY).
    let st = wait_condition(&ns, "app", "Issuing", "Unknown", "TokenCodeClaimed", T).await?;
    let claimed_at = condition(&st, "Issuing").unwrap().last_transition_time;
    ensure!(
        !st.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("stssession.dev/token-code"),
        "the code annotation is still there after the claim"
    );
    ensure!(
        sts.uses_of_code(code) == 0,
        "the STS call ended before SIGTERM: the test proves nothing"
    );

    let sent = tokio::time::Instant::now();
    op.process.terminate()?;
    let exit = op.process.wait_timeout(SHUTDOWN_BOUND).await?;
    let took = sent.elapsed();
    println!(
        "SIGTERM while the code was in use: exit {exit:?} after {took:?}; STS saw the code {} time(s)",
        sts.uses_of_code(code)
    );
    let log = op.log();
    ensure!(
        exit.is_some(),
        "the operator did not exit within {SHUTDOWN_BOUND:?} of SIGTERM:\n{}",
        op.process.log_tail(20)
    );
    ensure!(
        !log.contains("panicked at"),
        "the operator panicked:\n{}",
        op.process.log_tail(30)
    );
    ensure!(
        exit.unwrap().success(),
        "the operator's exit after SIGTERM was not a success: {exit:?}\n{}",
        op.process.log_tail(20)
    );

    // Read from the API directly, the operator gone: the approval was finished.
    let st = ns.session("app").await?;
    let issuing = cond(&st, "Issuing");
    ensure!(
        issuing == ("True".into(), "Succeeded".into()),
        "after SIGTERM Issuing is {issuing:?}, not True/Succeeded: the operator dropped the approval it was working on:\n{}",
        op.process.log_tail(20)
    );
    let data = ns
        .secret_data("app")
        .await?
        .context("no Secret app after SIGTERM")?;
    let key = &data["AWS_ACCESS_KEY_ID"];
    ensure!(
        sts.issued_session(key).is_some(),
        "the Secret does not hold the session STS issued"
    );
    ensure!(
        sts.uses_of_code(code) == 1,
        "STS saw the code {} times",
        sts.uses_of_code(code)
    );
    // The Lease was released: a successor need not wait for it to expire.
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let lease = leases.get("sts-session-operator").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref().is_none_or(str::is_empty),
        "the Lease is still held by {holder:?} after a clean shutdown"
    );

    // A successor sees a finished approval, not an interrupted one, past the claim's deadline
    // (claim + --sts-timeout 5 s + 10 s).
    sts.clear_faults();
    let _next = Operator::start(cp, &ns.name, &opts).await?;
    let deadline = claimed_at + SignedDuration::from_secs(16);
    while Timestamp::now() < deadline {
        let st = ns.session("app").await?;
        let issuing = cond(&st, "Issuing");
        ensure!(
            issuing == ("True".into(), "Succeeded".into()),
            "after a restart Issuing is {issuing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
