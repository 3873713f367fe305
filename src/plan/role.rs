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
/// external id, the source Secret and its keys, the region, the endpoint and the allowed roles. Recorded in
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
    // spec.allowedRoles (what AssumedRoles may use the session for), only when set: digests
    // recorded before the field existed stay valid.
    if !spec.allowed_roles.is_empty() {
        let mut allowed: Vec<&str> = spec.allowed_roles.iter().map(String::as_str).collect();
        allowed.sort_unstable();
        for field in std::iter::once("allowed-roles").chain(allowed) {
            h.update(field.len().to_le_bytes());
            h.update(field.as_bytes());
        }
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

// ---------------------------------------------------------------------------------------------
// One code path for role credentials: a SessionToken's spec.assumeRole and an AssumedRole
// ---------------------------------------------------------------------------------------------

/// Whatever holds role credentials, as the role layer sees it: a SessionToken with
/// `spec.assumeRole` or an AssumedRole. Both decide, record, retry and wake through these
/// methods, with the same [`role_action`] and [`role_condition`].
#[derive(Clone, Debug)]
pub struct RoleSubject<'a> {
    pub spec: &'a AssumeRoleSpec,
    /// `spec.roleSessionName`, else `<namespace>.<name>` of the object.
    pub role_session_name: String,
    pub renewal: Option<&'a crate::crd::RenewalSpec>,
    /// The Secret the role credentials are written to.
    pub out_name: &'a str,
    /// The object's UID: seeds its jitter.
    pub uid: &'a str,
    pub timing: &'a Timing,
    pub now: Timestamp,
}

impl RoleSubject<'_> {
    /// [`role_hash`] of the spec now.
    pub fn hash(&self) -> String {
        role_hash(self.spec, &self.role_session_name)
    }

    /// What to do about the role credentials (`role`, held in the Secret if `role_held`) with
    /// `session` (expiration, access key id) at hand.
    pub fn action(
        &self,
        role: &RoleStatus,
        role_held: bool,
        session: Option<(Timestamp, &str)>,
        spec_changed: bool,
    ) -> RoleAction {
        role_action(
            RoleInputs {
                session,
                role,
                role_held,
                hash: &self.hash(),
                duration_seconds: self.spec.duration_seconds,
                spec_changed,
            },
            self.timing,
            self.uid,
            self.now,
        )
    }

    /// The role status after AssumeRole returned `assumed`, and its Event.
    pub fn assumed(
        &self,
        before: &RoleStatus,
        session_key: &str,
        assumed: &crate::sts::AssumedRole,
        action: &RoleAction,
    ) -> (RoleStatus, crate::events::Event) {
        let creds = &assumed.credentials;
        let assumed_at = super::round_to_second(self.now);
        let why = match action {
            RoleAction::Assume { why, .. } | RoleAction::Backoff { why, .. } => why,
            _ => "due",
        };
        let event = crate::events::Event::normal(
            "RoleAssumed",
            format!(
                "role {} assumed ({why}) with session {session_key}: credentials {} written to Secret {}, expire {}",
                self.spec.role_arn, creds.access_key_id, self.out_name, creds.expiration
            ),
        );
        let status = RoleStatus {
            role_arn: Some(self.spec.role_arn.clone()),
            assumed_role_arn: assumed.assumed_role_arn.clone(),
            access_key_id: Some(creds.access_key_id.clone()),
            assumed_at: Some(assumed_at),
            expiration: Some(creds.expiration),
            renewal_time: Some(super::renewal_time(
                assumed_at,
                creds.expiration,
                self.renewal,
                self.timing,
                &format!("{}/{}", self.uid, creds.expiration),
            )),
            session_access_key_id: Some(session_key.to_string()),
            hash: Some(self.hash()),
            assumptions: before.assumptions.saturating_add(1),
            last_failure: None,
            failed_attempts: 0,
        };
        (status, event)
    }

    /// Records a failed AssumeRole in `role`; returns its Warning Event.
    pub fn failed(&self, role: &mut RoleStatus, e: &crate::sts::StsError) -> crate::events::Event {
        let reason = assume_role_reason(e);
        let message = match reason {
            "RoleAccessDenied" => format!(
                "STS refused AssumeRole of {}: {e}. The role's trust policy must allow this IAM user (and, if it requires aws:MultiFactorAuthPresent, the session must be approved with an MFA code: spec.mfa). The session is kept; retrying with backoff",
                self.spec.role_arn
            ),
            _ => format!(
                "AssumeRole of {} failed: {e}. The session is kept; retrying with backoff",
                self.spec.role_arn
            ),
        };
        role.failed_attempts = role.failed_attempts.saturating_add(1).max(1);
        role.last_failure = Some(crate::crd::Failure {
            time: super::round_to_second(self.now),
            reason: reason.to_string(),
            message: message.clone(),
        });
        crate::events::Event::warning(reason, message)
    }

    /// The next instant the role layer needs a reconcile: at once when the role is due and no
    /// call was made (`may_call_now`: nothing blocks it), at the retry after a failure, at the
    /// renewal, at the expiry.
    pub fn wake(
        &self,
        role: &RoleStatus,
        action: &RoleAction,
        assumed_now: bool,
        may_call_now: bool,
    ) -> Option<Timestamp> {
        let now_due = matches!(action, RoleAction::Assume { .. }) && !assumed_now;
        let retry = match action {
            RoleAction::Backoff { retry_at, .. } => Some(*retry_at),
            _ if !assumed_now && role.failed_attempts > 0 => role
                .last_failure
                .as_ref()
                .map(|e| role_retry_time(e.time, role.failed_attempts, self.timing, self.uid)),
            _ => None,
        };
        let later = retry
            .into_iter()
            .chain(role.renewal_time)
            .chain(role.expiration)
            .filter(|t| *t > self.now)
            .min();
        match now_due && may_call_now && role.failed_attempts == 0 {
            true => Some(self.now),
            false => later,
        }
    }
}

/// Whether `role_arn` is among `allowed` (`spec.allowedRoles`: `*` stands for any run of
/// characters); an empty list allows any role.
pub fn role_allowed(allowed: &[String], role_arn: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|p| glob_match(p, role_arn))
}

/// `*`-glob matching, iterative (no recursion, linear in practice): patterns are at most 2,048
/// bytes, ARNs too.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some(b'*'), _) => {
                star = Some((pi, ti));
                pi = pi.saturating_add(1);
            }
            (Some(a), Some(b)) if a == b => {
                pi = pi.saturating_add(1);
                ti = ti.saturating_add(1);
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp.saturating_add(1);
                    ti = st.saturating_add(1);
                    star = Some((sp, ti));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

/// The reason of `Ready=False` for a role outside the session's `spec.allowedRoles`.
pub const ROLE_NOT_ALLOWED: &str = "RoleNotAllowed";

#[cfg(test)]
mod glob_tests {
    use super::*;

    #[test]
    fn allowed_roles_match_with_stars() {
        let arn = "arn:aws:iam::123456789012:role/app-deploy";
        assert!(role_allowed(&[], arn));
        for yes in [
            arn,
            "arn:aws:iam::123456789012:role/app-*",
            "arn:aws:iam::*:role/*",
            "*",
            "arn:aws:iam::123456789012:role/*deploy",
            "arn:aws:iam::123456789012:role/app-**",
        ] {
            assert!(role_allowed(&[yes.into()], arn), "{yes}");
        }
        for no in [
            "arn:aws:iam::123456789012:role/app",
            "arn:aws:iam::123456789012:role/app-deploy-x",
            "arn:aws:iam::999999999999:role/*",
            "arn:aws:iam::123456789012:role/*x",
        ] {
            assert!(!role_allowed(&[no.into()], arn), "{no}");
        }
        assert!(role_allowed(
            &["nope".into(), "arn:aws:iam::*:role/app-*".into()],
            arn
        ));
        // Many stars against a long text: no blow-up.
        let long = format!("{}b", "a".repeat(2000));
        assert!(!glob_match(&"*a".repeat(1000), &long));
    }
}
