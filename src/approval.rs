//! The approval protocol, whole: a person puts a six-digit MFA code on a SessionToken (the
//! annotation `stssession.dev/token-code`, with `stssession.dev/approved-by`, usually through
//! `kubectl sts approve`); the operator claims it exactly once (one JSON patch that tests the
//! values and removes them, and marks the time of the claim in
//! `stssession.dev/token-code-claimed-at`), records the claim in status, uses it for one STS call,
//! and never stores, logs or retries it. A claim that status never resolved was interrupted (the
//! process died): the code may have been spent, and the session is lost.
//!
//! Everything here is pure: parsing and bounding the annotations ([`ApprovalFacts`]), the
//! decision about a code ([`assess`]), the claim patch ([`Claim`]), interrupted claims
//! ([`interrupted`]).

use crate::Sensitive;
use crate::crd::{Approval, SessionToken, SessionTokenStatus};
use crate::events::Event;
use jiff::{SignedDuration, Timestamp};
use std::fmt;
use std::time::Duration;

pub use crate::crd::{APPROVED_BY_ANNOTATION, RENEW_ANNOTATION, TOKEN_CODE_ANNOTATION};

/// Annotation the claim of a code leaves on the SessionToken: when (RFC 3339) a code was last
/// claimed to be used. Set by the same patch that removes the code, so that no crash can
/// separate the two: a claim that status never resolved (no `Issuing` condition, approval or
/// failure recorded at or after it) was interrupted. Only the operator may set it (the chart's
/// admission policy).
pub const CLAIMED_AT_ANNOTATION: &str = "stssession.dev/token-code-claimed-at";
/// Client-side `kubectl apply` keeps the whole object here, a code included.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The `Issuing` condition's type, and its reason while a claimed code is being used.
pub const ISSUING: &str = "Issuing";
pub const CLAIMED: &str = "TokenCodeClaimed";
/// Times on an object that should lie in the past are believed up to this far in the future
/// (clock skew between the API server's clients); later ones are ignored.
pub const MAX_SKEW: SignedDuration = SignedDuration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// The code itself

/// An MFA token code: exactly six ASCII digits, parsed from the annotation a human puts on the
/// `SessionToken`. Anything else (surrounding spaces, letters, 5 or 7 digits, a leading `+`,
/// non-ASCII digits) is refused. Deliberately not `Clone`: a code is good for one STS call.
pub struct TokenCode(Sensitive<String>);

impl TokenCode {
    pub fn parse(raw: &str) -> Result<TokenCode, InvalidTokenCode> {
        let problem = if raw.is_empty() {
            "it is empty"
        } else if raw.chars().any(char::is_whitespace) {
            "it contains whitespace"
        } else if !raw.bytes().all(|b| b.is_ascii_digit()) {
            "it contains characters other than the digits 0-9"
        } else if raw.len() != 6 {
            "it does not have exactly six digits"
        } else {
            return Ok(TokenCode(Sensitive::new(raw.to_owned())));
        };
        Err(InvalidTokenCode { problem })
    }

    /// The six digits, for the STS request.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for TokenCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCode(<redacted>)")
    }
}

/// How long a code claimed for use is remembered as spent: a TOTP code belongs to a 30 s step
/// and AWS accepts it one step either side, so it is good for at most 90 s; then a margin.
pub const SPENT_CODE_MEMORY: Duration = Duration::from_secs(150);

/// A salted SHA-256 digest of a token code, never the code itself: the salt is random, made once
/// per process and kept only in its memory, so the digest of a six-digit code cannot be
/// reversed by trying the million codes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CodeDigest([u8; 32]);

impl CodeDigest {
    pub fn of(code: &str) -> Self {
        use sha2::{Digest, Sha256};
        static SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let salt = SALT.get_or_init(rand::random);
        let mut h = Sha256::new();
        h.update(salt);
        h.update(code.as_bytes());
        CodeDigest(h.finalize().into())
    }
}

impl fmt::Debug for CodeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeDigest(<salted>)")
    }
}

/// The last code of a SessionToken claimed for use (what this process remembers of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpentCode {
    pub digest: CodeDigest,
    pub claimed_at: Timestamp,
}

impl SpentCode {
    /// Whether it still matters at `now` (the code could still be valid).
    pub fn current(&self, now: Timestamp) -> bool {
        let until = SignedDuration::try_from(SPENT_CODE_MEMORY)
            .ok()
            .and_then(|d| self.claimed_at.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        now < until
    }
}

/// Why a token code was refused. Never contains the code itself.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("the MFA token code must be exactly six ASCII digits, but {problem}")]
pub struct InvalidTokenCode {
    problem: &'static str,
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
    /// The code this SessionToken last used, set again within its validity (a re-applied
    /// manifest, a GitOps sync): claimed and dropped, no STS call.
    Reused { claimed_at: Timestamp },
}

/// Classifies the code annotation. `set_at` is when the annotation was last written (from
/// `managedFields`); unknown means fresh, since the API server always records it.
pub fn code_state(
    raw_code: Option<&str>,
    has_mfa: bool,
    set_at: Option<Timestamp>,
    now: Timestamp,
    max_age: Duration,
) -> CodeState {
    let Some(raw) = raw_code else {
        return CodeState::Absent;
    };
    if !has_mfa {
        return CodeState::NotNeeded;
    }
    if TokenCode::parse(raw).is_err() {
        return CodeState::Invalid;
    }
    if let Some(set_at) = set_at {
        let age = now.duration_since(set_at);
        if age > SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX) {
            return CodeState::Expired {
                age: age.unsigned_abs(),
            };
        }
    }
    CodeState::Usable
}

/// The time the annotation `key` was last set, from the object's `managedFields`: the newest
/// entry whose field set contains it.
pub fn annotation_set_at(st: &SessionToken, key: &str) -> Option<Timestamp> {
    let needle = format!("f:{key}");
    st.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|mf| {
            mf.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:metadata")
                    .and_then(|m| m.get("f:annotations"))
                    .and_then(|a| a.as_object())
                    .is_some_and(|a| a.contains_key(&needle))
            })
        })
        .filter_map(|mf| mf.time.as_ref().map(|t| t.0))
        .max()
}

/// Annotations of a SessionToken the operator reads; the cache keeps no other.
pub const READ_ANNOTATIONS: [&str; 4] = [
    TOKEN_CODE_ANNOTATION,
    APPROVED_BY_ANNOTATION,
    CLAIMED_AT_ANNOTATION,
    RENEW_ANNOTATION,
];
/// The longest annotation value the cache keeps (a longer one is cut: a code that long is not
/// six digits either way).
pub const MAX_CACHED_VALUE: usize = 1024;

/// Trims a watched SessionToken to what the operator reads before it goes into the cache, so
/// that what a tenant adds to the metadata (which the CRD cannot cap) costs the operator no
/// memory: the annotations [`READ_ANNOTATIONS`] and `extra` only, each at most
/// [`MAX_CACHED_VALUE`] bytes; client-side `kubectl apply`'s copy of the object only as a marker
/// that it holds a token code (for [`ApprovalFacts::code_in_last_applied`]); of `managedFields`
/// only the time the code annotation was last set ([`annotation_set_at`]), as one entry; no
/// labels, finalizers or owner references.
pub fn trim_for_cache(st: &mut SessionToken, extra: &[&str]) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    let code_set_at = annotation_set_at(st, TOKEN_CODE_ANNOTATION);
    let meta = &mut st.metadata;
    if let Some(annotations) = meta.annotations.as_mut() {
        let code_in_copy = annotations
            .get(LAST_APPLIED_ANNOTATION)
            .is_some_and(|copy| copy.contains(TOKEN_CODE_ANNOTATION));
        annotations
            .retain(|k, _| READ_ANNOTATIONS.contains(&k.as_str()) || extra.contains(&k.as_str()));
        for value in annotations.values_mut() {
            if value.len() > MAX_CACHED_VALUE {
                let mut end = MAX_CACHED_VALUE;
                while !value.is_char_boundary(end) {
                    end = end.saturating_sub(1);
                }
                *value = value.get(..end).unwrap_or_default().to_owned();
            }
        }
        if code_in_copy {
            annotations.insert(
                LAST_APPLIED_ANNOTATION.to_owned(),
                TOKEN_CODE_ANNOTATION.to_owned(),
            );
        }
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    meta.managed_fields = code_set_at.map(|time| {
        let mut fields = serde_json::Map::new();
        fields.insert(format!("f:{TOKEN_CODE_ANNOTATION}"), serde_json::json!({}));
        vec![ManagedFieldsEntry {
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:metadata": {"f:annotations": fields}
            }))),
            time: Some(Time(time)),
            ..ManagedFieldsEntry::default()
        }]
    });
    meta.labels = None;
    meta.finalizers = None;
    meta.owner_references = None;
}

/// A time that should lie in the past, believed only up to [`MAX_SKEW`] ahead of `now`.
pub fn past_time(t: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let limit = now.checked_add(MAX_SKEW).unwrap_or(Timestamp::MAX);
    (t <= limit).then_some(t)
}

// ---------------------------------------------------------------------------------------------
// What the object says, parsed and bounded once

/// The approval annotations of a SessionToken, read once (by `observe`) and bounded.
#[derive(Clone, Debug, Default)]
pub struct ApprovalFacts {
    /// `stssession.dev/token-code`, as set (not yet checked).
    pub code: Option<String>,
    /// `stssession.dev/approved-by`.
    pub approved_by: Option<String>,
    /// When the code annotation was set (`managedFields`), if credible.
    pub code_set_at: Option<Timestamp>,
    /// `stssession.dev/token-code-claimed-at`, if it parses and is not in the future.
    pub claimed_at: Option<Timestamp>,
    /// `stssession.dev/renew-requested-at`, as set.
    pub renew: Option<String>,
    /// The code is also in client-side `kubectl apply`'s copy of the object.
    pub code_in_last_applied: bool,
    /// The object's resourceVersion: what a claim tests.
    pub resource_version: String,
}

impl ApprovalFacts {
    pub fn of(st: &SessionToken, now: Timestamp) -> Self {
        let annotations = st.metadata.annotations.as_ref();
        let get = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
        let code = get(TOKEN_CODE_ANNOTATION);
        Self {
            code_in_last_applied: code.is_some()
                && annotations
                    .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
                    .is_some_and(|l| l.contains(TOKEN_CODE_ANNOTATION)),
            code,
            approved_by: get(APPROVED_BY_ANNOTATION),
            code_set_at: annotation_set_at(st, TOKEN_CODE_ANNOTATION)
                .and_then(|t| past_time(t, now)),
            claimed_at: annotations
                .and_then(|a| a.get(CLAIMED_AT_ANNOTATION))
                .and_then(|t| t.parse::<Timestamp>().ok())
                .and_then(|t| past_time(t, now)),
            renew: get(RENEW_ANNOTATION),
            resource_version: st.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Claims

/// One claim of an annotation: a JSON patch that tests the object's resourceVersion (the one
/// the decision was made on: the code, who approved it, everything) and removes the annotation
/// and its companions, so that exactly one claimant wins and a newer value set meanwhile
/// survives; `mark` is an annotation the same patch sets.
///
/// (Not a `test` of the annotations' values: the API server compares a tested string by its
/// JSON text, and Go writes `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026` where serde does
/// not, so a value holding one of them could never be claimed.)
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub key: &'static str,
    pub patch: serde_json::Value,
}

fn annotation_path(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

impl Claim {
    pub fn new(
        key: &'static str,
        resource_version: &str,
        companions: &[&str],
        mark: Option<(&str, String)>,
    ) -> Self {
        let mut ops = vec![
            serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}),
            serde_json::json!({"op": "remove", "path": annotation_path(key)}),
        ];
        for k in companions {
            ops.push(serde_json::json!({"op": "remove", "path": annotation_path(k)}));
        }
        if let Some((k, v)) = mark {
            ops.push(serde_json::json!({"op": "add", "path": annotation_path(k), "value": v}));
        }
        Claim {
            key,
            patch: serde_json::Value::Array(ops),
        }
    }

    /// Whether this claim marks the time of a code's use (the claim of a code to be sent).
    pub fn marks_use(&self) -> bool {
        let path = annotation_path(CLAIMED_AT_ANNOTATION);
        self.patch.as_array().is_some_and(|ops| {
            ops.iter()
                .any(|op| op["op"] == "add" && op["path"] == *path)
        })
    }
}

/// Whether status records the outcome (or the ongoing use) of a code claimed at `claimed_at`:
/// every path after a claim writes an `Issuing` condition, an approval or a failure with the
/// claiming reconcile's time, which is the claim's.
pub fn claim_resolved(status: &SessionTokenStatus, claimed_at: Timestamp) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == ISSUING && c.last_transition_time >= claimed_at)
        || status
            .last_approval
            .as_ref()
            .is_some_and(|a| a.time >= claimed_at)
        || status
            .last_failure
            .as_ref()
            .is_some_and(|f| f.time >= claimed_at)
}

/// A claim of an earlier reconcile that status never resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// None pending.
    No,
    /// The claim may still be in use by another process until `deadline`.
    Pending { deadline: Timestamp },
    /// The process using the code claimed at `claimed_at` died: the code is spent (STS may or
    /// may not have seen it) and the session, if any, is lost.
    Yes { claimed_at: Timestamp },
}

/// Looks for an unresolved claim: on record in status (`Issuing` [`CLAIMED`]) or, if the
/// claiming process died before writing that, in the annotation the claim itself left.
/// `call_timeout` bounds how long a claim may be in use.
pub fn interrupted(
    status: &SessionTokenStatus,
    facts: &ApprovalFacts,
    now: Timestamp,
    call_timeout: Duration,
) -> Interrupted {
    let recorded = status
        .conditions
        .iter()
        .find(|c| c.type_ == ISSUING && c.reason == CLAIMED)
        .map(|c| c.last_transition_time)
        .and_then(|t| past_time(t, now));
    let unrecorded = facts.claimed_at.filter(|t| !claim_resolved(status, *t));
    let Some(claimed_at) = recorded.max(unrecorded) else {
        return Interrupted::No;
    };
    let grace = SignedDuration::try_from(call_timeout)
        .ok()
        .and_then(|d| d.checked_add(SignedDuration::from_secs(10)))
        .unwrap_or(SignedDuration::from_secs(60));
    match claimed_at.checked_add(grace) {
        Ok(deadline) if now < deadline => Interrupted::Pending { deadline },
        _ => Interrupted::Yes { claimed_at },
    }
}

// ---------------------------------------------------------------------------------------------
// The decision about a code

/// What to do about the code annotation now.
#[derive(Debug, Default)]
pub struct CodeDecision {
    /// The claim to make (removes the code, whatever becomes of it).
    pub claim: Option<Claim>,
    /// The code to use for GetSessionToken once claimed.
    pub use_code: Option<TokenCode>,
    /// The approval to record if the code gives a session.
    pub approval: Option<Approval>,
    /// The `Issuing` condition to set: (status, reason, message).
    pub issuing: Option<(&'static str, &'static str, String)>,
    /// Events to publish once the claim succeeded.
    pub events: Vec<Event>,
    /// Do nothing now: come back after this long (a claim must wait for the next second).
    pub wait: Option<Duration>,
    /// The code claimed for use, to remember as spent.
    pub spent: Option<SpentCode>,
}

/// What [`assess`] needs besides the annotations.
pub struct CodeContext<'a> {
    pub has_mfa: bool,
    /// A problem that stops minting: (reason, message).
    pub blocker: Option<(&'static str, &'a str)>,
    /// The blocker leaves a usable code in place, unclaimed, until the spec is mended.
    pub blocker_keeps_code: bool,
    /// The last code claimed for use, as remembered.
    pub spent: Option<SpentCode>,
    pub status: &'a SessionTokenStatus,
    pub now: Timestamp,
    pub max_age: Duration,
}

/// Decides about the code annotation: claim it exactly once, whatever becomes of it, and use it
/// only if it is usable and nothing blocks minting.
pub fn assess(facts: &ApprovalFacts, cx: &CodeContext<'_>) -> CodeDecision {
    let Some(raw) = facts.code.as_deref() else {
        return CodeDecision::default();
    };
    let mut state = code_state(Some(raw), cx.has_mfa, facts.code_set_at, cx.now, cx.max_age);
    if state == CodeState::Usable && cx.blocker.is_some() && cx.blocker_keeps_code {
        return CodeDecision::default();
    }
    let digest = (state == CodeState::Usable).then(|| CodeDigest::of(raw));
    if let Some(spent) = cx
        .spent
        .filter(|s| Some(s.digest) == digest && s.current(cx.now))
    {
        state = CodeState::Reused {
            claimed_at: spent.claimed_at,
        };
    }
    let used = state == CodeState::Usable && cx.blocker.is_none();
    let claimed_at = round_to_second(cx.now);
    if used && claim_resolved(cx.status, claimed_at) {
        // Status already holds something written in this very second, which a claim now could
        // not be told apart from (its times are whole seconds): claim in the next.
        let into_second =
            Duration::from_nanos(u64::try_from(cx.now.subsec_nanosecond()).unwrap_or(0));
        return CodeDecision {
            wait: Some(Duration::from_millis(1020).saturating_sub(into_second)),
            ..CodeDecision::default()
        };
    }
    let companions: &[&str] = match facts.approved_by {
        Some(_) => &[APPROVED_BY_ANNOTATION],
        None => &[],
    };
    let mark = used.then(|| (CLAIMED_AT_ANNOTATION, claimed_at.to_string()));
    let mut decision = CodeDecision {
        claim: Some(Claim::new(
            TOKEN_CODE_ANNOTATION,
            &facts.resource_version,
            companions,
            mark,
        )),
        ..CodeDecision::default()
    };
    if facts.code_in_last_applied {
        decision.events.push(Event::warning(
            "TokenCodeInLastApplied",
            "the token-code annotation was set with client-side `kubectl apply`, which keeps it in the last-applied-configuration annotation; use `kubectl sts approve` or `kubectl annotate`".into(),
        ));
    }
    let dropped = |reason: &'static str, message: String, d: &mut CodeDecision| {
        d.events.push(Event::warning(reason, message.clone()));
        d.issuing = Some(("False", reason, message));
    };
    match state {
        CodeState::Absent => {}
        CodeState::NotNeeded => decision.events.push(Event::warning(
            "TokenCodeIgnored",
            "this SessionToken has no spec.mfa, so it needs no token code; the annotation was removed".into(),
        )),
        CodeState::Invalid => dropped(
            "InvalidTokenCode",
            "the token code must be exactly six digits; it was removed unused".into(),
            &mut decision,
        ),
        CodeState::Expired { age } => dropped(
            "TokenCodeExpired",
            format!(
                "the token code was set {}s ago, longer than the {}s a code is accepted; it was removed unused. Approve again with a fresh code",
                age.as_secs(),
                cx.max_age.as_secs()
            ),
            &mut decision,
        ),
        CodeState::Reused { claimed_at } => dropped(
            "TokenCodeReused",
            format!(
                "the token code is the one used at {claimed_at}, and a code is good for one session; it was removed unused (no STS call). Approve again with the next code from the device"
            ),
            &mut decision,
        ),
        CodeState::Usable => match cx.blocker {
            Some((reason, message)) => dropped(
                reason,
                format!("the token code was removed unused: {message}"),
                &mut decision,
            ),
            None => {
                decision.use_code = TokenCode::parse(raw).ok();
                decision.spent = digest.map(|digest| SpentCode {
                    digest,
                    claimed_at,
                });
                decision.approval = Some(Approval {
                    approved_by: facts.approved_by.clone(),
                    time: claimed_at,
                });
            }
        },
    }
    decision
}

/// Whole seconds: status timestamps are compared across reconciles and must not wobble.
pub fn round_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Condition;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn token_codes_are_six_ascii_digits() {
        assert!(TokenCode::parse("123456").is_ok());
        for bad in [
            "",
            "12345",
            "1234567",
            " 123456",
            "12345a",
            "١٢٣٤٥٦",
            "+12345",
        ] {
            assert!(TokenCode::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            format!("{:?}", TokenCode::parse("123456").unwrap()),
            "TokenCode(<redacted>)"
        );
    }

    #[test]
    fn a_claim_is_resolved_by_anything_status_records_at_or_after_it() {
        let mut status = SessionTokenStatus::default();
        assert!(!claim_resolved(&status, t(10)));
        status.conditions.push(Condition {
            type_: crate::crd::word(ISSUING),
            status: crate::crd::word("True"),
            reason: crate::crd::word("Succeeded"),
            message: String::new(),
            last_transition_time: t(10),
            observed_generation: None,
        });
        assert!(claim_resolved(&status, t(10)));
        assert!(!claim_resolved(&status, t(11)));
        status.last_approval = Some(Approval {
            approved_by: None,
            time: t(12),
        });
        assert!(claim_resolved(&status, t(12)));
    }

    #[test]
    fn claimed_at_far_in_the_future_is_ignored_not_added_to() {
        let st: SessionToken = serde_json::from_value(serde_json::json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": "a", "namespace": "n", "annotations": {
                CLAIMED_AT_ANNOTATION: "9999-12-30T21:59:59Z"}},
            "spec": {"sourceCredentials": {"secretRef": {"name": "k"}}}
        }))
        .unwrap();
        let facts = ApprovalFacts::of(&st, t(0));
        assert_eq!(facts.claimed_at, None);
        let status = SessionTokenStatus::default();
        assert_eq!(
            interrupted(&status, &facts, t(0), Duration::MAX),
            Interrupted::No
        );
    }

    #[test]
    fn the_cache_keeps_only_what_the_operator_reads() {
        let mut st: SessionToken = serde_json::from_value(serde_json::json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": "a", "namespace": "n",
                "labels": {"big": "x".repeat(63)},
                "finalizers": ["example.com/f"],
                "annotations": {
                    TOKEN_CODE_ANNOTATION: "123456",
                    APPROVED_BY_ANNOTATION: "a".repeat(5000),
                    "stssession.dev/other": "x",
                    "example.com/big": "x".repeat(100_000),
                    LAST_APPLIED_ANNOTATION: format!("{{\"{TOKEN_CODE_ANNOTATION}\": \"1\", \"pad\": \"{}\"}}", "x".repeat(10_000)),
                },
                "managedFields": [
                    {"manager": "kubectl", "operation": "Update", "time": "2026-11-23T00:00:05Z",
                     "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:annotations": {
                        format!("f:{TOKEN_CODE_ANNOTATION}"): {}, "f:example.com/big": {}}},
                        "f:spec": {"f:region": {}}}},
                    {"manager": "older", "operation": "Update", "time": "2026-11-23T00:00:01Z",
                     "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:annotations": {
                        format!("f:{TOKEN_CODE_ANNOTATION}"): {}}}}},
                    {"manager": "editor", "operation": "Update", "time": "2026-11-23T00:00:09Z",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:region": {}}}},
                ]},
            "spec": {"sourceCredentials": {"secretRef": {"name": "k"}}}
        }))
        .unwrap();
        let before = ApprovalFacts::of(&st, t(0));
        trim_for_cache(&mut st, &[]);
        let after = ApprovalFacts::of(&st, t(0));
        assert_eq!(after.code, before.code);
        assert_eq!(after.code_set_at, before.code_set_at);
        assert!(after.code_set_at.is_some());
        assert!(after.code_in_last_applied && before.code_in_last_applied);
        assert_eq!(after.approved_by.as_deref().map(str::len), Some(1024));
        let annotations = st.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.len(), 3, "{:?}", annotations.keys());
        assert!(st.metadata.labels.is_none() && st.metadata.finalizers.is_none());
        assert_eq!(st.metadata.managed_fields.as_ref().map(Vec::len), Some(1));
        assert!(serde_json::to_string(&st).unwrap().len() < 3000);
    }

    #[test]
    fn a_blocker_that_keeps_the_code_leaves_it_unclaimed() {
        let status = SessionTokenStatus::default();
        let facts = ApprovalFacts {
            code: Some("123456".into()),
            code_set_at: Some(t(0)),
            resource_version: "7".into(),
            ..ApprovalFacts::default()
        };
        let cx = |keeps: bool| CodeContext {
            has_mfa: true,
            blocker: Some(("EndpointRegionMismatch", "spec.endpoint is in region x")),
            blocker_keeps_code: keeps,
            spent: None,
            status: &status,
            now: t(1),
            max_age: Duration::from_secs(90),
        };
        let kept = assess(&facts, &cx(true));
        assert!(kept.claim.is_none() && kept.use_code.is_none() && kept.issuing.is_none());
        // Other blockers remove it unused.
        let dropped = assess(&facts, &cx(false));
        assert!(dropped.claim.is_some_and(|c| !c.marks_use()) && dropped.use_code.is_none());
    }

    #[test]
    fn the_claim_tests_the_object_it_was_decided_on_and_removes_who_approved() {
        let claim = Claim::new(
            TOKEN_CODE_ANNOTATION,
            "42",
            &[APPROVED_BY_ANNOTATION],
            Some((CLAIMED_AT_ANNOTATION, "t".into())),
        );
        let ops = claim.patch.as_array().unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["path"], "/metadata/resourceVersion");
        assert_eq!(ops[0]["value"], "42");
        assert_eq!(ops[1]["op"], "remove");
        assert_eq!(
            ops[2]["path"],
            "/metadata/annotations/stssession.dev~1approved-by"
        );
        assert!(claim.marks_use());
        let _: json_patch::Patch = serde_json::from_value(claim.patch).unwrap();
    }
}
