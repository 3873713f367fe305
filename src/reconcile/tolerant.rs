//! Objects read one by one. A list or watch of `K` fails as a whole when one item does not
//! deserialize, and the Kubernetes client then logs the whole response body (every object of
//! the page, any token code waiting in an annotation with them). [`Tolerant<K>`] deserializes
//! each item on its own: times the API server admits but `jiff` cannot hold (`9999-12-31T23:59:59Z`
//! in `managedFields` or status) are dropped or reset first, and an item that still cannot be
//! read becomes [`Tolerant::Unreadable`] with its metadata only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::borrow::Cow;

/// An object of kind `K`, or the metadata of one that could not be read as a `K`. (Only in
/// flight between the API server and the cache: the size of its variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Tolerant<K> {
    Read(K),
    Unreadable(ObjectMeta),
}

impl<K: Resource<DynamicType = ()>> Resource for Tolerant<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn metadata_api() -> bool {
        K::metadata_api()
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Tolerant::Read(k) => k.meta(),
            Tolerant::Unreadable(meta) => meta,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Tolerant::Read(k) => k.meta_mut(),
            Tolerant::Unreadable(meta) => meta,
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Tolerant<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The object's text, read as a `K` directly (the usual case, and the cheap one); only
        // if that fails is it read as JSON, mended, and read again.
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        if let Ok(k) = serde_json::from_str::<K>(raw.get()) {
            return Ok(Tolerant::Read(k));
        }
        let mut value: Value = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        mend(&mut value);
        match K::deserialize(&value) {
            Ok(k) => Ok(Tolerant::Read(k)),
            Err(_) => Ok(Tolerant::Unreadable(bare_meta(&value))),
        }
    }
}

/// The name, namespace, uid, resourceVersion and owner references of an object that cannot be
/// read: enough to skip it, to forget it, and to trigger its owner.
fn bare_meta(value: &Value) -> ObjectMeta {
    let meta = value.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ObjectMeta {
        name: text("name"),
        namespace: text("namespace"),
        uid: text("uid"),
        resource_version: text("resourceVersion"),
        owner_references: meta
            .and_then(|m| m.get("ownerReferences"))
            .and_then(|o| serde_json::from_value(o.clone()).ok()),
        labels: meta
            .and_then(|m| m.get("labels"))
            .and_then(|o| serde_json::from_value(o.clone()).ok()),
        ..ObjectMeta::default()
    }
}

/// Status fields holding times the operator reads, by name (at any depth of `status`).
const OPTIONAL_TIMES: [&str; 4] = ["expiration", "renewalTime", "issuedAt", "assumedAt"];
const REQUIRED_TIMES: [&str; 2] = ["lastTransitionTime", "time"];

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok())
}

/// Drops the `managedFields` times and status times that `jiff` cannot read (optional ones
/// removed, required ones set to the epoch: the decisions then treat them as long past).
fn mend(value: &mut Value) {
    if let Some(entries) = value
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
            if entry.get("time").is_some_and(|t| !is_time(t)) {
                entry.remove("time");
            }
        }
    }
    if let Some(status) = value.get_mut("status") {
        mend_times(status, 0);
    }
}

fn mend_times(value: &mut Value, depth: u8) {
    if depth > 4 {
        return;
    }
    match value {
        Value::Object(map) => {
            map.retain(|k, v| !OPTIONAL_TIMES.contains(&k.as_str()) || is_time(v));
            for (k, v) in map.iter_mut() {
                if REQUIRED_TIMES.contains(&k.as_str()) && !is_time(v) {
                    *v = Value::String("1970-01-01T00:00:00Z".into());
                } else {
                    mend_times(v, depth.saturating_add(1));
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                mend_times(v, depth.saturating_add(1));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SessionToken;

    fn read(v: Value) -> Tolerant<SessionToken> {
        serde_json::from_value(v).unwrap()
    }

    fn object(extra_meta: Value, status: Value) -> Value {
        let mut meta = serde_json::json!({"name": "a", "namespace": "n", "uid": "u"});
        if let (Some(m), Some(e)) = (meta.as_object_mut(), extra_meta.as_object()) {
            m.extend(e.clone());
        }
        serde_json::json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": meta,
            "spec": {"sourceCredentials": {"secretRef": {"name": "k"}}},
            "status": status,
        })
    }

    #[test]
    fn times_beyond_jiff_are_mended_not_fatal() {
        let v = object(
            serde_json::json!({"managedFields": [{"manager": "x", "operation": "Update", "time": "9999-12-31T23:59:59Z"}]}),
            serde_json::json!({
                "expiration": "9999-12-31T23:59:59Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "r", "lastTransitionTime": "x"}],
                "lastFailure": {"time": "nope", "reason": "r", "message": "m"}
            }),
        );
        let Tolerant::Read(st) = read(v) else {
            panic!("not read")
        };
        let status = st.status.unwrap();
        assert_eq!(status.expiration, None);
        assert_eq!(
            status.conditions[0].last_transition_time,
            jiff::Timestamp::UNIX_EPOCH
        );
        assert_eq!(st.metadata.managed_fields.unwrap()[0].time, None);
    }

    #[test]
    fn an_unreadable_object_keeps_its_name() {
        let v = object(serde_json::json!({}), serde_json::json!({})).to_string();
        let v = v.replace(r#"{"name":"k"}"#, r#"{"name":7}"#);
        match serde_json::from_str::<Tolerant<SessionToken>>(&v).unwrap() {
            Tolerant::Unreadable(meta) => assert_eq!(meta.name.as_deref(), Some("a")),
            Tolerant::Read(_) => panic!("read"),
        }
        // A list with one bad item still reads.
        let list = format!(
            r#"{{"items": [{v}, {}]}}"#,
            object(serde_json::json!({}), serde_json::json!({}))
        );
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(&list).unwrap();
        let items: Vec<Tolerant<SessionToken>> =
            serde_json::from_value(parsed["items"].clone()).unwrap();
        assert!(matches!(items[1], Tolerant::Read(_)));
    }
}
