//! The pure parts of the `kubectl sts` plugin (`src/bin/kubectl-sts.rs`): checking a code,
//! the patches it sends, the `status` table, and deciding from a SessionToken whether an
//! approval or a renewal has worked. No I/O here, so all of it is unit-tested.

use crate::crd::{
    APPROVED_BY_ANNOTATION, Approval, AssumedRole, Condition, Failure, RENEW_ANNOTATION,
    SessionToken, TOKEN_CODE_ANNOTATION,
};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Field manager of the plugin's writes (visible in `managedFields`).
pub const FIELD_MANAGER: &str = "kubectl-sts";

/// Exit code: the approval or renewal worked (or, for `status`, the table was printed).
pub const EXIT_OK: i32 = 0;
/// Exit code: the operator used the code (or tried to renew) and failed; or the API failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage, a bad code, a missing object, or no permission; nothing was written.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: no outcome within `--timeout`.
pub const EXIT_TIMEOUT: i32 = 3;

/// Clock and rounding slack when comparing the operator's timestamps (whole seconds) with
/// the moment the plugin wrote its annotation.
pub const TOLERANCE: SignedDuration = SignedDuration::from_secs(2);
/// How long the annotation may be gone without the status recording anything new before the
/// plugin reports what the status says (the operator removed it without an attempt, e.g.
/// because the SessionToken was blocked, or someone else removed it).
pub const SETTLE: Duration = Duration::from_secs(5);

const ISSUING: &str = "Issuing";
const READY: &str = "Ready";
const CLAIMED: &str = "TokenCodeClaimed";

/// Why a code is refused before anything is sent. The messages never contain the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    Empty,
    NotDigits,
    WrongLength(usize),
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Empty => write!(f, "no MFA code given: a code is exactly six digits (0-9)"),
            CodeError::NotDigits => {
                write!(
                    f,
                    "the MFA code must be exactly six digits (0-9); it contains other characters"
                )
            }
            CodeError::WrongLength(n) => {
                write!(
                    f,
                    "the MFA code must be exactly six digits (0-9); it has {n}"
                )
            }
        }
    }
}

impl std::error::Error for CodeError {}

/// Checks an MFA code: exactly six ASCII digits, nothing else (no spaces, no signs).
pub fn validate_code(code: &str) -> Result<(), CodeError> {
    if code.is_empty() {
        return Err(CodeError::Empty);
    }
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodeError::NotDigits);
    }
    if code.len() != 6 {
        return Err(CodeError::WrongLength(code.len()));
    }
    Ok(())
}

/// The code from one line read from stdin: without its line ending and surrounding blanks.
pub fn code_from_line(line: &str) -> &str {
    line.trim()
}

/// Replaces every occurrence of `secret` in `text` (e.g. a server message) with `******`.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    text.replace(secret, "******")
}

/// The merge patch of `kubectl sts approve`: the code and who approved.
pub fn approve_patch(code: &str, username: &str) -> Value {
    json!({"metadata": {"annotations": {
        TOKEN_CODE_ANNOTATION: code,
        APPROVED_BY_ANNOTATION: username,
    }}})
}

/// The merge patch of `kubectl sts renew`.
pub fn renew_patch(at: Timestamp) -> Value {
    json!({"metadata": {"annotations": {RENEW_ANNOTATION: at.to_string()}}})
}

/// Time left until `expiration`, as `kubectl get` prints ages: `1d04h`, `11h58m`, `4m05s`,
/// `42s`; `expired` once it is past; `<none>` without an expiration.
pub fn format_left(expiration: Option<Timestamp>, now: Timestamp) -> String {
    let Some(exp) = expiration else {
        return "<none>".into();
    };
    let left = exp.duration_since(now).as_secs();
    if left <= 0 {
        return "expired".into();
    }
    let (d, h, m, s) = (
        left / 86_400,
        (left % 86_400) / 3600,
        (left % 3600) / 60,
        left % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Does the SessionToken wait for a person's code: it has `spec.mfa` and no usable session
/// (Ready reason `AwaitingTokenCode`, `Expired` or `SecretMissing`).
pub fn awaiting_code(st: &SessionToken) -> bool {
    st.spec.mfa.is_some()
        && st.condition(READY).is_some_and(|c| {
            matches!(
                &*c.reason,
                "AwaitingTokenCode" | "Expired" | "SecretMissing"
            )
        })
}

/// One line of `kubectl sts status`: a SessionToken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub expires: Option<String>,
    pub left: String,
    pub renews: Option<String>,
    pub mfa: bool,
    pub awaiting_code: bool,
    pub secret: Option<String>,
    /// Its own role (`spec.assumeRole.roleArn`), if any.
    pub role_arn: Option<String>,
    /// The AssumedRoles drawing on its session, by name; absent when they could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assumed_roles: Option<Vec<RoleRow>>,
}

/// One AssumedRole of `kubectl sts status`, beneath the SessionToken it draws on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRow {
    pub namespace: String,
    pub name: String,
    /// `spec.sessionTokenRef.name`.
    pub session_token: String,
    pub ready: String,
    pub reason: String,
    pub role_arn: String,
    pub expires: Option<String>,
    pub left: String,
    pub renews: Option<String>,
    pub secret: Option<String>,
}

/// A SessionToken that AssumedRoles refer to but that does not exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MissingSession {
    pub namespace: String,
    pub name: String,
    pub assumed_roles: Vec<RoleRow>,
}

/// What `kubectl sts status` shows (and `-o json` prints): the SessionTokens, each with its
/// AssumedRoles, and the SessionTokens AssumedRoles refer to that do not exist (absent when the
/// AssumedRoles could not be listed).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub items: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_session_tokens: Option<Vec<MissingSession>>,
}

fn rfc3339(t: Timestamp) -> String {
    // Whole seconds, as the API server prints times.
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// READY and REASON from a Ready condition: `Unknown` and no reason without one.
fn ready_cells(ready: Option<&Condition>) -> (String, String) {
    (
        ready
            .map(|c| c.status.to_string())
            .unwrap_or_else(|| "Unknown".into()),
        ready.map(|c| c.reason.to_string()).unwrap_or_default(),
    )
}

pub fn row(st: &SessionToken, now: Timestamp) -> Row {
    let status = st.status.clone().unwrap_or_default();
    let (ready, reason) = ready_cells(st.condition(READY));
    Row {
        namespace: st.namespace().unwrap_or_default(),
        name: st.name_any(),
        ready,
        reason,
        expires: status.expiration.map(rfc3339),
        left: format_left(status.expiration, now),
        renews: status.renewal_time.map(rfc3339),
        mfa: st.spec.mfa.is_some(),
        awaiting_code: awaiting_code(st),
        secret: status.secret_name.clone(),
        role_arn: st.spec.assume_role.as_ref().map(|r| r.role_arn.clone()),
        assumed_roles: None,
    }
}

pub fn role_row(ar: &AssumedRole, now: Timestamp) -> RoleRow {
    let status = ar.status.clone().unwrap_or_default();
    let (ready, reason) = ready_cells(ar.condition(READY));
    RoleRow {
        namespace: ar.namespace().unwrap_or_default(),
        name: ar.name_any(),
        session_token: ar.spec.session_token_ref.name.clone(),
        ready,
        reason,
        role_arn: ar.spec.role.role_arn.clone(),
        expires: status.role.expiration.map(rfc3339),
        left: format_left(status.role.expiration, now),
        renews: status.role.renewal_time.map(rfc3339),
        secret: status.secret_name,
    }
}

/// Does the AssumedRole draw on the session of SessionToken `namespace/name`?
pub fn draws_on(ar: &AssumedRole, namespace: &str, name: &str) -> bool {
    ar.spec.session_token_ref.name == name && ar.namespace().as_deref() == Some(namespace)
}

/// The listing of `sessions` with `roles` beneath the SessionToken each refers to (`None`:
/// the AssumedRoles could not be listed). Everything sorted by namespace and name.
pub fn listing(
    sessions: &[SessionToken],
    roles: Option<&[AssumedRole]>,
    now: Timestamp,
) -> Listing {
    let mut by_session: BTreeMap<(String, String), Vec<RoleRow>> = BTreeMap::new();
    for ar in roles.unwrap_or_default() {
        let r = role_row(ar, now);
        by_session
            .entry((r.namespace.clone(), r.session_token.clone()))
            .or_default()
            .push(r);
    }
    for list in by_session.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut items: Vec<Row> = sessions.iter().map(|st| row(st, now)).collect();
    items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for item in &mut items {
        let key = (item.namespace.clone(), item.name.clone());
        item.assumed_roles = roles.map(|_| by_session.remove(&key).unwrap_or_default());
    }
    Listing {
        items,
        missing_session_tokens: roles.map(|_| {
            by_session
                .into_iter()
                .map(|((namespace, name), assumed_roles)| MissingSession {
                    namespace,
                    name,
                    assumed_roles,
                })
                .collect()
        }),
    }
}

/// The listing of `kubectl sts status NAME`: `st` with the AssumedRoles among `roles` that
/// draw on it.
pub fn listing_of(st: &SessionToken, roles: Option<&[AssumedRole]>, now: Timestamp) -> Listing {
    let ns = st.namespace().unwrap_or_default();
    let name = st.name_any();
    let mine: Option<Vec<AssumedRole>> = roles.map(|all| {
        all.iter()
            .filter(|ar| draws_on(ar, &ns, &name))
            .cloned()
            .collect()
    });
    let mut l = listing(std::slice::from_ref(st), mine.as_deref(), now);
    l.missing_session_tokens = None;
    l
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn or_none(s: &Option<String>) -> String {
    s.clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

/// One line of a table; `spans`: all but its NAMESPACE cell run on past the columns (they are
/// not measured: a long one does not widen the column).
struct Line {
    cells: Vec<String>,
    measured: usize,
}

impl Line {
    fn new(namespace: Option<&str>, cells: Vec<String>, spans: bool) -> Line {
        let mut all: Vec<String> = namespace.map(str::to_string).into_iter().collect();
        let measured = if spans { all.len() } else { usize::MAX };
        all.extend(cells);
        Line {
            cells: all,
            measured,
        }
    }
}

/// The lines of the AssumedRoles beneath a SessionToken: `├─ AssumedRole/NAME`, the last
/// `└─`; cells under the SessionToken's columns, `-` where a column does not apply.
fn role_lines(roles: &[RoleRow], all_namespaces: bool, role_column: bool) -> Vec<Line> {
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let branch = if i.saturating_add(1) == roles.len() {
                "└─"
            } else {
                "├─"
            };
            let mut cells = vec![
                format!("{branch} AssumedRole/{}", r.name),
                r.ready.clone(),
                or_none(&Some(r.reason.clone())),
                or_none(&r.expires),
                r.left.clone(),
                or_none(&r.renews),
                "-".into(),
                "-".into(),
                or_none(&r.secret),
            ];
            if role_column {
                cells.push(r.role_arn.clone());
            }
            Line::new(all_namespaces.then_some(&*r.namespace), cells, false)
        })
        .collect()
}

fn session_line(r: &Row, all_namespaces: bool, role_column: bool) -> Line {
    let mut cells = vec![
        r.name.clone(),
        r.ready.clone(),
        or_none(&Some(r.reason.clone())),
        or_none(&r.expires),
        r.left.clone(),
        or_none(&r.renews),
        yes_no(r.mfa).into(),
        yes_no(r.awaiting_code).into(),
        or_none(&r.secret),
    ];
    if role_column {
        cells.push(or_none(&r.role_arn));
    }
    Line::new(all_namespaces.then_some(&*r.namespace), cells, false)
}

/// Lines padded like kubectl's columns, three spaces apart.
fn align(lines: &[Line]) -> String {
    let columns = lines.iter().map(|l| l.cells.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .filter(|l| i < l.measured)
                .map(|l| l.cells.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, cell) in line.cells.iter().enumerate() {
            if i.saturating_add(1) == line.cells.len() {
                text.push_str(cell);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                text.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The columns of the `status` table (then ROLE, when there is a role to show).
pub const COLUMNS: [&str; 9] = [
    "NAME",
    "READY",
    "REASON",
    "EXPIRES",
    "LEFT",
    "RENEWS",
    "MFA",
    "AWAITING CODE",
    "SECRET",
];

/// The `status` table: a SessionToken a line, its AssumedRoles as a tree beneath it, and each
/// SessionToken AssumedRoles refer to that does not exist as a line saying so (with its
/// AssumedRoles beneath), in the order of namespace and name. NAMESPACE first with
/// `all_namespaces`; a last column ROLE when there is a role to show.
pub fn render_table(listing: &Listing, all_namespaces: bool) -> String {
    let missing = listing
        .missing_session_tokens
        .as_deref()
        .unwrap_or_default();
    let role_column = !missing.is_empty()
        || listing.items.iter().any(|r| {
            r.role_arn.is_some() || r.assumed_roles.as_ref().is_some_and(|a| !a.is_empty())
        });
    let mut header = COLUMNS.to_vec();
    if role_column {
        header.push("ROLE");
    }
    let ns_header = all_namespaces.then_some("NAMESPACE");
    let header = header.iter().map(|h| h.to_string()).collect();
    let mut groups: Vec<((&str, &str), Vec<Line>)> = Vec::new();
    for r in &listing.items {
        let mut lines = vec![session_line(r, all_namespaces, role_column)];
        let roles = r.assumed_roles.as_deref().unwrap_or_default();
        lines.extend(role_lines(roles, all_namespaces, role_column));
        groups.push(((&r.namespace, &r.name), lines));
    }
    for m in missing {
        let ns = all_namespaces.then_some(&*m.namespace);
        let text = vec![m.name.clone(), "<SessionToken not found>".into()];
        let mut lines = vec![Line::new(ns, text, true)];
        lines.extend(role_lines(&m.assumed_roles, all_namespaces, role_column));
        groups.push(((&m.namespace, &m.name), lines));
    }
    groups.sort_by_key(|(key, _)| *key);
    let mut lines = vec![Line::new(ns_header, header, false)];
    lines.extend(groups.into_iter().flat_map(|(_, l)| l));
    align(&lines)
}

/// The role credential sets an approval of `st` refreshes besides its session: its own role
/// (`spec.assumeRole`) and the AssumedRoles among `roles` that draw on it. `None` when there
/// are none: nothing to say.
pub fn refresh_note(st: &SessionToken, roles: &[AssumedRole]) -> Option<String> {
    const NAMED: usize = 10;
    let ns = st.namespace().unwrap_or_default();
    let name = st.name_any();
    let mut names: Vec<String> = roles
        .iter()
        .filter(|ar| draws_on(ar, &ns, &name))
        .map(|ar| ar.name_any())
        .collect();
    names.sort();
    let own = st.spec.assume_role.is_some();
    let count = names.len().saturating_add(usize::from(own));
    if count == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if own {
        parts.push("its own role (spec.assumeRole)".to_string());
    }
    if !names.is_empty() {
        let shown = names
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = names.len().saturating_sub(NAMED);
        parts.push(format!(
            "AssumedRole{} {shown}{}",
            if names.len() == 1 { "" } else { "s" },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    Some(format!(
        "This approval also refreshes {count} role credential set{}: {}.",
        if count == 1 { "" } else { "s" },
        parts.join(" and ")
    ))
}

/// What `approve` says when the AssumedRoles could not be listed (`why`: e.g. Forbidden).
pub fn refresh_unknown_note(st: &SessionToken, why: &str) -> String {
    let own = if st.spec.assume_role.is_some() {
        " (at least 1: its own role, spec.assumeRole)"
    } else {
        ""
    };
    format!(
        "Could not count the role credential sets this approval also refreshes{own}: {why}. Approving anyway."
    )
}

/// The details `kubectl sts status NAME` prints below the table.
pub fn render_details(st: &SessionToken, now: Timestamp) -> String {
    let status = st.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
    line(
        "MFA device",
        st.spec
            .mfa
            .as_ref()
            .map(|m| m.serial_number.clone())
            .unwrap_or_else(|| "<none>".into()),
    );
    line("Output Secret", st.output_secret_name());
    line("Access key id", or_none(&status.access_key_id));
    line("Issued at", or_none(&status.issued_at.map(rfc3339)));
    line(
        "Expires",
        match status.expiration {
            Some(e) => format!("{} ({})", rfc3339(e), format_left(Some(e), now)),
            None => "<none>".into(),
        },
    );
    line("Renews", or_none(&status.renewal_time.map(rfc3339)));
    line("Rotations", status.rotations.to_string());
    line(
        "Last approval",
        match &status.last_approval {
            Some(a) => format!(
                "by {} at {}",
                a.approved_by.as_deref().unwrap_or("<unknown>"),
                rfc3339(a.time)
            ),
            None => "<none>".into(),
        },
    );
    if let Some(f) = &status.last_failure {
        line(
            "Last failure",
            format!("{} at {}: {}", f.reason, rfc3339(f.time), f.message),
        );
    }
    if let Some(spec) = &st.spec.assume_role {
        let role = status.role.clone().unwrap_or_default();
        line("Role", spec.role_arn.clone());
        line("Kept session", or_none(&status.session_secret_name));
        line("Role key id", or_none(&role.access_key_id));
        line(
            "Role expires",
            match role.expiration {
                Some(e) => format!("{} ({})", rfc3339(e), format_left(Some(e), now)),
                None => "<none>".into(),
            },
        );
        line("Role renews", or_none(&role.renewal_time.map(rfc3339)));
        line("Assumptions", role.assumptions.to_string());
        if let Some(f) = role
            .last_failure
            .as_ref()
            .filter(|_| role.failed_attempts > 0)
        {
            line(
                "Role failure",
                format!("{} at {}: {}", f.reason, rfc3339(f.time), f.message),
            );
        }
    }
    out.push_str("Conditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  <none>\n");
    }
    for c in &status.conditions {
        out.push_str(&format!(
            "  {:<8} {:<8} {:<20} {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    out
}

/// `-o json` of one SessionToken: its row (with the AssumedRoles among `roles` that draw on
/// it, unless `roles` is `None`) plus conditions and the last approval.
pub fn details_json(st: &SessionToken, roles: Option<&[AssumedRole]>, now: Timestamp) -> Value {
    let status = st.status.clone().unwrap_or_default();
    let item = listing_of(st, roles, now).items.pop();
    let mut v = serde_json::to_value(item).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "conditions".into(),
            serde_json::to_value(&status.conditions).unwrap_or_default(),
        );
        o.insert(
            "lastApproval".into(),
            serde_json::to_value(&status.last_approval).unwrap_or_default(),
        );
        o.insert(
            "lastFailure".into(),
            serde_json::to_value(&status.last_failure).unwrap_or_default(),
        );
        if st.spec.assume_role.is_some() {
            o.insert(
                "role".into(),
                serde_json::to_value(&status.role).unwrap_or_default(),
            );
        }
        o.insert(
            "issuedAt".into(),
            serde_json::to_value(status.issued_at).unwrap_or_default(),
        );
        o.insert(
            "accessKeyId".into(),
            serde_json::to_value(&status.access_key_id).unwrap_or_default(),
        );
    }
    v
}

/// What the SessionToken looked like just before the plugin wrote its annotation: the
/// outcome must be something that happened after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Baseline {
    pub issuing: Option<Condition>,
    pub last_failure: Option<Failure>,
    pub last_approval: Option<Approval>,
    pub rotations: i64,
}

impl Baseline {
    pub fn of(st: &SessionToken) -> Baseline {
        let status = st.status.clone().unwrap_or_default();
        Baseline {
            issuing: st.condition(ISSUING).cloned(),
            last_failure: status.last_failure,
            last_approval: status.last_approval,
            rotations: status.rotations,
        }
    }
}

/// What the plugin is still waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The annotation is still on the object: the operator has not picked it up.
    NotClaimed,
    /// The operator claimed the code and is calling STS.
    CallingSts,
    /// The annotation is gone; the status does not show the outcome yet.
    Status,
}

impl Waiting {
    pub fn describe(self) -> &'static str {
        match self {
            Waiting::NotClaimed => {
                "the operator has not picked up the request (is it running, and watching this namespace?)"
            }
            Waiting::CallingSts => "the operator claimed the code and is still waiting for STS",
            Waiting::Status => "the operator took the request but has not recorded an outcome yet",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pending(Waiting),
    Succeeded {
        expiration: Option<Timestamp>,
        secret: Option<String>,
        access_key_id: Option<String>,
        approved_by: Option<String>,
    },
    Failed {
        reason: String,
        message: String,
    },
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Pending(_) => EXIT_TIMEOUT,
            Outcome::Succeeded { .. } => EXIT_OK,
            Outcome::Failed { .. } => EXIT_FAILED,
        }
    }
}

fn succeeded(st: &SessionToken) -> Outcome {
    let status = st.status.clone().unwrap_or_default();
    Outcome::Succeeded {
        expiration: status.expiration,
        secret: status.secret_name,
        access_key_id: status.access_key_id,
        approved_by: status.last_approval.and_then(|a| a.approved_by),
    }
}

fn has_annotation(st: &SessionToken, key: &str) -> bool {
    st.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

/// The current state as a failure: the Issuing condition if it is not True, else Ready if it
/// is not True, else `fallback`.
fn failure_from_conditions(st: &SessionToken, fallback: (&str, &str)) -> Outcome {
    let pick = [st.condition(ISSUING), st.condition(READY)]
        .into_iter()
        .flatten()
        .find(|c| c.status != "True");
    match pick {
        Some(c) => Outcome::Failed {
            reason: c.reason.to_string(),
            message: c.message.clone(),
        },
        None => Outcome::Failed {
            reason: fallback.0.into(),
            message: fallback.1.into(),
        },
    }
}

/// Has the code set at `set_at` been used? `gone_for`: how long the code annotation has been
/// seen absent, to stop waiting for a status that will not change (see [`SETTLE`]).
pub fn approve_outcome(
    st: &SessionToken,
    set_at: Timestamp,
    base: &Baseline,
    gone_for: Option<Duration>,
) -> Outcome {
    if has_annotation(st, TOKEN_CODE_ANNOTATION) {
        return Outcome::Pending(Waiting::NotClaimed);
    }
    let issuing = st.condition(ISSUING);
    if issuing.is_some_and(|c| c.reason == CLAIMED) {
        return Outcome::Pending(Waiting::CallingSts);
    }
    let status = st.status.clone().unwrap_or_default();
    // The operator's claim leaves its time on the object: until status records something at
    // or after it, status is still the previous attempt's, whose success (within TOLERANCE of
    // this code) would otherwise read as this approval's.
    if let Some(claimed_at) = st
        .annotations()
        .get(crate::approval::CLAIMED_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        && !crate::approval::claim_resolved(&status, claimed_at)
    {
        return Outcome::Pending(Waiting::Status);
    }
    let fresh_approval = status.last_approval.as_ref().is_some_and(|a| {
        set_at
            .checked_sub(TOLERANCE)
            .is_ok_and(|since| a.time >= since)
    });
    if issuing.is_some_and(|c| c.status == "True" && c.reason == "Succeeded") && fresh_approval {
        return succeeded(st);
    }
    // Between the claim (annotation removed) and the status write, the status is still the old
    // one: only a change since the baseline is this approval's outcome.
    let changed = issuing != base.issuing.as_ref()
        || status.last_failure != base.last_failure
        || status.rotations != base.rotations;
    if let Some(c) = issuing.filter(|c| changed && c.status != "True") {
        return Outcome::Failed {
            reason: c.reason.to_string(),
            message: c.message.clone(),
        };
    }
    if gone_for.is_some_and(|g| g >= SETTLE) {
        return failure_from_conditions(
            st,
            (
                "TokenCodeRemoved",
                "the code annotation was removed, but no session was recorded for it (did someone else remove it?)",
            ),
        );
    }
    Outcome::Pending(Waiting::Status)
}

/// The cut-off of `kubectl sts revoke`: the moment of the request, in whole seconds (rounded
/// down, so a session issued after the request is never before it).
pub fn revoke_cutoff(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The IAM policy that denies every request signed with session credentials issued before
/// `cutoff` (`aws:TokenIssueTime`, which long-term keys do not carry: the operator's source
/// keys keep working, and so do sessions issued after the cut-off).
pub fn revoke_policy(cutoff: Timestamp) -> Value {
    let at = revoke_cutoff(cutoff).to_string();
    let sid: String = format!("DenySessionsIssuedBefore{at}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": sid,
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": at}}
        }]
    })
}

/// What `kubectl sts revoke` prints once the new session is there (or, with `--no-wait`,
/// requested): the old session's fate, the steps, the cut-off on a line of its own
/// (`Cut-off: RFC 3339`) and the policy (pretty JSON) last.
pub fn revoke_instructions(
    st: &SessionToken,
    cutoff: Timestamp,
    old_access_key_id: Option<&str>,
    old_expiration: Option<Timestamp>,
    now: Timestamp,
) -> String {
    let cutoff = revoke_cutoff(cutoff);
    let stamp: String = cutoff
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut out = String::new();
    match (old_access_key_id, old_expiration) {
        (Some(key), Some(exp)) => out.push_str(&format!(
            "The previous session {key} stays valid at AWS until {} (in {}): deleting or overwriting a Secret does not revoke it.\n",
            rfc3339(exp),
            format_left(Some(exp), now)
        )),
        _ => out.push_str("There was no previous session on record.\n"),
    }
    out.push_str(&format!(
        "To deny every session of the IAM user issued before the cut-off (the new one was issued after it; the user's long-term keys are not affected), add this policy to the user whose keys the SessionToken uses:\n  aws iam put-user-policy --user-name USER --policy-name revoke-sessions-{stamp} --policy-document file://revoke.json\n"
    ));
    if let Some(role) = st.spec.assume_role.as_ref() {
        let role_name = role.role_arn.rsplit('/').next().unwrap_or(&role.role_arn);
        out.push_str(&format!(
            "Role credentials (spec.assumeRole, {}) are revoked the same way on the role:\n  aws iam put-role-policy --role-name {role_name} --policy-name revoke-sessions-{stamp} --policy-document file://revoke.json\n",
            role.role_arn
        ));
    }
    out.push_str("Remove the policy once the old sessions have expired. See docs/revocation.md.\n");
    out.push_str(&format!("Cut-off: {}\n", rfc3339(cutoff)));
    out.push_str(&serde_json::to_string_pretty(&revoke_policy(cutoff)).unwrap_or_default());
    out.push('\n');
    out
}

/// Has the renewal asked for at `requested_at` happened?
pub fn renew_outcome(
    st: &SessionToken,
    requested_at: Timestamp,
    base: &Baseline,
    gone_for: Option<Duration>,
) -> Outcome {
    if has_annotation(st, RENEW_ANNOTATION) {
        return Outcome::Pending(Waiting::NotClaimed);
    }
    let status = st.status.clone().unwrap_or_default();
    let since = requested_at.checked_sub(TOLERANCE).unwrap_or(requested_at);
    if status.rotations > base.rotations && status.issued_at.is_some_and(|t| t >= since) {
        return succeeded(st);
    }
    if let Some(f) = status
        .last_failure
        .as_ref()
        .filter(|f| Some(*f) != base.last_failure.as_ref() && f.time >= since)
    {
        return Outcome::Failed {
            reason: f.reason.clone(),
            message: f.message.clone(),
        };
    }
    if gone_for.is_some_and(|g| g >= SETTLE) {
        return failure_from_conditions(
            st,
            (
                "NotRenewed",
                "the renewal request was removed, but no new session was recorded (see the SessionToken's events)",
            ),
        );
    }
    Outcome::Pending(Waiting::Status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn st(v: Value) -> SessionToken {
        let mut base = json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": "app", "namespace": "team-a"},
            "spec": {"sourceCredentials": {"secretRef": {"name": "iam-keys"}}, "mfa": {"serialNumber": "arn:aws:iam::123456789012:mfa/alice"}},
        });
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    fn cond(type_: &str, status: &str, reason: &str, at: i64) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": format!("{reason} message"), "lastTransitionTime": t(at).to_string()})
    }

    #[test]
    fn codes_are_six_ascii_digits() {
        assert_eq!(validate_code("123456"), Ok(()));
        assert_eq!(validate_code("000000"), Ok(()));
        assert_eq!(validate_code(""), Err(CodeError::Empty));
        for bad in [
            "12ab56",
            " 12345",
            "12345 ",
            "+12345",
            "-12345",
            "12 456",
            "１２３４５６",
            "12345\n",
        ] {
            assert_eq!(validate_code(bad), Err(CodeError::NotDigits), "{bad:?}");
        }
        assert_eq!(validate_code("12345"), Err(CodeError::WrongLength(5)));
        assert_eq!(validate_code("1234567"), Err(CodeError::WrongLength(7)));
        // messages never repeat the code
        for bad in ["12ab56", "98765", "9876543"] {
            let msg = validate_code(bad).unwrap_err().to_string();
            assert!(!msg.contains(bad) && msg.contains("six digits"), "{msg}");
        }
        assert_eq!(code_from_line("123456\r\n"), "123456");
        assert_eq!(code_from_line("  123456  \n"), "123456");
    }

    #[test]
    fn redaction_hides_every_occurrence() {
        assert_eq!(
            redact("code 123456 refused (123456)", "123456"),
            "code ****** refused (******)"
        );
        assert_eq!(redact("nothing", ""), "nothing");
    }

    #[test]
    fn patches_carry_the_annotations() {
        let p = approve_patch("123456", "alice");
        assert_eq!(
            p["metadata"]["annotations"]["stssession.dev/token-code"],
            "123456"
        );
        assert_eq!(
            p["metadata"]["annotations"]["stssession.dev/approved-by"],
            "alice"
        );
        assert_eq!(p["metadata"]["annotations"].as_object().unwrap().len(), 2);
        let r = renew_patch(t(0));
        assert_eq!(
            r["metadata"]["annotations"]["stssession.dev/renew-requested-at"],
            "2027-01-15T08:00:00Z"
        );
    }

    #[test]
    fn left_is_formatted_like_kubectl_ages() {
        let now = t(0);
        assert_eq!(format_left(None, now), "<none>");
        assert_eq!(format_left(Some(t(-5)), now), "expired");
        assert_eq!(format_left(Some(t(0)), now), "expired");
        assert_eq!(format_left(Some(t(42)), now), "42s");
        assert_eq!(format_left(Some(t(245)), now), "4m05s");
        assert_eq!(
            format_left(Some(t(11 * 3600 + 58 * 60 + 59)), now),
            "11h58m"
        );
        assert_eq!(format_left(Some(t(3600)), now), "1h00m");
        assert_eq!(format_left(Some(t(86_400 + 4 * 3600 + 120)), now), "1d04h");
    }

    #[test]
    fn rows_and_table() {
        let now = t(0);
        let issued = st(json!({"status": {
            "conditions": [cond("Ready", "True", "Issued", -10), cond("Issuing", "True", "Succeeded", -10)],
            "expiration": t(3600).to_string(), "renewalTime": t(2400).to_string(), "secretName": "app-aws", "rotations": 1,
        }}));
        let r = row(&issued, now);
        assert_eq!(
            r,
            Row {
                namespace: "team-a".into(),
                name: "app".into(),
                ready: "True".into(),
                reason: "Issued".into(),
                expires: Some("2027-01-15T09:00:00Z".into()),
                left: "1h00m".into(),
                renews: Some("2027-01-15T08:40:00Z".into()),
                mfa: true,
                awaiting_code: false,
                secret: Some("app-aws".into()),
                role_arn: None,
                assumed_roles: None,
            }
        );
        let waiting = st(
            json!({"metadata": {"name": "db"}, "status": {"conditions": [cond("Ready", "False", "AwaitingTokenCode", -10)]}}),
        );
        let expired_auto = st(
            json!({"metadata": {"name": "auto"}, "spec": {"mfa": null}, "status": {
            "conditions": [cond("Ready", "False", "Expired", -10)], "expiration": t(-1).to_string()}}),
        );
        assert!(awaiting_code(&waiting));
        assert!(
            !awaiting_code(&expired_auto),
            "no MFA: nobody is asked for a code"
        );
        assert!(awaiting_code(&st(
            json!({"status": {"conditions": [cond("Ready", "False", "Expired", -1)]}})
        )));
        assert!(awaiting_code(&st(
            json!({"status": {"conditions": [cond("Ready", "True", "AwaitingTokenCode", -1)]}})
        )));

        let table = render_table(
            &listing(&[issued.clone(), waiting, expired_auto], None, now),
            false,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        let cols: Vec<&str> = lines[0]
            .split("   ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(cols, COLUMNS);
        let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[1]),
            [
                "app",
                "True",
                "Issued",
                "2027-01-15T09:00:00Z",
                "1h00m",
                "2027-01-15T08:40:00Z",
                "yes",
                "no",
                "app-aws"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "db",
                "False",
                "AwaitingTokenCode",
                "<none>",
                "<none>",
                "<none>",
                "yes",
                "yes",
                "<none>"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "auto",
                "False",
                "Expired",
                "2027-01-15T07:59:59Z",
                "expired",
                "<none>",
                "no",
                "no",
                "<none>"
            ]
        );
        // columns line up: every header starts where its cells start
        let starts = |l: &str| {
            let b = l.as_bytes();
            (0..b.len())
                .filter(|&i| {
                    b[i] != b' ' && (i == 0 || (i >= 2 && b[i - 1] == b' ' && b[i - 2] == b' '))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(starts(lines[0]).len(), 9);
        for l in &lines[1..] {
            assert_eq!(starts(l), starts(lines[0]), "{table}");
        }
        let all = render_table(&listing(&[issued], None, now), true);
        assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
        assert!(
            all.lines().nth(1).unwrap().starts_with("team-a      app "),
            "{all}"
        );
    }

    #[test]
    fn details_show_messages_and_the_last_approval() {
        let s = st(json!({"status": {
            "conditions": [cond("Ready", "True", "Issued", -10), cond("Issuing", "False", "TokenCodeRejected", -5)],
            "lastApproval": {"approvedBy": "alice", "time": t(-10).to_string()},
            "expiration": t(60).to_string(),
        }}));
        let d = render_details(&s, t(0));
        assert!(d.contains("by alice at 2027-01-15T07:59:50Z"), "{d}");
        assert!(
            d.contains("TokenCodeRejected message") && d.contains("Issued message"),
            "{d}"
        );
        assert!(d.contains("(1m00s)"), "{d}");
        let j = details_json(&s, None, t(0));
        assert_eq!(j["lastApproval"]["approvedBy"], "alice");
        assert_eq!(j["conditions"][1]["reason"], "TokenCodeRejected");
        assert_eq!(j["awaitingCode"], false);
    }

    #[test]
    fn details_show_the_role_with_assume_role() {
        let s = st(json!({
            "spec": {"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/deployer"}},
            "status": {
                "sessionSecretName": "app-session",
                "role": {"accessKeyId": "ASIAROLE", "expiration": t(600).to_string(), "assumptions": 3,
                         "failedAttempts": 1, "lastFailure": {"time": t(-5).to_string(), "reason": "RoleAccessDenied", "message": "refused"}},
            }
        }));
        let d = render_details(&s, t(0));
        for needle in [
            "Role:          arn:aws:iam::123456789012:role/deployer",
            "Kept session:  app-session",
            "Role key id:   ASIAROLE",
            "(10m00s)",
            "Assumptions:   3",
            "RoleAccessDenied at",
        ] {
            assert!(d.contains(needle), "{needle}: {d}");
        }
        assert_eq!(details_json(&s, None, t(0))["role"]["assumptions"], 3);
        let plain = render_details(&st(json!({})), t(0));
        assert!(!plain.contains("Role"), "{plain}");
    }

    #[test]
    fn approval_outcomes() {
        let set_at = t(0);
        let before = st(json!({"status": {
            "conditions": [cond("Ready", "False", "AwaitingTokenCode", -100), cond("Issuing", "False", "TokenCodeRejected", -100)],
            "lastFailure": {"time": t(-100).to_string(), "reason": "TokenCodeRejected", "message": "old"},
            "lastApproval": {"approvedBy": "bob", "time": t(-1000).to_string()}, "rotations": 1,
        }}));
        let base = Baseline::of(&before);
        let with_code =
            st(json!({"metadata": {"annotations": {"stssession.dev/token-code": "123456"}}}));
        assert_eq!(
            approve_outcome(&with_code, set_at, &base, None),
            Outcome::Pending(Waiting::NotClaimed)
        );
        // claimed, status not yet written: still the old rejection, which is not this outcome
        assert_eq!(
            approve_outcome(&before, set_at, &base, Some(Duration::from_secs(1))),
            Outcome::Pending(Waiting::Status)
        );
        // ...unless nothing changes for long: then the current state is reported
        assert!(
            matches!(approve_outcome(&before, set_at, &base, Some(SETTLE)), Outcome::Failed { reason, .. } if reason == "TokenCodeRejected")
        );
        let claimed = st(
            json!({"status": {"conditions": [cond("Ready", "False", "AwaitingTokenCode", -100), cond("Issuing", "Unknown", CLAIMED, 0)]}}),
        );
        assert_eq!(
            approve_outcome(&claimed, set_at, &base, Some(SETTLE * 10)),
            Outcome::Pending(Waiting::CallingSts)
        );
        let ok = st(json!({"status": {
            "conditions": [cond("Ready", "True", "Issued", 1), cond("Issuing", "True", "Succeeded", 1)],
            "lastApproval": {"approvedBy": "alice", "time": t(-1).to_string()},
            "expiration": t(3600).to_string(), "secretName": "app", "accessKeyId": "ASIAEXAMPLE", "rotations": 2,
        }}));
        assert_eq!(
            approve_outcome(&ok, set_at, &base, None),
            Outcome::Succeeded {
                expiration: Some(t(3600)),
                secret: Some("app".into()),
                access_key_id: Some("ASIAEXAMPLE".into()),
                approved_by: Some("alice".into())
            }
        );
        assert_eq!(
            approve_outcome(&ok, set_at, &base, None).exit_code(),
            EXIT_OK
        );
        // an older approval's success is not this one's
        let old_ok = st(json!({"status": {
            "conditions": [cond("Ready", "True", "Issued", -100), cond("Issuing", "True", "Succeeded", -100)],
            "lastApproval": {"approvedBy": "bob", "time": t(-3).to_string()}, "rotations": 1}}));
        assert_eq!(
            approve_outcome(&old_ok, set_at, &Baseline::of(&old_ok), None),
            Outcome::Pending(Waiting::Status)
        );
        assert!(
            matches!(approve_outcome(&old_ok, set_at, &Baseline::of(&old_ok), Some(SETTLE)), Outcome::Failed { reason, .. } if reason == "TokenCodeRemoved")
        );
        // The previous approval succeeded a second before this code was set; the operator has
        // claimed this code (its claim time on the object) but not written status yet: not
        // this approval's success (seen under load, in tests/operator/plugin.rs).
        let claimed_after_recent_ok = st(json!({
            "metadata": {"annotations": {"stssession.dev/token-code-claimed-at": t(1).to_string()}},
            "status": {
                "conditions": [cond("Ready", "True", "Issued", -1), cond("Issuing", "True", "Succeeded", -1)],
                "lastApproval": {"approvedBy": "alice", "time": t(-1).to_string()}, "rotations": 2}}));
        assert_eq!(
            approve_outcome(
                &claimed_after_recent_ok,
                set_at,
                &Baseline::of(&claimed_after_recent_ok),
                None
            ),
            Outcome::Pending(Waiting::Status)
        );
        let mut now_ok = claimed_after_recent_ok.clone();
        now_ok
            .status
            .as_mut()
            .unwrap()
            .last_approval
            .as_mut()
            .unwrap()
            .time = t(1);
        assert!(matches!(
            approve_outcome(
                &now_ok,
                set_at,
                &Baseline::of(&claimed_after_recent_ok),
                None
            ),
            Outcome::Succeeded { .. }
        ));
        let rejected = st(json!({"status": {
            "conditions": [cond("Ready", "False", "AwaitingTokenCode", -100), cond("Issuing", "False", "TokenCodeRejected", 1)],
            "lastFailure": {"time": t(1).to_string(), "reason": "TokenCodeRejected", "message": "new"}, "rotations": 1,
        }}));
        let out = approve_outcome(&rejected, set_at, &base, None);
        assert_eq!(
            out,
            Outcome::Failed {
                reason: "TokenCodeRejected".into(),
                message: "TokenCodeRejected message".into()
            }
        );
        assert_eq!(out.exit_code(), EXIT_FAILED);
        // a failure without an STS call (no lastFailure), e.g. an endpoint not allowed
        let blocked = st(
            json!({"status": {"conditions": [cond("Issuing", "False", "EndpointNotAllowed", 1)]}}),
        );
        assert!(
            matches!(approve_outcome(&blocked, set_at, &Baseline::default(), None), Outcome::Failed { reason, .. } if reason == "EndpointNotAllowed")
        );
        assert_eq!(Outcome::Pending(Waiting::Status).exit_code(), EXIT_TIMEOUT);
    }

    #[test]
    fn revoke_policy_denies_sessions_issued_before_the_cutoff() {
        let cutoff: Timestamp = "2026-11-29T23:45:12.750Z".parse().unwrap();
        let p = revoke_policy(cutoff);
        let stmt = &p["Statement"][0];
        assert_eq!(stmt["Effect"], "Deny");
        assert_eq!(stmt["Action"], "*");
        assert_eq!(
            stmt["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-11-29T23:45:12Z"
        );
        assert_eq!(stmt["Sid"], "DenySessionsIssuedBefore20261129T234512Z");
        let s = st(
            json!({"spec": {"mfa": {"serialNumber": "arn:aws:iam::123456789012:mfa/a"},
            "assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/team/deployer"}}}),
        );
        let text = revoke_instructions(
            &s,
            cutoff,
            Some("ASIAOLD"),
            Some(t(cutoff.as_second() + 3600)),
            cutoff,
        );
        assert!(
            text.contains("previous session ASIAOLD stays valid"),
            "{text}"
        );
        assert!(text.contains("\nCut-off: 2026-11-29T23:45:12Z\n"), "{text}");
        assert!(text.contains("--role-name deployer"), "{text}");
        let json_start = text.find("{\n").unwrap();
        let parsed: Value = serde_json::from_str(&text[json_start..]).unwrap();
        assert_eq!(parsed, p);
    }

    #[test]
    fn renewal_outcomes() {
        let at = t(0);
        let before = st(
            json!({"spec": {"mfa": null}, "status": {"issuedAt": t(-50).to_string(), "rotations": 3, "expiration": t(3000).to_string()}}),
        );
        let base = Baseline::of(&before);
        let asked = st(
            json!({"spec": {"mfa": null}, "metadata": {"annotations": {"stssession.dev/renew-requested-at": at.to_string()}}}),
        );
        assert_eq!(
            renew_outcome(&asked, at, &base, None),
            Outcome::Pending(Waiting::NotClaimed)
        );
        assert_eq!(
            renew_outcome(&before, at, &base, Some(Duration::from_secs(1))),
            Outcome::Pending(Waiting::Status)
        );
        let renewed = st(
            json!({"spec": {"mfa": null}, "status": {"issuedAt": t(0).to_string(), "rotations": 4, "expiration": t(3600).to_string(), "secretName": "app"}}),
        );
        assert!(
            matches!(renew_outcome(&renewed, at, &base, None), Outcome::Succeeded { expiration: Some(e), .. } if e == t(3600))
        );
        // a rotation before the request does not count
        let rotated_before = st(
            json!({"spec": {"mfa": null}, "status": {"issuedAt": t(-10).to_string(), "rotations": 4}}),
        );
        assert_eq!(
            renew_outcome(&rotated_before, at, &base, None),
            Outcome::Pending(Waiting::Status)
        );
        let failed = st(
            json!({"spec": {"mfa": null}, "status": {"issuedAt": t(-50).to_string(), "rotations": 3,
            "lastFailure": {"time": t(1).to_string(), "reason": "Throttled", "message": "slow down"}}}),
        );
        assert_eq!(
            renew_outcome(&failed, at, &base, None),
            Outcome::Failed {
                reason: "Throttled".into(),
                message: "slow down".into()
            }
        );
        let blocked = st(
            json!({"spec": {"mfa": null}, "status": {"rotations": 3, "issuedAt": t(-50).to_string(),
            "conditions": [cond("Ready", "False", "SourceCredentialsMissing", -100)]}}),
        );
        assert_eq!(
            renew_outcome(&blocked, at, &base, Some(Duration::from_secs(2))),
            Outcome::Pending(Waiting::Status)
        );
        assert!(
            matches!(renew_outcome(&blocked, at, &base, Some(SETTLE)), Outcome::Failed { reason, .. } if reason == "SourceCredentialsMissing")
        );
        assert!(
            matches!(renew_outcome(&before, at, &base, Some(SETTLE)), Outcome::Failed { reason, .. } if reason == "NotRenewed")
        );
    }

    fn ar(namespace: &str, name: &str, session: &str, status: Value) -> AssumedRole {
        serde_json::from_value(json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"sessionTokenRef": {"name": session}, "roleArn": format!("arn:aws:iam::123456789012:role/{name}")},
            "status": status,
        }))
        .unwrap()
    }

    fn ready_role(namespace: &str, name: &str, session: &str, expires: i64) -> AssumedRole {
        ar(
            namespace,
            name,
            session,
            json!({"conditions": [cond("Ready", "True", "RoleAssumed", -10)], "secretName": name,
                   "expiration": t(expires).to_string(), "renewalTime": t(expires / 2).to_string()}),
        )
    }

    fn named(namespace: &str, name: &str) -> SessionToken {
        st(json!({"metadata": {"name": name, "namespace": namespace}}))
    }

    /// The start (in characters) of every cell of a line: a non-blank after two blanks.
    fn starts(line: &str) -> Vec<usize> {
        let c: Vec<char> = line.chars().collect();
        (0..c.len())
            .filter(|&i| c[i] != ' ' && (i == 0 || (i >= 2 && c[i - 1] == ' ' && c[i - 2] == ' ')))
            .collect()
    }

    /// SessionTokens `db` and `app` in team-a; AssumedRoles `writer` and `reader` on `app`,
    /// `fresh` (no status yet) on `db`, `orphan` on `gone` (missing), and in team-b
    /// `elsewhere` on `app` (missing there).
    fn tree_fixture() -> ([SessionToken; 2], [AssumedRole; 5]) {
        (
            [named("team-a", "db"), named("team-a", "app")],
            [
                ready_role("team-a", "writer", "app", 2700),
                ready_role("team-a", "reader", "app", 1800),
                ar("team-a", "fresh", "db", json!({})),
                ready_role("team-a", "orphan", "gone", 60),
                ready_role("team-b", "elsewhere", "app", 60),
            ],
        )
    }

    #[test]
    fn assumed_roles_are_a_tree_beneath_their_session_token() {
        let (sessions, roles) = tree_fixture();
        let l = listing(&sessions, Some(&roles), t(0));
        let table = render_table(&l, false);
        let lines: Vec<&str> = table.lines().collect();
        let first = |l: &str| l.split("   ").next().unwrap().trim().to_string();
        assert_eq!(
            lines.iter().map(|l| first(l)).collect::<Vec<_>>(),
            [
                "NAME",
                "app",
                "├─ AssumedRole/reader",
                "└─ AssumedRole/writer",
                "db",
                "└─ AssumedRole/fresh",
                "gone",
                "└─ AssumedRole/orphan",
                "app",
                "└─ AssumedRole/elsewhere",
            ],
            "{table}"
        );
        assert!(
            lines[0]
                .split_whitespace()
                .rev()
                .take(2)
                .eq(["ROLE", "SECRET"]),
            "{table}"
        );
        let cells = |l: &str| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(lines[2]),
            [
                "├─ AssumedRole/reader",
                "True",
                "RoleAssumed",
                "2027-01-15T08:30:00Z",
                "30m00s",
                "2027-01-15T08:15:00Z",
                "-",
                "-",
                "reader",
                "arn:aws:iam::123456789012:role/reader"
            ]
        );
        assert_eq!(
            cells(lines[5])[1..5],
            ["Unknown", "<none>", "<none>", "<none>"]
        );
        // the SessionToken's own role column: none
        assert_eq!(cells(lines[1]).last().unwrap(), "<none>");
        // a SessionToken AssumedRoles refer to that does not exist: a line saying so
        assert_eq!(cells(lines[6]), ["gone", "<SessionToken not found>"]);
        assert_eq!(cells(lines[8]), ["app", "<SessionToken not found>"]);
        // every line but those runs on the columns
        for (i, l) in lines
            .iter()
            .enumerate()
            .filter(|(i, _)| ![6, 8].contains(i))
        {
            assert_eq!(starts(l), starts(lines[0]), "line {i}:\n{table}");
        }
    }

    #[test]
    fn assumed_roles_in_json_across_namespaces_and_for_one_session_token() {
        let now = t(0);
        let (sessions, roles) = tree_fixture();
        let l = listing(&sessions, Some(&roles), now);
        // JSON: the roles under their SessionToken, the missing ones apart
        let j = serde_json::to_value(&l).unwrap();
        assert_eq!(j["items"][0]["name"], "app");
        assert_eq!(j["items"][0]["assumedRoles"][1]["name"], "writer");
        assert_eq!(j["items"][0]["assumedRoles"][1]["left"], "45m00s");
        assert_eq!(j["items"][1]["assumedRoles"][0]["ready"], "Unknown");
        assert_eq!(j["missingSessionTokens"][0]["name"], "gone");
        assert_eq!(
            j["missingSessionTokens"][0]["assumedRoles"][0]["sessionToken"],
            "gone"
        );
        assert_eq!(j["missingSessionTokens"][1]["namespace"], "team-b");
        // -A: the namespace on every line, the tree included
        let all = render_table(&l, true);
        let all_lines: Vec<&str> = all.lines().collect();
        assert!(all_lines[0].starts_with("NAMESPACE   NAME "), "{all}");
        assert!(
            all_lines[3].starts_with("team-a      └─ AssumedRole/writer "),
            "{all}"
        );
        assert!(
            all_lines[9].starts_with("team-b      └─ AssumedRole/elsewhere "),
            "{all}"
        );
        // status NAME: only its own AssumedRoles, no missing SessionTokens
        let one = listing_of(&sessions[1], Some(&roles), now);
        assert_eq!(one.items.len(), 1);
        assert_eq!(one.missing_session_tokens, None);
        let names: Vec<_> = one.items[0]
            .assumed_roles
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["reader", "writer"]);
        let d = details_json(&sessions[1], Some(&roles), now);
        assert_eq!(
            d["assumedRoles"][0]["roleArn"],
            "arn:aws:iam::123456789012:role/reader"
        );
    }

    #[test]
    fn without_assumed_roles_the_table_is_as_before() {
        let now = t(0);
        let sessions = [named("team-a", "app")];
        let known_none = listing(&sessions, Some(&[]), now);
        let unknown = listing(&sessions, None, now);
        for l in [&known_none, &unknown] {
            let table = render_table(l, false);
            assert_eq!(table.lines().count(), 2, "{table}");
            assert!(
                table.starts_with("NAME   READY")
                    && table.lines().next().unwrap().ends_with("SECRET"),
                "{table}"
            );
        }
        // JSON: known and none, or not known (the key absent)
        let j = serde_json::to_value(&known_none).unwrap();
        assert_eq!(j["items"][0]["assumedRoles"], json!([]));
        assert_eq!(j["missingSessionTokens"], json!([]));
        let j = serde_json::to_value(&unknown).unwrap();
        assert!(j["items"][0].get("assumedRoles").is_none(), "{j}");
        assert!(j.get("missingSessionTokens").is_none(), "{j}");
        assert!(
            details_json(&sessions[0], None, now)
                .get("assumedRoles")
                .is_none()
        );
        assert_eq!(
            details_json(&sessions[0], Some(&[]), now)["assumedRoles"],
            json!([])
        );
        // nothing at all: the header alone
        assert_eq!(
            render_table(&listing(&[], Some(&[]), now), false)
                .lines()
                .count(),
            1
        );
        // a SessionToken's own role shows the ROLE column
        let own =
            st(json!({"spec": {"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/own"}}}));
        let table = render_table(&listing(&[own], Some(&[]), now), false);
        assert!(table.lines().next().unwrap().ends_with("ROLE"), "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("arn:aws:iam::123456789012:role/own"),
            "{table}"
        );
    }

    #[test]
    fn long_names_widen_their_column_and_stay_aligned() {
        let now = t(0);
        let long = "a".repeat(63);
        let sessions = [named("team-a", "app"), named("team-a", &long)];
        let roles = [
            ready_role("team-a", &"r".repeat(63), "app", 600),
            ready_role("team-a", "s", &long, 600),
            ready_role("team-a", "t", &"m".repeat(253), 600),
        ];
        let table = render_table(&listing(&sessions, Some(&roles), now), false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 7, "{table}");
        assert!(
            lines[4].starts_with(&format!("└─ AssumedRole/{}   True", "r".repeat(63))),
            "{table}"
        );
        // the missing SessionToken's long name runs on without widening the column past it
        let missing = lines.iter().position(|l| l.starts_with("mmm")).unwrap();
        for (i, l) in lines.iter().enumerate().filter(|(i, _)| *i != missing) {
            assert_eq!(starts(l), starts(lines[0]), "line {i}:\n{table}");
        }
        assert_eq!(
            starts(lines[0])[1],
            "└─ AssumedRole/".chars().count() + 63 + 3
        );
    }

    #[test]
    fn approve_counts_the_role_credential_sets_it_refreshes() {
        let app = named("team-a", "app");
        assert_eq!(refresh_note(&app, &[]), None);
        let others = [
            ready_role("team-a", "x", "db", 60),
            ready_role("team-b", "y", "app", 60),
        ];
        assert_eq!(refresh_note(&app, &others), None, "other sessions' roles");
        let roles: Vec<AssumedRole> = ["e", "c", "a", "d", "b"]
            .into_iter()
            .map(|n| ready_role("team-a", n, "app", 60))
            .chain(others.clone())
            .collect();
        assert_eq!(
            refresh_note(&app, &roles).unwrap(),
            "This approval also refreshes 5 role credential sets: AssumedRoles a, b, c, d, e."
        );
        assert_eq!(
            refresh_note(&app, &roles[..1]).unwrap(),
            "This approval also refreshes 1 role credential set: AssumedRole e."
        );
        let own =
            st(json!({"spec": {"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/own"}}}));
        assert_eq!(
            refresh_note(&own, &[]).unwrap(),
            "This approval also refreshes 1 role credential set: its own role (spec.assumeRole)."
        );
        assert_eq!(
            refresh_note(&own, &roles[..2]).unwrap(),
            "This approval also refreshes 3 role credential sets: its own role (spec.assumeRole) and AssumedRoles c, e."
        );
        let many: Vec<AssumedRole> = (0..25)
            .map(|i| ready_role("team-a", &format!("r{i:02}"), "app", 60))
            .collect();
        let note = refresh_note(&app, &many).unwrap();
        assert!(
            note.starts_with(
                "This approval also refreshes 25 role credential sets: AssumedRoles r00, r01,"
            ) && note.ends_with("r09 and 15 more."),
            "{note}"
        );
        let unknown = refresh_unknown_note(
            &own,
            "you may not list AssumedRoles in namespace team-a (Forbidden)",
        );
        assert!(
            unknown.contains("Could not count")
                && unknown.contains("at least 1")
                && unknown.ends_with("Approving anyway."),
            "{unknown}"
        );
        assert!(!refresh_unknown_note(&app, "x").contains("at least"));
    }
}
