//! Kubernetes Events (`events.k8s.io/v1`) about SessionTokens, with a small, bounded memory.
//!
//! Same behaviour as kube-runtime's `Recorder`: an Event repeated for the same object (same
//! type, reason and action) within 6 minutes is folded into the first one as a series count
//! (a merge patch) instead of becoming a new object. The difference is what is remembered to do
//! that: kube's `Recorder` keeps every Event it sent in full (about 1 KiB each, plus a rehash of
//! the whole table as it grows) for 6 minutes and walks all of them on every publish, which at
//! 10,000 SessionTokens (one `Issued` Event each at start) was the largest memory consumer
//! after the object cache. Here a repeat needs only the Event's name and count, and expired
//! entries are swept at most once a minute.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;

pub use kube::runtime::events::EventType;

/// An Event about a SessionToken, as the decisions ask for it (`plan`); published by `act`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Event {
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            note,
        }
    }

    pub fn warning(reason: &'static str, note: String) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            note,
        }
    }

    pub fn is_warning(&self) -> bool {
        matches!(self.type_, EventType::Warning)
    }
}

/// How long a published Event can absorb repeats (kube-runtime's value).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// How often expired entries are dropped.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// What makes two Events one series: the regarding object's UID (or namespace/name when it has
/// none), the type, the reason and the action. Kept as a 64-bit hash, not as the strings.
#[derive(Hash)]
struct Key<'a> {
    regarding: &'a str,
    warning: bool,
    reason: &'a str,
    action: &'a str,
}

impl Key<'_> {
    fn digest(&self) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(self)
    }
}

struct Sent {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

struct Cache {
    sent: HashMap<u64, Sent>,
    swept: Timestamp,
}

/// Longest object name the API server admits (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The name of a new Event about `regarding`: `<regarding>.<time in hex>`, as kube's `Recorder`
/// names them. A name too long for that (SessionToken names go up to 253 characters) is cut,
/// and a hash of the whole name keeps two long names that share a beginning apart:
/// `<head>-<hash>.<time>`, at most 253 characters and still a DNS subdomain.
pub fn event_name(regarding: &str, nanos: i128) -> String {
    let suffix = format!("{nanos:x}");
    let full = format!("{regarding}.{suffix}");
    if full.len() <= MAX_NAME {
        return full;
    }
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(regarding);
    let hash = format!("{:08x}", hash & 0xffff_ffff);
    // head + "-" + hash + "." + suffix <= MAX_NAME
    let room = MAX_NAME
        .saturating_sub(suffix.len())
        .saturating_sub(hash.len())
        .saturating_sub(2);
    let mut end = room.min(regarding.len());
    while !regarding.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    // A label of a DNS subdomain ends with a letter or digit.
    let head = regarding
        .get(..end)
        .unwrap_or_default()
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    match head {
        "" => format!("{hash}.{suffix}"),
        head => format!("{head}-{hash}.{suffix}"),
    }
}

pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
}

impl Publisher {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            cache: Mutex::new(Cache {
                sent: HashMap::new(),
                swept: Timestamp::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an Event about `regarding`, or counts a repeat of a recent one.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let regarding_id = regarding.uid.clone().unwrap_or_else(|| {
            format!(
                "{namespace}/{}",
                regarding.name.as_deref().unwrap_or_default()
            )
        });
        let key = Key {
            regarding: &regarding_id,
            warning: matches!(type_, EventType::Warning),
            reason,
            action,
        }
        .digest();
        let repeat = {
            let mut cache = self.lock();
            if now.duration_since(cache.swept) >= SWEEP_EVERY {
                cache
                    .sent
                    .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
                cache.sent.shrink_to_fit();
                cache.swept = now;
            }
            cache
                .sent
                .get(&key)
                .filter(|s| now.duration_since(s.last) < SERIES_WINDOW)
                .map(|s| (s.name.to_string(), s.count.saturating_add(1)))
        };
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some((name, count)) = repeat {
            // (`note` is immutable in events.k8s.io/v1: the first one stays, as with kube's.)
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) },
            });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Some(s) = self.lock().sent.get_mut(&key) {
                        s.count = count;
                        s.last = now;
                    }
                    return Ok(());
                }
                // The Event is gone (its TTL, or deleted): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = event_name(
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond(),
        );
        let event = K8sEvent {
            action: Some(action.into()),
            reason: Some(reason.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(note),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await?;
        self.lock().sent.insert(
            key,
            Sent {
                name: name.into(),
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// Entries held (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.lock().sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                    && l.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && l.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric())
            })
    }

    #[test]
    fn event_names_fit_for_the_longest_object_names() {
        let nanos = i128::from(i64::MAX) * 1000;
        assert_eq!(event_name("app", 255), "app.ff");
        let long = format!("{}.{}", "a".repeat(62), "b-c".repeat(60));
        for name in [
            "x".repeat(253),
            long.clone(),
            format!("{}.{}", "a".repeat(63), "b".repeat(189)),
            format!("{}-{}", "a".repeat(230), "b".repeat(22)),
        ] {
            let e = event_name(&name, nanos);
            assert!(e.len() <= 253, "{} chars", e.len());
            // The API server's check of a name (IsDNS1123Subdomain).
            assert!(is_dns_subdomain(&e), "{e}");
        }
        // Two long names with the same beginning stay apart.
        let a = format!("{}a", "x".repeat(252));
        let b = format!("{}b", "x".repeat(252));
        assert_ne!(event_name(&a, 1), event_name(&b, 1));
    }
}
