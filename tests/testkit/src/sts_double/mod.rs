//! The STS *test double*: a small local STS (Query protocol, SigV4-checked, plain HTTP) for what
//! moto cannot do: distinct credentials per call, real MFA (TOTP) checking, AWS-shaped error bodies
//! the SDK can read, short returned lifetimes, fault injection, and per-call records.
//!
//! It runs on its own thread with its own tokio runtime, so it can be shared by many
//! `#[tokio::test]`s (each with its own runtime) and outlives them; dropping [`StsDouble`] stops it.
//!
//! Actions: `GetSessionToken`, `AssumeRole` (only with session credentials it issued, unless
//! [`StsDoubleConfig::assume_role_requires_session`] is off), `GetCallerIdentity`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testkit::sts_double::{StsDouble, StsDoubleConfig};
//! let double = StsDouble::start(StsDoubleConfig::default())?;
//! let user = double.default_user();
//! let sts = aws_sdk_sts::Client::from_conf(
//!     double.sdk_config_builder().credentials_provider(user.sdk_credentials()).build(),
//! );
//! let out = sts
//!     .get_session_token()
//!     .serial_number(user.serial_number().unwrap())
//!     .token_code(user.totp_code_now())
//!     .send()
//!     .await?;
//! # Ok(()) }
//! ```

mod ids;
mod server;
pub mod sigv4;
mod sts;
pub mod totp;
mod xml;

use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use jiff::Timestamp;

pub use xml::NAMESPACE as XML_NAMESPACE;

/// `AccessDenied` message for a wrong one-time code (the serial is the user's).
pub const MSG_INVALID_MFA_CODE: &str =
    "MultiFactorAuthentication failed with invalid MFA one time pass code.";
/// `AccessDenied` message for a serial number that is not the calling user's MFA device.
pub const MSG_INVALID_MFA_SERIAL: &str = "MultiFactorAuthentication failed, unable to validate MFA code.  Please verify your MFA serial number is valid and associated with this user.";
/// `AccessDenied` message when only one of serial number and code is given.
pub const MSG_MFA_INCOMPLETE: &str =
    "MultiFactorAuthentication failed, must provide both MFA serial number and one time pass code.";
/// `AccessDenied` message for GetSessionToken signed with session credentials.
pub const MSG_SESSION_CREDENTIALS: &str = "Cannot call GetSessionToken with session credentials";
/// `InvalidClientTokenId` message.
pub const MSG_INVALID_TOKEN: &str = "The security token included in the request is invalid.";
/// `ExpiredToken` message.
pub const MSG_EXPIRED_TOKEN: &str = "The security token included in the request is expired";
/// `SignatureDoesNotMatch` message.
pub const MSG_SIGNATURE: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Which kind of principal owns a long-term access key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UserKind {
    /// An IAM user: GetSessionToken takes 900..=129600 s, default 43200.
    #[default]
    IamUser,
    /// The account root user: 900..=129600 accepted, anything above 3600 clamped to 3600,
    /// default 3600; may not AssumeRole.
    AccountRoot,
}

/// How one-time codes are judged (the MFA serial number is always checked).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CodePolicy {
    /// RFC 6238 TOTP of the device's seed, current window or one either side.
    #[default]
    Totp,
    /// Any six-digit code, for tests needing many approvals faster than TOTP windows pass.
    /// Codes in the reject list ([`StsDouble::set_rejected_codes`]) are still refused.
    AcceptAny,
    /// Every code is refused.
    RejectAll,
}

/// Settings for [`StsDouble::start`]. `Default` gives a free port, account `123456789012`, and an
/// IAM user `test-user` with an MFA device, judged by TOTP.
#[derive(Clone, Debug)]
pub struct StsDoubleConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    pub account_id: String,
    pub default_user_kind: UserKind,
    pub default_user_name: String,
    pub code_policy: CodePolicy,
    /// See [`StsDouble::set_returned_lifetime`].
    pub returned_lifetime: Option<Duration>,
    /// See [`StsDouble::set_returned_role_lifetime`].
    pub returned_role_lifetime: Option<Duration>,
    /// GetSessionToken without SerialNumber/TokenCode is denied (real AWS allows it unless a
    /// policy forbids; off by default).
    pub require_mfa: bool,
    /// AssumeRole signed with long-term keys is denied (real AWS allows it; on by default,
    /// since callers of the double are expected to use the session credentials it issued).
    pub assume_role_requires_session: bool,
    /// How far `X-Amz-Date` may be from the double's clock (AWS: 15 minutes).
    pub max_clock_skew: Duration,
}

impl Default for StsDoubleConfig {
    fn default() -> Self {
        Self {
            port: 0,
            account_id: "123456789012".to_owned(),
            default_user_kind: UserKind::IamUser,
            default_user_name: "test-user".to_owned(),
            code_policy: CodePolicy::Totp,
            returned_lifetime: None,
            returned_role_lifetime: None,
            require_mfa: false,
            assume_role_requires_session: true,
            max_clock_skew: Duration::from_secs(15 * 60),
        }
    }
}

/// A virtual MFA device (TOTP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MfaDevice {
    /// e.g. `arn:aws:iam::123456789012:mfa/test-user`
    pub serial_number: String,
    /// The raw TOTP seed.
    pub seed: Vec<u8>,
}

impl MfaDevice {
    /// The seed in base32, as authenticator apps take it.
    pub fn seed_base32(&self) -> String {
        totp::base32_encode(&self.seed)
    }
    pub fn totp_code_now(&self) -> String {
        totp::code_at(&self.seed, Timestamp::now())
    }
    pub fn totp_code_at(&self, t: Timestamp) -> String {
        totp::code_at(&self.seed, t)
    }
    /// `otpauth://totp/...` URI (for a QR code in a demo).
    pub fn otpauth_uri(&self, account_label: &str) -> String {
        let label: String = form_urlencoded::byte_serialize(account_label.as_bytes()).collect();
        format!(
            "otpauth://totp/sts-test-double:{label}?secret={}&issuer=sts-test-double&algorithm=SHA1&digits=6&period=30",
            self.seed_base32()
        )
    }
}

/// A principal with long-term keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    pub kind: UserKind,
    /// IAM user name (`root` for the account root).
    pub name: String,
    /// `arn:aws:iam::ACCOUNT:user/NAME` or `arn:aws:iam::ACCOUNT:root`.
    pub arn: String,
    /// `AIDA...` for IAM users, the account id for root.
    pub user_id: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub mfa: Option<MfaDevice>,
}

impl TestUser {
    pub fn serial_number(&self) -> Option<&str> {
        self.mfa.as_ref().map(|m| m.serial_number.as_str())
    }
    /// The current TOTP code. Panics if the user has no MFA device.
    pub fn totp_code_now(&self) -> String {
        self.mfa
            .as_ref()
            .expect("user has no MFA device")
            .totp_code_now()
    }
    /// The TOTP code at `t`. Panics if the user has no MFA device.
    pub fn totp_code_at(&self, t: Timestamp) -> String {
        self.mfa
            .as_ref()
            .expect("user has no MFA device")
            .totp_code_at(t)
    }
    /// The long-term keys as SDK credentials.
    pub fn sdk_credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "sts-test-double",
        )
    }
}

/// Options for [`StsDouble::add_user_with`].
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    pub kind: UserKind,
    /// Default: `test-user-N` (IAM) or `root`.
    pub name: Option<String>,
    /// Give the user an MFA device.
    pub mfa: bool,
}

/// A role AssumeRole may assume.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    /// Role name (with an optional path, e.g. `team/deployer`).
    pub name: String,
    /// If set, AssumeRole must pass exactly this ExternalId.
    pub external_id: Option<String>,
    /// The role's MaxSessionDuration (AWS: 3600 by default, at most 43200).
    pub max_session_duration: Duration,
    /// The trust policy requires MFA (`aws:MultiFactorAuthPresent`): the caller's session must
    /// come from GetSessionToken with MFA, or AssumeRole must carry a valid SerialNumber/TokenCode.
    pub require_mfa: bool,
    /// The account the role is in, if not the double's own: a role in another account whose
    /// trust policy trusts the double's account (a cross-account AssumeRole). The assumed-role
    /// ARN then names that account, as AWS's does.
    pub account_id: Option<String>,
}

impl RoleSpec {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            external_id: None,
            max_session_duration: Duration::from_secs(3600),
            require_mfa: false,
            account_id: None,
        }
    }
}

/// A registered role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRole {
    /// `arn:aws:iam::ACCOUNT:role/NAME`
    pub arn: String,
    /// ACCOUNT of the ARN.
    pub account_id: String,
    /// `AROA...`
    pub role_id: String,
    pub name: String,
    pub external_id: Option<String>,
    pub max_session_duration: Duration,
    pub require_mfa: bool,
}

/// Session credentials the double issued (by GetSessionToken or AssumeRole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedSession {
    /// `ASIA...`
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// As returned (whole seconds); the double refuses the session from then on (`ExpiredToken`).
    pub expiration: Timestamp,
    pub issued_at: Timestamp,
    /// `GetSessionToken` or `AssumeRole`.
    pub action: String,
    /// The long-term key of the user at the root of the chain.
    pub user_access_key_id: String,
    /// The key that signed the call that issued this session (long-term or session).
    pub issued_to_access_key_id: String,
    /// The DurationSeconds granted (after defaults and clamping), before any lifetime override.
    pub granted_duration_seconds: i64,
    /// MFA was verified when this session (or the session it was assumed from) was issued.
    pub mfa_authenticated: bool,
    /// The kind of user at the root of the chain.
    pub user_kind: UserKind,
    /// What GetCallerIdentity returns for this session: the user's ARN (GetSessionToken) or
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` (AssumeRole).
    pub caller_arn: String,
    /// GetCallerIdentity's UserId: `AIDA...` / the account id (GetSessionToken), `AROA...:SESSION`.
    pub caller_user_id: String,
    /// For AssumeRole sessions.
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
}

impl IssuedSession {
    pub fn is_expired_at(&self, t: Timestamp) -> bool {
        t >= self.expiration
    }
    /// The session as SDK credentials (with token and expiry).
    pub fn sdk_credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            Some(self.session_token.clone()),
            Some(SystemTime::from(self.expiration)),
            "sts-test-double",
        )
    }
}

/// What the double did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An STS error response.
    Error {
        code: String,
        status: u16,
    },
    /// The connection was reset without a response (injected).
    ConnectionReset,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
    /// The error code, `ConnectionReset` for a reset, `None` for success.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Error { code, .. } => Some(code),
            Outcome::ConnectionReset => Some("ConnectionReset"),
        }
    }
}

/// One request the double received (every request, including injected faults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    /// The `Action` parameter (empty if absent).
    pub action: String,
    /// From the Authorization header's credential scope (not necessarily a known key).
    pub access_key_id: Option<String>,
    /// The region of the credential scope.
    pub region: Option<String>,
    /// As requested (None if absent or not a number).
    pub duration_seconds: Option<i64>,
    pub serial_number: Option<String>,
    /// The TokenCode as sent.
    pub token_code_used: Option<String>,
    /// `Some(accepted?)` if the code was actually judged (the request got past fault injection,
    /// authentication and validation, and serial + code were both present).
    pub code_accepted: Option<bool>,
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
    pub external_id: Option<String>,
    /// AssumeRole session tags as sent (`Tags.member.N.Key`/`.Value`), in order.
    pub tags: Vec<(String, String)>,
    pub outcome: Outcome,
    /// The outcome was injected by [`StsDouble::inject_faults`].
    pub injected: bool,
    /// The session key issued by this call, if any.
    pub issued_access_key_id: Option<String>,
    pub request_id: String,
    /// When the request arrived.
    pub at: Timestamp,
    /// How long the double took, from the request's arrival to its response (an injected
    /// [`Fault::Delay`] included): the server-side share of a call's round trip.
    pub handled_in: Duration,
}

/// Kinds of injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// 400 `Throttling` "Rate exceeded".
    Throttling,
    /// 500 `InternalFailure`.
    InternalFailure,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// The connection is reset (RST) without a response.
    ConnectionReset,
}

/// Fault injection, see [`StsDouble::inject_faults`]. Injected faults apply to every request
/// before authentication; checks run in order: outage, the queue of next-N faults, random faults.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The next `count` requests fail with `kind` (queued after earlier `Next` faults).
    Next { count: usize, kind: FaultKind },
    /// Each request fails with `kind` with this probability (0.0..=1.0); several may be active.
    Random { probability: f64, kind: FaultKind },
    /// Every response (success or failure) is delayed this long; `Duration::ZERO` turns it off.
    Delay(Duration),
    /// Every request fails with `kind` until [`StsDouble::end_outage`] or
    /// [`StsDouble::clear_faults`].
    Outage(FaultKind),
}

/// Which request an armed hold ([`StsDouble::hold_next`]) catches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldFilter {
    /// The next request of any kind.
    Any,
    /// The next request that carries a `TokenCode` (an MFA approval's call).
    WithTokenCode,
}

impl HoldFilter {
    pub(crate) fn matches(self, call: &RecordedCall) -> bool {
        match self {
            HoldFilter::Any => true,
            HoldFilter::WithTokenCode => call.token_code_used.is_some(),
        }
    }
}

/// Where a held request waits. Runtime-agnostic (tokio `watch`), so the double's thread and a
/// test's runtime can both use it.
pub(crate) struct Gate {
    arrived: tokio::sync::watch::Sender<Option<RecordedCall>>,
    released: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    pub(crate) fn is_released(&self) -> bool {
        *self.released.borrow()
    }

    /// Called by the server: announces the request, then waits for the release.
    pub(crate) async fn park(&self, call: &RecordedCall) {
        self.arrived.send_replace(Some(call.clone()));
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
}

/// An armed hold: the first matching request the double receives waits, before fault
/// injection and before it is judged (its code not yet used), until [`HeldCall::release`] or
/// until this handle is dropped. The caller thus knows that a call is in flight and stays in
/// flight: what a crash test needs to kill a client in the middle of an STS call on purpose.
/// After the release the request goes on as usual (delay, faults, processing); if its client
/// died meanwhile, the answer goes nowhere, as with real STS. Its [`RecordedCall::handled_in`]
/// includes the time held.
pub struct HeldCall {
    gate: Arc<Gate>,
}

impl HeldCall {
    /// Waits up to `timeout` for a matching request to arrive; returns it as recorded so far
    /// (action, key, serial number and code; outcome not yet known).
    pub async fn arrived(&self, timeout: Duration) -> Option<RecordedCall> {
        let mut rx = self.gate.arrived.subscribe();
        let fut = rx.wait_for(|c| c.is_some());
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(call)) => call.clone(),
            _ => None,
        }
    }

    /// Whether a request is waiting (or has waited) here.
    pub fn has_arrived(&self) -> bool {
        self.gate.arrived.borrow().is_some()
    }

    /// Lets the held request go on (or, if none came yet, disarms the hold).
    pub fn release(&self) {
        self.gate.released.send_replace(true);
    }
}

impl Drop for HeldCall {
    fn drop(&mut self) {
        self.release();
    }
}

/// A running STS test double. Stops (and frees its port) on drop.
pub struct StsDouble {
    shared: Arc<Shared>,
    endpoint: String,
    port: u16,
    default_user: TestUser,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<sts::State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, sts::State> {
        // A panicking test must not poison the double for the tests sharing it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StsDouble {
    /// Binds 127.0.0.1:`config.port` and serves on a dedicated thread. Callable from inside or
    /// outside a tokio runtime.
    pub fn start(config: StsDoubleConfig) -> anyhow::Result<StsDouble> {
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let mut state = sts::State::new(&config);
        let default_user = state.add_user(NewUser {
            kind: config.default_user_kind,
            name: Some(config.default_user_name.clone()),
            mfa: true,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let thread = server::spawn(listener, shared.clone(), shutdown_rx)?;
        Ok(StsDouble {
            shared,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            default_user,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn account_id(&self) -> String {
        self.shared.lock().account_id.clone()
    }

    /// An `aws_sdk_sts` config builder pointed at the double (region us-east-1, plain-HTTP
    /// endpoint, rustls/ring HTTP client, latest behavior version); add credentials (and retry
    /// settings) and `build()`.
    pub fn sdk_config_builder(&self) -> aws_sdk_sts::config::Builder {
        use aws_smithy_http_client::tls;
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
    }

    /// The user created at start (an IAM user `test-user` with an MFA device, unless configured).
    pub fn default_user(&self) -> TestUser {
        self.default_user.clone()
    }

    /// Adds a user with random `AKIA...` keys and an MFA device.
    pub fn add_user(&self, kind: UserKind) -> TestUser {
        self.add_user_with(NewUser {
            kind,
            name: None,
            mfa: true,
        })
    }

    pub fn add_user_with(&self, new: NewUser) -> TestUser {
        self.shared.lock().add_user(new)
    }

    /// Deletes a user's access key (later calls with it get `InvalidClientTokenId`); sessions
    /// already issued stay valid, as in AWS.
    pub fn remove_user(&self, access_key_id: &str) -> bool {
        self.shared.lock().users.remove(access_key_id).is_some()
    }

    pub fn user(&self, access_key_id: &str) -> Option<TestUser> {
        self.shared.lock().users.get(access_key_id).cloned()
    }

    /// Registers a role for AssumeRole (any user of the account may assume it).
    pub fn add_role(&self, spec: RoleSpec) -> TestRole {
        self.shared.lock().add_role(spec)
    }

    pub fn set_code_policy(&self, policy: CodePolicy) {
        self.shared.lock().code_policy = policy;
    }

    /// Codes refused under every policy (replaces the list).
    pub fn set_rejected_codes<I, S>(&self, codes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared.lock().rejected_codes = codes.into_iter().map(Into::into).collect();
    }

    /// Overrides the lifetime of issued credentials: Expiration = now + `lifetime` (whole
    /// seconds), whatever DurationSeconds asked for (still validated). `None` restores it.
    pub fn set_returned_lifetime(&self, lifetime: Option<Duration>) {
        self.shared.lock().returned_lifetime = lifetime;
    }

    /// Overrides the lifetime of credentials issued by AssumeRole only (Expiration = now +
    /// `lifetime`, whole seconds, whatever DurationSeconds asked for), so that sessions and the
    /// role credentials assumed with them can have different short lifetimes. Takes precedence
    /// over [`Self::set_returned_lifetime`] (and [`Self::set_returned_expiration`]) for
    /// AssumeRole; `None` restores it.
    pub fn set_returned_role_lifetime(&self, lifetime: Option<Duration>) {
        self.shared.lock().returned_role_lifetime = lifetime;
    }

    /// Makes every issued credential expire at `expiration` (whole seconds; never before the
    /// call), whatever DurationSeconds asked for: sessions issued at different times then come
    /// due together. Takes precedence over [`Self::set_returned_lifetime`]; `None` restores it.
    pub fn set_returned_expiration(&self, expiration: Option<Timestamp>) {
        self.shared.lock().returned_expiration = expiration;
    }

    pub fn set_require_mfa(&self, require: bool) {
        self.shared.lock().require_mfa = require;
    }

    pub fn inject_faults(&self, fault: Fault) {
        self.shared.lock().faults.inject(fault);
    }

    /// Arms a hold: the next request matching `filter` waits until the returned handle is
    /// released or dropped (see [`HeldCall`]). Several holds may be armed; each catches one
    /// request, oldest hold first.
    pub fn hold_next(&self, filter: HoldFilter) -> HeldCall {
        let gate = Arc::new(Gate {
            arrived: tokio::sync::watch::Sender::new(None),
            released: tokio::sync::watch::Sender::new(false),
        });
        self.shared
            .lock()
            .faults
            .holds
            .push_back((filter, gate.clone()));
        HeldCall { gate }
    }

    /// Removes queued, random and outage faults, the delay and armed holds (a request already
    /// held stays held until its handle is released or dropped).
    pub fn clear_faults(&self) {
        self.shared.lock().faults = Default::default();
    }

    pub fn end_outage(&self) {
        self.shared.lock().faults.outage = None;
    }

    /// Every request received since start or [`Self::reset_counters`], oldest first.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().calls.clone()
    }

    pub fn call_count(&self) -> usize {
        self.shared.lock().calls.len()
    }

    /// Calls signed with `access_key_id`.
    pub fn calls_by_key(&self, access_key_id: &str) -> Vec<RecordedCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.access_key_id.as_deref() == Some(access_key_id))
            .cloned()
            .collect()
    }

    /// How many times `code` was judged (accepted or not). Real AWS does not reliably refuse a
    /// reused code, so the double does not either; this lets tests check reuse themselves.
    pub fn uses_of_code(&self, code: &str) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.token_code_used.as_deref() == Some(code) && c.code_accepted.is_some())
            .count()
    }

    /// How many times `code` was accepted.
    pub fn accepted_uses_of_code(&self, code: &str) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.token_code_used.as_deref() == Some(code) && c.code_accepted == Some(true))
            .count()
    }

    /// Forgets the recorded calls (users, sessions, faults and policies stay).
    pub fn reset_counters(&self) {
        self.shared.lock().calls.clear();
    }

    pub fn issued_session(&self, access_key_id: &str) -> Option<IssuedSession> {
        self.shared.lock().sessions.get(access_key_id).cloned()
    }

    /// All issued sessions, oldest first.
    pub fn issued_sessions(&self) -> Vec<IssuedSession> {
        let mut all: Vec<_> = self.shared.lock().sessions.values().cloned().collect();
        all.sort_by_key(|s| s.issued_at);
        all
    }

    /// Makes an issued session expire now (its recorded expiration becomes now; the holder's
    /// copy is unchanged, the double just refuses it with `ExpiredToken` from now on).
    pub fn expire_session(&self, access_key_id: &str) -> bool {
        let mut state = self.shared.lock();
        match state.sessions.get_mut(access_key_id) {
            Some(s) => {
                s.expiration =
                    Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range");
                true
            }
            None => false,
        }
    }
}

impl Drop for StsDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for StsDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsDouble")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
