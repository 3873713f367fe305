//! Role credentials (AssumeRole, signed with the session): when to assume, for how long, and
//! what the `RoleAssumed` condition says.

use super::conditions::Verdict;
use super::timing::{Timing, backoff, unit_jitter};
use crate::crd::{AssumeRoleSpec, RoleStatus, SessionTokenSpec, SessionTokenStatus};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// spec.assumeRole: role credentials assumed with the session
// ---------------------------------------------------------------------------------------------

/// Shortest AssumeRole `DurationSeconds` STS accepts: once the session has less left than
/// this, role credentials cannot be renewed without outliving it.
pub const MIN_ROLE_SECONDS: i64 = 900;

/// `<namespace>.<name>`, the default role session name; shortened to 64 characters with a hash
/// of the whole (so two long names stay apart), and padded to AWS's minimum of 2.
pub fn default_role_session_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    if full.len() <= 64 {
        return full;
    }
    let hash = format!("{:08x}", (unit_jitter(&full) * f64::from(u32::MAX)) as u32);
    // Names are ASCII (DNS labels/subdomains): byte slicing is safe.
    format!("{}-{hash}", &full[..64 - 9])
}

/// Name of the Secret keeping the session for `spec.assumeRole`: `<name>-session`, shortened
/// with a hash if that exceeds the 253 characters of a Secret name.
pub fn session_secret_name(name: &str) -> String {
    let full = format!("{name}-session");
    if full.len() <= 253 {
        return full;
    }
    let hash = format!("{:08x}", (unit_jitter(&full) * f64::from(u32::MAX)) as u32);
    // 253 - hash (8) - "-session" (8) - "-" (1) - 1; names are ASCII.
    let head = name.get(..235).unwrap_or(name).trim_end_matches(['.', '-']);
    format!("{head}-{hash}-session")
}

/// Fingerprint of what shapes the role credentials: a change assumes the role again at once.
pub fn role_hash(spec: &AssumeRoleSpec, role_session_name: &str) -> String {
    let mut text = format!(
        "v1|{}|{}|{}|{}",
        spec.role_arn,
        role_session_name,
        spec.duration_seconds,
        spec.external_id.as_deref().unwrap_or("")
    );
    for tag in &spec.tags {
        text.push_str(&format!("|{}={}", tag.key, tag.value));
    }
    format!("{:016x}", (unit_jitter(&text) * (1u64 << 53) as f64) as u64)
}

/// The reason of `RoleAssumed=False` (and `Ready=False`) when the spec changed, since the
/// session was approved, in what the session is used for.
pub const SPEC_CHANGED_SINCE_APPROVAL: &str = "SpecChangedSinceApproval";

/// Digest (SHA-256, hex) of what an approved session may be used for: the role and its
/// external id, the source Secret and its keys, the region and the endpoint. Recorded in
/// `status.approvedFor` when a code mints a session; a spec that no longer matches it does not
/// get the session (no AssumeRole with it) until a new approval.
pub fn approval_scope(spec: &SessionTokenSpec, region: &str, endpoint: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let role = spec.assume_role.as_deref();
    let source = &spec.source_credentials.secret_ref;
    let mut h = Sha256::new();
    for field in [
        "approval-scope/v1",
        role.map(|r| r.role_arn.as_str()).unwrap_or(""),
        role.and_then(|r| r.external_id.as_deref()).unwrap_or(""),
        &source.name,
        &source.access_key_id_key,
        &source.secret_access_key_key,
        region,
        endpoint.unwrap_or(""),
    ] {
        // Length-prefixed: no two lists of fields give the same bytes.
        h.update(field.len().to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// What to do about the role credentials now.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleAction {
    /// Call AssumeRole now, asking for this many seconds.
    Assume {
        duration_seconds: i32,
        why: &'static str,
    },
    /// The role credentials are valid and need nothing before `renewal`.
    Hold { renewal: Option<Timestamp> },
    /// They are due (or missing) but the session ends in less than
    /// [`Timing::role_min_session_remaining`]: AssumeRole would hand out credentials outliving it. The current ones, if any, expire
    /// at or before the session's end.
    SessionEnding { session_expiration: Timestamp },
    /// No valid session to assume the role with.
    NoSession,
    /// Due, but the last attempts failed: the next one at `retry_at`.
    Backoff {
        retry_at: Timestamp,
        why: &'static str,
    },
}

/// What the role layer knows: the session at hand and the role credentials on record.
#[derive(Debug, Clone, Copy)]
pub struct RoleInputs<'a> {
    /// The session's expiration and access key id, if a valid session is at hand (kept in its
    /// Secret, or just minted).
    pub session: Option<(Timestamp, &'a str)>,
    /// `status.role`.
    pub role: &'a crate::crd::RoleStatus,
    /// The output Secret holds the role credentials `role` records.
    pub role_held: bool,
    /// [`role_hash`] of the spec now.
    pub hash: &'a str,
    /// `spec.assumeRole.durationSeconds`.
    pub duration_seconds: i32,
    /// The spec changed since the last failure: retry at once.
    pub spec_changed: bool,
}

/// When a failed AssumeRole is tried again: the backoff after the failure's time, which status
/// keeps in whole seconds (rounded down), so one second later not to come early.
pub fn role_retry_time(
    failed_at: Timestamp,
    attempts: i32,
    timing: &Timing,
    seed: &str,
) -> Timestamp {
    let delay = backoff(u32::try_from(attempts).unwrap_or(0).max(1), timing, seed)
        .saturating_add(Duration::from_secs(1));
    let delay = SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(300));
    failed_at.checked_add(delay).unwrap_or(Timestamp::MAX)
}

/// Decides about the role credentials (see [`RoleAction`]).
pub fn role_action(
    input: RoleInputs<'_>,
    timing: &Timing,
    seed: &str,
    now: Timestamp,
) -> RoleAction {
    let Some((session_expiration, session_key)) = input.session.filter(|(e, _)| *e > now) else {
        return RoleAction::NoSession;
    };
    let role = input.role;
    let valid = input.role_held && role.expiration.is_some_and(|e| e > now);
    let why = if !valid {
        if role.access_key_id.is_none() {
            "no role credentials yet"
        } else {
            "role credentials expired or missing from the Secret"
        }
    } else if role.session_access_key_id.as_deref() != Some(session_key) {
        "new session"
    } else if role.hash.as_deref() != Some(input.hash) {
        "spec.assumeRole changed"
    } else if role.renewal_time.is_none_or(|r| now >= r) {
        "renewal time reached"
    } else {
        return RoleAction::Hold {
            renewal: role.renewal_time,
        };
    };
    // What the session has left when STS may see the call, at the latest.
    let remaining = session_expiration
        .duration_since(now)
        .as_secs()
        .saturating_sub(secs(timing.role_expiry_margin));
    if remaining < secs(timing.role_min_session_remaining) {
        return RoleAction::SessionEnding { session_expiration };
    }
    if role.failed_attempts > 0
        && !input.spec_changed
        && let Some(failed) = &role.last_failure
    {
        let retry_at = role_retry_time(failed.time, role.failed_attempts, timing, seed);
        if now < retry_at {
            return RoleAction::Backoff { retry_at, why };
        }
    }
    let duration_seconds = i32::try_from(
        i64::from(input.duration_seconds)
            .min(remaining)
            .clamp(MIN_ROLE_SECONDS, 43_200),
    )
    .unwrap_or(3_600);
    RoleAction::Assume {
        duration_seconds,
        why,
    }
}

/// Whole seconds of a duration, as a signed number (saturating).
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The reason of a failed AssumeRole: a role that refuses the user has its own.
pub fn assume_role_reason(e: &crate::sts::StsError) -> &'static str {
    use crate::sts::StsError;
    match e {
        StsError::AccessDenied { .. } | StsError::TokenCodeRejected { .. } => "RoleAccessDenied",
        StsError::Throttled { .. } => "Throttled",
        StsError::InvalidRequest { .. } => "InvalidSpec",
        _ => "AssumeRoleFailed",
    }
}

/// What the role layer found and did.
pub struct RoleOutcome {
    /// The output Secret holds valid role credentials.
    pub valid: bool,
    /// When the role credentials are renewed, if they will be.
    pub renewal: Option<Timestamp>,
    /// The next instant the role layer needs a reconcile.
    pub next: Option<Timestamp>,
    /// The `RoleAssumed` condition's reason and message.
    pub reason: &'static str,
    pub message: String,
}

/// What `role_condition` needs besides the spec, status and decision.
pub struct RoleFacts<'a> {
    /// The role was assumed in this reconcile.
    pub assumed_now: bool,
    /// The output Secret holds valid role credentials.
    pub valid: bool,
    /// A problem that stops AssumeRole (endpoint, Secret conflict, spec), as (reason, message).
    pub blocker: Option<(&'static str, &'a str)>,
    /// With spec.mfa: how to approve.
    pub approve_hint: Option<String>,
}

/// The `RoleAssumed` condition: (status, reason, message).
pub fn role_condition(
    spec: &AssumeRoleSpec,
    role: &RoleStatus,
    action: &RoleAction,
    facts: RoleFacts<'_>,
) -> Verdict {
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
        RoleAction::SessionEnding { session_expiration } => Some(*session_expiration),
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
        (RoleAction::NoSession, _) => (
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

pub fn role_failure_reason(reason: &str) -> &'static str {
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
pub fn role_ready_condition(
    session: Verdict,
    role: &RoleOutcome,
    status: &SessionTokenStatus,
) -> Verdict {
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
