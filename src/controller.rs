//! The reconciler: read the SessionToken, its source Secret and its output Secret; decide (see
//! `plan`); claim a code, call STS, write the Secret and the status; requeue at the next
//! instant that matters. Idempotent and level-based: a reconcile that finds everything as it
//! should be writes nothing.

use crate::crd::{
    APPROVED_BY_ANNOTATION, Approval, AssumeRoleSpec, Condition, FIELD_MANAGER, Failure,
    OWNER_UID_LABEL, RENEW_ANNOTATION, RoleStatus, SessionToken, SessionTokenStatus,
    TOKEN_CODE_ANNOTATION,
};
use crate::metrics::{Metrics, SessionMetrics};
use crate::plan::{self, CodeState, SessionState, Timing};
use crate::secret::{self, MANAGED_BY_LABEL, Ownership, SessionSecret};
use crate::sts::{
    AssumeRoleRequest, EndpointPolicy, SessionRequest, StsClient, StsError, TokenCode,
};
use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub const READY: &str = "Ready";
pub const ISSUING: &str = "Issuing";
/// With `spec.assumeRole`: whether the output Secret holds valid role credentials, and why not.
pub const ROLE_ASSUMED: &str = "RoleAssumed";
/// `Issuing` reason while a claimed code is being used.
const CLAIMED: &str = "TokenCodeClaimed";
/// Annotation the claim of a code leaves on the SessionToken: when (RFC 3339) a code was last
/// claimed to be used. Set by the same patch that removes the code, so that no crash can
/// separate the two: a claim that status never resolved (no `Issuing` condition, approval or
/// failure recorded at or after it) was interrupted.
pub const CLAIMED_AT_ANNOTATION: &str = "stssession.dev/token-code-claimed-at";

/// Errors that end a reconcile early; retried with per-object backoff. Failures of STS itself
/// are not errors here: they are recorded in status and retried on schedule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the SessionToken has no {0}")]
    MissingField(&'static str),
    #[error("{0:?} is not a valid Secret name")]
    InvalidName(String),
    #[error("could not write the output Secret, keeping the new session in memory: {0}")]
    SecretWrite(kube::Error),
}

impl Error {
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::MissingField(_) | Error::InvalidName(_) => "InvalidObject",
            Error::SecretWrite(_) => "SecretWrite",
        }
    }
}

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
struct Memory {
    /// A session minted but not yet written (the Secret write failed): written on the next try
    /// instead of spending another STS call, or another code.
    /// (Boxed: rare, and large next to the rest.)
    unsaved: Option<Box<(SessionSecret, Option<Approval>)>>,
    /// (renewal time, period) of the last `TokenCodeRequired` event sent.
    code_required_sent: Option<(Timestamp, u64)>,
    /// Expiration whose `Expired` event was sent.
    expired_sent: Option<Timestamp>,
    /// resourceVersions of this process's last writes of the output Secret and the Secret
    /// keeping the session (at most one each): those changes, seen again on the watch, need no
    /// reconcile.
    secret_written: Vec<String>,
    /// Consecutive reconcile errors, for the error backoff.
    errors: u32,
    /// Consecutive reconciles that found the source Secret missing or unusable.
    source_misses: u32,
}

impl Memory {
    fn is_empty(&self) -> bool {
        // (Destructured, so that a new field cannot be forgotten here.)
        let Memory {
            unsaved,
            code_required_sent,
            expired_sent,
            secret_written,
            errors,
            source_misses,
        } = self;
        unsaved.is_none()
            && code_required_sent.is_none()
            && expired_sent.is_none()
            && secret_written.is_empty()
            && *errors == 0
            && *source_misses == 0
    }
}

pub struct Context {
    pub client: Client,
    pub sts: StsClient,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    events: crate::events::Publisher,
    /// Boxed: a `Memory` is a few hundred bytes, and the table keeps the room of every entry it
    /// ever held at once (all of them during a cold start); a box keeps that room to a pointer.
    memory: Mutex<HashMap<String, Box<Memory>>>,
    /// hash of uid → digest of the status this process last wrote to that object: if the
    /// cached object shows another one, the cache lags behind our own write, and acting on it
    /// could mint twice. Kept apart from `memory` (and as two numbers) because nearly every
    /// object has one until its next reconcile, hours later.
    status_written: Mutex<HashMap<u64, u64>>,
    /// Requeues far off (renewal times, hours away), kept compactly (see `requeue`): one table
    /// per controller (`run`), by the namespace it watches (`None`: all), since each one hands
    /// its objects back to its own controller.
    requeues: std::sync::RwLock<Vec<(Option<String>, Arc<crate::requeue::Requeues>)>>,
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
            memory: Mutex::default(),
            status_written: Mutex::default(),
            requeues: Default::default(),
        }
    }

    /// What the controller should do after a reconcile of `namespace/name` that needs another
    /// one in `delay` (or, with `None`, only on a change): far-off waits are kept in
    /// `self.requeues`, shorter ones in kube-runtime's scheduler.
    fn requeue(&self, namespace: &str, name: &str, delay: Option<Duration>) -> Action {
        let table = self.requeues_of(namespace);
        match (delay, table) {
            (Some(d), Some(table)) if d > crate::requeue::FAR => {
                table.schedule(namespace, name, tokio::time::Instant::now() + d);
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
    fn requeues_of(&self, namespace: &str) -> Option<Arc<crate::requeue::Requeues>> {
        let tables = self.requeues.read().unwrap_or_else(|p| p.into_inner());
        tables
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .map(|(_, table)| table.clone())
    }

    fn uid_key(uid: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        uid.hash(&mut h);
        h.finish()
    }

    fn note_status_write(&self, uid: &str, status: &SessionTokenStatus) {
        self.status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::uid_key(uid), status_digest(status));
    }

    /// Whether the cached object lags behind this process's last status write to it; once it
    /// does not, that write is forgotten. (Only here, not on watch events: a reconcile may
    /// start with a snapshot older than what the watch shows meanwhile.)
    fn status_cache_lags(&self, uid: &str, cached: Option<&SessionTokenStatus>) -> bool {
        let mut map = self
            .status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = Self::uid_key(uid);
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
    fn with_memory<R>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> R) -> R {
        let mut map = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(uid.to_string()).or_default();
        let result = f(entry);
        if entry.is_empty() {
            map.remove(uid);
        }
        result
    }

    /// Whether a watched output Secret is exactly what this process last wrote there (then
    /// forgotten: it has come back once).
    fn is_own_secret_write(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let (Some(uid), Some(rv)) = (
            secret.labels().get(OWNER_UID_LABEL),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return false;
        };
        self.with_memory(uid, |m| {
            let before = m.secret_written.len();
            m.secret_written.retain(|w| w != rv);
            m.secret_written.len() != before
        })
    }

    fn note_secret_write(&self, uid: &str, written: &Secret) {
        if let Some(rv) = written.metadata.resource_version.clone() {
            self.with_memory(uid, |m| {
                // One per Secret: the output and the kept session.
                if m.secret_written.len() >= 2 {
                    m.secret_written.remove(0);
                }
                m.secret_written.push(rv);
            });
        }
    }

    fn forget(&self, uid: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::uid_key(uid));
    }

    pub(crate) async fn event(
        &self,
        st: &SessionToken,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let note = truncate(&note, 1000);
        let regarding = st.object_ref(&());
        if let Err(e) = (self.events)
            .publish(&regarding, type_, reason, "Reconcile", note)
            .await
        {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = truncate(&message, 1000);
    let last_transition_time = match conditions.iter().find(|c| c.type_ == type_) {
        Some(old) if old.status == status => old.last_transition_time,
        _ => plan::round_to_second(now),
    };
    let new = Condition {
        type_: crate::crd::word(type_),
        status: crate::crd::word(status),
        reason: crate::crd::word(reason),
        message,
        last_transition_time,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// A problem with the spec or its inputs that stops minting.
struct Blocker {
    reason: &'static str,
    message: String,
}

/// Everything read for one reconcile.
struct Observed {
    st: Arc<SessionToken>,
    ns: String,
    name: String,
    uid: String,
    generation: Option<i64>,
    now: Timestamp,
    out_name: String,
    /// The output Secret at `out_name`.
    out_secret: Option<Secret>,
    ownership: Ownership,
    /// The Secret that held the session before a rename (at `status.secretName`), if ours.
    old_secret: Option<Secret>,
    /// Name of the Secret keeping the session for `spec.assumeRole` (see
    /// `plan::session_secret_name`), and that Secret, read when `spec.assumeRole` is set or
    /// status says one was kept.
    session_name: String,
    session_secret: Option<Secret>,
    session_ownership: Ownership,
    keys: Result<secret::LongTermKeys, secret::SourceProblem>,
    region: String,
    endpoint: Option<String>,
    blocker: Option<Blocker>,
}

pub async fn reconcile(st: Arc<SessionToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(st.clone(), &ctx).await;
    let uid = st.metadata.uid.clone().unwrap_or_default();
    if result.is_ok() {
        ctx.with_memory(&uid, |m| m.errors = 0);
    }
    ctx.metrics.reconcile_finished(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_reason),
    );
    result
}

/// Per-object exponential backoff for reconcile errors (kube-runtime has none of its own).
pub fn error_policy(st: Arc<SessionToken>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = st.metadata.uid.clone().unwrap_or_default();
    let attempt = ctx.with_memory(&uid, |m| {
        m.errors = m.errors.saturating_add(1);
        m.errors
    });
    let delay = plan::backoff(
        attempt,
        &ctx.settings.timing,
        &format!("{uid}/{}", Timestamp::now().as_millisecond()),
    );
    warn!(namespace = st.namespace().unwrap_or_default(), name = st.name_any(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn observe(st: Arc<SessionToken>, ctx: &Context) -> Result<Observed, Error> {
    let ns = st.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = st.metadata.uid.clone().ok_or(Error::MissingField("uid"))?;
    let name = st.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let out_name = st.output_secret_name();
    if !plan::is_object_name(&out_name) {
        return Err(Error::InvalidName(out_name));
    }
    let old_name = st
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .filter(|n| *n != out_name);
    let source_ref = &st.spec.source_credentials.secret_ref;
    let session_name = plan::session_secret_name(&name);
    let read_session_secret = st.spec.assume_role.is_some()
        || st
            .status
            .as_ref()
            .is_some_and(|s| s.session_secret_name.is_some());
    // Independent reads, in parallel: an approval waits for them.
    let (out_secret, old_secret, source, session_secret) = tokio::try_join!(
        secrets.get_opt(&out_name),
        async {
            match &old_name {
                Some(n) => secrets.get_opt(n).await,
                None => Ok(None),
            }
        },
        async {
            match plan::is_object_name(&source_ref.name) {
                true => secrets.get_opt(&source_ref.name).await,
                false => Ok(None),
            }
        },
        async {
            match read_session_secret {
                true => secrets.get_opt(&session_name).await,
                false => Ok(None),
            }
        },
    )?;
    let session_ownership = secret::ownership(session_secret.as_ref(), &st);
    let ownership = secret::ownership(out_secret.as_ref(), &st);
    let old_secret = old_secret.filter(|s| secret::ownership(Some(s), &st) == Ownership::Ours);
    let keys = secret::read_long_term_keys(source.as_ref(), source_ref);
    let region = st
        .spec
        .region
        .clone()
        .unwrap_or_else(|| ctx.settings.default_region.clone());
    let endpoint = st.spec.endpoint.clone();
    let mut blocker = None;
    if let Some(Err(why)) = endpoint
        .as_ref()
        .map(|e| ctx.settings.endpoint_policy.check(e))
    {
        // The raw value may carry `user:password@`: only the policy's parsed account of it is shown.
        blocker = Some(Blocker {
            reason: "EndpointNotAllowed",
            message: format!("spec.endpoint is not allowed: {why}"),
        });
    }
    if let (None, Err(problem)) = (&blocker, &keys) {
        blocker = Some(Blocker {
            reason: problem.reason(),
            message: problem.to_string(),
        });
    }
    // The schema admits some regions STS calls cannot use (`-us-east-1`, 64 characters): say
    // so at once, rather than fail each call (and spend a code on one that is never sent).
    if let (None, Err(why)) = (&blocker, crate::sts::validate_region(&region)) {
        let from = if st.spec.region.is_some() {
            "spec.region"
        } else {
            "--default-region"
        };
        blocker = Some(Blocker {
            reason: "InvalidSpec",
            message: format!("{from}: {why}"),
        });
    }
    if st.spec.assume_role.is_some() {
        if session_name == out_name || session_name == source_ref.name {
            blocker = Some(Blocker {
                reason: "InvalidSpec",
                message: format!(
                    "with spec.assumeRole the session is kept in the Secret {session_name:?}, which is also the {} Secret: choose another spec.secret.name or source Secret",
                    if session_name == out_name {
                        "output"
                    } else {
                        "source"
                    }
                ),
            });
        } else if let Ownership::Foreign(why) = &session_ownership {
            blocker = Some(Blocker {
                reason: "SecretConflict",
                message: format!(
                    "{why} (with spec.assumeRole the operator keeps the session there)"
                ),
            });
        }
    }
    if let Ownership::Foreign(why) = &ownership {
        blocker = Some(Blocker {
            reason: "SecretConflict",
            message: why.clone(),
        });
    }
    Ok(Observed {
        generation: st.metadata.generation,
        st,
        ns,
        name,
        uid,
        now: Timestamp::now(),
        out_name,
        out_secret,
        ownership,
        old_secret,
        session_name,
        session_secret: session_secret.filter(|_| session_ownership == Ownership::Ours),
        session_ownership,
        keys,
        region,
        endpoint,
        blocker,
    })
}

async fn reconcile_inner(st: Arc<SessionToken>, ctx: &Context) -> Result<Action, Error> {
    let uid = st.metadata.uid.clone().unwrap_or_default();
    let stale = ctx.status_cache_lags(&uid, st.status.as_ref());
    let st = if stale {
        // The watch cache has not caught up with our last status write: read the object itself.
        let api: Api<SessionToken> =
            Api::namespaced(ctx.client.clone(), &st.namespace().unwrap_or_default());
        match api.get_opt(&st.name_any()).await? {
            Some(fresh) if fresh.metadata.uid == st.metadata.uid => Arc::new(fresh),
            _ => return Ok(Action::await_change()),
        }
    } else {
        st
    };
    let obs = observe(st, ctx).await?;
    let st = obs.st.clone();
    let timing = &ctx.settings.timing;
    let old_status = st.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let has_mfa = st.spec.mfa.is_some();
    let sts_api: Api<SessionToken> = Api::namespaced(ctx.client.clone(), &obs.ns);

    let mut server_status = old_status.clone();

    // 0. A claim never resolved: the process using the code died. The code is spent (STS may
    // or may not have seen it) and the session, if any, is lost. The claim is on record in
    // status (`Issuing` CLAIMED) or, if the process died before writing that, in the
    // annotation the claim itself left.
    let recorded_claim = status
        .conditions
        .iter()
        .find(|c| c.type_ == ISSUING && c.reason == CLAIMED)
        .map(|c| c.last_transition_time);
    let unrecorded_claim = st
        .annotations()
        .get(CLAIMED_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .filter(|t| !claim_resolved(&status, *t));
    let interrupted_check = recorded_claim.max(unrecorded_claim);
    let mut claim_deadline = None;
    if let Some(claimed_at) = interrupted_check {
        let deadline = claimed_at
            + SignedDuration::try_from(ctx.sts.settings().timeout + Duration::from_secs(10))
                .unwrap_or(SignedDuration::from_secs(60));
        if obs.now >= deadline {
            set_condition(
                &mut status.conditions,
                ISSUING,
                "False",
                "Interrupted",
                format!(
                    "the operator stopped while using the token code claimed at {claimed_at}; that code is spent and its session, if STS issued one, is lost. Approve again with a new code"
                ),
                obs.generation,
                obs.now,
            );
        } else {
            claim_deadline = Some(deadline);
        }
    }

    // 1. The code annotation, if any: claim it exactly once, whatever becomes of it.
    let annotations = st.annotations();
    let raw_code = annotations.get(TOKEN_CODE_ANNOTATION).cloned();
    let approved_by = annotations.get(APPROVED_BY_ANNOTATION).cloned();
    let code_state = plan::code_state(
        raw_code.as_deref(),
        has_mfa,
        plan::annotation_set_at(&st, TOKEN_CODE_ANNOTATION),
        obs.now,
        timing,
    );
    let mut code_to_use: Option<TokenCode> = None;
    if let Some(raw) = raw_code.as_deref() {
        // A code that will be used leaves the time of its claim behind (see step 0).
        let used = matches!(code_state, CodeState::Usable) && obs.blocker.is_none();
        let claimed_at = plan::round_to_second(obs.now);
        if used && claim_resolved(&old_status, claimed_at) {
            // Status already holds something written in this very second, which a claim now
            // could not be told apart from (its times are whole seconds): claim in the next.
            let into_second = Duration::from_nanos(obs.now.subsec_nanosecond().max(0) as u64);
            return Ok(Action::requeue(
                Duration::from_millis(1020).saturating_sub(into_second),
            ));
        }
        if annotations
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_some_and(|l| l.contains(TOKEN_CODE_ANNOTATION))
        {
            ctx.event(&st, EventType::Warning, "TokenCodeInLastApplied",
                "the token-code annotation was set with client-side `kubectl apply`, which keeps it in the last-applied-configuration annotation; use `kubectl sts approve` or `kubectl annotate`".into()).await;
        }
        let also: &[&str] = if approved_by.is_some() {
            &[APPROVED_BY_ANNOTATION]
        } else {
            &[]
        };
        let mark = used.then(|| (CLAIMED_AT_ANNOTATION, claimed_at.to_string()));
        if !claim_annotation(&sts_api, &obs.name, TOKEN_CODE_ANNOTATION, raw, also, mark).await? {
            debug!(
                namespace = obs.ns,
                name = obs.name,
                "code claimed elsewhere or replaced meanwhile"
            );
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        match &code_state {
            CodeState::NotNeeded => {
                ctx.event(&st, EventType::Warning, "TokenCodeIgnored", "this SessionToken has no spec.mfa, so it needs no token code; the annotation was removed".into()).await;
            }
            CodeState::Invalid => {
                set_condition(
                    &mut status.conditions,
                    ISSUING,
                    "False",
                    "InvalidTokenCode",
                    "the token code must be exactly six digits; it was removed unused".into(),
                    obs.generation,
                    obs.now,
                );
                ctx.event(
                    &st,
                    EventType::Warning,
                    "InvalidTokenCode",
                    "the token code must be exactly six digits; it was removed unused".into(),
                )
                .await;
            }
            CodeState::Expired { age } => {
                let msg = format!(
                    "the token code was set {}s ago, longer than the {}s a code is accepted; it was removed unused. Approve again with a fresh code",
                    age.as_secs(),
                    timing.token_code_max_age.as_secs()
                );
                set_condition(
                    &mut status.conditions,
                    ISSUING,
                    "False",
                    "TokenCodeExpired",
                    msg.clone(),
                    obs.generation,
                    obs.now,
                );
                ctx.event(&st, EventType::Warning, "TokenCodeExpired", msg)
                    .await;
            }
            CodeState::Usable => match &obs.blocker {
                Some(b) => {
                    let msg = format!("the token code was removed unused: {}", b.message);
                    set_condition(
                        &mut status.conditions,
                        ISSUING,
                        "False",
                        b.reason,
                        msg.clone(),
                        obs.generation,
                        obs.now,
                    );
                    ctx.event(&st, EventType::Warning, b.reason, msg).await;
                }
                None => code_to_use = TokenCode::parse(raw).ok(),
            },
            CodeState::Absent => {}
        }
    }

    // 2. The current session, as status and the Secret holding it say: the Secret keeping it
    // for spec.assumeRole, else the output Secret (or, during a rename, the old one). Looking
    // in all of them lets spec.assumeRole come and go without losing the session.
    let is_recorded = |s: &SessionSecret| {
        Some(&s.access_key_id) == old_status.access_key_id.as_ref()
            && Some(s.expiration) == old_status.expiration
    };
    let kept = obs
        .session_secret
        .as_ref()
        .and_then(secret::kept_session)
        .filter(is_recorded);
    let holder = obs.old_secret.as_ref().or(match obs.ownership {
        Ownership::Ours => obs.out_secret.as_ref(),
        _ => None,
    });
    let held = kept.clone().or_else(|| {
        holder
            .and_then(|s| secret::held_session(s, &st))
            .filter(is_recorded)
    });
    let unsaved = ctx.with_memory(&obs.uid, |m| m.unsaved.take()).map(|b| *b);
    let session_state = plan::session_state(
        status.expiration,
        status.renewal_time,
        held.is_some(),
        obs.now,
    );
    let hash = obs.keys.as_ref().ok().map(|k| {
        plan::session_hash(
            &st.spec,
            &obs.region,
            obs.endpoint.as_deref(),
            &k.access_key_id,
        )
    });
    let hash_matches = hash.is_some() && hash == status.session_hash;

    // 3. Mint, if a code was claimed or (without MFA) the session needs it and backoff allows.
    let retry_at = retry_time(&status, &obs, timing);
    let spec_changed_since_failure = status.observed_generation != obs.generation;
    let mut auto_reason = (!has_mfa)
        .then(|| plan::automatic_mint_reason(&session_state, hash_matches))
        .flatten();
    let mut may_retry = retry_at.is_none_or(|t| obs.now >= t) || spec_changed_since_failure;
    // `kubectl sts renew`: mint now, once, where no code is needed.
    if let Some(requested) = annotations.get(RENEW_ANNOTATION) {
        if !claim_annotation(&sts_api, &obs.name, RENEW_ANNOTATION, requested, &[], None).await? {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if has_mfa {
            ctx.event(&st, EventType::Warning, "RenewNeedsTokenCode", format!(
                "this SessionToken has spec.mfa: a new session needs a code; use `kubectl sts approve {} -n {}`", obs.name, obs.ns)).await;
        } else {
            auto_reason = Some("renewal requested");
            may_retry = true;
        }
    }
    let mut to_write: Option<(SessionSecret, Option<Approval>)> = unsaved;
    let keys = obs.keys.as_ref().ok().filter(|_| obs.blocker.is_none());
    if let (None, Some(keys), true) = (
        &to_write,
        keys,
        code_to_use.is_some() || (auto_reason.is_some() && may_retry),
    ) {
        let approval = code_to_use.as_ref().map(|_| Approval {
            approved_by: approved_by.clone(),
            time: plan::round_to_second(obs.now),
        });
        if code_to_use.is_some() {
            // Say that the code is being used before using it: if this process dies before the
            // result is written, the next reconcile can tell that the code is spent.
            let mut claimed = status.clone();
            // A new claim has its own time, even over an unresolved one (its deadline).
            claimed.conditions.retain(|c| c.type_ != ISSUING);
            set_condition(
                &mut claimed.conditions,
                ISSUING,
                "Unknown",
                CLAIMED,
                format!(
                    "a token code was claimed by {}; calling STS",
                    ctx.settings.instance
                ),
                obs.generation,
                obs.now,
            );
            match write_status(&sts_api, &obs.name, &claimed).await {
                Ok(()) => {
                    ctx.note_status_write(&obs.uid, &claimed);
                    server_status = claimed.clone();
                    status = claimed;
                }
                Err(e) => {
                    warn!(namespace = obs.ns, name = obs.name, error = %e, "could not record the claim; using the code anyway")
                }
            }
        }
        info!(
            namespace = obs.ns,
            name = obs.name,
            with_code = code_to_use.is_some(),
            why = auto_reason.unwrap_or("approved"),
            "minting a session"
        );
        let request = SessionRequest {
            region: &obs.region,
            endpoint: obs.endpoint.as_deref(),
            access_key_id: &keys.access_key_id,
            secret_access_key: &keys.secret_access_key,
            duration_seconds: st.spec.duration_seconds,
            mfa: match (code_to_use.take(), st.spec.mfa.as_ref()) {
                (Some(code), Some(mfa)) => Some((mfa.serial_number.as_str(), code)),
                _ => None,
            },
        };
        match ctx.sts.get_session_token(request).await {
            Ok(creds) => {
                ctx.metrics.sts_call("success");
                let session = SessionSecret {
                    access_key_id: creds.access_key_id,
                    secret_access_key: creds.secret_access_key,
                    session_token: creds.session_token,
                    expiration: creds.expiration,
                };
                to_write = Some((session, approval));
            }
            Err(e) => {
                if e.was_sent() {
                    ctx.metrics.sts_call(e.metric_outcome());
                }
                record_failure(&mut status, &obs, &e);
                let retry = plan::backoff(status.failed_attempts.max(0) as u32, timing, &obs.uid);
                warn!(namespace = obs.ns, name = obs.name, reason = e.reason(), error = %e, attempts = status.failed_attempts, "GetSessionToken failed");
                let note = if has_mfa {
                    format!("{e}. The code was used up: approve again with a new code")
                } else {
                    format!("{e}; retrying in {}s", retry.as_secs())
                };
                ctx.event(&st, EventType::Warning, e.reason(), note).await;
            }
        }
    }

    // 4. Write the new session, or move/repair the current one.
    let minted = to_write.clone();
    let assume_role = st.spec.assume_role.is_some();
    let written = match to_write {
        Some((session, approval)) => {
            let (slot, desired) = if assume_role {
                let desired = secret::desired_session_secret(&st, &obs.session_name, &session);
                (obs.session_slot(), desired)
            } else {
                let desired = secret::desired_secret(&st, &obs.out_name, &session);
                (obs.output_slot(), desired)
            };
            if let Err(e) = write_secret(ctx, &obs, slot, &desired).await {
                // A refusal that will recur (an invalid label or annotation from spec.secret, a
                // Secret too large, no permission) must show in status, not only in the log.
                if let kube::Error::Api(ae) = &e
                    && matches!(ae.code, 400 | 403 | 413 | 422)
                {
                    let message = format!(
                        "a new session was minted but the Secret {} could not be written (kept in memory, retried): {}",
                        obs.session_home(),
                        redact(&ae.message, &session)
                    );
                    set_condition(
                        &mut status.conditions,
                        ISSUING,
                        "False",
                        "SecretWriteFailed",
                        message.clone(),
                        obs.generation,
                        obs.now,
                    );
                    if !session_state.is_valid() {
                        set_condition(
                            &mut status.conditions,
                            READY,
                            "False",
                            "SecretWriteFailed",
                            message,
                            obs.generation,
                            obs.now,
                        );
                    }
                    status.observed_generation = obs.generation;
                    if status != server_status
                        && write_status(&sts_api, &obs.name, &status).await.is_ok()
                    {
                        ctx.note_status_write(&obs.uid, &status);
                    }
                }
                ctx.with_memory(&obs.uid, |m| {
                    m.unsaved = Some(Box::new((session, approval)))
                });
                return Err(Error::SecretWrite(e));
            }
            let issued_at = plan::round_to_second(obs.now);
            status.expiration = Some(session.expiration);
            status.issued_at = Some(issued_at);
            status.renewal_time = Some(plan::renewal_time(
                issued_at,
                session.expiration,
                st.spec.renewal.as_ref(),
                timing,
                &format!("{}/{}", obs.uid, session.expiration),
            ));
            status.access_key_id = Some(session.access_key_id.clone());
            if assume_role {
                status.session_secret_name = Some(obs.session_name.clone());
                // A new session is a new chance for the role: no backoff from the old one's.
                if let Some(role) = status.role.as_mut() {
                    role.failed_attempts = 0;
                }
            } else {
                status.secret_name = Some(obs.out_name.clone());
            }
            status.session_hash = hash.clone();
            status.rotations += 1;
            status.failed_attempts = 0;
            status.last_failure = None;
            if approval.is_some() {
                status.last_approval = approval;
            }
            set_condition(
                &mut status.conditions,
                ISSUING,
                "True",
                "Succeeded",
                format!(
                    "session {} issued, expires {}",
                    session.access_key_id, session.expiration
                ),
                obs.generation,
                obs.now,
            );
            ctx.event(
                &st,
                EventType::Normal,
                "Issued",
                format!(
                    "session {} written to Secret {}, expires {}",
                    session.access_key_id,
                    obs.session_home(),
                    session.expiration
                ),
            )
            .await;
            true
        }
        None => {
            // Same session, but the Secret's metadata or name must change. (Source or endpoint
            // problems do not stop that: they only stop new sessions.)
            if let Some(session) = held.as_ref().filter(|_| obs.may_write_session_home()) {
                let (slot, desired) = if assume_role {
                    let desired = secret::desired_session_secret(&st, &obs.session_name, session);
                    (obs.session_slot(), desired)
                } else {
                    let desired = secret::desired_secret(&st, &obs.out_name, session);
                    (obs.output_slot(), desired)
                };
                if !slot
                    .existing
                    .is_some_and(|s| secret::is_up_to_date(s, &desired))
                {
                    write_secret(ctx, &obs, slot, &desired)
                        .await
                        .map_err(Error::SecretWrite)?;
                    if assume_role {
                        status.session_secret_name = Some(obs.session_name.clone());
                    } else {
                        status.secret_name = Some(obs.out_name.clone());
                    }
                }
            }
            false
        }
    };

    // spec.assumeRole removed: the session is back in the output Secret (written above), so
    // the Secret that kept it goes.
    if !assume_role
        && !matches!(obs.ownership, Ownership::Foreign(_))
        && let Some(kept_secret) = &obs.session_secret
    {
        delete_owned_secret(ctx, &obs, kept_secret).await?;
        status.session_secret_name = None;
        status.role = None;
        status.conditions.retain(|c| c.type_ != ROLE_ASSUMED);
    }

    // 4b. spec.assumeRole: the role's credentials, assumed with the session at hand.
    let current_session = if written {
        minted.as_ref().map(|(s, _)| s.clone())
    } else {
        held.clone()
    };
    let role = match &st.spec.assume_role {
        Some(spec) => {
            Some(reconcile_role(ctx, &st, &obs, spec, &mut status, current_session.as_ref()).await?)
        }
        None => None,
    };

    // A rename: the old output Secret goes once the new one holds the credentials.
    if let Some(old) = obs
        .old_secret
        .as_ref()
        .filter(|_| status.secret_name.as_deref() == Some(obs.out_name.as_str()))
    {
        delete_owned_secret(ctx, &obs, old).await?;
    }

    // -- consumers (src/consumers.rs): restart targets, ConsumerRefresh/RolloutRestart ------
    let output_holds_credentials = match &role {
        Some(r) => r.valid,
        None => written || held.is_some(),
    };
    let consumers_recheck =
        crate::consumers::reconcile(ctx, &st, &mut status, output_holds_credentials, obs.now).await;
    // -- end consumers -----------------------------------------------------------------------

    // 5. Conditions, events, metrics.
    let session_state = if written {
        plan::session_state(status.expiration, status.renewal_time, true, obs.now)
    } else {
        session_state
    };
    let (ready_status, ready_reason, ready_message) = match &role {
        Some(role) => role_ready_condition(
            ready_condition(&st, &obs, &status, &session_state),
            role,
            &status,
        ),
        None => ready_condition(&st, &obs, &status, &session_state),
    };
    set_condition(
        &mut status.conditions,
        READY,
        ready_status,
        ready_reason,
        ready_message,
        obs.generation,
        obs.now,
    );
    let awaiting_code = has_mfa && !session_state_is_fresh(&session_state);
    let mut next_event = None;
    if has_mfa {
        next_event = code_required_events(ctx, &st, &obs, &status, &session_state).await;
    }
    if let SessionState::Expired { expiration } = session_state {
        let first = ctx.with_memory(&obs.uid, |m| {
            let first = m.expired_sent != Some(expiration);
            m.expired_sent = Some(expiration);
            first
        });
        if first && old_status_ready_reason(&old_status) != Some("Expired") {
            ctx.event(
                &st,
                EventType::Warning,
                "Expired",
                format!(
                    "the session expired at {expiration}; the Secret's credentials no longer work"
                ),
            )
            .await;
        }
    }
    status.observed_generation = obs.generation;
    ctx.metrics.set_session(
        &obs.ns,
        &obs.name,
        SessionMetrics {
            expiration: status.expiration,
            renewal: status.renewal_time,
            role_expiration: status.role.as_ref().and_then(|r| r.expiration),
            role_renewal: role.as_ref().and_then(|r| r.renewal),
            ready: ready_status == "True",
            awaiting_token_code: awaiting_code,
        },
    );

    if status != server_status {
        if let Err(e) = write_status(&sts_api, &obs.name, &status).await {
            if let Some(minted) = minted {
                // The Secret holds the new session but status does not know it yet: keep it,
                // so the next try records it instead of losing it.
                ctx.with_memory(&obs.uid, |m| m.unsaved = Some(Box::new(minted)));
            }
            return Err(e);
        }
        ctx.note_status_write(&obs.uid, &status);
    }

    // 6. Requeue at the next instant that matters; never poll while healthy.
    let retry_at = retry_time(&status, &obs, timing);
    let auto = !has_mfa && obs.blocker.is_none();
    // Neither the source Secret nor a foreign Secret in the way is watched: look again, with
    // capped backoff (reads only), until the problem goes.
    let source_blocked = obs
        .blocker
        .as_ref()
        .is_some_and(|b| b.reason.starts_with("SourceCredentials") || b.reason == "SecretConflict");
    let misses = source_misses(ctx, &obs.uid, source_blocked);
    let instants = [
        claim_deadline,
        status.expiration.filter(|e| *e > obs.now),
        status
            .renewal_time
            .filter(|r| *r > obs.now && (auto || has_mfa)),
        next_event,
        consumers_recheck,
        retry_at.filter(|_| auto),
        role.as_ref().and_then(|r| r.next),
        source_blocked.then(|| {
            obs.now
                + SignedDuration::try_from(plan::backoff(misses, timing, &obs.uid))
                    .unwrap_or(SignedDuration::from_secs(300))
        }),
    ];
    Ok(ctx.requeue(&obs.ns, &obs.name, plan::requeue_after(obs.now, &instants)))
}

/// How often in a row the source Secret was looked at in vain, to grow its retry delay.
fn source_misses(ctx: &Context, uid: &str, missing: bool) -> u32 {
    ctx.with_memory(uid, |m| {
        m.source_misses = if missing {
            m.source_misses.saturating_add(1)
        } else {
            0
        };
        m.source_misses
    })
}

fn old_status_ready_reason(status: &SessionTokenStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| &*c.reason)
}

fn session_state_is_fresh(s: &SessionState) -> bool {
    matches!(s, SessionState::Valid { .. })
}

/// When a failed mint may be retried.
fn retry_time(status: &SessionTokenStatus, obs: &Observed, timing: &Timing) -> Option<Timestamp> {
    let failure = status.last_failure.as_ref()?;
    if status.failed_attempts == 0 {
        return None;
    }
    let delay = plan::backoff(status.failed_attempts.max(0) as u32, timing, &obs.uid);
    Some(failure.time + SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(300)))
}

fn record_failure(status: &mut SessionTokenStatus, obs: &Observed, e: &StsError) {
    status.failed_attempts = status.failed_attempts.saturating_add(1);
    let message = truncate(&e.to_string(), 500);
    status.last_failure = Some(Failure {
        time: plan::round_to_second(obs.now),
        reason: e.reason().into(),
        message: message.clone(),
    });
    set_condition(
        &mut status.conditions,
        ISSUING,
        "False",
        e.reason(),
        message,
        obs.generation,
        obs.now,
    );
}

fn ready_condition(
    st: &SessionToken,
    obs: &Observed,
    status: &SessionTokenStatus,
    session: &SessionState,
) -> (&'static str, &'static str, String) {
    let has_mfa = st.spec.mfa.is_some();
    if let Some(Blocker {
        reason: "SecretConflict",
        message,
    }) = &obs.blocker
    {
        return ("False", "SecretConflict", message.clone());
    }
    let approve_hint = format!(
        "approve with `kubectl sts approve {} -n {}`",
        obs.name, obs.ns
    );
    match session {
        SessionState::Valid {
            expiration,
            renewal,
        } => {
            let what = if has_mfa {
                "a new code is needed"
            } else {
                "renews"
            };
            (
                "True",
                "Issued",
                format!("session valid until {expiration}; {what} at {renewal}"),
            )
        }
        SessionState::RenewalDue { expiration } if has_mfa => (
            "True",
            "AwaitingTokenCode",
            format!("session valid until {expiration}; {approve_hint} before then"),
        ),
        SessionState::RenewalDue { expiration } => {
            let why = status
                .last_failure
                .as_ref()
                .map(|f| format!("; renewal failing: {}", f.message))
                .unwrap_or_default();
            (
                "True",
                "Issued",
                format!("session valid until {expiration}, renewal due{why}"),
            )
        }
        other => {
            if let Some(b) = &obs.blocker {
                return ("False", b.reason, b.message.clone());
            }
            match other {
                SessionState::SecretMissing { expiration } if has_mfa => (
                    "False",
                    "SecretMissing",
                    format!(
                        "the Secret {} no longer holds the session valid until {expiration} (the operator keeps no copy); {approve_hint}",
                        obs.session_home()
                    ),
                ),
                SessionState::Expired { expiration } if has_mfa => (
                    "False",
                    "Expired",
                    format!("the session expired at {expiration}; {approve_hint}"),
                ),
                SessionState::None if has_mfa => (
                    "False",
                    "AwaitingTokenCode",
                    format!("no session yet; {approve_hint}"),
                ),
                _ => match &status.last_failure {
                    Some(f) => ("False", failure_reason(&f.reason), f.message.clone()),
                    None => ("False", "Issuing", "minting a session".into()),
                },
            }
        }
    }
}

/// Condition reasons are a closed set; map a stored one back to its static name.
fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "SourceCredentialsInvalid" => "SourceCredentialsInvalid",
        "InvalidSpec" => "InvalidSpec",
        "TokenCodeRejected" => "TokenCodeRejected",
        "Throttled" => "Throttled",
        "Expired" => "Expired",
        _ => "StsError",
    }
}

/// Sends `TokenCodeRequired` at the renewal time and every interval after, until a code
/// arrives or the session expires; returns when the next one is due.
async fn code_required_events(
    ctx: &Context,
    st: &SessionToken,
    obs: &Observed,
    status: &SessionTokenStatus,
    session: &SessionState,
) -> Option<Timestamp> {
    let SessionState::RenewalDue { expiration } = session else {
        return None;
    };
    let renewal = status.renewal_time?;
    let (period, next) =
        plan::code_required_period(renewal, obs.now, ctx.settings.timing.code_required_interval);
    let send = ctx.with_memory(&obs.uid, |m| {
        let send = m.code_required_sent != Some((renewal, period));
        m.code_required_sent = Some((renewal, period));
        send
    });
    if send {
        let left = expiration.duration_since(obs.now).as_secs().max(0);
        ctx.event(st, EventType::Warning, "TokenCodeRequired", format!(
            "the session expires at {expiration} (in {}h{:02}m); approve a new one with `kubectl sts approve {} -n {}`",
            left / 3600, (left % 3600) / 60, obs.name, obs.ns)).await;
    }
    Some(next).filter(|n| n < expiration)
}

/// An API server's message with the session's secret parts masked (it should never echo them;
/// this makes sure).
fn redact(message: &str, session: &SessionSecret) -> String {
    let mut m = message.to_string();
    for secret in [
        session.secret_access_key.expose(),
        session.session_token.expose(),
    ] {
        if !secret.is_empty() {
            m = m.replace(secret.as_str(), "<redacted>");
        }
    }
    m
}

/// Whether status records the outcome (or the ongoing use) of a code claimed at `claimed_at`:
/// every path after a claim writes an `Issuing` condition, an approval or a failure with the
/// claiming reconcile's time, which is the claim's.
pub fn claim_resolved(status: &SessionTokenStatus, claimed_at: Timestamp) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == ISSUING && c.last_transition_time >= claimed_at)
        || status
            .last_approval
            .as_ref()
            .is_some_and(|a| a.time >= claimed_at)
        || status
            .last_failure
            .as_ref()
            .is_some_and(|f| f.time >= claimed_at)
}

/// Claims an annotation: one JSON patch that tests its value and removes it (and `also`), so
/// that exactly one claimant wins and a newer value set meanwhile survives; `mark` is an
/// annotation set by the same patch. Returns false if the test failed (someone else claimed
/// it, or it changed).
async fn claim_annotation(
    api: &Api<SessionToken>,
    name: &str,
    key: &str,
    value: &str,
    also: &[&str],
    mark: Option<(&str, String)>,
) -> Result<bool, Error> {
    let path = |key: &str| {
        format!(
            "/metadata/annotations/{}",
            key.replace('~', "~0").replace('/', "~1")
        )
    };
    let mut ops = vec![
        serde_json::json!({"op": "test", "path": path(key), "value": value}),
        serde_json::json!({"op": "remove", "path": path(key)}),
    ];
    ops.extend(
        also.iter()
            .map(|k| serde_json::json!({"op": "remove", "path": path(k)})),
    );
    if let Some((k, v)) = mark {
        ops.push(serde_json::json!({"op": "add", "path": path(k), "value": v}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("static patch shape");
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.patch(name, &pp, &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(true),
        // A failed `test` op is 422 (Unprocessable) or 409; the object gone is 404.
        Err(kube::Error::Api(e)) if matches!(e.code, 409 | 422 | 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A Secret the reconcile may write: the output Secret, or the one keeping the session.
struct SecretSlot<'a> {
    name: &'a str,
    existing: Option<&'a Secret>,
    ownership: &'a Ownership,
}

impl Observed {
    fn output_slot(&self) -> SecretSlot<'_> {
        SecretSlot {
            name: &self.out_name,
            existing: self.out_secret.as_ref(),
            ownership: &self.ownership,
        }
    }

    fn session_slot(&self) -> SecretSlot<'_> {
        SecretSlot {
            name: &self.session_name,
            existing: self.session_secret.as_ref(),
            ownership: &self.session_ownership,
        }
    }

    /// Whether the Secret the session lives in may be written (it is not someone else's).
    fn may_write_session_home(&self) -> bool {
        if self.st.spec.assume_role.is_some() {
            !matches!(self.session_ownership, Ownership::Foreign(_))
                && self.session_name != self.out_name
                && self.session_name != self.st.spec.source_credentials.secret_ref.name
        } else {
            !matches!(self.ownership, Ownership::Foreign(_))
        }
    }

    /// Where the session lives: the kept-session Secret with `spec.assumeRole`, else the output.
    fn session_home(&self) -> &str {
        if self.st.spec.assume_role.is_some() {
            &self.session_name
        } else {
            &self.out_name
        }
    }
}

/// Writes a Secret: created if absent (never merged into a foreign one), otherwise applied
/// with a resourceVersion precondition after the ownership check, so a Secret that changed
/// hands meanwhile is not taken over.
async fn write_secret(
    ctx: &Context,
    obs: &Observed,
    slot: SecretSlot<'_>,
    desired: &Secret,
) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &obs.ns);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match (slot.existing, slot.ownership) {
            (None, _) | (_, Ownership::Absent) => secrets
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    desired,
                )
                .await
                .map(|created| ctx.note_secret_write(&obs.uid, &created)),
            (Some(existing), Ownership::Ours) => {
                let mut body = desired.clone();
                body.metadata.resource_version = existing.metadata.resource_version.clone();
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                match secrets.patch(slot.name, &pp, &Patch::Apply(&body)).await {
                    // consumers: keys of formats no longer chosen, which the apply kept
                    Ok(applied) => {
                        ctx.note_secret_write(&obs.uid, &applied);
                        crate::consumers::prune_stale_keys(&secrets, &applied, desired).await
                    }
                    Err(e) => Err(e),
                }
            }
            (Some(_), Ownership::Foreign(_)) => {
                unreachable!("a blocker stops writes to a foreign Secret")
            }
        };
        match result {
            Ok(()) => return Ok(()),
            // 409: the Secret changed since it was read; the next reconcile reads it again.
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(kube::Error::Api(e)),
            Err(e) if attempt < 3 => {
                warn!(namespace = obs.ns, name = obs.name, secret = slot.name, error = %e, attempt, "writing a Secret failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Deletes a Secret of ours (a precondition on its UID: never a namesake created meanwhile).
async fn delete_owned_secret(ctx: &Context, obs: &Observed, secret: &Secret) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &obs.ns);
    let name = secret.name_any();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match secrets.delete(&name, &dp).await {
        Ok(_) => {
            info!(
                namespace = obs.ns,
                name = obs.name,
                secret = name,
                "deleted a Secret no longer needed"
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the role layer found and did.
struct RoleOutcome {
    /// The output Secret holds valid role credentials.
    valid: bool,
    /// When the role credentials are renewed, if they will be.
    renewal: Option<Timestamp>,
    /// The next instant the role layer needs a reconcile.
    next: Option<Timestamp>,
    /// The `RoleAssumed` condition's reason and message.
    reason: &'static str,
    message: String,
}

/// The reason of a failed AssumeRole: a role that refuses the user has its own.
fn assume_role_reason(e: &StsError) -> &'static str {
    match e {
        StsError::AccessDenied { .. } | StsError::TokenCodeRejected { .. } => "RoleAccessDenied",
        StsError::Throttled { .. } => "Throttled",
        StsError::InvalidRequest { .. } => "InvalidSpec",
        _ => "AssumeRoleFailed",
    }
}

/// spec.assumeRole: assume the role with the session at hand when the role credentials are
/// missing, due, from an older session or for another spec; write them to the output Secret;
/// record them in `status.role` and the `RoleAssumed` condition. A failure never touches the
/// session: it is retried with backoff, and a new session (or a spec change) retries at once.
async fn reconcile_role(
    ctx: &Context,
    st: &SessionToken,
    obs: &Observed,
    spec: &AssumeRoleSpec,
    status: &mut SessionTokenStatus,
    session: Option<&SessionSecret>,
) -> Result<RoleOutcome, Error> {
    let timing = &ctx.settings.timing;
    let session_name = spec
        .role_session_name
        .clone()
        .unwrap_or_else(|| plan::default_role_session_name(&obs.ns, &obs.name));
    let hash = plan::role_hash(spec, &session_name);
    let mut role: RoleStatus = status.role.as_deref().cloned().unwrap_or_default();
    let role_held = matches!(obs.ownership, Ownership::Ours)
        && obs
            .out_secret
            .as_ref()
            .and_then(|s| secret::held_session(s, st))
            .is_some_and(|r| {
                Some(&r.access_key_id) == role.access_key_id.as_ref()
                    && Some(r.expiration) == role.expiration
            });
    // Problems with the source keys stop new sessions, not the role: the session is at hand.
    let blocked = obs
        .blocker
        .as_ref()
        .filter(|b| !b.reason.starts_with("SourceCredentials"));
    let action = plan::role_action(
        plan::RoleInputs {
            session: session.map(|s| (s.expiration, s.access_key_id.as_str())),
            role: &role,
            role_held,
            hash: &hash,
            duration_seconds: spec.duration_seconds,
            spec_changed: status.observed_generation != obs.generation,
        },
        timing,
        &obs.uid,
        // Not `obs.now`: a GetSessionToken call may have taken a while since.
        Timestamp::now(),
    );
    let mut assumed_now = false;
    if let (
        plan::RoleAction::Assume {
            duration_seconds,
            why,
        },
        Some(session),
        None,
    ) = (&action, session, blocked)
    {
        info!(
            namespace = obs.ns,
            name = obs.name,
            role = spec.role_arn,
            why,
            "assuming the role"
        );
        let tags: Vec<(String, String)> = spec
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
        let request = AssumeRoleRequest {
            region: &obs.region,
            endpoint: obs.endpoint.as_deref(),
            access_key_id: &session.access_key_id,
            secret_access_key: &session.secret_access_key,
            session_token: &session.session_token,
            role_arn: &spec.role_arn,
            role_session_name: &session_name,
            duration_seconds: *duration_seconds,
            external_id: spec.external_id.as_deref(),
            tags: &tags,
        };
        match ctx.sts.assume_role(request).await {
            Ok(assumed) => {
                ctx.metrics.assume_role_call(crate::sts::OUTCOME_SUCCESS);
                let creds = SessionSecret {
                    access_key_id: assumed.credentials.access_key_id,
                    secret_access_key: assumed.credentials.secret_access_key,
                    session_token: assumed.credentials.session_token,
                    expiration: assumed.credentials.expiration,
                };
                let desired = secret::desired_secret(st, &obs.out_name, &creds);
                write_secret(ctx, obs, obs.output_slot(), &desired)
                    .await
                    .map_err(Error::SecretWrite)?;
                let assumed_at = plan::round_to_second(obs.now);
                role = RoleStatus {
                    role_arn: Some(spec.role_arn.clone()),
                    assumed_role_arn: assumed.assumed_role_arn,
                    access_key_id: Some(creds.access_key_id.clone()),
                    assumed_at: Some(assumed_at),
                    expiration: Some(creds.expiration),
                    renewal_time: Some(plan::renewal_time(
                        assumed_at,
                        creds.expiration,
                        st.spec.renewal.as_ref(),
                        timing,
                        &format!("{}/{}", obs.uid, creds.expiration),
                    )),
                    session_access_key_id: Some(session.access_key_id.clone()),
                    hash: Some(hash.clone()),
                    assumptions: role.assumptions + 1,
                    last_failure: None,
                    failed_attempts: 0,
                };
                status.secret_name = Some(obs.out_name.clone());
                assumed_now = true;
                ctx.event(
                    st,
                    EventType::Normal,
                    "RoleAssumed",
                    format!(
                        "role {} assumed ({}) with session {}: credentials {} written to Secret {}, expire {}",
                        spec.role_arn, why, session.access_key_id, creds.access_key_id, obs.out_name, creds.expiration
                    ),
                )
                .await;
            }
            Err(e) => {
                if e.was_sent() {
                    ctx.metrics.assume_role_call(e.metric_outcome());
                }
                let reason = assume_role_reason(&e);
                let message = match reason {
                    "RoleAccessDenied" => format!(
                        "STS refused AssumeRole of {}: {e}. The role's trust policy must allow this IAM user (and, if it requires aws:MultiFactorAuthPresent, the session must be approved with an MFA code: spec.mfa). The session is kept; retrying with backoff",
                        spec.role_arn
                    ),
                    _ => format!(
                        "AssumeRole of {} failed: {e}. The session is kept; retrying with backoff",
                        spec.role_arn
                    ),
                };
                role.failed_attempts = role.failed_attempts.saturating_add(1);
                role.last_failure = Some(Failure {
                    time: plan::round_to_second(obs.now),
                    reason: reason.to_string(),
                    message: message.clone(),
                });
                warn!(namespace = obs.ns, name = obs.name, reason, error = %e, attempts = role.failed_attempts, "AssumeRole failed");
                ctx.event(st, EventType::Warning, reason, message).await;
            }
        }
    }
    let valid = (role_held || assumed_now) && role.expiration.is_some_and(|e| e > obs.now);
    let (cond_status, reason, message) = role_condition(
        spec,
        &role,
        &action,
        RoleFacts {
            assumed_now,
            valid,
            blocker: blocked.map(|b| (b.reason, b.message.as_str())),
            approve_hint: st.spec.mfa.is_some().then(|| {
                format!(
                    "approve with `kubectl sts approve {} -n {}`",
                    obs.name, obs.ns
                )
            }),
        },
    );
    set_condition(
        &mut status.conditions,
        ROLE_ASSUMED,
        cond_status,
        reason,
        message.clone(),
        obs.generation,
        obs.now,
    );
    let next = match &action {
        plan::RoleAction::Backoff { retry_at, .. } => Some(*retry_at),
        _ if !assumed_now && role.failed_attempts > 0 => role
            .last_failure
            .as_ref()
            .map(|f| plan::role_retry_time(f.time, role.failed_attempts, timing, &obs.uid)),
        _ => None,
    }
    .into_iter()
    .chain(role.renewal_time)
    .chain(role.expiration)
    .filter(|t| *t > obs.now)
    .min();
    let renewal = role.renewal_time.filter(|_| valid);
    status.role = Some(Box::new(role));
    Ok(RoleOutcome {
        valid,
        renewal,
        next,
        reason,
        message,
    })
}

/// What `role_condition` needs besides the spec, status and decision.
struct RoleFacts<'a> {
    /// The role was assumed in this reconcile.
    assumed_now: bool,
    /// The output Secret holds valid role credentials.
    valid: bool,
    /// A problem that stops AssumeRole (endpoint, Secret conflict, spec), as (reason, message).
    blocker: Option<(&'static str, &'a str)>,
    /// With spec.mfa: how to approve.
    approve_hint: Option<String>,
}

/// The `RoleAssumed` condition: (status, reason, message).
fn role_condition(
    spec: &AssumeRoleSpec,
    role: &RoleStatus,
    action: &plan::RoleAction,
    facts: RoleFacts<'_>,
) -> (&'static str, &'static str, String) {
    let valid_word = if facts.valid { "True" } else { "False" };
    if !facts.assumed_now {
        if let Some((reason, message)) = facts.blocker {
            return ("False", reason, message.to_string());
        }
        if let Some(f) = role
            .last_failure
            .as_ref()
            .filter(|_| role.failed_attempts > 0)
        {
            let message = match role.expiration.filter(|_| facts.valid) {
                Some(e) => format!(
                    "{} (the current role credentials are valid until {e})",
                    f.message
                ),
                None => f.message.clone(),
            };
            return (valid_word, role_failure_reason(&f.reason), message);
        }
    }
    let ending = match action {
        plan::RoleAction::SessionEnding { session_expiration } => Some(*session_expiration),
        _ => None,
    };
    if facts.assumed_now || facts.valid {
        let expiration = role.expiration.map(|e| e.to_string()).unwrap_or_default();
        let next = match (ending, role.renewal_time) {
            (Some(end), _) => format!(
                "; the session ends at {end}, too soon to assume the role again: these are its last role credentials"
            ),
            (None, Some(r)) => format!("; assumed again at {r}"),
            (None, None) => String::new(),
        };
        return (
            "True",
            "Assumed",
            format!(
                "role {} assumed as {}: credentials valid until {expiration}{next}",
                spec.role_arn,
                role.assumed_role_arn
                    .as_deref()
                    .unwrap_or("(no ARN returned)")
            ),
        );
    }
    let then = facts
        .approve_hint
        .unwrap_or_else(|| "a new session is minted first".to_string());
    match (action, ending) {
        (plan::RoleAction::NoSession, _) => (
            "False",
            "WaitingForSession",
            format!("no valid session to assume the role with; {then}"),
        ),
        (_, Some(end)) => (
            "False",
            "SessionEnding",
            format!(
                "the session ends at {end}, too soon to assume the role (role credentials may not outlive it); {then}"
            ),
        ),
        _ => (
            "False",
            "Assuming",
            format!("assuming role {}", spec.role_arn),
        ),
    }
}

fn role_failure_reason(reason: &str) -> &'static str {
    match reason {
        "RoleAccessDenied" => "RoleAccessDenied",
        "Throttled" => "Throttled",
        "InvalidSpec" => "InvalidSpec",
        _ => "AssumeRoleFailed",
    }
}

/// `Ready` with spec.assumeRole: the output Secret holds the role's credentials, so they decide;
/// the session's own state (`session`: what `Ready` would say without a role) still shows when
/// it is the cause, or when it asks for a person (a code).
fn role_ready_condition(
    session: (&'static str, &'static str, String),
    role: &RoleOutcome,
    status: &SessionTokenStatus,
) -> (&'static str, &'static str, String) {
    let (s_status, s_reason, s_message) = session;
    if role.valid {
        // A session problem shows even while the role credentials last (e.g. the kept session
        // was deleted: `SecretMissing`, approve again).
        let reason = s_reason;
        let until = status
            .role
            .as_ref()
            .and_then(|r| r.expiration)
            .map(|e| e.to_string())
            .unwrap_or_default();
        (
            "True",
            reason,
            format!("role credentials valid until {until}; {s_message}"),
        )
    } else if s_status == "True" {
        // The session is fine: the role is the problem.
        ("False", role.reason, role.message.clone())
    } else {
        (s_status, s_reason, s_message)
    }
}

/// A digest of a status, to recognise our own write in the cache without keeping a copy.
fn status_digest(status: &SessionTokenStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(status).unwrap_or_default().hash(&mut h);
    h.finish()
}

async fn write_status(
    api: &Api<SessionToken>,
    name: &str,
    status: &SessionTokenStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": SessionToken::api_version(&()),
        "kind": SessionToken::kind(&()),
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
    Ok(())
}

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
        if now - self.last_swept >= Self::TTL_SECS {
            self.seen
                .retain(|_, (_, seen)| now - *seen < Self::TTL_SECS);
            self.last_swept = now;
        }
        let Some(value) = trigger_hash(st) else {
            return true;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&st.metadata.namespace, &st.metadata.name, &st.metadata.uid).hash(&mut h);
        match self.seen.insert(h.finish(), (value, now)) {
            Some((previous, seen)) => previous != value || now - seen >= Self::TTL_SECS,
            None => true,
        }
    }
}

/// The cache keeps SessionTokens without `managedFields` (most of an object's size once its
/// status is written), except entries that set one of our annotations: `plan::annotation_set_at`
/// reads from them when a token code was set. Likewise client-side `kubectl apply`'s copy of the
/// whole object in an annotation is kept only if it holds a token code (step 1 warns about it).
fn drop_managed_fields(st: &mut SessionToken) {
    if let Some(copy) = st
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.get_mut("kubectl.kubernetes.io/last-applied-configuration"))
        .filter(|copy| !copy.contains(TOKEN_CODE_ANNOTATION))
    {
        // Emptied, not cleared: `clear` would keep the copy's buffer.
        *copy = String::new();
    }
    let ours = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        m.fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:metadata")?.get("f:annotations")?.as_object())
            .is_some_and(|a| a.keys().any(|k| k.starts_with("f:stssession.dev/")))
    };
    if let Some(entries) = st.metadata.managed_fields.as_mut() {
        entries.retain(ours);
        if entries.is_empty() {
            st.metadata.managed_fields = None;
        } else {
            entries.shrink_to_fit();
        }
    }
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
        self.next = (delay * 2).min(Self::CAP);
        Some(delay.mul_f64(0.8 + 0.4 * rand::random::<f64>()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs the controller for one scope (all namespaces, or one) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (sessions, secrets): (Api<SessionToken>, Api<PartialObjectMeta<Secret>>) = match &namespace
    {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let requeues = Arc::new(crate::requeue::Requeues::default());
    ctx.requeues
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((namespace.clone(), requeues.clone()));
    let forget_requeues = requeues.clone();
    let (registry, this_table) = (ctx.clone(), requeues.clone());
    let metrics = ctx.metrics.clone();
    let forget_ctx = ctx.clone();
    let own = ctx.clone();
    let main_stream = watcher(sessions, watcher::Config::default().any_semantic())
        .backoff(WatchBackoff::default())
        .modify(drop_managed_fields)
        .reflect(writer)
        .inspect_ok(move |event| {
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
    // Only Secrets the operator labelled, and only their metadata: memory stays flat however
    // many Secrets the cluster holds.
    let owned = watcher(
        secrets,
        watcher::Config::default()
            .labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"))
            .any_semantic(),
    )
    .backoff(WatchBackoff::default())
    .touched_objects()
    // Our own writes come back on this watch: the reconcile that made them needs no other.
    .try_filter(move |s| std::future::ready(!own.is_own_secret_write(s)));
    // Far-off requeues of this controller's objects come back to it through a channel.
    let (due_tx, due_rx) = futures::channel::mpsc::unbounded();
    let requeue_task = tokio::spawn(async move {
        requeues
            .run(|object| due_tx.unbounded_send(object).map_err(|_| ()))
            .await
    });
    Controller::for_stream(main_stream, reader)
        .owns_stream(owned)
        .reconcile_on(due_rx)
        // The controller backs off on the watches' errors a second time: same policy.
        .trigger_backoff(WatchBackoff::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "gone")
                }
                Err(e) => debug!(error = %e, "controller event"),
            }
        })
        .await;
    requeue_task.abort();
    // (A later run, after leadership comes back, starts with a table of its own.)
    registry
        .requeues
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(_, table)| !Arc::ptr_eq(table, &this_table));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn conditions_keep_transition_time_when_status_is_unchanged() {
        let mut c = vec![];
        set_condition(
            &mut c,
            READY,
            "False",
            "AwaitingTokenCode",
            "a".into(),
            Some(1),
            t(0),
        );
        set_condition(
            &mut c,
            READY,
            "False",
            "Expired",
            "b".into(),
            Some(2),
            t(10),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(0));
        assert_eq!(c[0].reason, "Expired");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, READY, "True", "Issued", "c".into(), Some(2), t(20));
        assert_eq!(c[0].last_transition_time, t(20));
        set_condition(
            &mut c,
            ISSUING,
            "True",
            "Succeeded",
            "d".into(),
            Some(2),
            t(30),
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_claim_is_resolved_by_anything_status_records_at_or_after_it() {
        let mut s = SessionTokenStatus::default();
        assert!(!claim_resolved(&s, t(10)));
        set_condition(
            &mut s.conditions,
            ISSUING,
            "True",
            "Succeeded",
            "a".into(),
            None,
            t(9),
        );
        assert!(
            !claim_resolved(&s, t(10)),
            "older evidence is a previous claim's"
        );
        set_condition(
            &mut s.conditions,
            ISSUING,
            "Unknown",
            CLAIMED,
            "b".into(),
            None,
            t(10),
        );
        assert!(claim_resolved(&s, t(10)), "the claim on record");
        let mut s = SessionTokenStatus {
            last_approval: Some(Approval {
                approved_by: None,
                time: t(11),
            }),
            ..Default::default()
        };
        assert!(claim_resolved(&s, t(10)));
        s.last_approval = None;
        s.last_failure = Some(Failure {
            time: t(10),
            reason: "TokenCodeRejected".into(),
            message: "m".into(),
        });
        assert!(claim_resolved(&s, t(10)));
        assert!(!claim_resolved(&s, t(11)));
    }

    #[test]
    fn api_messages_are_redacted() {
        let session = SessionSecret {
            access_key_id: "ASIAEXAMPLE0000000000".into(),
            secret_access_key: crate::Sensitive::new("s3cr3t".into()),
            session_token: crate::Sensitive::new("t0k3n".into()),
            expiration: t(0),
        };
        assert_eq!(
            redact("data s3cr3t and t0k3n", &session),
            "data <redacted> and <redacted>"
        );
    }

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

    fn role_spec() -> AssumeRoleSpec {
        AssumeRoleSpec::example()
    }

    fn facts(assumed_now: bool, valid: bool) -> RoleFacts<'static> {
        RoleFacts {
            assumed_now,
            valid,
            blocker: None,
            approve_hint: Some("approve with `kubectl sts approve x -n y`".into()),
        }
    }

    #[test]
    fn role_condition_says_why_there_are_no_role_credentials() {
        let spec = role_spec();
        let mut role = RoleStatus {
            expiration: Some(t(3600)),
            renewal_time: Some(t(2400)),
            assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/deployer/y.x".into()),
            ..Default::default()
        };
        let hold = plan::RoleAction::Hold {
            renewal: Some(t(2400)),
        };
        let (s, r, m) = role_condition(&spec, &role, &hold, facts(false, true));
        assert_eq!((s, r), ("True", "Assumed"));
        assert!(
            m.contains("assumed-role/deployer") && m.contains("assumed again at"),
            "{m}"
        );

        let ending = plan::RoleAction::SessionEnding {
            session_expiration: t(3600),
        };
        let (s, r, m) = role_condition(&spec, &role, &ending, facts(false, true));
        assert_eq!((s, r), ("True", "Assumed"));
        assert!(m.contains("last role credentials"), "{m}");
        let (s, r, m) = role_condition(&spec, &role, &ending, facts(false, false));
        assert_eq!((s, r), ("False", "SessionEnding"));
        assert!(m.contains("kubectl sts approve"), "{m}");

        let (s, r, m) = role_condition(
            &spec,
            &role,
            &plan::RoleAction::NoSession,
            facts(false, false),
        );
        assert_eq!((s, r), ("False", "WaitingForSession"));
        assert!(m.contains("kubectl sts approve"), "{m}");

        role.failed_attempts = 2;
        role.last_failure = Some(Failure {
            time: t(2500),
            reason: "RoleAccessDenied".into(),
            message: "STS refused AssumeRole of arn:aws:iam::123456789012:role/deployer".into(),
        });
        let backoff = plan::RoleAction::Backoff {
            retry_at: t(2520),
            why: "renewal time reached",
        };
        let (s, r, m) = role_condition(&spec, &role, &backoff, facts(false, true));
        assert_eq!(
            (s, r),
            ("True", "RoleAccessDenied"),
            "valid, but renewal failing"
        );
        assert!(m.contains("valid until"), "{m}");
        let (s, r, _) = role_condition(&spec, &role, &backoff, facts(false, false));
        assert_eq!((s, r), ("False", "RoleAccessDenied"));
        let blocked = RoleFacts {
            blocker: Some(("EndpointNotAllowed", "spec.endpoint is not allowed")),
            ..facts(false, false)
        };
        let (s, r, _) = role_condition(&spec, &role, &backoff, blocked);
        assert_eq!((s, r), ("False", "EndpointNotAllowed"));
    }

    #[test]
    fn ready_follows_the_role_credentials() {
        let status = SessionTokenStatus {
            role: Some(Box::new(RoleStatus {
                expiration: Some(t(3600)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let outcome = |valid: bool| RoleOutcome {
            valid,
            renewal: None,
            next: None,
            reason: "RoleAccessDenied",
            message: "refused".into(),
        };
        let session_ok = || ("True", "Issued", "session valid".to_string());
        let (s, r, m) = role_ready_condition(session_ok(), &outcome(true), &status);
        assert_eq!((s, r), ("True", "Issued"));
        assert!(m.starts_with("role credentials valid until"), "{m}");
        let (s, r, m) = role_ready_condition(session_ok(), &outcome(false), &status);
        assert_eq!((s, r, m.as_str()), ("False", "RoleAccessDenied", "refused"));
        let expired = ("False", "Expired", "the session expired".to_string());
        let (s, r, _) = role_ready_condition(expired, &outcome(false), &status);
        assert_eq!((s, r), ("False", "Expired"), "the session is the cause");
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

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let cut = truncate(&s, 1000);
        assert!(cut.len() <= 1004 && cut.ends_with('…'));
        assert_eq!(truncate("short", 10), "short");
    }
}
