//! Act: carry out a [`Plan`] and its [`Effects`]. All the reconcile's I/O is here, and no
//! decision: what to claim, call, write, delete, restart and say comes from `plan`; this file
//! only sequences it and reports how each request went.

use super::Error;
use super::context::Context;
use super::observe::{short_error, status_code, workload_resource};
use crate::approval::Claim;
use crate::crd::{FIELD_MANAGER, SessionToken, SessionTokenStatus};
use crate::events::Event;
use crate::plan::{self, Call, CallKind, Effects, Facts, Outcome, Plan, SecretWrite, WriteMode};
use crate::sts::{AssumeRoleRequest, SessionRequest};
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Carries out `plan` for the object `f` describes.
pub async fn run(ctx: &Context, f: &Facts, plan: Plan) -> Result<Action, Error> {
    if let Some(wait) = plan.wait {
        return Ok(Action::requeue(wait));
    }
    let api: Api<SessionToken> = Api::namespaced(ctx.client.clone(), &f.ns);
    for claim in &plan.claims {
        if !claim_annotation(&api, &f.name, claim).await? {
            debug!(
                namespace = f.ns,
                name = f.name,
                annotation = claim.key,
                "claimed elsewhere or changed meanwhile"
            );
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    // What the API server holds of status, as far as this reconcile knows.
    let mut server_status = f.st.status.clone().unwrap_or_default();
    if let Some(record) = &plan.record_claim {
        match write_status(&api, &f.name, record).await {
            Ok(written) => {
                ctx.note_status_write(&f.uid, &written);
                server_status = written;
            }
            Err(e) => {
                warn!(namespace = f.ns, name = f.name, error = %e, "could not record the claim; using the code anyway")
            }
        }
    }
    let outcome = call(ctx, f, plan.call).await;
    let fx = plan::settle(f, plan.draft, outcome);
    apply(ctx, f, &api, fx, server_status).await
}

/// The plan's STS call, if any.
async fn call(ctx: &Context, f: &Facts, call: Option<Call>) -> Outcome {
    let Some(call) = call else {
        return Outcome::NoCall;
    };
    let (Ok(keys), region, endpoint) = (&f.keys, f.region.as_str(), f.endpoint.as_deref()) else {
        return Outcome::NoCall;
    };
    match call {
        Call::GetSessionToken { code, why } => {
            info!(
                namespace = f.ns,
                name = f.name,
                with_code = code.is_some(),
                why,
                "minting a session"
            );
            let request = SessionRequest {
                region,
                endpoint,
                access_key_id: &keys.access_key_id,
                secret_access_key: &keys.secret_access_key,
                duration_seconds: f.st.spec.duration_seconds,
                mfa: match (code, f.st.spec.mfa.as_ref()) {
                    (Some(code), Some(mfa)) => Some((mfa.serial_number.as_str(), code)),
                    _ => None,
                },
            };
            let result = ctx.sts.get_session_token(request).await;
            if let Err(e) = &result {
                warn!(namespace = f.ns, name = f.name, reason = e.reason(), error = %e, "GetSessionToken failed");
            }
            Outcome::Session(result)
        }
        Call::AssumeRole {
            session,
            duration_seconds,
            why,
        } => {
            let Some(spec) = f.assume_role() else {
                return Outcome::NoCall;
            };
            let call = RoleCall {
                spec,
                session: &session,
                duration_seconds,
                why,
                region,
                endpoint,
            };
            Outcome::Role(assume_role(ctx, f.who(), call).await)
        }
    }
}

/// One AssumeRole, for a SessionToken's `spec.assumeRole` or an AssumedRole.
pub(crate) struct RoleCall<'a> {
    pub spec: &'a crate::crd::AssumeRoleSpec,
    pub session: &'a crate::Credentials,
    pub duration_seconds: i32,
    pub why: &'static str,
    pub region: &'a str,
    pub endpoint: Option<&'a str>,
}

/// AssumeRole with `call.session` (its role session name by default `<namespace>.<name>` of
/// `who`); a failure is logged (without the request).
pub(crate) async fn assume_role(
    ctx: &Context,
    who: Who<'_>,
    call: RoleCall<'_>,
) -> Result<crate::sts::AssumedRole, crate::sts::StsError> {
    let spec = call.spec;
    info!(
        namespace = who.ns,
        name = who.name,
        role = spec.role_arn,
        why = call.why,
        "assuming the role"
    );
    let tags: Vec<(String, String)> = spec
        .tags
        .iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    let role_session_name = spec
        .role_session_name
        .clone()
        .unwrap_or_else(|| plan::default_role_session_name(who.ns, who.name));
    let request = AssumeRoleRequest {
        region: call.region,
        endpoint: call.endpoint,
        access_key_id: &call.session.access_key_id,
        secret_access_key: &call.session.secret_access_key,
        session_token: &call.session.session_token,
        role_arn: &spec.role_arn,
        role_session_name: &role_session_name,
        duration_seconds: call.duration_seconds,
        external_id: spec.external_id.as_deref(),
        tags: &tags,
    };
    let result = ctx.sts.assume_role(request).await;
    if let Err(e) = &result {
        warn!(namespace = who.ns, name = who.name, reason = e.reason(), error = %e, "AssumeRole failed");
    }
    result
}

/// Writes what `settle` decided, in order: Secrets, deletes, restarts, status, Events.
async fn apply(
    ctx: &Context,
    f: &Facts,
    api: &Api<SessionToken>,
    mut fx: Effects,
    server_status: SessionTokenStatus,
) -> Result<Action, Error> {
    match fx.call_metric {
        Some((CallKind::GetSessionToken, outcome)) => ctx.metrics.sts_call(outcome),
        Some((CallKind::AssumeRole, outcome)) => ctx.metrics.assume_role_call(outcome),
        None => {}
    }
    ctx.with_memory(&f.uid, |m| m.remembered = fx.memory.clone());
    let mut missed = false;
    for w in &fx.writes {
        match write_secret(ctx, f.who(), w).await {
            Ok(m) => missed |= m,
            // A create met a namesake the owned-Secret watch cannot see: the name is read from
            // now on (`OwnedSecrets::unsure`), and at once, not after an error's backoff.
            Err(kube::Error::Api(e)) if e.code == 409 && matches!(w.mode, WriteMode::Create) => {
                if w.new_credentials {
                    secret_write_failed(ctx, f, api, &fx, &kube::Error::Api(e), &server_status)
                        .await;
                }
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(e) => {
                if w.new_credentials {
                    secret_write_failed(ctx, f, api, &fx, &e, &server_status).await;
                }
                return Err(Error::SecretWrite(e));
            }
        }
    }
    for d in &fx.deletes {
        delete_owned_secret(ctx, f, d).await?;
    }
    restart_targets(ctx, f, &mut fx).await;
    ctx.metrics.set_session(&f.ns, &f.name, fx.metrics);
    if fx.status != server_status {
        match write_status(api, &f.name, &fx.status).await {
            Ok(written) => ctx.note_status_write(&f.uid, &written),
            Err(e) => {
                if let Some(minted) = fx.keep_unsaved.take() {
                    // The Secret holds the new session but status does not know it yet: keep
                    // it, so the next try records it instead of losing it.
                    ctx.with_memory(&f.uid, |m| m.remembered.unsaved = Some(minted));
                }
                return Err(e);
            }
        }
    }
    publish(ctx, &f.st, fx.events).await;
    let delay = match missed {
        // A change of this object's Secrets came by during a write: what it would have
        // started, at once.
        true => Some(Duration::ZERO),
        false => plan::requeue_after(f.now, &[fx.wake]),
    };
    Ok(ctx.requeue(&f.ns, &f.name, delay))
}

/// A new session's Secret could not be written: keep the session in memory and, if the API
/// server refused it (a refusal that will recur), say so in status.
async fn secret_write_failed(
    ctx: &Context,
    f: &Facts,
    api: &Api<SessionToken>,
    fx: &Effects,
    e: &kube::Error,
    server_status: &SessionTokenStatus,
) {
    if let Some(minted) = fx.keep_unsaved.clone() {
        ctx.with_memory(&f.uid, |m| m.remembered.unsaved = Some(minted));
    }
    let (kube::Error::Api(ae), Some(before), Some((session, _))) =
        (e, &fx.status_before_write, &fx.keep_unsaved)
    else {
        return;
    };
    if !matches!(ae.code, 400 | 403 | 413 | 422) {
        return;
    }
    let status = plan::secret_write_refused(f, before, &session.redact(&ae.message));
    if status != *server_status
        && let Ok(written) = write_status(api, &f.name, &status).await
    {
        ctx.note_status_write(&f.uid, &written);
    }
}

/// Claims an annotation (see [`Claim`]). Returns false if the claim's test failed (someone else
/// claimed it, or it changed) or the object is gone; any other refusal is an error, retried
/// with backoff.
async fn claim_annotation(
    api: &Api<SessionToken>,
    name: &str,
    claim: &Claim,
) -> Result<bool, Error> {
    let patch: json_patch::Patch = serde_json::from_value(claim.patch.clone())
        .map_err(|_| Error::MissingField("a claim patch"))?;
    let pp = patch_params();
    match api.patch(name, &pp, &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(true),
        // The object changed since it was read (the resourceVersion `test` failed: 422 with
        // the API server's generic message, or 409), or it is gone (404). Anything else (a
        // refusal by admission, say) is an error, retried with backoff.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The parameters of every patch this operator sends: its field manager.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A write's response as this operator asks for it: the object's metadata only
/// (`PartialObjectMetadata`). The API server then encodes no data, spec or status it was just
/// sent, and the operator parses none; of that metadata only the resourceVersion is read.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMeta,
}

#[derive(serde::Deserialize)]
struct WrittenMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// Sends a write built by kube's request builder, asking for metadata only in the response;
/// returns the resourceVersion written. Errors are kube's, as from `Api`'s own methods.
async fn send_for_metadata(
    client: kube::Client,
    req: Result<hyper::http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<Option<String>, kube::Error> {
    let mut req = req.map_err(kube::Error::BuildRequest)?;
    req.headers_mut().insert(
        hyper::http::header::ACCEPT,
        hyper::http::HeaderValue::from_static(METADATA_ONLY),
    );
    let written: Written = client.request(req).await?;
    Ok(written.metadata.resource_version)
}

/// Replaces an object's whole status (a JSON Patch `add /status`). Not server-side apply: on a
/// custom resource an apply costs the API server about twice the CPU of a JSON Patch (the body
/// parsed as YAML twice, then merged as a typed object), and on a cold start the status write
/// is a third of what the API server does. The status is the operator's alone: fields someone
/// else added are dropped with the rest. The response is the stored object's metadata only.
pub(crate) async fn replace_status<K: Resource + Clone>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error> {
    let pp = patch_params();
    let patch = status_patch(status)?;
    let req = kube::core::Request::new(api.resource_url()).patch_subresource(
        "status",
        name,
        &pp,
        &Patch::<()>::Json(patch),
    );
    send_for_metadata(api.clone().into_client(), req).await?;
    Ok(())
}

fn status_patch(status: &impl serde::Serialize) -> Result<json_patch::Patch, Error> {
    let ops = serde_json::json!([{ "op": "add", "path": "/status", "value": status }]);
    serde_json::from_value(ops).map_err(|_| Error::MissingField("a status patch"))
}

/// Writes status and returns it as written. Under a CRD older than this operator (Helm does not
/// upgrade CRDs; the operator may be rolled out first), the API server prunes the status fields
/// the old schema does not declare: `approvedFor` is then missing from what was stored, and the
/// status returned says so (the decisions treat a session without it as approved for the role
/// it already holds). Only a status with `approvedFor` (an MFA approval's, at a person's pace)
/// asks for the stored object back, to see that; every other write asks for metadata only.
pub(crate) async fn write_status(
    api: &Api<SessionToken>,
    name: &str,
    status: &SessionTokenStatus,
) -> Result<SessionTokenStatus, Error> {
    if status.approved_for.is_none() {
        replace_status(api, name, status).await?;
        return Ok(status.clone());
    }
    let pp = patch_params();
    let stored = api
        .patch_status(name, &pp, &Patch::<()>::Json(status_patch(status)?))
        .await?;
    let pruned = stored
        .status
        .as_ref()
        .is_some_and(|s| s.approved_for.is_none());
    if pruned {
        warn!(
            name,
            "the SessionToken CRD is older than this operator (no status.approvedFor): apply crds/ to upgrade it"
        );
        return Ok(SessionTokenStatus {
            approved_for: None,
            ..status.clone()
        });
    }
    Ok(status.clone())
}

/// Writes a Secret: created if absent (never merged into a foreign one), otherwise applied
/// with a resourceVersion precondition after the ownership check, so a Secret that changed
/// hands meanwhile is not taken over. Transient failures are retried twice. Returns whether
/// the watch showed a change of this object's Secrets meanwhile that was not this write.
pub(crate) async fn write_secret(
    ctx: &Context,
    f: Who<'_>,
    w: &SecretWrite,
) -> Result<bool, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), f.ns);
    let mut attempt: u64 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        ctx.secret_write_started(f.uid);
        let result = match &w.mode {
            WriteMode::Create => create_secret(&secrets, &w.desired)
                .await
                .map(|rv| (rv, None)),
            WriteMode::Apply { resource_version } => {
                let mut body = w.desired.clone();
                body.metadata.resource_version = resource_version.clone();
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                secrets
                    .patch(&w.name, &pp, &Patch::Apply(&body))
                    .await
                    .map(|s| (s.metadata.resource_version.clone(), Some(s)))
            }
        };
        let written_rv = result.as_ref().ok().and_then(|(rv, _)| rv.as_deref());
        let missed = ctx.secret_write_done(f.uid, written_rv);
        let result = match result {
            Ok((_, applied)) => {
                ctx.owned.wrote(f.ns, &w.name);
                match applied {
                    None => Ok(()),
                    Some(written) => prune_stale_keys(&secrets, &written, &w.desired).await,
                }
            }
            Err(e) => {
                // Refused, for whatever reason (a create with an invalid label is refused
                // before a namesake is looked for; a 409 means one exists or the Secret
                // changed): what is there is read from now on.
                ctx.owned.unsure(f.ns, &w.name);
                Err(e)
            }
        };
        match result {
            Ok(()) => return Ok(missed),
            // 409: the Secret changed since it was read, or a namesake exists that the watch
            // has not shown yet (a create): the next reconcile reads it.
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(kube::Error::Api(e)),
            Err(e) if attempt < 3 => {
                warn!(namespace = f.ns, name = f.name, secret = w.name, error = %e, attempt, "writing a Secret failed; retrying");
                tokio::time::sleep(Duration::from_millis(200u64.saturating_mul(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates a Secret; returns the resourceVersion it was created with (the response is its
/// metadata only: the data just sent is not encoded again, nor parsed).
async fn create_secret(
    secrets: &Api<Secret>,
    secret: &Secret,
) -> Result<Option<String>, kube::Error> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let body = serde_json::to_vec(secret).map_err(kube::Error::SerdeError)?;
    let req = kube::core::Request::new(secrets.resource_url()).create(&pp, body);
    send_for_metadata(secrets.clone().into_client(), req).await
}

/// Removes from the output Secret, as just applied, the keys of formats no longer chosen that
/// server-side apply kept (keys written when the Secret was created belong to the create, not
/// to the apply). A JSON patch guarded by the resourceVersion; losing that race is fine: the
/// next reconcile finds the Secret not up to date and tries again.
async fn prune_stale_keys(
    secrets: &Api<Secret>,
    applied: &Secret,
    desired: &Secret,
) -> Result<(), kube::Error> {
    let stale = crate::secret::stale_keys(applied, desired);
    if stale.is_empty() {
        return Ok(());
    }
    let mut ops = vec![serde_json::json!({
        "op": "test", "path": "/metadata/resourceVersion",
        "value": applied.metadata.resource_version.clone().unwrap_or_default(),
    })];
    ops.extend(stale.iter().map(|k| {
        serde_json::json!({"op": "remove", "path": format!("/data/{}", k.replace('~', "~0").replace('/', "~1"))})
    }));
    let Ok(patch) = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
    else {
        return Ok(());
    };
    let name = applied.metadata.name.clone().unwrap_or_default();
    let pp = patch_params();
    match secrets.patch(&name, &pp, &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if matches!(e.code, 409 | 422) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes a Secret of ours (a precondition on its UID: never a namesake created meanwhile).
async fn delete_owned_secret(
    ctx: &Context,
    f: &Facts,
    d: &plan::SecretDelete,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &f.ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: d.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match secrets.delete(&d.name, &dp).await {
        Ok(_) => {
            info!(
                namespace = f.ns,
                name = f.name,
                secret = d.name,
                "deleted a Secret no longer needed"
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The restarts `settle` decided, then the `RolloutRestart` condition from how they went.
async fn restart_targets(ctx: &Context, f: &Facts, fx: &mut Effects) {
    let Some(access_key_id) = fx.restart_for.clone() else {
        return;
    };
    let mut problems = std::mem::take(&mut fx.target_problems);
    let restarts = std::mem::take(&mut fx.restarts);
    let events = patch_targets(ctx, f.who(), restarts, &access_key_id, &mut problems).await;
    fx.events.extend(events);
    plan::restarts_done(f, fx, &access_key_id, &problems);
}

/// Restarts workloads (their merge patches) for the credentials `access_key_id`; returns an
/// Event per restart and adds a problem per refusal.
pub(crate) async fn patch_targets(
    ctx: &Context,
    who: Who<'_>,
    restarts: Vec<plan::Restart>,
    access_key_id: &str,
    problems: &mut Vec<plan::TargetProblem>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for restart in restarts {
        let api: Api<DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            who.ns,
            &workload_resource(restart.target.kind),
        );
        let what = plan::target_name(&restart.target);
        let pp = patch_params();
        match api
            .patch(&restart.target.name, &pp, &Patch::Merge(&restart.patch))
            .await
        {
            Ok(_) => {
                info!(
                    namespace = who.ns,
                    name = who.name,
                    target = what,
                    session = access_key_id,
                    "restarted a rollout target"
                );
                events.push(Event::normal(
                    "RolloutRestartTriggered",
                    format!("restarted {what} for credentials {access_key_id}"),
                ));
            }
            Err(e) => problems.push(plan::TargetProblem::of(
                &what,
                "patch",
                status_code(&e),
                &short_error(&e),
            )),
        }
    }
    events
}

/// Publishes Events about `st`; a failure is logged, never fatal.
pub(crate) async fn publish(ctx: &Context, st: &SessionToken, events: Vec<Event>) {
    publish_about(ctx, &st.object_ref(&()), events).await
}

/// Publishes Events about the object `regarding`; a failure is logged, never fatal.
pub(crate) async fn publish_about(
    ctx: &Context,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    events: Vec<Event>,
) {
    for e in events {
        let note = plan::truncate(&e.note, 1000);
        if let Err(err) = ctx
            .events
            .publish(regarding, e.type_, e.reason, "Reconcile", note)
            .await
        {
            warn!(error = %err, reason = e.reason, "could not publish event");
        }
    }
}

/// The object a write is made for: its namespace, name and UID.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl Facts {
    pub(crate) fn who(&self) -> Who<'_> {
        Who {
            ns: &self.ns,
            name: &self.name,
            uid: &self.uid,
        }
    }
}
