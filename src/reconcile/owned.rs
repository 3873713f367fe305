//! Which Secrets exist, as the Secret metadata watch shows them (every Secret of the watched
//! scope, labelled or not; only an 8-byte hash of each name and one of its resourceVersion are
//! kept): a reconcile need not GET a Secret the watch has listed as absent (a cold start's
//! output Secrets: one request fewer per SessionToken), someone else's namesake is known before
//! any STS call, and a source Secret read before is read again only once the watch shows
//! another version of it ([`super::sources`]).
//!
//! Only absence is trusted, and only where it is safe: a Secret created so recently that the
//! watch has not shown it yet refuses the create that follows (409), and that name is then
//! marked [`OwnedSecrets::unsure`] and read on every reconcile until a read shows it absent or
//! ours (likewise after any refused create). Until a watch has listed its scope once, nothing
//! is known absent there.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// The labelled Secrets of each watched scope, and the names whose state must be read.
#[derive(Default)]
pub struct OwnedSecrets {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    scopes: Vec<Scope>,
    /// Names where a create met a namesake, or a read found someone else's Secret.
    unsure: HashSet<u64>,
}

struct Scope {
    /// The namespace the watch covers (`None`: all).
    namespace: Option<String>,
    /// Whether the watch has listed the scope at least once: before, nothing is known absent.
    listed: bool,
    /// Each Secret's name hash → the hash of its resourceVersion ([`UNKNOWN`] after this
    /// process's own write, until the watch shows it).
    known: HashMap<u64, u64>,
    /// Filled during a (re)list, swapped in when it is done.
    relisting: Option<HashMap<u64, u64>>,
}

/// The version hash of a Secret this process wrote and the watch has not shown yet.
const UNKNOWN: u64 = 0;

/// The hash of a Secret's resourceVersion (never [`UNKNOWN`]).
pub(crate) fn version_hash(resource_version: Option<&str>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    resource_version.unwrap_or_default().hash(&mut h);
    h.finish().max(1)
}

fn version_of(s: &PartialObjectMeta<Secret>) -> u64 {
    version_hash(s.metadata.resource_version.as_deref())
}

/// The hash a Secret is known by (here and in [`super::sources`]).
pub(crate) fn key(namespace: &str, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish()
}

fn key_of(s: &PartialObjectMeta<Secret>) -> u64 {
    key(&s.namespace().unwrap_or_default(), &s.name_any())
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

impl OwnedSecrets {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of `namespace` (`None`: all) starts: nothing known until it has listed.
    pub fn start(&self, namespace: Option<&str>) {
        let mut inner = self.lock();
        inner.scopes.retain(|s| s.namespace.as_deref() != namespace);
        inner.scopes.push(Scope {
            namespace: namespace.map(str::to_owned),
            listed: false,
            known: HashMap::new(),
            relisting: None,
        });
    }

    /// The watch of `namespace` has stopped: its scope is forgotten.
    pub fn stop(&self, namespace: Option<&str>) {
        self.lock()
            .scopes
            .retain(|s| s.namespace.as_deref() != namespace);
    }

    /// One event of the watch of `namespace`.
    pub fn record(&self, namespace: Option<&str>, event: &Event<PartialObjectMeta<Secret>>) {
        let mut inner = self.lock();
        let Some(scope) = inner
            .scopes
            .iter_mut()
            .find(|s| s.namespace.as_deref() == namespace)
        else {
            return;
        };
        match event {
            Event::Init => scope.relisting = Some(HashMap::new()),
            Event::InitApply(s) => {
                scope
                    .relisting
                    .get_or_insert_default()
                    .insert(key_of(s), version_of(s));
            }
            Event::InitDone => {
                let mut listed = scope.relisting.take().unwrap_or_default();
                listed.shrink_to_fit();
                scope.known = listed;
                scope.listed = true;
            }
            Event::Apply(s) => {
                scope.known.insert(key_of(s), version_of(s));
                if let Some(r) = scope.relisting.as_mut() {
                    r.insert(key_of(s), version_of(s));
                }
            }
            Event::Delete(s) => {
                scope.known.remove(&key_of(s));
                if let Some(r) = scope.relisting.as_mut() {
                    r.remove(&key_of(s));
                }
            }
        }
    }

    /// Whether the Secret `namespace/name` is known not to exist, so that reading it can be
    /// skipped: a watch covering the namespace has listed it without that Secret, and no write
    /// or read since has found a namesake there.
    pub fn absent(&self, namespace: &str, name: &str) -> bool {
        let inner = self.lock();
        let k = key(namespace, name);
        if inner.unsure.contains(&k) {
            return false;
        }
        inner
            .scopes
            .iter()
            .find(|s| s.covers(namespace))
            .is_some_and(|s| s.listed && !s.known.contains_key(&k))
    }

    /// The hash of the resourceVersion the watch last showed of the Secret `namespace/name`,
    /// if a watch covering the namespace has listed it and shown it since.
    pub fn version(&self, namespace: &str, name: &str) -> Option<u64> {
        let inner = self.lock();
        let k = key(namespace, name);
        inner
            .scopes
            .iter()
            .find(|s| s.covers(namespace))
            .filter(|s| s.listed)
            .and_then(|s| s.known.get(&k).copied())
            .filter(|v| *v != UNKNOWN)
    }

    /// This process has just created or applied the Secret: it exists (the watch may tell
    /// later).
    pub fn wrote(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        let k = key(namespace, name);
        for s in inner.scopes.iter_mut().filter(|s| s.covers(namespace)) {
            s.known.insert(k, UNKNOWN);
        }
    }

    /// A create met a namesake, or a read found a Secret that is not ours: read this name
    /// from now on.
    pub fn unsure(&self, namespace: &str, name: &str) {
        self.lock().unsure.insert(key(namespace, name));
    }

    /// A read found the Secret absent or ours: the watch can be trusted for it again.
    pub fn sure(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        if inner.unsure.remove(&key(namespace, name)) && inner.unsure.is_empty() {
            inner.unsure.shrink_to_fit();
        }
    }

    /// How many labelled Secrets the watches know (for tests).
    #[cfg(test)]
    fn known(&self) -> usize {
        self.lock().scopes.iter().map(|s| s.known.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(ns: &str, name: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn nothing_is_absent_before_the_watch_has_listed() {
        let o = OwnedSecrets::default();
        assert!(!o.absent("a", "x"), "no watch at all");
        o.start(Some("a"));
        assert!(!o.absent("a", "x"), "not listed yet");
        o.record(Some("a"), &Event::Init);
        o.record(Some("a"), &Event::InitApply(secret("a", "y")));
        assert!(!o.absent("a", "x"), "listing");
        o.record(Some("a"), &Event::InitDone);
        assert!(o.absent("a", "x"));
        assert!(!o.absent("a", "y"));
        assert!(!o.absent("b", "x"), "a namespace no watch covers");
    }

    #[test]
    fn watch_events_writes_and_namesakes() {
        let o = OwnedSecrets::default();
        o.start(None);
        o.record(None, &Event::Init);
        o.record(None, &Event::InitDone);
        assert!(o.absent("a", "x"));
        o.wrote("a", "x");
        assert!(!o.absent("a", "x"), "our own create");
        o.record(None, &Event::Delete(secret("a", "x")));
        assert!(o.absent("a", "x"), "deleted");
        o.record(None, &Event::Apply(secret("a", "x")));
        assert!(!o.absent("a", "x"), "created by someone, labelled");
        o.record(None, &Event::Delete(secret("a", "x")));
        o.unsure("a", "x");
        assert!(!o.absent("a", "x"), "a namesake the watch cannot see");
        o.sure("a", "x");
        assert!(o.absent("a", "x"));
    }

    #[test]
    fn the_version_is_what_the_watch_showed_last() {
        let o = OwnedSecrets::default();
        let mut s = secret("a", "keys");
        s.metadata.resource_version = Some("5".into());
        o.start(Some("a"));
        o.record(Some("a"), &Event::Init);
        o.record(Some("a"), &Event::InitApply(s.clone()));
        assert_eq!(o.version("a", "keys"), None, "not listed yet");
        o.record(Some("a"), &Event::InitDone);
        assert_eq!(o.version("a", "keys"), Some(version_hash(Some("5"))));
        assert_eq!(o.version("b", "keys"), None, "a namespace no watch covers");
        s.metadata.resource_version = Some("6".into());
        o.record(Some("a"), &Event::Apply(s.clone()));
        assert_eq!(o.version("a", "keys"), Some(version_hash(Some("6"))));
        o.wrote("a", "keys");
        assert_eq!(o.version("a", "keys"), None, "written here, not shown yet");
        o.record(Some("a"), &Event::Delete(s));
        assert_eq!(o.version("a", "keys"), None, "deleted");
    }

    #[test]
    fn a_relist_replaces_what_was_known() {
        let o = OwnedSecrets::default();
        o.start(Some("a"));
        o.record(Some("a"), &Event::Init);
        o.record(Some("a"), &Event::InitApply(secret("a", "x")));
        o.record(Some("a"), &Event::InitDone);
        assert!(!o.absent("a", "x"));
        // The watch broke; the Secret was deleted meanwhile; the relist no longer has it.
        o.record(Some("a"), &Event::Init);
        assert!(!o.absent("a", "x"), "still known during the relist");
        o.record(Some("a"), &Event::InitApply(secret("a", "y")));
        o.record(Some("a"), &Event::InitDone);
        assert!(o.absent("a", "x"));
        assert!(!o.absent("a", "y"));
        assert_eq!(o.known(), 1);
        o.stop(Some("a"));
        assert!(!o.absent("a", "x"), "no watch any more");
    }
}
