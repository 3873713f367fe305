//! AssumedRoles end to end (issue 16, "One approval, many roles"): one SessionToken with MFA,
//! five AssumedRoles drawing on its session (one role in another account), one code; each
//! role's Secret refreshed from the one session with one AssumeRole per set; a new approval
//! refreshes all five at once. Denials: a role outside `spec.allowedRoles`, a SessionToken in
//! another namespace (not expressible), a deleted SessionToken.

use super::assume_role::{
    AR, Creds, GST, RoleWorld, avoid_totp_window_edge, calls_of, calls_with_code, check_role_creds,
    creds, metric,
};
use super::common::*;
use super::source_spec;
use anyhow::{Context as _, Result, ensure};
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use sts_session_operator::crd::AssumedRole;
use testkit::sts_double::{CodePolicy, RoleSpec};

const T: Duration = Duration::from_secs(30);

fn roles(ns: &Ns) -> Api<AssumedRole> {
    Api::namespaced(ns.client.clone(), &ns.name)
}

async fn create_role(ns: &Ns, name: &str, session: &str, role_arn: &str) -> Result<()> {
    let ar: AssumedRole = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
        "metadata": {"name": name},
        "spec": {"sessionTokenRef": {"name": session}, "roleArn": role_arn, "durationSeconds": 900},
    }))?;
    roles(ns).create(&PostParams::default(), &ar).await?;
    Ok(())
}

/// (status, reason) of an AssumedRole's condition.
fn ar_cond(ar: &AssumedRole, type_: &str) -> (String, String) {
    ar.condition(type_)
        .map(|c| (c.status.to_string(), c.reason.to_string()))
        .unwrap_or_default()
}

async fn wait_role(ns: &Ns, name: &str, status: &str, reason: &str) -> Result<AssumedRole> {
    let api = roles(ns);
    let last = std::sync::Mutex::new(String::new());
    let found = eventually(
        T,
        &format!("AssumedRole {name} Ready={status}/{reason}"),
        || async {
            let ar = api.get(name).await?;
            if let Some(c) = ar.condition("Ready") {
                *last.lock().unwrap() = format!("{}/{}: {}", c.status, c.reason, c.message);
            }
            Ok((ar_cond(&ar, "Ready") == (status.into(), reason.into())).then_some(ar))
        },
    )
    .await;
    found.with_context(|| format!("Ready was {}", last.lock().unwrap()))
}

/// Done when 1: one code; five Secrets of role credentials, each set from exactly one
/// AssumeRole signed by the one session key; at least three refreshes each with exactly one
/// GetSessionToken; then a new approval refreshes all five at once.
#[tokio::test]
async fn one_approval_serves_five_assumed_roles() -> Result<()> {
    let w = RoleWorld::start(
        "ar-five",
        Some(Duration::from_secs(120)),
        Some(Duration::from_secs(6)),
        Some(Duration::from_secs(7)),
        CodePolicy::Totp,
    )
    .await?;
    let (ns, sts, user) = (&w.ns, &w.sts, &w.user);
    let mut arns = vec![w.role.arn.clone()];
    for name in ["reader", "auditor", "writer"] {
        arns.push(sts.add_role(RoleSpec::named(name)).arn);
    }
    let partner = sts.add_role(RoleSpec {
        account_id: Some("210987654321".into()),
        ..RoleSpec::named("partner")
    });
    assert!(partner.arn.starts_with("arn:aws:iam::210987654321:role/"));
    arns.push(partner.arn.clone());
    let serial = user.serial_number().context("an MFA device")?;
    ns.create_session("mfa", source_spec(json!({"mfa": {"serialNumber": serial}})))
        .await?;
    let names: Vec<String> = (0..arns.len()).map(|i| format!("role-{i}")).collect();
    for (name, arn) in names.iter().zip(&arns) {
        create_role(ns, name, "mfa", arn).await?;
    }
    // Before the approval: each waits for the session; nothing was called.
    for name in &names {
        let ar = wait_role(ns, name, "False", "WaitingForSession").await?;
        let message = &ar.condition("Ready").unwrap().message;
        ensure!(message.contains("kubectl sts approve mfa"), "{message}");
    }
    assert_eq!(sts.call_count(), 0);

    avoid_totp_window_edge().await;
    let code = user.totp_code_now();
    let approved_at = Timestamp::now();
    ns.approve("mfa", &code, "alice").await?;
    let st = wait_condition(ns, "mfa", "Ready", "True", "Issued", T).await?;
    let session_key = st.status.unwrap().access_key_id.context("session key")?;

    // Refreshes: every set each Secret holds is recorded, until each held at least four
    // (three refreshes after the first).
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.values().filter(|keys| keys.len() >= 4).count() < names.len() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "refreshes seen: {seen:?}"
        );
        for (name, arn) in names.iter().zip(&arns) {
            if let Some(out) = creds(ns, name).await? {
                let keys = seen.entry(name.clone()).or_default();
                if keys.last() != Some(&out.key) {
                    check_role_creds(sts, &out, arn, &session_key)?;
                    keys.push(out.key);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let first_sets = Timestamp::now();
    println!(
        "five AssumedRoles, one code: {:?} sets each within {}",
        seen.values().map(Vec::len).collect::<Vec<_>>(),
        first_sets.duration_since(approved_at)
    );
    assert_eq!(calls_of(sts, GST).len(), 1, "one GetSessionToken");
    assert_eq!(calls_with_code(sts), 1, "one code reached STS");
    let calls = calls_of(sts, AR);
    ensure!(
        calls.iter().all(|c| c.outcome.is_ok()),
        "a failed AssumeRole"
    );
    ensure!(
        calls
            .iter()
            .all(|c| c.access_key_id.as_ref() == Some(&session_key)),
        "an AssumeRole signed with another key than the session's"
    );
    // Each set from exactly one call: every key seen was issued by one AssumeRole of its
    // role, and no role had calls whose credentials never reached its Secret (but the one in
    // flight now).
    for (name, arn) in names.iter().zip(&arns) {
        let keys = &seen[name];
        let of_role: Vec<_> = calls
            .iter()
            .filter(|c| c.role_arn.as_ref() == Some(arn))
            .collect();
        for k in keys {
            let issuing: Vec<_> = of_role
                .iter()
                .filter(|c| c.issued_access_key_id.as_ref() == Some(k))
                .collect();
            ensure!(
                issuing.len() == 1,
                "{name}: {k} issued by {} calls",
                issuing.len()
            );
        }
        ensure!(
            of_role.len() <= keys.len() + 1,
            "{name}: {} AssumeRole calls for {} sets",
            of_role.len(),
            keys.len()
        );
    }
    let partner_call = calls
        .iter()
        .find(|c| c.role_arn.as_ref() == Some(&partner.arn))
        .context("the other account's role")?;
    let issued = sts
        .issued_session(partner_call.issued_access_key_id.as_ref().unwrap())
        .unwrap();
    assert!(
        issued
            .caller_arn
            .starts_with("arn:aws:sts::210987654321:assumed-role/partner/")
    );

    // A new approval (the next TOTP window's code): every AssumedRole draws on the new
    // session at once.
    let next_window = (Timestamp::now().as_second() / 30 + 1) * 30;
    let wait = next_window - Timestamp::now().as_second();
    tokio::time::sleep(Duration::from_secs(wait.max(0) as u64 + 1)).await;
    let code2 = user.totp_code_now();
    assert_ne!(code, code2);
    ns.approve("mfa", &code2, "alice").await?;
    let st = eventually(T, "a second session", || async {
        let st = ns.session("mfa").await?;
        let key = st.status.as_ref().and_then(|s| s.access_key_id.clone());
        Ok((key.is_some() && key.as_ref() != Some(&session_key)).then_some(st))
    })
    .await?;
    let second_key = st.status.unwrap().access_key_id.unwrap();
    let renewed = Timestamp::now();
    eventually(
        Duration::from_secs(10),
        "all five on the new session",
        || async {
            let mut moved = BTreeMap::<String, Creds>::new();
            for (name, arn) in names.iter().zip(&arns) {
                if let Some(out) = creds(ns, name).await?
                    && sts
                        .issued_session(&out.key)
                        .is_some_and(|s| s.issued_to_access_key_id == second_key)
                {
                    check_role_creds(sts, &out, arn, &second_key)?;
                    moved.insert(name.clone(), out);
                }
            }
            Ok((moved.len() == names.len()).then_some(()))
        },
    )
    .await?;
    let all_moved = Timestamp::now().duration_since(renewed);
    println!("a new approval refreshed all five AssumedRoles within {all_moved}");
    ensure!(all_moved.as_secs() <= 5, "the refresh took {all_moved}");
    assert_eq!(
        calls_of(sts, GST).len(),
        2,
        "one GetSessionToken per approval"
    );
    assert_eq!(sts.uses_of_code(&code), 1);
    assert_eq!(sts.uses_of_code(&code2), 1);

    // Status, metrics, Events.
    for name in &names {
        let ar = roles(ns).get(name).await?;
        assert_eq!(ar_cond(&ar, "Ready"), ("True".into(), "Assumed".into()));
        let status = ar.status.unwrap();
        assert!(
            status.role.assumptions >= 5,
            "{name}: {}",
            status.role.assumptions
        );
        assert_eq!(
            status.role.session_access_key_id.as_ref(),
            Some(&second_key)
        );
        assert_eq!(status.secret_name.as_deref(), Some(name.as_str()));
    }
    let metrics = w.op.metrics().await?;
    for name in &names {
        let ready = metric(
            &metrics,
            "sts_assumed_role_ready_status",
            &ns.name,
            &format!("name=\"{name}\""),
        );
        assert_eq!(ready, Some(1.0), "{name}: {metrics}");
    }
    let reasons = ns.event_reasons().await?;
    assert!(reasons.iter().filter(|r| *r == "RoleAssumed").count() >= names.len());
    // No secret in the operator's log, Events or AssumedRole statuses.
    let mut canaries = vec![user.secret_access_key.clone()];
    for s in sts.issued_sessions() {
        canaries.push(s.secret_access_key.clone());
        canaries.push(s.session_token.clone());
    }
    let statuses = serde_json::to_string(&roles(ns).list(&Default::default()).await?.items)?;
    let events = serde_json::to_string(&ns.events().await?)?;
    for text in [w.op.log(), statuses, events, metrics] {
        ensure!(
            !canaries.iter().any(|c| text.contains(c.as_str())),
            "a secret leaked"
        );
    }
    Ok(())
}

/// Done when 2 and 3: a role outside `spec.allowedRoles` gets `RoleNotAllowed` and no call; a
/// SessionToken in another namespace cannot be named; deleting the SessionToken leaves each
/// AssumedRole `SessionMissing`, its Secret running out at its expiry and never renewed.
#[tokio::test]
async fn denials_and_a_deleted_session() -> Result<()> {
    let w = RoleWorld::start(
        "ar-deny",
        Some(Duration::from_secs(900)),
        Some(Duration::from_secs(12)),
        Some(Duration::from_secs(7)),
        CodePolicy::Totp,
    )
    .await?;
    let (ns, sts) = (&w.ns, &w.sts);
    let app = sts.add_role(RoleSpec::named("app-deploy"));
    ns.create_session(
        "plain",
        source_spec(json!({"allowedRoles": ["arn:aws:iam::123456789012:role/app-*"]})),
    )
    .await?;
    wait_condition(ns, "plain", "Ready", "True", "Issued", T).await?;
    create_role(ns, "allowed", "plain", &app.arn).await?;
    create_role(ns, "denied", "plain", &w.role.arn).await?;
    let ar = wait_role(ns, "denied", "False", "RoleNotAllowed").await?;
    let message = &ar.condition("Ready").unwrap().message;
    ensure!(message.contains("spec.allowedRoles"), "{message}");
    wait_role(ns, "allowed", "True", "Assumed").await?;
    ensure!(
        calls_of(sts, AR)
            .iter()
            .all(|c| c.role_arn.as_ref() != Some(&w.role.arn)),
        "an AssumeRole of a role outside allowedRoles"
    );
    assert!(ns.secret_data("denied").await?.is_none());

    // Another namespace cannot be expressed: the field does not exist (refused when strict,
    // dropped otherwise).
    let raw = json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
        "metadata": {"name": "elsewhere"},
        "spec": {"sessionTokenRef": {"name": "plain", "namespace": "kube-system"}, "roleArn": app.arn},
    });
    let dynamic = kube::api::ApiResource::erase::<AssumedRole>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &dynamic);
    let strict = kube::api::PatchParams::apply("test").validation_strict();
    let refused = api
        .patch("elsewhere", &strict, &kube::api::Patch::Apply(&raw))
        .await
        .expect_err("sessionTokenRef.namespace admitted");
    ensure!(format!("{refused}").contains("namespace"), "{refused}");
    let stored = api
        .create(&PostParams::default(), &serde_json::from_value(raw)?)
        .await?;
    assert!(
        stored.data["spec"]["sessionTokenRef"]
            .get("namespace")
            .is_none()
    );

    // The SessionToken deleted: SessionMissing, no more calls, the Secret keeps its last
    // credentials until they expire.
    let before = creds(ns, "allowed").await?.context("the allowed Secret")?;
    ns.sessions()
        .delete("plain", &DeleteParams::default())
        .await?;
    let ar = wait_role(ns, "allowed", "False", "SessionMissing").await?;
    let calls = calls_of(sts, AR).len();
    let held: Creds = creds(ns, "allowed").await?.context("kept Secret")?;
    ensure!(held.expiration <= before.expiration + jiff::SignedDuration::from_secs(12));
    let status = ar.status.unwrap();
    let expiry = status.role.expiration.context("an expiration")?;
    // Past the credentials' expiry: no renewal, still SessionMissing.
    let wait = expiry.duration_since(Timestamp::now()).as_secs().max(0) as u64 + 2;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        calls_of(sts, AR).len(),
        calls,
        "an AssumeRole without a SessionToken"
    );
    let ar = roles(ns).get("allowed").await?;
    assert_eq!(
        ar_cond(&ar, "Ready"),
        ("False".into(), "SessionMissing".into())
    );
    let last = creds(ns, "allowed").await?.context("the Secret")?;
    ensure!(
        last.expiration <= Timestamp::now(),
        "credentials outlived the SessionToken's end"
    );
    assert!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "SessionMissing")
    );
    Ok(())
}

/// `spec.rolloutRestartTargets` of an AssumedRole: the Deployment is restarted for each new
/// set of role credentials, recorded under `assumedrole.stssession.dev/<name>`.
#[tokio::test]
async fn restart_targets_follow_the_role_credentials() -> Result<()> {
    use super::consumers::{create_workload, template_annotation};
    let w = RoleWorld::start(
        "ar-restart",
        Some(Duration::from_secs(900)),
        Some(Duration::from_secs(9)),
        Some(Duration::from_secs(7)),
        CodePolicy::Totp,
    )
    .await?;
    let ns = &w.ns;
    create_workload(ns, "Deployment", "deployments", "web").await?;
    ns.create_session("plain", source_spec(json!({}))).await?;
    let ar: AssumedRole = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
        "metadata": {"name": "deployer"},
        "spec": {"sessionTokenRef": {"name": "plain"}, "roleArn": w.role.arn,
                 "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}]},
    }))?;
    roles(ns).create(&PostParams::default(), &ar).await?;
    let key = "assumedrole.stssession.dev/deployer";
    let mut seen: Vec<String> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while seen.len() < 2 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "restarts seen: {seen:?}"
        );
        let annotated = template_annotation(ns, "Deployment", "deployments", "web", key).await?;
        let held = creds(ns, "deployer").await?.map(|c| c.key);
        if let (Some(a), Some(h)) = (annotated, held)
            && a == h
            && seen.last() != Some(&a)
        {
            seen.push(a);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reasons = ns.event_reasons().await?;
    ensure!(
        reasons.iter().any(|r| r == "RolloutRestartTriggered"),
        "{reasons:?}"
    );
    let ar = roles(ns).get("deployer").await?;
    assert_eq!(
        ar_cond(&ar, "RolloutRestart"),
        ("True".into(), "TargetsRestarted".into())
    );
    // A target that does not exist: RolloutRestart=False/TargetNotFound, the credentials
    // written regardless.
    let patch = json!({"spec": {"rolloutRestartTargets": [
        {"kind": "Deployment", "name": "web"}, {"kind": "Deployment", "name": "gone"}]}});
    roles(ns)
        .patch(
            "deployer",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    eventually(T, "RolloutRestart=False/TargetNotFound", || async {
        let ar = roles(ns).get("deployer").await?;
        Ok(
            (ar_cond(&ar, "RolloutRestart") == ("False".into(), "TargetNotFound".into()))
                .then_some(()),
        )
    })
    .await?;
    wait_role(ns, "deployer", "True", "Assumed").await?;
    Ok(())
}
