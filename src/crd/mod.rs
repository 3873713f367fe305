//! The `SessionToken` custom resource (group `stssession.dev`, version `v1alpha1`).
//!
//! Doc comments on these types become the `kubectl explain` text, and the validation attributes
//! become the CRD's OpenAPI schema and CEL rules, so bad input is refused at `kubectl apply`.

use jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod assumed_role;
pub use assumed_role::*;

/// API group of the resource and prefix of every annotation and label the operator uses.
pub const GROUP: &str = "stssession.dev";
/// Annotation holding a six-digit MFA code: the approval of one session. Claimed (removed) once.
pub const TOKEN_CODE_ANNOTATION: &str = "stssession.dev/token-code";
/// Annotation naming who approved; recorded in `status.lastApproval`, removed with the code.
pub const APPROVED_BY_ANNOTATION: &str = "stssession.dev/approved-by";
/// Annotation asking for a new session now (`kubectl sts renew`); handled once, then removed.
/// Only for SessionTokens without `mfa` (those with it need a code: `kubectl sts approve`).
pub const RENEW_ANNOTATION: &str = "stssession.dev/renew-requested-at";
/// Label on every output Secret: the owning SessionToken's UID (names can exceed label length).
pub const OWNER_UID_LABEL: &str = "stssession.dev/session-token-uid";
/// Annotation on every output Secret: the owning SessionToken's name, for people.
pub const OWNER_NAME_ANNOTATION: &str = "stssession.dev/session-token";
/// Label on the Secret keeping a session for `spec.assumeRole` (value [`SESSION_SECRET_ROLE`]):
/// the operator's, not for workloads. Output Secrets do not carry it.
pub const SECRET_ROLE_LABEL: &str = "stssession.dev/secret-role";
pub const SESSION_SECRET_ROLE: &str = "session";
/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "sts-session-operator";
/// Where pods mount the output Secret, unless `spec.secret.mountPath` says otherwise: the
/// `config` file's `credential_process` reads `credential-process.json` from here.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/stssession.dev";
/// Pod-template annotation set on restart targets at each rotation: when (RFC 3339), as
/// `kubectl rollout restart` does with `kubectl.kubernetes.io/restartedAt`.
pub const RESTARTED_AT_ANNOTATION: &str = "stssession.dev/restartedAt";
/// Prefix of the pod-template annotation naming the session a target was restarted for:
/// `sessiontoken.stssession.dev/<SessionToken name>: <access key id>` (one per SessionToken, so
/// that two SessionTokens restarting one workload never undo each other).
pub const RESTARTED_FOR_PREFIX: &str = "sessiontoken.stssession.dev/";

pub const DEFAULT_DURATION_SECONDS: i32 = 43_200;
/// At most this many labels, and this many annotations, in `spec.secret`.
pub const MAX_SECRET_METADATA: u32 = 32;
pub const DEFAULT_RENEW_BEFORE_PERCENTAGE: i32 = 33;

fn default_duration_seconds() -> i32 {
    DEFAULT_DURATION_SECONDS
}
fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// A SessionToken keeps short-lived AWS STS session credentials (GetSessionToken) in a Secret,
/// minted from an IAM user's long-term keys and, when `mfa` is set, a person's MFA code given as
/// the annotation `stssession.dev/token-code` (see `kubectl sts approve`).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stssession.dev",
    version = "v1alpha1",
    kind = "SessionToken",
    namespaced,
    shortname = "st",
    status = "SessionTokenStatus",
    doc = "A SessionToken keeps short-lived AWS STS session credentials in a Secret, minted with GetSessionToken from an IAM user's long-term keys and, when spec.mfa is set, a person's MFA code (annotation stssession.dev/token-code, see `kubectl sts approve`). By default the Secret holds AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SESSION_EXPIRATION, a shared-credentials file `credentials`, and an AWS `config` file whose credential_process reads `credential-process.json` (spec.secret.formats), and is rotated before expiry; spec.rolloutRestartTargets are restarted after each rotation.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiration"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec.sourceCredentials.secretRef.name != (has(self.spec.secret) && has(self.spec.secret.name) ? self.spec.secret.name : self.metadata.name)").message("the output Secret (spec.secret.name, default: the SessionToken's name) must differ from the source Secret")
)]
#[serde(rename_all = "camelCase")]
pub struct SessionTokenSpec {
    /// How long each session lasts, in seconds: 900 (15 minutes) to 129600 (36 hours).
    /// STS may return a shorter session (for an account root user, at most 3600 s); renewal is
    /// timed from the expiration STS actually returns.
    #[serde(default = "default_duration_seconds")]
    #[schemars(range(min = 900, max = 129600))]
    pub duration_seconds: i32,

    /// The MFA device whose codes approve sessions. Without it, sessions are minted and rotated
    /// with no person involved; with it, each session needs a code (annotation
    /// `stssession.dev/token-code`) and the operator warns before the current one expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<MfaSpec>,

    /// Where the IAM user's long-term access keys are: a Secret in this SessionToken's namespace.
    pub source_credentials: SourceCredentials,

    /// AWS region of the STS endpoint (e.g. `eu-west-1`). Default: the operator's `--default-region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: Option<String>,

    /// STS endpoint URL, e.g. `https://sts.eu-west-1.amazonaws.com` or a VPC endpoint. It receives
    /// a signed request and the MFA code, so it must match the operator's allow-list
    /// (`--allowed-sts-endpoints`); otherwise the SessionToken is not Ready (`EndpointNotAllowed`).
    /// Default: the operator's `--sts-endpoint`, else AWS's regional endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: Option<String>,

    /// The Secret the session credentials are written to, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<OutputSecretSpec>,

    /// When to renew, before the session expires. Default: 33 % of the session's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalSpec>,

    /// Workloads in this namespace that read the credentials as environment variables (which a
    /// running process never sees change): after each rotation the operator restarts them, as
    /// `kubectl rollout restart` does, by setting the pod-template annotations
    /// `stssession.dev/restartedAt` and `sessiontoken.stssession.dev/<this name>` (the session's
    /// access key id). One restart per rotation, none otherwise. A target that is missing or
    /// may not be patched shows as the condition `RolloutRestart=False`; the rotation itself
    /// never waits for it. Needs get/patch on the workloads (apps) for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,

    /// A role to assume with each session (AssumeRole, signed with the session's credentials):
    /// the output Secret then holds the role's credentials, re-assumed before they expire for
    /// as long as the session lasts, so one approval serves the whole session although role
    /// chaining caps each role session at one hour. The session itself is kept in a second
    /// Secret owned by this SessionToken (`status.sessionSecretName`, labelled
    /// `stssession.dev/secret-role: session`; not for workloads), so that an operator restart
    /// costs no approval. Use it where the MFA condition sits on the role's trust policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<Box<AssumeRoleSpec>>,

    /// The roles this session may be used for (`spec.assumeRole` and AssumedRoles drawing on
    /// it): role ARNs, where `*` stands for any run of characters (e.g.
    /// `arn:aws:iam::123456789012:role/app-*`). Empty: any role. A role outside the list gets
    /// `Ready=False/RoleNotAllowed` and no AssumeRole call. With `mfa`, a change to the list
    /// after an approval needs a new approval before the session is used again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("items" = {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": r"^arn:aws[a-z*-]*:iam::([0-9]{12}|\*):role/[\w+=,.@/*-]+$"}))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_roles: Vec<String>,
}

/// The role assumed with each session.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct AssumeRoleSpec {
    /// ARN of the role, `arn:aws:iam::123456789012:role/NAME` (a path may precede the name).
    #[schemars(
        length(min = 20, max = 2048),
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$")
    )]
    pub role_arn: String,
    /// Name of the role session, seen in CloudTrail and in the assumed role's ARN: 2 to 64
    /// characters of `[\w+=,.@-]`. Default: `<namespace>.<name>` of this SessionToken
    /// (shortened, with a hash, if longer than 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^[\w+=,.@-]+$"))]
    pub role_session_name: Option<String>,
    /// How long each set of role credentials lasts, in seconds: 900 to 3600 (the cap AWS puts
    /// on roles assumed with session credentials). The last set before the session ends is
    /// asked for no longer than the session has left, so role credentials never outlive it.
    #[serde(default = "default_role_duration_seconds")]
    #[schemars(range(min = 900, max = 3600))]
    pub duration_seconds: i32,
    /// The external id the role's trust policy asks for (`sts:ExternalId`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224), regex(pattern = r"^[\w+=,.@:/-]+$"))]
    pub external_id: Option<String>,
    /// Session tags passed to AssumeRole (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"]))]
    pub tags: Vec<SessionTag>,
}

/// A session tag.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionTag {
    /// 1 to 128 characters of letters, digits, spaces and `_.:/=+-@`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]+$")
    )]
    pub key: String,
    /// Up to 256 characters of letters, digits, spaces and `_.:/=+-@`.
    #[serde(default)]
    #[schemars(length(max = 256), regex(pattern = r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$"))]
    pub value: String,
}

#[cfg(test)]
impl AssumeRoleSpec {
    /// `arn:aws:iam::123456789012:role/deployer`, defaults otherwise (unit tests).
    pub(crate) fn example() -> Self {
        Self {
            role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
            role_session_name: None,
            duration_seconds: DEFAULT_ROLE_DURATION_SECONDS,
            external_id: None,
            tags: vec![],
        }
    }
}

pub const DEFAULT_ROLE_DURATION_SECONDS: i32 = 3_600;

fn default_role_duration_seconds() -> i32 {
    DEFAULT_ROLE_DURATION_SECONDS
}

/// A workload restarted after each rotation.
#[derive(
    KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group apps).
    pub kind: WorkloadKind,
    /// Its name, in the SessionToken's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Kinds of workload a SessionToken can restart.
#[derive(
    schemars::JsonSchema,
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// A format of the output Secret: `EnvVars`, `CredentialsFile` or `CredentialProcess`.
// (Plain comments on the variants: doc comments would make the schema a `oneOf`.)
#[derive(
    schemars::JsonSchema,
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum OutputFormat {
    // `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
    // `AWS_SESSION_EXPIRATION`, for `envFrom` (read once, at container start).
    EnvVars,
    // `credentials`: a shared-credentials file (profile `default`), for
    // `AWS_SHARED_CREDENTIALS_FILE` (SDKs read it once, at start).
    CredentialsFile,
    // `config`: an AWS config file whose profile `default` has
    // `credential_process = cat <mountPath>/credential-process.json`, and
    // `credential-process.json` itself: SDKs run it again as their credentials near expiry, so
    // a running process picks up each rotation (set `AWS_CONFIG_FILE=<mountPath>/config`).
    CredentialProcess,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 3] = [
        OutputFormat::EnvVars,
        OutputFormat::CredentialsFile,
        OutputFormat::CredentialProcess,
    ];
}

/// The MFA device that approves sessions.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MfaSpec {
    /// Serial number of a hardware device, or the ARN of a virtual device
    /// (`arn:aws:iam::123456789012:mfa/alice`): 9 to 256 characters of `[\w+=,.@:/-]`.
    #[schemars(length(min = 9, max = 256), regex(pattern = r"^[\w+=,.@:/-]+$"))]
    pub serial_number: String,
}

/// Source of the IAM user's long-term keys.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceCredentials {
    /// A Secret in the SessionToken's own namespace (there is deliberately no namespace field).
    pub secret_ref: SourceSecretRef,
}

/// A Secret holding long-term keys (an `AKIA…` access key id and its secret access key).
/// Session credentials (an `ASIA…` key id, or a session token beside the keys) are refused:
/// STS only issues session tokens for long-term keys.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSecretRef {
    /// Name of the Secret, in the SessionToken's namespace (a DNS subdomain name: no `/`, so no
    /// path tricks can reach another namespace).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key of the access key id in the Secret's data.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub access_key_id_key: String,
    /// Key of the secret access key in the Secret's data.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub secret_access_key_key: String,
}

/// The output Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutputSecretSpec {
    /// Name of the Secret to write. Default: the SessionToken's name. Must differ from the
    /// source Secret. Changing it moves the current credentials to the new Secret and deletes
    /// the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Labels set on the Secret (and kept there): at most 32, keys of at most 317 characters
    /// (a 253-character prefix, `/`, a 63-character name), values of at most 63.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_SECRET_METADATA, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 317)").message("label keys are at most 317 characters"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations set on the Secret (and kept there): at most 32, keys of at most 317
    /// characters, values of at most 1024.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_SECRET_METADATA, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 317)").message("annotation keys are at most 317 characters"))]
    pub annotations: BTreeMap<String, String>,
    /// Keep the Secret when the SessionToken is deleted (no owner reference). Default false:
    /// the Secret is garbage-collected with its SessionToken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// What the Secret carries. Default: all three.
    /// `EnvVars`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_SESSION_EXPIRATION`, for `envFrom` (read at container start only: see
    /// rolloutRestartTargets). `CredentialsFile`: `credentials`, a shared-credentials file for
    /// `AWS_SHARED_CREDENTIALS_FILE` (SDKs read it at start only). `CredentialProcess`: `config`,
    /// whose profile `default` runs `credential_process = cat <mountPath>/credential-process.json`,
    /// and that JSON document: with `AWS_CONFIG_FILE=<mountPath>/config` SDKs run it again as
    /// their credentials near expiry, so running processes pick up each rotation. Keys of formats
    /// not listed are removed from the Secret; changing the list keeps the current session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub formats: Option<Vec<OutputFormat>>,
    /// The directory pods mount this Secret at (a `secret` volume, not `subPath`: the kubelet
    /// never updates subPath mounts). Only the `config` file uses it: its `credential_process`
    /// is `cat <mountPath>/credential-process.json`. Default `/var/run/secrets/stssession.dev`;
    /// set another one for a second SessionToken in the same pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = r"^(/[A-Za-z0-9._-]+)+$"))]
    pub mount_path: Option<String>,
}

/// When to renew a session, before it expires. Set at most one field.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.renewBeforePercentage) && has(self.renewBefore))").message("set renewBeforePercentage or renewBefore, not both"))]
pub struct RenewalSpec {
    /// Renew when this percentage of the session's lifetime remains (1 to 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,
    /// Renew this long before expiry, as a duration such as `2h`, `90m` or `1h30m`: at least
    /// one minute. If it is not shorter than the session's lifetime, a third of the lifetime is
    /// used instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("renewBefore must be at least one minute (1m)"))]
    pub renew_before: Option<String>,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionTokenStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: is there a valid Secret now. `Issuing`: how the last attempt to mint went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the current session expires (the expiration STS returned), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub expiration: Option<Timestamp>,
    /// When the current session is renewed (or, with MFA, a new code is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub renewal_time: Option<Timestamp>,
    /// When the current session was minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub issued_at: Option<Timestamp>,
    /// The current session's access key id (public; the secret parts are only in the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The Secret holding the current session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Fingerprint of the settings the current session was minted with (duration, MFA device,
    /// source keys, region, endpoint); a change means the session no longer matches its spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_hash: Option<String>,
    /// The last approval that minted a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_approval: Option<Approval>,
    /// With `mfa`: a digest of what the current session was approved for (the role and its
    /// external id, the source Secret, the region and the endpoint). A spec changed since in
    /// any of them does not get the session: it needs a new approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub approved_for: Option<String>,
    /// Sessions minted so far.
    #[serde(default)]
    pub rotations: i64,
    /// The last failed attempt to mint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Failed attempts since the last success; drives the retry backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: i32,
    /// With `spec.assumeRole`: the Secret keeping the session the role is assumed with (not
    /// for workloads; the output Secret holds the role's credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret_name: Option<String>,
    /// With `spec.assumeRole`: the role credentials in the output Secret. (`expiration`,
    /// `renewalTime` and `accessKeyId` above describe the session they are assumed with.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Box<RoleStatus>>,
}

/// The role credentials the output Secret holds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// The role assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The assumed-role ARN STS returned (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_role_arn: Option<String>,
    /// The role credentials' access key id (public; the secret parts are only in the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// When they were assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub assumed_at: Option<Timestamp>,
    /// When they expire (as STS returned it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub expiration: Option<Timestamp>,
    /// When the role is assumed again (if the session still has at least 15 minutes left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_date_time")]
    pub renewal_time: Option<Timestamp>,
    /// Access key id of the session they were assumed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_access_key_id: Option<String>,
    /// Fingerprint of `spec.assumeRole` when they were assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Role credentials assumed so far.
    #[serde(default)]
    pub assumptions: i64,
    /// The last failed AssumeRole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Failed AssumeRole calls since the last success; drives their retry backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: i32,
}

/// An RFC 3339 time: the API server refuses anything else at write time.
fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

fn optional_date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time", "nullable": true})
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Who approved a session, and when.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The `stssession.dev/approved-by` annotation that came with the code, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When the code was used.
    #[schemars(schema_with = "date_time")]
    pub time: Timestamp,
}

/// A failed attempt to mint.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    #[schemars(schema_with = "date_time")]
    pub time: Timestamp,
    pub reason: String,
    pub message: String,
}

/// A word of a condition (its type, status or reason). They come from a small set, so each
/// distinct one is kept once for the whole process ([`word`]): the watch cache holds three
/// conditions per SessionToken, 90,000 small strings at 10,000 otherwise.
pub type Word = std::borrow::Cow<'static, str>;

/// The one copy of `text` ([`Word`]). At most 512 distinct words of up to 64 bytes are kept;
/// anything else (not written by this operator) stays a string of its own.
pub fn word(text: &str) -> Word {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WORDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut words = WORDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(w) = words.get(text) {
        return Word::Borrowed(w);
    }
    if words.len() < 512 && text.len() <= 64 {
        let w: &'static str = Box::leak(text.to_owned().into_boxed_str());
        words.insert(w);
        return Word::Borrowed(w);
    }
    Word::Owned(text.to_owned())
}

fn deserialize_word<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(word(&text))
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type", deserialize_with = "deserialize_word")]
    #[schemars(with = "String")]
    pub type_: Word,
    /// `True`, `False` or `Unknown`.
    #[serde(deserialize_with = "deserialize_word")]
    #[schemars(with = "String")]
    pub status: Word,
    #[serde(deserialize_with = "deserialize_word")]
    #[schemars(with = "String")]
    pub reason: Word,
    #[serde(default)]
    pub message: String,
    #[schemars(schema_with = "date_time")]
    pub last_transition_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl SessionToken {
    /// Name of the output Secret: `spec.secret.name`, else the SessionToken's own name.
    pub fn output_secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The formats the output Secret carries: `spec.secret.formats`, else all of them; sorted,
    /// without duplicates.
    pub fn output_formats(&self) -> Vec<OutputFormat> {
        formats_of(self.spec.secret.as_ref())
    }

    /// Where pods mount the output Secret: `spec.secret.mountPath`, else the default.
    pub fn output_mount_path(&self) -> String {
        mount_path_of(self.spec.secret.as_ref())
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// The formats an output Secret carries: `formats`, else all of them; sorted, without duplicates.
fn formats_of(spec: Option<&OutputSecretSpec>) -> Vec<OutputFormat> {
    let mut formats = spec
        .and_then(|s| s.formats.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| OutputFormat::ALL.to_vec());
    formats.sort();
    formats.dedup();
    formats
}

/// Where pods mount an output Secret: `mountPath`, else the default.
fn mount_path_of(spec: Option<&OutputSecretSpec>) -> String {
    spec.and_then(|s| s.mount_path.clone())
        .unwrap_or_else(|| DEFAULT_MOUNT_PATH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn schema_carries_validation() {
        let crd = serde_json::to_string(&SessionToken::crd()).unwrap();
        for needle in [
            r#""minimum":900"#,
            r#""maximum":129600"#,
            r#""default":43200"#,
            r#""minLength":9"#,
            r#""maxLength":256"#,
            "renewBeforePercentage or renewBefore, not both",
            "must differ from the source Secret",
            r#""shortNames":["st"]"#,
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn condition_words_are_kept_once() {
        let parse = |reason: &str| -> Condition {
            serde_json::from_value(serde_json::json!({
                "type": "Ready", "status": "True", "reason": reason, "message": "m",
                "lastTransitionTime": "2026-11-23T00:00:00Z"
            }))
            .unwrap()
        };
        let (a, b) = (parse("Issued"), parse("Issued"));
        assert_eq!(a, b);
        for (x, y) in [
            (&a.type_, &b.type_),
            (&a.status, &b.status),
            (&a.reason, &b.reason),
        ] {
            assert!(matches!(x, Word::Borrowed(_)) && std::ptr::eq(x.as_ptr(), y.as_ptr()));
        }
        assert!(std::ptr::eq(word("Issued").as_ptr(), a.reason.as_ptr()));
        // Long text is not kept.
        assert!(matches!(word(&"x".repeat(65)), Word::Owned(_)));
        // Round trip: the same JSON as before.
        assert_eq!(serde_json::to_value(&a).unwrap()["reason"], "Issued");
    }

    #[test]
    fn spec_defaults_apply_when_fields_are_absent() {
        let spec: SessionTokenSpec = serde_json::from_value(serde_json::json!({
            "sourceCredentials": {"secretRef": {"name": "keys"}}
        }))
        .unwrap();
        assert_eq!(spec.duration_seconds, 43200);
        assert_eq!(
            spec.source_credentials.secret_ref.access_key_id_key,
            "AWS_ACCESS_KEY_ID"
        );
        assert_eq!(
            spec.source_credentials.secret_ref.secret_access_key_key,
            "AWS_SECRET_ACCESS_KEY"
        );
    }
}

/// The CRDs as checked in under `crds/`: (file name, YAML). `cargo run --bin crdgen` writes them.
pub fn crd_files() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    let yaml = |crd| {
        // (A derived schema of plain types: serialising it cannot fail.)
        let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
        format!("# Generated by `cargo run --bin crdgen`; DO NOT EDIT.\n{yaml}")
    };
    vec![
        (
            "stssession.dev_sessiontokens.yaml",
            yaml(SessionToken::crd()),
        ),
        ("stssession.dev_assumedroles.yaml", yaml(AssumedRole::crd())),
    ]
}

#[cfg(test)]
mod sync {
    /// `crds/` must be what `crdgen` writes: regenerate with `cargo run --bin crdgen`.
    #[test]
    fn checked_in_crds_match_the_types() {
        for (file, yaml) in super::crd_files() {
            let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                checked_in == yaml,
                "{path} is out of date: run `cargo run --bin crdgen`"
            );
        }
    }
}
