//! The Secrets at both ends: reading the IAM user's long-term keys, and rendering, recognising
//! and checking the output Secret that holds the session.

use crate::crd::{
    ASSUMED_ROLE_ANNOTATION, ASSUMED_ROLE_UID_LABEL, AssumedRole, DEFAULT_MOUNT_PATH,
    FIELD_MANAGER, OWNER_NAME_ANNOTATION, OWNER_UID_LABEL, OutputFormat, OutputSecretSpec,
    SECRET_ROLE_LABEL, SESSION_SECRET_ROLE, SessionToken, SourceSecretRef,
};
use crate::credentials::Credentials;
use crate::sensitive::Sensitive;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

pub const KEY_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const KEY_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const KEY_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const KEY_EXPIRATION: &str = "AWS_SESSION_EXPIRATION";
/// An AWS shared-credentials file (profile `default`), for volume mounts with
/// `AWS_SHARED_CREDENTIALS_FILE`.
pub const KEY_CREDENTIALS_FILE: &str = "credentials";
/// An AWS config file (profile `default`) whose `credential_process` prints
/// [`KEY_CREDENTIAL_PROCESS`] from the mount path, for `AWS_CONFIG_FILE`.
pub const KEY_CONFIG_FILE: &str = "config";
/// The session as `credential_process` output (JSON, `Version: 1`).
pub const KEY_CREDENTIAL_PROCESS: &str = "credential-process.json";
/// Every data key the operator ever writes, whatever the formats.
pub const ALL_KEYS: [&str; 7] = [
    KEY_ACCESS_KEY_ID,
    KEY_SECRET_ACCESS_KEY,
    KEY_SESSION_TOKEN,
    KEY_EXPIRATION,
    KEY_CREDENTIALS_FILE,
    KEY_CONFIG_FILE,
    KEY_CREDENTIAL_PROCESS,
];
/// Annotation on the output Secret: the session's expiration (RFC 3339). Public, and the only
/// place the expiration is when the Secret carries nothing but the `credentials` file.
pub const EXPIRATION_ANNOTATION: &str = "stssession.dev/expiration";

/// The data keys of one format.
pub fn format_keys(format: OutputFormat) -> &'static [&'static str] {
    match format {
        OutputFormat::EnvVars => &[
            KEY_ACCESS_KEY_ID,
            KEY_SECRET_ACCESS_KEY,
            KEY_SESSION_TOKEN,
            KEY_EXPIRATION,
        ],
        OutputFormat::CredentialsFile => &[KEY_CREDENTIALS_FILE],
        OutputFormat::CredentialProcess => &[KEY_CONFIG_FILE, KEY_CREDENTIAL_PROCESS],
    }
}

/// How the output Secret lays a session out: which formats, and (for `config`) where pods
/// mount it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub formats: Vec<OutputFormat>,
    pub mount_path: String,
}

impl Default for Layout {
    /// Every format, mounted at the default path.
    fn default() -> Self {
        Self {
            formats: OutputFormat::ALL.to_vec(),
            mount_path: DEFAULT_MOUNT_PATH.into(),
        }
    }
}

impl Layout {
    pub fn of(st: &SessionToken) -> Layout {
        Layout {
            formats: st.output_formats(),
            mount_path: st.output_mount_path(),
        }
    }

    pub fn of_role(ar: &AssumedRole) -> Layout {
        Layout {
            formats: ar.output_formats(),
            mount_path: ar.output_mount_path(),
        }
    }

    pub fn has(&self, format: OutputFormat) -> bool {
        self.formats.contains(&format)
    }

    /// The data keys this layout renders.
    pub fn keys(&self) -> Vec<&'static str> {
        self.formats
            .iter()
            .flat_map(|f| format_keys(*f).iter().copied())
            .collect()
    }
}

/// The `config` file: profile `default` runs `cat` on the JSON document in the mounted Secret.
pub fn config_file(mount_path: &str) -> String {
    format!(
        "[default]\ncredential_process = cat {}/{KEY_CREDENTIAL_PROCESS}\n",
        mount_path.trim_end_matches('/')
    )
}

/// The `credential_process` output format the AWS SDKs and CLI read.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessCredentials {
    version: u8,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// The session as `credential_process` prints it (`credential-process.json`).
pub fn credential_process_json(session: &Credentials) -> String {
    let doc = ProcessCredentials {
        version: 1,
        access_key_id: session.access_key_id.clone(),
        secret_access_key: session.secret_access_key.expose().clone(),
        session_token: session.session_token.expose().clone(),
        expiration: session.expiration.to_string(),
    };
    // Plain strings: serialising cannot fail.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// Marks output Secrets, so the operator's Secret watch can be label-filtered.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The IAM user's long-term keys, read from the source Secret.
#[derive(Clone, Debug)]
pub struct LongTermKeys {
    pub access_key_id: String,
    pub secret_access_key: Sensitive<String>,
}

/// Why the source Secret cannot be used. Maps to the `Ready`/`Issuing` reasons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceProblem {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
}

impl SourceProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            SourceProblem::Missing(_) => "SourceCredentialsMissing",
            SourceProblem::Invalid(_) => "SourceCredentialsInvalid",
        }
    }
}

fn data_text<'a>(secret: &'a Secret, key: &str) -> Option<Result<&'a str, ()>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| std::str::from_utf8(&v.0).map_err(|_| ()))
}

/// Reads long-term keys from the source Secret. Session credentials are refused before any
/// STS call: GetSessionToken only accepts an IAM user's long-term keys.
pub fn read_long_term_keys(
    secret: Option<&Secret>,
    r: &SourceSecretRef,
) -> Result<LongTermKeys, SourceProblem> {
    let Some(secret) = secret else {
        return Err(SourceProblem::Missing(format!(
            "source Secret {:?} not found in this namespace",
            r.name
        )));
    };
    let text = |key: &str| -> Result<String, SourceProblem> {
        match data_text(secret, key) {
            None => Err(SourceProblem::Missing(format!(
                "source Secret {:?} has no key {key:?}",
                r.name
            ))),
            Some(Err(())) => Err(SourceProblem::Invalid(format!(
                "source Secret {:?}: key {key:?} is not UTF-8",
                r.name
            ))),
            Some(Ok(v)) => Ok(v.trim().to_string()),
        }
    };
    let access_key_id = text(&r.access_key_id_key)?;
    let secret_access_key = Sensitive::new(text(&r.secret_access_key_key)?);
    if secret_access_key.expose().is_empty() {
        return Err(SourceProblem::Invalid(format!(
            "source Secret {:?}: key {:?} is empty",
            r.name, r.secret_access_key_key
        )));
    }
    let has_session_token = [
        "AWS_SESSION_TOKEN",
        "aws_session_token",
        "sessionToken",
        "SessionToken",
    ]
    .iter()
    .any(|k| data_text(secret, k).is_some_and(|v| v.is_ok_and(|s| !s.trim().is_empty())));
    crate::sts::check_long_term_keys(&access_key_id, &secret_access_key, has_session_token)
        .map_err(|why| SourceProblem::Invalid(format!("source Secret {:?}: {why}", r.name)))?;
    Ok(LongTermKeys {
        access_key_id,
        secret_access_key,
    })
}

/// Renders the output Secret's data for a session, in the given layout.
pub fn render_data(session: &Credentials, layout: &Layout) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        data.insert(k.to_string(), ByteString(v.into_bytes()));
    };
    if layout.has(OutputFormat::EnvVars) {
        put(KEY_ACCESS_KEY_ID, session.access_key_id.clone());
        put(
            KEY_SECRET_ACCESS_KEY,
            session.secret_access_key.expose().clone(),
        );
        put(KEY_SESSION_TOKEN, session.session_token.expose().clone());
        put(KEY_EXPIRATION, session.expiration.to_string());
    }
    if layout.has(OutputFormat::CredentialsFile) {
        put(
            KEY_CREDENTIALS_FILE,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
                session.access_key_id,
                session.secret_access_key.expose(),
                session.session_token.expose()
            ),
        );
    }
    if layout.has(OutputFormat::CredentialProcess) {
        put(KEY_CONFIG_FILE, config_file(&layout.mount_path));
        put(KEY_CREDENTIAL_PROCESS, credential_process_json(session));
    }
    data
}

/// The session a Secret carries, from whichever of its keys has it (not yet checked against
/// the other keys).
fn session_candidate(secret: &Secret) -> Option<Credentials> {
    let get = |k: &str| {
        data_text(secret, k)
            .and_then(Result::ok)
            .map(str::to_string)
    };
    let process: Option<ProcessCredentials> = get(KEY_CREDENTIAL_PROCESS)
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|p: &ProcessCredentials| p.version == 1);
    let expiration: Timestamp = get(KEY_EXPIRATION)
        .or_else(|| process.as_ref().map(|p| p.expiration.clone()))
        .or_else(|| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EXPIRATION_ANNOTATION))
                .cloned()
        })?
        .parse()
        .ok()?;
    let (access_key_id, secret_access_key, session_token) =
        if let (Some(id), Some(key), Some(tok)) = (
            get(KEY_ACCESS_KEY_ID),
            get(KEY_SECRET_ACCESS_KEY),
            get(KEY_SESSION_TOKEN),
        ) {
            (id, key, tok)
        } else if let Some(p) = process {
            (p.access_key_id, p.secret_access_key, p.session_token)
        } else {
            let file = get(KEY_CREDENTIALS_FILE)?;
            let value = |name: &str| {
                file.lines().find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().to_string())
                })
            };
            (
                value("aws_access_key_id")?,
                value("aws_secret_access_key")?,
                value("aws_session_token")?,
            )
        };
    Some(Credentials {
        access_key_id,
        secret_access_key: Sensitive::new(secret_access_key),
        session_token: Sensitive::new(session_token),
        expiration,
    })
}

/// Reads the session back from an output Secret, if it holds a complete, consistent one in
/// `layout`: every key the layout renders is present and agrees with the others.
pub fn read_session(secret: &Secret, layout: &Layout) -> Option<Credentials> {
    let session = session_candidate(secret)?;
    let data = secret.data.as_ref()?;
    render_data(&session, layout)
        .iter()
        .all(|(k, v)| data.get(k) == Some(v))
        .then_some(session)
}

/// Reads the session from an output Secret written in any layout (e.g. before `formats` or
/// `mountPath` changed): each format it carries, even in part, must be complete and agree
/// with the others (`config` does not count: it holds no session).
pub fn read_session_any_layout(secret: &Secret) -> Option<Credentials> {
    let session = session_candidate(secret)?;
    let data = secret.data.as_ref()?;
    let rendered = render_data(&session, &Layout::default());
    let consistent = OutputFormat::ALL.iter().all(|f| {
        let keys: Vec<&str> = format_keys(*f)
            .iter()
            .copied()
            .filter(|k| *k != KEY_CONFIG_FILE)
            .collect();
        let present = keys.iter().filter(|k| data.contains_key(**k)).count();
        present == 0 || keys.iter().all(|k| data.get(*k) == rendered.get(*k))
    });
    consistent.then_some(session)
}

/// The session the output Secret holds for `st`: in its current layout, else in the layout it
/// was written in (the operator then rewrites it, with the same session, in the current one).
pub fn held_session(secret: &Secret, st: &SessionToken) -> Option<Credentials> {
    read_session(secret, &Layout::of(st)).or_else(|| read_session_any_layout(secret))
}

/// Keys the operator writes that `existing` has and `desired` no longer renders (a format was
/// dropped from `spec.secret.formats`). Keys others added are not the operator's business.
pub fn stale_keys(existing: &Secret, desired: &Secret) -> Vec<String> {
    let want = desired.data.as_ref();
    existing
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| ALL_KEYS.contains(&k.as_str()))
        .filter(|k| !want.is_some_and(|w| w.contains_key(*k)))
        .cloned()
        .collect()
}

/// How the Secret at the output name relates to a SessionToken.
#[derive(Clone, Debug, PartialEq)]
pub enum Ownership {
    Absent,
    /// Ours: controlled by this SessionToken, or (with `retainOnDelete`) labelled with its UID
    /// and controlled by nobody.
    Ours,
    /// Someone else's: never touched.
    Foreign(String),
}

pub fn ownership(secret: Option<&Secret>, st: &SessionToken) -> Ownership {
    ownership_by(secret, &SecretOwner::session(st))
}

/// Who the operator writes an output Secret for: a SessionToken or an AssumedRole. Each kind
/// marks its Secrets with its own UID label and name annotation, and owns them (unless
/// `retainOnDelete`) with a controller reference of its own kind.
pub struct SecretOwner<'a> {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub uid: &'a str,
    pub uid_label: &'static str,
    pub name_annotation: &'static str,
    pub spec: Option<&'a OutputSecretSpec>,
}

impl<'a> SecretOwner<'a> {
    pub fn session(st: &'a SessionToken) -> Self {
        Self {
            kind: "SessionToken",
            api_version: "stssession.dev/v1alpha1",
            name: st.metadata.name.as_deref().unwrap_or_default(),
            namespace: st.metadata.namespace.as_deref(),
            uid: st.metadata.uid.as_deref().unwrap_or_default(),
            uid_label: OWNER_UID_LABEL,
            name_annotation: OWNER_NAME_ANNOTATION,
            spec: st.spec.secret.as_ref(),
        }
    }

    pub fn role(ar: &'a AssumedRole) -> Self {
        Self {
            kind: "AssumedRole",
            api_version: "stssession.dev/v1alpha1",
            name: ar.metadata.name.as_deref().unwrap_or_default(),
            namespace: ar.metadata.namespace.as_deref(),
            uid: ar.metadata.uid.as_deref().unwrap_or_default(),
            uid_label: ASSUMED_ROLE_UID_LABEL,
            name_annotation: ASSUMED_ROLE_ANNOTATION,
            spec: ar.spec.secret.as_ref(),
        }
    }

    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.into(),
            kind: self.kind.into(),
            name: self.name.into(),
            uid: self.uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// How the Secret `secret` relates to `owner`.
pub fn ownership_by(secret: Option<&Secret>, owner: &SecretOwner<'_>) -> Ownership {
    let Some(secret) = secret else {
        return Ownership::Absent;
    };
    let controller = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(owner.uid_label))
        .map(String::as_str)
        == Some(owner.uid);
    match controller {
        Some(o) if o.uid == owner.uid => Ownership::Ours,
        None if labelled => Ownership::Ours,
        Some(o) => Ownership::Foreign(format!(
            "Secret {:?} is controlled by {} {:?}, not by this {}",
            secret.metadata.name.as_deref().unwrap_or_default(),
            o.kind,
            o.name,
            owner.kind
        )),
        None => Ownership::Foreign(format!(
            "Secret {:?} exists and is not managed by this {}",
            secret.metadata.name.as_deref().unwrap_or_default(),
            owner.kind
        )),
    }
}

/// The output Secret as it should be: data, the owner label/annotation, the user's labels and
/// annotations, and a controller owner reference unless `retainOnDelete`.
pub fn desired_secret(st: &SessionToken, name: &str, session: &Credentials) -> Secret {
    desired_output(&SecretOwner::session(st), name, session, &Layout::of(st))
}

/// An AssumedRole's output Secret as it should be (as [`desired_secret`]).
pub fn desired_role_secret(ar: &AssumedRole, name: &str, creds: &Credentials) -> Secret {
    desired_output(&SecretOwner::role(ar), name, creds, &Layout::of_role(ar))
}

fn desired_output(
    owner: &SecretOwner<'_>,
    name: &str,
    session: &Credentials,
    layout: &Layout,
) -> Secret {
    let spec = owner.spec.cloned().unwrap_or_default();
    operator_secret(
        owner,
        name,
        (spec.labels, spec.annotations),
        session,
        layout,
        !spec.retain_on_delete,
    )
}

/// A Secret the operator writes for `owner`: `extra` labels and annotations, then its own (the
/// owner's UID and name, managed-by for the watch's selector, the expiration), the session in
/// `layout`, and a controller owner reference if `owned`.
fn operator_secret(
    owner: &SecretOwner<'_>,
    name: &str,
    extra: (BTreeMap<String, String>, BTreeMap<String, String>),
    session: &Credentials,
    layout: &Layout,
    owned: bool,
) -> Secret {
    let (mut labels, mut annotations) = extra;
    labels.insert(owner.uid_label.into(), owner.uid.into());
    labels.insert(MANAGED_BY_LABEL.into(), FIELD_MANAGER.into());
    annotations.insert(owner.name_annotation.into(), owner.name.into());
    annotations.insert(EXPIRATION_ANNOTATION.into(), session.expiration.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: owner.namespace.map(str::to_owned),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owned.then(|| vec![owner.owner_reference()]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(render_data(session, layout)),
        ..Default::default()
    }
}

/// How the Secret keeping a session for `spec.assumeRole` lays it out: the four variables only.
pub fn session_layout() -> Layout {
    Layout {
        formats: vec![OutputFormat::EnvVars],
        mount_path: DEFAULT_MOUNT_PATH.into(),
    }
}

/// Annotation on the Secret keeping a session: what it is for.
pub const PURPOSE_ANNOTATION: &str = "stssession.dev/purpose";

/// The Secret keeping the GetSessionToken session of a SessionToken with `spec.assumeRole`:
/// the operator's own (labelled [`SECRET_ROLE_LABEL`]`=session`, always owned by the
/// SessionToken, so garbage-collected with it whatever `retainOnDelete` says), not for
/// workloads, which get the role's credentials in the output Secret.
pub fn desired_session_secret(st: &SessionToken, name: &str, session: &Credentials) -> Secret {
    let labels = BTreeMap::from([(SECRET_ROLE_LABEL.into(), SESSION_SECRET_ROLE.into())]);
    let annotations = BTreeMap::from([(
        PURPOSE_ANNOTATION.into(),
        "the STS session the operator assumes spec.assumeRole with; not for workloads (they use the output Secret)".into(),
    )]);
    operator_secret(
        &SecretOwner::session(st),
        name,
        (labels, annotations),
        session,
        &session_layout(),
        true,
    )
}

/// The session a Secret kept for `spec.assumeRole` holds, if complete.
pub fn kept_session(secret: &Secret) -> Option<Credentials> {
    read_session(secret, &session_layout())
}

/// Whether the existing Secret already is what `desired` says (for the parts we manage), so
/// that nothing is written when nothing changed.
pub fn is_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>,
                    want: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let owner_ok = match &desired.metadata.owner_references {
        Some(want) => want.iter().all(|w| {
            existing
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| {
                    o.uid == w.uid
                        && o.controller == w.controller
                        && o.kind == w.kind
                        && o.name == w.name
                })
        }),
        None => !existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true)),
    };
    let data_ok = desired
        .data
        .iter()
        .flatten()
        .all(|(k, v)| existing.data.as_ref().and_then(|d| d.get(k)) == Some(v))
        && stale_keys(existing, desired).is_empty();
    data_ok
        && existing.type_ == desired.type_
        && contains(&existing.metadata.labels, &desired.metadata.labels)
        && contains(
            &existing.metadata.annotations,
            &desired.metadata.annotations,
        )
        && owner_ok
        && stale_labels(existing, desired).is_empty()
}

/// Labels and annotations the operator set earlier (via `spec.secret`) that the spec no longer
/// lists. Server-side apply removes them because the operator owns those fields, so this only
/// tells whether a write is needed.
fn stale_labels(existing: &Secret, desired: &Secret) -> Vec<String> {
    let managed: Vec<&str> = existing
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .flat_map(|f| {
            let meta = f.0.get("f:metadata");
            ["f:labels", "f:annotations"]
                .into_iter()
                .filter_map(move |k| meta.and_then(|m| m.get(k)).and_then(|v| v.as_object()))
                .flat_map(|o| o.keys().filter_map(|k| k.strip_prefix("f:")))
                .collect::<Vec<_>>()
        })
        .collect();
    let want = |k: &str| {
        desired
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(k))
            || desired
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(k))
    };
    managed
        .into_iter()
        .filter(|k| !want(k))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{OutputFormat, OutputSecretSpec, SessionTokenSpec};

    fn st(uid: &str) -> SessionToken {
        let spec: SessionTokenSpec = serde_json::from_value(
            serde_json::json!({"sourceCredentials": {"secretRef": {"name": "keys"}}}),
        )
        .unwrap();
        let mut st = SessionToken::new("app", spec);
        st.metadata.namespace = Some("team".into());
        st.metadata.uid = Some(uid.into());
        st
    }

    fn session() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE123456789".into(),
            secret_access_key: Sensitive::new("secret/with+chars".into()),
            session_token: Sensitive::new("FwoGZXIvYXdzE//token==".into()),
            expiration: "2026-11-23T12:00:00Z".parse().unwrap(),
        }
    }

    fn source(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("keys".into()),
                ..Default::default()
            },
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn output_data_has_every_key_and_a_parsable_credentials_file() {
        let data = render_data(&session(), &Layout::default());
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text(KEY_ACCESS_KEY_ID), "ASIAEXAMPLE123456789");
        assert_eq!(text(KEY_SECRET_ACCESS_KEY), "secret/with+chars");
        assert_eq!(text(KEY_SESSION_TOKEN), "FwoGZXIvYXdzE//token==");
        assert_eq!(text(KEY_EXPIRATION), "2026-11-23T12:00:00Z");
        assert_eq!(
            text(KEY_CREDENTIALS_FILE),
            "[default]\naws_access_key_id = ASIAEXAMPLE123456789\naws_secret_access_key = secret/with+chars\naws_session_token = FwoGZXIvYXdzE//token==\n"
        );
        assert_eq!(
            text(KEY_CONFIG_FILE),
            "[default]\ncredential_process = cat /var/run/secrets/stssession.dev/credential-process.json\n"
        );
        let doc: serde_json::Value = serde_json::from_str(&text(KEY_CREDENTIAL_PROCESS)).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE123456789",
                "SecretAccessKey": "secret/with+chars",
                "SessionToken": "FwoGZXIvYXdzE//token==",
                "Expiration": "2026-11-23T12:00:00Z",
            })
        );
        assert_eq!(data.len(), ALL_KEYS.len());
    }

    #[test]
    fn each_format_renders_its_own_keys_and_reads_back() {
        let custom = |formats: &[OutputFormat]| Layout {
            formats: formats.to_vec(),
            mount_path: "/etc/aws".into(),
        };
        for formats in [
            &[OutputFormat::EnvVars][..],
            &[OutputFormat::CredentialsFile],
            &[OutputFormat::CredentialProcess],
            &[OutputFormat::EnvVars, OutputFormat::CredentialProcess],
        ] {
            let layout = custom(formats);
            let mut me = st("u1");
            me.spec.secret = Some(OutputSecretSpec {
                formats: Some(formats.to_vec()),
                mount_path: Some("/etc/aws".into()),
                ..Default::default()
            });
            let secret = desired_secret(&me, "app", &session());
            let keys: Vec<&str> = secret
                .data
                .as_ref()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut want = layout.keys();
            want.sort();
            assert_eq!(keys, want, "{formats:?}");
            assert_eq!(
                read_session(&secret, &layout),
                Some(session()),
                "{formats:?}"
            );
            assert_eq!(held_session(&secret, &me), Some(session()), "{formats:?}");
            // every rendered key counts: any one changed, and the Secret no longer holds this
            // session (with env vars only, it may hold another one: the controller compares the
            // access key id and expiration with status)
            for key in layout.keys() {
                let mut tampered = secret.clone();
                tampered
                    .data
                    .as_mut()
                    .unwrap()
                    .insert(key.into(), ByteString(b"other".to_vec()));
                assert_ne!(
                    read_session(&tampered, &layout),
                    Some(session()),
                    "{formats:?} {key}"
                );
                if key != KEY_CONFIG_FILE {
                    // (a changed `config` holds no session: it is just written again)
                    assert_ne!(
                        held_session(&tampered, &me),
                        Some(session()),
                        "{formats:?} {key}"
                    );
                }
            }
        }
        let process = render_data(&session(), &custom(&[OutputFormat::CredentialProcess]));
        assert_eq!(
            String::from_utf8(process[KEY_CONFIG_FILE].0.clone()).unwrap(),
            "[default]\ncredential_process = cat /etc/aws/credential-process.json\n"
        );
    }

    #[test]
    fn a_secret_written_in_another_layout_still_holds_the_session() {
        // Written with every format, now asked for the credential_process files only at
        // another path: the session is kept (and the Secret rewritten), not lost.
        let old = desired_secret(&st("u1"), "app", &session());
        let mut me = st("u1");
        me.spec.secret = Some(OutputSecretSpec {
            formats: Some(vec![OutputFormat::CredentialProcess]),
            mount_path: Some("/aws".into()),
            ..Default::default()
        });
        let layout = Layout::of(&me);
        assert_eq!(read_session(&old, &layout), None);
        assert_eq!(held_session(&old, &me), Some(session()));
        let desired = desired_secret(&me, "app", &session());
        assert!(!is_up_to_date(&old, &desired));
        let mut stale = stale_keys(&old, &desired);
        stale.sort();
        assert_eq!(
            stale,
            [
                KEY_ACCESS_KEY_ID,
                KEY_EXPIRATION,
                KEY_SECRET_ACCESS_KEY,
                KEY_SESSION_TOKEN,
                KEY_CREDENTIALS_FILE
            ]
            .iter()
            .map(|k| k.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        // an inconsistent Secret holds nothing, in any layout
        let mut mixed = old.clone();
        mixed.data.as_mut().unwrap().insert(
            KEY_CREDENTIAL_PROCESS.into(),
            ByteString(
                credential_process_json(&Credentials {
                    access_key_id: "ASIAOTHER".into(),
                    ..session()
                })
                .into_bytes(),
            ),
        );
        assert_eq!(held_session(&mixed, &me), None);
        // the credentials file alone: the expiration comes from the annotation
        let mut file_only = st("u1");
        file_only.spec.secret = Some(OutputSecretSpec {
            formats: Some(vec![OutputFormat::CredentialsFile]),
            ..Default::default()
        });
        let secret = desired_secret(&file_only, "app", &session());
        assert_eq!(held_session(&secret, &file_only), Some(session()));
        let mut no_annotation = secret.clone();
        no_annotation.metadata.annotations = None;
        assert_eq!(held_session(&no_annotation, &file_only), None);
    }

    #[test]
    fn session_reads_back_and_tampering_is_detected() {
        let st = st("u1");
        let secret = desired_secret(&st, "app", &session());
        let layout = Layout::of(&st);
        assert_eq!(read_session(&secret, &layout), Some(session()));
        let mut tampered = secret.clone();
        tampered
            .data
            .as_mut()
            .unwrap()
            .insert(KEY_SESSION_TOKEN.into(), ByteString(b"other".to_vec()));
        assert_eq!(read_session(&tampered, &layout), None);
        assert_eq!(held_session(&tampered, &st), None);
        let mut partial = secret.clone();
        partial.data.as_mut().unwrap().remove(KEY_CREDENTIALS_FILE);
        assert_eq!(read_session(&partial, &layout), None);
        // ...but what is left is consistent: the session is kept and the key written again
        assert_eq!(held_session(&partial, &st), Some(session()));
        let mut half = secret.clone();
        half.data.as_mut().unwrap().remove(KEY_SESSION_TOKEN);
        assert_eq!(held_session(&half, &st), None);
    }

    #[test]
    fn ownership_is_decided_by_the_controller_uid() {
        let me = st("u1");
        assert_eq!(ownership(None, &me), Ownership::Absent);
        let mine = desired_secret(&me, "app", &session());
        assert_eq!(ownership(Some(&mine), &me), Ownership::Ours);
        let other = st("u2");
        assert!(matches!(
            ownership(Some(&mine), &other),
            Ownership::Foreign(_)
        ));
        let mut plain = mine.clone();
        plain.metadata.owner_references = None;
        plain.metadata.labels = None;
        assert!(matches!(
            ownership(Some(&plain), &me),
            Ownership::Foreign(_)
        ));
        // retained (no owner reference) but labelled with our UID: ours
        let mut retained = mine.clone();
        retained.metadata.owner_references = None;
        assert_eq!(ownership(Some(&retained), &me), Ownership::Ours);
        // a foreign controller wins over our label
        assert!(matches!(
            ownership(Some(&mine), &st("u3")),
            Ownership::Foreign(_)
        ));
    }

    #[test]
    fn retain_on_delete_drops_the_owner_reference() {
        let mut me = st("u1");
        me.spec.secret = Some(OutputSecretSpec {
            retain_on_delete: true,
            ..Default::default()
        });
        let s = desired_secret(&me, "app", &session());
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(s.metadata.labels.unwrap()[OWNER_UID_LABEL], "u1");
    }

    #[test]
    fn up_to_date_compares_what_we_manage() {
        let me = st("u1");
        let desired = desired_secret(&me, "app", &session());
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "kept".into());
        assert!(is_up_to_date(&existing, &desired));
        let mut with_labels = me.clone();
        with_labels.spec.secret = Some(OutputSecretSpec {
            labels: [("team".to_string(), "a".to_string())].into(),
            ..Default::default()
        });
        assert!(!is_up_to_date(
            &existing,
            &desired_secret(&with_labels, "app", &session())
        ));
        // keys someone else added are left alone; keys of a dropped format are not
        let mut extra = desired.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("NOTES".into(), ByteString(b"mine".to_vec()));
        assert!(is_up_to_date(&extra, &desired));
        let mut env_only = me.clone();
        env_only.spec.secret = Some(OutputSecretSpec {
            formats: Some(vec![OutputFormat::EnvVars]),
            ..Default::default()
        });
        assert!(!is_up_to_date(
            &desired,
            &desired_secret(&env_only, "app", &session())
        ));
        let mut changed = session();
        changed.access_key_id = "ASIAOTHER".into();
        assert!(!is_up_to_date(
            &existing,
            &desired_secret(&me, "app", &changed)
        ));
    }

    #[test]
    fn long_term_keys_are_read_and_session_keys_refused() {
        let r: SourceSecretRef =
            serde_json::from_value(serde_json::json!({"name": "keys"})).unwrap();
        let ok = read_long_term_keys(
            Some(&source(&[
                ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE\n"),
                ("AWS_SECRET_ACCESS_KEY", "wJalr"),
            ])),
            &r,
        )
        .unwrap();
        assert_eq!(ok.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            read_long_term_keys(None, &r).unwrap_err().reason(),
            "SourceCredentialsMissing"
        );
        let absent = read_long_term_keys(
            Some(&source(&[("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")])),
            &r,
        );
        assert_eq!(absent.unwrap_err().reason(), "SourceCredentialsMissing");
        let session_key = read_long_term_keys(
            Some(&source(&[
                ("AWS_ACCESS_KEY_ID", "ASIAIOSFODNN7EXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
            ])),
            &r,
        );
        assert_eq!(
            session_key.unwrap_err().reason(),
            "SourceCredentialsInvalid"
        );
        let with_token = read_long_term_keys(
            Some(&source(&[
                ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
                ("AWS_SESSION_TOKEN", "tok"),
            ])),
            &r,
        );
        assert_eq!(with_token.unwrap_err().reason(), "SourceCredentialsInvalid");
        let empty = read_long_term_keys(
            Some(&source(&[
                ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", " "),
            ])),
            &r,
        );
        assert_eq!(empty.unwrap_err().reason(), "SourceCredentialsInvalid");
        let mut binary = source(&[("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")]);
        binary
            .data
            .as_mut()
            .unwrap()
            .insert("AWS_SECRET_ACCESS_KEY".into(), ByteString(vec![0xff, 0xfe]));
        assert_eq!(
            read_long_term_keys(Some(&binary), &r).unwrap_err().reason(),
            "SourceCredentialsInvalid"
        );
    }

    #[test]
    fn problems_never_echo_the_secret_value() {
        let r: SourceSecretRef =
            serde_json::from_value(serde_json::json!({"name": "keys"})).unwrap();
        let err = read_long_term_keys(
            Some(&source(&[
                ("AWS_ACCESS_KEY_ID", "ASIACANARYKEY0000000"),
                ("AWS_SECRET_ACCESS_KEY", "CANARY-SECRET"),
            ])),
            &r,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("CANARY-SECRET"), "{err}");
    }
}
