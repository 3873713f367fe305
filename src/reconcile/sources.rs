//! Source Secrets read recently, used again while the Secret watch shows the same version.
//!
//! Many SessionTokens often draw on one IAM user's keys: without this, every reconcile that
//! needs them reads the same Secret (on a cold start of 10,000 SessionTokens on one source
//! Secret, 10,000 GETs of it, a third of the operator's requests). A source Secret read here is
//! used again only
//! - while the Secret metadata watch ([`super::owned`]) shows exactly the resourceVersion that
//!   read returned: a change of the keys is seen as soon as the watch shows it, as before
//!   (the next reconcile reads the Secret again);
//! - for at most [`TTL`] after the read, so that keys are not kept in memory longer than a
//!   burst of reconciles needs them;
//! - never while a token code waits: a code is spent only on keys read for it (observe).
//!
//! Only the Secret's name, namespace, resourceVersion and data are kept, and only for Secrets
//! of at most [`MAX_BYTES`] of data; at most [`MAX_ENTRIES`] Secrets at once.

use super::owned::{key, version_hash};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a read is used again at most.
pub const TTL: Duration = Duration::from_secs(30);
/// The largest Secret kept (its data's keys and values together): long-term keys take under
/// 100 bytes; with [`MAX_ENTRIES`], at most 4 MiB of data, however many Secrets a tenant makes.
pub const MAX_BYTES: usize = 4 * 1024;
/// The most Secrets kept at once.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Default)]
pub struct SourceSecrets {
    entries: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    version: u64,
    read_at: Instant,
    secret: Secret,
}

fn fresh(entry: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(entry.read_at) < TTL
}

impl SourceSecrets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Secret `namespace/name` as read less than [`TTL`] before `now`, if `watched` (the
    /// hash of the resourceVersion the watch shows now) is the version that read returned.
    pub fn get(
        &self,
        namespace: &str,
        name: &str,
        watched: Option<u64>,
        now: Instant,
    ) -> Option<Secret> {
        let mut entries = self.lock();
        let k = key(namespace, name);
        let entry = entries.get(&k)?;
        if !fresh(entry, now) {
            entries.remove(&k);
            return None;
        }
        (Some(entry.version) == watched).then(|| entry.secret.clone())
    }

    /// A read of a source Secret (at `now`), kept if it is small enough and there is room.
    pub fn put(&self, secret: &Secret, now: Instant) {
        let (Some(namespace), Some(name)) = (
            secret.metadata.namespace.as_deref(),
            secret.metadata.name.as_deref(),
        ) else {
            return;
        };
        let bytes = secret.data.iter().flatten().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len()).saturating_add(v.0.len())
        });
        if bytes > MAX_BYTES {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| fresh(e, now));
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        let kept = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                resource_version: secret.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            data: Some(secret.data.clone().unwrap_or_default()),
            ..Secret::default()
        };
        entries.insert(
            key(namespace, name),
            Entry {
                version: version_hash(secret.metadata.resource_version.as_deref()),
                read_at: now,
                secret: kept,
            },
        );
    }

    /// Forgets every read older than [`TTL`] (run periodically: keys are not kept idle).
    pub fn expire(&self, now: Instant) {
        let mut entries = self.lock();
        entries.retain(|_, e| fresh(e, now));
        if entries.is_empty() {
            entries.shrink_to_fit();
        }
    }

    /// Forgets every read (the watches stopped: nothing would expire them).
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.clear();
        entries.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(name: &str, rv: &str, bytes: usize) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("a".into()),
                resource_version: Some(rv.into()),
                labels: Some(BTreeMap::from([("x".into(), "y".into())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "AWS_SECRET_ACCESS_KEY".into(),
                ByteString(vec![b'k'; bytes]),
            )])),
            ..Secret::default()
        }
    }

    fn v(rv: &str) -> Option<u64> {
        Some(version_hash(Some(rv)))
    }

    #[test]
    fn a_read_is_used_again_only_at_the_version_the_watch_shows() {
        let s = SourceSecrets::default();
        let t = Instant::now();
        assert!(s.get("a", "keys", v("5"), t).is_none(), "never read");
        s.put(&secret("keys", "5", 40), t);
        let got = s.get("a", "keys", v("5"), t).expect("same version");
        assert_eq!(got.data, secret("keys", "5", 40).data);
        assert!(
            got.metadata.labels.is_none(),
            "only name, namespace, version, data"
        );
        assert!(
            s.get("a", "keys", v("6"), t).is_none(),
            "the watch shows a change"
        );
        assert!(
            s.get("a", "keys", None, t).is_none(),
            "the watch does not know it"
        );
        assert!(s.get("b", "keys", v("5"), t).is_none(), "another namespace");
    }

    #[test]
    fn reads_expire_and_large_or_too_many_secrets_are_not_kept() {
        let s = SourceSecrets::default();
        let t = Instant::now();
        s.put(&secret("keys", "5", 40), t);
        assert!(s.get("a", "keys", v("5"), t + TTL).is_none(), "expired");
        assert_eq!(s.len(), 0, "and forgotten");
        s.put(&secret("big", "1", MAX_BYTES), t);
        assert_eq!(s.len(), 0, "too large");
        for i in 0..MAX_ENTRIES + 10 {
            s.put(&secret(&format!("k{i}"), "1", 10), t);
        }
        assert_eq!(s.len(), MAX_ENTRIES);
        s.put(&secret("late", "1", 10), t + TTL);
        assert_eq!(s.len(), 1, "the expired ones made room");
        s.expire(t + TTL + TTL);
        assert_eq!(s.len(), 0);
        s.put(&secret("keys", "5", 40), t);
        s.clear();
        assert!(s.get("a", "keys", v("5"), t).is_none(), "cleared");
    }
}
