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
    // A first session without an approval gets no Event: the Secret deleted, the second one does.
    ns.secrets()
        .delete("out", &kube::api::DeleteParams::default())
        .await?;
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

/// The spec of the largest SessionToken the CRD admits in what a tenant can grow: 32 labels and
/// 32 annotations on the Secret at their longest, 32 restart targets, 50 session tags.
pub fn largest_spec(i: usize) -> serde_json::Value {
    let key = |p: &str, j: usize| format!("{}{p}{j:02}/{}", "k".repeat(250), "n".repeat(59));
    let labels: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|j| (key("l", j), json!("v".repeat(63))))
        .collect();
    let annotations: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|j| (key("a", j), json!("x".repeat(1024))))
        .collect();
    let targets: Vec<_> = (0..32)
        .map(|j| json!({"kind": "Deployment", "name": format!("{}{j:02}", "d".repeat(251))}))
        .collect();
    let tags: Vec<_> = (0..50)
        .map(|j| json!({"key": format!("{}{j:02}", "t".repeat(126)), "value": "v".repeat(256)}))
        .collect();
    source_spec(json!({
        "secret": {"name": format!("out-{i}"), "labels": labels, "annotations": annotations},
        "rolloutRestartTargets": targets,
        "assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/deployer", "tags": tags},
    }))
}

/// The CRD caps what a tenant can make the operator hold: labels and annotations of the
/// Secret (number, key and value length), and `renewBefore` is at least a minute.
#[tokio::test]
async fn the_crd_caps_what_a_tenant_can_grow() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "caps").await?;
    // The largest admitted.
    let largest = largest_spec(0);
    assert!(serde_json::to_string(&largest)?.len() > 50_000);
    ns.create_session("largest", largest).await?;
    let refused = |name: &'static str, spec: serde_json::Value, why: &'static str| {
        let ns = &ns;
        async move {
            match ns.create_session(name, spec).await {
                Ok(_) => anyhow::bail!("{name} admitted: {why}"),
                Err(e) => anyhow::ensure!(
                    e.to_string().contains(why),
                    "{name} refused for another reason: {e}"
                ),
            }
            Ok(())
        }
    };
    let many: serde_json::Map<String, serde_json::Value> =
        (0..33).map(|j| (format!("k{j}"), json!("v"))).collect();
    refused(
        "labels",
        source_spec(json!({"secret": {"labels": many.clone()}})),
        "must have at most 32",
    )
    .await?;
    refused(
        "annotations",
        source_spec(json!({"secret": {"annotations": many}})),
        "must have at most 32",
    )
    .await?;
    refused(
        "label-value",
        source_spec(json!({"secret": {"labels": {"a": "v".repeat(64)}}})),
        "may not be more than 63",
    )
    .await?;
    refused(
        "annotation-value",
        source_spec(json!({"secret": {"annotations": {"a": "v".repeat(1025)}}})),
        "may not be more than 1024",
    )
    .await?;
    refused(
        "label-key",
        source_spec(json!({"secret": {"labels": {"k".repeat(318): "v"}}})),
        "label keys are at most 317",
    )
    .await?;
    for short in ["0s", "59s", "500ms", "0.5m"] {
        refused(
            "renew",
            source_spec(json!({"renewal": {"renewBefore": short}})),
            "at least one minute",
        )
        .await?;
    }
    ns.create_session(
        "renew-1m",
        source_spec(json!({"renewal": {"renewBefore": "1m"}})),
    )
    .await?;
    ns.create_session(
        "renew-90s",
        source_spec(json!({"renewal": {"renewBefore": "1m30s"}})),
    )
    .await?;
    Ok(())
}
