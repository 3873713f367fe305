//! An AssumedRole's decisions: pure and total, like a SessionToken's. The role layer is the one
//! of `spec.assumeRole` ([`RoleSubject`], [`role_condition`]); what is particular here is where
//! the session comes from (another object, which may be missing, not approved for the current
//! spec, or not allow this role) and that no session is ever minted.

use super::role::{
    ROLE_NOT_ALLOWED, RoleAction, RoleFacts, RoleSubject, SPEC_CHANGED_SINCE_APPROVAL,
    default_role_session_name, role_condition,
};
use super::{CallKind, READY, ROLE_ASSUMED, Restart, SecretSeen, SecretWrite, TargetProblem};
use super::{TargetSeen, Timing, set_condition};
use crate::crd::{AssumedRole, AssumedRoleStatus, Condition, RESTARTED_FOR_ROLE_PREFIX};
use crate::credentials::Credentials;
use crate::events::Event;
use crate::secret;
use crate::sts::{AssumedRole as Assumed, StsError};
use jiff::Timestamp;
use std::sync::Arc;

/// The reason of `Ready=False` when the SessionToken the AssumedRole refers to does not exist.
pub const SESSION_MISSING: &str = "SessionMissing";

/// The SessionToken an AssumedRole draws on, as `observe` found it.
#[derive(Clone, Debug)]
pub enum SessionSource {
    /// There is no SessionToken of that name in the namespace.
    Missing,
    Present(Box<SessionFound>),
}

/// What matters of a SessionToken that exists.
#[derive(Clone, Debug)]
pub struct SessionFound {
    /// Its valid session: in its Secret, as its status records it (None: none now).
    pub session: Option<Credentials>,
    /// Its `spec.allowedRoles` admit this AssumedRole's role.
    pub role_allowed: bool,
    /// With `mfa`: the session was approved for the SessionToken's spec as it is now.
    pub approved_for_spec: bool,
    pub has_mfa: bool,
    /// What stops calling STS for it (its endpoint is not allowed, its region cannot be used):
    /// (reason, message).
    pub blocker: Option<(&'static str, String)>,
    pub region: String,
    pub endpoint: Option<String>,
}

/// Everything one reconcile of an AssumedRole knows.
#[derive(Clone, Debug)]
pub struct AssumedFacts {
    pub ar: Arc<AssumedRole>,
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub now: Timestamp,
    pub timing: Timing,
    /// Status, bounded (times that should be past and are not dropped, counts clamped).
    pub status: AssumedRoleStatus,
    pub out: SecretSeen,
    pub source: SessionSource,
    pub targets: Vec<TargetSeen>,
}

/// The one STS call an AssumedRole's reconcile may make.
#[derive(Debug)]
pub struct AssumedCall {
    pub session: Credentials,
    pub duration_seconds: i32,
    pub why: &'static str,
}

/// What an AssumedRole's reconcile decided before its call.
#[derive(Debug)]
pub struct AssumedPlan {
    pub action: RoleAction,
    /// What stops the role from being assumed: (reason, message).
    pub blocker: Option<(&'static str, String)>,
    pub call: Option<AssumedCall>,
}

/// What `act` writes for an AssumedRole, in order.
#[derive(Debug)]
pub struct AssumedEffects {
    pub write: Option<SecretWrite>,
    pub restarts: Vec<Restart>,
    /// The role credentials restart targets should run (None: none valid now; the targets
    /// and their condition are left as they are).
    pub restart_for: Option<String>,
    pub target_problems: Vec<TargetProblem>,
    pub status: AssumedRoleStatus,
    pub events: Vec<Event>,
    pub call_metric: Option<(CallKind, &'static str)>,
    pub metrics: AssumedRoleMetrics,
    pub wake: Option<Timestamp>,
}

/// An AssumedRole's series: when its credentials expire and are renewed, and whether it is Ready.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssumedRoleMetrics {
    pub session_token: String,
    pub expiration: Option<Timestamp>,
    pub renewal: Option<Timestamp>,
    pub ready: bool,
}

impl AssumedFacts {
    fn subject(&self) -> RoleSubject<'_> {
        let spec = &self.ar.spec.role;
        RoleSubject {
            spec,
            role_session_name: spec
                .role_session_name
                .clone()
                .unwrap_or_else(|| default_role_session_name(&self.ns, &self.name)),
            renewal: self.ar.spec.renewal.as_ref(),
            out_name: &self.out.name,
            uid: &self.uid,
            timing: &self.timing,
            now: self.now,
        }
    }

    /// The output Secret holds the credentials status records.
    fn role_held(&self) -> bool {
        let role = &self.status.role;
        self.out
            .ours()
            .and_then(|s| {
                secret::read_session(s, &secret::Layout::of_role(&self.ar))
                    .or_else(|| secret::read_session_any_layout(s))
            })
            .is_some_and(|c| {
                Some(&c.access_key_id) == role.access_key_id.as_ref()
                    && Some(c.expiration) == role.expiration
            })
    }

    fn session_token(&self) -> &str {
        &self.ar.spec.session_token_ref.name
    }

    /// What stops the role from being assumed now, most fundamental first.
    fn blocker(&self) -> Option<(&'static str, String)> {
        let st = self.session_token();
        if let secret::Ownership::Foreign(why) = &self.out.ownership {
            return Some(("SecretConflict", why.clone()));
        }
        let found = match &self.source {
            SessionSource::Missing => {
                return Some((
                    SESSION_MISSING,
                    format!(
                        "SessionToken {st} does not exist in this namespace: no session to assume {} with",
                        self.ar.spec.role.role_arn
                    ),
                ));
            }
            SessionSource::Present(found) => found,
        };
        if !found.role_allowed {
            return Some((
                ROLE_NOT_ALLOWED,
                format!(
                    "role {} is not among spec.allowedRoles of SessionToken {st}: its session is not used for it",
                    self.ar.spec.role.role_arn
                ),
            ));
        }
        if let Some((reason, message)) = &found.blocker {
            return Some((reason, format!("SessionToken {st}: {message}")));
        }
        if found.has_mfa && found.session.is_some() && !found.approved_for_spec {
            return Some((
                SPEC_CHANGED_SINCE_APPROVAL,
                format!(
                    "SessionToken {st} changed since its session was approved: the session is not used until a new approval (`kubectl sts approve {st} -n {}`)",
                    self.ns
                ),
            ));
        }
        None
    }

    fn approve_hint(&self) -> Option<String> {
        match &self.source {
            SessionSource::Present(found) if found.has_mfa => Some(format!(
                "approve SessionToken {st} with `kubectl sts approve {st} -n {}`",
                self.ns,
                st = self.session_token()
            )),
            _ => None,
        }
    }

    fn session(&self) -> Option<&Credentials> {
        match &self.source {
            SessionSource::Present(found) => found.session.as_ref(),
            SessionSource::Missing => None,
        }
    }
}

/// Decides whether to call AssumeRole. Total.
pub fn decide_assumed(f: &AssumedFacts) -> AssumedPlan {
    let blocker = f.blocker();
    let session = f.session();
    let action = f.subject().action(
        &f.status.role,
        f.role_held(),
        session.map(|s| (s.expiration, s.access_key_id.as_str())),
        f.status.observed_generation != f.generation,
    );
    let call = match (&action, &blocker, session) {
        (
            RoleAction::Assume {
                duration_seconds,
                why,
            },
            None,
            Some(session),
        ) => Some(AssumedCall {
            session: session.clone(),
            duration_seconds: *duration_seconds,
            why,
        }),
        _ => None,
    };
    AssumedPlan {
        action,
        blocker,
        call,
    }
}

/// Decides what to write, given what AssumeRole returned (None: no call). Total.
pub fn settle_assumed(
    f: &AssumedFacts,
    plan: AssumedPlan,
    outcome: Option<Result<Assumed, StsError>>,
) -> AssumedEffects {
    let subject = f.subject();
    let mut fx = AssumedEffects {
        write: None,
        restarts: Vec::new(),
        restart_for: None,
        target_problems: Vec::new(),
        status: f.status.clone(),
        events: Vec::new(),
        call_metric: None,
        metrics: AssumedRoleMetrics {
            session_token: f.session_token().to_string(),
            ..Default::default()
        },
        wake: None,
    };
    let mut role = f.status.role.clone();
    let mut assumed_now = false;
    match (outcome, plan.call.as_ref()) {
        (Some(Ok(assumed)), Some(call)) => {
            fx.call_metric = Some((CallKind::AssumeRole, crate::sts::OUTCOME_SUCCESS));
            let desired = secret::desired_role_secret(&f.ar, &f.out.name, &assumed.credentials);
            if let Some(w) = f.out.write(desired, true) {
                fx.write = Some(w);
                let (status, event) =
                    subject.assumed(&role, &call.session.access_key_id, &assumed, &plan.action);
                role = status;
                fx.events.push(event);
                fx.status.secret_name = Some(f.out.name.clone());
                fx.status.session_expiration = Some(call.session.expiration);
                assumed_now = true;
            }
        }
        (Some(Err(e)), _) => {
            if e.was_sent() {
                fx.call_metric = Some((CallKind::AssumeRole, e.metric_outcome()));
            }
            fx.events.push(subject.failed(&mut role, &e));
        }
        _ => {}
    }
    let held = f.role_held();
    let valid = (held || assumed_now) && role.expiration.is_some_and(|e| e > f.now);
    if !assumed_now && valid && plan.blocker.is_none() {
        // Repairs: the Secret tampered with (or its layout changed) while the credentials hold.
        if let Some(current) = f.out.ours().and_then(secret::read_session_any_layout) {
            let desired = secret::desired_role_secret(&f.ar, &f.out.name, &current);
            fx.write = f.out.repair(desired);
        }
    }
    let verdict = role_condition(
        &f.ar.spec.role,
        &role,
        &plan.action,
        RoleFacts {
            assumed_now,
            valid,
            blocker: plan.blocker.as_ref().map(|(r, m)| (*r, m.as_str())),
            approve_hint: f.approve_hint(),
        },
    );
    let ready = ready_condition(f, &role, valid, &plan, &verdict);
    transition_events(f, &ready, &mut fx.events);
    for (type_, v) in [(ROLE_ASSUMED, verdict), (READY, ready.clone())] {
        set_condition(&mut fx.status.conditions, type_, v, f.generation, f.now);
    }
    let ready_now = ready.0 == "True";
    if valid {
        restarts(f, &role, &mut fx);
    }
    fx.wake = match &plan.blocker {
        // Waits for a change of the SessionToken (a watch event), or the credentials' expiry.
        Some(_) => role.expiration.filter(|e| *e > f.now),
        None => subject.wake(&role, &plan.action, assumed_now, true),
    };
    fx.metrics.expiration = role.expiration;
    fx.metrics.renewal = role.renewal_time.filter(|_| ready_now);
    fx.metrics.ready = ready_now;
    fx.status.role = role;
    fx.status.observed_generation = f.generation;
    fx
}

/// After the restarts: the `RolloutRestart` condition (as a SessionToken's), a Warning Event
/// when it turns False, and a look again in a minute while a target has a problem.
pub fn assumed_restarts_done(
    f: &AssumedFacts,
    fx: &mut AssumedEffects,
    access_key_id: &str,
    problems: &[TargetProblem],
) {
    let (verdict, recheck) = super::restart_condition(
        &f.ar.spec.rollout_restart_targets,
        access_key_id,
        problems,
        f.now,
    );
    let before = f
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == super::ROLLOUT_RESTART);
    if verdict.0 == "False" && before.is_none_or(|c| c.status != "False" || c.message != verdict.2)
    {
        fx.events.push(Event::warning(verdict.1, verdict.2.clone()));
    }
    set_condition(
        &mut fx.status.conditions,
        super::ROLLOUT_RESTART,
        verdict,
        f.generation,
        f.now,
    );
    fx.wake = fx.wake.into_iter().chain(recheck).min();
}

/// `Ready`: the Secret holds valid role credentials that are kept fresh. A blocker makes it
/// False even while the current credentials last (they run out at their expiry, never renewed
/// without the session).
fn ready_condition(
    f: &AssumedFacts,
    role: &crate::crd::RoleStatus,
    valid: bool,
    plan: &AssumedPlan,
    verdict: &super::Verdict,
) -> super::Verdict {
    let until = role
        .expiration
        .filter(|_| valid)
        .map(|e| format!("; the Secret's credentials stay valid until {e}, not renewed"))
        .unwrap_or_default();
    match (&plan.blocker, valid) {
        (Some((reason, message)), _) => ("False", reason, format!("{message}{until}")),
        (None, true) => (
            "True",
            "Assumed",
            format!(
                "Secret {} holds credentials of {} drawn from SessionToken {}: {}",
                f.out.name,
                f.ar.spec.role.role_arn,
                f.session_token(),
                verdict.2
            ),
        ),
        (None, false) => ("False", verdict.1, verdict.2.clone()),
    }
}

/// Warning Events when `Ready` turns False for a reason a person must act on.
fn transition_events(f: &AssumedFacts, ready: &super::Verdict, events: &mut Vec<Event>) {
    let before: Option<&Condition> = f.status.conditions.iter().find(|c| c.type_ == READY);
    let (status, reason, message) = ready;
    let changed = before.is_none_or(|c| c.status != *status || c.reason != *reason);
    if !changed || *status == "True" {
        return;
    }
    let notable = [
        SESSION_MISSING,
        ROLE_NOT_ALLOWED,
        SPEC_CHANGED_SINCE_APPROVAL,
        "SecretConflict",
        "SessionEnding",
    ];
    if notable.contains(reason) || before.is_some_and(|c| c.status == "True") {
        events.push(Event::warning(reason, message.clone()));
    }
}

/// Restarts of the targets that do not run the current role credentials yet (recorded under
/// `assumedrole.stssession.dev/<name>`), as for a SessionToken: a target that predates the
/// credentials and names others (or none) is restarted, once.
fn restarts(f: &AssumedFacts, role: &crate::crd::RoleStatus, fx: &mut AssumedEffects) {
    let Some(key_id) = role.access_key_id.as_deref() else {
        return;
    };
    let key = super::restarted_for_key_of(RESTARTED_FOR_ROLE_PREFIX, &f.name);
    let (restarts, problems) =
        super::restarts_due(&key, &f.targets, key_id, role.assumed_at, f.now);
    fx.restart_for = Some(key_id.to_string());
    fx.restarts = restarts;
    fx.target_problems = problems;
}
