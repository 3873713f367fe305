//! Issue 13 ("Least privilege for real"), the operator's side: Events for the longest names,
//! spent codes, spec changes after an approval, the endpoint's region, MFA calls on a fresh
//! connection.

use super::common::*;
use super::{T, World, source_spec};
use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use testkit::sts_double::CodePolicy;

/// A SessionToken named with the 253 characters the API server admits still gets its Events:
/// their names (`<name>.<time>`) are cut and hashed to fit.
#[tokio::test]
async fn events_are_published_for_a_253_character_name() -> Result<()> {
    let World {
        ns,
        op: _op,
        sts: _sts,
        ..
    } = World::start("evname", None, CodePolicy::Totp).await?;
    let name = format!("{}.{}", "a".repeat(63), "b".repeat(189));
    assert_eq!(name.len(), 253);
    let mut spec = source_spec(json!({}));
    spec["secret"] = json!({"name": "out"});
    ns.create_session(&name, spec).await?;
    wait_condition(&ns, &name, "Ready", "True", "Issued", T).await?;
    let events = eventually(T, "an Issued Event about the long name", || async {
        let events = ns.events().await?;
        Ok(events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Issued")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            })
            .then_some(events))
    })
    .await?;
    for e in &events {
        let event_name = e.metadata.name.clone().unwrap_or_default();
        assert!(event_name.len() <= 253, "{event_name}");
    }
    Ok(())
}

/// A `spec.endpoint` in another region than `spec.region` is reported before any code is
/// claimed (`Ready=False/EndpointRegionMismatch`): a code set meanwhile stays on the object,
/// unclaimed and unspent, and is used once the spec is mended. No request leaves.
#[tokio::test]
async fn an_endpoint_in_another_region_is_reported_and_the_code_left_in_place() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "epregion").await?;
    let sts = super::double(None, CodePolicy::Totp);
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let mut opts = super::opts(sts.endpoint());
    opts.extra_args = vec![
        "--allowed-sts-endpoints=http://127.0.0.1:*,http://sts.{region}.localhost:*".into(),
        "--token-code-max-age=60s".into(),
    ];
    let _op = Operator::start(cp, &ns.name, &opts).await?;
    let serial = user.serial_number().expect("an MFA device");
    ns.create_session(
        "app",
        source_spec(json!({
            "mfa": {"serialNumber": serial},
            "region": "us-east-1",
            "endpoint": "http://sts.eu-west-1.localhost:9",
        })),
    )
    .await?;
    let st = wait_condition(&ns, "app", "Ready", "False", "EndpointRegionMismatch", T).await?;
    let message = condition(&st, "Ready").unwrap().message;
    assert!(
        message.contains("eu-west-1") && message.contains("us-east-1"),
        "{message}"
    );
    ns.approve("app", &user.totp_code_now(), "alice").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = ns.session("app").await?;
    let annotations = st.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("stssession.dev/token-code"),
        "the code was claimed: {annotations:?}"
    );
    assert!(!annotations.contains_key("stssession.dev/token-code-claimed-at"));
    assert_eq!(cond(&st, "Issuing"), (String::new(), String::new()));
    assert_eq!(
        cond(&st, "Ready"),
        ("False".into(), "EndpointRegionMismatch".into())
    );
    assert_eq!(sts.call_count(), 0);
    // Mended (the endpoint goes): the code waiting on the object is used.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoint": null}})),
        )
        .await?;
    wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let calls = sts.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    Ok(())
}

/// A code set again after it was used (a re-applied manifest, a GitOps sync) is removed
/// without an STS call: `Issuing=False/TokenCodeReused`. The STS double, like AWS, would
/// refuse it anyway; the operator does not even send it.
#[tokio::test]
async fn a_spent_code_set_again_is_removed_without_an_sts_call() -> Result<()> {
    let World {
        ns,
        sts,
        user,
        op: _op,
        ..
    } = World::start("reused", None, CodePolicy::Totp).await?;
    let serial = user.serial_number().expect("an MFA device");
    ns.create_session("app", source_spec(json!({"mfa": {"serialNumber": serial}})))
        .await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    avoid_totp_window_edge().await;
    let code = user.totp_code_now();
    ns.approve("app", &code, "alice").await?;
    let st = wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let key = st.status.as_ref().and_then(|s| s.access_key_id.clone());
    assert_eq!(sts.call_count(), 1);

    // The same code again, as a re-applied manifest would set it.
    ns.approve("app", &code, "alice").await?;
    let st = wait_condition(&ns, "app", "Issuing", "False", "TokenCodeReused", T).await?;
    let annotations = st.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("stssession.dev/token-code"),
        "{annotations:?}"
    );
    assert_eq!(sts.call_count(), 1, "the spent code was sent to STS");
    // The session is untouched.
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    assert_eq!(
        st.status.as_ref().and_then(|s| s.access_key_id.clone()),
        key
    );
    assert!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "TokenCodeReused")
    );
    Ok(())
}

/// If the current TOTP window ends within 3 s, waits for the next one.
async fn avoid_totp_window_edge() {
    let into_window = jiff::Timestamp::now().as_millisecond().rem_euclid(30_000);
    if into_window > 27_000 {
        tokio::time::sleep(Duration::from_millis((30_000 - into_window + 200) as u64)).await;
    }
}
