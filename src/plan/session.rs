//! The session (GetSessionToken): its state, when a new one is minted without a person, its
//! fingerprint, the names of the Secrets around it.

use super::timing::unit_jitter;
use crate::crd::SessionTokenSpec;
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Fingerprint of everything that shapes a session: when it changes, the current session no
/// longer matches its spec (non-MFA: mint at once; MFA: at the next approval).
pub fn session_hash(
    spec: &SessionTokenSpec,
    region: &str,
    endpoint: Option<&str>,
    source_key_id: &str,
) -> String {
    let serial = spec
        .mfa
        .as_ref()
        .map(|m| m.serial_number.as_str())
        .unwrap_or("");
    let text = format!(
        "v1|{}|{}|{}|{}|{}",
        spec.duration_seconds,
        serial,
        region,
        endpoint.unwrap_or(""),
        source_key_id
    );
    format!("{:016x}", (unit_jitter(&text) * (1u64 << 53) as f64) as u64)
}

/// The state of the current session, from status and the output Secret.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionState {
    /// Never minted (or the record was lost).
    None,
    /// Valid and matching the Secret; renew at `renewal`.
    Valid {
        expiration: Timestamp,
        renewal: Timestamp,
    },
    /// Valid, but the renewal time has passed.
    RenewalDue { expiration: Timestamp },
    /// Past its expiration.
    Expired { expiration: Timestamp },
    /// Status says a session is valid, but the Secret is gone or no longer holds it.
    SecretMissing { expiration: Timestamp },
}

impl SessionState {
    pub fn is_valid(&self) -> bool {
        matches!(
            self,
            SessionState::Valid { .. } | SessionState::RenewalDue { .. }
        )
    }
}

/// The session's state: `secret_holds_session` says whether the output Secret holds the
/// session recorded in status (same access key id and expiration, all keys present).
pub fn session_state(
    expiration: Option<Timestamp>,
    renewal: Option<Timestamp>,
    secret_holds_session: bool,
    now: Timestamp,
) -> SessionState {
    let Some(expiration) = expiration else {
        return SessionState::None;
    };
    if now >= expiration {
        return SessionState::Expired { expiration };
    }
    if !secret_holds_session {
        return SessionState::SecretMissing { expiration };
    }
    match renewal {
        Some(renewal) if now < renewal => SessionState::Valid {
            expiration,
            renewal,
        },
        _ => SessionState::RenewalDue { expiration },
    }
}

/// Why a non-MFA SessionToken mints now, if it does.
pub fn automatic_mint_reason(session: &SessionState, hash_matches: bool) -> Option<&'static str> {
    match session {
        SessionState::None => Some("no session yet"),
        SessionState::Expired { .. } => Some("session expired"),
        SessionState::SecretMissing { .. } => Some("output Secret missing or altered"),
        SessionState::RenewalDue { .. } => Some("renewal time reached"),
        SessionState::Valid { .. } if !hash_matches => Some("spec changed"),
        SessionState::Valid { .. } => None,
    }
}

/// When a `TokenCodeRequired` event is due: at the renewal time, then every interval.
/// Returns the index of the current period (0 = at renewal) and when the next one starts.
pub fn code_required_period(
    renewal: Timestamp,
    now: Timestamp,
    interval: Duration,
) -> (u64, Timestamp) {
    let elapsed = now.duration_since(renewal).as_secs_f64().max(0.0);
    let step = interval.as_secs_f64().max(1.0);
    let periods = (elapsed / step).floor();
    // (Float to integer casts saturate.)
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let period = periods as u64;
    let next = SignedDuration::try_from_secs_f64(step * (periods + 1.0))
        .ok()
        .and_then(|d| renewal.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    (period, next)
}

/// Whether `name` is a valid object name (a DNS subdomain: lowercase alphanumerics, `-` and
/// `.`, at most 253 characters). The CRD schema already says so; checked again before a name
/// goes into an API path, in case an older CRD without the pattern is installed: a `/` or
/// `..` there must never reach another namespace.
pub fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
}
