//! Conditions, the contract with people and tools: their types, how one is set, and the
//! `Ready` condition of a session (the role's is in `role`).

use super::session::SessionState;
use super::timing::round_to_second;
use crate::crd::{Condition, SessionTokenStatus};
use jiff::Timestamp;

pub const READY: &str = "Ready";
pub use crate::approval::ISSUING;
/// With `spec.assumeRole`: whether the output Secret holds valid role credentials, and why not.
pub const ROLE_ASSUMED: &str = "RoleAssumed";
pub const CONSUMER_REFRESH: &str = "ConsumerRefresh";
pub const ROLLOUT_RESTART: &str = "RolloutRestart";
/// The reason of `Ready=False` after a reconcile that panicked (the backstop).
pub const INTERNAL_ERROR: &str = "InternalError";

/// A condition as the decisions state it: (status, reason, message).
pub type Verdict = (&'static str, &'static str, String);

/// `s` cut to at most `max` bytes, on a char boundary, with an ellipsis if cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    (status, reason, message): Verdict,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = truncate(&message, 1000);
    let last_transition_time = match conditions.iter().find(|c| c.type_ == type_) {
        Some(old) if old.status == status => old.last_transition_time,
        _ => round_to_second(now),
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

/// The reason of a status's `Ready` condition.
pub fn ready_reason(status: &SessionTokenStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| &*c.reason)
}

/// What `ready_condition` needs to know.
pub struct ReadyFacts<'a> {
    pub has_mfa: bool,
    pub name: &'a str,
    pub namespace: &'a str,
    /// Where the session lives (for messages).
    pub session_home: &'a str,
    /// A problem that stops minting: (reason, message).
    pub blocker: Option<(&'static str, &'a str)>,
}

/// Condition reasons are a closed set; map a stored one back to its static name.
pub fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "SourceCredentialsInvalid" => "SourceCredentialsInvalid",
        "InvalidSpec" => "InvalidSpec",
        "TokenCodeRejected" => "TokenCodeRejected",
        "Throttled" => "Throttled",
        "Expired" => "Expired",
        _ => "StsError",
    }
}

/// `Ready` from the session's state (before any role).
pub fn ready_condition(
    f: &ReadyFacts<'_>,
    status: &SessionTokenStatus,
    session: &SessionState,
) -> Verdict {
    if let Some(("SecretConflict", message)) = f.blocker {
        return ("False", "SecretConflict", message.to_string());
    }
    let approve_hint = format!(
        "approve with `kubectl sts approve {} -n {}`",
        f.name, f.namespace
    );
    match session {
        SessionState::Valid {
            expiration,
            renewal,
        } => {
            let what = if f.has_mfa {
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
        SessionState::RenewalDue { expiration } if f.has_mfa => (
            "True",
            "AwaitingTokenCode",
            format!("session valid until {expiration}; {approve_hint} before then"),
        ),
        SessionState::RenewalDue { expiration } => {
            let why = status
                .last_failure
                .as_ref()
                .map(|e| format!("; renewal failing: {}", e.message))
                .unwrap_or_default();
            (
                "True",
                "Issued",
                format!("session valid until {expiration}, renewal due{why}"),
            )
        }
        other => {
            if let Some((reason, message)) = f.blocker {
                return ("False", reason, message.to_string());
            }
            match other {
                SessionState::SecretMissing { expiration } if f.has_mfa => (
                    "False",
                    "SecretMissing",
                    format!(
                        "the Secret {} no longer holds the session valid until {expiration} (the operator keeps no copy); {approve_hint}",
                        f.session_home
                    ),
                ),
                SessionState::Expired { expiration } if f.has_mfa => (
                    "False",
                    "Expired",
                    format!("the session expired at {expiration}; {approve_hint}"),
                ),
                SessionState::None if f.has_mfa => (
                    "False",
                    "AwaitingTokenCode",
                    format!("no session yet; {approve_hint}"),
                ),
                _ => match &status.last_failure {
                    Some(e) => ("False", failure_reason(&e.reason), e.message.clone()),
                    None => ("False", "Issuing", "minting a session".into()),
                },
            }
        }
    }
}
