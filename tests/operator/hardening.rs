//! Issue 13 ("Least privilege for real"), the operator's side: Events for the longest names,
//! spent codes, spec changes after an approval, the endpoint's region, MFA calls on a fresh
//! connection.

use super::common::*;
use super::{T, World, source_spec};
use anyhow::Result;
use serde_json::json;
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
