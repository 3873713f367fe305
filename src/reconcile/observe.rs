//! Observe: read the SessionToken's Secrets, its restart targets and the clock, and turn them,
//! with the object itself, into plain [`Facts`]. Every value a tenant controls is parsed and
//! bounded here, once: times that should lie in the past but are far in the future are
//! dropped, counts are clamped, conditions are limited to the operator's own.

use super::Error;
use super::context::{Context, Settings};
use crate::approval::{self, ApprovalFacts};
use crate::crd::{Condition, SessionToken, SessionTokenStatus};
use crate::plan::{
    self, Blocker, Facts, READY, Remembered, SecretSeen, TargetProblem, TargetSeen, Workload,
    restarted_for_key,
};
use crate::secret::{self, Ownership};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use std::sync::Arc;
use std::time::Duration;

/// What one reconcile reads from the API server besides the object.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    pub out: Option<Secret>,
    pub old: Option<Secret>,
    pub source: Option<Secret>,
    pub kept: Option<Secret>,
    pub targets: Vec<TargetSeen>,
}

/// Reads what a reconcile of `st` needs, then builds its [`Facts`].
pub async fn observe(st: Arc<SessionToken>, ctx: &Context) -> Result<Facts, Error> {
    let ns = st.namespace().ok_or(Error::MissingField("namespace"))?;
    if st.metadata.uid.is_none() {
        return Err(Error::MissingField("uid"));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let names = Names::of(&st);
    if !plan::is_object_name(&names.out) {
        return Err(Error::InvalidName(names.out));
    }
    // A Secret the Secret watch has listed as absent is not read (src/reconcile/owned.rs); one
    // created meanwhile refuses the create that follows. Not while a token code waits: a code
    // is never spent on a session that could then find its Secret taken.
    let trust_watch = !st
        .annotations()
        .contains_key(approval::TOKEN_CODE_ANNOTATION);
    let get = |name: Option<&str>, skip_absent: bool| {
        let secrets = secrets.clone();
        let name = name.filter(|n| plan::is_object_name(n)).map(str::to_owned);
        let ns = ns.as_str();
        async move {
            match name {
                Some(n) if skip_absent && trust_watch && ctx.owned.absent(ns, &n) => Ok(None),
                Some(n) => secrets.get_opt(&n).await,
                None => Ok(None),
            }
        }
    };
    // The source Secret as read by an earlier reconcile, if the watch still shows that
    // version of it (src/reconcile/sources.rs). Not while a token code waits.
    let source_name = &st.spec.source_credentials.secret_ref.name;
    let read_source = async {
        let now = std::time::Instant::now();
        if trust_watch
            && let Some(s) =
                ctx.sources
                    .get(&ns, source_name, ctx.owned.version(&ns, source_name), now)
        {
            return Ok(Some(s));
        }
        let read = get(Some(source_name), false).await?;
        if let Some(s) = &read {
            ctx.sources.put(s, now);
        }
        Ok(read)
    };
    // Independent reads, in parallel: an approval waits for them.
    let (out, old, source, kept, targets) = tokio::try_join!(
        get(Some(&names.out), true),
        get(names.old.as_deref(), true),
        read_source,
        get(names.read_kept.then_some(names.kept.as_str()), true),
        async { Ok(read_targets(ctx, &ns, &st).await) },
    )?;
    for (name, read) in [(&names.out, &out), (&names.kept, &kept)] {
        if *name == names.kept && !names.read_kept {
            continue;
        }
        match secret::ownership(read.as_ref(), &st) {
            Ownership::Foreign(_) => ctx.owned.unsure(&ns, name),
            Ownership::Ours | Ownership::Absent => ctx.owned.sure(&ns, name),
        }
    }
    let reads = Reads {
        out,
        old,
        source,
        kept,
        targets,
    };
    let memory = ctx.remembered(st.metadata.uid.as_deref().unwrap_or_default());
    Ok(facts(
        st,
        reads,
        &ctx.settings,
        ctx.sts.settings().timeout,
        memory,
        Timestamp::now(),
    ))
}

/// The names of the Secrets around a SessionToken.
struct Names {
    out: String,
    /// The output Secret of record, when it is not the one the spec names (a rename).
    old: Option<String>,
    /// The Secret keeping the session for `spec.assumeRole`, and whether to read it.
    kept: String,
    read_kept: bool,
}

impl Names {
    fn of(st: &SessionToken) -> Self {
        let out = st.output_secret_name();
        let status = st.status.as_ref();
        Self {
            old: status
                .and_then(|s| s.secret_name.clone())
                .filter(|n| *n != out),
            kept: plan::session_secret_name(&st.name_any()),
            read_kept: st.spec.assume_role.is_some()
                || status.is_some_and(|s| s.session_secret_name.is_some()),
            out,
        }
    }
}

/// The restart targets as they are: which session each was restarted for, or why it cannot
/// be read. (Not watched: read at each reconcile of a SessionToken that has them.)
async fn read_targets(ctx: &Context, ns: &str, st: &SessionToken) -> Vec<TargetSeen> {
    let key = restarted_for_key(&st.name_any());
    read_targets_of(ctx, ns, &st.spec.rollout_restart_targets, &key).await
}

/// The restart targets `targets` as they are; `key`: the pod-template annotation naming the
/// credentials each was restarted for.
pub(crate) async fn read_targets_of(
    ctx: &Context,
    ns: &str,
    targets: &[crate::crd::RolloutRestartTarget],
    key: &str,
) -> Vec<TargetSeen> {
    let reads = targets.iter().map(|target| async move {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), ns, &workload_resource(target.kind));
        let what = plan::target_name(target);
        let state = match api.get(&target.name).await {
            Ok(w) => Ok(workload(&w, key)),
            Err(e) => Err(TargetProblem::of(
                &what,
                "get",
                status_code(&e),
                &short_error(&e),
            )),
        };
        TargetSeen {
            target: target.clone(),
            state,
        }
    });
    futures::future::join_all(reads).await
}

/// A workload as the restart decisions see it: which credentials its pod template was last
/// restarted for (annotation `key`), and when it was created.
fn workload(w: &DynamicObject, key: &str) -> Workload {
    Workload {
        restarted_for: w
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        created: w.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

pub(crate) fn workload_resource(kind: crate::crd::WorkloadKind) -> ApiResource {
    use crate::crd::WorkloadKind;
    let plural = match kind {
        WorkloadKind::Deployment => "deployments",
        WorkloadKind::StatefulSet => "statefulsets",
        WorkloadKind::DaemonSet => "daemonsets",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", kind.as_str()), plural)
}

pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An error without request details that change from one attempt to the next.
pub(crate) fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        other => other.to_string().chars().take(200).collect(),
    }
}

/// The pure half of `observe`: the object and what was read, as [`Facts`].
pub fn facts(
    st: Arc<SessionToken>,
    reads: Reads,
    settings: &Settings,
    call_timeout: Duration,
    memory: Remembered,
    now: Timestamp,
) -> Facts {
    let names = Names::of(&st);
    let ns = st.namespace().unwrap_or_default();
    let name = st.name_any();
    let uid = st.metadata.uid.clone().unwrap_or_default();
    let source_ref = &st.spec.source_credentials.secret_ref;
    let out = SecretSeen {
        ownership: secret::ownership(reads.out.as_ref(), &st),
        name: names.out.clone(),
        existing: reads.out,
    };
    let kept = SecretSeen {
        ownership: secret::ownership(reads.kept.as_ref(), &st),
        name: names.kept.clone(),
        existing: reads.kept,
    };
    let old = reads
        .old
        .filter(|s| secret::ownership(Some(s), &st) == Ownership::Ours);
    let keys = secret::read_long_term_keys(reads.source.as_ref(), source_ref);
    let region = st
        .spec
        .region
        .clone()
        .unwrap_or_else(|| settings.default_region.clone());
    let endpoint = st.spec.endpoint.clone();
    let blocker = blocker(&st, settings, &out, &kept, &keys, &region);
    Facts {
        approval: ApprovalFacts::of(&st, now),
        status: bounded_status(st.status.as_ref(), now),
        generation: st.metadata.generation,
        st,
        ns,
        name,
        uid,
        now,
        timing: settings.timing.clone(),
        instance: settings.instance.clone(),
        call_timeout,
        out,
        old,
        kept,
        keys,
        region,
        endpoint,
        blocker,
        memory,
        targets: reads.targets,
    }
}

/// What stops minting, if anything: an endpoint not allowed, the source keys, a region STS
/// cannot use, a kept-session Secret in the way, someone else's Secret at the output name.
fn blocker(
    st: &SessionToken,
    settings: &Settings,
    out: &SecretSeen,
    kept: &SecretSeen,
    keys: &Result<secret::LongTermKeys, secret::SourceProblem>,
    region: &str,
) -> Option<Blocker> {
    let block = |reason, message| Some(Blocker { reason, message });
    if let Ownership::Foreign(why) = &out.ownership {
        return block("SecretConflict", why.clone());
    }
    if st.spec.assume_role.is_some() {
        let source = &st.spec.source_credentials.secret_ref.name;
        if kept.name == out.name || kept.name == *source {
            let which = if kept.name == out.name {
                "output"
            } else {
                "source"
            };
            return block(
                "InvalidSpec",
                format!(
                    "with spec.assumeRole the session is kept in the Secret {:?}, which is also the {which} Secret: choose another spec.secret.name or source Secret",
                    kept.name
                ),
            );
        }
        if let Ownership::Foreign(why) = &kept.ownership {
            return block(
                "SecretConflict",
                format!("{why} (with spec.assumeRole the operator keeps the session there)"),
            );
        }
    }
    if let Some((reason, message)) = endpoint_blocker(st, settings, region) {
        return block(reason, message);
    }
    if let Some(role) = &st.spec.assume_role
        && !plan::role_allowed(&st.spec.allowed_roles, &role.role_arn)
    {
        return block(
            plan::ROLE_NOT_ALLOWED,
            format!(
                "spec.assumeRole.roleArn {} is not among spec.allowedRoles: the session is not used for it",
                role.role_arn
            ),
        );
    }
    if let Err(problem) = keys {
        return block(problem.reason(), problem.to_string());
    }
    None
}

/// What stops any STS call with `st`'s session settings: an endpoint not allowed, one in
/// another region than `region`, a region STS calls cannot use. (Also for AssumedRoles, which
/// call STS where their SessionToken does.)
pub(crate) fn endpoint_blocker(
    st: &SessionToken,
    settings: &Settings,
    region: &str,
) -> Option<(&'static str, String)> {
    if let Some(Err(why)) = st
        .spec
        .endpoint
        .as_ref()
        .map(|e| settings.endpoint_policy.check(e))
    {
        // The raw value may carry `user:password@`: only the policy's parsed account of it is shown.
        return Some((
            "EndpointNotAllowed",
            format!("spec.endpoint is not allowed: {why}"),
        ));
    }
    if let Some(why) =
        (st.spec.endpoint.as_deref()).and_then(|e| crate::sts::endpoint_region_mismatch(e, region))
    {
        return Some((plan::ENDPOINT_REGION_MISMATCH, why));
    }
    // The schema admits some regions STS calls cannot use (`-us-east-1`, 64 characters): say
    // so at once, rather than fail each call (and spend a code on one that is never sent).
    if let Err(why) = crate::sts::validate_region(region) {
        let from = if st.spec.region.is_some() {
            "spec.region"
        } else {
            "--default-region"
        };
        return Some(("InvalidSpec", format!("{from}: {why}")));
    }
    None
}

/// The most failures counted for a backoff: beyond it, the delay is at its cap anyway.
const MAX_ATTEMPTS: i32 = 1_000;
/// Condition types the operator writes; others are dropped from what it writes back.
const CONDITION_TYPES: [&str; 5] = [
    READY,
    approval::ISSUING,
    plan::ROLE_ASSUMED,
    plan::CONSUMER_REFRESH,
    plan::ROLLOUT_RESTART,
];

/// Status as the decisions may trust it: times that should lie in the past but are far in the
/// future are dropped (or, where required, set to now), counts clamped, conditions limited to
/// one of each of the operator's types. (Expirations and renewal times are in the future by
/// nature; the wake-up derived from them is bounded where it is used.)
pub fn bounded_status(status: Option<&SessionTokenStatus>, now: Timestamp) -> SessionTokenStatus {
    let mut s = status.cloned().unwrap_or_default();
    s.issued_at = s.issued_at.and_then(|t| approval::past_time(t, now));
    s.last_approval = s
        .last_approval
        .filter(|a| approval::past_time(a.time, now).is_some());
    s.last_failure = s
        .last_failure
        .filter(|e| approval::past_time(e.time, now).is_some());
    s.failed_attempts = match s.last_failure {
        Some(_) => s.failed_attempts.clamp(0, MAX_ATTEMPTS),
        None => 0,
    };
    s.rotations = s.rotations.max(0);
    s.conditions = bounded_conditions(std::mem::take(&mut s.conditions), &CONDITION_TYPES, now);
    if let Some(role) = s.role.as_mut() {
        bound_role(role, now);
    }
    s
}

/// Conditions as the decisions may trust them: one of each of `types`, none other, with a
/// transition time not in the future.
pub(crate) fn bounded_conditions(
    conditions: Vec<Condition>,
    types: &[&str],
    now: Timestamp,
) -> Vec<Condition> {
    let mut kept: Vec<Condition> = Vec::new();
    for mut c in conditions {
        if types.contains(&&*c.type_) && !kept.iter().any(|k| k.type_ == c.type_) {
            if approval::past_time(c.last_transition_time, now).is_none() {
                c.last_transition_time = plan::round_to_second(now);
            }
            kept.push(c);
        }
    }
    kept
}

/// Role credentials' status as the decisions may trust it (see [`bounded_status`]).
pub(crate) fn bound_role(role: &mut crate::crd::RoleStatus, now: Timestamp) {
    role.assumed_at = role.assumed_at.and_then(|t| approval::past_time(t, now));
    role.last_failure = role
        .last_failure
        .take()
        .filter(|e| approval::past_time(e.time, now).is_some());
    role.failed_attempts = match role.last_failure {
        Some(_) => role.failed_attempts.clamp(0, MAX_ATTEMPTS),
        None => 0,
    };
    role.assumptions = role.assumptions.max(0);
}
