//! What can go wrong with an STS call, classified for status, metrics and retries. No error
//! made here contains a secret value.

use super::MAX_MESSAGE_CHARS;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use std::fmt;

/// Why a `GetSessionToken` call failed. Display texts are fit for a status condition: STS codes
/// and (truncated) STS messages, never a key, token or token code.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StsError {
    /// STS refused the source keys (`SignatureDoesNotMatch`, `InvalidClientTokenId`, …), or they
    /// were refused locally before any call (`code` is `None`; see [`check_long_term_keys`]).
    #[error("{}", source_credentials_message(.code.as_deref(), .message))]
    SourceCredentialsInvalid {
        code: Option<String>,
        message: String,
    },
    /// `AccessDenied` on a call with MFA: wrong, expired or reused code, or a serial number that
    /// is not the user's MFA device. A new code is needed.
    #[error("STS rejected the MFA token code ({code}): {message}")]
    TokenCodeRejected { code: String, message: String },
    /// `AccessDenied` on a call without MFA.
    #[error("STS denied access ({code}): {message}")]
    AccessDenied { code: String, message: String },
    /// `Throttling`, `RequestLimitExceeded`, `TooManyRequestsException`, …
    #[error("STS throttled the call ({code}): {message}")]
    Throttled { code: String, message: String },
    /// The call (all attempts) did not finish within [`StsSettings::timeout`].
    #[error("the STS call timed out")]
    Timeout,
    /// No HTTP response: connection refused, DNS, TLS, reset, …
    #[error("could not reach STS: {message}")]
    Transport { message: String },
    /// Any other error response (5xx, `ValidationError`, `RegionDisabledException`,
    /// `ExpiredToken`, …). `code` is `HTTP <status>` when the response carried no error code.
    #[error("{}", service_message(.code, *.status, .message))]
    Service {
        code: String,
        message: String,
        status: u16,
    },
    /// A success response without all four credential fields, or with an expiration that is
    /// unparsable or not in the future.
    #[error("STS returned an invalid response: {message}")]
    InvalidResponse { message: String },
    /// The request was refused locally, before any call: bad region, duration, serial number
    /// or endpoint syntax. The caller normally validates these first.
    #[error("invalid STS request: {message}")]
    InvalidRequest { message: String },
}

pub(super) fn source_credentials_message(code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("STS rejected the source credentials ({code}): {message}"),
        None => format!("the source credentials are not usable: {message}"),
    }
}

pub(super) fn service_message(code: &str, status: u16, message: &str) -> String {
    if code.starts_with("HTTP ") {
        format!("STS returned an error ({code}): {message}")
    } else {
        format!("STS returned an error ({code}, HTTP {status}): {message}")
    }
}

impl StsError {
    /// The reason of the `Issuing` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            StsError::SourceCredentialsInvalid { .. } => "SourceCredentialsInvalid",
            StsError::TokenCodeRejected { .. } => "TokenCodeRejected",
            StsError::Throttled { .. } => "Throttled",
            StsError::InvalidRequest { .. } => "InvalidSpec",
            StsError::AccessDenied { .. }
            | StsError::Timeout
            | StsError::Transport { .. }
            | StsError::Service { .. }
            | StsError::InvalidResponse { .. } => "StsError",
        }
    }

    /// The `outcome` label of `sts_session_sts_calls_total` (success is [`OUTCOME_SUCCESS`]).
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            StsError::SourceCredentialsInvalid { .. } => "source_credentials_invalid",
            StsError::TokenCodeRejected { .. } => "token_code_rejected",
            StsError::AccessDenied { .. } => "access_denied",
            StsError::Throttled { .. } => "throttled",
            StsError::Timeout => "timeout",
            StsError::Transport { .. } => "transport_error",
            StsError::Service { .. } => "service_error",
            StsError::InvalidResponse { .. } => "invalid_response",
            StsError::InvalidRequest { .. } => "invalid_request",
        }
    }

    /// Whether the same call may succeed later without anything changing (throttling, timeouts,
    /// transport errors, 5xx). For calls with MFA the token code may have been consumed by the
    /// failed call all the same.
    pub fn is_retryable(&self) -> bool {
        match self {
            StsError::Throttled { .. }
            | StsError::Timeout
            | StsError::Transport { .. }
            | StsError::InvalidResponse { .. } => true,
            StsError::Service { code, status, .. } => {
                *status >= 500
                    || matches!(
                        code.as_str(),
                        "InternalFailure"
                            | "InternalError"
                            | "ServiceUnavailable"
                            | "IDPCommunicationError"
                            | "RequestTimeout"
                            | "RequestTimeoutException"
                    )
            }
            StsError::SourceCredentialsInvalid { .. }
            | StsError::TokenCodeRejected { .. }
            | StsError::AccessDenied { .. }
            | StsError::InvalidRequest { .. } => false,
        }
    }

    /// Whether STS was (possibly) reached: false only for [`StsError::InvalidRequest`] and
    /// locally refused source keys. Use it to decide whether to count the call in metrics.
    pub fn was_sent(&self) -> bool {
        !matches!(
            self,
            StsError::InvalidRequest { .. } | StsError::SourceCredentialsInvalid { code: None, .. }
        )
    }
}

/// Truncates to `max` characters, marking the cut with `…`.
pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

pub(super) fn short(s: impl fmt::Display) -> String {
    truncate(&s.to_string(), MAX_MESSAGE_CHARS)
}

/// An error and its sources, `Display` only (never `Debug`, which for SDK errors can include the
/// raw HTTP response), truncated.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    short(parts.join(": "))
}

pub(super) fn classify_code(code: &str, message: String, status: u16, with_mfa: bool) -> StsError {
    let code_s = code.to_owned();
    match code {
        "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "UnrecognizedClientException"
        | "InvalidAccessKeyId"
        | "AuthFailure" => StsError::SourceCredentialsInvalid {
            code: Some(code_s),
            message,
        },
        "AccessDenied" | "AccessDeniedException" if with_mfa => StsError::TokenCodeRejected {
            code: code_s,
            message,
        },
        "AccessDenied" | "AccessDeniedException" => StsError::AccessDenied {
            code: code_s,
            message,
        },
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "SlowDown" => StsError::Throttled {
            code: code_s,
            message,
        },
        _ => StsError::Service {
            code: code_s,
            message,
            status,
        },
    }
}

pub(super) fn classify<E>(err: SdkError<E, HttpResponse>, with_mfa: bool) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let context = || error_chain(&err);
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status();
            let e = se.err();
            match e.code() {
                Some(code) => classify_code(
                    code,
                    short(e.message().unwrap_or("")),
                    status.as_u16(),
                    with_mfa,
                ),
                // A success status whose body could not be deserialised.
                None if status.is_success() => StsError::InvalidResponse {
                    message: error_chain(e),
                },
                None => StsError::Service {
                    code: format!("HTTP {}", status.as_u16()),
                    message: short(
                        e.message()
                            .unwrap_or("the error response carried no error code"),
                    ),
                    status: status.as_u16(),
                },
            }
        }
        SdkError::TimeoutError(_) => StsError::Timeout,
        SdkError::DispatchFailure(df) if df.is_timeout() => StsError::Timeout,
        SdkError::DispatchFailure(_) => StsError::Transport { message: context() },
        SdkError::ResponseError(re) => {
            let status = re.raw().status();
            if status.is_success() {
                StsError::InvalidResponse { message: context() }
            } else {
                StsError::Service {
                    code: format!("HTTP {}", status.as_u16()),
                    message: context(),
                    status: status.as_u16(),
                }
            }
        }
        SdkError::ConstructionFailure(_) => StsError::InvalidRequest { message: context() },
        _ => StsError::Transport { message: context() },
    }
}
