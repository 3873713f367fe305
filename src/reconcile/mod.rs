//! The reconciler: observe (src/reconcile/observe.rs) → decide (src/plan) → act
//! (src/reconcile/act.rs), behind a backstop that turns a panic into `Ready=False/InternalError`
//! on that one object. Idempotent and level-based: a reconcile that finds everything as it should
//! be writes nothing. The watches that feed it are in src/reconcile/watch.rs.

pub mod act;
pub mod assumed;
mod context;
pub mod observe;
mod owned;
mod sources;
mod tolerant;
pub mod watch;

pub use context::{Context, Settings};
pub use tolerant::Tolerant;
pub use watch::run;

use crate::crd::SessionToken;
use crate::events::Event;
use crate::plan::{self, INTERNAL_ERROR, READY};
use futures::FutureExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, warn};

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
    #[error("the reconcile panicked (an operator bug, caught); retried with backoff")]
    Panicked,
}

impl Error {
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::MissingField(_) | Error::InvalidName(_) => "InvalidObject",
            Error::SecretWrite(_) => "SecretWrite",
            Error::Panicked => "Panic",
        }
    }
}

/// One reconcile of a SessionToken, with its metrics; a panic inside it is caught here.
pub async fn reconcile(st: Arc<SessionToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    guarded(&*st, &ctx, phases(st.clone(), &ctx), backstop(&st, &ctx)).await
}

/// Runs the reconcile `phases` of `obj` (a SessionToken or an AssumedRole) with its metrics:
/// a panic inside it is caught and handed to `backstop`, a success resets the error backoff.
pub(crate) async fn guarded<K: kube::Resource>(
    obj: &K,
    ctx: &Context,
    phases: impl std::future::Future<Output = Result<Action, Error>>,
    backstop: impl std::future::Future<Output = ()>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match AssertUnwindSafe(phases).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            backstop.await;
            Err(Error::Panicked)
        }
    };
    if result.is_ok() {
        let uid = obj.meta().uid.as_deref().unwrap_or_default();
        ctx.with_memory(uid, |m| m.errors = 0);
    }
    ctx.metrics.reconcile_finished(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_reason),
    );
    result
}

/// The reconcile as a short sequence of phases.
async fn phases(st: Arc<SessionToken>, ctx: &Context) -> Result<Action, Error> {
    fail_point(&st);
    let Some(st) = current(st, ctx, |st: &SessionToken| st.status.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let facts = observe::observe(st, ctx).await?;
    let plan = plan::decide(&facts);
    act::run(ctx, &facts, plan).await
}

/// Debug builds only (the tests'): a SessionToken annotated [`TEST_PANIC_ANNOTATION`] makes
/// its reconcile panic, so that the backstop can be tested end to end. Release builds (the
/// image, the benchmarks) have no such thing.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
fn fail_point(st: &SessionToken) {
    if st.annotations().contains_key(TEST_PANIC_ANNOTATION) {
        panic!("fail point {TEST_PANIC_ANNOTATION}");
    }
}

#[cfg(not(debug_assertions))]
fn fail_point(_: &SessionToken) {}

/// See [`fail_point`].
pub const TEST_PANIC_ANNOTATION: &str = "stssession.dev/test-panic";

/// The object to reconcile: the cached one, unless the cache has not caught up with this
/// process's last status write (acting on it could mint, or assume a role, twice): then the
/// API server's. (For SessionTokens and AssumedRoles; `status` reads an object's status.)
pub(crate) async fn current<K, S>(
    obj: Arc<K>,
    ctx: &Context,
    status: fn(&K) -> Option<&S>,
) -> Result<Option<Arc<K>>, Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize,
{
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if !ctx.status_cache_lags(&uid, status(&obj)) {
        return Ok(Some(obj));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&obj.name_any())
        .await?
        .filter(|fresh| fresh.meta().uid == obj.meta().uid)
        .map(Arc::new))
}

/// After a panic: counted, logged (the object's name only: the panic's message may quote
/// anything), and shown on the object as `Ready=False/InternalError` with an Event. Every other
/// object keeps being served; this one is retried with backoff.
async fn backstop(st: &SessionToken, ctx: &Context) {
    ctx.metrics.reconcile_panicked();
    let (namespace, name) = (st.namespace().unwrap_or_default(), st.name_any());
    error!(
        namespace,
        name, "a reconcile panicked; the object is retried with backoff"
    );
    let message = "the operator met an internal error reconciling this SessionToken (a bug; its log says when); retried with backoff".to_string();
    let mut status = st.status.clone().unwrap_or_default();
    plan::set_condition(
        &mut status.conditions,
        READY,
        ("False", INTERNAL_ERROR, message.clone()),
        st.metadata.generation,
        Timestamp::now(),
    );
    let api: Api<SessionToken> = Api::namespaced(ctx.client.clone(), &namespace);
    let guarded = AssertUnwindSafe(async {
        if let Err(e) = act::write_status(&api, &name, &status).await {
            warn!(namespace, name, error = %e, "could not record the internal error in status");
        }
        act::publish(ctx, st, vec![Event::warning(INTERNAL_ERROR, message)]).await;
    });
    let _ = guarded.catch_unwind().await;
}

/// Per-object exponential backoff for reconcile errors (kube-runtime has none of its own).
pub fn error_policy(st: Arc<SessionToken>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&*st, error, &ctx)
}

/// The error backoff of `obj` (a SessionToken or an AssumedRole): doubling per consecutive
/// error, jittered, counted in the object's memory.
pub(crate) fn backoff_after<K: kube::Resource>(obj: &K, error: &Error, ctx: &Context) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let attempt = ctx.with_memory(&uid, |m| {
        m.errors = m.errors.saturating_add(1);
        m.errors
    });
    let delay = plan::backoff(
        attempt,
        &ctx.settings.timing,
        &format!("{uid}/{}", Timestamp::now().as_millisecond()),
    );
    let meta = obj.meta();
    warn!(namespace = meta.namespace.as_deref().unwrap_or_default(), name = meta.name.as_deref().unwrap_or_default(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
