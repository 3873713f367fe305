//! AssumedRoles: observe → decide (src/plan/assumed.rs) → act, like SessionTokens, behind the
//! same backstop. An AssumedRole never mints a session and never writes its SessionToken: it
//! reads the session the SessionToken keeps (its Secret, as its status records it) and assumes
//! its role with it. Its watches are set up with the SessionToken's (src/reconcile/watch.rs).

use super::Error;
use super::act::{self, Who};
use super::context::Context;
use super::observe::{bound_role, bounded_conditions, endpoint_blocker, read_targets_of};
use crate::crd::{AssumedRole, AssumedRoleStatus, RESTARTED_FOR_ROLE_PREFIX, SessionToken};
use crate::credentials::Credentials;
use crate::plan::{
    self, AssumedEffects, AssumedFacts, AssumedPlan, INTERNAL_ERROR, READY, ROLE_ASSUMED,
    SecretSeen, SessionFound, SessionSource, WriteMode,
};
use crate::secret::{self, Ownership, SecretOwner};
use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, warn};

/// One reconcile of an AssumedRole, with its metrics; a panic inside it is caught here.
pub async fn reconcile(ar: Arc<AssumedRole>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::guarded(&*ar, &ctx, phases(ar.clone(), &ctx), backstop(&ar, &ctx)).await
}

async fn phases(ar: Arc<AssumedRole>, ctx: &Context) -> Result<Action, Error> {
    let Some(ar) = super::current(ar, ctx, |ar: &AssumedRole| ar.status.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let facts = observe(ar, ctx).await?;
    let plan = plan::decide_assumed(&facts);
    run(ctx, &facts, plan).await
}

/// After a panic: counted, logged by name, shown as `Ready=False/InternalError`.
async fn backstop(ar: &AssumedRole, ctx: &Context) {
    ctx.metrics.reconcile_panicked();
    let (namespace, name) = (ar.namespace().unwrap_or_default(), ar.name_any());
    error!(
        namespace,
        name, "a reconcile panicked; the object is retried with backoff"
    );
    let message = "the operator met an internal error reconciling this AssumedRole (a bug; its log says when); retried with backoff".to_string();
    let mut status = ar.status.clone().unwrap_or_default();
    plan::set_condition(
        &mut status.conditions,
        READY,
        ("False", INTERNAL_ERROR, message.clone()),
        ar.metadata.generation,
        Timestamp::now(),
    );
    let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &namespace);
    let guarded = AssertUnwindSafe(async {
        if let Err(e) = write_status(&api, &name, &status).await {
            warn!(namespace, name, error = %e, "could not record the internal error in status");
        }
        let events = vec![crate::events::Event::warning(INTERNAL_ERROR, message)];
        act::publish_about(ctx, &ar.object_ref(&()), events).await;
    });
    let _ = guarded.catch_unwind().await;
}

/// Per-object exponential backoff for reconcile errors, as for SessionTokens.
pub fn error_policy(ar: Arc<AssumedRole>, error: &Error, ctx: Arc<Context>) -> Action {
    super::backoff_after(&*ar, error, &ctx)
}

// ---------------------------------------------------------------------------------------------
// Observe

/// Reads the SessionToken, its session, the output Secret and the restart targets.
async fn observe(ar: Arc<AssumedRole>, ctx: &Context) -> Result<AssumedFacts, Error> {
    let ns = ar.namespace().ok_or(Error::MissingField("namespace"))?;
    if ar.metadata.uid.is_none() {
        return Err(Error::MissingField("uid"));
    }
    let out_name = ar.output_secret_name();
    if !plan::is_object_name(&out_name) {
        return Err(Error::InvalidName(out_name));
    }
    let now = Timestamp::now();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let key = plan::restarted_for_key_of(RESTARTED_FOR_ROLE_PREFIX, &ar.name_any());
    let (out, source, targets) = tokio::try_join!(
        async {
            match ctx.owned.absent(&ns, &out_name) {
                true => Ok(None),
                false => secrets.get_opt(&out_name).await,
            }
        },
        session_source(ctx, &ns, &ar, now),
        async { Ok(read_targets_of(ctx, &ns, &ar.spec.rollout_restart_targets, &key).await) },
    )?;
    let f = facts(ar, out, source, targets, &ctx.settings.timing, now);
    match f.out.ownership {
        Ownership::Foreign(_) => ctx.owned.unsure(&f.ns, &f.out.name),
        Ownership::Ours | Ownership::Absent => ctx.owned.sure(&f.ns, &f.out.name),
    }
    Ok(f)
}

/// The pure half of `observe`: the AssumedRole and what was read, as [`AssumedFacts`], with
/// status bounded (times that should be past and are not dropped, counts clamped, only the
/// operator's conditions, once each).
pub fn facts(
    ar: Arc<AssumedRole>,
    out: Option<Secret>,
    source: SessionSource,
    targets: Vec<plan::TargetSeen>,
    timing: &plan::Timing,
    now: Timestamp,
) -> AssumedFacts {
    let ownership = secret::ownership_by(out.as_ref(), &SecretOwner::role(&ar));
    let mut status = ar.status.clone().unwrap_or_default();
    status.conditions = bounded_conditions(
        status.conditions,
        &[READY, ROLE_ASSUMED, plan::ROLLOUT_RESTART],
        now,
    );
    bound_role(&mut status.role, now);
    AssumedFacts {
        name: ar.name_any(),
        generation: ar.metadata.generation,
        ns: ar.namespace().unwrap_or_default(),
        uid: ar.metadata.uid.clone().unwrap_or_default(),
        now,
        timing: timing.clone(),
        status,
        out: SecretSeen {
            name: ar.output_secret_name(),
            existing: out,
            ownership,
        },
        source,
        targets,
        ar,
    }
}

/// The SessionToken `ar` refers to, and the session it holds now.
async fn session_source(
    ctx: &Context,
    ns: &str,
    ar: &AssumedRole,
    now: Timestamp,
) -> Result<SessionSource, kube::Error> {
    let name = &ar.spec.session_token_ref.name;
    // The SessionToken controller's cache (updated before any change of it starts this
    // reconcile), else the API server.
    let st = match ctx.cached_session_token(ns, name) {
        Some(cached) => cached,
        None => {
            let api: Api<SessionToken> = Api::namespaced(ctx.client.clone(), ns);
            api.get_opt(name).await?.map(Arc::new)
        }
    };
    let Some(st) = st else {
        return Ok(SessionSource::Missing);
    };
    let settings = &ctx.settings;
    let region = st
        .spec
        .region
        .clone()
        .unwrap_or_else(|| settings.default_region.clone());
    let endpoint = st.spec.endpoint.clone();
    let status = st.status.clone().unwrap_or_default();
    let has_mfa = st.spec.mfa.is_some();
    let approved_for_spec = !has_mfa
        || status.approved_for.as_ref().is_none_or(|digest| {
            *digest == plan::approval_scope(&st.spec, &region, endpoint.as_deref())
        });
    Ok(SessionSource::Present(Box::new(SessionFound {
        session: held_session(ctx, ns, &st, now).await?,
        role_allowed: plan::role_allowed(&st.spec.allowed_roles, &ar.spec.role.role_arn),
        approved_for_spec,
        has_mfa,
        blocker: endpoint_blocker(&st, settings, &region),
        region,
        endpoint,
    })))
}

/// The SessionToken's valid session: from the Secret its status names (the one keeping the
/// session with `spec.assumeRole`, else the output Secret), if that Secret is the
/// SessionToken's own and holds the session status records. Read once per session.
async fn held_session(
    ctx: &Context,
    ns: &str,
    st: &SessionToken,
    now: Timestamp,
) -> Result<Option<Credentials>, kube::Error> {
    let Some(status) = st.status.as_ref() else {
        return Ok(None);
    };
    let (Some(key_id), Some(expiration)) = (status.access_key_id.as_deref(), status.expiration)
    else {
        return Ok(None);
    };
    if expiration <= now {
        return Ok(None);
    }
    let st_uid = st.metadata.uid.as_deref().unwrap_or_default();
    if let Some(cached) = ctx.cached_session(st_uid, (key_id, expiration)) {
        return Ok(Some(cached));
    }
    let (home, kept) = match (&status.session_secret_name, &status.secret_name) {
        (Some(kept), _) => (kept, true),
        (None, Some(out)) => (out, false),
        (None, None) => return Ok(None),
    };
    if !plan::is_object_name(home) {
        return Ok(None);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(found) = secrets.get_opt(home).await? else {
        return Ok(None);
    };
    if secret::ownership(Some(&found), st) != Ownership::Ours {
        return Ok(None);
    }
    let session = match kept {
        true => secret::kept_session(&found),
        false => secret::held_session(&found, st),
    }
    .filter(|s| s.access_key_id == key_id && s.expiration == expiration);
    if let Some(s) = &session {
        ctx.cache_session(st_uid, s, now);
    }
    Ok(session)
}

// ---------------------------------------------------------------------------------------------
// Act

/// Carries out `plan`: the AssumeRole call, then what `settle` decided.
async fn run(ctx: &Context, f: &AssumedFacts, plan: AssumedPlan) -> Result<Action, Error> {
    let outcome = match (&plan.call, &f.source) {
        (Some(call), SessionSource::Present(found)) => Some(assume(ctx, f, found, call).await),
        _ => None,
    };
    let mut fx = plan::settle_assumed(f, plan, outcome);
    if let Some((_, outcome)) = fx.call_metric {
        ctx.metrics.assume_role_call(outcome);
    }
    let who = Who {
        ns: &f.ns,
        name: &f.name,
        uid: &f.uid,
    };
    let mut missed = false;
    if let Some(w) = &fx.write {
        match act::write_secret(ctx, who, w).await {
            Ok(m) => missed = m,
            Err(kube::Error::Api(e)) if e.code == 409 && matches!(w.mode, WriteMode::Create) => {
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(e) => return Err(Error::SecretWrite(e)),
        }
    }
    restart(ctx, f, who, &mut fx).await;
    ctx.metrics.set_assumed_role(&f.ns, &f.name, &fx.metrics);
    if Some(&fx.status) != f.ar.status.as_ref() {
        let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &f.ns);
        write_status(&api, &f.name, &fx.status).await?;
        ctx.note_status_write(&f.uid, &fx.status);
    }
    act::publish_about(ctx, &f.ar.object_ref(&()), fx.events).await;
    let delay = match missed {
        true => Some(Duration::ZERO),
        false => plan::requeue_after(f.now, &[fx.wake]),
    };
    Ok(delay
        .map(|d| d.min(plan::MAX_WAIT))
        .map_or_else(Action::await_change, Action::requeue))
}

/// AssumeRole with the SessionToken's session, where that SessionToken calls STS.
async fn assume(
    ctx: &Context,
    f: &AssumedFacts,
    found: &SessionFound,
    call: &plan::AssumedCall,
) -> Result<crate::sts::AssumedRole, crate::sts::StsError> {
    let who = Who {
        ns: &f.ns,
        name: &f.name,
        uid: &f.uid,
    };
    let call = act::RoleCall {
        spec: &f.ar.spec.role,
        session: &call.session,
        duration_seconds: call.duration_seconds,
        why: call.why,
        region: &found.region,
        endpoint: found.endpoint.as_deref(),
    };
    act::assume_role(ctx, who, call).await
}

/// The restarts `settle_assumed` decided, then the `RolloutRestart` condition from how they
/// went (the credentials are written regardless).
async fn restart(ctx: &Context, f: &AssumedFacts, who: Who<'_>, fx: &mut AssumedEffects) {
    let Some(key_id) = fx.restart_for.clone() else {
        return;
    };
    if f.ar.spec.rollout_restart_targets.is_empty() {
        fx.status
            .conditions
            .retain(|c| c.type_ != plan::ROLLOUT_RESTART);
        return;
    }
    let mut problems = std::mem::take(&mut fx.target_problems);
    let restarts = std::mem::take(&mut fx.restarts);
    let events = act::patch_targets(ctx, who, restarts, &key_id, &mut problems).await;
    fx.events.extend(events);
    plan::assumed_restarts_done(f, fx, &key_id, &problems);
}

/// Writes an AssumedRole's status (the whole of it, as for a SessionToken).
async fn write_status(
    api: &Api<AssumedRole>,
    name: &str,
    status: &AssumedRoleStatus,
) -> Result<(), Error> {
    act::replace_status(api, name, status).await?;
    Ok(())
}
