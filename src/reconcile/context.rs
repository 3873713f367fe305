//! What every reconcile shares: the clients, the settings, and this process's small memory of
//! each object (kept only while there is something to remember).

use crate::crd::{FIELD_MANAGER, OWNER_UID_LABEL};
use crate::metrics::Metrics;
use crate::plan::{MAX_WAIT, Remembered, Timing};
use crate::requeue::Requeues;
use crate::sts::{EndpointPolicy, StsClient};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// What the operator is told at start.
#[derive(Clone)]
pub struct Settings {
    pub default_region: String,
    pub endpoint_policy: EndpointPolicy,
    pub timing: Timing,
    /// Name of this process (pod name), for Events and claim messages.
    pub instance: String,
}

/// Per-object memory that must not be lost between reconciles of one process, but need not
/// survive it.
#[derive(Default)]
pub(crate) struct Memory {
    /// What the decisions remember (src/plan).
    pub remembered: Remembered,
    /// resourceVersions of this process's last writes of the output Secret and the Secret
    /// keeping the session (at most one each): those changes, seen again on the watch, need no
    /// reconcile.
    secret_written: Vec<String>,
    /// Secret writes of this process in flight: a labelled Secret of this object seen on the
    /// watch meanwhile may be that write coming back before its response (see
    /// [`Context::is_own_secret_write`]).
    writing: u8,
    /// resourceVersions seen on the watch while a write was in flight (at most 4).
    seen_while_writing: Vec<String>,
    /// Consecutive reconcile errors, for the error backoff.
    pub errors: u32,
}

impl Memory {
    fn is_empty(&self) -> bool {
        let Memory {
            remembered,
            secret_written,
            writing,
            seen_while_writing,
            errors,
        } = self;
        *remembered == Remembered::default()
            && secret_written.is_empty()
            && *writing == 0
            && seen_while_writing.is_empty()
            && *errors == 0
    }
}

pub struct Context {
    pub client: Client,
    pub sts: StsClient,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub(crate) events: crate::events::Publisher,
    /// Which labelled Secrets exist, as the owned-Secret watches show them.
    pub(crate) owned: super::owned::OwnedSecrets,
    /// Source Secrets read recently, used again while the watch shows the same version.
    pub(crate) sources: super::sources::SourceSecrets,
    /// Boxed: the table keeps the room of every entry it ever held at once (all of them during
    /// a cold start); a box keeps that room to a pointer.
    memory: Mutex<HashMap<String, Box<Memory>>>,
    /// hash of uid → digest of the status this process last wrote to that object: if the
    /// cached object shows another one, the cache lags behind our own write, and acting on it
    /// could mint twice. Kept apart from `memory` (and as two numbers) because nearly every
    /// object has one until its next reconcile, hours later.
    status_written: Mutex<HashMap<u64, u64>>,
    /// Requeues far off (renewal times, hours away), kept compactly (see `requeue`): one table
    /// per controller, by the namespace it watches (`None`: all), since each one hands its
    /// objects back to its own controller.
    pub(crate) requeues: RwLock<Vec<(Option<String>, Arc<Requeues>)>>,
    /// Sessions AssumedRoles draw on, by SessionToken UID, as last read from their Secrets:
    /// a hundred AssumedRoles refreshed for one new session read its Secret once. An entry is
    /// used only while the SessionToken's status names the same access key id and expiration,
    /// and is dropped once expired.
    sessions: Mutex<HashMap<String, crate::credentials::Credentials>>,
    /// The SessionToken caches of the running controllers, by the namespace each watches
    /// (`None`: all): AssumedRoles read their SessionToken there, not from the API server.
    pub(crate) session_stores: RwLock<
        Vec<(
            Option<String>,
            kube::runtime::reflector::Store<crate::crd::SessionToken>,
        )>,
    >,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// A digest of a status, to recognise our own write in the cache without keeping a copy.
fn status_digest<T: serde::Serialize>(status: &T) -> u64 {
    hash_of(serde_json::to_vec(status).unwrap_or_default())
}

impl Context {
    pub fn new(client: Client, sts: StsClient, metrics: Arc<Metrics>, settings: Settings) -> Self {
        Self {
            events: crate::events::Publisher::new(
                client.clone(),
                FIELD_MANAGER,
                &settings.instance,
            ),
            client,
            sts,
            metrics,
            settings,
            owned: super::owned::OwnedSecrets::default(),
            sources: super::sources::SourceSecrets::default(),
            memory: Mutex::default(),
            status_written: Mutex::default(),
            requeues: RwLock::default(),
            sessions: Mutex::default(),
            session_stores: RwLock::default(),
        }
    }

    /// What the controller should do after a reconcile of `namespace/name` that needs another
    /// one in `delay` (or, with `None`, only on a change): far-off waits are kept in the
    /// controller's requeue table, shorter ones in kube-runtime's scheduler.
    pub(crate) fn requeue(&self, namespace: &str, name: &str, delay: Option<Duration>) -> Action {
        let delay = delay.map(|d| d.min(MAX_WAIT));
        let table = self.requeues_of(namespace);
        match (delay, table) {
            (Some(d), Some(table)) if d > crate::requeue::FAR => {
                let at = tokio::time::Instant::now().checked_add(d);
                match at {
                    Some(at) => table.schedule(namespace, name, at),
                    None => table.cancel(namespace, name),
                }
                Action::await_change()
            }
            (delay, table) => {
                if let Some(table) = table {
                    table.cancel(namespace, name);
                }
                delay.map_or_else(Action::await_change, Action::requeue)
            }
        }
    }

    /// The far-off requeue table of the controller watching `namespace`.
    fn requeues_of(&self, namespace: &str) -> Option<Arc<Requeues>> {
        let tables = self.requeues.read().unwrap_or_else(|p| p.into_inner());
        tables
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .map(|(_, table)| table.clone())
    }

    pub(crate) fn note_status_write<T: serde::Serialize>(&self, uid: &str, status: &T) {
        self.status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash_of(uid), status_digest(status));
    }

    /// Whether the cached object lags behind this process's last status write to it; once it
    /// does not, that write is forgotten. (Only here, not on watch events: a reconcile may
    /// start with a snapshot older than what the watch shows meanwhile.)
    pub(crate) fn status_cache_lags<T: serde::Serialize>(
        &self,
        uid: &str,
        cached: Option<&T>,
    ) -> bool {
        let mut map = self
            .status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = hash_of(uid);
        let lags = map
            .get(&key)
            .is_some_and(|w| Some(*w) != cached.map(status_digest));
        if !lags
            && map.remove(&key).is_some()
            && map.capacity() > 64
            && map.len() < map.capacity() / 4
        {
            map.shrink_to_fit();
        }
        lags
    }

    /// Runs `f` on the object's memory; an entry left with nothing to remember is dropped, so
    /// that at rest (the usual state of nearly every object) memory holds no entry at all.
    pub(crate) fn with_memory<R>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> R) -> R {
        let mut map = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(uid.to_string()).or_default();
        let result = f(entry);
        if entry.is_empty() {
            map.remove(uid);
        }
        result
    }

    /// What the decisions remember of `uid`.
    pub(crate) fn remembered(&self, uid: &str) -> Remembered {
        self.with_memory(uid, |m| m.remembered.clone())
    }

    /// Whether a watched Secret of an object is what this process last wrote there (then
    /// forgotten: it has come back once), or may be a write of this process still waiting for
    /// its response (the watch can be faster): then its resourceVersion is kept for
    /// [`Context::secret_write_done`] to tell.
    pub(crate) fn is_own_secret_write(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let labels = secret.labels();
        let (Some(uid), Some(rv)) = (
            labels
                .get(OWNER_UID_LABEL)
                .or_else(|| labels.get(crate::crd::ASSUMED_ROLE_UID_LABEL)),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return false;
        };
        self.with_memory(uid, |m| {
            let before = m.secret_written.len();
            m.secret_written.retain(|w| w != rv);
            if m.secret_written.len() != before {
                return true;
            }
            if m.writing == 0 || m.seen_while_writing.len() >= 4 {
                return false;
            }
            m.seen_while_writing.push(rv.clone());
            true
        })
    }

    /// A Secret write of `uid` is about to be sent.
    pub(crate) fn secret_write_started(&self, uid: &str) {
        self.with_memory(uid, |m| m.writing = m.writing.saturating_add(1));
    }

    /// A Secret write of `uid` is done (`written_rv`: the resourceVersion the API server stored,
    /// if it did).
    /// Returns whether the watch showed, meanwhile, a change of the object's Secrets that was
    /// not this write: the reconcile it would have started is then due.
    pub(crate) fn secret_write_done(&self, uid: &str, written_rv: Option<&str>) -> bool {
        let rv = written_rv.map(str::to_string);
        self.with_memory(uid, |m| {
            m.writing = m.writing.saturating_sub(1);
            let came_back = rv
                .as_ref()
                .is_some_and(|rv| m.seen_while_writing.contains(rv));
            m.seen_while_writing.retain(|s| Some(s) != rv.as_ref());
            if let (Some(rv), false) = (rv, came_back) {
                // One per Secret: the output and the kept session.
                if m.secret_written.len() >= 2 {
                    m.secret_written.remove(0);
                }
                m.secret_written.push(rv);
            }
            if m.writing > 0 {
                return false;
            }
            let missed = !m.seen_while_writing.is_empty();
            m.seen_while_writing.clear();
            missed
        })
    }

    /// The SessionToken `namespace/name` as the cache of the controller watching `namespace`
    /// holds it: `Some(None)` if that cache, fully listed, has none; `None` if there is no
    /// listed cache to ask (then the API server is).
    pub(crate) fn cached_session_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Option<Arc<crate::crd::SessionToken>>> {
        use futures::FutureExt;
        let stores = self
            .session_stores
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (_, store) = stores
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))?;
        store.wait_until_ready().now_or_never()?.ok()?;
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        Some(store.get(&key))
    }

    /// The session of the SessionToken `uid` last read, if it is the one `(access key id,
    /// expiration)` names.
    pub(crate) fn cached_session(
        &self,
        uid: &str,
        key: (&str, jiff::Timestamp),
    ) -> Option<crate::credentials::Credentials> {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid)
            .filter(|c| c.access_key_id == key.0 && c.expiration == key.1)
            .cloned()
    }

    /// Keeps the session of the SessionToken `uid` for [`Context::cached_session`]; drops
    /// expired ones.
    pub(crate) fn cache_session(
        &self,
        uid: &str,
        session: &crate::credentials::Credentials,
        now: jiff::Timestamp,
    ) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, c| c.expiration > now);
        map.insert(uid.to_string(), session.clone());
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash_of(uid));
    }
}
