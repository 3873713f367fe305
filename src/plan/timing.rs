//! Time: the tunables of the decisions ([`Timing`]), renewal times, backoff, jitter, durations,
//! wake-ups. Every instant derived from an object's values is computed with checked arithmetic:
//! a tenant can put any time the API server admits into status.

use crate::crd::{DEFAULT_RENEW_BEFORE_PERCENTAGE, RenewalSpec};
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
            role_min_session_remaining: Duration::from_secs(
                super::role::MIN_ROLE_SECONDS.unsigned_abs(),
            ),
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
    let advance = SignedDuration::try_from_secs_f64(window_secs + jitter_secs).unwrap_or(lifetime);
    round_to_second(expiration.checked_sub(advance).unwrap_or(issued_at)).max(issued_at)
}

pub use crate::approval::round_to_second;

/// Delay before retry `attempt` (1-based) after a failure: exponential, capped, with up to
/// 20 % jitter that is stable per `seed` (so repeated reconciles agree on the retry time).
pub fn backoff(attempt: u32, timing: &Timing, seed: &str) -> Duration {
    let exp = i32::try_from(attempt.saturating_sub(1).min(20)).unwrap_or(20);
    let raw = timing.backoff_base.as_secs_f64() * 2f64.powi(exp);
    let capped = raw.min(timing.backoff_cap.as_secs_f64());
    let jittered = capped * (0.8 + 0.2 * unit_jitter(&format!("{seed}/{attempt}")));
    Duration::try_from_secs_f64(jittered).unwrap_or(timing.backoff_cap)
}

/// Earliest of the given future instants, as a delay from `now` (at least 200 ms, at most
/// [`MAX_WAIT`]); `None` when there is none.
pub fn requeue_after(now: Timestamp, instants: &[Option<Timestamp>]) -> Option<Duration> {
    instants
        .iter()
        .flatten()
        .map(|t| t.duration_since(now))
        .min()
        .map(|d| {
            d.max(SignedDuration::from_millis(200))
                .unsigned_abs()
                .min(MAX_WAIT)
        })
}

/// The longest wait handed to a timer: far beyond any session (36 hours), short of what a
/// timer's arithmetic could overflow on.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
