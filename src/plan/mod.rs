//! Decisions: pure, total functions of what `observe` read ([`Facts`]) and the clock in it.
//!
//! A reconcile is two decisions around at most one STS call:
//! - [`decide`]: the claims to make (a code, a renewal request), the status recording a claimed
//!   code before it is used, and the one STS call, if any ([`Plan`]);
//! - [`settle`]: given what the call returned ([`Outcome`]), the Secrets to write or delete, the
//!   restarts, the status, the Events, what to remember, the metrics and the next wake-up
//!   ([`Effects`]).
//!
//! `act` (src/reconcile/act.rs) carries them out. Nothing here does I/O, reads a clock or can
//! panic on what a tenant wrote: every time derived from an object is computed with checked
//! arithmetic (src/plan/timing.rs), every count saturates.

mod assumed;
mod conditions;
mod consumers;
mod role;
mod session;
#[cfg(test)]
mod tests;
mod timing;

pub use crate::approval::{CodeState, annotation_set_at, code_state};
pub use assumed::*;
pub use conditions::*;
pub use consumers::*;
pub use role::*;
pub use session::*;
pub use timing::*;

use crate::approval::{
    self, ApprovalFacts, CLAIMED, Claim, CodeContext, Interrupted, SpentCode, TokenCode,
};
use crate::crd::{Approval, AssumeRoleSpec, Failure, RoleStatus, SessionToken, SessionTokenStatus};
use crate::credentials::Credentials;
use crate::events::Event;
use crate::metrics::SessionMetrics;
use crate::secret::{self, LongTermKeys, Ownership, SourceProblem};
use crate::sts::{AssumedRole, StsError};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// What is known

/// A problem with the spec or its inputs that stops minting.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocker {
    pub reason: &'static str,
    pub message: String,
}

/// The reason of a `spec.endpoint` in another region than the requests are signed for.
pub const ENDPOINT_REGION_MISMATCH: &str = "EndpointRegionMismatch";

impl Blocker {
    /// Whether a code set meanwhile stays on the object, unclaimed, for when the spec is
    /// mended (a mistake in the spec found before any call), rather than being removed unused.
    pub fn keeps_code(&self) -> bool {
        self.reason == ENDPOINT_REGION_MISMATCH
    }
}

/// A Secret the reconcile may write, as observed, and whose it is.
#[derive(Clone, Debug)]
pub struct SecretSeen {
    pub name: String,
    pub existing: Option<Secret>,
    pub ownership: Ownership,
}

impl SecretSeen {
    /// The write that makes this Secret `desired`: a create where there is none, an apply
    /// guarded by its resourceVersion where it is ours, and never anything where it is
    /// someone else's.
    pub fn write(&self, desired: Secret, new_credentials: bool) -> Option<SecretWrite> {
        let mode = match (&self.ownership, &self.existing) {
            (Ownership::Foreign(_), _) => return None,
            (Ownership::Absent, _) | (_, None) => WriteMode::Create,
            (Ownership::Ours, Some(s)) => WriteMode::Apply {
                resource_version: s.metadata.resource_version.clone(),
            },
        };
        Some(SecretWrite {
            name: self.name.clone(),
            mode,
            desired,
            new_credentials,
        })
    }

    /// The same, only if the Secret is not what `desired` says already.
    pub fn repair(&self, desired: Secret) -> Option<SecretWrite> {
        match &self.existing {
            Some(s) if secret::is_up_to_date(s, &desired) => None,
            _ => self.write(desired, false),
        }
    }

    pub fn is_foreign(&self) -> bool {
        matches!(self.ownership, Ownership::Foreign(_))
    }

    pub fn ours(&self) -> Option<&Secret> {
        self.existing
            .as_ref()
            .filter(|_| self.ownership == Ownership::Ours)
    }
}

/// What this process remembers of one SessionToken between reconciles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Remembered {
    /// A session minted but not yet written (the Secret write failed): written on the next try
    /// instead of spending another STS call, or another code.
    pub unsaved: Option<(Credentials, Option<Approval>)>,
    /// (renewal time, period) of the last `TokenCodeRequired` event sent.
    pub code_required_sent: Option<(Timestamp, u64)>,
    /// Expiration whose `Expired` event was sent.
    pub expired_sent: Option<Timestamp>,
    /// Consecutive reconciles that found the source Secret missing or unusable.
    pub source_misses: u32,
    /// When a renewal request (`kubectl sts renew`) was last honoured.
    pub renewed_on_request: Option<Timestamp>,
    /// The last code claimed for use (a salted digest), while it could still be valid: the
    /// same code set again is removed unused.
    pub spent_code: Option<SpentCode>,
}

/// Everything one reconcile knows: the SessionToken, its Secrets, the source keys, restart
/// targets, this process's memory of it, the settings and the clock. Built by `observe`,
/// which parses and bounds what the object says.
#[derive(Clone, Debug)]
pub struct Facts {
    pub st: Arc<SessionToken>,
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub now: Timestamp,
    pub timing: Timing,
    /// This process (pod) name, for claim messages.
    pub instance: String,
    /// How long one STS call may take.
    pub call_timeout: Duration,
    /// `status`, with every time that should lie in the past and is beyond the clock's skew
    /// dropped, and counts bounded.
    pub status: SessionTokenStatus,
    pub approval: ApprovalFacts,
    /// The output Secret.
    pub out: SecretSeen,
    /// The Secret that held the session before a rename (at `status.secretName`), if ours.
    pub old: Option<Secret>,
    /// The Secret keeping the session for `spec.assumeRole`.
    pub kept: SecretSeen,
    pub keys: Result<LongTermKeys, SourceProblem>,
    pub region: String,
    pub endpoint: Option<String>,
    pub blocker: Option<Blocker>,
    pub memory: Remembered,
    pub targets: Vec<TargetSeen>,
}

impl Facts {
    pub fn has_mfa(&self) -> bool {
        self.st.spec.mfa.is_some()
    }

    pub fn assume_role(&self) -> Option<&AssumeRoleSpec> {
        self.st.spec.assume_role.as_deref()
    }

    /// Where the session lives: the kept-session Secret with `spec.assumeRole`, else the output.
    pub fn session_home(&self) -> &SecretSeen {
        match self.assume_role() {
            Some(_) => &self.kept,
            None => &self.out,
        }
    }

    /// Whether the Secret the session lives in may be written.
    fn may_write_session_home(&self) -> bool {
        match self.assume_role() {
            Some(_) => {
                !self.kept.is_foreign()
                    && self.kept.name != self.out.name
                    && self.kept.name != self.st.spec.source_credentials.secret_ref.name
            }
            None => !self.out.is_foreign(),
        }
    }

    fn blocker_pair(&self) -> Option<(&'static str, &str)> {
        self.blocker
            .as_ref()
            .map(|b| (b.reason, b.message.as_str()))
    }

    fn approve_hint(&self) -> String {
        format!(
            "approve with `kubectl sts approve {} -n {}`",
            self.name, self.ns
        )
    }

    /// The session on record (status) that its Secret still holds: the kept one with a role,
    /// else the output Secret's (or, during a rename, the old one's).
    pub fn held_session(&self) -> Option<Credentials> {
        let recorded = |s: &Credentials| {
            Some(&s.access_key_id) == self.status.access_key_id.as_ref()
                && Some(s.expiration) == self.status.expiration
        };
        let kept = self
            .kept
            .ours()
            .and_then(secret::kept_session)
            .filter(recorded);
        kept.or_else(|| {
            self.old
                .as_ref()
                .or(self.out.ours())
                .and_then(|s| secret::held_session(s, &self.st))
                .filter(recorded)
        })
    }

    fn session_state(&self, held: bool) -> SessionState {
        session_state(
            self.status.expiration,
            self.status.renewal_time,
            held,
            self.now,
        )
    }

    fn session_hash(&self) -> Option<String> {
        self.keys.as_ref().ok().map(|k| {
            session_hash(
                &self.st.spec,
                &self.region,
                self.endpoint.as_deref(),
                &k.access_key_id,
            )
        })
    }

    /// When a failed mint may be retried (status times are bounded by `observe`).
    fn retry_time(&self) -> Option<Timestamp> {
        retry_time(&self.status, &self.timing, &self.uid)
    }

    fn jitter_seed(&self, expiration: Timestamp) -> String {
        format!("{}/{expiration}", self.uid)
    }
}

/// When a failed mint may be retried: the backoff after the last failure.
pub fn retry_time(status: &SessionTokenStatus, timing: &Timing, seed: &str) -> Option<Timestamp> {
    let failure = status.last_failure.as_ref()?;
    let attempts = u32::try_from(status.failed_attempts)
        .ok()
        .filter(|a| *a > 0)?;
    Some(at_or_max(failure.time, backoff(attempts, timing, seed)))
}

/// `t + d`, or the end of time if that overflows.
pub fn at_or_max(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

// ---------------------------------------------------------------------------------------------
// The first decision: claims and the call

/// The one STS call of a reconcile.
#[derive(Debug)]
pub enum Call {
    /// GetSessionToken with the source keys, and the claimed code with spec.mfa.
    GetSessionToken {
        code: Option<TokenCode>,
        why: &'static str,
    },
    /// AssumeRole with the session at hand.
    AssumeRole {
        session: Credentials,
        duration_seconds: i32,
        why: &'static str,
    },
}

/// What [`decide`] found that [`settle`] builds on.
#[derive(Clone, Debug)]
pub struct Draft {
    status: SessionTokenStatus,
    events: Vec<Event>,
    claim_deadline: Option<Timestamp>,
    approval: Option<Approval>,
    held: Option<Credentials>,
    session_state: SessionState,
    hash: Option<String>,
    /// When a deferred renewal request (or code) is looked at again.
    later: Option<Timestamp>,
    /// A renewal request is honoured in this reconcile.
    renewal_requested: bool,
    /// The code claimed for use in this reconcile.
    spent: Option<SpentCode>,
}

/// The first half of a reconcile's decisions.
#[derive(Debug)]
pub struct Plan {
    /// Do nothing now but come back after this long.
    pub wait: Option<Duration>,
    /// Annotation claims, in order; if one is refused (someone else claimed it, or it changed),
    /// the reconcile ends and comes back in a second.
    pub claims: Vec<Claim>,
    /// Status recording a claimed code before it is used: if the process dies during the call,
    /// the next reconcile can tell that the code may be spent.
    pub record_claim: Option<SessionTokenStatus>,
    pub call: Option<Call>,
    pub draft: Draft,
}

/// Decides the claims and the STS call. Total: any `Facts` gives a plan.
pub fn decide(f: &Facts) -> Plan {
    let mut status = f.status.clone();
    let claim_deadline = interrupted_claim(f, &mut status);
    let code = approval::assess(
        &f.approval,
        &CodeContext {
            has_mfa: f.has_mfa(),
            blocker: f.blocker_pair(),
            blocker_keeps_code: f.blocker.as_ref().is_some_and(Blocker::keeps_code),
            spent: f.memory.spent_code,
            status: &f.status,
            now: f.now,
            max_age: f.timing.token_code_max_age,
        },
    );
    let held = f.held_session();
    let session_state = f.session_state(held.is_some());
    let hash = f.session_hash();
    let mut draft = Draft {
        status,
        events: code.events,
        claim_deadline,
        approval: code.approval,
        held,
        session_state,
        hash,
        later: None,
        renewal_requested: false,
        spent: None,
    };
    let mut plan = Plan {
        wait: code.wait,
        claims: Vec::new(),
        record_claim: None,
        call: None,
        draft: draft.clone(),
    };
    if plan.wait.is_some() {
        return plan;
    }
    let mut use_code = code.use_code;
    if use_code.is_some() && f.memory.unsaved.is_some() {
        // A session minted earlier waits to be written: write it first; the code stays for the
        // next reconcile (it is not claimed).
        use_code = None;
        draft.approval = None;
        draft.later = Some(at_or_max(f.now, Duration::from_secs(1)));
    } else {
        plan.claims.extend(code.claim);
        draft.spent = code.spent;
        if let Some(v) = code.issuing {
            set_condition(
                &mut draft.status.conditions,
                approval::ISSUING,
                v,
                f.generation,
                f.now,
            );
        }
    }
    let auto_reason = renewal_request(f, &mut plan.claims, &mut draft);
    let mint = match (&use_code, auto_reason) {
        (Some(_), _) => Some("approved"),
        (None, Some(why)) if f.memory.unsaved.is_none() => Some(why),
        _ => None,
    };
    let ready_to_mint = f.keys.is_ok() && f.blocker.is_none();
    plan.call = match mint {
        Some(why) if ready_to_mint => {
            if use_code.is_some() {
                plan.record_claim = Some(claim_record(f, &mut draft.status));
            }
            Some(Call::GetSessionToken {
                code: use_code,
                why,
            })
        }
        _ => role_call(f, &draft),
    };
    plan.draft = draft;
    plan
}

/// Step 0: a claim never resolved means the process using the code died. Returns the deadline
/// of a claim that may still be in use.
fn interrupted_claim(f: &Facts, status: &mut SessionTokenStatus) -> Option<Timestamp> {
    match approval::interrupted(status, &f.approval, f.now, f.call_timeout) {
        Interrupted::No => None,
        Interrupted::Pending { deadline } => Some(deadline),
        Interrupted::Yes { claimed_at } => {
            set_condition(
                &mut status.conditions,
                approval::ISSUING,
                (
                    "False",
                    "Interrupted",
                    format!(
                        "the operator stopped while using the token code claimed at {claimed_at}; that code may have been spent and its session, if STS issued one, is lost. Approve again with a new code"
                    ),
                ),
                f.generation,
                f.now,
            );
            None
        }
    }
}

/// `kubectl sts renew`: a new session now, once, where no code is needed; at most one request
/// a minute is honoured (this process remembers when), and none before a failure's backoff is
/// over: the request waits on the object until then. Returns why a session is minted without a code.
fn renewal_request(f: &Facts, claims: &mut Vec<Claim>, draft: &mut Draft) -> Option<&'static str> {
    let hash_matches = draft.hash.is_some() && draft.hash == f.status.session_hash;
    let auto = (!f.has_mfa())
        .then(|| automatic_mint_reason(&draft.session_state, hash_matches))
        .flatten();
    let spec_changed = f.status.observed_generation != f.generation;
    let retry_at = f.retry_time().filter(|_| !spec_changed);
    let may_retry = retry_at.is_none_or(|t| f.now >= t);
    if f.approval.renew.is_none() {
        return auto.filter(|_| may_retry);
    };
    if f.has_mfa() {
        claims.push(Claim::new(
            approval::RENEW_ANNOTATION,
            &f.approval.resource_version,
            &[],
            None,
        ));
        draft.events.push(Event::warning(
            "RenewNeedsTokenCode",
            format!(
                "this SessionToken has spec.mfa: a new session needs a code; use `kubectl sts approve {} -n {}`",
                f.name, f.ns
            ),
        ));
        return None;
    }
    let last_request = f
        .memory
        .renewed_on_request
        .map(|t| at_or_max(t, RENEWAL_REQUEST_INTERVAL));
    let allowed_at = retry_at.max(last_request);
    match allowed_at {
        Some(at) if f.now < at => {
            draft.later = Some(at);
            auto.filter(|_| may_retry)
        }
        _ => {
            claims.push(Claim::new(
                approval::RENEW_ANNOTATION,
                &f.approval.resource_version,
                &[],
                None,
            ));
            draft.renewal_requested = true;
            Some("renewal requested")
        }
    }
}

/// A renewal request (`kubectl sts renew`) is honoured at most this often.
pub const RENEWAL_REQUEST_INTERVAL: Duration = Duration::from_secs(60);

/// The status that records a claimed code before it is used (`Issuing=Unknown`,
/// `TokenCodeClaimed`); `status` becomes it.
fn claim_record(f: &Facts, status: &mut SessionTokenStatus) -> SessionTokenStatus {
    // A new claim has its own time, even over an unresolved one (its deadline).
    status.conditions.retain(|c| c.type_ != approval::ISSUING);
    set_condition(
        &mut status.conditions,
        approval::ISSUING,
        (
            "Unknown",
            CLAIMED,
            format!("a token code was claimed by {}; calling STS", f.instance),
        ),
        f.generation,
        f.now,
    );
    status.clone()
}

/// The role's credentials to assume now, if no session is minted in this reconcile.
fn role_call(f: &Facts, draft: &Draft) -> Option<Call> {
    let spec = f.assume_role()?;
    if f.role_blocker().is_some() || !f.approved_for_spec(&draft.status) {
        return None;
    }
    let session = draft.held.clone()?;
    match role_decision(f, spec, &draft.status, Some(&session)) {
        RoleAction::Assume {
            duration_seconds,
            why,
        } => Some(Call::AssumeRole {
            session,
            duration_seconds,
            why,
        }),
        _ => None,
    }
}

impl Facts {
    /// [`approval_scope`] of the spec as it is now.
    pub fn approval_scope(&self) -> String {
        approval_scope(&self.st.spec, &self.region, self.endpoint.as_deref())
    }

    /// With `mfa`: whether the session `status` records was approved for what the spec now
    /// uses it for (`status.approvedFor`). A session recorded before that field existed counts
    /// as approved for the role it was last used for.
    pub fn approved_for_spec(&self, status: &SessionTokenStatus) -> bool {
        if !self.has_mfa() {
            return true;
        }
        match (&status.approved_for, self.assume_role()) {
            (Some(digest), _) => *digest == self.approval_scope(),
            (None, None) => true,
            (None, Some(spec)) => status
                .role
                .as_ref()
                .and_then(|r| r.role_arn.as_ref())
                .is_some_and(|arn| *arn == spec.role_arn),
        }
    }

    /// Problems that stop AssumeRole: those of the source keys do not (the session is at hand).
    fn role_blocker(&self) -> Option<(&'static str, &str)> {
        self.blocker_pair()
            .filter(|(reason, _)| !reason.starts_with("SourceCredentials"))
    }

    fn role_session_name(&self, spec: &AssumeRoleSpec) -> String {
        spec.role_session_name
            .clone()
            .unwrap_or_else(|| default_role_session_name(&self.ns, &self.name))
    }

    /// The role layer's view of this SessionToken (`spec.assumeRole`).
    fn role_subject<'a>(&'a self, spec: &'a AssumeRoleSpec) -> RoleSubject<'a> {
        RoleSubject {
            spec,
            role_session_name: self.role_session_name(spec),
            renewal: self.st.spec.renewal.as_ref(),
            out_name: &self.out.name,
            uid: &self.uid,
            timing: &self.timing,
            now: self.now,
        }
    }

    /// The output Secret holds the role credentials `role` records.
    fn role_held(&self, role: &RoleStatus) -> bool {
        self.out
            .ours()
            .and_then(|s| secret::held_session(s, &self.st))
            .is_some_and(|r| {
                Some(&r.access_key_id) == role.access_key_id.as_ref()
                    && Some(r.expiration) == role.expiration
            })
    }
}

fn role_decision(
    f: &Facts,
    spec: &AssumeRoleSpec,
    status: &SessionTokenStatus,
    session: Option<&Credentials>,
) -> RoleAction {
    let role = status.role.as_deref().cloned().unwrap_or_default();
    f.role_subject(spec).action(
        &role,
        f.role_held(&role),
        session.map(|s| (s.expiration, s.access_key_id.as_str())),
        status.observed_generation != f.generation,
    )
}

// ---------------------------------------------------------------------------------------------
// The second decision: what to write

/// What the STS call of the plan returned.
#[derive(Debug)]
pub enum Outcome {
    NoCall,
    Session(Result<Credentials, StsError>),
    Role(Result<AssumedRole, StsError>),
}

/// How a Secret is written.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteMode {
    /// Created: there is none (a namesake created meanwhile makes the create fail).
    Create,
    /// Server-side applied over ours, guarded by the resourceVersion it was read at.
    Apply { resource_version: Option<String> },
}

/// One Secret to write.
#[derive(Clone, Debug)]
pub struct SecretWrite {
    pub name: String,
    pub mode: WriteMode,
    pub desired: Secret,
    /// It carries credentials just issued (not a repair of what it held).
    pub new_credentials: bool,
}

/// One Secret of ours to delete (a precondition on its UID).
#[derive(Clone, Debug, PartialEq)]
pub struct SecretDelete {
    pub name: String,
    pub uid: Option<String>,
}

/// Which STS call a metric counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    GetSessionToken,
    AssumeRole,
}

/// The second half of a reconcile's decisions: what `act` writes, in order (Secrets, deletes,
/// restarts, status, Events), what to remember, and when to come back.
#[derive(Clone, Debug)]
pub struct Effects {
    pub writes: Vec<SecretWrite>,
    pub deletes: Vec<SecretDelete>,
    pub restarts: Vec<Restart>,
    /// Restart targets that could not be read (their problems go into `RolloutRestart` with
    /// those of the restarts).
    pub target_problems: Vec<TargetProblem>,
    /// For the `RolloutRestart` condition: the credentials the targets run.
    pub restart_for: Option<String>,
    pub status: SessionTokenStatus,
    pub events: Vec<Event>,
    pub memory: Remembered,
    pub metrics: SessionMetrics,
    pub call_metric: Option<(CallKind, &'static str)>,
    pub wake: Option<Timestamp>,
    /// A session to keep in memory if writing it (its Secret or the status) fails.
    pub keep_unsaved: Option<(Credentials, Option<Approval>)>,
    /// Status as it was before the new session was recorded: what is written, with
    /// [`secret_write_refused`], if the API server refuses the Secret.
    pub status_before_write: Option<SessionTokenStatus>,
}

/// Status when the API server refused to write a new session's Secret (an invalid label from
/// spec.secret, a Secret too large, no permission): a refusal that will recur must show in
/// status, not only in the log. `message` is the API server's, already redacted.
pub fn secret_write_refused(
    f: &Facts,
    before: &SessionTokenStatus,
    message: &str,
) -> SessionTokenStatus {
    let mut status = before.clone();
    let message = format!(
        "a new session was minted but the Secret {} could not be written (kept in memory, retried): {message}",
        f.session_home().name
    );
    set_condition(
        &mut status.conditions,
        approval::ISSUING,
        ("False", "SecretWriteFailed", message.clone()),
        f.generation,
        f.now,
    );
    let valid = f.session_state(f.held_session().is_some()).is_valid();
    if !valid {
        set_condition(
            &mut status.conditions,
            READY,
            ("False", "SecretWriteFailed", message),
            f.generation,
            f.now,
        );
    }
    status.observed_generation = f.generation;
    status
}

/// Decides what to write, given what the plan's call returned. Total: any `Facts`, plan and
/// outcome give effects.
pub fn settle(f: &Facts, draft: Draft, outcome: Outcome) -> Effects {
    let mut fx = Effects {
        writes: Vec::new(),
        deletes: Vec::new(),
        restarts: Vec::new(),
        target_problems: Vec::new(),
        restart_for: None,
        status: draft.status.clone(),
        events: draft.events.clone(),
        memory: Remembered {
            unsaved: None,
            // Forgotten once it no longer limits anything.
            renewed_on_request: match draft.renewal_requested {
                true => Some(f.now),
                false => f
                    .memory
                    .renewed_on_request
                    .filter(|t| f.now < at_or_max(*t, RENEWAL_REQUEST_INTERVAL)),
            },
            spent_code: draft
                .spent
                .or(f.memory.spent_code)
                .filter(|s| s.current(f.now)),
            ..f.memory.clone()
        },
        metrics: SessionMetrics::default(),
        call_metric: None,
        wake: None,
        keep_unsaved: None,
        status_before_write: None,
    };
    let (session_outcome, role_outcome) = match outcome {
        Outcome::NoCall => (None, None),
        Outcome::Session(r) => (Some(r), None),
        Outcome::Role(r) => (None, Some(r)),
    };
    let current = settle_session(f, &draft, session_outcome, &mut fx);
    let role = settle_role(f, current.as_ref(), role_outcome, &mut fx);
    if let Some(old) = f
        .old
        .as_ref()
        .filter(|_| fx.status.secret_name.as_deref() == Some(f.out.name.as_str()))
    {
        // A rename: the old output Secret goes once the new one holds the credentials.
        fx.deletes.push(SecretDelete {
            name: old.metadata.name.clone().unwrap_or_default(),
            uid: old.metadata.uid.clone(),
        });
    }
    let holds = match &role {
        Some(r) => r.valid,
        None => current.is_some(),
    };
    settle_consumers(f, holds, &mut fx);
    let state = match &current {
        Some(_) => session_state(fx.status.expiration, fx.status.renewal_time, true, f.now),
        None => draft.session_state.clone(),
    };
    let next_event = settle_conditions(f, &state, role.as_ref(), &mut fx);
    fx.wake = wake_up(f, &draft, role.as_ref(), next_event, &mut fx);
    fx
}

/// The session: a new one written, or the current one moved or repaired. Returns the session
/// the Secret holds after the writes.
fn settle_session(
    f: &Facts,
    draft: &Draft,
    outcome: Option<Result<Credentials, StsError>>,
    fx: &mut Effects,
) -> Option<Credentials> {
    let new = match outcome {
        Some(Ok(creds)) => {
            fx.call_metric = Some((CallKind::GetSessionToken, crate::sts::OUTCOME_SUCCESS));
            Some((creds, draft.approval.clone()))
        }
        Some(Err(e)) => {
            mint_failed(f, &e, draft.approval.is_some(), fx);
            None
        }
        None => f.memory.unsaved.clone(),
    };
    let home = f.session_home();
    let desired = |s: &Credentials| match f.assume_role() {
        Some(_) => secret::desired_session_secret(&f.st, &home.name, s),
        None => secret::desired_secret(&f.st, &home.name, s),
    };
    if let Some((session, approval)) = new {
        match home.write(desired(&session), true) {
            Some(w) if f.may_write_session_home() => fx.writes.push(w),
            // Someone else's Secret is in the way (a blocker says so): keep the session.
            _ => {
                fx.memory.unsaved = Some((session, approval));
                return draft.held.clone();
            }
        }
        fx.keep_unsaved = Some((session.clone(), approval.clone()));
        fx.status_before_write = Some(fx.status.clone());
        record_session(f, draft, &session, approval, fx);
        return Some(session);
    }
    let held = draft.held.clone()?;
    if f.may_write_session_home()
        && let Some(w) = home.repair(desired(&held))
    {
        fx.writes.push(w);
        match f.assume_role() {
            Some(_) => fx.status.session_secret_name = Some(home.name.clone()),
            None => fx.status.secret_name = Some(home.name.clone()),
        }
    }
    Some(held)
}

/// Status and Events for a new session written to its Secret.
fn record_session(
    f: &Facts,
    draft: &Draft,
    session: &Credentials,
    approval: Option<Approval>,
    fx: &mut Effects,
) {
    let status = &mut fx.status;
    let issued_at = round_to_second(f.now);
    status.expiration = Some(session.expiration);
    status.issued_at = Some(issued_at);
    status.renewal_time = Some(renewal_time(
        issued_at,
        session.expiration,
        f.st.spec.renewal.as_ref(),
        &f.timing,
        &f.jitter_seed(session.expiration),
    ));
    status.access_key_id = Some(session.access_key_id.clone());
    let home = f.session_home().name.clone();
    match f.assume_role() {
        Some(_) => {
            status.session_secret_name = Some(home.clone());
            // A new session is a new chance for the role: no backoff from the old one's.
            if let Some(role) = status.role.as_mut() {
                role.failed_attempts = 0;
            }
        }
        None => status.secret_name = Some(home.clone()),
    }
    status.session_hash = draft.hash.clone();
    status.approved_for = match (f.has_mfa(), &approval) {
        (true, Some(_)) => Some(f.approval_scope()),
        _ => None,
    };
    status.rotations = status.rotations.saturating_add(1);
    status.failed_attempts = 0;
    status.last_failure = None;
    let approved = approval.is_some();
    if approved {
        status.last_approval = approval;
    }
    set_condition(
        &mut status.conditions,
        approval::ISSUING,
        (
            "True",
            "Succeeded",
            format!(
                "session {} issued, expires {}",
                session.access_key_id, session.expiration
            ),
        ),
        f.generation,
        f.now,
    );
    // The first session of a SessionToken without an approval gets no Event: `Ready` and
    // `Issuing` say it, and a cold start of many would spend a request on each (issue 17).
    // Approvals (who approved) and rotations (a new key in the Secret) keep theirs.
    if approved || f.status.rotations > 0 {
        fx.events.push(Event::normal(
            "Issued",
            format!(
                "session {} written to Secret {home}, expires {}",
                session.access_key_id, session.expiration
            ),
        ));
    }
}

/// Status and Events for a failed GetSessionToken.
fn mint_failed(f: &Facts, e: &StsError, with_code: bool, fx: &mut Effects) {
    if e.was_sent() {
        fx.call_metric = Some((CallKind::GetSessionToken, e.metric_outcome()));
    }
    let status = &mut fx.status;
    status.failed_attempts = status.failed_attempts.saturating_add(1).max(1);
    let mut message = truncate(&e.to_string(), 500);
    if with_code && !e.was_sent() {
        // STS never saw the code: it was not spent, only removed.
        message.push_str("; the token code was removed unused");
    }
    status.last_failure = Some(Failure {
        time: round_to_second(f.now),
        reason: e.reason().into(),
        message: message.clone(),
    });
    set_condition(
        &mut status.conditions,
        approval::ISSUING,
        ("False", e.reason(), message),
        f.generation,
        f.now,
    );
    let attempts = u32::try_from(status.failed_attempts).unwrap_or(1);
    let retry = backoff(attempts, &f.timing, &f.uid);
    let note = match (with_code, e.was_sent()) {
        (true, true) => format!("{e}. The code was used up: approve again with a new code"),
        (true, false) => {
            format!("{e}. The code was removed unused (STS never saw it): approve again")
        }
        (false, _) if f.has_mfa() => format!("{e}"),
        (false, _) => format!("{e}; retrying in {}s", retry.as_secs()),
    };
    fx.events.push(Event::warning(e.reason(), note));
}

/// With spec.assumeRole: the role's credentials, assumed in this reconcile or held; without it,
/// the Secret that kept a session goes. Returns what the role layer found (None without role).
fn settle_role(
    f: &Facts,
    session: Option<&Credentials>,
    outcome: Option<Result<AssumedRole, StsError>>,
    fx: &mut Effects,
) -> Option<RoleOutcome> {
    let Some(spec) = f.assume_role() else {
        if !f.out.is_foreign()
            && let Some(kept) = f.kept.ours()
        {
            // spec.assumeRole removed: the session is back in the output Secret (written
            // first), so the Secret that kept it goes.
            fx.deletes.push(SecretDelete {
                name: f.kept.name.clone(),
                uid: kept.metadata.uid.clone(),
            });
            fx.status.session_secret_name = None;
            fx.status.role = None;
            fx.status.conditions.retain(|c| c.type_ != ROLE_ASSUMED);
        }
        return None;
    };
    let mut role: RoleStatus = fx.status.role.as_deref().cloned().unwrap_or_default();
    let action = role_decision(f, spec, &fx.status, session);
    let widened = !f.approved_for_spec(&fx.status);
    if f.has_mfa() && !widened && fx.status.approved_for.is_none() && session.is_some() {
        // Recorded before status.approvedFor: from now on, changes are measured against this.
        fx.status.approved_for = Some(f.approval_scope());
    }
    let mut assumed_now = false;
    match outcome {
        Some(Ok(assumed)) => {
            fx.call_metric = Some((CallKind::AssumeRole, crate::sts::OUTCOME_SUCCESS));
            if let (Some(session), Some(w)) = (
                session,
                f.out.write(
                    secret::desired_secret(&f.st, &f.out.name, &assumed.credentials),
                    true,
                ),
            ) {
                fx.writes.push(w);
                role = role_assumed(f, spec, &role, session, &assumed, &action, fx);
                assumed_now = true;
            }
        }
        Some(Err(e)) => role_failed(f, spec, &mut role, &e, fx),
        None => {}
    }
    let valid = (f.role_held(&role) || assumed_now) && role.expiration.is_some_and(|e| e > f.now);
    let verdict = match widened && session.is_some() {
        true => spec_changed_since_approval(f, &role, fx),
        false => role_condition(
            spec,
            &role,
            &action,
            RoleFacts {
                assumed_now,
                valid,
                blocker: f.role_blocker(),
                approve_hint: f.has_mfa().then(|| f.approve_hint()),
            },
        ),
    };
    let widened = widened && session.is_some();
    let valid = valid && !widened;
    set_condition(
        &mut fx.status.conditions,
        ROLE_ASSUMED,
        verdict.clone(),
        f.generation,
        f.now,
    );
    // A changed spec waits for an approval (a watch event), not for a time.
    let next = (!widened)
        .then(|| role_wake(f, spec, &role, &action, assumed_now))
        .flatten();
    let renewal = role.renewal_time.filter(|_| valid);
    fx.status.role = Some(Box::new(role));
    let (_, reason, message) = verdict;
    Some(RoleOutcome {
        valid,
        renewal,
        next,
        reason,
        message,
    })
}

/// `RoleAssumed=False/SpecChangedSinceApproval`: the spec changed, since the session was
/// approved, in what the session is used for; the session is not used for it until a new
/// approval. A Warning Event when it starts.
fn spec_changed_since_approval(f: &Facts, role: &RoleStatus, fx: &mut Effects) -> Verdict {
    let approved = f
        .status
        .last_approval
        .as_ref()
        .map(|a| match &a.approved_by {
            Some(by) => format!(" (approved at {} by {})", a.time, truncate(by, 100)),
            None => format!(" (approved at {})", a.time),
        })
        .unwrap_or_default();
    let held = match role.expiration.filter(|e| *e > f.now) {
        Some(e) => format!("; the Secret keeps the credentials of the role as approved until {e}"),
        None => String::new(),
    };
    let message = format!(
        "spec.assumeRole.roleArn, its externalId, spec.sourceCredentials, spec.region, spec.endpoint or spec.allowedRoles changed since the session was approved{approved}: the session is not used for the new spec without a new approval; {}{held}",
        f.approve_hint()
    );
    let before = f
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ROLE_ASSUMED)
        .map(|c| c.reason.clone());
    if before.as_deref() != Some(SPEC_CHANGED_SINCE_APPROVAL) {
        fx.events
            .push(Event::warning(SPEC_CHANGED_SINCE_APPROVAL, message.clone()));
    }
    ("False", SPEC_CHANGED_SINCE_APPROVAL, message)
}

fn role_wake(
    f: &Facts,
    spec: &AssumeRoleSpec,
    role: &RoleStatus,
    action: &RoleAction,
    assumed_now: bool,
) -> Option<Timestamp> {
    f.role_subject(spec)
        .wake(role, action, assumed_now, f.role_blocker().is_none())
}

fn role_assumed(
    f: &Facts,
    spec: &AssumeRoleSpec,
    before: &RoleStatus,
    session: &Credentials,
    assumed: &AssumedRole,
    action: &RoleAction,
    fx: &mut Effects,
) -> RoleStatus {
    fx.status.secret_name = Some(f.out.name.clone());
    let (role, event) =
        f.role_subject(spec)
            .assumed(before, &session.access_key_id, assumed, action);
    fx.events.push(event);
    role
}

fn role_failed(
    f: &Facts,
    spec: &AssumeRoleSpec,
    role: &mut RoleStatus,
    e: &StsError,
    fx: &mut Effects,
) {
    if e.was_sent() {
        fx.call_metric = Some((CallKind::AssumeRole, e.metric_outcome()));
    }
    let event = f.role_subject(spec).failed(role, e);
    fx.events.push(event);
}

/// Sets a condition of the consumers, with a Warning Event when it turns (or stays) False with
/// a new message.
fn set_warning_condition(f: &Facts, fx: &mut Effects, type_: &str, verdict: Verdict) {
    let (state, reason, message) = &verdict;
    let unchanged = fx
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == *state && c.message == *message);
    if *state == "False" && !unchanged {
        fx.events.push(Event::warning(reason, message.clone()));
    }
    set_condition(
        &mut fx.status.conditions,
        type_,
        verdict,
        f.generation,
        f.now,
    );
}

/// `ConsumerRefresh` and the restart targets.
fn settle_consumers(f: &Facts, output_holds_credentials: bool, fx: &mut Effects) {
    match refresh_window_verdict(&f.st, &fx.status) {
        None => fx.status.conditions.retain(|c| c.type_ != CONSUMER_REFRESH),
        Some(verdict) => set_warning_condition(f, fx, CONSUMER_REFRESH, verdict),
    }
    if f.st.spec.rollout_restart_targets.is_empty() {
        fx.status.conditions.retain(|c| c.type_ != ROLLOUT_RESTART);
        return;
    }
    // Only for credentials that pods can actually use.
    let out = OutputCredentials::of(&f.st, &fx.status);
    let (Some(access_key_id), true) = (
        out.access_key_id,
        output_holds_credentials && out.expiration.is_some_and(|e| e > f.now),
    ) else {
        return;
    };
    let (restarts, problems) = restarts_due(
        &restarted_for_key(&f.name),
        &f.targets,
        &access_key_id,
        out.issued_at,
        f.now,
    );
    fx.restarts = restarts;
    fx.target_problems = problems;
    fx.restart_for = Some(access_key_id);
}

/// Folds how the restarts went (`problems`: targets that could not be read or patched) into
/// the `RolloutRestart` condition, its Event on a change, and the next look at them.
pub fn restarts_done(f: &Facts, fx: &mut Effects, access_key_id: &str, problems: &[TargetProblem]) {
    let (verdict, recheck) = restart_condition(
        &f.st.spec.rollout_restart_targets,
        access_key_id,
        problems,
        f.now,
    );
    set_warning_condition(f, fx, ROLLOUT_RESTART, verdict);
    fx.wake = fx.wake.into_iter().chain(recheck).min();
}

/// `Ready`, the repeated `TokenCodeRequired` and the `Expired` Events, metrics. Returns when
/// the next `TokenCodeRequired` is due.
fn settle_conditions(
    f: &Facts,
    state: &SessionState,
    role: Option<&RoleOutcome>,
    fx: &mut Effects,
) -> Option<Timestamp> {
    let has_mfa = f.has_mfa();
    let session_ready = ready_condition(
        &ReadyFacts {
            has_mfa,
            name: &f.name,
            namespace: &f.ns,
            session_home: &f.session_home().name,
            blocker: f.blocker_pair(),
        },
        &fx.status,
        state,
    );
    let ready = match role {
        Some(role) => role_ready_condition(session_ready, role, &fx.status),
        None => session_ready,
    };
    let is_ready = ready.0 == "True";
    set_condition(&mut fx.status.conditions, READY, ready, f.generation, f.now);
    let next_event = if has_mfa {
        code_required_event(f, state, fx)
    } else {
        None
    };
    if let SessionState::Expired { expiration } = state {
        let first = f.memory.expired_sent != Some(*expiration);
        fx.memory.expired_sent = Some(*expiration);
        if first && ready_reason(&f.status) != Some("Expired") {
            fx.events.push(Event::warning(
                "Expired",
                format!(
                    "the session expired at {expiration}; the Secret's credentials no longer work"
                ),
            ));
        }
    }
    fx.status.observed_generation = f.generation;
    fx.metrics = SessionMetrics {
        expiration: fx.status.expiration,
        renewal: fx.status.renewal_time,
        role_expiration: fx.status.role.as_ref().and_then(|r| r.expiration),
        role_renewal: role.and_then(|r| r.renewal),
        ready: is_ready,
        awaiting_token_code: has_mfa
            && (!matches!(state, SessionState::Valid { .. })
                || role.is_some_and(|r| r.reason == SPEC_CHANGED_SINCE_APPROVAL)),
    };
    next_event
}

/// `TokenCodeRequired` at the renewal time and every interval after, until a code arrives or
/// the session expires; returns when the next one is due.
fn code_required_event(f: &Facts, state: &SessionState, fx: &mut Effects) -> Option<Timestamp> {
    let SessionState::RenewalDue { expiration } = state else {
        return None;
    };
    let renewal = fx.status.renewal_time?;
    let (period, next) = code_required_period(renewal, f.now, f.timing.code_required_interval);
    if f.memory.code_required_sent != Some((renewal, period)) {
        fx.memory.code_required_sent = Some((renewal, period));
        let left = expiration.duration_since(f.now).as_secs().max(0);
        fx.events.push(Event::warning(
            "TokenCodeRequired",
            format!(
                "the session expires at {expiration} (in {}h{:02}m); approve a new one with `kubectl sts approve {} -n {}`",
                left / 3600,
                (left % 3600) / 60,
                f.name,
                f.ns
            ),
        ));
    }
    Some(next).filter(|n| n < expiration)
}

/// The next instant that matters; never a poll while healthy.
fn wake_up(
    f: &Facts,
    draft: &Draft,
    role: Option<&RoleOutcome>,
    next_event: Option<Timestamp>,
    fx: &mut Effects,
) -> Option<Timestamp> {
    let has_mfa = f.has_mfa();
    let auto = !has_mfa && f.blocker.is_none();
    // Neither the source Secret nor a foreign Secret in the way is watched: look again, with
    // capped backoff (reads only), until the problem goes.
    let source_blocked = f
        .blocker
        .as_ref()
        .is_some_and(|b| b.reason.starts_with("SourceCredentials") || b.reason == "SecretConflict");
    fx.memory.source_misses = if source_blocked {
        f.memory.source_misses.saturating_add(1)
    } else {
        0
    };
    let retry_at = retry_time(&fx.status, &f.timing, &f.uid);
    let unsaved = fx.memory.unsaved.is_some();
    let instants = [
        draft.claim_deadline,
        fx.status.expiration.filter(|e| *e > f.now),
        fx.status
            .renewal_time
            .filter(|r| *r > f.now && (auto || has_mfa)),
        next_event,
        retry_at.filter(|_| auto),
        role.and_then(|r| r.next),
        draft.later,
        source_blocked
            .then(|| at_or_max(f.now, backoff(fx.memory.source_misses, &f.timing, &f.uid))),
        // A session kept in memory because someone else's Secret is in the way.
        unsaved.then(|| at_or_max(f.now, f.timing.backoff_cap)),
    ];
    instants.into_iter().flatten().min()
}
