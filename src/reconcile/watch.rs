//! The watches that feed the reconciler: SessionTokens (cached, without what the operator never
//! reads) and the metadata of Secrets (which exist; the one a SessionToken writes triggers it),
//! each object read on its own
//! ([`Tolerant`]): one that cannot be read is skipped, logged by name and counted, and never
//! stops the list or watch of the others.

use super::context::Context;
use super::{error_policy, reconcile};
use crate::approval;
use crate::crd::{ASSUMED_ROLE_ANNOTATION, AssumedRole, OWNER_NAME_ANNOTATION, SessionToken};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

pub use super::tolerant::Tolerant;

/// Hash of what should trigger a reconcile: generation (spec), annotations (codes!), labels
/// and deletion. Status-only changes, our own writes included, are filtered out.
fn trigger_hash(st: &SessionToken) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    st.metadata.generation.hash(&mut h);
    st.metadata.annotations.hash(&mut h);
    st.metadata.uid.hash(&mut h);
    st.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// `predicate_filter(trigger_hash, Default::default())` (kube's), with the same rules in a tenth
/// of the memory: an object passes when its `trigger_hash` differs from the last one seen for it
/// (namespace, name and uid) or when that was an hour ago or more (kube's default TTL), and
/// entries not seen for an hour are swept hourly. kube keys its table with the object's name,
/// namespace and uid as three `String`s (some 250 bytes an object, 2.5 MiB at 10,000); here a
/// hash of them and the second last seen: 24 bytes.
struct TriggerFilter {
    /// hash of (namespace, name, uid) → (trigger hash, seconds after `start` last seen)
    seen: HashMap<u64, (u64, u32)>,
    start: Instant,
    last_swept: u32,
}

impl TriggerFilter {
    const TTL_SECS: u32 = 3600;

    fn new() -> Self {
        Self {
            seen: HashMap::new(),
            start: Instant::now(),
            last_swept: 0,
        }
    }

    /// Whether `st` should trigger a reconcile; records what was seen.
    fn changed(&mut self, st: &SessionToken) -> bool {
        let now = u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.changed_at(st, now)
    }

    /// [`TriggerFilter::changed`], `now` seconds after `start` (not before any earlier call's).
    fn changed_at(&mut self, st: &SessionToken, now: u32) -> bool {
        if now.saturating_sub(self.last_swept) >= Self::TTL_SECS {
            self.seen
                .retain(|_, (_, seen)| now.saturating_sub(*seen) < Self::TTL_SECS);
            self.last_swept = now;
        }
        let Some(value) = trigger_hash(st) else {
            return true;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&st.metadata.namespace, &st.metadata.name, &st.metadata.uid).hash(&mut h);
        match self.seen.insert(h.finish(), (value, now)) {
            Some((previous, seen)) => {
                previous != value || now.saturating_sub(seen) >= Self::TTL_SECS
            }
            None => true,
        }
    }
}

/// The cache keeps SessionTokens trimmed to what the operator reads
/// ([`approval::trim_for_cache`]).
fn trim(st: &mut SessionToken) {
    approval::trim_for_cache(st, &[super::TEST_PANIC_ANNOTATION]);
}

/// Retry delays of the watches: 500 ms doubling to 5 s, with jitter, back to the start after
/// any success. kube's default goes up to 30 s, and every `410 Gone` that follows an API server
/// restart (the watch cache starts anew) counts as a failure: new SessionTokens went unseen
/// for up to half a minute after the API server was back (tests/faults/main.rs,
/// `operator_rides_out_an_api_server_and_etcd_restart`: 16-18 s, now 2-5 s).
/// Two watches per namespace polled every 5 s at most stay light for any API server.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(Self::CAP);
        Some(delay.mul_f64(0.8 + 0.4 * rand::random::<f64>()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A watch event of `Tolerant` objects as one of readable objects: an object that cannot be
/// read is logged (its name only), counted and, if it was known, forgotten; never an error.
fn readable<K, F>(event: watcher::Event<Tolerant<K>>, unreadable: &F) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()>,
    F: Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<K>,
{
    use watcher::Event;
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(Tolerant::Read(k)) => Some(Event::InitApply(k)),
        Event::InitApply(Tolerant::Unreadable(meta)) => {
            let _ = unreadable(&meta);
            None
        }
        Event::Apply(Tolerant::Read(k)) => Some(Event::Apply(k)),
        // The cache forgets an object once readable that no longer is.
        Event::Apply(Tolerant::Unreadable(meta)) => unreadable(&meta).map(Event::Delete),
        Event::Delete(Tolerant::Read(k)) => Some(Event::Delete(k)),
        Event::Delete(Tolerant::Unreadable(meta)) => unreadable(&meta).map(Event::Delete),
    }
}

/// Logs and counts an object of `kind` that cannot be read.
fn report_unreadable(
    metrics: &crate::metrics::Metrics,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) {
    metrics.unreadable_object(kind);
    warn!(
        kind,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        "skipping an object that cannot be read (the others are served)"
    );
}

/// The SessionToken a labelled Secret belongs to: its controller owner reference or, for a
/// Secret kept with `retainOnDelete` (no owner reference), the owner's name the operator
/// annotated it with. Deleted or altered, either Secret starts a reconcile of its SessionToken.
/// (Whoever can write a Secret in a namespace can only start reconciles of SessionTokens there;
/// whether the Secret is the object's is decided by `secret::ownership` on what is read.)
fn owner_of(secret: PartialObjectMeta<Secret>) -> Option<ObjectRef<SessionToken>> {
    let namespace = secret.namespace()?;
    let by_reference = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == SessionToken::kind(&()))
        .map(|o| o.name.as_str());
    let name = by_reference.or_else(|| {
        secret
            .annotations()
            .get(OWNER_NAME_ANNOTATION)
            .map(String::as_str)
    })?;
    crate::plan::is_object_name(name).then(|| ObjectRef::new(name).within(&namespace))
}

/// A SessionToken standing for one that cannot be read: its metadata, an empty spec.
fn stand_in(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> SessionToken {
    use crate::crd::{SessionTokenSpec, SourceCredentials, SourceSecretRef};
    let mut st = SessionToken::new(
        meta.name.as_deref().unwrap_or_default(),
        SessionTokenSpec {
            duration_seconds: crate::crd::DEFAULT_DURATION_SECONDS,
            mfa: None,
            source_credentials: SourceCredentials {
                secret_ref: SourceSecretRef {
                    name: String::new(),
                    access_key_id_key: String::new(),
                    secret_access_key_key: String::new(),
                },
            },
            region: None,
            endpoint: None,
            secret: None,
            renewal: None,
            rollout_restart_targets: Vec::new(),
            assume_role: None,
            allowed_roles: Vec::new(),
        },
    );
    st.metadata = meta.clone();
    st
}

/// Runs the controller for one scope (all namespaces, or one) until `shutdown` resolves; then
/// it takes no new work and returns once the reconciles in flight are done.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    type Sessions = Api<Tolerant<SessionToken>>;
    type Secrets = Api<Tolerant<PartialObjectMeta<Secret>>>;
    let (sessions, secrets): (Sessions, Secrets) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    ctx.session_stores
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((namespace.clone(), reader.clone()));
    // Triggers of AssumedRoles: their SessionToken's session changed; their Secret changed.
    let (session_tx, session_rx) = futures::channel::mpsc::unbounded();
    let (role_secret_tx, role_secret_rx) = futures::channel::mpsc::unbounded();
    let mut session_changes = SessionChanges::default();
    let requeues = Arc::new(crate::requeue::Requeues::default());
    ctx.requeues
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((namespace.clone(), requeues.clone()));
    let forget_requeues = requeues.clone();
    let (registry, this_table) = (ctx.clone(), requeues.clone());
    let metrics = ctx.metrics.clone();
    let forget_ctx = ctx.clone();
    let m1 = ctx.metrics.clone();
    let main_stream = watcher(sessions, watcher::Config::default().any_semantic())
        .backoff(WatchBackoff::default())
        .try_filter_map(move |event| {
            let unreadable = |meta: &_| {
                report_unreadable(&m1, "SessionToken", meta);
                Some(stand_in(meta))
            };
            std::future::ready(Ok(readable(event, &unreadable)))
        })
        .modify(trim)
        .reflect(writer)
        .inspect_ok(move |event| {
            if let Some(changed) = session_changes.changed(event) {
                let _ = session_tx.unbounded_send(changed);
            }
            if let watcher::Event::Delete(st) = event {
                let namespace = st.namespace().unwrap_or_default();
                metrics.remove_session(&namespace, &st.name_any());
                forget_ctx.forget(st.metadata.uid.as_deref().unwrap_or_default());
                forget_requeues.cancel(&namespace, &st.name_any());
            }
        })
        .applied_objects()
        .try_filter({
            let mut filter = TriggerFilter::new();
            move |st| std::future::ready(filter.changed(st))
        })
        // From here on only the object's reference (namespace, name) is used, kept in the
        // controller's scheduler (twice) until the next reconcile, which reads the object from
        // the cache: without uid and resourceVersion, which the reference would carry unread.
        .map_ok(|mut st| {
            st.metadata.uid = None;
            st.metadata.resource_version = None;
            st
        });
    let owned = secret_watch(&ctx, secrets, namespace.clone(), role_secret_tx);
    // Far-off requeues of this controller's objects come back to it through a channel.
    let (due_tx, due_rx) = futures::channel::mpsc::unbounded();
    let requeue_task = tokio::spawn(async move {
        requeues
            .run(|object| due_tx.unbounded_send(object).map_err(|_| ()))
            .await
    });
    // Source keys read for a burst of reconciles are not kept once it is over.
    let sweep_task = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut every = tokio::time::interval(super::sources::TTL);
            loop {
                every.tick().await;
                ctx.sources.expire(std::time::Instant::now());
            }
        }
    });
    let shutdown = futures::FutureExt::shared(shutdown);
    let roles = run_assumed_roles(
        ctx.clone(),
        namespace.clone(),
        concurrency,
        (session_rx, role_secret_rx),
        shutdown.clone(),
    );
    let sessions = Controller::for_stream(main_stream, reader)
        .watches_stream(owned, owner_of)
        .reconcile_on(due_rx)
        // The controller backs off on the watches' errors a second time: same policy.
        .trigger_backoff(WatchBackoff::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(log_result);
    futures::join!(sessions, roles);
    requeue_task.abort();
    sweep_task.abort();
    registry.sources.clear();
    registry.owned.stop(namespace.as_deref());
    registry
        .session_stores
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(scope, _)| *scope != namespace);
    // (A later run, after leadership comes back, starts with a table of its own.)
    registry
        .requeues
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(_, table)| !Arc::ptr_eq(table, &this_table));
}

/// The metadata of the scope's Secrets, never kept: which names exist (`Context::owned`, 8
/// bytes a Secret), and the triggers of the SessionToken or AssumedRole a Secret names (the
/// latter sent to `roles`).
fn secret_watch(
    ctx: &Arc<Context>,
    secrets: Api<Tolerant<PartialObjectMeta<Secret>>>,
    namespace: Option<String>,
    roles: futures::channel::mpsc::UnboundedSender<ObjectRef<AssumedRole>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    ctx.owned.start(namespace.as_deref());
    let (index, own, m2) = (ctx.clone(), ctx.clone(), ctx.metrics.clone());
    let scope = namespace;
    watcher(
        secrets,
        // All Secrets of the scope, not only the labelled ones: which names are taken is what
        // lets a reconcile skip reading an output Secret that does not exist, and a namesake
        // of someone else's must be known before an STS call, not after. Lists are paged
        // (500 at a time, read from etcd: no whole list held at once), and nothing of an
        // object is kept but an 8-byte hash of its name.
        watcher::Config::default(),
    )
    .backoff(WatchBackoff::default())
    .try_filter_map(move |event| {
        // An unreadable Secret still has its owner: it triggers that SessionToken.
        let unreadable = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            report_unreadable(&m2, "Secret", meta);
            Some(PartialObjectMeta::<Secret> {
                types: None,
                metadata: meta.clone(),
                _phantom: std::marker::PhantomData,
            })
        };
        std::future::ready(Ok(readable(event, &unreadable)))
    })
    .inspect_ok(move |event| index.owned.record(scope.as_deref(), event))
    .touched_objects()
    // A Secret of an AssumedRole triggers that AssumedRole (unless it is our own write).
    .inspect_ok({
        let ctx = ctx.clone();
        move |s| {
            if let Some(role) = role_owner_of(s)
                && !ctx.is_own_secret_write(s)
            {
                let _ = roles.unbounded_send(role);
            }
        }
    })
    // Only a Secret that names its SessionToken (its owner reference or, retained, the
    // operator's annotation) triggers it; a namesake of someone else's triggers nothing.
    .try_filter(|s| std::future::ready(owner_of(s.clone()).is_some()))
    // Our own writes come back on this watch: the reconcile that made them needs no other.
    .try_filter(move |s| std::future::ready(!own.is_own_secret_write(s)))
}

async fn log_result<K, E>(
    result: Result<
        (ObjectRef<K>, kube::runtime::controller::Action),
        kube::runtime::controller::Error<E, watcher::Error>,
    >,
) where
    K: Resource,
    K::DynamicType: std::fmt::Debug + Eq + Hash + Clone,
    E: std::error::Error + 'static,
{
    match result {
        Ok((obj, _)) => debug!(object = %obj, "reconciled"),
        Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
            debug!(object = %obj, "gone")
        }
        Err(e) => debug!(error = %e, "controller event"),
    }
}

/// Which SessionTokens' sessions changed, as AssumedRoles see them: the session (its key and
/// expiration, its Secret), what it is approved for and may be used for, where STS is called,
/// the object itself (recreated, deleted). One hash per SessionToken, 16 bytes.
#[derive(Default)]
struct SessionChanges {
    seen: HashMap<u64, u64>,
}

impl SessionChanges {
    /// The SessionToken of `event`, if AssumedRoles drawing on it should look again. The first
    /// list records without triggering: every AssumedRole is reconciled on its own first list.
    fn changed(&mut self, event: &watcher::Event<SessionToken>) -> Option<ObjectRef<SessionToken>> {
        let (st, initial) = match event {
            watcher::Event::Apply(st) => (st, false),
            watcher::Event::InitApply(st) => (st, true),
            watcher::Event::Delete(st) => {
                let key = Self::key(st);
                self.seen.remove(&key);
                return Some(ObjectRef::from_obj(st));
            }
            watcher::Event::Init | watcher::Event::InitDone => return None,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let status = st.status.as_ref();
        st.metadata.uid.hash(&mut h);
        st.metadata.deletion_timestamp.is_some().hash(&mut h);
        status
            .map(|s| {
                (
                    &s.access_key_id,
                    &s.secret_name,
                    &s.session_secret_name,
                    &s.approved_for,
                )
            })
            .hash(&mut h);
        status
            .and_then(|s| s.expiration)
            .map(|t| t.as_nanosecond())
            .hash(&mut h);
        (
            &st.spec.allowed_roles,
            &st.spec.region,
            &st.spec.endpoint,
            st.spec.mfa.is_some(),
        )
            .hash(&mut h);
        let value = h.finish();
        let previous = self.seen.insert(Self::key(st), value);
        match (previous, initial) {
            (Some(p), _) if p == value => None,
            (None, true) => None,
            _ => Some(ObjectRef::from_obj(st)),
        }
    }

    fn key(st: &SessionToken) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&st.metadata.namespace, &st.metadata.name).hash(&mut h);
        h.finish()
    }
}

/// The AssumedRole a Secret belongs to: its controller owner reference or, kept with
/// `retainOnDelete`, the operator's annotation.
fn role_owner_of(secret: &PartialObjectMeta<Secret>) -> Option<ObjectRef<AssumedRole>> {
    let namespace = secret.namespace()?;
    let by_reference = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == AssumedRole::kind(&()))
        .map(|o| o.name.as_str());
    let name = by_reference.or_else(|| {
        secret
            .annotations()
            .get(ASSUMED_ROLE_ANNOTATION)
            .map(String::as_str)
    })?;
    crate::plan::is_object_name(name).then(|| ObjectRef::new(name).within(&namespace))
}

/// An AssumedRole standing for one that cannot be read: its metadata, an empty spec (the
/// reconcile then finds no such SessionToken and says so, never calling STS).
fn role_stand_in(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> AssumedRole {
    let spec = crate::crd::AssumedRoleSpec {
        session_token_ref: crate::crd::SessionTokenRef {
            name: String::new(),
        },
        role: crate::crd::AssumeRoleSpec {
            role_arn: String::new(),
            role_session_name: None,
            duration_seconds: crate::crd::DEFAULT_ROLE_DURATION_SECONDS,
            external_id: None,
            tags: Vec::new(),
        },
        secret: None,
        renewal: None,
        rollout_restart_targets: Vec::new(),
    };
    let mut ar = AssumedRole::new(meta.name.as_deref().unwrap_or_default(), spec);
    ar.metadata = meta.clone();
    ar
}

type RoleTriggers = (
    futures::channel::mpsc::UnboundedReceiver<ObjectRef<SessionToken>>,
    futures::channel::mpsc::UnboundedReceiver<ObjectRef<AssumedRole>>,
);

/// The AssumedRole controller of one scope: its own watch (cached without managed fields and
/// annotations), started also when the session of the SessionToken it draws on changes and
/// when its Secret changes.
async fn run_assumed_roles(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    (sessions, secrets): RoleTriggers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Tolerant<AssumedRole>> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (reader, writer) = reflector::store();
    let (metrics, forget) = (ctx.metrics.clone(), ctx.clone());
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .backoff(WatchBackoff::default())
        .try_filter_map(move |event| {
            let unreadable = |meta: &_| {
                report_unreadable(&metrics, "AssumedRole", meta);
                Some(role_stand_in(meta))
            };
            std::future::ready(Ok(readable(event, &unreadable)))
        })
        .modify(|ar: &mut AssumedRole| {
            ar.metadata.managed_fields = None;
            ar.metadata.annotations = None;
        })
        .reflect(writer)
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(ar) = event {
                let ns = ar.namespace().unwrap_or_default();
                forget.metrics.remove_assumed_role(&ns, &ar.name_any());
                forget.forget(ar.metadata.uid.as_deref().unwrap_or_default());
            }
        })
        .applied_objects()
        .predicate_filter(
            |ar: &AssumedRole| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                let meta = &ar.metadata;
                (
                    meta.generation,
                    &meta.uid,
                    meta.deletion_timestamp.is_some(),
                )
                    .hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        );
    let store = reader.clone();
    let drawing_on = sessions.flat_map(move |st: ObjectRef<SessionToken>| {
        let refs: Vec<ObjectRef<AssumedRole>> = store
            .state()
            .iter()
            .filter(|ar| {
                ar.spec.session_token_ref.name == st.name && ar.metadata.namespace == st.namespace
            })
            .map(|ar| ObjectRef::from_obj(&**ar))
            .collect();
        futures::stream::iter(refs)
    });
    Controller::for_stream(stream, reader)
        .reconcile_on(drawing_on)
        .reconcile_on(secrets)
        .trigger_backoff(WatchBackoff::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(super::assumed::reconcile, super::assumed::error_policy, ctx)
        .for_each(log_result)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SessionTokenStatus, TOKEN_CODE_ANNOTATION};

    #[test]
    fn watch_retries_grow_to_a_few_seconds_and_start_over() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        assert!(delays[0] >= Duration::from_millis(400) && delays[0] <= Duration::from_millis(600));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(6)),
            "{delays:?}"
        );
        assert!(delays[7] >= Duration::from_secs(4), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(600));
    }

    #[test]
    fn the_trigger_filter_passes_changes_and_new_objects_only() {
        let spec: crate::crd::SessionTokenSpec = serde_json::from_value(serde_json::json!({
            "sourceCredentials": {"secretRef": {"name": "keys"}}
        }))
        .unwrap();
        let mut st = SessionToken::new("app", spec);
        st.metadata.namespace = Some("team-a".into());
        st.metadata.uid = Some("uid-1".into());
        let mut f = TriggerFilter::new();
        assert!(f.changed_at(&st, 0), "first seen");
        assert!(!f.changed_at(&st, 1), "nothing that triggers changed");
        st.status = Some(SessionTokenStatus {
            rotations: 1,
            ..Default::default()
        });
        assert!(!f.changed_at(&st, 2), "status only");
        st.metadata
            .annotations
            .get_or_insert_default()
            .insert(TOKEN_CODE_ANNOTATION.into(), "123456".into());
        assert!(f.changed_at(&st, 3), "an annotation");
        st.metadata.uid = Some("uid-2".into());
        assert!(f.changed_at(&st, 4), "recreated under the same name");
        st.metadata.name = Some("other".into());
        assert!(f.changed_at(&st, 5), "another object");
        assert!(!f.changed_at(&st, 6));
        assert_eq!(f.seen.len(), 3);
        // Seen an hour ago or more: passes, as with kube's predicate_filter and its TTL.
        let hour_later = 6 + TriggerFilter::TTL_SECS;
        assert!(f.changed_at(&st, hour_later), "seen an hour ago");
        assert!(!f.changed_at(&st, hour_later + 1));
        assert_eq!(f.seen.len(), 1, "the hourly sweep");
    }
}
