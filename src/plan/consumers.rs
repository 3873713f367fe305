//! What the workloads that use the Secret need beyond the Secret itself, decided:
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
//!   renewal window under [`MIN_CONSUMER_REFRESH_WINDOW`] is warned about.
//!
//! `observe` reads the targets, `act` patches them; everything in between is here.

use super::conditions::Verdict;
use super::timing::{Timing, renewal_time, round_to_second, unit_jitter};
use crate::crd::{
    OutputFormat, RESTARTED_AT_ANNOTATION, RESTARTED_FOR_PREFIX, RolloutRestartTarget,
    SessionToken, SessionTokenStatus,
};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// The shortest renewal window (time between renewal and expiry) that lets credential_process
/// consumers see the new session before they start refreshing: boto3's 15 minutes, the
/// kubelet's ~1-2 minutes to update a mounted Secret, and some slack.
pub const MIN_CONSUMER_REFRESH_WINDOW: Duration = Duration::from_secs(20 * 60);

/// How soon a reconcile looks again at restart targets that were missing or failed (they are
/// not watched).
pub const RESTART_RECHECK: Duration = Duration::from_secs(60);

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
            if secs.abs_diff(asked) <= 60 {
                asked
            } else if secs >= 600 {
                secs.saturating_add(30).div_euclid(60).saturating_mul(60)
            } else {
                secs
            }
        }
        _ => asked,
    };
    let epoch = Timestamp::UNIX_EPOCH;
    let expiration = epoch
        .checked_add(SignedDuration::from_secs(lifetime.max(0)))
        .unwrap_or(Timestamp::MAX);
    let no_jitter = Timing {
        renewal_jitter_max: Duration::ZERO,
        ..Timing::default()
    };
    let renewal = renewal_time(epoch, expiration, st.spec.renewal.as_ref(), &no_jitter, "");
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

/// The pod-template annotation naming the session `st_name`'s targets were restarted for.
/// Annotation names are at most 63 characters: longer SessionToken names are cut and
/// suffixed with a hash, so each SessionToken keeps its own key.
pub fn restarted_for_key(st_name: &str) -> String {
    restarted_for_key_of(RESTARTED_FOR_PREFIX, st_name)
}

/// [`restarted_for_key`] under `prefix`: `sessiontoken.stssession.dev/` for a SessionToken,
/// `assumedrole.stssession.dev/` for an AssumedRole.
pub fn restarted_for_key_of(prefix: &str, name: &str) -> String {
    if name.len() <= 63 {
        return format!("{prefix}{name}");
    }
    let hash = (unit_jitter(name) * f64::from(u32::MAX)) as u32;
    let head = name.get(..54).unwrap_or(name).trim_end_matches(['.', '-']);
    format!("{prefix}{head}-{hash:08x}")
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
    workload: &Workload,
    access_key_id: &str,
    issued_at: Option<Timestamp>,
) -> TargetAction {
    match workload.restarted_for.as_deref() {
        Some(id) if id == access_key_id => TargetAction::UpToDate,
        Some(_) => TargetAction::Restart,
        None => match (workload.created, issued_at) {
            (Some(created), Some(issued)) if created > issued => TargetAction::UpToDate,
            _ => TargetAction::Restart,
        },
    }
}

/// The merge patch that restarts a workload for a session.
pub fn restart_patch(st_name: &str, access_key_id: &str, now: Timestamp) -> serde_json::Value {
    restart_patch_for(&restarted_for_key(st_name), access_key_id, now)
}

/// The merge patch that restarts a workload, recording `access_key_id` under `key`.
pub fn restart_patch_for(key: &str, access_key_id: &str, now: Timestamp) -> serde_json::Value {
    serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: round_to_second(now).to_string(),
        key: access_key_id,
    }}}}})
}

/// A restart target as `observe` read it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSeen {
    pub target: RolloutRestartTarget,
    pub state: Result<Workload, TargetProblem>,
}

/// What matters of a workload: which session its pods were last restarted for (the pod-template
/// annotation [`restarted_for_key`]) and when it was created.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub restarted_for: Option<String>,
    pub created: Option<Timestamp>,
}

/// A target that could not be read or restarted, for the condition.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetProblem {
    pub reason: &'static str,
    pub what: String,
}

impl TargetProblem {
    /// From the status code of a failed `verb` (get or patch) on the target `what`
    /// (`"Deployment app"`); `detail`: a short error for other failures.
    pub fn of(what: &str, verb: &str, code: Option<u16>, detail: &str) -> Self {
        match code {
            Some(404) => Self {
                reason: "TargetNotFound",
                what: format!("{what} not found in this namespace"),
            },
            Some(403) => Self {
                reason: "Forbidden",
                what: format!(
                    "the operator may not {verb} {what} (it needs get and patch on that resource in group apps)"
                ),
            },
            _ => Self {
                reason: "RestartFailed",
                what: format!("could not {verb} {what}: {detail}"),
            },
        }
    }
}

/// `"Deployment app"`.
pub fn target_name(t: &RolloutRestartTarget) -> String {
    format!("{} {}", t.kind.as_str(), t.name)
}

/// A restart to make: the merge patch for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    pub target: RolloutRestartTarget,
    pub patch: serde_json::Value,
}

/// The restarts due for the credentials the output Secret holds (`access_key_id`, issued at
/// `issued_at`), recorded under the pod-template annotation `key` ([`restarted_for_key_of`]),
/// and the problems met reading the targets.
pub fn restarts_due(
    key: &str,
    targets: &[TargetSeen],
    access_key_id: &str,
    issued_at: Option<Timestamp>,
    now: Timestamp,
) -> (Vec<Restart>, Vec<TargetProblem>) {
    let mut restarts = Vec::new();
    let mut problems = Vec::new();
    for seen in targets {
        match &seen.state {
            Err(p) => problems.push(p.clone()),
            Ok(w) if target_action(w, access_key_id, issued_at) == TargetAction::Restart => {
                restarts.push(Restart {
                    target: seen.target.clone(),
                    patch: restart_patch_for(key, access_key_id, now),
                })
            }
            Ok(_) => {}
        }
    }
    (restarts, problems)
}

/// The `RolloutRestart` condition once the restarts were made, and when to look again.
pub fn restart_condition(
    targets: &[RolloutRestartTarget],
    access_key_id: &str,
    problems: &[TargetProblem],
    now: Timestamp,
) -> (Verdict, Option<Timestamp>) {
    let verdict = match problems.first() {
        None => (
            "True",
            "TargetsRestarted",
            format!(
                "every target runs or was restarted for session {access_key_id}: {}",
                targets
                    .iter()
                    .map(target_name)
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
    let recheck = (!problems.is_empty()).then(|| {
        SignedDuration::try_from(RESTART_RECHECK)
            .ok()
            .and_then(|d| now.checked_add(d).ok())
    });
    (verdict, recheck.flatten())
}
