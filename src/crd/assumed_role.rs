//! The `AssumedRole` custom resource: role credentials drawn from a SessionToken's session, so
//! that one approval (one MFA code) serves several roles for the session's whole lifetime.

use super::{
    AssumeRoleSpec, Condition, OutputFormat, OutputSecretSpec, RenewalSpec, RoleStatus,
    RolloutRestartTarget,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Label on an AssumedRole's output Secret: the AssumedRole's UID (as
/// `stssession.dev/session-token-uid` on a SessionToken's).
pub const ASSUMED_ROLE_UID_LABEL: &str = "stssession.dev/assumed-role-uid";
/// Prefix of the pod-template annotation naming the role credentials a restart target was
/// restarted for: `assumedrole.stssession.dev/<AssumedRole name>: <access key id>`.
pub const RESTARTED_FOR_ROLE_PREFIX: &str = "assumedrole.stssession.dev/";
/// Annotation on an AssumedRole's output Secret: the AssumedRole's name, for people and for the
/// Secret watch (a Secret kept with `retainOnDelete` has no owner reference to name it).
pub const ASSUMED_ROLE_ANNOTATION: &str = "stssession.dev/assumed-role";

/// An AssumedRole keeps the credentials of one IAM role in a Secret, assumed (AssumeRole) with
/// the session of a SessionToken in the same namespace and renewed for as long as that session
/// lasts: one approval of the session serves every AssumedRole drawing on it. Creating or
/// changing one needs the verb `use` on the SessionToken; the SessionToken's
/// `spec.allowedRoles` may restrict the roles.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stssession.dev",
    version = "v1alpha1",
    kind = "AssumedRole",
    namespaced,
    shortname = "ar",
    status = "AssumedRoleStatus",
    doc = "An AssumedRole keeps the credentials of one IAM role in a Secret, assumed (AssumeRole) with the session of a SessionToken in the same namespace (spec.sessionTokenRef) and renewed for as long as that session lasts, never outliving it: one approval of the session serves every AssumedRole drawing on it. Creating or changing one needs the verb `use` on that SessionToken (the chart's admission policy asks the authorizer); the SessionToken's spec.allowedRoles may restrict which roles its session is used for.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".spec.sessionTokenRef.name"}"#,
    printcolumn = r#"{"name":"Role","type":"string","priority":1,"jsonPath":".spec.roleArn"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiration"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleSpec {
    /// The SessionToken whose session the role is assumed with: in this namespace (there is
    /// deliberately no namespace field).
    pub session_token_ref: SessionTokenRef,

    /// The role: `roleArn`, `roleSessionName` (default `<namespace>.<name>` of this
    /// AssumedRole), `durationSeconds` (900 to 3600, never beyond the session's end),
    /// `externalId`, `tags`: as in a SessionToken's `spec.assumeRole`.
    #[serde(flatten)]
    pub role: AssumeRoleSpec,

    /// The Secret the role credentials are written to, in this namespace. Default name: the
    /// AssumedRole's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<OutputSecretSpec>,

    /// When to assume the role again, before its credentials expire. Default: 33 % of their
    /// lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalSpec>,

    /// Workloads in this namespace restarted after each new set of role credentials (as with a
    /// SessionToken's `spec.rolloutRestartTargets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
}

/// A SessionToken in the AssumedRole's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionTokenRef {
    /// Its name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Observed state, written by the operator only: the SessionToken's vocabulary (`Ready`,
/// `RoleAssumed`, expiration, renewal time, assumptions, failures).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: does the Secret hold valid role credentials now. `RoleAssumed`: how the last
    /// AssumeRole went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Secret holding the role credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the session the credentials were assumed with expires: they never outlive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_date_time")]
    pub session_expiration: Option<jiff::Timestamp>,
    /// The role credentials: `roleArn`, `assumedRoleArn`, `accessKeyId`, `assumedAt`,
    /// `expiration`, `renewalTime`, `sessionAccessKeyId`, `assumptions`, `lastFailure`,
    /// `failedAttempts`.
    #[serde(flatten)]
    pub role: RoleStatus,
}

impl AssumedRole {
    /// Name of the output Secret: `spec.secret.name`, else the AssumedRole's own name.
    pub fn output_secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The formats of the output Secret (sorted, without duplicates; default all).
    pub fn output_formats(&self) -> Vec<OutputFormat> {
        super::formats_of(self.spec.secret.as_ref())
    }

    /// Where pods mount the output Secret.
    pub fn output_mount_path(&self) -> String {
        super::mount_path_of(self.spec.secret.as_ref())
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_role_fields_sit_at_the_top_of_the_spec() {
        let ar: AssumedRoleSpec = serde_json::from_value(serde_json::json!({
            "sessionTokenRef": {"name": "mfa"},
            "roleArn": "arn:aws:iam::123456789012:role/deployer",
            "externalId": "x-1"
        }))
        .unwrap();
        assert_eq!(ar.role.role_arn, "arn:aws:iam::123456789012:role/deployer");
        assert_eq!(ar.role.duration_seconds, 3600);
        assert_eq!(ar.role.external_id.as_deref(), Some("x-1"));
        let crd = serde_json::to_value(AssumedRole::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for field in [
            "sessionTokenRef",
            "roleArn",
            "durationSeconds",
            "tags",
            "secret",
        ] {
            assert!(
                spec["properties"].get(field).is_some(),
                "no {field}: {spec}"
            );
        }
        let required = spec["required"].as_array().unwrap();
        assert!(
            required.contains(&"roleArn".into()) && required.contains(&"sessionTokenRef".into())
        );
        let reference = &spec["properties"]["sessionTokenRef"]["properties"];
        assert!(reference.get("namespace").is_none());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "ar");
    }
}
