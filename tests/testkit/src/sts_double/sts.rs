//! The double's state and the STS actions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;
use jiff::Timestamp;

use super::{
    CodePolicy, Fault, FaultKind, Gate, HoldFilter, IssuedSession, MSG_EXPIRED_TOKEN,
    MSG_INVALID_MFA_CODE, MSG_INVALID_MFA_SERIAL, MSG_INVALID_TOKEN, MSG_MFA_INCOMPLETE,
    MSG_SESSION_CREDENTIALS, MSG_SIGNATURE, MfaDevice, NewUser, Outcome, RecordedCall, RoleSpec,
    StsDoubleConfig, TestRole, TestUser, UserKind, ids, sigv4, totp, xml,
};

pub(crate) const API_VERSION: &str = "2011-06-15";

/// An STS error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl StsError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn access_denied(message: impl Into<String>) -> Self {
        Self::new(403, "AccessDenied", message)
    }
    fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationError", message)
    }
    fn signature(message: impl Into<String>) -> Self {
        Self::new(403, "SignatureDoesNotMatch", message)
    }
    fn incomplete_signature(message: impl Into<String>) -> Self {
        Self::new(400, "IncompleteSignature", message)
    }
    fn invalid_token() -> Self {
        Self::new(403, "InvalidClientTokenId", MSG_INVALID_TOKEN)
    }
    pub(crate) fn injected(kind: FaultKind) -> Self {
        match kind {
            FaultKind::Throttling => Self::new(400, "Throttling", "Rate exceeded"),
            FaultKind::InternalFailure => Self::new(
                500,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.",
            ),
            FaultKind::ServiceUnavailable | FaultKind::ConnectionReset => Self::new(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ),
        }
    }
    pub(crate) fn to_xml(&self, request_id: &str) -> String {
        let kind = if self.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        };
        xml::error(kind, self.code, &self.message, request_id)
    }
}

/// `Name=value` parameters from the query string and the form body (first occurrence wins).
pub(crate) type Params = HashMap<String, String>;

pub(crate) fn parse_params(query: Option<&str>, body: &[u8]) -> Params {
    let mut params = Params::new();
    let pairs =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).chain(form_urlencoded::parse(body));
    for (k, v) in pairs {
        params
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    params
}

/// The request as the double sees it.
pub(crate) struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// A call record filled from what the request says (before anything is checked).
pub(crate) fn new_call(
    headers: &HeaderMap,
    params: &Params,
    request_id: &str,
    at: Timestamp,
) -> RecordedCall {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| sigv4::parse_authorization(v).ok());
    let param = |name: &str| params.get(name).cloned();
    RecordedCall {
        action: param("Action").unwrap_or_default(),
        access_key_id: auth.as_ref().map(|a| a.access_key_id.clone()),
        region: auth.as_ref().map(|a| a.region.clone()),
        duration_seconds: params.get("DurationSeconds").and_then(|d| d.parse().ok()),
        serial_number: param("SerialNumber"),
        token_code_used: param("TokenCode"),
        code_accepted: None,
        role_arn: param("RoleArn"),
        role_session_name: param("RoleSessionName"),
        external_id: param("ExternalId"),
        tags: (1..)
            .map_while(|n| {
                let key = params.get(&format!("Tags.member.{n}.Key"))?;
                let value = params
                    .get(&format!("Tags.member.{n}.Value"))
                    .cloned()
                    .unwrap_or_default();
                Some((key.clone(), value))
            })
            .collect(),
        outcome: Outcome::Ok,
        injected: false,
        issued_access_key_id: None,
        request_id: request_id.to_owned(),
        at,
        handled_in: Duration::ZERO,
    }
}

#[derive(Default)]
pub(crate) struct Faults {
    pub queue: VecDeque<FaultKind>,
    pub random: Vec<(f64, FaultKind)>,
    pub delay: Duration,
    pub outage: Option<FaultKind>,
    /// Armed holds ([`crate::sts_double::StsDouble::hold_next`]), oldest first.
    pub holds: VecDeque<(HoldFilter, Arc<Gate>)>,
}

impl Faults {
    pub(crate) fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Next { count, kind } => self.queue.extend(std::iter::repeat_n(kind, count)),
            Fault::Random { probability, kind } => self.random.push((probability, kind)),
            Fault::Delay(delay) => self.delay = delay,
            Fault::Outage(kind) => self.outage = Some(kind),
        }
    }

    /// The armed hold (if any) the request at hand must wait at: the oldest whose filter
    /// matches. Holds whose handle was released or dropped before any request came are dropped.
    pub(crate) fn take_hold(&mut self, call: &RecordedCall) -> Option<Arc<Gate>> {
        self.holds.retain(|(_, gate)| !gate.is_released());
        let i = self
            .holds
            .iter()
            .position(|(filter, _)| filter.matches(call))?;
        self.holds.remove(i).map(|(_, gate)| gate)
    }

    /// The fault (if any) for the request at hand, and the delay to apply.
    pub(crate) fn draw(&mut self) -> (Option<FaultKind>, Duration) {
        let fault = self.outage.or_else(|| self.queue.pop_front()).or_else(|| {
            self.random
                .iter()
                .find(|(p, _)| rand::random::<f64>() < *p)
                .map(|(_, kind)| *kind)
        });
        (fault, self.delay)
    }
}

pub(crate) struct State {
    pub account_id: String,
    pub users: HashMap<String, TestUser>,
    pub sessions: HashMap<String, IssuedSession>,
    pub roles: HashMap<String, TestRole>,
    pub code_policy: CodePolicy,
    pub rejected_codes: HashSet<String>,
    /// Per MFA serial, the TOTP windows whose code was accepted: like AWS, a code is good once
    /// per device (kept for the windows a code can still be accepted in).
    pub spent_windows: HashMap<String, Vec<u64>>,
    pub returned_lifetime: Option<Duration>,
    pub returned_role_lifetime: Option<Duration>,
    pub returned_expiration: Option<Timestamp>,
    pub require_mfa: bool,
    pub assume_role_requires_session: bool,
    pub max_clock_skew: Duration,
    pub faults: Faults,
    pub calls: Vec<RecordedCall>,
    user_counter: usize,
}

/// Who signed a request, after authentication.
struct Caller {
    /// The key that signed the request.
    access_key_id: String,
    kind: UserKind,
    arn: String,
    user_id: String,
    /// The long-term key at the root of the chain.
    user_access_key_id: String,
    /// Signed with session credentials.
    session: bool,
    /// Signed with credentials from AssumeRole.
    role_session: bool,
    mfa_authenticated: bool,
}

impl State {
    pub(crate) fn new(config: &StsDoubleConfig) -> Self {
        Self {
            account_id: config.account_id.clone(),
            users: HashMap::new(),
            sessions: HashMap::new(),
            roles: HashMap::new(),
            code_policy: config.code_policy.clone(),
            rejected_codes: HashSet::new(),
            spent_windows: HashMap::new(),
            returned_lifetime: config.returned_lifetime,
            returned_role_lifetime: config.returned_role_lifetime,
            returned_expiration: None,
            require_mfa: config.require_mfa,
            assume_role_requires_session: config.assume_role_requires_session,
            max_clock_skew: config.max_clock_skew,
            faults: Faults::default(),
            calls: Vec::new(),
            user_counter: 0,
        }
    }

    pub(crate) fn add_user(&mut self, new: NewUser) -> TestUser {
        self.user_counter += 1;
        let account = &self.account_id;
        let name = new.name.unwrap_or_else(|| match new.kind {
            UserKind::IamUser => format!("test-user-{}", self.user_counter),
            UserKind::AccountRoot => "root".to_owned(),
        });
        let (arn, user_id, mut serial) = match new.kind {
            UserKind::IamUser => (
                format!("arn:aws:iam::{account}:user/{name}"),
                ids::unique_id("AIDA"),
                format!("arn:aws:iam::{account}:mfa/{name}"),
            ),
            UserKind::AccountRoot => (
                format!("arn:aws:iam::{account}:root"),
                account.clone(),
                format!("arn:aws:iam::{account}:mfa/root-account-mfa-device"),
            ),
        };
        if self
            .users
            .values()
            .any(|u| u.serial_number() == Some(serial.as_str()))
        {
            serial = format!("{serial}-{}", self.user_counter);
        }
        let user = TestUser {
            kind: new.kind,
            name,
            arn,
            user_id,
            access_key_id: ids::access_key_id("AKIA"),
            secret_access_key: ids::secret_access_key(),
            mfa: new.mfa.then(|| MfaDevice {
                serial_number: serial,
                seed: ids::totp_seed(),
            }),
        };
        self.users.insert(user.access_key_id.clone(), user.clone());
        user
    }

    pub(crate) fn add_role(&mut self, spec: RoleSpec) -> TestRole {
        let account_id = spec.account_id.unwrap_or_else(|| self.account_id.clone());
        let role = TestRole {
            arn: format!("arn:aws:iam::{account_id}:role/{}", spec.name),
            account_id,
            role_id: ids::unique_id("AROA"),
            name: spec.name,
            external_id: spec.external_id,
            max_session_duration: spec.max_session_duration,
            require_mfa: spec.require_mfa,
        };
        self.roles.insert(role.arn.clone(), role.clone());
        role
    }

    /// Handles one request (faults already applied). Returns the success body.
    pub(crate) fn process(
        &mut self,
        req: &RequestParts<'_>,
        params: &Params,
        call: &mut RecordedCall,
        now: Timestamp,
    ) -> Result<String, StsError> {
        let action = params
            .get("Action")
            .ok_or_else(|| StsError::new(400, "MissingAction", "Missing Action"))?;
        let version = params.get("Version").map(String::as_str).unwrap_or("");
        if version != API_VERSION
            || !matches!(
                action.as_str(),
                "GetSessionToken" | "AssumeRole" | "GetCallerIdentity"
            )
        {
            return Err(StsError::new(
                400,
                "InvalidAction",
                format!("Could not find operation {action} for version {version}"),
            ));
        }
        let caller = self.authenticate(req, now)?;
        let request_id = call.request_id.clone();
        match action.as_str() {
            "GetSessionToken" => self.get_session_token(&caller, params, call, now, &request_id),
            "AssumeRole" => self.assume_role(&caller, params, call, now, &request_id),
            _ => Ok(xml::success(
                "GetCallerIdentity",
                &format!(
                    "    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n",
                    xml::escape(&caller.arn),
                    xml::escape(&caller.user_id),
                    xml::escape(&self.account_id)
                ),
                &request_id,
            )),
        }
    }

    fn authenticate(&self, req: &RequestParts<'_>, now: Timestamp) -> Result<Caller, StsError> {
        let Some(auth_value) = req.headers.get("authorization") else {
            return Err(StsError::new(
                403,
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
            ));
        };
        let auth_value = auth_value
            .to_str()
            .map_err(|_| StsError::incomplete_signature("Authorization header is not ASCII"))?;
        let auth =
            sigv4::parse_authorization(auth_value).map_err(StsError::incomplete_signature)?;
        let Some(amz_date) = req.headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
            return Err(StsError::incomplete_signature(format!(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization={auth_value}"
            )));
        };
        let token = req
            .headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok());

        let (secret, caller) = if let Some(user) = self.users.get(&auth.access_key_id) {
            if token.is_some() {
                return Err(StsError::invalid_token());
            }
            let caller = Caller {
                access_key_id: auth.access_key_id.clone(),
                kind: user.kind,
                arn: user.arn.clone(),
                user_id: user.user_id.clone(),
                user_access_key_id: user.access_key_id.clone(),
                session: false,
                role_session: false,
                mfa_authenticated: false,
            };
            (user.secret_access_key.as_str(), caller)
        } else if let Some(session) = self.sessions.get(&auth.access_key_id) {
            if !token.is_some_and(|t| {
                totp::constant_time_eq(t.as_bytes(), session.session_token.as_bytes())
            }) {
                return Err(StsError::invalid_token());
            }
            let caller = Caller {
                access_key_id: auth.access_key_id.clone(),
                kind: session.user_kind,
                arn: session.caller_arn.clone(),
                user_id: session.caller_user_id.clone(),
                user_access_key_id: session.user_access_key_id.clone(),
                session: true,
                role_session: session.role_arn.is_some(),
                mfa_authenticated: session.mfa_authenticated,
            };
            (session.secret_access_key.as_str(), caller)
        } else {
            return Err(StsError::invalid_token());
        };

        if auth.service != "sts" {
            return Err(StsError::signature(
                "Credential should be scoped to correct service: 'sts'. ",
            ));
        }
        if auth.terminator != "aws4_request" {
            return Err(StsError::signature(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'. ",
                auth.terminator
            )));
        }
        if !auth.signed_headers.iter().any(|h| h == "host") {
            return Err(StsError::signature(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }
        let signed_at = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", amz_date)
            .ok()
            .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
            .ok_or_else(|| {
                StsError::incomplete_signature(format!(
                    "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
                ))
            })?;
        if amz_date.get(..8) != Some(auth.scope_date.as_str()) {
            return Err(StsError::signature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.scope_date,
                &amz_date[..8.min(amz_date.len())]
            )));
        }
        let skew = jiff::SignedDuration::try_from(self.max_clock_skew)
            .unwrap_or(jiff::SignedDuration::MAX);
        if now.duration_since(signed_at) > skew {
            return Err(StsError::signature(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
                basic_format(now - skew),
                basic_format(now)
            )));
        }
        if signed_at.duration_since(now) > skew {
            return Err(StsError::signature(format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
                basic_format(now + skew),
                basic_format(now)
            )));
        }
        let body_hash = sigv4::sha256_hex(req.body);
        if req
            .headers
            .get("x-amz-content-sha256")
            .is_some_and(|claimed| claimed.as_bytes() != body_hash.as_bytes())
        {
            return Err(StsError::signature(MSG_SIGNATURE));
        }
        let canonical = sigv4::canonical_request(
            req.method,
            req.path,
            req.query,
            req.headers,
            &auth.signed_headers,
            &body_hash,
        );
        let to_sign = sigv4::string_to_sign(amz_date, &auth.scope(), &canonical);
        let expected = sigv4::signature(secret, &auth, &to_sign);
        if !totp::constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            return Err(StsError::signature(MSG_SIGNATURE));
        }
        if self
            .sessions
            .get(&auth.access_key_id)
            .is_some_and(|s| s.is_expired_at(now))
        {
            return Err(StsError::new(403, "ExpiredToken", MSG_EXPIRED_TOKEN));
        }
        Ok(caller)
    }

    /// Checks SerialNumber/TokenCode against `device`. `Ok(true)`: MFA verified; `Ok(false)`:
    /// none given.
    fn check_mfa(
        &mut self,
        device: Option<&MfaDevice>,
        params: &Params,
        call: &mut RecordedCall,
        now: Timestamp,
    ) -> Result<bool, StsError> {
        let (serial, code) = match (params.get("SerialNumber"), params.get("TokenCode")) {
            (None, None) => return Ok(false),
            (Some(serial), Some(code)) => (serial, code),
            _ => return Err(StsError::access_denied(MSG_MFA_INCOMPLETE)),
        };
        let Some(device) = device.filter(|d| &d.serial_number == serial) else {
            call.code_accepted = Some(false);
            return Err(StsError::access_denied(MSG_INVALID_MFA_SERIAL));
        };
        let accepted = !self.rejected_codes.contains(code)
            && match self.code_policy {
                CodePolicy::Totp => self.accept_totp_once(device, code, now),
                CodePolicy::AcceptAny => true,
                CodePolicy::RejectAll => false,
            };
        call.code_accepted = Some(accepted);
        if accepted {
            Ok(true)
        } else {
            Err(StsError::access_denied(MSG_INVALID_MFA_CODE))
        }
    }

    /// A TOTP code of the device's current window or one either side, not accepted before:
    /// AWS accepts each code once per device, so a replayed code is refused like a wrong one.
    fn accept_totp_once(&mut self, device: &MfaDevice, code: &str, now: Timestamp) -> bool {
        let Some(window) = totp::matching_window(&device.seed, code, now) else {
            return false;
        };
        let current = totp::counter_at(now.as_second());
        let spent = self
            .spent_windows
            .entry(device.serial_number.clone())
            .or_default();
        // Windows more than one step back can no longer be accepted anyway.
        spent.retain(|w| w.saturating_add(1) >= current);
        if spent.contains(&window) {
            return false;
        }
        spent.push(window);
        true
    }

    fn get_session_token(
        &mut self,
        caller: &Caller,
        params: &Params,
        call: &mut RecordedCall,
        now: Timestamp,
        request_id: &str,
    ) -> Result<String, StsError> {
        if caller.session {
            return Err(StsError::access_denied(MSG_SESSION_CREDENTIALS));
        }
        let duration = duration_param(params, 900, 129_600)?;
        validate_mfa_params(params)?;
        let granted = match caller.kind {
            UserKind::IamUser => duration.unwrap_or(43_200),
            UserKind::AccountRoot => duration.unwrap_or(3_600).min(3_600),
        };
        let device = self
            .users
            .get(&caller.user_access_key_id)
            .and_then(|u| u.mfa.clone());
        let mfa = self.check_mfa(device.as_ref(), params, call, now)?;
        if !mfa && self.require_mfa {
            return Err(StsError::access_denied(format!(
                "User: {} is not authorized to perform: sts:GetSessionToken with an explicit deny in an identity-based policy",
                caller.arn
            )));
        }
        let session = self.issue(now, granted, "GetSessionToken", caller, mfa, None);
        call.issued_access_key_id = Some(session.access_key_id.clone());
        Ok(xml::success(
            "GetSessionToken",
            &credentials_xml(&session),
            request_id,
        ))
    }

    fn assume_role(
        &mut self,
        caller: &Caller,
        params: &Params,
        call: &mut RecordedCall,
        now: Timestamp,
        request_id: &str,
    ) -> Result<String, StsError> {
        let role_arn = required_param(params, "RoleArn", "roleArn")?;
        let session_name = required_param(params, "RoleSessionName", "roleSessionName")?;
        let duration = duration_param(params, 900, 43_200)?;
        check_length(role_arn, "roleArn", 20, 2048)?;
        check_length(session_name, "roleSessionName", 2, 64)?;
        check_pattern(session_name, "roleSessionName", "[\\w+=,.@-]*", |c| {
            c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
        })?;
        if let Some(external_id) = params.get("ExternalId") {
            check_length(external_id, "externalId", 2, 1224)?;
            check_pattern(external_id, "externalId", "[\\w+=,.@:\\/-]*", |c| {
                c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c)
            })?;
        }
        validate_mfa_params(params)?;
        if !valid_role_arn(role_arn) {
            return Err(StsError::validation(format!("{role_arn} is invalid")));
        }
        if !caller.session && self.assume_role_requires_session {
            return Err(StsError::access_denied(
                "The STS test double only accepts AssumeRole signed with session credentials it issued",
            ));
        }
        if caller.kind == UserKind::AccountRoot {
            return Err(StsError::access_denied(
                "Roles may not be assumed by root accounts.",
            ));
        }
        let not_authorized = || {
            StsError::access_denied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                caller.arn
            ))
        };
        let role = self
            .roles
            .get(role_arn)
            .cloned()
            .ok_or_else(not_authorized)?;
        if role.external_id.is_some() && role.external_id.as_ref() != params.get("ExternalId") {
            return Err(not_authorized());
        }
        let device = self
            .users
            .get(&caller.user_access_key_id)
            .and_then(|u| u.mfa.clone());
        let mfa = self.check_mfa(device.as_ref(), params, call, now)? || caller.mfa_authenticated;
        if role.require_mfa && !mfa {
            return Err(not_authorized());
        }
        let granted = duration.unwrap_or(3_600);
        if caller.role_session && granted > 3_600 {
            return Err(StsError::validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
            ));
        }
        if granted > role.max_session_duration.as_secs() as i64 {
            return Err(StsError::validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ));
        }
        let session = self.issue(
            now,
            granted,
            "AssumeRole",
            caller,
            mfa,
            Some((&role, session_name)),
        );
        call.issued_access_key_id = Some(session.access_key_id.clone());
        let result = format!(
            "    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n{}",
            xml::escape(&session.caller_user_id),
            xml::escape(&session.caller_arn),
            credentials_xml(&session)
        );
        Ok(xml::success("AssumeRole", &result, request_id))
    }

    fn issue(
        &mut self,
        now: Timestamp,
        granted_seconds: i64,
        action: &str,
        caller: &Caller,
        mfa_authenticated: bool,
        role: Option<(&TestRole, &str)>,
    ) -> IssuedSession {
        let role_lifetime = self.returned_role_lifetime.filter(|_| role.is_some());
        let seconds = |d: Duration| d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0);
        let lifetime = match (
            role_lifetime,
            self.returned_expiration,
            self.returned_lifetime,
        ) {
            (Some(d), _, _) => seconds(d),
            (None, Some(at), _) => (at.as_second() - now.as_second()).max(1),
            (None, None, Some(d)) => seconds(d),
            (None, None, None) => granted_seconds,
        };
        let issued_at = Timestamp::from_second(now.as_second()).expect("now is in range");
        let expiration =
            Timestamp::from_second(now.as_second() + lifetime).expect("expiration in range");
        let (caller_arn, caller_user_id) = match role {
            Some((role, session_name)) => {
                let short_name = role.name.rsplit('/').next().unwrap_or(&role.name);
                (
                    format!(
                        "arn:aws:sts::{}:assumed-role/{short_name}/{session_name}",
                        role.account_id
                    ),
                    format!("{}:{session_name}", role.role_id),
                )
            }
            None => (caller.arn.clone(), caller.user_id.clone()),
        };
        let session = IssuedSession {
            access_key_id: ids::access_key_id("ASIA"),
            secret_access_key: ids::secret_access_key(),
            session_token: ids::session_token(),
            expiration,
            issued_at,
            action: action.to_owned(),
            user_access_key_id: caller.user_access_key_id.clone(),
            issued_to_access_key_id: caller.access_key_id.clone(),
            granted_duration_seconds: granted_seconds,
            mfa_authenticated,
            user_kind: caller.kind,
            caller_arn,
            caller_user_id,
            role_arn: role.map(|(r, _)| r.arn.clone()),
            role_session_name: role.map(|(_, n)| n.to_owned()),
        };
        self.sessions
            .insert(session.access_key_id.clone(), session.clone());
        session
    }
}

fn credentials_xml(session: &IssuedSession) -> String {
    xml::credentials(
        &session.access_key_id,
        &session.secret_access_key,
        &session.session_token,
        &session
            .expiration
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    )
}

fn basic_format(t: Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn required_param<'a>(params: &'a Params, name: &str, member: &str) -> Result<&'a str, StsError> {
    params.get(name).map(String::as_str).ok_or_else(|| {
        StsError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn duration_param(params: &Params, min: i64, max: i64) -> Result<Option<i64>, StsError> {
    let Some(raw) = params.get("DurationSeconds") else {
        return Ok(None);
    };
    let value: i64 = raw.parse().map_err(|_| {
        StsError::validation(format!(
            "1 validation error detected: Value '{raw}' at 'durationSeconds' failed to satisfy constraint: Member must be an integer"
        ))
    })?;
    if value < min {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {min}"
        )));
    }
    if value > max {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to {max}"
        )));
    }
    Ok(Some(value))
}

fn check_length(value: &str, member: &str, min: usize, max: usize) -> Result<(), StsError> {
    let len = value.chars().count();
    if len < min {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
        )));
    }
    if len > max {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max}"
        )));
    }
    Ok(())
}

fn check_pattern(
    value: &str,
    member: &str,
    pattern: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), StsError> {
    if value.chars().all(allowed) {
        Ok(())
    } else {
        Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}"
        )))
    }
}

/// SerialNumber: 9..=256 of `[\w+=/:,.@-]`; TokenCode: exactly 6 digits.
fn validate_mfa_params(params: &Params) -> Result<(), StsError> {
    if let Some(serial) = params.get("SerialNumber") {
        check_length(serial, "serialNumber", 9, 256)?;
        check_pattern(serial, "serialNumber", "[\\w+=/:,.@-]*", |c| {
            c.is_ascii_alphanumeric() || "_+=/:,.@-".contains(c)
        })?;
    }
    if let Some(code) = params.get("TokenCode") {
        check_length(code, "tokenCode", 6, 6)?;
        check_pattern(code, "tokenCode", "[\\d]*", |c| c.is_ascii_digit())?;
    }
    Ok(())
}

/// `arn:aws:iam::<12 digits>:role/<path/>name`
fn valid_role_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:aws:iam::") else {
        return false;
    };
    let Some((account, resource)) = rest.split_once(':') else {
        return false;
    };
    account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-/".contains(c))
        })
}
