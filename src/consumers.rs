//! What the workloads that use the Secret need beyond the Secret itself:
//!
//! - **restart targets** (`spec.rolloutRestartTargets`): workloads reading the credentials as
//!   environment variables never see a new session, so after each rotation their pod template
//!   gets the annotations `stssession.dev/restartedAt` and
//!   `sessiontoken.stssession.dev/<SessionToken>: <access key id>`, as `kubectl rollout restart`
//!   does. Level-based and idempotent: a target whose annotation already names the current
//!   session is left alone, so a repeated reconcile of one rotation writes nothing; the
//!   condition `RolloutRestart` says how it went, and a failure never holds up the rotation;
//! - the **refresh window** check (`ConsumerRefresh`): with the `CredentialProcess` format,
//!   consumers re-run `credential_process` only as their credentials near expiry (boto3 from
//!   15 minutes before), and the kubelet takes a minute or two to update a mounted Secret, so a
//!   renewal window under [`MIN_CONSUMER_REFRESH_WINDOW`] is warned about;
//! - removing keys of formats no longer chosen that server-side apply leaves behind.
//!
//! [`reconcile`] is called once per reconcile by the controller, after the Secret is written.

use crate::controller::{Context, set_condition};
use crate::crd::{
    OutputFormat, RESTARTED_AT_ANNOTATION, RESTARTED_FOR_PREFIX, RolloutRestartTarget,
    SessionToken, SessionTokenStatus, WorkloadKind,
};
use crate::plan::{self, Timing};
use crate::secret;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::events::EventType;
use std::time::Duration;
use tracing::{debug, info, warn};

pub const CONSUMER_REFRESH: &str = "ConsumerRefresh";
pub const ROLLOUT_RESTART: &str = "RolloutRestart";

/// The shortest renewal window (time between renewal and expiry) that lets credential_process
/// consumers see the new session before they start refreshing: boto3's 15 minutes, the
/// kubelet's ~1-2 minutes to update a mounted Secret, and some slack.
pub const MIN_CONSUMER_REFRESH_WINDOW: Duration = Duration::from_secs(20 * 60);

/// How soon a reconcile looks again at restart targets that were missing or failed (they are
/// not watched).
pub const RESTART_RECHECK: Duration = Duration::from_secs(60);

/// Field manager of the restart patches (the operator's own).
const FIELD_MANAGER: &str = crate::crd::FIELD_MANAGER;

/// Conditions and restarts for the consumers of `st`'s Secret. `holds_session`: the output
/// Secret holds the session that `status` describes (just written, or found intact). Returns
/// when to look again, if a restart target needs it. Never fails: problems become conditions.
pub async fn reconcile(
    ctx: &Context,
    st: &SessionToken,
    status: &mut SessionTokenStatus,
    holds_session: bool,
    now: Timestamp,
) -> Option<Timestamp> {
    refresh_window_condition(ctx, st, status, now).await;
    restart_targets(ctx, st, status, holds_session, now).await
}

// ---------------------------------------------------------------------------------------------
// The refresh window.

/// The credentials the output Secret holds, as status records them: the role's with
/// `spec.assumeRole` (consumers see those), else the session's.
pub struct OutputCredentials {
    pub access_key_id: Option<String>,
    pub issued_at: Option<Timestamp>,
    pub expiration: Option<Timestamp>,
    /// The lifetime asked for.
    pub asked_seconds: i64,
}

impl OutputCredentials {
    pub fn of(st: &SessionToken, status: &SessionTokenStatus) -> Self {
        match &st.spec.assume_role {
            Some(spec) => {
                let role = status.role.clone().unwrap_or_default();
                Self {
                    access_key_id: role.access_key_id,
                    issued_at: role.assumed_at,
                    expiration: role.expiration,
                    asked_seconds: i64::from(spec.duration_seconds),
                }
            }
            None => Self {
                access_key_id: status.access_key_id.clone(),
                issued_at: status.issued_at,
                expiration: status.expiration,
                asked_seconds: i64::from(st.spec.duration_seconds),
            },
        }
    }
}

/// The renewal window the SessionToken's sessions get (without jitter): from the lifetime STS
/// returned for the current session, else the one asked for.
pub fn renewal_window(st: &SessionToken, status: &SessionTokenStatus) -> Duration {
    let out = OutputCredentials::of(st, status);
    let asked = out.asked_seconds;
    let lifetime = match (out.issued_at, out.expiration) {
        (Some(issued), Some(expiration)) if expiration > issued => {
            // Seconds of clock skew and rounding must not move the message (and the
            // condition) from one session to the next: what was asked for, if STS gave about
            // that, else whole minutes (whole seconds only for test-sized sessions).
            let secs = expiration.duration_since(issued).as_secs();
            if (secs - asked).abs() <= 60 {
                asked
            } else if secs >= 600 {
                (secs + 30) / 60 * 60
            } else {
                secs
            }
        }
        _ => asked,
    };
    let epoch = Timestamp::UNIX_EPOCH;
    let expiration = epoch + SignedDuration::from_secs(lifetime.max(0));
    let no_jitter = Timing {
        renewal_jitter_max: Duration::ZERO,
        ..Timing::default()
    };
    let renewal = plan::renewal_time(epoch, expiration, st.spec.renewal.as_ref(), &no_jitter, "");
    expiration.duration_since(renewal).unsigned_abs()
}

/// `ConsumerRefresh`, when the Secret carries the credential_process files: (status, reason,
/// message).
pub fn refresh_window_verdict(
    st: &SessionToken,
    status: &SessionTokenStatus,
) -> Option<(&'static str, &'static str, String)> {
    if !st
        .output_formats()
        .contains(&OutputFormat::CredentialProcess)
    {
        return None;
    }
    let window = renewal_window(st, status);
    let shown = human(window);
    Some(if window >= MIN_CONSUMER_REFRESH_WINDOW {
        (
            "True",
            "RenewWindowSufficient",
            format!(
                "sessions are renewed {shown} before they expire: credential_process consumers see the new session before they refresh"
            ),
        )
    } else {
        (
            "False",
            "RenewWindowTooShort",
            format!(
                "sessions are renewed only {shown} before they expire, less than the {} credential_process consumers need: SDKs re-run it as their credentials near expiry (boto3 from 15 min before) and the kubelet takes up to ~2 min to update a mounted Secret, so consumers may keep re-reading the old session and, with a slow kubelet, hold expired credentials. Set spec.renewal.renewBefore to 20m or more (or a larger renewBeforePercentage or durationSeconds)",
                human(MIN_CONSUMER_REFRESH_WINDOW)
            ),
        )
    })
}

async fn refresh_window_condition(
    ctx: &Context,
    st: &SessionToken,
    status: &mut SessionTokenStatus,
    now: Timestamp,
) {
    let Some((state, reason, message)) = refresh_window_verdict(st, status) else {
        status.conditions.retain(|c| c.type_ != CONSUMER_REFRESH);
        return;
    };
    let before = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONSUMER_REFRESH)
        .map(|c| (c.status.clone(), c.message.clone()));
    if state == "False" && before.as_ref() != Some(&(crate::crd::word(state), message.clone())) {
        ctx.event(st, EventType::Warning, reason, message.clone())
            .await;
    }
    set_condition(
        &mut status.conditions,
        CONSUMER_REFRESH,
        state,
        reason,
        message,
        st.metadata.generation,
        now,
    );
}

/// `1h30m`, `20m`, `45s`, `2m05s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m, sec) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

// ---------------------------------------------------------------------------------------------
// Restart targets.

/// The pod-template annotation naming the session `st_name`'s targets were restarted for.
/// Annotation names are at most 63 characters: longer SessionToken names are cut and
/// suffixed with a hash, so each SessionToken keeps its own key.
pub fn restarted_for_key(st_name: &str) -> String {
    if st_name.len() <= 63 {
        return format!("{RESTARTED_FOR_PREFIX}{st_name}");
    }
    let hash = (plan::unit_jitter(st_name) * f64::from(u32::MAX)) as u32;
    let head = st_name[..54].trim_end_matches(['.', '-']);
    format!("{RESTARTED_FOR_PREFIX}{head}-{hash:08x}")
}

fn api_resource(kind: WorkloadKind) -> ApiResource {
    let plural = match kind {
        WorkloadKind::Deployment => "deployments",
        WorkloadKind::StatefulSet => "statefulsets",
        WorkloadKind::DaemonSet => "daemonsets",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", kind.as_str()), plural)
}

/// What to do with one target, from the workload as read.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// Its pods run the current session already.
    UpToDate,
    /// Restart it for the current session.
    Restart,
}

/// Decides whether `workload` (a Deployment, StatefulSet or DaemonSet) needs a restart for the
/// session `access_key_id` issued at `issued_at`: not if its pod template already names that
/// session, nor if it carries no record and was created after the session was issued (its
/// pods started with the current credentials). Anything else is restarted: a target that
/// names an older session, or one that predates the current session.
pub fn target_action(
    workload: &DynamicObject,
    st_name: &str,
    access_key_id: &str,
    issued_at: Option<Timestamp>,
) -> TargetAction {
    let recorded = workload
        .data
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(restarted_for_key(st_name)))
        .and_then(|v| v.as_str());
    match recorded {
        Some(id) if id == access_key_id => TargetAction::UpToDate,
        Some(_) => TargetAction::Restart,
        None => {
            let created = workload.metadata.creation_timestamp.as_ref().map(|t| t.0);
            match (created, issued_at) {
                (Some(created), Some(issued)) if created > issued => TargetAction::UpToDate,
                _ => TargetAction::Restart,
            }
        }
    }
}

/// The merge patch that restarts a workload for a session.
pub fn restart_patch(st_name: &str, access_key_id: &str, now: Timestamp) -> serde_json::Value {
    serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: plan::round_to_second(now).to_string(),
        restarted_for_key(st_name): access_key_id,
    }}}}})
}

/// One target's problem, for the condition.
struct Problem {
    reason: &'static str,
    what: String,
}

async fn restart_targets(
    ctx: &Context,
    st: &SessionToken,
    status: &mut SessionTokenStatus,
    holds_session: bool,
    now: Timestamp,
) -> Option<Timestamp> {
    let targets = &st.spec.rollout_restart_targets;
    if targets.is_empty() {
        status.conditions.retain(|c| c.type_ != ROLLOUT_RESTART);
        return None;
    }
    // Only for credentials that pods can actually use.
    let out = OutputCredentials::of(st, status);
    let issued_at = out.issued_at;
    let (Some(access_key_id), true) = (
        out.access_key_id,
        holds_session && out.expiration.is_some_and(|e| e > now),
    ) else {
        return None;
    };
    let ns = st.metadata.namespace.clone().unwrap_or_default();
    let st_name = st.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let mut restarted = Vec::new();
    for RolloutRestartTarget { kind, name } in targets {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ns, &api_resource(*kind));
        let what = format!("{} {name}", kind.as_str());
        let workload = match api.get(name).await {
            Ok(w) => w,
            Err(e) => {
                problems.push(problem(&what, "get", &e));
                continue;
            }
        };
        if target_action(&workload, &st_name, &access_key_id, issued_at) == TargetAction::UpToDate {
            continue;
        }
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let body = restart_patch(&st_name, &access_key_id, now);
        match api.patch(name, &pp, &Patch::Merge(&body)).await {
            Ok(_) => {
                info!(
                    namespace = ns,
                    name = st_name,
                    target = what,
                    session = access_key_id,
                    "restarted a rollout target"
                );
                ctx.event(
                    st,
                    EventType::Normal,
                    "RolloutRestartTriggered",
                    format!("restarted {what} for session {access_key_id}"),
                )
                .await;
                restarted.push(what);
            }
            Err(e) => problems.push(problem(&what, "patch", &e)),
        }
    }
    let before = status
        .conditions
        .iter()
        .find(|c| c.type_ == ROLLOUT_RESTART)
        .map(|c| (c.status.clone(), c.message.clone()));
    let (state, reason, message) = match problems.first() {
        None => (
            "True",
            "TargetsRestarted",
            format!(
                "every target runs or was restarted for session {access_key_id}: {}",
                targets
                    .iter()
                    .map(|t| format!("{} {}", t.kind.as_str(), t.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(first) => (
            "False",
            first.reason,
            format!(
                "{}; the Secret is rotated regardless. Looked at again in {}s and at the next rotation",
                problems
                    .iter()
                    .map(|p| p.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                RESTART_RECHECK.as_secs()
            ),
        ),
    };
    if state == "False" && before.as_ref() != Some(&(crate::crd::word(state), message.clone())) {
        ctx.event(st, EventType::Warning, reason, message.clone())
            .await;
    }
    debug!(
        namespace = ns,
        name = st_name,
        restarted = restarted.len(),
        problems = problems.len(),
        "restart targets"
    );
    set_condition(
        &mut status.conditions,
        ROLLOUT_RESTART,
        state,
        reason,
        message,
        st.metadata.generation,
        now,
    );
    (!problems.is_empty()).then(|| {
        now + SignedDuration::try_from(RESTART_RECHECK).unwrap_or(SignedDuration::from_secs(60))
    })
}

fn problem(what: &str, verb: &str, e: &kube::Error) -> Problem {
    match e {
        kube::Error::Api(s) if s.code == 404 => Problem {
            reason: "TargetNotFound",
            what: format!("{what} not found in this namespace"),
        },
        kube::Error::Api(s) if s.code == 403 => Problem {
            reason: "Forbidden",
            what: format!(
                "the operator may not {verb} {what} (it needs get and patch on that resource in group apps)"
            ),
        },
        other => {
            warn!(target = what, error = %other, "restart target");
            Problem {
                reason: "RestartFailed",
                what: format!("could not {verb} {what}: {}", short_error(other)),
            }
        }
    }
}

/// An error without request details that change from one attempt to the next.
fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        other => other.to_string().chars().take(200).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys of dropped formats.

/// Removes from the output Secret, as just applied, the keys of formats no longer chosen that
/// server-side apply kept (keys written when the Secret was created belong to the create, not
/// to the apply). A JSON patch guarded by the resourceVersion; losing that race is fine: the
/// next reconcile finds the Secret not up to date and tries again.
pub async fn prune_stale_keys(
    secrets: &Api<Secret>,
    applied: &Secret,
    desired: &Secret,
) -> Result<(), kube::Error> {
    let stale = secret::stale_keys(applied, desired);
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
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("static patch shape");
    let name = applied.metadata.name.clone().unwrap_or_default();
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match secrets.patch(&name, &pp, &Patch::<()>::Json(patch)).await {
        Ok(_) => {
            info!(secret = name, keys = ?stale, "removed the keys of formats no longer chosen");
            Ok(())
        }
        Err(kube::Error::Api(e)) if matches!(e.code, 409 | 422) => {
            debug!(
                secret = name,
                "the Secret changed meanwhile; pruning on the next reconcile"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{OutputSecretSpec, RenewalSpec, SessionTokenSpec};

    fn st(extra: serde_json::Value) -> SessionToken {
        let mut spec = serde_json::json!({"sourceCredentials": {"secretRef": {"name": "keys"}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let spec: SessionTokenSpec = serde_json::from_value(spec).unwrap();
        let mut st = SessionToken::new("app", spec);
        st.metadata.namespace = Some("team".into());
        st
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn the_refresh_window_is_judged_only_for_credential_process() {
        let status = SessionTokenStatus::default();
        // default: 12 h sessions, renewed 33 % (3h57m36s) before expiry
        let (s, r, m) = refresh_window_verdict(&st(serde_json::json!({})), &status).unwrap();
        assert_eq!((s, r), ("True", "RenewWindowSufficient"), "{m}");
        // 1 h sessions at 33 %: 19m48s, not enough
        let short = st(serde_json::json!({"durationSeconds": 3600}));
        let (s, r, m) = refresh_window_verdict(&short, &status).unwrap();
        assert_eq!((s, r), ("False", "RenewWindowTooShort"));
        assert!(m.contains("19m48s") && m.contains("20m"), "{m}");
        // ...fixed with renewBefore
        let mut fixed = short.clone();
        fixed.spec.renewal = Some(RenewalSpec {
            renew_before: Some("25m".into()),
            ..Default::default()
        });
        assert_eq!(
            refresh_window_verdict(&fixed, &status).unwrap().1,
            "RenewWindowSufficient"
        );
        // without the credential_process output: nothing to say
        let mut env_only = short.clone();
        env_only.spec.secret = Some(OutputSecretSpec {
            formats: Some(vec![OutputFormat::EnvVars]),
            ..Default::default()
        });
        assert_eq!(refresh_window_verdict(&env_only, &status), None);
        // the lifetime STS returned counts, not the one asked for (12 h asked, 1 h returned)
        let returned = SessionTokenStatus {
            issued_at: Some(t(0)),
            expiration: Some(t(3600)),
            ..Default::default()
        };
        assert_eq!(
            refresh_window_verdict(&st(serde_json::json!({})), &returned)
                .unwrap()
                .1,
            "RenewWindowTooShort"
        );
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human(Duration::from_secs(20 * 60)), "20m");
        assert_eq!(human(Duration::from_secs(1188)), "19m48s");
        assert_eq!(human(Duration::from_secs(14256)), "3h57m");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(5)), "5s");
    }

    fn workload(annotations: serde_json::Value, created: Timestamp) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "creationTimestamp": created.to_string()},
            "spec": {"template": {"metadata": {"annotations": annotations}}},
        }))
        .unwrap()
    }

    #[test]
    fn a_target_is_restarted_once_per_session() {
        let key = restarted_for_key("app");
        assert_eq!(key, "sessiontoken.stssession.dev/app");
        let issued = Some(t(100));
        // names the current session: nothing to do (a repeated reconcile writes nothing)
        let current = workload(serde_json::json!({&key: "ASIANEW"}), t(0));
        assert_eq!(
            target_action(&current, "app", "ASIANEW", issued),
            TargetAction::UpToDate
        );
        // names an older one: restart
        let old = workload(serde_json::json!({&key: "ASIAOLD"}), t(0));
        assert_eq!(
            target_action(&old, "app", "ASIANEW", issued),
            TargetAction::Restart
        );
        // another SessionToken's record does not count
        let other = workload(
            serde_json::json!({restarted_for_key("db"): "ASIANEW"}),
            t(0),
        );
        assert_eq!(
            target_action(&other, "app", "ASIANEW", issued),
            TargetAction::Restart
        );
        // no record, created before the session: its pods may hold the old one
        let before = workload(serde_json::json!({}), t(50));
        assert_eq!(
            target_action(&before, "app", "ASIANEW", issued),
            TargetAction::Restart
        );
        // no record, created after: its pods started with the current session
        let after = workload(serde_json::json!({}), t(150));
        assert_eq!(
            target_action(&after, "app", "ASIANEW", issued),
            TargetAction::UpToDate
        );
        // after the patch the record names the session
        let patch = restart_patch("app", "ASIANEW", t(200));
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations[&key], "ASIANEW");
        assert_eq!(annotations[RESTARTED_AT_ANNOTATION], t(200).to_string());
    }

    #[test]
    fn long_names_get_a_valid_distinct_annotation_key() {
        let a = "a".repeat(100);
        let b = format!("{}b", "a".repeat(99));
        let (ka, kb) = (restarted_for_key(&a), restarted_for_key(&b));
        assert_ne!(ka, kb);
        for k in [&ka, &kb] {
            let name = k.strip_prefix(RESTARTED_FOR_PREFIX).unwrap();
            assert!(name.len() <= 63, "{k}");
            assert!(name.chars().last().unwrap().is_ascii_alphanumeric());
        }
    }
}
