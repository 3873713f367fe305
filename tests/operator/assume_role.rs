//! spec.assumeRole end to end (issue 6, "Roles behind MFA"): one approval yields role
//! credentials re-assumed for the whole session with no further code; an operator restart
//! resumes from the kept session Secret; a role that refuses the user is reported, backed off
//! and never costs the session; without `mfa` the role follows each new session; moto accepts
//! the operator's AssumeRole; spec.assumeRole can come and go on a live session.
//!
//! What a user sees is asserted: the Secrets, conditions, events, status and metrics, and what
//! the STS double recorded (which action issued which key, signed with which key).

use super::common::*;
use super::{T, source_spec};
use anyhow::{Context as _, Result, ensure};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use sts_session_operator::crd::SessionToken;
use testkit::control_plane::ControlPlane;
use testkit::sts_double::{
    CodePolicy, IssuedSession, RecordedCall, RoleSpec, StsDouble, StsDoubleConfig, TestRole,
    TestUser,
};

pub(super) const GST: &str = "GetSessionToken";
pub(super) const AR: &str = "AssumeRole";

/// A namespace with the double's user's keys in `iam-keys`, a role `deployer` registered in
/// the double, and an operator (no leader election, so a restarted one starts at once).
pub(super) struct RoleWorld {
    cp: &'static ControlPlane,
    pub(super) ns: Ns,
    pub(super) sts: StsDouble,
    pub(super) user: TestUser,
    pub(super) role: TestRole,
    pub(super) op: Operator,
    min_remaining: Option<Duration>,
}

impl RoleWorld {
    /// `session`/`role`: lifetimes the double returns for GetSessionToken / AssumeRole (None:
    /// as asked). `min_remaining`: the operator's `--role-min-session-remaining` (None: its
    /// default, 15 minutes).
    pub(super) async fn start(
        prefix: &str,
        session: Option<Duration>,
        role: Option<Duration>,
        min_remaining: Option<Duration>,
        policy: CodePolicy,
    ) -> Result<RoleWorld> {
        let cp = control_plane().await;
        let ns = Ns::new(cp, prefix).await?;
        let sts = StsDouble::start(StsDoubleConfig {
            returned_lifetime: session,
            returned_role_lifetime: role,
            code_policy: policy,
            ..Default::default()
        })?;
        let user = sts.default_user();
        let role = sts.add_role(RoleSpec::named("deployer"));
        ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
            .await?;
        let op = Operator::start(cp, &ns.name, &role_opts(&sts, min_remaining)).await?;
        Ok(RoleWorld {
            cp,
            ns,
            sts,
            user,
            role,
            op,
            min_remaining,
        })
    }

    async fn restart_operator(&self) -> Result<Operator> {
        Operator::start(
            self.cp,
            &self.ns.name,
            &role_opts(&self.sts, self.min_remaining),
        )
        .await
    }
}

pub(super) fn role_opts(sts: &StsDouble, min_remaining: Option<Duration>) -> OperatorOptions {
    OperatorOptions {
        sts_endpoint: sts.endpoint(),
        // The role is assumed only while the session has the minimum plus a margin of
        // --sts-timeout + 5 s left: a short timeout leaves test-sized sessions room for roles.
        extra_args: min_remaining
            .map(|d| format!("--role-min-session-remaining={}s", d.as_secs()))
            .into_iter()
            .chain(["--sts-timeout=3s".to_string()])
            .collect(),
        leader_election: false,
        user: OPERATOR_USER,
    }
}

/// A SessionToken spec with `assumeRole: {roleArn, ..role_extra}` and, if given, `mfa`.
fn role_spec(
    role_arn: &str,
    serial: Option<&str>,
    role_extra: serde_json::Value,
) -> serde_json::Value {
    let mut assume = json!({"roleArn": role_arn});
    for (k, v) in role_extra.as_object().expect("an object") {
        assume[k] = v.clone();
    }
    let mut extra = json!({"assumeRole": assume});
    if let Some(serial) = serial {
        extra["mfa"] = json!({"serialNumber": serial});
    }
    source_spec(extra)
}

/// The four variables of a credentials Secret.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Creds {
    pub(super) key: String,
    secret: String,
    token: String,
    pub(super) expiration: Timestamp,
}

impl Creds {
    fn of(data: &BTreeMap<String, String>) -> Result<Creds> {
        let get = |k: &str| {
            data.get(k)
                .cloned()
                .with_context(|| format!("no {k} in {:?}", data.keys().collect::<Vec<_>>()))
        };
        Ok(Creds {
            key: get("AWS_ACCESS_KEY_ID")?,
            secret: get("AWS_SECRET_ACCESS_KEY")?,
            token: get("AWS_SESSION_TOKEN")?,
            expiration: get("AWS_SESSION_EXPIRATION")?.parse()?,
        })
    }

    /// Exactly the credentials the double issued as `issued`.
    fn is(&self, issued: &IssuedSession) -> bool {
        self.key == issued.access_key_id
            && self.secret == issued.secret_access_key
            && self.token == issued.session_token
            && self.expiration == issued.expiration
    }
}

pub(super) async fn creds(ns: &Ns, secret: &str) -> Result<Option<Creds>> {
    ns.secret_data(secret)
        .await?
        .map(|d| Creds::of(&d))
        .transpose()
}

pub(super) fn calls_of(sts: &StsDouble, action: &str) -> Vec<RecordedCall> {
    sts.calls()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

/// Calls that carried a token code.
pub(super) fn calls_with_code(sts: &StsDouble) -> usize {
    sts.calls()
        .iter()
        .filter(|c| c.token_code_used.is_some())
        .count()
}

/// The Secret keeping the session: labelled as the operator's, owned by the SessionToken,
/// holding exactly the GetSessionToken session `session` (and nothing for workloads).
fn check_kept_secret(secret: &Secret, st: &SessionToken, session: &IssuedSession) -> Result<()> {
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let uid = st.metadata.uid.clone().unwrap_or_default();
    for (k, v) in [
        ("stssession.dev/secret-role", "session"),
        ("app.kubernetes.io/managed-by", "sts-session-operator"),
        ("stssession.dev/session-token-uid", uid.as_str()),
    ] {
        ensure!(
            labels.get(k).map(String::as_str) == Some(v),
            "kept Secret label {k}: {:?}",
            labels.get(k)
        );
    }
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.len() == 1
            && owners[0].uid == uid
            && owners[0].kind == "SessionToken"
            && owners[0].controller == Some(true),
        "kept Secret owners: {owners:?}"
    );
    let data: BTreeMap<String, String> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    ensure!(
        data.keys().map(String::as_str).collect::<Vec<_>>()
            == [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_EXPIRATION",
                "AWS_SESSION_TOKEN"
            ],
        "kept Secret keys: {:?}",
        data.keys().collect::<Vec<_>>()
    );
    let kept = Creds::of(&data)?;
    ensure!(
        kept.is(session),
        "the kept Secret holds {} (expires {}), not the session {} (expires {})",
        kept.key,
        kept.expiration,
        session.access_key_id,
        session.expiration
    );
    Ok(())
}

/// The output Secret holds role credentials the double issued by AssumeRole of `role_arn`,
/// signed with the session `session_key`, expiring no later than that session.
pub(super) fn check_role_creds(
    sts: &StsDouble,
    out: &Creds,
    role_arn: &str,
    session_key: &str,
) -> Result<IssuedSession> {
    let issued = sts
        .issued_session(&out.key)
        .with_context(|| format!("the double never issued {}", out.key))?;
    let session = sts
        .issued_session(session_key)
        .with_context(|| format!("the double never issued {session_key}"))?;
    ensure!(
        out.is(&issued),
        "the output Secret differs from what the double issued"
    );
    ensure!(
        issued.action == AR && issued.role_arn.as_deref() == Some(role_arn),
        "{} was issued by {} for {:?}",
        out.key,
        issued.action,
        issued.role_arn
    );
    ensure!(
        issued.issued_to_access_key_id == session_key,
        "{} was assumed with {}, not the session {session_key}",
        out.key,
        issued.issued_to_access_key_id
    );
    ensure!(
        issued.expiration <= session.expiration,
        "role credentials {} expire at {}, after their session ({})",
        out.key,
        issued.expiration,
        session.expiration
    );
    Ok(issued)
}

/// Every session secret and token the double issued, and the user's secret key, must appear in
/// none of the operator's log, the events, the statuses and the metrics.
pub(super) async fn canary_sweep(
    ns: &Ns,
    sts: &StsDouble,
    user: &TestUser,
    op: &Operator,
) -> Result<usize> {
    let mut canaries = vec![("long-term secret key", user.secret_access_key.clone())];
    for s in sts.issued_sessions() {
        let kind = if s.action == AR { "role" } else { "session" };
        canaries.push((kind, s.secret_access_key.clone()));
        canaries.push((kind, s.session_token.clone()));
    }
    let statuses = serde_json::to_string(
        &ns.sessions()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .map(|s| &s.status)
            .collect::<Vec<_>>(),
    )?;
    let events = serde_json::to_string(&ns.events().await?)?;
    let log = op.log();
    ensure!(
        log.contains("DEBUG"),
        "the operator must log at debug level"
    );
    ensure!(
        log.contains("assuming the role"),
        "not the log of a role-assuming operator"
    );
    let metrics = op.metrics().await?;
    let mut leaks = vec![];
    for (what, text) in [
        ("log", &log),
        ("events", &events),
        ("status", &statuses),
        ("metrics", &metrics),
    ] {
        for (kind, value) in &canaries {
            if text.contains(value.as_str()) {
                leaks.push(format!("a {kind} secret in the {what}"));
            }
        }
    }
    ensure!(leaks.is_empty(), "leaks: {leaks:?}");
    Ok(canaries.len())
}

/// If the current TOTP window ends within 3 s, waits for the next one.
pub(super) async fn avoid_totp_window_edge() {
    let into_window = Timestamp::now().as_millisecond().rem_euclid(30_000);
    if into_window > 27_000 {
        tokio::time::sleep(Duration::from_millis((30_000 - into_window + 200) as u64)).await;
    }
}

/// A metric's value for this namespace (first matching line), if present.
pub(super) fn metric(metrics: &str, name: &str, ns: &str, extra: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("namespace=\"{ns}\"")))
        .filter(|l| l.contains(extra))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The operator's AssumeRole counter for an outcome (the counter has no namespace label).
pub(super) fn assume_role_counter(metrics: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("sts_session_assume_role_calls_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------

/// Done when 1 (+ the canary check): one TOTP approval, sessions of 40 s and role credentials
/// of 6 s: the role is re-assumed about every 4 s with the same session and no further code,
/// one AssumeRole call per set, each set expiring no later than the session; near the
/// session's end no more AssumeRole; then `Expired` as for plain sessions.
#[tokio::test]
async fn one_approval_yields_role_credentials_for_the_whole_session() -> Result<()> {
    let started = std::time::Instant::now();
    let w = RoleWorld::start(
        "role-mfa",
        Some(Duration::from_secs(40)),
        Some(Duration::from_secs(6)),
        Some(Duration::from_secs(7)),
        CodePolicy::Totp,
    )
    .await?;
    let (ns, sts, user, role) = (&w.ns, &w.sts, &w.user, &w.role);
    ns.create_session(
        "app",
        role_spec(
            &role.arn,
            user.serial_number(),
            json!({"durationSeconds": 900}),
        ),
    )
    .await?;

    // Before approval: no session, no role, no Secret, no call.
    let st = wait_condition(ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    let st = if cond(&st, "RoleAssumed").0.is_empty() {
        wait_condition(ns, "app", "RoleAssumed", "False", "WaitingForSession", T).await?
    } else {
        st
    };
    assert_eq!(
        cond(&st, "RoleAssumed"),
        ("False".into(), "WaitingForSession".into())
    );
    assert!(
        condition(&st, "RoleAssumed")
            .unwrap()
            .message
            .contains("kubectl sts approve app")
    );
    assert!(ns.secret_data("app").await?.is_none());
    assert!(ns.secret_data("app-session").await?.is_none());
    assert_eq!(sts.call_count(), 0);

    // One approval, with a real TOTP code.
    avoid_totp_window_edge().await;
    let code = user.totp_code_now();
    ns.approve("app", &code, "alice").await?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let status = st.status.clone().unwrap();
    let session_key = status.access_key_id.clone().expect("status.accessKeyId");
    let session = sts.issued_session(&session_key).expect("issued session");
    assert_eq!(session.action, GST);
    assert!(session.mfa_authenticated);
    assert_eq!(status.expiration, Some(session.expiration));
    assert_eq!(status.session_secret_name.as_deref(), Some("app-session"));
    assert_eq!(status.secret_name.as_deref(), Some("app"));
    check_kept_secret(&ns.secrets().get("app-session").await?, &st, &session)?;
    let out = creds(ns, "app").await?.expect("output Secret");
    assert_ne!(
        out.key, session_key,
        "the output holds the session, not the role"
    );
    check_role_creds(sts, &out, &role.arn, &session_key)?;
    let role_status = status.role.clone().expect("status.role");
    assert_eq!(role_status.role_arn.as_deref(), Some(role.arn.as_str()));
    assert_eq!(
        role_status.assumed_role_arn,
        Some(format!(
            "arn:aws:sts::123456789012:assumed-role/deployer/{}.app",
            ns.name
        ))
    );
    assert_eq!(role_status.access_key_id.as_ref(), Some(&out.key));
    assert_eq!(role_status.expiration, Some(out.expiration));
    assert_eq!(
        role_status.session_access_key_id.as_ref(),
        Some(&session_key)
    );
    assert!(role_status.renewal_time.unwrap() < out.expiration);
    let assumed = condition(&st, "RoleAssumed").expect("RoleAssumed");
    assert_eq!((&*assumed.status, &*assumed.reason), ("True", "Assumed"));
    assert!(assumed.message.contains(&role.arn), "{}", assumed.message);
    // The other formats carry the role too (the shared-credentials file).
    let data = ns.secret_data("app").await?.unwrap();
    assert!(data["credentials"].contains(&out.key));
    assert!(!data["credentials"].contains(&session_key));
    let first_call = calls_of(sts, AR).remove(0);
    assert_eq!(
        first_call.role_session_name,
        Some(format!("{}.app", ns.name))
    );
    assert_eq!(first_call.duration_seconds, Some(900));
    assert_eq!(first_call.access_key_id.as_ref(), Some(&session_key));

    // Until the session ends: role credentials re-assumed, each with the same session.
    let mut seen = vec![out.key.clone()];
    let mut ready_seen: Vec<(String, String)> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session did not end within 60 s; Ready went {ready_seen:?}"
        );
        let st = ns.session("app").await?;
        let ready = cond(&st, "Ready");
        if ready_seen.last() != Some(&ready) {
            ready_seen.push(ready.clone());
        }
        if let Some(out) = creds(ns, "app").await?
            && seen.last() != Some(&out.key)
        {
            check_role_creds(sts, &out, &role.arn, &session_key)?;
            seen.push(out.key);
        }
        if ready == ("False".to_string(), "Expired".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = Timestamp::now();
    assert!(
        ended >= session.expiration,
        "Expired before the session's end"
    );
    println!(
        "role credentials over one 40 s session: {} sets; Ready went {ready_seen:?}",
        seen.len()
    );
    assert!(
        seen.len() >= 5,
        "only {} role credentials over the session",
        seen.len()
    );
    // Ready followed the session as for plain sessions: awaiting a code after its renewal
    // time, Expired at its end.
    assert_eq!(ready_seen[0], ("True".into(), "Issued".into()));
    assert!(
        ready_seen.contains(&("True".into(), "AwaitingTokenCode".into())),
        "{ready_seen:?}"
    );

    // Exactly one AssumeRole per set, all signed with the one session; one GetSessionToken;
    // one code, used once.
    let assume_calls = calls_of(sts, AR);
    assert!(assume_calls.iter().all(|c| c.outcome.is_ok()));
    assert!(
        assume_calls
            .iter()
            .all(|c| c.access_key_id.as_ref() == Some(&session_key)),
        "an AssumeRole signed with another key"
    );
    assert_eq!(
        assume_calls.len(),
        seen.len(),
        "AssumeRole calls vs role credentials seen in the Secret"
    );
    assert_eq!(calls_of(sts, GST).len(), 1, "a second GetSessionToken");
    assert_eq!(calls_with_code(sts), 1, "a second code reached STS");
    assert_eq!(sts.uses_of_code(&code), 1);
    let st = ns.session("app").await?;
    let status = st.status.clone().unwrap();
    assert_eq!(status.role.as_ref().unwrap().assumptions, seen.len() as i64);
    assert_eq!(status.rotations, 1);
    // The last set expires no later than the session, and was assumed while at least
    // --role-min-session-remaining (7 s) of it was left.
    let last = sts.issued_session(seen.last().unwrap()).unwrap();
    assert!(last.expiration <= session.expiration);
    assert!(
        session.expiration.duration_since(last.issued_at) >= SignedDuration::from_secs(7),
        "the last role credentials were assumed {} before the session's end",
        session.expiration.duration_since(last.issued_at)
    );

    // After the end: no more AssumeRole (nor anything else) while no code comes.
    let calls = sts.call_count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sts.call_count(), calls, "calls after the session's end");
    let st = ns.session("app").await?;
    assert_eq!(cond(&st, "Ready"), ("False".into(), "Expired".into()));
    assert_eq!(cond(&st, "RoleAssumed").0, "False");

    // Events: one Issued, a RoleAssumed per set (Normal), TokenCodeRequired, Expired.
    let events = ns.events().await?;
    let count = |reason: &str| -> i32 {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.as_ref().map(|s| s.count).unwrap_or(1))
            .sum()
    };
    assert!(
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RoleAssumed"))
            .all(|e| e.type_.as_deref() == Some("Normal"))
    );
    assert!(
        count("RoleAssumed") >= 2,
        "RoleAssumed events: {}",
        count("RoleAssumed")
    );
    for reason in ["Issued", "TokenCodeRequired", "Expired"] {
        assert!(count(reason) >= 1, "no {reason} event");
    }

    // Metrics: the role series and one success per AssumeRole.
    let metrics = w.op.metrics().await?;
    assert_eq!(
        assume_role_counter(&metrics, "success") as usize,
        assume_calls.len(),
        "{metrics}"
    );
    let role_exp = metric(
        &metrics,
        "sts_session_role_expiration_timestamp_seconds",
        &ns.name,
        "",
    )
    .expect("a role expiration series");
    assert_eq!(role_exp as i64, last.expiration.as_second());

    let canaries = canary_sweep(ns, sts, user, &w.op).await?;
    println!(
        "canary sweep: {canaries} secret values, no leak; {} s in all",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Done when 2: the operator killed between refreshes, the output Secret deleted while it is
/// down: a new process resumes from the kept session (same session key signs the next
/// AssumeRole; no GetSessionToken, no code) and keeps refreshing.
#[tokio::test]
async fn a_restarted_operator_resumes_from_the_kept_session() -> Result<()> {
    let w = RoleWorld::start(
        "role-restart",
        Some(Duration::from_secs(90)),
        Some(Duration::from_secs(6)),
        Some(Duration::from_secs(7)),
        CodePolicy::AcceptAny,
    )
    .await?;
    let (ns, sts, user, role) = (&w.ns, &w.sts, &w.user, &w.role);
    ns.create_session("app", role_spec(&role.arn, user.serial_number(), json!({})))
        .await?;
    wait_condition(ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("app", "314159", "alice").await?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let session_key = st.status.unwrap().access_key_id.unwrap();
    // A refresh by the first process.
    eventually(T, "a second set of role credentials", || async {
        let st = ns.session("app").await?;
        Ok((st.status.and_then(|s| s.role).map(|r| r.assumptions) >= Some(2)).then_some(()))
    })
    .await?;
    let kept_before = ns.secrets().get("app-session").await?;
    let out_before = creds(ns, "app").await?.unwrap();

    w.op.process.kill_9()?;
    let killed_at = sts.call_count();
    ns.secrets().delete("app", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let op2 = w.restart_operator().await?;
    let back = eventually(
        T,
        "the output Secret back with new role credentials",
        || async { Ok(creds(ns, "app").await?.filter(|c| c.key != out_before.key)) },
    )
    .await?;
    check_role_creds(sts, &back, &role.arn, &session_key)?;
    let after = &sts.calls()[killed_at..];
    assert!(
        after
            .iter()
            .all(|c| c.action == AR && c.access_key_id.as_ref() == Some(&session_key)),
        "after the restart: {:?}",
        after
            .iter()
            .map(|c| (&c.action, &c.access_key_id))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        calls_of(sts, GST).len(),
        1,
        "the restart cost a new session"
    );
    assert_eq!(calls_with_code(sts), 1, "the restart cost a code");
    let kept_after = ns.secrets().get("app-session").await?;
    assert_eq!(
        kept_after.data, kept_before.data,
        "the kept session changed"
    );
    // ... and the new process keeps refreshing with that session.
    let next = eventually(T, "a refresh by the new process", || async {
        Ok(creds(ns, "app").await?.filter(|c| c.key != back.key))
    })
    .await?;
    check_role_creds(sts, &next, &role.arn, &session_key)?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let status = st.status.unwrap();
    assert_eq!(status.access_key_id.as_ref(), Some(&session_key));
    assert_eq!(status.rotations, 1);
    assert_eq!(
        status.role.unwrap().session_access_key_id.as_ref(),
        Some(&session_key)
    );
    assert!(
        !op2.log().contains("minting a session"),
        "the new process minted a session"
    );
    println!(
        "restart: {} AssumeRole calls after the restart, 0 GetSessionToken, 0 codes",
        sts.calls()[killed_at..].len()
    );
    Ok(())
}

/// Done when 3: roles that refuse the user (unknown role, wrong external id, MFA required but
/// the session has none): RoleAccessDenied with the role named, a Warning event, bounded
/// retries, the kept session untouched; fixed, the role is assumed without a new code.
#[tokio::test]
async fn a_role_that_refuses_the_user_is_reported_backed_off_and_keeps_the_session() -> Result<()> {
    let w = RoleWorld::start("role-denied", None, None, None, CodePolicy::AcceptAny).await?;
    let (ns, sts, user) = (&w.ns, &w.sts, &w.user);
    let unknown_arn = "arn:aws:iam::123456789012:role/not-yet";
    let ext_role = sts.add_role(RoleSpec {
        external_id: Some("expected-id".into()),
        ..RoleSpec::named("partner")
    });
    let mfa_role = sts.add_role(RoleSpec {
        require_mfa: true,
        ..RoleSpec::named("admin")
    });
    ns.create_session(
        "unknown",
        role_spec(unknown_arn, user.serial_number(), json!({})),
    )
    .await?;
    ns.create_session(
        "extid",
        role_spec(&ext_role.arn, None, json!({"externalId": "wrong-id"})),
    )
    .await?;
    ns.create_session("nomfa", role_spec(&mfa_role.arn, None, json!({})))
        .await?;
    wait_condition(ns, "unknown", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("unknown", "271828", "alice").await?;
    let since = tokio::time::Instant::now();
    let cases = [
        ("unknown", unknown_arn),
        ("extid", ext_role.arn.as_str()),
        ("nomfa", mfa_role.arn.as_str()),
    ];
    let mut kept = BTreeMap::new();
    for (name, arn) in cases {
        let st = wait_condition(ns, name, "Ready", "False", "RoleAccessDenied", T).await?;
        assert_eq!(
            cond(&st, "RoleAssumed"),
            ("False".into(), "RoleAccessDenied".into()),
            "{name}"
        );
        let message = condition(&st, "Ready").unwrap().message;
        assert!(message.contains(arn), "{name}: {message}");
        assert!(message.contains("not authorized"), "{name}: {message}");
        assert!(
            !message.contains(&user.secret_access_key),
            "{name}: a secret in the message"
        );
        let status = st.status.clone().unwrap();
        let role = status.role.clone().unwrap();
        assert_eq!(role.last_failure.unwrap().reason, "RoleAccessDenied");
        assert!(
            role.access_key_id.is_none(),
            "{name}: role credentials recorded"
        );
        // The session is there, kept; the output Secret holds nothing usable.
        let session_key = status.access_key_id.clone().unwrap();
        let session = sts.issued_session(&session_key).unwrap();
        let kept_secret = ns.secrets().get(&format!("{name}-session")).await?;
        check_kept_secret(&kept_secret, &st, &session)?;
        assert!(
            ns.secret_data(name).await?.is_none(),
            "{name}: an output Secret without role credentials"
        );
        kept.insert(name, kept_secret);
    }
    let events = ns.events().await?;
    for (name, arn) in cases {
        let warning = events
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("RoleAccessDenied")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .with_context(|| format!("no RoleAccessDenied event for {name}"))?;
        assert_eq!(warning.type_.as_deref(), Some("Warning"));
        assert!(warning.note.clone().unwrap_or_default().contains(arn));
    }

    // About 20 s of refusals: backoff (1 s doubling to 4 s here), no storm, nothing else.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(since.elapsed())).await;
    let window = since.elapsed();
    let mut per_role = vec![];
    for (name, arn) in cases {
        let n = calls_of(sts, AR)
            .iter()
            .filter(|c| c.role_arn.as_deref() == Some(arn))
            .count();
        per_role.push((name, n));
        // By design about 7 to 9: retries 1 s, 2 s, then 4 s apart (20 % jitter, and the
        // failure time is recorded in whole seconds); a retry per reconcile would be dozens.
        assert!(
            (3..=12).contains(&n),
            "{name}: {n} AssumeRole calls in {window:?}"
        );
        let times: Vec<Timestamp> = calls_of(sts, AR)
            .iter()
            .filter(|c| c.role_arn.as_deref() == Some(arn))
            .map(|c| c.at)
            .collect();
        for pair in times.windows(2).skip(3) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap >= SignedDuration::from_secs(2),
                "{name}: AssumeRole retried after {gap} (backoff capped at 4 s): {times:?}"
            );
        }
        let st = ns.session(name).await?;
        assert!(st.status.unwrap().role.unwrap().failed_attempts as usize >= n - 1);
        let kept_now = ns.secrets().get(&format!("{name}-session")).await?;
        assert_eq!(
            kept_now.metadata.resource_version, kept[name].metadata.resource_version,
            "{name}: the kept session Secret was written"
        );
    }
    println!("refused roles over {window:?}: AssumeRole calls {per_role:?}");
    assert_eq!(calls_of(sts, GST).len(), 3, "one session each");
    assert_eq!(calls_with_code(sts), 1);
    assert!(
        calls_of(sts, AR)
            .iter()
            .all(|c| c.outcome.error_code() == Some("AccessDenied"))
    );
    // (A retry may land between the reads: the counter is between the counts around it.)
    let before = calls_of(sts, AR).len();
    let metrics = w.op.metrics().await?;
    let after = calls_of(sts, AR).len();
    let denied = assume_role_counter(&metrics, "access_denied") as usize;
    assert!(
        (before.saturating_sub(3)..=after).contains(&denied),
        "access_denied {denied}, AssumeRole calls {before}..{after}\n{metrics}"
    );

    // Fixed: the role registered (no spec change: the next retry), the external id patched
    // (a spec change: at once). The role is assumed with the kept session, no new code.
    let unknown_session = ns
        .session("unknown")
        .await?
        .status
        .unwrap()
        .access_key_id
        .unwrap();
    sts.add_role(RoleSpec::named("not-yet"));
    ns.sessions()
        .patch(
            "extid",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"assumeRole": {"externalId": "expected-id"}}})),
        )
        .await?;
    for (name, arn) in &cases[..2] {
        let st = wait_condition(ns, name, "Ready", "True", "Issued", T).await?;
        assert_eq!(cond(&st, "RoleAssumed"), ("True".into(), "Assumed".into()));
        let session_key = st.status.unwrap().access_key_id.unwrap();
        let out = creds(ns, name).await?.expect("output Secret");
        check_role_creds(sts, &out, arn, &session_key)?;
    }
    assert_eq!(
        ns.session("unknown").await?.status.unwrap().access_key_id,
        Some(unknown_session)
    );
    assert_eq!(
        calls_of(sts, GST).len(),
        3,
        "fixing the role cost a session"
    );
    assert_eq!(calls_with_code(sts), 1, "fixing the role cost a code");
    let st = ns.session("nomfa").await?;
    assert_eq!(
        cond(&st, "Ready"),
        ("False".into(), "RoleAccessDenied".into())
    );
    Ok(())
}

/// Done when 4: without `mfa`, GetSessionToken without a code, then AssumeRole; when the
/// session rotates, the role is re-assumed at once with the new session.
#[tokio::test]
async fn without_mfa_the_role_follows_each_new_session() -> Result<()> {
    let w = RoleWorld::start(
        "role-auto",
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(5)),
        Some(Duration::from_secs(5)),
        CodePolicy::AcceptAny,
    )
    .await?;
    let (ns, sts, role) = (&w.ns, &w.sts, &w.role);
    ns.create_session("app", role_spec(&role.arn, None, json!({})))
        .await?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let first_session = st.status.unwrap().access_key_id.unwrap();
    // The session rotates (at ~20 s): the role follows.
    let second_session = eventually(Duration::from_secs(40), "a second session", || async {
        let st = ns.session("app").await?;
        Ok(st
            .status
            .and_then(|s| s.access_key_id)
            .filter(|k| *k != first_session))
    })
    .await?;
    let out = eventually(T, "role credentials of the second session", || async {
        Ok(creds(ns, "app").await?.filter(|c| {
            sts.issued_session(&c.key)
                .is_some_and(|i| i.issued_to_access_key_id == second_session)
        }))
    })
    .await?;
    check_role_creds(sts, &out, &role.arn, &second_session)?;
    let st = ns.session("app").await?;
    check_kept_secret(
        &ns.secrets().get("app-session").await?,
        &st,
        &sts.issued_session(&second_session).unwrap(),
    )?;

    let gst = calls_of(sts, GST);
    assert!(gst.len() >= 2);
    assert!(
        gst.iter()
            .all(|c| c.serial_number.is_none() && c.token_code_used.is_none())
    );
    // Each role credential was assumed with a session the double issued and expired no later
    // than it; the first one after the rotation came at once (a new session, not a renewal).
    let issued = sts.issued_sessions();
    for r in issued.iter().filter(|s| s.action == AR) {
        let s = sts.issued_session(&r.issued_to_access_key_id).unwrap();
        assert_eq!(s.action, GST);
        assert!(
            r.expiration <= s.expiration,
            "{} outlives its session",
            r.access_key_id
        );
    }
    let second = sts.issued_session(&second_session).unwrap();
    let first_with_second = issued
        .iter()
        .filter(|s| s.action == AR && s.issued_to_access_key_id == second_session)
        .map(|s| s.issued_at)
        .min()
        .unwrap();
    assert!(
        first_with_second.duration_since(second.issued_at) <= SignedDuration::from_secs(2),
        "the role was re-assumed {} after the new session",
        first_with_second.duration_since(second.issued_at)
    );
    // The first session's role credentials were refreshed too (5 s each, renewed ~3 s in).
    let with_first = issued
        .iter()
        .filter(|s| s.action == AR && s.issued_to_access_key_id == first_session)
        .count();
    assert!(
        with_first >= 2,
        "{with_first} role credentials with the first session"
    );
    println!(
        "without mfa: {} sessions, {} role credentials ({with_first} with the first session)",
        gst.len(),
        calls_of(sts, AR).len()
    );
    Ok(())
}

/// Done when 5: moto (authentication off: with it on, moto does not recognise its own
/// GetSessionToken credentials) accepts the operator's AssumeRole with externalId and tags;
/// the Secret holds moto's assumed-role credentials (GetCallerIdentity with them says so).
#[tokio::test]
async fn moto_accepts_the_operators_assume_role() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "role-moto").await?;
    let moto = testkit::moto::Moto::start_without_auth().await?;
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": moto.user_arn()}, "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"sts:ExternalId": "moto-ext-1"}}}]})
    .to_string();
    let role_arn = moto.create_role("moto-deployer", &trust).await?;
    assert_eq!(role_arn, "arn:aws:iam::123456789012:role/moto-deployer");
    ns.create_source_secret("iam-keys", moto.access_key_id(), moto.secret_access_key())
        .await?;
    let _op = Operator::start(
        cp,
        &ns.name,
        &OperatorOptions {
            sts_endpoint: moto.endpoint().to_string(),
            extra_args: vec![],
            leader_election: false,
            user: OPERATOR_USER,
        },
    )
    .await?;
    ns.create_session(
        "app",
        role_spec(
            &role_arn,
            None,
            json!({"roleSessionName": "moto-session", "externalId": "moto-ext-1",
                   "tags": [{"key": "team", "value": "payments"}, {"key": "env", "value": "test"}]}),
        ),
    )
    .await?;
    let st = wait_condition(&ns, "app", "Ready", "True", "Issued", T)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n--- moto log ---\n{}", moto.read_log()))?;
    let status = st.status.clone().unwrap();
    let role = status.role.clone().unwrap();
    assert_eq!(
        role.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/moto-deployer/moto-session")
    );
    let out = creds(&ns, "app").await?.expect("output Secret");
    let kept = creds(&ns, "app-session")
        .await?
        .expect("kept session Secret");
    assert_eq!(Some(&kept.key), status.access_key_id.as_ref());
    assert_ne!(out.key, kept.key);
    assert_eq!(role.access_key_id.as_ref(), Some(&out.key));
    assert_eq!(role.expiration, Some(out.expiration));
    // Asked for min(3600, the session's remaining ~3600 s), which moto grants. (Whether they
    // end no later than the session is checked on the double, with a slow STS, below: here
    // they outlive it by the GetSessionToken round trip.)
    assert!(out.expiration > Timestamp::now() + SignedDuration::from_secs(3500));
    assert!(kept.expiration > Timestamp::now() + SignedDuration::from_secs(3500));
    // moto itself knows these credentials as the assumed role.
    let sts = aws_sdk_sts::Client::from_conf(testkit::moto::sts_config(
        moto.endpoint(),
        aws_credential_types::Credentials::new(
            &out.key,
            &out.secret,
            Some(out.token.clone()),
            None,
            "role",
        ),
    ));
    let who = sts.get_caller_identity().send().await?;
    assert_eq!(
        who.arn(),
        Some("arn:aws:sts::123456789012:assumed-role/moto-deployer/moto-session")
    );
    let session_who = aws_sdk_sts::Client::from_conf(testkit::moto::sts_config(
        moto.endpoint(),
        aws_credential_types::Credentials::new(
            &kept.key,
            &kept.secret,
            Some(kept.token.clone()),
            None,
            "session",
        ),
    ))
    .get_caller_identity()
    .send()
    .await?;
    println!(
        "moto: role {:?}, session {:?}",
        who.arn(),
        session_who.arn()
    );
    Ok(())
}

/// Done when 6: spec.assumeRole added to a running MFA SessionToken keeps the session (no
/// code) and assumes the role; removed, the session goes back into the output Secret (same
/// key, no code, no GetSessionToken) and `<name>-session` is deleted.
#[tokio::test]
async fn assume_role_can_be_added_to_and_removed_from_a_live_session() -> Result<()> {
    let w = RoleWorld::start("role-toggle", None, None, None, CodePolicy::AcceptAny).await?;
    let (ns, sts, user, role) = (&w.ns, &w.sts, &w.user, &w.role);
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    ns.approve("app", "161803", "alice").await?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let plain_key = st.status.unwrap().access_key_id.unwrap();
    let plain = creds(ns, "app").await?.unwrap();
    assert!(plain.is(&sts.issued_session(&plain_key).unwrap()));

    // Added: the session was approved without a role, so it is not used for one (issue 13);
    // a new approval is asked for, and the role is assumed with the session it gives.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"assumeRole": {"roleArn": role.arn}}})),
        )
        .await?;
    wait_condition(
        ns,
        "app",
        "RoleAssumed",
        "False",
        "SpecChangedSinceApproval",
        T,
    )
    .await?;
    assert_eq!(calls_of(sts, AR).len(), 0);
    ns.approve("app", "271828", "alice").await?;
    let session_key = eventually(T, "a new session", || async {
        let st = ns.session("app").await?;
        Ok(st
            .status
            .and_then(|s| s.access_key_id)
            .filter(|k| *k != plain_key))
    })
    .await?;
    let session = sts.issued_session(&session_key).unwrap();
    let out = eventually(T, "role credentials in the output Secret", || async {
        Ok(creds(ns, "app")
            .await?
            .filter(|c| c.key != session_key && c.key != plain_key))
    })
    .await?;
    check_role_creds(sts, &out, &role.arn, &session_key)?;
    let st = wait_condition(ns, "app", "RoleAssumed", "True", "Assumed", T).await?;
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    check_kept_secret(&ns.secrets().get("app-session").await?, &st, &session)?;
    assert_eq!(
        st.status.as_ref().unwrap().session_secret_name.as_deref(),
        Some("app-session")
    );
    assert_eq!(calls_of(sts, GST).len(), 2);
    assert_eq!(calls_with_code(sts), 2);

    // Then idle: role credentials valid for an hour, nothing to do, no call, no write.
    tokio::time::sleep(Duration::from_secs(2)).await; // the last writes' watch events settle
    let (since, calls) = (Timestamp::now(), sts.call_count());
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(sts.call_count(), calls, "STS calls while idle");
    let writes: Vec<String> =
        w.cp.writes_by(OPERATOR_USER, since)?
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
    let all =
        w.cp.writes_by(OPERATOR_USER, since - SignedDuration::from_secs(60))?;
    assert!(
        all.iter()
            .any(|e| e.namespace() == ns.name && e.name() == "app-session"),
        "the audit log does not show the operator's writes"
    );

    // Changed (another session name): assumed again at once, with the same session.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"assumeRole": {"roleSessionName": "renamed"}}})),
        )
        .await?;
    let renamed = eventually(T, "role credentials for the new session name", || async {
        Ok(creds(ns, "app").await?.filter(|c| c.key != out.key))
    })
    .await?;
    let issued = check_role_creds(sts, &renamed, &role.arn, &session_key)?;
    assert_eq!(issued.role_session_name.as_deref(), Some("renamed"));
    let st = eventually(T, "status.role for the new session name", || async {
        let st = ns.session("app").await?;
        let arn = st
            .status
            .as_ref()
            .and_then(|s| s.role.as_ref()?.assumed_role_arn.clone());
        Ok(
            (arn.as_deref() == Some("arn:aws:sts::123456789012:assumed-role/deployer/renamed"))
                .then_some(st),
        )
    })
    .await?;
    assert_eq!(st.status.unwrap().role.unwrap().assumptions, 2);
    assert_eq!(calls_of(sts, AR).len(), 2);
    assert_eq!(calls_of(sts, GST).len(), 2);

    // Removed: the session back in the output Secret, the kept one deleted.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"assumeRole": null}})),
        )
        .await?;
    eventually(T, "the session back in the output Secret", || async {
        Ok(creds(ns, "app")
            .await?
            .filter(|c| c.is(&session))
            .map(|_| ()))
    })
    .await?;
    eventually(T, "the kept session Secret deleted", || async {
        Ok(ns
            .secrets()
            .get_opt("app-session")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let st = eventually(T, "status without the role", || async {
        let st = ns.session("app").await?;
        let status = st.status.clone().unwrap_or_default();
        Ok((status.role.is_none()
            && status.session_secret_name.is_none()
            && condition(&st, "RoleAssumed").is_none())
        .then_some(st))
    })
    .await?;
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    assert_eq!(
        st.status.as_ref().unwrap().access_key_id.as_ref(),
        Some(&session_key)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls_of(sts, GST).len(), 2, "a new session");
    assert_eq!(calls_with_code(sts), 2, "a new code");
    assert_eq!(
        calls_of(sts, AR).len(),
        2,
        "AssumeRole without spec.assumeRole"
    );
    Ok(())
}

/// "The last role credentials never outlive the session", with a one-hour session (e.g. an
/// account root's, or `durationSeconds: 3600`) and an STS that takes 2.5 s per call: the role
/// is asked for min(3600, what the session has left), and what is left must be reckoned when
/// AssumeRole goes out (and with a margin for the call), not at the start of the reconcile
/// that minted the session.
#[tokio::test]
async fn role_credentials_do_not_outlive_a_one_hour_session_with_a_slow_sts() -> Result<()> {
    let w = RoleWorld::start("role-slow", None, None, None, CodePolicy::AcceptAny).await?;
    let (ns, sts, role) = (&w.ns, &w.sts, &w.role);
    sts.inject_faults(testkit::sts_double::Fault::Delay(Duration::from_millis(
        2500,
    )));
    ns.create_session("app", role_spec(&role.arn, None, json!({})))
        .await?;
    let st = wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    let session_key = st.status.unwrap().access_key_id.unwrap();
    let session = sts.issued_session(&session_key).unwrap();
    assert_eq!(session.granted_duration_seconds, 3600);
    let out = creds(ns, "app").await?.expect("output Secret");
    let asked = calls_of(sts, AR)[0].duration_seconds;
    let issued = sts.issued_session(&out.key).unwrap();
    assert!(
        issued.expiration <= session.expiration,
        "the role credentials (DurationSeconds {asked:?}) expire at {}, {} after their session ({})",
        issued.expiration,
        issued.expiration.duration_since(session.expiration),
        session.expiration
    );
    Ok(())
}

/// Issue 13: a spec change after an approval that widens what the kept session is used for
/// (here another role) does not get the session: no AssumeRole with it,
/// `RoleAssumed=False`/`Ready=False` `SpecChangedSinceApproval` with a Warning Event, until a
/// new approval, which then assumes the new role.
#[tokio::test]
async fn a_widening_spec_change_needs_a_new_approval() -> Result<()> {
    let w = RoleWorld::start("widen", None, None, None, CodePolicy::Totp).await?;
    let (ns, sts, user, role) = (&w.ns, &w.sts, &w.user, &w.role);
    let other = sts.add_role(RoleSpec::named("other"));
    ns.create_session("app", role_spec(&role.arn, user.serial_number(), json!({})))
        .await?;
    wait_condition(ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    avoid_totp_window_edge().await;
    ns.approve("app", &user.totp_code_now(), "alice").await?;
    let st = wait_condition(ns, "app", "RoleAssumed", "True", "Assumed", T).await?;
    let approved_for = st.status.as_ref().and_then(|s| s.approved_for.clone());
    ensure!(approved_for.is_some(), "status.approvedFor not recorded");
    ensure!(calls_of(sts, AR).len() == 1);

    // Another role, by someone who may only patch: the kept session is not used for it.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"assumeRole": {"roleArn": other.arn}}})),
        )
        .await?;
    let st = wait_condition(
        ns,
        "app",
        "RoleAssumed",
        "False",
        "SpecChangedSinceApproval",
        T,
    )
    .await?;
    let message = condition(&st, "RoleAssumed").unwrap().message;
    ensure!(
        message.contains("kubectl sts approve app"),
        "no approval asked for: {message}"
    );
    ensure!(
        cond(&st, "Ready") == ("False".into(), "SpecChangedSinceApproval".into()),
        "Ready is {:?}",
        cond(&st, "Ready")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let assumed: Vec<_> = calls_of(sts, AR);
    ensure!(
        assumed.len() == 1
            && assumed
                .iter()
                .all(|c| c.role_arn.as_ref() == Some(&role.arn)),
        "AssumeRole with the kept session after the change: {:?}",
        assumed.iter().map(|c| &c.role_arn).collect::<Vec<_>>()
    );
    ensure!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "SpecChangedSinceApproval"),
        "no Warning Event"
    );

    // A new approval (the next window's code: the current one was spent) assumes the new role.
    let code = user.totp_code_at(Timestamp::now() + SignedDuration::from_secs(30));
    ns.approve("app", &code, "bob").await?;
    // (The status recording the new session may still show the old role's credentials as
    // assumed: the new role is assumed by the reconcile that follows at once.)
    let st = eventually(T, "the new role assumed", || async {
        let st = ns.session("app").await?;
        let role = st.status.as_ref().and_then(|s| s.role.as_ref());
        let done = cond(&st, "RoleAssumed") == ("True".into(), "Assumed".into())
            && role.and_then(|r| r.role_arn.as_ref()) == Some(&other.arn);
        Ok(done.then_some(st))
    })
    .await?;
    let status = st.status.clone().unwrap();
    ensure!(status.approved_for.is_some() && status.approved_for != approved_for);
    let assumed = calls_of(sts, AR);
    let last = assumed.last().context("an AssumeRole")?;
    ensure!(last.role_arn.as_ref() == Some(&other.arn));
    ensure!(last.access_key_id == status.access_key_id);
    wait_condition(ns, "app", "Ready", "True", "Issued", T).await?;
    Ok(())
}
