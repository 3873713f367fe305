//! End-to-end tests of the operator against the real kube-apiserver (+ kube-controller-manager
//! for garbage collection), the STS test double and moto. The operator runs as its own binary,
//! as the `sts-operator` identity, so its API writes can be counted in the audit log.

mod assume_role;
mod assumed_roles;
mod common;
mod consumers;
mod hardening;
mod monitoring;
mod plugin;

use common::*;
use jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use sts_session_operator::crd::SessionToken;
use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(30);

fn double(lifetime: Option<Duration>, policy: CodePolicy) -> StsDouble {
    StsDouble::start(StsDoubleConfig {
        returned_lifetime: lifetime,
        code_policy: policy,
        ..Default::default()
    })
    .expect("STS double")
}

/// The usual test world: a namespace with the STS double's user's keys in `iam-keys`, and an
/// operator watching that namespace. Bind `op` and `sts`, at least as `op: _op`: fields left
/// to `..` are dropped at once, and with them the operator process or the STS double.
struct World {
    cp: &'static testkit::control_plane::ControlPlane,
    ns: Ns,
    sts: StsDouble,
    user: testkit::sts_double::TestUser,
    op: Operator,
}

impl World {
    async fn start(
        prefix: &str,
        lifetime: Option<Duration>,
        policy: CodePolicy,
    ) -> anyhow::Result<World> {
        let cp = control_plane().await;
        let ns = Ns::new(cp, prefix).await?;
        let sts = double(lifetime, policy);
        let user = sts.default_user();
        ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
            .await?;
        let op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
        Ok(World {
            cp,
            ns,
            sts,
            user,
            op,
        })
    }
}

fn opts(endpoint: String) -> OperatorOptions {
    OperatorOptions {
        sts_endpoint: endpoint,
        extra_args: vec![],
        leader_election: true,
        user: OPERATOR_USER,
    }
}

fn source_spec(extra: serde_json::Value) -> serde_json::Value {
    let mut spec =
        json!({"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

/// Parses an AWS shared-credentials file the way the SDKs read it: sections and `k = v`.
fn parse_credentials_file(
    text: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    let mut section = String::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            out.entry(section.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

#[tokio::test]
async fn a_reconcile_that_panics_is_caught_and_shown_on_that_object_only() -> anyhow::Result<()> {
    // The debug build's fail point (src/reconcile/mod.rs) makes this object's reconcile panic.
    let World {
        ns, op, sts: _sts, ..
    } = World::start("backstop", None, CodePolicy::Totp).await?;
    let mut spec = source_spec(json!({}));
    spec["secret"] = json!({"name": "bad-out"});
    let bad: SessionToken = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": "bad", "annotations": {
            sts_session_operator::reconcile::TEST_PANIC_ANNOTATION: "yes"}},
        "spec": spec,
    }))?;
    ns.sessions()
        .create(&kube::api::PostParams::default(), &bad)
        .await?;
    let st = wait_condition(&ns, "bad", "Ready", "False", "InternalError", T).await?;
    assert!(
        condition(&st, "Ready")
            .unwrap()
            .message
            .contains("internal error")
    );
    // The others are served, by the same process.
    ns.create_session("good", source_spec(json!({}))).await?;
    wait_condition(&ns, "good", "Ready", "True", "Issued", T).await?;
    assert!(op.process.is_running());
    let metrics = op.metrics().await?;
    let panics = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sts_session_reconcile_panics_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(panics >= 1.0, "{metrics}");
    assert!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "InternalError")
    );
    // Retried with backoff, not in a hot loop: a handful of panics in ten seconds.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = op
        .metrics()
        .await?
        .lines()
        .find_map(|l| {
            l.strip_prefix("sts_session_reconcile_panics_total ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(later < panics + 8.0, "{panics} then {later} panics in 10 s");
    // The log names the object and the place, not the panic's message.
    let log = op.log();
    assert!(
        log.contains("a reconcile panicked") && !log.contains("fail point"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn non_mfa_session_is_issued_and_rotates_before_expiry() -> anyhow::Result<()> {
    // STS returns 8 s sessions whatever is asked: renewal (33 % before) comes ~5 s after issue.
    let World { ns, sts, op, .. } =
        World::start("auto", Some(Duration::from_secs(8)), CodePolicy::Totp).await?;
    ns.create_session("app", source_spec(json!({}))).await?;

    let st = wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let status = st.status.clone().unwrap();
    let data = ns.secret_data("app").await?.expect("output Secret");
    let first_key = data["AWS_ACCESS_KEY_ID"].clone();
    assert!(first_key.starts_with("ASIA"), "{first_key}");
    assert_eq!(Some(&first_key), status.access_key_id.as_ref());
    let issued = sts
        .issued_session(&first_key)
        .expect("the double issued this key");
    assert_eq!(data["AWS_SECRET_ACCESS_KEY"], issued.secret_access_key);
    assert_eq!(data["AWS_SESSION_TOKEN"], issued.session_token);
    let expiration: Timestamp = data["AWS_SESSION_EXPIRATION"].parse()?;
    assert_eq!(Some(expiration), status.expiration);
    let creds = parse_credentials_file(&data["credentials"]);
    assert_eq!(creds["default"]["aws_access_key_id"], first_key);
    assert_eq!(
        creds["default"]["aws_secret_access_key"],
        issued.secret_access_key
    );
    assert_eq!(creds["default"]["aws_session_token"], issued.session_token);
    // renewal from the expiration STS returned (8 s), not the 3600 s requested
    let renewal = status.renewal_time.unwrap();
    assert!(
        renewal < expiration && renewal > expiration - SignedDuration::from_secs(8),
        "renewal {renewal} expiration {expiration}"
    );
    assert_eq!(sts.calls()[0].duration_seconds, Some(3600));

    // It rotates by itself, several times, one STS call per rotation, never serving expired keys.
    let mut keys = vec![first_key];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while keys.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} sessions after 40s",
            keys.len()
        );
        if let Some(data) = ns.secret_data("app").await? {
            let exp: Timestamp = data["AWS_SESSION_EXPIRATION"].parse()?;
            assert!(
                exp > Timestamp::now() - SignedDuration::from_millis(500),
                "the Secret holds expired credentials"
            );
            if keys.last() != Some(&data["AWS_ACCESS_KEY_ID"]) {
                keys.push(data["AWS_ACCESS_KEY_ID"].clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = ns.session("app").await?;
    let rotations = st.status.as_ref().unwrap().rotations;
    let gst_calls = sts
        .calls()
        .iter()
        .filter(|c| c.action == "GetSessionToken")
        .count() as i64;
    assert!(rotations >= 4, "rotations {rotations}");
    assert!(
        gst_calls == rotations || gst_calls == rotations + 1,
        "{gst_calls} STS calls for {rotations} rotations"
    );
    assert!(op.process.is_running());
    Ok(())
}

#[tokio::test]
async fn a_far_renewal_waits_in_the_operators_own_timer_and_still_comes() -> anyhow::Result<()> {
    // 75 s sessions renew ~50 s after issue: longer than the 30 s that kube-runtime's scheduler
    // keeps (sts_session_operator::requeue::FAR), so the operator's own timer holds the wait.
    // One operator watches two namespaces (a controller, and a timer table, for each): each
    // renewal must come back to the controller that owns it.
    let lifetime = Duration::from_secs(75);
    assert!(lifetime * 2 / 3 > sts_session_operator::requeue::FAR);
    let cp = control_plane().await;
    let sts = double(Some(lifetime), CodePolicy::Totp);
    let user = sts.default_user();
    let (a, b) = (Ns::new(cp, "far-a").await?, Ns::new(cp, "far-b").await?);
    for ns in [&a, &b] {
        ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
            .await?;
    }
    let mut options = opts(sts.endpoint());
    options.extra_args.push(format!("--namespaces={}", b.name));
    let _op = Operator::start(cp, &a.name, &options).await?;
    let mut first = vec![];
    for ns in [&a, &b] {
        ns.create_session("app", source_spec(json!({}))).await?;
    }
    for ns in [&a, &b] {
        let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
        let status = st.status.unwrap();
        let renewal = status.renewal_time.unwrap();
        let wait = renewal.duration_since(Timestamp::now());
        assert!(
            wait > SignedDuration::from_secs(30),
            "renewal only {wait} away"
        );
        first.push((status.access_key_id.unwrap(), renewal));
    }
    // Nothing before the renewal times...
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(sts.call_count(), 2, "no call long before the renewal time");
    // ...then one rotation each, within a few seconds of its renewal time.
    for (ns, (key, renewal)) in [&a, &b].into_iter().zip(first) {
        let second = eventually(Duration::from_secs(60), "the renewal", || async {
            let st = ns.session("app").await?;
            Ok(st
                .status
                .and_then(|s| s.access_key_id)
                .filter(|k| *k != key))
        })
        .await?;
        let rotated_by = Timestamp::now();
        assert!(
            rotated_by >= renewal && rotated_by <= renewal + SignedDuration::from_secs(5),
            "{}: rotated by {rotated_by}, renewal time {renewal}",
            ns.name
        );
        assert_eq!(
            ns.secret_data("app").await?.unwrap()["AWS_ACCESS_KEY_ID"],
            second
        );
    }
    assert_eq!(sts.call_count(), 4);
    Ok(())
}

#[tokio::test]
async fn moto_accepts_the_operators_signed_calls() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "moto").await?;
    let moto = testkit::moto::Moto::shared().await;
    ns.create_source_secret("iam-keys", moto.access_key_id(), moto.secret_access_key())
        .await?;
    ns.create_source_secret(
        "wrong-keys",
        moto.access_key_id(),
        "not-the-secret-key-0000000000000000000000",
    )
    .await?;
    let _op = Operator::start(cp, &ns.name, &opts(moto.endpoint().to_string())).await?;
    ns.create_session("good", source_spec(json!({}))).await?;
    ns.create_session(
        "bad",
        json!({"durationSeconds": 900, "sourceCredentials": {"secretRef": {"name": "wrong-keys"}}}),
    )
    .await?;
    wait_condition(&ns, "good", "Ready", "True", "Issued", T).await?;
    let data = ns.secret_data("good").await?.expect("Secret");
    assert!(!data["AWS_SESSION_TOKEN"].is_empty());
    // moto checks SigV4 for real: the wrong secret key is refused (SignatureDoesNotMatch; moto
    // 5.2.5's error body is one the SDK reads, unlike the nested <Errors> of earlier 5.2s).
    let st = wait_condition(&ns, "bad", "Ready", "False", "SourceCredentialsInvalid", T).await?;
    let issuing = condition(&st, "Issuing").unwrap();
    assert_eq!(
        (&*issuing.status, &*issuing.reason),
        ("False", "SourceCredentialsInvalid")
    );
    assert!(
        issuing.message.contains("SignatureDoesNotMatch"),
        "{}",
        issuing.message
    );
    assert!(ns.secret_data("bad").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn mfa_session_waits_for_a_code_and_uses_each_code_once() -> anyhow::Result<()> {
    let World {
        ns, sts, user, op, ..
    } = World::start("mfa", None, CodePolicy::Totp).await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;

    // Before approval: AwaitingTokenCode, no Secret, no STS call.
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ns.secret_data("app").await?.is_none());
    assert_eq!(sts.call_count(), 0);

    // A malformed code: dropped, InvalidTokenCode, no STS call.
    ns.approve("app", "12ab5", "alice").await?;
    let st = wait_condition(&ns, "app", "Issuing", "False", "InvalidTokenCode", T).await?;
    assert!(
        !st.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key("stssession.dev/token-code")
    );
    assert_eq!(sts.call_count(), 0);

    // The right code: a session, both annotations gone, lastApproval recorded.
    let code = user.totp_code_now();
    ns.approve("app", &code, "alice").await?;
    let st = wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let annotations = st.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("stssession.dev/token-code"),
        "{annotations:?}"
    );
    assert!(
        !annotations.contains_key("stssession.dev/approved-by"),
        "{annotations:?}"
    );
    let status = st.status.clone().unwrap();
    assert_eq!(
        status
            .last_approval
            .as_ref()
            .unwrap()
            .approved_by
            .as_deref(),
        Some("alice")
    );
    let data = ns.secret_data("app").await?.expect("Secret");
    assert_eq!(
        Some(&data["AWS_ACCESS_KEY_ID"]),
        status.access_key_id.as_ref()
    );
    assert_eq!(sts.uses_of_code(&code), 1);
    let call = &sts.calls()[0];
    assert_eq!(call.serial_number.as_deref(), user.serial_number());
    assert_eq!(call.code_accepted, Some(true));

    // A wrong code: TokenCodeRejected, one STS call, the valid Secret stays, Ready stays True.
    let before = sts.call_count();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    ns.approve("app", wrong, "bob").await?;
    let st = wait_condition(&ns, "app", "Issuing", "False", "TokenCodeRejected", T).await?;
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    assert!(
        !st.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key("stssession.dev/token-code")
    );
    assert_eq!(
        ns.secret_data("app").await?.unwrap(),
        data,
        "a rejected code must not touch the valid Secret"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sts.call_count() - before,
        1,
        "a rejected code is never retried"
    );
    assert_eq!(sts.uses_of_code(wrong), 1);

    let reasons = ns.event_reasons().await?;
    for r in ["InvalidTokenCode", "Issued", "TokenCodeRejected"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    // The code never leaves the annotation: not in status, events, logs or metrics.
    let st_json = serde_json::to_string(&ns.session("app").await?.status)?;
    let events = serde_json::to_string(&ns.events().await?)?;
    let log = op.log();
    let metrics = op.metrics().await?;
    for (what, text) in [
        ("status", &st_json),
        ("events", &events),
        ("log", &log),
        ("metrics", &metrics),
    ] {
        assert!(
            !text.contains(&code),
            "the token code appears in the {what}"
        );
        assert!(
            !text.contains(&user.secret_access_key),
            "the long-term secret key appears in the {what}"
        );
        assert!(
            !text.contains(&data["AWS_SESSION_TOKEN"]),
            "the session token appears in the {what}"
        );
        assert!(
            !text.contains(&data["AWS_SECRET_ACCESS_KEY"]),
            "the session secret appears in the {what}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_old_code_is_dropped_without_an_sts_call() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "oldcode").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    // The code is set while no operator runs, and is older than the 6 s limit when it starts.
    ns.approve("app", "123456", "alice").await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let _op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    let st = wait_condition(&ns, "app", "Issuing", "False", "TokenCodeExpired", T).await?;
    assert_eq!(
        cond(&st, "Ready"),
        ("False".into(), "AwaitingTokenCode".into())
    );
    assert!(
        !st.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key("stssession.dev/token-code")
    );
    assert_eq!(sts.call_count(), 0);
    // (Events follow the status write: not necessarily there the instant the condition is.)
    eventually(T, "a TokenCodeExpired Event", || async {
        Ok(ns
            .event_reasons()
            .await?
            .iter()
            .any(|r| r == "TokenCodeExpired")
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn mfa_session_asks_for_a_code_at_renewal_then_expires() -> anyhow::Result<()> {
    let World {
        ns, sts, user, op, ..
    } = World::start(
        "mfaexp",
        Some(Duration::from_secs(9)),
        CodePolicy::AcceptAny,
    )
    .await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("app", "424242", "alice").await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    // Renewal (~6 s after issue): still Ready, but awaiting a code; repeated events (2 s apart).
    let st = wait_condition(&ns, "app", "Ready", "True", "AwaitingTokenCode", T).await?;
    assert!(st.status.as_ref().unwrap().expiration.unwrap() > Timestamp::now());
    let metrics = op.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sts_session_awaiting_token_code")
                && l.contains(&ns.name)
                && l.trim_end().ends_with(" 1")),
        "{metrics}"
    );
    wait_condition(&ns, "app", "Ready", "False", "Expired", T).await?;
    let events = ns.events().await?;
    let required = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("TokenCodeRequired"))
        .count();
    let series: i32 = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("TokenCodeRequired"))
        .map(|e| e.series.as_ref().map(|s| s.count).unwrap_or(1))
        .sum();
    assert!(
        required >= 1 && series >= 2,
        "TokenCodeRequired should repeat: {required} events, {series} occurrences"
    );
    // (Events are published after the status write that shows the condition.)
    eventually(T, "an Expired Event", || async {
        let reasons = ns.event_reasons().await?;
        Ok(reasons.iter().any(|r| r == "Expired").then_some(()))
    })
    .await?;
    assert_eq!(sts.call_count(), 1, "no STS call without a code");
    Ok(())
}

#[tokio::test]
async fn two_operators_racing_for_one_code_reach_sts_once() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "race").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    sts.inject_faults(testkit::sts_double::Fault::Delay(Duration::from_millis(
        300,
    )));
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let mut o = opts(sts.endpoint());
    o.leader_election = false;
    let _a = Operator::start(cp, &ns.name, &o).await?;
    o.user = "sts-operator-2";
    let _b = Operator::start(cp, &ns.name, &o).await?;
    for i in 0..5 {
        let name = format!("app-{i}");
        ns.create_session(
            &name,
            source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
        )
        .await?;
    }
    for i in 0..5 {
        wait_condition(
            &ns,
            &format!("app-{i}"),
            "Ready",
            "False",
            "AwaitingTokenCode",
            T,
        )
        .await?;
    }
    for i in 0..5 {
        ns.approve(&format!("app-{i}"), &format!("55555{i}"), "alice")
            .await?;
    }
    for i in 0..5 {
        wait_condition(&ns, &format!("app-{i}"), "Ready", "True", "Issued", T).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        assert_eq!(
            sts.uses_of_code(&format!("55555{i}")),
            1,
            "code {i} reached STS more than once"
        );
    }
    assert_eq!(sts.call_count(), 5);
    Ok(())
}

#[tokio::test]
async fn invalid_specs_are_rejected_at_apply() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "schema").await?;
    let cases = [
        (json!({"durationSeconds": 899}), "durationSeconds"),
        (json!({"durationSeconds": 129601}), "durationSeconds"),
        (json!({"durationSeconds": "1h"}), "durationSeconds"),
        (json!({"mfa": {"serialNumber": "short"}}), "serialNumber"),
        (
            json!({"mfa": {"serialNumber": "arn:aws:iam::123456789012:mfa/bad name"}}),
            "serialNumber",
        ),
        (
            json!({"mfa": {"serialNumber": "x".repeat(257)}}),
            "serialNumber",
        ),
        (
            json!({"renewal": {"renewBeforePercentage": 10, "renewBefore": "1h"}}),
            "not both",
        ),
        (
            json!({"renewal": {"renewBeforePercentage": 100}}),
            "renewBeforePercentage",
        ),
        (json!({"renewal": {"renewBefore": "1 hour"}}), "renewBefore"),
        (
            json!({"secret": {"name": "iam-keys"}}),
            "must differ from the source Secret",
        ),
    ];
    for (i, (extra, needle)) in cases.iter().enumerate() {
        let err = ns
            .create_session(&format!("bad-{i}"), source_spec(extra.clone()))
            .await
            .expect_err(&format!("case {i} {extra} was admitted"));
        let text = format!("{err:#}");
        assert!(
            text.contains(needle),
            "case {i}: {text} does not mention {needle}"
        );
    }
    // The output name defaults to the SessionToken's name, so naming it like the source is refused too.
    let err = ns
        .create_session("iam-keys", source_spec(json!({})))
        .await
        .expect_err("same name as the source");
    assert!(format!("{err:#}").contains("must differ from the source Secret"));
    Ok(())
}

#[tokio::test]
async fn a_disallowed_endpoint_sends_nothing() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "endpoint").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    let evil = double(None, CodePolicy::AcceptAny);
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    // the operator allows only http://127.0.0.1:*; localhost is another host name
    let _op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    let evil_endpoint = evil.endpoint().replace("127.0.0.1", "localhost");
    ns.create_session("app", source_spec(json!({"endpoint": evil_endpoint})))
        .await?;
    ns.create_session("mfa", source_spec(json!({"endpoint": evil_endpoint, "mfa": {"serialNumber": user.serial_number().unwrap()}}))).await?;
    let st = wait_condition(&ns, "app", "Ready", "False", "EndpointNotAllowed", T).await?;
    assert!(
        condition(&st, "Ready")
            .unwrap()
            .message
            .contains("not allowed")
    );
    wait_condition(&ns, "mfa", "Ready", "False", "EndpointNotAllowed", T).await?;
    ns.approve("mfa", "123456", "alice").await?;
    wait_condition(&ns, "mfa", "Issuing", "False", "EndpointNotAllowed", T).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(evil.call_count(), 0);
    assert_eq!(sts.call_count(), 0);
    Ok(())
}

#[tokio::test]
async fn source_problems_are_reported_and_session_keys_refused() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "source").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    let user = sts.default_user();
    ns.create_source_secret("session-keys", "ASIAIOSFODNN7EXAMPLE", "x")
        .await?;
    ns.create_source_secret(
        "wrong-secret",
        &user.access_key_id,
        "wrong-secret-key-000000000000000000000000",
    )
    .await?;
    ns.create_source_secret(
        "unknown-key",
        "AKIAUNKNOWNKEY000000",
        "whatever-000000000000000000000000000000",
    )
    .await?;
    let _op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    ns.create_session("missing", source_spec(json!({}))).await?;
    ns.create_session(
        "session",
        json!({"sourceCredentials": {"secretRef": {"name": "session-keys"}}}),
    )
    .await?;
    ns.create_session(
        "wrong",
        json!({"sourceCredentials": {"secretRef": {"name": "wrong-secret"}}}),
    )
    .await?;
    ns.create_session(
        "unknown",
        json!({"sourceCredentials": {"secretRef": {"name": "unknown-key"}}}),
    )
    .await?;
    // STS refuses them: SignatureDoesNotMatch / InvalidClientTokenId -> SourceCredentialsInvalid
    for name in ["wrong", "unknown"] {
        let st = wait_condition(&ns, name, "Ready", "False", "SourceCredentialsInvalid", T).await?;
        assert_eq!(
            cond(&st, "Issuing"),
            ("False".into(), "SourceCredentialsInvalid".into())
        );
        let status = st.status.unwrap();
        assert!(status.failed_attempts >= 1 && status.last_failure.is_some());
    }
    let refused: Vec<_> = sts
        .calls()
        .iter()
        .filter_map(|c| c.outcome.error_code().map(str::to_string))
        .collect();
    assert!(
        refused.contains(&"SignatureDoesNotMatch".to_string())
            && refused.contains(&"InvalidClientTokenId".to_string()),
        "{refused:?}"
    );
    let st = wait_condition(
        &ns,
        "missing",
        "Ready",
        "False",
        "SourceCredentialsMissing",
        T,
    )
    .await?;
    assert!(
        condition(&st, "Ready")
            .unwrap()
            .message
            .contains("iam-keys")
    );
    wait_condition(
        &ns,
        "session",
        "Ready",
        "False",
        "SourceCredentialsInvalid",
        T,
    )
    .await?;
    // the Secret appears: retried (backoff 1 s, capped at 4 s in this test) without a spec change
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let calls_before = sts.calls().iter().filter(|c| c.outcome.is_ok()).count();
    assert_eq!(calls_before, 0);
    wait_condition(
        &ns,
        "missing",
        "Ready",
        "True",
        "Issued",
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(
        sts.calls().iter().filter(|c| c.outcome.is_ok()).count(),
        1,
        "only the good one was issued"
    );
    assert!(
        sts.calls()
            .iter()
            .all(|c| c.access_key_id.as_deref() != Some("ASIAIOSFODNN7EXAMPLE")),
        "session keys reached STS"
    );
    Ok(())
}

#[tokio::test]
async fn secrets_are_garbage_collected_retained_or_left_alone() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "owner").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    // a foreign Secret where one SessionToken wants to write
    let foreign: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken", "labels": {"owner": "someone-else"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "theirs"}
    }))?;
    let foreign = ns
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    let _op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    ns.create_session("owned", source_spec(json!({}))).await?;
    ns.create_session(
        "kept",
        source_spec(json!({"secret": {"retainOnDelete": true, "labels": {"team": "a"}}})),
    )
    .await?;
    ns.create_session("clash", source_spec(json!({"secret": {"name": "taken"}})))
        .await?;
    wait_condition(&ns, "owned", "Ready", "True", "Issued", T).await?;
    wait_condition(&ns, "kept", "Ready", "True", "Issued", T).await?;
    let st = wait_condition(&ns, "clash", "Ready", "False", "SecretConflict", T).await?;
    assert!(condition(&st, "Ready").unwrap().message.contains("taken"));
    let kept = ns.secrets().get("kept").await?;
    assert_eq!(kept.metadata.labels.as_ref().unwrap()["team"], "a");
    assert!(kept.metadata.owner_references.is_none());
    let owned = ns.secrets().get("owned").await?;
    let owner = &owned.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("SessionToken", Some(true))
    );

    for name in ["owned", "kept", "clash"] {
        ns.sessions().delete(name, &DeleteParams::default()).await?;
    }
    eventually(T, "the owned Secret garbage-collected", || async {
        Ok(ns.secrets().get_opt("owned").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        ns.secrets().get_opt("kept").await?.is_some(),
        "retainOnDelete keeps the Secret"
    );
    let after = ns.secrets().get("taken").await?;
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign Secret was written"
    );
    assert_eq!(after.data, foreign.data);
    Ok(())
}

/// A Secret kept with `retainOnDelete` has no owner reference; it is watched by the operator's
/// label all the same: altered or deleted, it is repaired within seconds without MFA, and
/// reported `SecretMissing` at once with MFA (not hours later, at the renewal).
#[tokio::test]
async fn retained_secrets_are_watched_like_owned_ones() -> anyhow::Result<()> {
    const SECONDS: Duration = Duration::from_secs(10);
    // (Bound, not `..`: the operator and the double would be dropped, and stopped, at once.)
    let World {
        ns,
        user,
        op: _op,
        sts: _sts,
        ..
    } = World::start("retained", None, CodePolicy::Totp).await?;
    let retain = json!({"secret": {"retainOnDelete": true}});
    ns.create_session("plain", source_spec(retain.clone()))
        .await?;
    wait_condition(&ns, "plain", "Ready", "True", "Issued", T).await?;
    assert!(
        ns.secrets()
            .get("plain")
            .await?
            .metadata
            .owner_references
            .is_none()
    );
    let holds_its_session =
        |st: SessionToken, data: Option<std::collections::BTreeMap<String, String>>| {
            let key = st.status.and_then(|s| s.access_key_id);
            data.is_some_and(|d| key.is_some() && d.get("AWS_ACCESS_KEY_ID") == key.as_ref())
        };

    // Altered: the keys replaced by someone.
    let tamper = json!({"stringData": {"AWS_ACCESS_KEY_ID": "AKIATAMPERED"}});
    ns.secrets()
        .patch("plain", &PatchParams::default(), &Patch::Merge(&tamper))
        .await?;
    eventually(SECONDS, "the altered retained Secret repaired", || async {
        Ok(
            holds_its_session(ns.session("plain").await?, ns.secret_data("plain").await?)
                .then_some(()),
        )
    })
    .await?;

    // Deleted: issued again.
    let before = ns.session("plain").await?.status.unwrap().rotations;
    ns.secrets()
        .delete("plain", &DeleteParams::default())
        .await?;
    eventually(
        SECONDS,
        "the deleted retained Secret issued again",
        || async {
            let st = ns.session("plain").await?;
            let rotated = st.status.as_ref().is_some_and(|s| s.rotations > before);
            Ok((rotated && holds_its_session(st, ns.secret_data("plain").await?)).then_some(()))
        },
    )
    .await?;

    // With MFA: deleted, the session is gone with it: SecretMissing, at once.
    let mfa = json!({"mfa": {"serialNumber": user.serial_number().unwrap()},
        "secret": {"retainOnDelete": true}});
    ns.create_session("mfa", source_spec(mfa)).await?;
    wait_condition(&ns, "mfa", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("mfa", &user.totp_code_now(), "alice").await?;
    wait_condition(&ns, "mfa", "Ready", "True", "Issued", T).await?;
    ns.secrets().delete("mfa", &DeleteParams::default()).await?;
    wait_condition(&ns, "mfa", "Ready", "False", "SecretMissing", SECONDS).await?;
    Ok(())
}

#[tokio::test]
async fn renaming_the_output_moves_the_session_and_deletes_the_old_secret() -> anyhow::Result<()> {
    let World {
        ns,
        sts,
        user,
        op: _op,
        ..
    } = World::start("rename", None, CodePolicy::AcceptAny).await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    ns.approve("app", "123123", "alice").await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let before = ns.secret_data("app").await?.unwrap();
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"secret": {"name": "app-creds", "annotations": {"x": "y"}}}}),
            ),
        )
        .await?;
    eventually(T, "the session moved", || async {
        Ok((ns.secret_data("app").await?.is_none()
            && ns.secret_data("app-creds").await?.as_ref() == Some(&before))
        .then_some(()))
    })
    .await?;
    let st = ns.session("app").await?;
    assert_eq!(
        st.status.as_ref().unwrap().secret_name.as_deref(),
        Some("app-creds")
    );
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    assert_eq!(
        ns.secrets()
            .get("app-creds")
            .await?
            .metadata
            .annotations
            .unwrap()["x"],
        "y"
    );
    assert_eq!(
        sts.call_count(),
        1,
        "moving needs no new session (and no new code)"
    );

    // Deleting the Secret of a valid MFA session: SecretMissing (the operator keeps no copy).
    ns.secrets()
        .delete("app-creds", &DeleteParams::default())
        .await?;
    wait_condition(&ns, "app", "Ready", "False", "SecretMissing", T).await?;
    Ok(())
}

#[tokio::test]
async fn idle_operator_makes_no_calls_and_no_writes() -> anyhow::Result<()> {
    let World {
        cp,
        ns,
        sts,
        user,
        op: _op,
        ..
    } = World::start("idle", None, CodePolicy::AcceptAny).await?;
    for i in 0..3 {
        ns.create_session(&format!("auto-{i}"), source_spec(json!({})))
            .await?;
    }
    ns.create_session(
        "mfa",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    ns.approve("mfa", "999999", "alice").await?;
    for name in ["auto-0", "auto-1", "auto-2", "mfa"] {
        wait_condition(&ns, name, "Ready", "True", "Issued", T).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let the last writes' watch events settle
    let calls = sts.call_count();
    let since = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(sts.call_count(), calls, "STS calls while idle");
    // Writes by the operator identity in this namespace, other than its Lease.
    let writes: Vec<String> = cp
        .writes_by(OPERATOR_USER, since)?
        .into_iter()
        .filter(|e| e.namespace() == ns.name && e.resource() != "leases")
        .map(|e| {
            format!(
                "{} {} {}/{}",
                e.verb,
                e.resource(),
                e.name(),
                e.subresource()
            )
        })
        .collect();
    assert!(writes.is_empty(), "writes while idle: {writes:?}");
    // ...and the audit log does see the operator's writes (the count above can fail).
    let all = cp.writes_by(OPERATOR_USER, since - SignedDuration::from_secs(120))?;
    assert!(
        all.iter()
            .any(|e| e.namespace() == ns.name && e.resource() == "secrets")
    );
    Ok(())
}

#[tokio::test]
async fn non_mfa_reissues_when_the_secret_goes_or_the_spec_changes() -> anyhow::Result<()> {
    let World { ns, sts, op, .. } = World::start("reissue", None, CodePolicy::AcceptAny).await?;
    ns.create_session("app", source_spec(json!({}))).await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let first = ns.secret_data("app").await?.unwrap();
    let metrics = op.metrics().await?;
    let series = |m: &str, name: &str| {
        m.lines()
            .any(|l| l.starts_with(name) && l.contains(&format!("namespace=\"{}\"", ns.name)))
    };
    for name in [
        "sts_session_expiration_timestamp_seconds",
        "sts_session_renewal_timestamp_seconds",
        "sts_session_ready_status",
    ] {
        assert!(series(&metrics, name), "no {name} series:\n{metrics}");
    }

    // The output Secret deleted: a new session at once (nothing to keep without MFA).
    ns.secrets().delete("app", &DeleteParams::default()).await?;
    let second = eventually(T, "a new Secret", || async {
        Ok(ns
            .secret_data("app")
            .await?
            .filter(|d| d["AWS_ACCESS_KEY_ID"] != first["AWS_ACCESS_KEY_ID"]))
    })
    .await?;
    // A change that shapes the session (its duration): a new session at once, as asked.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"durationSeconds": 7200}})),
        )
        .await?;
    eventually(T, "a session for the new spec", || async {
        Ok(ns
            .secret_data("app")
            .await?
            .filter(|d| d["AWS_ACCESS_KEY_ID"] != second["AWS_ACCESS_KEY_ID"]))
    })
    .await?;
    assert_eq!(sts.calls().last().unwrap().duration_seconds, Some(7200));
    // A change that does not (labels on the Secret): the same session, rewritten in place.
    let calls = sts.call_count();
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"secret": {"labels": {"team": "b"}}}})),
        )
        .await?;
    eventually(T, "the label", || async {
        Ok(ns
            .secrets()
            .get("app")
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .get("team")
            .filter(|v| *v == "b")
            .map(|_| ()))
    })
    .await?;
    assert_eq!(sts.call_count(), calls);
    assert_eq!(ns.session("app").await?.status.unwrap().rotations, 3);

    // `kubectl sts renew`: a new session now, handled once.
    let current = ns.secret_data("app").await?.unwrap();
    let renew = json!({"metadata": {"annotations": {"stssession.dev/renew-requested-at": Timestamp::now().to_string()}}});
    ns.sessions()
        .patch("app", &PatchParams::default(), &Patch::Merge(&renew))
        .await?;
    eventually(T, "a renewed session", || async {
        Ok(ns
            .secret_data("app")
            .await?
            .filter(|d| d["AWS_ACCESS_KEY_ID"] != current["AWS_ACCESS_KEY_ID"]))
    })
    .await?;
    let st = ns.session("app").await?;
    assert!(
        !st.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("stssession.dev/renew-requested-at")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sts.call_count(), calls + 1, "one renewal, once");

    // Deleted: its metrics series go too.
    ns.sessions()
        .delete("app", &DeleteParams::default())
        .await?;
    eventually(T, "series removed", || async {
        let m = op.metrics().await?;
        Ok((!series(&m, "sts_session_expiration_timestamp_seconds")
            && !series(&m, "sts_session_ready_status"))
        .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_code_in_last_applied_configuration_is_warned_about() -> anyhow::Result<()> {
    let World {
        ns,
        user,
        op: _op,
        sts: _sts,
        ..
    } = World::start("lastapplied", None, CodePolicy::AcceptAny).await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    // what `kubectl apply` (client-side) leaves behind
    let last_applied =
        json!({"metadata": {"annotations": {"stssession.dev/token-code": "314159"}}}).to_string();
    let patch = json!({"metadata": {"annotations": {
        "stssession.dev/token-code": "314159",
        "kubectl.kubernetes.io/last-applied-configuration": last_applied}}});
    ns.sessions()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let events = ns.events().await?;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("TokenCodeInLastApplied"))
        .expect("a TokenCodeInLastApplied event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(!warning.note.clone().unwrap_or_default().contains("314159"));
    Ok(())
}

#[tokio::test]
async fn a_code_on_a_session_without_mfa_is_removed_with_a_warning() -> anyhow::Result<()> {
    let World {
        ns, sts, op: _op, ..
    } = World::start("nomfa", None, CodePolicy::AcceptAny).await?;
    ns.create_session("app", source_spec(json!({}))).await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    ns.approve("app", "123456", "alice").await?;
    eventually(T, "the annotation removed", || async {
        let st = ns.session("app").await?;
        Ok((!st
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("stssession.dev/token-code"))
        .then_some(()))
    })
    .await?;
    assert!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "TokenCodeIgnored")
    );
    assert_eq!(sts.uses_of_code("123456"), 0);
    assert_eq!(sts.call_count(), 1);
    Ok(())
}

#[tokio::test]
async fn an_operator_killed_while_using_a_code_leaves_a_clear_condition() -> anyhow::Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "crash").await?;
    let sts = double(None, CodePolicy::AcceptAny);
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    // no Lease: the restarted operator need not wait for the dead one's to expire
    let mut o = opts(sts.endpoint());
    o.leader_election = false;
    let op = Operator::start(cp, &ns.name, &o).await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    // STS answers slowly; the operator dies while the call is in flight.
    sts.inject_faults(testkit::sts_double::Fault::Delay(Duration::from_secs(3)));
    ns.approve("app", "271828", "alice").await?;
    wait_condition(&ns, "app", "Issuing", "Unknown", "TokenCodeClaimed", T).await?;
    op.process.kill_9()?;
    sts.inject_faults(testkit::sts_double::Fault::Delay(Duration::ZERO));
    let _op2 = Operator::start(cp, &ns.name, &o).await?;
    // sts-timeout 5 s + 10 s after the claim
    let st = wait_condition(
        &ns,
        "app",
        "Issuing",
        "False",
        "Interrupted",
        Duration::from_secs(40),
    )
    .await?;
    assert!(
        condition(&st, "Issuing")
            .unwrap()
            .message
            .contains("Approve again")
    );
    assert_eq!(
        cond(&st, "Ready"),
        ("False".into(), "AwaitingTokenCode".into())
    );
    assert!(sts.uses_of_code("271828") <= 1, "the code was sent again");
    Ok(())
}
