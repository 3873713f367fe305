//! STS `GetSessionToken` calls, and the parsers of untrusted input around them.
//!
//! Everything a `SessionToken` (or its source Secret) supplies is checked here before it reaches
//! the SDK: the MFA token code ([`TokenCode`]), the MFA serial number
//! ([`validate_serial_number`]), the region ([`validate_region`]), the endpoint
//! ([`EndpointPolicy`], [`normalize_endpoint`]) and the shape of the source keys
//! ([`check_long_term_keys`]).
//!
//! Secret values (secret keys, session tokens, token codes) only travel inside
//! [`Sensitive`]; no error, log line or metric label made here contains one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{
    BehaviorVersion, Credentials as SdkCredentials, IdentityCache, Region, SharedHttpClient,
};
use aws_sdk_sts::types::Tag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;
use tokio::sync::Semaphore;

use crate::Sensitive;

mod endpoint;
mod error;

/// Smallest `DurationSeconds` STS accepts for `GetSessionToken` (15 minutes).
pub const MIN_DURATION_SECONDS: i32 = 900;
/// Largest `DurationSeconds` STS accepts for `GetSessionToken` (36 hours).
pub const MAX_DURATION_SECONDS: i32 = 129_600;
/// The `outcome` label value of a successful STS call (see [`StsError::metric_outcome`]).
pub const OUTCOME_SUCCESS: &str = "success";

/// STS error messages are kept, but only this many characters of them.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;
/// Endpoints longer than this are refused outright.
pub(crate) const MAX_ENDPOINT_LEN: usize = 2048;

pub use crate::approval::{InvalidTokenCode, TokenCode};

// ---------------------------------------------------------------------------------------------
// Serial number, region, duration, source keys
// ---------------------------------------------------------------------------------------------

/// Checks an MFA device serial number (or virtual device ARN) the way STS constrains it:
/// 9 to 256 characters of `[A-Za-z0-9_+=,.@:/-]`.
pub fn validate_serial_number(s: &str) -> Result<(), String> {
    let len = s.chars().count();
    if !(9..=256).contains(&len) {
        return Err(format!(
            "MFA serial number must be 9 to 256 characters long, it has {len}"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c)))
    {
        return Err(format!(
            "MFA serial number contains {:?}; allowed are ASCII letters, digits and _+=,.@:/-",
            c
        ));
    }
    Ok(())
}

/// Checks a region name: one DNS label of lowercase ASCII letters, digits and `-` (at most 63
/// characters, no leading or trailing `-`). The SDK builds the default endpoint host from it, so
/// anything else could redirect the call.
pub fn validate_region(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("region must not be empty".to_owned());
    }
    if !is_dns_label(s) {
        return Err(format!(
            "region {:?} is not valid: use lowercase letters, digits and '-' (like us-east-1)",
            truncate(s, 64)
        ));
    }
    Ok(())
}

/// Checks `DurationSeconds` against what STS accepts for `GetSessionToken` (900..=129600).
pub fn validate_duration_seconds(d: i64) -> Result<(), String> {
    if !(i64::from(MIN_DURATION_SECONDS)..=i64::from(MAX_DURATION_SECONDS)).contains(&d) {
        return Err(format!(
            "session duration must be between {MIN_DURATION_SECONDS} and {MAX_DURATION_SECONDS} seconds, got {d}"
        ));
    }
    Ok(())
}

/// Refuses source keys that cannot be used for `GetSessionToken`, before any STS call: session
/// credentials (key id starting with `ASIA`, or a session token present in the source Secret:
/// AWS refuses `GetSessionToken` with them), a key id that is not 16 to 128 characters of
/// `[A-Z0-9]`, and an empty secret or one containing whitespace or control characters
/// (typically a trailing newline from `echo | base64`). Messages never contain the secret.
pub fn check_long_term_keys(
    access_key_id: &str,
    secret_access_key: &Sensitive<String>,
    has_session_token: bool,
) -> Result<(), String> {
    if has_session_token {
        return Err(
            "the Secret holds a session token: GetSessionToken needs an IAM user's \
                    long-term access keys, not session credentials"
                .to_owned(),
        );
    }
    if access_key_id.is_empty() {
        return Err("the access key id is empty".to_owned());
    }
    if access_key_id.trim() != access_key_id {
        return Err(
            "the access key id has leading or trailing whitespace (a trailing newline?)".to_owned(),
        );
    }
    if !(16..=128).contains(&access_key_id.len())
        || !access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(
            "the access key id is not 16 to 128 characters of uppercase letters and digits"
                .to_owned(),
        );
    }
    if access_key_id.starts_with("ASIA") {
        return Err(format!(
            "access key id {access_key_id} is a temporary (session) key (prefix ASIA): \
             GetSessionToken needs an IAM user's long-term access keys"
        ));
    }
    let secret = secret_access_key.expose();
    if secret.is_empty() {
        return Err("the secret access key is empty".to_owned());
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the secret access key contains whitespace or control characters (a trailing newline?)"
                .to_owned(),
        );
    }
    Ok(())
}

pub use endpoint::*;
pub use error::*;

// ---------------------------------------------------------------------------------------------
// Requests, results, errors
// ---------------------------------------------------------------------------------------------

/// Operator-wide settings of the STS client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsSettings {
    /// Limit for one whole `GetSessionToken` operation, all attempts included.
    pub timeout: Duration,
    /// Calls in flight at once (at least 1).
    pub max_in_flight: usize,
    /// Attempts for calls without MFA (at least 1). Calls with MFA are attempted exactly once.
    pub non_mfa_attempts: u32,
    /// Operator flag `--sts-endpoint`: trusted, not subject to the [`EndpointPolicy`]; used
    /// when the `SessionToken` names no endpoint. `None`: the SDK's AWS endpoint for the region.
    pub default_endpoint: Option<String>,
}

impl Default for StsSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_in_flight: 8,
            non_mfa_attempts: 3,
            default_endpoint: None,
        }
    }
}

impl StsSettings {
    /// Checks the settings (call at startup so a bad flag fails fast).
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("the STS timeout must be positive".to_owned());
        }
        if self.max_in_flight == 0 {
            return Err("the number of STS calls in flight must be at least 1".to_owned());
        }
        if self.non_mfa_attempts == 0 {
            return Err("the number of STS attempts must be at least 1".to_owned());
        }
        if let Some(e) = &self.default_endpoint {
            normalize_endpoint(e).map_err(|why| format!("--sts-endpoint: {why}"))?;
        }
        Ok(())
    }
}

/// One `GetSessionToken` call.
pub struct SessionRequest<'a> {
    pub region: &'a str,
    /// The `SessionToken`'s own endpoint, already checked by the caller with an
    /// [`EndpointPolicy`]; overrides [`StsSettings::default_endpoint`].
    pub endpoint: Option<&'a str>,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a Sensitive<String>,
    pub duration_seconds: i32,
    /// MFA serial number and token code.
    pub mfa: Option<(&'a str, TokenCode)>,
}

impl fmt::Debug for SessionRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRequest")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("duration_seconds", &self.duration_seconds)
            .field("mfa", &self.mfa)
            .finish()
    }
}

pub use crate::credentials::Credentials;

/// One `AssumeRole` call, signed with session credentials.
pub struct AssumeRoleRequest<'a> {
    pub region: &'a str,
    /// As in [`SessionRequest::endpoint`].
    pub endpoint: Option<&'a str>,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a Sensitive<String>,
    pub session_token: &'a Sensitive<String>,
    pub role_arn: &'a str,
    pub role_session_name: &'a str,
    pub duration_seconds: i32,
    pub external_id: Option<&'a str>,
    /// Session tags, (key, value).
    pub tags: &'a [(String, String)],
}

/// What `AssumeRole` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumedRole {
    pub credentials: Credentials,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, if STS said.
    pub assumed_role_arn: Option<String>,
}

/// Checks a role ARN as the CRD admits it: `arn:<partition>:iam::<12 digits>:role/<path/name>`.
pub fn validate_role_arn(arn: &str) -> Result<(), String> {
    let ok = (20..=2048).contains(&arn.len())
        && arn.strip_prefix("arn:").is_some_and(|rest| {
            let mut parts = rest.splitn(5, ':');
            let (partition, service, region, account, resource) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("x"),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            partition.starts_with("aws")
                && partition[3..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
                && service == "iam"
                && region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| {
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || "+=,.@/-".contains(c))
                })
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a role ARN (arn:aws:iam::123456789012:role/NAME)",
            short(arn)
        ))
    }
}

/// Checks a role session name: 2 to 64 characters of `[\w+=,.@-]`.
pub fn validate_role_session_name(name: &str) -> Result<(), String> {
    if (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "role session name {:?} is not 2 to 64 characters of [\\w+=,.@-]",
            short(name)
        ))
    }
}

fn credentials_from_output(
    credentials: Option<aws_sdk_sts::types::Credentials>,
    now: jiff::Timestamp,
) -> Result<Credentials, StsError> {
    let invalid = |message: &str| StsError::InvalidResponse {
        message: message.to_owned(),
    };
    let creds = credentials.ok_or_else(|| invalid("the response has no Credentials"))?;
    // The SDK fills missing required fields with "" and the epoch.
    if creds.access_key_id.is_empty() {
        return Err(invalid("the response has no AccessKeyId"));
    }
    // AWS documents 16 to 128 characters of `[\w]`. The SDK's XML reader also accepts a
    // document cut short (`...<AccessKeyId>AS`): do not hand out a key id no one can use.
    let id = &creds.access_key_id;
    if !(16..=128).contains(&id.len())
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(invalid(
            "the response's AccessKeyId is not 16 to 128 letters, digits or '_'",
        ));
    }
    if creds.secret_access_key.is_empty() {
        return Err(invalid("the response has no SecretAccessKey"));
    }
    if creds.session_token.is_empty() {
        return Err(invalid("the response has no SessionToken"));
    }
    if creds.expiration.secs() == 0 && creds.expiration.subsec_nanos() == 0 {
        return Err(invalid("the response has no Expiration"));
    }
    let expiration = jiff::Timestamp::new(
        creds.expiration.secs(),
        i32::try_from(creds.expiration.subsec_nanos()).unwrap_or(0),
    )
    .map_err(|_| invalid("the response's Expiration is out of range"))?;
    if expiration <= now {
        return Err(StsError::InvalidResponse {
            message: format!("the response's Expiration {expiration} is not in the future"),
        });
    }
    Ok(Credentials {
        access_key_id: creds.access_key_id,
        secret_access_key: Sensitive::new(creds.secret_access_key),
        session_token: Sensitive::new(creds.session_token),
        expiration,
    })
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Calls STS. Cheap to clone: one shared HTTP client (connection pool, rustls on ring) and one
/// semaphore bounding the calls in flight. It never looks at ambient AWS credentials: every
/// call is signed with the keys of its [`SessionRequest`].
#[derive(Clone, Debug)]
pub struct StsClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: StsSettings,
    http: SharedHttpClient,
    /// For calls carrying a token code: a new connection each time, closed after the call
    /// ([`Validated`] with `close_after_use`).
    fresh_http: SharedHttpClient,
    permits: Semaphore,
    retry_initial_backoff: Option<Duration>,
}

impl StsClient {
    /// A client with its own HTTPS connection pool (rustls, ring, platform root certificates;
    /// plain http endpoints work too). The platform's root certificates are read here, once.
    pub fn new(settings: StsSettings) -> Self {
        let builder = || {
            aws_smithy_http_client::Builder::new().tls_provider(
                aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ),
            )
        };
        let http = builder().build_https();
        // Its own pool, which never keeps a connection: every request says `Connection: close`,
        // and an idle one would be expired at once anyway.
        let fresh = builder().pool_idle_timeout(Duration::ZERO).build_https();
        for client in [&http, &fresh] {
            // Loads the root certificates now (the SDK's own check, which the per-call clients
            // skip: see [`Validated`]). It cannot fail for this client.
            let _ = client.validate_base_client_config(
                &RuntimeComponentsBuilder::new("sts-session-operator"),
                &ConfigBag::base(),
            );
        }
        Self::with_http_clients(settings, http, fresh)
    }

    /// A client sending through the given HTTP client (tests, custom TLS or proxy setups);
    /// calls carrying a token code go through it too, with `Connection: close`.
    pub fn with_http_client(settings: StsSettings, http: SharedHttpClient) -> Self {
        Self::with_http_clients(settings, http.clone(), http)
    }

    /// `http` for calls without a code; `fresh` (each request with `Connection: close`) for
    /// calls carrying one.
    fn with_http_clients(
        settings: StsSettings,
        http: SharedHttpClient,
        fresh: SharedHttpClient,
    ) -> Self {
        let permits = Semaphore::new(settings.max_in_flight.max(1));
        Self {
            inner: Arc::new(Inner {
                settings,
                http: SharedHttpClient::new(Validated {
                    inner: http,
                    close_after_use: false,
                }),
                fresh_http: SharedHttpClient::new(Validated {
                    inner: fresh,
                    close_after_use: true,
                }),
                permits,
                retry_initial_backoff: None,
            }),
        }
    }

    pub fn settings(&self) -> &StsSettings {
        &self.inner.settings
    }

    /// Calls `GetSessionToken` with the request's keys (and MFA code, if any) and returns the
    /// validated session credentials. Calls with MFA are attempted exactly once (a retried code
    /// is a reused code); calls without MFA up to `non_mfa_attempts` times.
    pub async fn get_session_token(
        &self,
        req: SessionRequest<'_>,
    ) -> Result<Credentials, StsError> {
        let settings = &self.inner.settings;
        let bad = |message: String| StsError::InvalidRequest { message };
        validate_region(req.region).map_err(bad)?;
        validate_duration_seconds(i64::from(req.duration_seconds)).map_err(bad)?;
        if let Some((serial, _)) = &req.mfa {
            validate_serial_number(serial).map_err(bad)?;
        }
        check_long_term_keys(req.access_key_id, req.secret_access_key, false).map_err(
            |message| StsError::SourceCredentialsInvalid {
                code: None,
                message,
            },
        )?;
        let with_mfa = req.mfa.is_some();
        let credentials = SdkCredentials::new(
            req.access_key_id,
            req.secret_access_key.expose().clone(),
            None,
            None,
            "SessionToken source Secret",
        );
        // A retried MFA call is a reused code: exactly one attempt.
        let attempts = if with_mfa {
            None
        } else {
            Some(settings.non_mfa_attempts)
        };
        let _permit = self.permit().await?;
        // A code goes out on a connection of its own: a pooled keep-alive connection may have
        // been closed by the server meanwhile, and a request lost on it is a code spent on a
        // transport error (it is never retried).
        let client = self.sdk_client(req.region, req.endpoint, credentials, attempts, with_mfa)?;

        let mut call = client
            .get_session_token()
            .duration_seconds(req.duration_seconds);
        if let Some((serial, code)) = &req.mfa {
            call = call.serial_number(*serial).token_code(code.expose());
        }

        let result = call.send().await;
        drop(_permit);

        match result {
            Ok(out) => credentials_from_output(out.credentials, jiff::Timestamp::now()),
            Err(e) => Err(classify(e, with_mfa)),
        }
    }

    /// Calls `AssumeRole`, signed with the session credentials of the request, and returns the
    /// validated role credentials. Retried like calls without MFA (no code is involved).
    pub async fn assume_role(&self, req: AssumeRoleRequest<'_>) -> Result<AssumedRole, StsError> {
        let bad = |message: String| StsError::InvalidRequest { message };
        validate_region(req.region).map_err(bad)?;
        validate_role_arn(req.role_arn).map_err(bad)?;
        validate_role_session_name(req.role_session_name).map_err(bad)?;
        if !(900..=43_200).contains(&req.duration_seconds) {
            return Err(bad(format!(
                "AssumeRole DurationSeconds {} is outside 900..43200",
                req.duration_seconds
            )));
        }
        let credentials = SdkCredentials::new(
            req.access_key_id,
            req.secret_access_key.expose().clone(),
            Some(req.session_token.expose().clone()),
            None,
            "SessionToken session",
        );
        let attempts = Some(self.inner.settings.non_mfa_attempts);
        let _permit = self.permit().await?;
        let client = self.sdk_client(req.region, req.endpoint, credentials, attempts, false)?;
        let mut call = client
            .assume_role()
            .role_arn(req.role_arn)
            .role_session_name(req.role_session_name)
            .duration_seconds(req.duration_seconds)
            .set_external_id(req.external_id.map(str::to_owned));
        for (key, value) in req.tags {
            let tag = Tag::builder()
                .key(key.as_str())
                .value(value.as_str())
                .build()
                .map_err(|e| bad(format!("session tag {key:?}: {e}")))?;
            call = call.tags(tag);
        }
        let result = call.send().await;
        drop(_permit);
        match result {
            Ok(out) => Ok(AssumedRole {
                assumed_role_arn: out.assumed_role_user.map(|u| u.arn),
                credentials: credentials_from_output(out.credentials, jiff::Timestamp::now())?,
            }),
            Err(e) => Err(classify(e, false)),
        }
    }

    /// One of the `max_in_flight` places for a call, taken before its SDK client is built (a
    /// client per call is some kilobytes: queued calls must not each hold one).
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StsError> {
        // The semaphore is never closed; if it were, no call is made.
        self.inner
            .permits
            .acquire()
            .await
            .map_err(|_| StsError::InvalidRequest {
                message: "the STS client is shutting down".into(),
            })
    }

    /// An SDK client for one call: these credentials, this region and endpoint (the
    /// SessionToken's, else `--sts-endpoint`, else AWS's), `attempts` tries (`None`: one, with
    /// no retry), the shared connection pool (or, `fresh`, a new connection for this call only)
    /// and the operation timeout.
    fn sdk_client(
        &self,
        region: &str,
        endpoint: Option<&str>,
        credentials: SdkCredentials,
        attempts: Option<u32>,
        fresh: bool,
    ) -> Result<aws_sdk_sts::Client, StsError> {
        let settings = &self.inner.settings;
        let bad = |message: String| StsError::InvalidRequest { message };
        let endpoint = match (endpoint, settings.default_endpoint.as_deref()) {
            (Some(e), _) => Some(normalize_endpoint(e).map_err(bad)?),
            (None, Some(e)) => {
                Some(normalize_endpoint(e).map_err(|why| bad(format!("--sts-endpoint: {why}")))?)
            }
            (None, None) => None,
        };
        let retry = match attempts {
            None => RetryConfig::disabled(),
            Some(n) => {
                let mut r = RetryConfig::standard().with_max_attempts(n.max(1));
                if let Some(b) = self.inner.retry_initial_backoff {
                    r = r
                        .with_initial_backoff(b)
                        .with_max_backoff(b.saturating_mul(4));
                }
                r
            }
        };
        let mut config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(credentials)
            .identity_cache(IdentityCache::no_cache())
            .http_client(match fresh {
                true => self.inner.fresh_http.clone(),
                false => self.inner.http.clone(),
            })
            .retry_config(retry)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(settings.timeout)
                    .build(),
            );
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        Ok(aws_sdk_sts::Client::from_conf(config.build()))
    }
}

/// The HTTP client of every per-call SDK client. Building an SDK client runs its HTTP client's
/// `validate_base_client_config`, which for the SDK's hyper client builds a whole connector and
/// throws it away: it reads and parses every platform root certificate, once per STS call
/// (about a tenth of the operator's CPU on a cold start). Here that check ran once, when the
/// shared client was made ([`StsClient::new`]). With `close_after_use`, every request asks for
/// its connection to be closed after the response (`Connection: close`), so that none is ever
/// kept for another request: each call goes out on a connection opened for it (calls carrying
/// a token code).
#[derive(Debug)]
struct Validated {
    inner: SharedHttpClient,
    close_after_use: bool,
}

#[derive(Debug)]
struct CloseAfterUse(SharedHttpConnector);

impl HttpClient for Validated {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let connector = self.inner.http_connector(settings, components);
        match self.close_after_use {
            true => SharedHttpConnector::new(CloseAfterUse(connector)),
            false => connector,
        }
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

impl HttpConnector for CloseAfterUse {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        // (A constant, valid header: cannot fail.)
        let _ = request.headers_mut().try_insert("connection", "close");
        self.0.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
    use aws_smithy_runtime_api::client::http::{
        HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
    #[allow(unused_imports)]
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use std::collections::VecDeque;
    #[allow(unused_imports)]
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    // ---- parsers ----------------------------------------------------------------------------

    #[test]
    fn token_code_parse() {
        for bad in [
            " 123456",
            "123456 ",
            "12345",
            "1234567",
            "+12345",
            "+123456",
            "12ab56",
            "１２３４５６",
            "",
            "123 456",
            "-12345",
            "12345\n",
            "٠١٢٣٤٥",
        ] {
            let err = TokenCode::parse(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(!msg.contains(bad.trim()) || bad.trim().is_empty(), "{msg}");
        }
        let ok = TokenCode::parse("123456").unwrap();
        assert_eq!(ok.expose(), "123456");
        assert_eq!(format!("{ok:?}"), "TokenCode(<redacted>)");
        assert_eq!(TokenCode::parse("000000").unwrap().expose(), "000000");
    }

    #[test]
    fn serial_numbers() {
        assert!(
            validate_serial_number("arn:aws:iam::123456789012:mfa/jane.doe@example.com").is_ok()
        );
        assert!(validate_serial_number("GAHT12345678").is_ok());
        assert!(validate_serial_number("arn:aws-us-gov:iam::123456789012:mfa/a_b+c=d,e-f").is_ok());
        assert!(validate_serial_number("12345678").is_err());
        assert!(validate_serial_number(&"a".repeat(256)).is_ok());
        assert!(validate_serial_number(&"a".repeat(257)).is_err());
        assert!(validate_serial_number("arn:aws:iam::123456789012:mfa/jane doe").is_err());
        assert!(validate_serial_number("arn:aws:iam::123456789012:mfa/jané").is_err());
        assert!(validate_serial_number("arn:aws:iam::123456789012:mfa/x\n").is_err());
        assert!(validate_serial_number("arn:aws:iam::123456789012:mfa/x?y").is_err());
    }

    #[test]
    fn regions_and_durations() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "aws-global",
            "eusc-de-east-1",
        ] {
            assert!(validate_region(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "US-EAST-1",
            "us-east-1.evil.com",
            "evil.com/x?",
            "-us",
            "us_east_1",
            "us east",
        ] {
            assert!(validate_region(bad).is_err(), "{bad}");
        }
        assert!(validate_duration_seconds(900).is_ok());
        assert!(validate_duration_seconds(129_600).is_ok());
        assert!(validate_duration_seconds(899).is_err());
        assert!(validate_duration_seconds(129_601).is_err());
    }

    #[test]
    fn long_term_keys() {
        let secret = Sensitive::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned());
        assert!(check_long_term_keys("AKIAIOSFODNN7EXAMPLE", &secret, false).is_ok());
        let e = check_long_term_keys("ASIAIOSFODNN7EXAMPLE", &secret, false).unwrap_err();
        assert!(e.contains("ASIA"), "{e}");
        assert!(check_long_term_keys("AKIAIOSFODNN7EXAMPLE", &secret, true).is_err());
        assert!(check_long_term_keys("AKIAIOSFODNN7EXAMPLE\n", &secret, false).is_err());
        assert!(check_long_term_keys("akiaiosfodnn7example", &secret, false).is_err());
        assert!(check_long_term_keys("AKIA123", &secret, false).is_err());
        assert!(check_long_term_keys(&"A".repeat(129), &secret, false).is_err());
        assert!(check_long_term_keys("", &secret, false).is_err());
        let empty = Sensitive::new(String::new());
        assert!(check_long_term_keys("AKIAIOSFODNN7EXAMPLE", &empty, false).is_err());
        let nl = Sensitive::new("wJalrXUtnFEMI/K7MDENG\n".to_owned());
        let e = check_long_term_keys("AKIAIOSFODNN7EXAMPLE", &nl, false).unwrap_err();
        assert!(!e.contains("wJalr"), "{e}");
    }

    #[test]
    fn default_endpoint_policy() {
        let p = EndpointPolicy::aws_default();
        for ok in [
            "https://sts.us-east-1.amazonaws.com",
            "https://sts.amazonaws.com",
            "https://sts.amazonaws.com/",
            "https://sts.amazonaws.com:443",
            "https://sts-fips.us-east-1.amazonaws.com",
            "https://vpce-0123abcd-xyz.sts.eu-west-1.vpce.amazonaws.com",
            "https://vpce-0123abcd-xyz-eu-west-1a.sts.eu-west-1.vpce.amazonaws.com",
            "https://sts.cn-north-1.amazonaws.com.cn",
            "https://sts.us-gov-west-1.amazonaws.com",
            "https://sts.us-east-1.api.aws",
            "https://STS.US-EAST-1.AMAZONAWS.COM",
            "HTTPS://sts.us-east-1.amazonaws.com",
        ] {
            assert_eq!(p.check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://sts.us-east-1.amazonaws.com",
            "https://sts.us-east-1.amazonaws.com.evil.com",
            "https://evil.com/sts.amazonaws.com",
            "https://sts.us-east-1.amazonaws.com@evil.com",
            "https://user:pw@sts.amazonaws.com",
            "https://sts.us-east-1.amazonaws.com:8443",
            "https://sts.us-east-1.amazonaws.com/path",
            "https://sts.us-east-1.amazonaws.com/?x=1",
            "https://sts.us-east-1.amazonaws.com?",
            "https://sts.us-east-1.amazonaws.com#frag",
            "https://sts.us-east-1.amazonaws.com.",
            "https://sts.us-east-1.amazonaws.com:",
            "https://sts.us-east-1.amazonaws.com:+443",
            "https://sts.us-east-1.amazonaws.com\\@evil.com",
            "https://sts..amazonaws.com",
            "https://sts.s3.amazonaws.com",
            "https://sts.s3-us-west-2.amazonaws.com",
            "https://evil.sts.amazonaws.com",
            "https://a.b.sts.us-east-1.vpce.amazonaws.com",
            "https://sts.us-east-1.amazonaws.com.cn.evil.com",
            "https://xn--sts-.amazonaws.com",
            "https://sts.ｕｓ-east-1.amazonaws.com",
            "https://52.94.0.1",
            "https://[::1]",
            "https://2130706433",
            "https://0x7f.1",
            " https://sts.amazonaws.com",
            "https://sts.amazonaws.com\n",
            "sts.amazonaws.com",
            "//sts.amazonaws.com",
            "ftp://sts.amazonaws.com",
            "",
        ] {
            let e = p.check(bad).expect_err(bad);
            assert!(!e.contains("pw@") && !e.contains("user:"), "{e}");
        }
        // Messages say why.
        assert!(
            p.check("http://sts.us-east-1.amazonaws.com")
                .unwrap_err()
                .contains("matches none")
        );
        assert!(
            p.check("https://u:secretpw@sts.amazonaws.com")
                .unwrap_err()
                .contains("user information")
        );
        assert!(
            !p.check("https://u:secretpw@sts.amazonaws.com")
                .unwrap_err()
                .contains("secretpw")
        );
    }

    #[test]
    fn custom_endpoint_patterns() {
        let p = EndpointPolicy::from_patterns(&["http://127.0.0.1:*".to_owned()]).unwrap();
        assert_eq!(p.check("http://127.0.0.1:4566"), Ok(()));
        assert_eq!(p.check("http://127.0.0.1"), Ok(()));
        assert!(p.check("https://127.0.0.1:4566").is_err());
        assert!(p.check("http://127.0.0.2:4566").is_err());
        assert!(p.check("http://localhost:4566").is_err());
        assert!(p.check("https://sts.amazonaws.com").is_err());

        let p = EndpointPolicy::from_patterns(&[
            "https://sts.*.example.internal:8443".to_owned(),
            "http://[::1]:5000".to_owned(),
        ])
        .unwrap();
        assert_eq!(p.check("https://sts.a-b.example.internal:8443"), Ok(()));
        assert!(p.check("https://sts.a.b.example.internal:8443").is_err());
        assert!(p.check("https://sts.a.example.internal").is_err());
        assert_eq!(p.check("http://[0:0::1]:5000"), Ok(()));

        let none = EndpointPolicy::from_patterns(&[]).unwrap();
        assert!(none.check("https://sts.amazonaws.com").is_err());

        for bad in [
            "https://sts.amazonaws.com/x",
            "sts.amazonaws.com",
            "https://*.com:99999",
            "https://a..b",
            "https://x?",
        ] {
            assert!(
                EndpointPolicy::from_patterns(&[bad.to_owned()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoint_normalisation() {
        assert_eq!(
            normalize_endpoint("HTTPS://STS.Amazonaws.com:443/").unwrap(),
            "https://sts.amazonaws.com"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:4566").unwrap(),
            "http://127.0.0.1:4566"
        );
        assert_eq!(
            normalize_endpoint("http://localhost:80").unwrap(),
            "http://localhost"
        );
        assert_eq!(
            normalize_endpoint("https://sts.amazonaws.com:0443").unwrap(),
            "https://sts.amazonaws.com"
        );
        assert_eq!(
            normalize_endpoint("http://[::1]:8080").unwrap(),
            "http://[::1]:8080"
        );
        assert!(normalize_endpoint("http://[::1").is_err());
        assert!(normalize_endpoint("http://[::1]x").is_err());
    }

    #[test]
    fn endpoint_regions() {
        for (endpoint, region) in [
            ("https://sts.eu-west-1.amazonaws.com", Some("eu-west-1")),
            (
                "https://STS.EU-WEST-1.amazonaws.com:443/",
                Some("eu-west-1"),
            ),
            ("https://sts-fips.us-east-2.api.aws", Some("us-east-2")),
            (
                "https://sts.cn-north-1.amazonaws.com.cn",
                Some("cn-north-1"),
            ),
            (
                "https://vpce-0abc-xyz.sts.us-gov-west-1.vpce.amazonaws.com",
                Some("us-gov-west-1"),
            ),
            ("https://sts.amazonaws.com", None),
            ("http://127.0.0.1:8080", None),
            ("https://sts.internal.example.com", None),
            ("not a url", None),
        ] {
            assert_eq!(endpoint_region(endpoint).as_deref(), region, "{endpoint}");
        }
        assert!(
            endpoint_region_mismatch("https://sts.eu-west-1.amazonaws.com", "eu-west-1").is_none()
        );
        assert!(endpoint_region_mismatch("https://sts.amazonaws.com", "eu-west-1").is_none());
        let why =
            endpoint_region_mismatch("https://sts.eu-west-1.amazonaws.com", "us-east-1").unwrap();
        assert!(
            why.contains("eu-west-1") && why.contains("us-east-1"),
            "{why}"
        );
    }

    #[test]
    fn region_labels() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-northwest-1",
            "eusc-de-east-1",
            "us-isob-east-1",
            "ap-southeast-10",
        ] {
            assert!(is_region_label(ok), "{ok}");
        }
        for bad in [
            "s3",
            "s3-us-west-2",
            "s3-external-1",
            "us-east",
            "us-east-123",
            "vpce",
            "us--1",
            "a-b-1",
        ] {
            assert!(!is_region_label(bad), "{bad}");
        }
    }

    #[test]
    fn error_reasons_and_messages() {
        let e = classify_code("SignatureDoesNotMatch", "m".into(), 403, true);
        assert_eq!(e.reason(), "SourceCredentialsInvalid");
        assert!(!e.is_retryable());
        let e = classify_code("AccessDenied", "m".into(), 403, true);
        assert_eq!(e.reason(), "TokenCodeRejected");
        let e = classify_code("AccessDenied", "m".into(), 403, false);
        assert!(matches!(e, StsError::AccessDenied { .. }));
        assert_eq!(e.reason(), "StsError");
        let e = classify_code("RequestLimitExceeded", "m".into(), 400, false);
        assert_eq!(e.reason(), "Throttled");
        assert!(e.is_retryable());
        let e = classify_code("ValidationError", "m".into(), 400, false);
        assert!(!e.is_retryable());
        assert_eq!(e.reason(), "StsError");
        let e = classify_code("InternalFailure", "m".into(), 500, false);
        assert!(e.is_retryable());
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ab", 3), "ab");
        assert_eq!(truncate("ééééé", 2), "éé…");
    }

    // ---- calls against a fake HTTP client ---------------------------------------------------

    enum Canned {
        Reply(u16, String),
        Hang,
        Refuse,
    }

    #[derive(Debug, Clone)]
    struct Recorded {
        uri: String,
        body: String,
        authorization: String,
        security_token: String,
    }

    #[derive(Clone, Default)]
    struct Fake {
        replies: Arc<Mutex<VecDeque<Canned>>>,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl fmt::Debug for Fake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Fake")
        }
    }

    impl HttpConnector for Fake {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            self.requests.lock().unwrap().push(Recorded {
                uri: request.uri().to_owned(),
                body: String::from_utf8(request.body().bytes().unwrap_or_default().to_vec())
                    .unwrap(),
                authorization: request
                    .headers()
                    .get("authorization")
                    .unwrap_or("")
                    .to_owned(),
                security_token: request
                    .headers()
                    .get("x-amz-security-token")
                    .unwrap_or("")
                    .to_owned(),
            });
            let next = {
                let mut q = self.replies.lock().unwrap();
                if q.len() > 1 {
                    q.pop_front()
                } else {
                    q.front().map(|c| match c {
                        Canned::Reply(s, b) => Canned::Reply(*s, b.clone()),
                        Canned::Hang => Canned::Hang,
                        Canned::Refuse => Canned::Refuse,
                    })
                }
            };
            match next.expect("a canned reply") {
                Canned::Reply(status, body) => HttpConnectorFuture::ready(Ok(HttpResponse::new(
                    StatusCode::try_from(status).unwrap(),
                    SdkBody::from(body),
                ))),
                Canned::Hang => HttpConnectorFuture::new(std::future::pending()),
                Canned::Refuse => HttpConnectorFuture::ready(Err(ConnectorError::io(
                    "tcp connect error: Connection refused (os error 111)".into(),
                ))),
            }
        }
    }

    impl Fake {
        fn new(replies: Vec<Canned>) -> Self {
            let f = Fake::default();
            f.replies.lock().unwrap().extend(replies);
            f
        }
        fn client(&self, settings: StsSettings) -> StsClient {
            let me = self.clone();
            let http = http_client_fn(move |_, _| SharedHttpConnector::new(me.clone()));
            let mut c = StsClient::with_http_client(settings, http);
            Arc::get_mut(&mut c.inner).unwrap().retry_initial_backoff =
                Some(Duration::from_millis(5));
            c
        }
        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const SESSION_SECRET: &str = "SeSsIoNsEcReTkEy0123456789abcdefghijklmn";
    const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN//////////wEaDM";

    fn settings() -> StsSettings {
        StsSettings {
            timeout: Duration::from_secs(5),
            max_in_flight: 2,
            non_mfa_attempts: 3,
            default_endpoint: None,
        }
    }

    fn ok_body(expiration: &str) -> String {
        format!(
            r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetSessionTokenResult>
    <Credentials>
      <SessionToken>{SESSION_TOKEN}</SessionToken>
      <SecretAccessKey>{SESSION_SECRET}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
  </GetSessionTokenResult>
  <ResponseMetadata><RequestId>58c5dbae-abef-11e0-8cfe-09039844ac7d</RequestId></ResponseMetadata>
</GetSessionTokenResponse>"#
        )
    }

    fn error_body(code: &str, message: &str) -> String {
        format!(
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>4fd5e6e7-0bd4-4bfb-9d7b-8e2f1a4c8b61</RequestId></ErrorResponse>"#
        )
    }

    fn future_expiration() -> String {
        let t = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(12);
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn request<'a>(secret: &'a Sensitive<String>, mfa: bool) -> SessionRequest<'a> {
        SessionRequest {
            region: "eu-west-1",
            endpoint: None,
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: secret,
            duration_seconds: 3600,
            mfa: mfa.then(|| {
                (
                    "arn:aws:iam::123456789012:mfa/jane",
                    TokenCode::parse("123456").unwrap(),
                )
            }),
        }
    }

    fn form(body: &str) -> Vec<(String, String)> {
        fn decode(s: &str) -> String {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'%' => {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    }
                    b'+' => {
                        out.push(b' ');
                        i += 1;
                    }
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(out).unwrap()
        }
        body.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
        f.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn assume_role_body(expiration: &str) -> String {
        format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:team-a.deploy</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/deployer/team-a.deploy</Arn>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>ROLETOKEN{SESSION_TOKEN}</SessionToken>
      <SecretAccessKey>RoLeSeCrEtKeY0123456789abcdefghijklmnopq</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>ASIAROLEEXAMPLE00001</AccessKeyId>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
        )
    }

    #[tokio::test]
    async fn assume_role_is_signed_with_the_session_and_carries_the_spec() {
        let fake = Fake::new(vec![Canned::Reply(
            200,
            assume_role_body(&future_expiration()),
        )]);
        let secret = Sensitive::new(SESSION_SECRET.to_owned());
        let token = Sensitive::new(SESSION_TOKEN.to_owned());
        let tags = vec![
            ("team".to_owned(), "a b".to_owned()),
            ("cost".to_owned(), String::new()),
        ];
        let req = AssumeRoleRequest {
            region: "eu-west-1",
            endpoint: None,
            access_key_id: "ASIAIOSFODNN7EXAMPLE",
            secret_access_key: &secret,
            session_token: &token,
            role_arn: "arn:aws:iam::123456789012:role/deployer",
            role_session_name: "team-a.deploy",
            duration_seconds: 1800,
            external_id: Some("ext-1"),
            tags: &tags,
        };
        let assumed = fake.client(settings()).assume_role(req).await.unwrap();
        assert_eq!(assumed.credentials.access_key_id, "ASIAROLEEXAMPLE00001");
        assert_eq!(
            assumed.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/deployer/team-a.deploy")
        );
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert!(
            r.uri.starts_with("https://sts.eu-west-1.amazonaws.com"),
            "{}",
            r.uri
        );
        assert!(
            r.authorization.contains("Credential=ASIAIOSFODNN7EXAMPLE/"),
            "{}",
            r.authorization
        );
        assert_eq!(r.security_token, SESSION_TOKEN, "signed as the session");
        let f = form(&r.body);
        assert_eq!(field(&f, "Action"), Some("AssumeRole"));
        assert_eq!(
            field(&f, "RoleArn"),
            Some("arn:aws:iam::123456789012:role/deployer")
        );
        assert_eq!(field(&f, "RoleSessionName"), Some("team-a.deploy"));
        assert_eq!(field(&f, "DurationSeconds"), Some("1800"));
        assert_eq!(field(&f, "ExternalId"), Some("ext-1"));
        assert_eq!(field(&f, "Tags.member.1.Key"), Some("team"));
        assert_eq!(field(&f, "Tags.member.1.Value"), Some("a b"));
        assert_eq!(field(&f, "Tags.member.2.Key"), Some("cost"));
        assert!(!r.body.contains(SESSION_SECRET) && !r.body.contains(SESSION_TOKEN));
    }

    #[tokio::test]
    async fn assume_role_refusals_and_bad_requests() {
        let secret = Sensitive::new(SESSION_SECRET.to_owned());
        let token = Sensitive::new(SESSION_TOKEN.to_owned());
        let req = |arn: &'static str, name: &'static str| AssumeRoleRequest {
            region: "eu-west-1",
            endpoint: None,
            access_key_id: "ASIAIOSFODNN7EXAMPLE",
            secret_access_key: &secret,
            session_token: &token,
            role_arn: arn,
            role_session_name: name,
            duration_seconds: 900,
            external_id: None,
            tags: &[],
        };
        let fake = Fake::new(vec![Canned::Reply(
            403,
            error_body(
                "AccessDenied",
                "User: arn:aws:iam::123456789012:user/jane is not authorized to perform: sts:AssumeRole",
            ),
        )]);
        let e = fake
            .client(settings())
            .assume_role(req("arn:aws:iam::123456789012:role/deployer", "ab"))
            .await
            .unwrap_err();
        assert!(matches!(e, StsError::AccessDenied { .. }), "{e:?}");
        assert_eq!(fake.requests().len(), 1, "a refusal is not retried");
        for (arn, name) in [
            ("arn:aws:iam::123456789012:user/jane", "ab"),
            ("arn:aws:iam::12345678901:role/x", "ab"),
            ("arn:aws:iam::123456789012:role/deployer", "a"),
            ("arn:aws:iam::123456789012:role/deployer", "a b"),
        ] {
            let fake = Fake::new(vec![]);
            let e = fake
                .client(settings())
                .assume_role(req(arn, name))
                .await
                .unwrap_err();
            assert!(
                matches!(e, StsError::InvalidRequest { .. }),
                "{arn} {name}: {e:?}"
            );
            assert!(fake.requests().is_empty());
        }
    }

    #[tokio::test]
    async fn mfa_call_request_shape_and_response() {
        let fake = Fake::new(vec![Canned::Reply(200, ok_body(&future_expiration()))]);
        let secret = Sensitive::new(SECRET.to_owned());
        let creds = fake
            .client(settings())
            .get_session_token(request(&secret, true))
            .await
            .unwrap();
        assert_eq!(creds.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(creds.secret_access_key.expose(), SESSION_SECRET);
        assert_eq!(creds.session_token.expose(), SESSION_TOKEN);
        assert!(creds.expiration > jiff::Timestamp::now());
        let dbg = format!("{creds:?}");
        assert!(
            !dbg.contains(SESSION_SECRET) && !dbg.contains(SESSION_TOKEN),
            "{dbg}"
        );

        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].uri, "https://sts.eu-west-1.amazonaws.com/");
        let f = form(&reqs[0].body);
        assert_eq!(field(&f, "Action"), Some("GetSessionToken"));
        assert_eq!(field(&f, "Version"), Some("2011-06-15"));
        assert_eq!(field(&f, "DurationSeconds"), Some("3600"));
        assert_eq!(
            field(&f, "SerialNumber"),
            Some("arn:aws:iam::123456789012:mfa/jane")
        );
        assert_eq!(field(&f, "TokenCode"), Some("123456"));
        assert!(
            reqs[0]
                .authorization
                .contains("Credential=AKIAIOSFODNN7EXAMPLE/")
                && reqs[0]
                    .authorization
                    .contains("/eu-west-1/sts/aws4_request"),
            "{}",
            reqs[0].authorization
        );
    }

    #[tokio::test]
    async fn non_mfa_call_has_no_mfa_fields_and_uses_endpoints() {
        let fake = Fake::new(vec![Canned::Reply(200, ok_body(&future_expiration()))]);
        let secret = Sensitive::new(SECRET.to_owned());
        let mut s = settings();
        s.default_endpoint = Some("http://127.0.0.1:4566".to_owned());
        let client = fake.client(s);
        client
            .get_session_token(request(&secret, false))
            .await
            .unwrap();
        let mut req = request(&secret, false);
        req.endpoint = Some("HTTPS://VPCE-1.sts.eu-west-1.vpce.amazonaws.com:443/");
        client.get_session_token(req).await.unwrap();

        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].uri, "http://127.0.0.1:4566/");
        assert_eq!(
            reqs[1].uri,
            "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com/"
        );
        let f = form(&reqs[0].body);
        assert_eq!(field(&f, "DurationSeconds"), Some("3600"));
        assert_eq!(field(&f, "SerialNumber"), None);
        assert_eq!(field(&f, "TokenCode"), None);
    }

    async fn call_with(
        replies: Vec<Canned>,
        mfa: bool,
        s: StsSettings,
    ) -> (Result<Credentials, StsError>, usize) {
        let fake = Fake::new(replies);
        let secret = Sensitive::new(SECRET.to_owned());
        let r = fake
            .client(s)
            .get_session_token(request(&secret, mfa))
            .await;
        (r, fake.requests().len())
    }

    #[tokio::test]
    async fn mfa_calls_are_attempted_once() {
        let (r, n) = call_with(
            vec![Canned::Reply(500, error_body("InternalFailure", "oops"))],
            true,
            settings(),
        )
        .await;
        assert_eq!(n, 1);
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StsError::Service { code, status: 500, .. } if code == "InternalFailure"),
            "{e:?}"
        );
        assert!(e.is_retryable());

        let (r, n) = call_with(
            vec![Canned::Reply(
                400,
                error_body("Throttling", "Rate exceeded"),
            )],
            true,
            settings(),
        )
        .await;
        assert_eq!(n, 1);
        assert_eq!(r.unwrap_err().reason(), "Throttled");

        let (r, n) = call_with(vec![Canned::Refuse], true, settings()).await;
        assert_eq!(n, 1);
        assert!(matches!(r.unwrap_err(), StsError::Transport { .. }));
    }

    #[tokio::test]
    async fn non_mfa_calls_are_retried() {
        let (r, n) = call_with(
            vec![Canned::Reply(500, error_body("InternalFailure", "oops"))],
            false,
            settings(),
        )
        .await;
        assert_eq!(n, 3);
        assert!(matches!(
            r.unwrap_err(),
            StsError::Service { status: 500, .. }
        ));

        let (r, n) = call_with(
            vec![
                Canned::Reply(503, "<html>unavailable</html>".to_owned()),
                Canned::Reply(200, ok_body(&future_expiration())),
            ],
            false,
            settings(),
        )
        .await;
        assert_eq!(n, 2);
        assert!(r.is_ok());

        let mut s = settings();
        s.non_mfa_attempts = 1;
        let (_, n) = call_with(
            vec![Canned::Reply(500, error_body("InternalFailure", "oops"))],
            false,
            s,
        )
        .await;
        assert_eq!(n, 1);

        // Not retried: a client error.
        let (r, n) = call_with(
            vec![Canned::Reply(
                403,
                error_body(
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                ),
            )],
            false,
            settings(),
        )
        .await;
        assert_eq!(n, 1);
        let e = r.unwrap_err();
        assert_eq!(e.reason(), "SourceCredentialsInvalid");
        assert_eq!(
            e.to_string(),
            "STS rejected the source credentials (InvalidClientTokenId): The security token included in the request is invalid."
        );
    }

    #[tokio::test]
    async fn error_classification() {
        let cases: Vec<(Canned, bool, &str)> = vec![
            (
                Canned::Reply(
                    403,
                    error_body(
                        "SignatureDoesNotMatch",
                        "The request signature we calculated does not match",
                    ),
                ),
                true,
                "SourceCredentialsInvalid",
            ),
            (
                Canned::Reply(
                    403,
                    error_body(
                        "AccessDenied",
                        "MultiFactorAuthentication failed with invalid MFA one time pass code.",
                    ),
                ),
                true,
                "TokenCodeRejected",
            ),
            (
                Canned::Reply(403, error_body("AccessDenied", "no")),
                false,
                "StsError",
            ),
            (
                Canned::Reply(400, error_body("RequestLimitExceeded", "slow down")),
                true,
                "Throttled",
            ),
            (
                Canned::Reply(400, error_body("TooManyRequestsException", "slow down")),
                true,
                "Throttled",
            ),
            (
                Canned::Reply(400, error_body("ValidationError", "bad duration")),
                true,
                "StsError",
            ),
            (
                Canned::Reply(
                    403,
                    error_body(
                        "RegionDisabledException",
                        "STS is not activated in this region",
                    ),
                ),
                true,
                "StsError",
            ),
            (
                Canned::Reply(400, error_body("ExpiredToken", "expired")),
                true,
                "StsError",
            ),
            (
                Canned::Reply(502, "Bad Gateway".to_owned()),
                true,
                "StsError",
            ),
            (
                Canned::Reply(200, "not xml at all".to_owned()),
                true,
                "StsError",
            ),
        ];
        for (canned, mfa, reason) in cases {
            let (r, _) = call_with(vec![canned], mfa, settings()).await;
            let e = r.unwrap_err();
            assert_eq!(e.reason(), reason, "{e:?}");
            let text = e.to_string();
            assert!(!text.contains(SECRET) && !text.contains("123456"), "{text}");
        }

        let (r, _) = call_with(
            vec![Canned::Reply(502, "Bad Gateway".to_owned())],
            true,
            settings(),
        )
        .await;
        assert!(matches!(
            r.unwrap_err(),
            StsError::Service { status: 502, .. }
        ));
        let (r, _) = call_with(
            vec![Canned::Reply(200, "not xml at all".to_owned())],
            true,
            settings(),
        )
        .await;
        assert!(matches!(r.unwrap_err(), StsError::InvalidResponse { .. }));
        let (r, _) = call_with(
            vec![Canned::Reply(
                403,
                error_body("RegionDisabledException", "off"),
            )],
            true,
            settings(),
        )
        .await;
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StsError::Service { code, .. } if code == "RegionDisabledException"),
            "{e:?}"
        );
        assert!(!e.is_retryable());

        // Long STS messages are truncated.
        let long = "x".repeat(1000);
        let (r, _) = call_with(
            vec![Canned::Reply(400, error_body("ValidationError", &long))],
            true,
            settings(),
        )
        .await;
        match r.unwrap_err() {
            StsError::Service { message, .. } => {
                assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1)
            }
            e => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn timeouts() {
        let mut s = settings();
        s.timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let (r, n) = call_with(vec![Canned::Hang], true, s).await;
        assert_eq!(r.unwrap_err(), StsError::Timeout);
        assert_eq!(n, 1);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn response_validation() {
        let past = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let (r, _) = call_with(vec![Canned::Reply(200, ok_body(&past))], true, settings()).await;
        assert!(matches!(r.unwrap_err(), StsError::InvalidResponse { .. }));

        let (r, _) = call_with(
            vec![Canned::Reply(200, ok_body("tomorrow"))],
            true,
            settings(),
        )
        .await;
        assert!(matches!(r.unwrap_err(), StsError::InvalidResponse { .. }));

        let exp = future_expiration();
        for missing in [
            "SessionToken",
            "SecretAccessKey",
            "AccessKeyId",
            "Expiration",
        ] {
            let body = ok_body(&exp);
            let start = body.find(&format!("<{missing}>")).unwrap();
            let end_tag = format!("</{missing}>");
            let end = body.find(&end_tag).unwrap() + end_tag.len();
            let body = format!("{}{}", &body[..start], &body[end..]);
            let (r, _) = call_with(vec![Canned::Reply(200, body)], true, settings()).await;
            let e = r.unwrap_err();
            assert!(
                matches!(e, StsError::InvalidResponse { .. }),
                "{missing}: {e:?}"
            );
            let text = e.to_string();
            assert!(
                !text.contains(SESSION_SECRET) && !text.contains(SESSION_TOKEN),
                "{text}"
            );
        }
        let body = r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetSessionTokenResult></GetSessionTokenResult></GetSessionTokenResponse>"#;
        let (r, _) = call_with(vec![Canned::Reply(200, body.to_owned())], true, settings()).await;
        assert!(matches!(r.unwrap_err(), StsError::InvalidResponse { .. }));
        // A document cut short inside AccessKeyId (found by tests/fuzz.rs): the SDK reads
        // "ASIAIOS" as the key id.
        let body = ok_body(&exp);
        let cut = body.find("<AccessKeyId>").unwrap() + "<AccessKeyId>ASIAIOS".len();
        let (r, _) = call_with(
            vec![Canned::Reply(200, body[..cut].to_owned())],
            true,
            settings(),
        )
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, StsError::InvalidResponse { .. }), "{e:?}");
        assert!(!e.to_string().contains(SESSION_SECRET));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_any_call() {
        let fake = Fake::new(vec![Canned::Reply(200, ok_body(&future_expiration()))]);
        let client = fake.client(settings());
        let secret = Sensitive::new(SECRET.to_owned());

        let mut r = request(&secret, true);
        r.region = "evil.com/";
        assert_eq!(
            client.get_session_token(r).await.unwrap_err().reason(),
            "InvalidSpec"
        );
        let mut r = request(&secret, true);
        r.duration_seconds = 60;
        assert!(matches!(
            client.get_session_token(r).await,
            Err(StsError::InvalidRequest { .. })
        ));
        let mut r = request(&secret, true);
        r.endpoint = Some("https://user:pw@sts.amazonaws.com");
        assert!(matches!(
            client.get_session_token(r).await,
            Err(StsError::InvalidRequest { .. })
        ));
        let mut r = request(&secret, false);
        r.access_key_id = "ASIAIOSFODNN7EXAMPLE";
        let e = client.get_session_token(r).await.unwrap_err();
        assert_eq!(e.reason(), "SourceCredentialsInvalid");
        assert!(!e.was_sent());
        let mut r = request(&secret, false);
        r.mfa = Some(("short", TokenCode::parse("123456").unwrap()));
        assert!(matches!(
            client.get_session_token(r).await,
            Err(StsError::InvalidRequest { .. })
        ));

        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn calls_in_flight_are_bounded() {
        let fake = Fake::new(vec![Canned::Hang]);
        let mut s = settings();
        s.max_in_flight = 2;
        s.timeout = Duration::from_millis(300);
        let client = fake.client(s);
        let secret = Sensitive::new(SECRET.to_owned());
        let calls = (0..5).map(|_| client.get_session_token(request(&secret, true)));
        let started = std::time::Instant::now();
        let mut set = Vec::new();
        for c in calls {
            set.push(c);
        }
        // While the first two hang, the others wait for a permit.
        let all = futures::future::join_all(set);
        let check = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(fake.requests().len(), 2);
        };
        let (results, ()) = tokio::join!(all, check);
        assert!(results.iter().all(|r| matches!(r, Err(StsError::Timeout))));
        assert_eq!(fake.requests().len(), 5);
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    // ---- the real HTTP client over loopback --------------------------------------------------

    /// Serves each connection's first request with `reply` (or never answers, if `None`) and
    /// returns the request bodies it saw.
    async fn loopback_sts(reply: Option<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let reply = reply.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let n = stream.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break body.to_owned();
                            }
                        }
                    };
                    seen.lock().unwrap().push(body);
                    match reply {
                        Some(r) => {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{r}",
                                r.len()
                            );
                            stream.write_all(resp.as_bytes()).await.unwrap();
                            let _ = stream.shutdown().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (endpoint, seen)
    }

    #[tokio::test]
    async fn real_client_over_loopback() {
        let (endpoint, seen) = loopback_sts(Some(ok_body(&future_expiration()))).await;
        let client = StsClient::new(StsSettings {
            default_endpoint: Some(endpoint),
            ..settings()
        });
        let secret = Sensitive::new(SECRET.to_owned());
        let creds = client
            .get_session_token(request(&secret, true))
            .await
            .unwrap();
        assert_eq!(creds.session_token.expose(), SESSION_TOKEN);
        let creds = client
            .get_session_token(request(&secret, false))
            .await
            .unwrap();
        assert_eq!(creds.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].contains("TokenCode=123456"), "{}", seen[0]);
        assert!(!seen[1].contains("TokenCode"), "{}", seen[1]);
    }

    /// Like a server that closes idle keep-alive connections (as AWS's load balancers do): it
    /// answers each connection's first request without `Connection: close`, and drops the
    /// connection, unanswered, when a second request arrives on it. Returns the endpoint and,
    /// per request, (connection number, whether it said `Connection: close`, its body).
    async fn closes_idle_connections(reply: String) -> (String, Seen) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (reply, seen) = (reply.clone(), seen2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut served = 0;
                    loop {
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let complete = text.split_once("\r\n\r\n").and_then(|(head, body)| {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            (body.len() >= len).then(|| {
                                let close = head.to_ascii_lowercase().contains("connection: close");
                                (close, body[..len].to_owned(), head.len() + 4 + len)
                            })
                        });
                        let Some((close, body, used)) = complete else {
                            let n = stream.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        };
                        buf.drain(..used);
                        seen.lock().unwrap().push((conn, close, body));
                        served += 1;
                        if served > 1 {
                            return; // closed while idle: the request is lost
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        stream.write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (endpoint, seen)
    }

    /// A call carrying a code never goes out on a pooled keep-alive connection: the server may
    /// have closed it, and the code would be spent on a transport error (never retried).
    #[tokio::test]
    async fn a_code_goes_out_on_a_fresh_connection() {
        let (endpoint, seen_all) = closes_idle_connections(ok_body(&future_expiration())).await;
        let client = StsClient::new(StsSettings {
            default_endpoint: Some(endpoint),
            non_mfa_attempts: 1,
            ..settings()
        });
        let secret = Sensitive::new(SECRET.to_owned());
        // A call without a code leaves a keep-alive connection in the pool.
        client
            .get_session_token(request(&secret, false))
            .await
            .unwrap();
        // The code's call succeeds at the first (and only) try.
        let creds = client
            .get_session_token(request(&secret, true))
            .await
            .unwrap();
        assert_eq!(creds.session_token.expose(), SESSION_TOKEN);
        let seen = seen_of(&seen_all);
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (first_conn, first_close, _) = &seen[0];
        let (code_conn, code_close, code_body) = &seen[1];
        assert!(code_body.contains("TokenCode=123456"), "{code_body}");
        assert_ne!(
            first_conn, code_conn,
            "the code went out on a pooled connection"
        );
        assert!(*code_close && !first_close);
        // And a second code: a new connection again.
        client
            .get_session_token(request(&secret, true))
            .await
            .unwrap();
        let conns: Vec<usize> = seen_of(&seen_all).iter().map(|(c, _, _)| *c).collect();
        assert_eq!(conns.len(), 3);
        assert!(conns[2] != conns[0] && conns[2] != conns[1], "{conns:?}");
    }

    /// Per request: (connection number, `Connection: close`?, body).
    type Seen = Arc<Mutex<Vec<(usize, bool, String)>>>;

    fn seen_of(seen: &Seen) -> Vec<(usize, bool, String)> {
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn real_client_connection_refused_and_timeout() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = StsClient::new(StsSettings {
            default_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..settings()
        });
        let secret = Sensitive::new(SECRET.to_owned());
        let e = client
            .get_session_token(request(&secret, true))
            .await
            .unwrap_err();
        assert!(matches!(e, StsError::Transport { .. }), "{e:?}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(!e.to_string().contains("DispatchFailure {"), "{e}");
        assert!(e.is_retryable());
        assert!(!e.to_string().contains(SECRET));

        let (endpoint, seen) = loopback_sts(None).await;
        let client = StsClient::new(StsSettings {
            default_endpoint: Some(endpoint),
            timeout: Duration::from_millis(500),
            ..settings()
        });
        let e = client
            .get_session_token(request(&secret, true))
            .await
            .unwrap_err();
        assert_eq!(e, StsError::Timeout);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn settings_validation() {
        assert!(StsSettings::default().validate().is_ok());
        let mut s = StsSettings {
            default_endpoint: Some("http://localhost:4566/x".into()),
            ..StsSettings::default()
        };
        assert!(s.validate().is_err());
        s.default_endpoint = Some("http://localhost:4566".into());
        assert!(s.validate().is_ok());
        s.max_in_flight = 0;
        assert!(s.validate().is_err());
    }
}
