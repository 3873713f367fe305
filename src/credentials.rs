//! The one credentials type of the operator: what STS returns for a session (GetSessionToken)
//! or a role (AssumeRole), what an output Secret carries and what the kept-session Secret keeps.

use crate::Sensitive;
use jiff::Timestamp;

/// Temporary AWS credentials: a session's or a role's. The secret parts travel as
/// [`Sensitive`], whose formatting prints `<redacted>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Sensitive<String>,
    pub session_token: Sensitive<String>,
    pub expiration: Timestamp,
}

impl Credentials {
    /// `message` with the secret parts of these credentials masked (an API server or STS
    /// message should never echo them; this makes sure).
    pub fn redact(&self, message: &str) -> String {
        let mut m = message.to_string();
        for secret in [self.secret_access_key.expose(), self.session_token.expose()] {
            if !secret.is_empty() {
                m = m.replace(secret.as_str(), "<redacted>");
            }
        }
        m
    }
}
