//! Decisions, as pure functions of what the reconciler read and the clock: whether a code on the
//! resource is usable, whether the current session is valid, when to renew, whether to mint,
//! how long to back off, what the conditions say. No I/O here, so all of it is tested directly.

use crate::crd::{
    AssumeRoleSpec, DEFAULT_RENEW_BEFORE_PERCENTAGE, RenewalSpec, SessionToken, SessionTokenSpec,
};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Tunables of the decisions (flags of the operator; tests shorten them).
#[derive(Clone, Debug)]
pub struct Timing {
    /// A code annotation older than this is dropped unused (`TokenCodeExpired`): TOTP codes
    /// live about 30 s, and an old code would only earn an AccessDenied.
    pub token_code_max_age: Duration,
    /// `TokenCodeRequired` events repeat this often while a code is awaited (Events expire
    /// after an hour, so a single one would vanish).
    pub code_required_interval: Duration,
    /// First retry delay after a failed mint; doubles per failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Largest random advance of the renewal time (so aligned sessions do not storm STS);
    /// the jitter is also at most 5 % of the renewal window.
    pub renewal_jitter_max: Duration,
    /// spec.assumeRole: assume the role only while the session has at least this long left
    /// (AssumeRole's minimum DurationSeconds, 900 s: a shorter remainder could only be met by
    /// role credentials outliving the session).
    pub role_min_session_remaining: Duration,
    /// spec.assumeRole: how much later than the reconcile's clock STS may start an AssumeRole
    /// (the call's time limit, and some clock skew): role credentials are asked to end this
    /// much before the session, so that they never outlive it.
    pub role_expiry_margin: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            token_code_max_age: Duration::from_secs(90),
            code_required_interval: Duration::from_secs(30 * 60),
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(5 * 60),
            renewal_jitter_max: Duration::from_secs(5 * 60),
            role_min_session_remaining: Duration::from_secs(MIN_ROLE_SECONDS as u64),
            role_expiry_margin: Duration::from_secs(25),
        }
    }
}

/// A number in [0, 1) derived from a seed: stable for the same seed, spread across seeds.
/// Used for jitter that must not move between reconciles of the same object.
pub fn unit_jitter(seed: &str) -> f64 {
    // FNV-1a then a splitmix64 finaliser: plenty for spreading, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a Go-style duration as the CRD pattern admits it (`90m`, `1h30m`, `1.5h`, `500ms`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += value * unit;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
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
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// The renewal time of a session that was issued at `issued_at` and expires at `expiration`
/// (as STS returned it, not as requested): expiration minus the renewal window, minus a
/// jitter that is stable for the same `jitter_seed`.
///
/// The window is `renewBefore`, else `renewBeforePercentage` of the lifetime (default 33 %);
/// a window not shorter than the lifetime falls back to a third of the lifetime.
pub fn renewal_time(
    issued_at: Timestamp,
    expiration: Timestamp,
    renewal: Option<&RenewalSpec>,
    timing: &Timing,
    jitter_seed: &str,
) -> Timestamp {
    let lifetime = expiration
        .duration_since(issued_at)
        .max(SignedDuration::ZERO);
    let lifetime_secs = lifetime.as_secs_f64();
    let window_secs = match renewal {
        Some(RenewalSpec {
            renew_before: Some(text),
            ..
        }) => parse_duration(text)
            .map(|d| d.as_secs_f64())
            .unwrap_or(lifetime_secs / 3.0),
        Some(RenewalSpec {
            renew_before_percentage: Some(p),
            ..
        }) => lifetime_secs * f64::from((*p).clamp(1, 99)) / 100.0,
        _ => lifetime_secs * f64::from(DEFAULT_RENEW_BEFORE_PERCENTAGE) / 100.0,
    };
    let window_secs = if window_secs >= lifetime_secs {
        lifetime_secs / 3.0
    } else {
        window_secs
    };
    let jitter_secs = (window_secs * 0.05).min(timing.renewal_jitter_max.as_secs_f64())
        * unit_jitter(jitter_seed);
    let advance = SignedDuration::from_secs_f64(window_secs + jitter_secs);
    round_to_second(expiration - advance).max(issued_at)
}

/// Whole seconds: status timestamps are compared across reconciles and must not wobble.
pub fn round_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Delay before retry `attempt` (1-based) after a failure: exponential, capped, with up to
/// 20 % jitter that is stable per `seed` (so repeated reconciles agree on the retry time).
pub fn backoff(attempt: u32, timing: &Timing, seed: &str) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let raw = timing.backoff_base.as_secs_f64() * 2f64.powi(exp as i32);
    let capped = raw.min(timing.backoff_cap.as_secs_f64());
    let jittered = capped * (0.8 + 0.2 * unit_jitter(&format!("{seed}/{attempt}")));
    Duration::from_secs_f64(jittered)
}

/// What the code annotation on a SessionToken amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeState {
    /// No code annotation.
    Absent,
    /// A well-formed, fresh code on an MFA SessionToken: claim it and use it.
    Usable,
    /// Not six ASCII digits. Claimed and dropped, no STS call.
    Invalid,
    /// Older than the maximum age. Claimed and dropped, no STS call.
    Expired { age: Duration },
    /// A code on a SessionToken without `mfa`. Claimed and dropped with a warning.
    NotNeeded,
}

/// Classifies the code annotation. `set_at` is when the annotation was last written (from
/// `managedFields`); unknown means fresh, since the API server always records it.
pub fn code_state(
    raw_code: Option<&str>,
    has_mfa: bool,
    set_at: Option<Timestamp>,
    now: Timestamp,
    timing: &Timing,
) -> CodeState {
    let Some(raw) = raw_code else {
        return CodeState::Absent;
    };
    if !has_mfa {
        return CodeState::NotNeeded;
    }
    if !is_six_digits(raw) {
        return CodeState::Invalid;
    }
    if let Some(set_at) = set_at {
        let age = now.duration_since(set_at);
        if age > SignedDuration::try_from(timing.token_code_max_age).unwrap_or(SignedDuration::MAX)
        {
            return CodeState::Expired {
                age: age.unsigned_abs(),
            };
        }
    }
    CodeState::Usable
}

fn is_six_digits(raw: &str) -> bool {
    raw.len() == 6 && raw.bytes().all(|b| b.is_ascii_digit())
}

/// The time the annotation `key` was last set, from the object's `managedFields`: the newest
/// entry whose field set contains it.
pub fn annotation_set_at(st: &SessionToken, key: &str) -> Option<Timestamp> {
    let needle = format!("\"f:{key}\"");
    st.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|mf| {
            mf.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:metadata")
                    .and_then(|m| m.get("f:annotations"))
                    .is_some_and(|a| a.to_string().contains(&needle))
            })
        })
        .filter_map(|mf| mf.time.as_ref().map(|t| t.0))
        .max()
}

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
    let period = (elapsed / step).floor() as u64;
    let next = renewal + SignedDuration::from_secs_f64(step * (period + 1) as f64);
    (period, next)
}

/// Earliest of the given future instants, as a delay from `now`; `None` when there is none.
pub fn requeue_after(now: Timestamp, instants: &[Option<Timestamp>]) -> Option<Duration> {
    instants
        .iter()
        .flatten()
        .map(|t| t.duration_since(now))
        .min()
        .map(|d| d.max(SignedDuration::from_millis(200)).unsigned_abs())
}

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
    let mut head = &name[..253 - 8 - 9 - 1];
    while head.ends_with(['.', '-']) {
        head = &head[..head.len() - 1];
    }
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
    let delay = backoff(attempts.max(1) as u32, timing, seed) + Duration::from_secs(1);
    failed_at + SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(300))
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
    let remaining = session_expiration.duration_since(now).as_secs()
        - timing.role_expiry_margin.as_secs() as i64;
    if remaining < timing.role_min_session_remaining.as_secs() as i64 {
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
    let duration_seconds = i64::from(input.duration_seconds)
        .min(remaining)
        .clamp(MIN_ROLE_SECONDS, 43_200) as i32;
    RoleAction::Assume {
        duration_seconds,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RenewalSpec;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn no_jitter() -> Timing {
        Timing {
            renewal_jitter_max: Duration::ZERO,
            ..Timing::default()
        }
    }

    #[test]
    fn renewal_defaults_to_a_third_of_the_returned_lifetime() {
        // Requested 12 h, but STS returned 1 h (account root): renew 33 % before that hour ends.
        let r = renewal_time(t(0), t(3600), None, &no_jitter(), "uid");
        assert_eq!(r, t(3600 - 1188));
    }

    #[test]
    fn renewal_percentage_and_duration_windows() {
        let pct = RenewalSpec {
            renew_before_percentage: Some(10),
            renew_before: None,
        };
        assert_eq!(
            renewal_time(t(0), t(1000), Some(&pct), &no_jitter(), "x"),
            t(900)
        );
        let dur = RenewalSpec {
            renew_before_percentage: None,
            renew_before: Some("5m".into()),
        };
        assert_eq!(
            renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
            t(3300)
        );
    }

    #[test]
    fn window_not_shorter_than_lifetime_falls_back_to_a_third() {
        let dur = RenewalSpec {
            renew_before_percentage: None,
            renew_before: Some("2h".into()),
        };
        assert_eq!(
            renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
            t(2400)
        );
        let dur = RenewalSpec {
            renew_before_percentage: None,
            renew_before: Some("1h".into()),
        };
        assert_eq!(
            renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
            t(2400)
        );
    }

    #[test]
    fn jitter_only_advances_renewal_and_is_stable_and_spread() {
        let timing = Timing::default();
        let base = renewal_time(t(0), t(43200), None, &no_jitter(), "a");
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..50 {
            let seed = format!("uid-{i}");
            let r = renewal_time(t(0), t(43200), None, &timing, &seed);
            assert!(
                r <= base && r >= base - SignedDuration::from_secs(300),
                "{r} vs {base}"
            );
            assert_eq!(r, renewal_time(t(0), t(43200), None, &timing, &seed));
            distinct.insert(r);
        }
        assert!(
            distinct.len() > 40,
            "jitter does not spread: {}",
            distinct.len()
        );
    }

    #[test]
    fn renewal_never_before_issue_for_tiny_lifetimes() {
        assert!(renewal_time(t(0), t(3), None, &Timing::default(), "s") >= t(0));
        assert_eq!(
            renewal_time(t(10), t(5), None, &Timing::default(), "s"),
            t(10)
        );
    }

    #[test]
    fn durations_parse_like_the_schema_admits() {
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "5", "h", "5d", "1h-5m", "1..5h", "99999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_is_stable() {
        let timing = Timing::default();
        let d1 = backoff(1, &timing, "u");
        let d2 = backoff(2, &timing, "u");
        let d5 = backoff(5, &timing, "u");
        assert!(
            d1 >= Duration::from_secs(4) && d1 <= Duration::from_secs(5),
            "{d1:?}"
        );
        assert!(
            d2 >= Duration::from_secs(8) && d2 <= Duration::from_secs(10),
            "{d2:?}"
        );
        assert!(
            d5 >= Duration::from_secs(64) && d5 <= Duration::from_secs(80),
            "{d5:?}"
        );
        for n in [10, 30, 1000, u32::MAX] {
            let d = backoff(n, &timing, "u");
            assert!(
                d <= timing.backoff_cap && d >= timing.backoff_cap.mul_f64(0.8),
                "{n}: {d:?}"
            );
        }
        assert_eq!(backoff(3, &timing, "u"), backoff(3, &timing, "u"));
        assert_ne!(backoff(3, &timing, "u"), backoff(3, &timing, "v"));
    }

    #[test]
    fn code_states() {
        let timing = Timing::default();
        let now = t(1000);
        assert_eq!(
            code_state(None, true, None, now, &timing),
            CodeState::Absent
        );
        assert_eq!(
            code_state(Some("123456"), true, Some(t(990)), now, &timing),
            CodeState::Usable
        );
        assert_eq!(
            code_state(Some("123456"), true, None, now, &timing),
            CodeState::Usable
        );
        assert_eq!(
            code_state(Some("123456"), false, Some(t(990)), now, &timing),
            CodeState::NotNeeded
        );
        assert_eq!(
            code_state(Some("123456"), true, Some(t(900)), now, &timing),
            CodeState::Expired {
                age: Duration::from_secs(100)
            }
        );
        // exactly at the limit is still usable
        assert_eq!(
            code_state(Some("123456"), true, Some(t(910)), now, &timing),
            CodeState::Usable
        );
        for bad in [
            "12ab5",
            "12345",
            "1234567",
            " 123456",
            "123456 ",
            "+12345",
            "１２３４５６",
            "",
            "12 456",
            "-12345",
        ] {
            assert_eq!(
                code_state(Some(bad), true, Some(t(999)), now, &timing),
                CodeState::Invalid,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn session_states() {
        let now = t(100);
        assert_eq!(session_state(None, None, false, now), SessionState::None);
        assert_eq!(
            session_state(Some(t(200)), Some(t(150)), true, now),
            SessionState::Valid {
                expiration: t(200),
                renewal: t(150)
            }
        );
        assert_eq!(
            session_state(Some(t(200)), Some(t(100)), true, now),
            SessionState::RenewalDue { expiration: t(200) }
        );
        assert_eq!(
            session_state(Some(t(200)), None, true, now),
            SessionState::RenewalDue { expiration: t(200) }
        );
        assert_eq!(
            session_state(Some(t(100)), Some(t(50)), true, now),
            SessionState::Expired { expiration: t(100) }
        );
        assert_eq!(
            session_state(Some(t(200)), Some(t(150)), false, now),
            SessionState::SecretMissing { expiration: t(200) }
        );
        // an expired session is Expired even if the Secret is gone
        assert_eq!(
            session_state(Some(t(50)), Some(t(20)), false, now),
            SessionState::Expired { expiration: t(50) }
        );
    }

    #[test]
    fn automatic_minting() {
        let valid = SessionState::Valid {
            expiration: t(2),
            renewal: t(1),
        };
        assert_eq!(automatic_mint_reason(&valid, true), None);
        assert_eq!(automatic_mint_reason(&valid, false), Some("spec changed"));
        assert!(automatic_mint_reason(&SessionState::None, true).is_some());
        assert!(
            automatic_mint_reason(&SessionState::RenewalDue { expiration: t(1) }, true).is_some()
        );
        assert!(automatic_mint_reason(&SessionState::Expired { expiration: t(1) }, true).is_some());
        assert!(
            automatic_mint_reason(&SessionState::SecretMissing { expiration: t(1) }, true)
                .is_some()
        );
    }

    #[test]
    fn code_required_events_repeat_per_interval() {
        let interval = Duration::from_secs(1800);
        assert_eq!(code_required_period(t(0), t(0), interval), (0, t(1800)));
        assert_eq!(code_required_period(t(0), t(1799), interval), (0, t(1800)));
        assert_eq!(code_required_period(t(0), t(1800), interval), (1, t(3600)));
        assert_eq!(code_required_period(t(0), t(5000), interval), (2, t(5400)));
    }

    #[test]
    fn requeue_picks_the_earliest_instant_and_never_zero() {
        assert_eq!(
            requeue_after(t(0), &[None, Some(t(30)), Some(t(10))]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(requeue_after(t(0), &[None]), None);
        assert_eq!(
            requeue_after(t(10), &[Some(t(0))]),
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn session_hash_tracks_what_shapes_a_session() {
        let spec: SessionTokenSpec = serde_json::from_value(serde_json::json!({
            "sourceCredentials": {"secretRef": {"name": "keys"}}
        }))
        .unwrap();
        let h = session_hash(&spec, "us-east-1", None, "AKIA1");
        assert_eq!(h, session_hash(&spec, "us-east-1", None, "AKIA1"));
        assert_ne!(h, session_hash(&spec, "eu-west-1", None, "AKIA1"));
        assert_ne!(
            h,
            session_hash(&spec, "us-east-1", Some("https://x"), "AKIA1")
        );
        assert_ne!(h, session_hash(&spec, "us-east-1", None, "AKIA2"));
        let mut longer = spec.clone();
        longer.duration_seconds = 900;
        assert_ne!(h, session_hash(&longer, "us-east-1", None, "AKIA1"));
    }

    #[test]
    fn object_names() {
        for ok in ["keys", "iam-keys", "a.b-c", "x", &"a".repeat(253)] {
            assert!(is_object_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../other",
            "a/b",
            "Keys",
            "-a",
            "a-",
            "a..b",
            "a b",
            "ключ",
            &"a".repeat(254),
            "%2e%2e",
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn unit_jitter_is_in_range() {
        for i in 0..1000 {
            let j = unit_jitter(&i.to_string());
            assert!((0.0..1.0).contains(&j));
        }
    }

    // ---- spec.assumeRole ------------------------------------------------------------------

    use crate::crd::{Failure, RoleStatus, SessionTag};

    fn role_spec() -> AssumeRoleSpec {
        AssumeRoleSpec::example()
    }

    /// Role credentials assumed at `at` with session `S1`, expiring at `exp`, renewed at `renew`.
    fn held_role(at: i64, exp: i64, renew: i64) -> RoleStatus {
        RoleStatus {
            access_key_id: Some("ASIAROLE000000000001".into()),
            assumed_at: Some(t(at)),
            expiration: Some(t(exp)),
            renewal_time: Some(t(renew)),
            session_access_key_id: Some("S1".into()),
            hash: Some("h".into()),
            assumptions: 1,
            ..Default::default()
        }
    }

    fn inputs<'a>(session: Option<(Timestamp, &'a str)>, role: &'a RoleStatus) -> RoleInputs<'a> {
        RoleInputs {
            session,
            role,
            role_held: role.access_key_id.is_some(),
            hash: "h",
            duration_seconds: 3600,
            spec_changed: false,
        }
    }

    #[test]
    fn the_role_is_assumed_at_once_with_a_session_and_never_without_one() {
        let none = RoleStatus::default();
        let timing = Timing::default();
        assert_eq!(
            role_action(inputs(None, &none), &timing, "u", t(0)),
            RoleAction::NoSession
        );
        assert_eq!(
            role_action(inputs(Some((t(-1), "S1")), &none), &timing, "u", t(0)),
            RoleAction::NoSession,
            "an expired session is no session"
        );
        assert_eq!(
            role_action(inputs(Some((t(43_200), "S1")), &none), &timing, "u", t(0)),
            RoleAction::Assume {
                duration_seconds: 3600,
                why: "no role credentials yet"
            }
        );
    }

    #[test]
    fn role_credentials_are_held_until_renewal_then_renewed() {
        let role = held_role(0, 3600, 2400);
        let timing = Timing::default();
        let session = Some((t(43_200), "S1"));
        assert_eq!(
            role_action(inputs(session, &role), &timing, "u", t(2399)),
            RoleAction::Hold {
                renewal: Some(t(2400))
            }
        );
        assert_eq!(
            role_action(inputs(session, &role), &timing, "u", t(2400)),
            RoleAction::Assume {
                duration_seconds: 3600,
                why: "renewal time reached"
            }
        );
        // The Secret lost them: at once.
        let mut lost = inputs(session, &role);
        lost.role_held = false;
        assert!(matches!(
            role_action(lost, &timing, "u", t(10)),
            RoleAction::Assume {
                why: "role credentials expired or missing from the Secret",
                ..
            }
        ));
    }

    #[test]
    fn a_new_session_or_a_changed_spec_assumes_again_at_once() {
        let role = held_role(0, 3600, 2400);
        let timing = Timing::default();
        assert!(matches!(
            role_action(inputs(Some((t(43_200), "S2")), &role), &timing, "u", t(10)),
            RoleAction::Assume {
                why: "new session",
                ..
            }
        ));
        let mut changed = inputs(Some((t(43_200), "S1")), &role);
        changed.hash = "other";
        assert!(matches!(
            role_action(changed, &timing, "u", t(10)),
            RoleAction::Assume {
                why: "spec.assumeRole changed",
                ..
            }
        ));
    }

    #[test]
    fn role_credentials_never_outlive_the_session() {
        let timing = Timing::default();
        let none = RoleStatus::default();
        // 50 minutes left: ask for 50 minutes less the margin for the call (25 s by default),
        // not the hour the spec says.
        assert_eq!(timing.role_expiry_margin, Duration::from_secs(25));
        assert_eq!(
            role_action(inputs(Some((t(3000), "S1")), &none), &timing, "u", t(0)),
            RoleAction::Assume {
                duration_seconds: 2975,
                why: "no role credentials yet"
            }
        );
        // 15 minutes and the margin left: still (AssumeRole's minimum).
        assert!(matches!(
            role_action(inputs(Some((t(925), "S1")), &none), &timing, "u", t(0)),
            RoleAction::Assume {
                duration_seconds: 900,
                ..
            }
        ));
        // Less than that: no AssumeRole could end in time.
        assert_eq!(
            role_action(inputs(Some((t(924), "S1")), &none), &timing, "u", t(0)),
            RoleAction::SessionEnding {
                session_expiration: t(924)
            }
        );
        let due = held_role(0, 1200, 800);
        assert_eq!(
            role_action(inputs(Some((t(1200), "S1")), &due), &timing, "u", t(800)),
            RoleAction::SessionEnding {
                session_expiration: t(1200)
            },
            "the last set, assumed for the session's remainder, runs out with it"
        );
        // A lower minimum (tests with short lifetimes) moves the line.
        let short = Timing {
            role_min_session_remaining: Duration::from_secs(5),
            ..Timing::default()
        };
        assert!(matches!(
            role_action(inputs(Some((t(30), "S1")), &none), &short, "u", t(0)),
            RoleAction::Assume {
                duration_seconds: 900,
                ..
            }
        ));
    }

    #[test]
    fn failed_assumptions_back_off_unless_the_spec_or_session_changes() {
        let timing = no_jitter();
        let mut role = held_role(0, 3600, 2400);
        role.failed_attempts = 3;
        role.last_failure = Some(Failure {
            time: t(2500),
            reason: "RoleAccessDenied".into(),
            message: "m".into(),
        });
        let session = Some((t(43_200), "S1"));
        let delay = backoff(3, &timing, "u").as_secs_f64();
        assert!((16.0..=20.0).contains(&delay), "{delay}");
        match role_action(inputs(session, &role), &timing, "u", t(2501)) {
            RoleAction::Backoff {
                retry_at,
                why: "renewal time reached",
            } => {
                // A second more: the failure time was rounded down.
                assert_eq!(retry_at.as_second(), t(2500).as_second() + 1 + delay as i64);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            role_action(inputs(session, &role), &timing, "u", t(2522)),
            RoleAction::Assume { .. }
        ));
        let mut changed = inputs(session, &role);
        changed.spec_changed = true;
        assert!(matches!(
            role_action(changed, &timing, "u", t(2501)),
            RoleAction::Assume { .. }
        ));
    }

    #[test]
    fn default_role_session_names_fit_aws_limits() {
        assert_eq!(
            default_role_session_name("team-a", "deploy"),
            "team-a.deploy"
        );
        let long = default_role_session_name(&"n".repeat(63), &"x".repeat(253));
        assert_eq!(long.len(), 64);
        assert_ne!(
            long,
            default_role_session_name(&"n".repeat(63), &"y".repeat(253))
        );
        assert!(crate::sts::validate_role_session_name(&long).is_ok());
        assert!(crate::sts::validate_role_session_name("team-a.deploy").is_ok());
    }

    #[test]
    fn session_secret_names_are_valid_and_distinct() {
        assert_eq!(session_secret_name("deploy"), "deploy-session");
        let a = session_secret_name(&"a".repeat(253));
        let b = session_secret_name(&format!("{}b", "a".repeat(252)));
        assert!(a.len() <= 253 && is_object_name(&a), "{a}");
        assert_ne!(a, b);
        let dotted = session_secret_name(&format!("{}.{}", "a".repeat(200), "b".repeat(52)));
        assert!(is_object_name(&dotted), "{dotted}");
    }

    #[test]
    fn the_role_hash_covers_every_field() {
        let base = role_spec();
        let h = role_hash(&base, "s");
        assert_eq!(h, role_hash(&base.clone(), "s"));
        assert_ne!(h, role_hash(&base, "other"));
        let mut v = base.clone();
        v.duration_seconds = 900;
        assert_ne!(h, role_hash(&v, "s"));
        let mut v = base.clone();
        v.external_id = Some("ext".into());
        assert_ne!(h, role_hash(&v, "s"));
        let mut v = base.clone();
        v.role_arn.push('2');
        assert_ne!(h, role_hash(&v, "s"));
        let mut v = base;
        v.tags.push(SessionTag {
            key: "team".into(),
            value: "a".into(),
        });
        assert_ne!(h, role_hash(&v, "s"));
    }
}
