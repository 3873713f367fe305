//! Workloads keep working across rotations: consumers of the Secret, end to end.
//!
//! - a Secret volume as the kubelet writes it (files behind an atomically swapped `..data`
//!   symlink, refreshed as the Secret changes), read by ONE long-running boto3 process through
//!   `credential_process` (and, as the control, one reading the `credentials` file, which SDKs
//!   read only at start), and by the Rust SDK's profile provider;
//! - restart targets: exactly one pod-template change per rotation, none while nothing rotates,
//!   and a missing target reported without holding up the rotation.

use super::common::*;
use super::{T, World, source_spec};
use anyhow::{Context as _, Result, bail, ensure};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::process::{ChildProcess, ScratchDir};
use testkit::sts_double::{CodePolicy, StsDouble};

// ---------------------------------------------------------------------------------------------
// A Secret volume, as the kubelet writes one.

/// Each version of a Secret's data, as the volume held it.
type Versions = Arc<Mutex<Vec<BTreeMap<String, Vec<u8>>>>>;

/// The files of a Secret volume, kept up to date from the API server the way the kubelet's
/// `AtomicWriter` does it: each version of the data goes into a new `..<timestamp>` directory,
/// the `..data` symlink is swapped to it atomically (a rename over it), and each key is a
/// symlink `<key> -> ..data/<key>` created once. A reader opening `<key>` sees one version or
/// the next, never a mix. The kubelet polls (about a minute); this polls every `period`.
struct SecretVolume {
    /// Versions written (one per resourceVersion whose data changed).
    updates: Versions,
    task: tokio::task::JoinHandle<()>,
}

impl SecretVolume {
    async fn start(secrets: Api<Secret>, name: &str, dir: &Path, period: Duration) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let updates: Versions = Arc::default();
        let (dir_c, name_c, updates_c) = (dir.to_path_buf(), name.to_string(), updates.clone());
        let task = tokio::spawn(async move {
            let mut last: Option<BTreeMap<String, Vec<u8>>> = None;
            loop {
                if let Ok(Some(secret)) = secrets.get_opt(&name_c).await {
                    let data: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    if last.as_ref() != Some(&data) {
                        if let Err(e) = write_atomically(&dir_c, &data) {
                            eprintln!("secret volume {}: {e:#}", dir_c.display());
                        } else {
                            updates_c.lock().unwrap().push(data.clone());
                            last = Some(data);
                        }
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
        let volume = SecretVolume { updates, task };
        eventually(T, "the volume's first version", || async {
            Ok((!volume.updates.lock().unwrap().is_empty()).then_some(()))
        })
        .await?;
        Ok(volume)
    }

    fn versions(&self) -> usize {
        self.updates.lock().unwrap().len()
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One update of a Secret volume, as the kubelet's AtomicWriter does it.
fn write_atomically(dir: &Path, data: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let now = Timestamp::now();
    let stamp = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    let version = dir.join(&stamp);
    std::fs::create_dir(&version)?;
    for (key, value) in data {
        let path = version.join(key);
        std::fs::write(&path, value)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    let data_link = dir.join("..data");
    let old = std::fs::read_link(&data_link).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data_link)?; // the atomic swap
    for key in data.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link)?;
        }
    }
    // keys gone from the Secret: their symlinks go
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !data.contains_key(&name) && entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// boto3.

fn python() -> PathBuf {
    match std::env::var_os("STS_TEST_VENV").filter(|v| !v.is_empty()) {
        Some(venv) => PathBuf::from(venv).join("bin/python"),
        None => PathBuf::from("python3"),
    }
}

/// One line of `tests/fixtures/boto3_consumer.py`.
#[derive(Debug, serde::Deserialize)]
struct Call {
    ok: bool,
    key: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn boto3_consumer(
    cp: &testkit::control_plane::ControlPlane,
    name: &str,
    endpoint: &str,
    seconds: u64,
    env: &[(&str, String)],
) -> Result<ChildProcess> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boto3_consumer.py");
    let mut builder = ChildProcess::builder(python())
        .name(name.to_string())
        .log_file(cp.dir().join(format!("{name}-{}.log", std::process::id())))
        .arg(&script)
        .args(["--endpoint", endpoint, "--seconds", &seconds.to_string()])
        .args(["--interval", "0.5"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONUNBUFFERED", "1");
    // Nothing but the files under test may provide credentials.
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ENDPOINT_URL",
    ] {
        builder = builder.env_remove(var);
    }
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.spawn()
}

fn calls_of(process: &ChildProcess) -> Vec<Call> {
    process
        .read_log()
        .lines()
        .filter(|l| l.starts_with("{\"ok\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Distinct keys in order of first use.
fn distinct_keys(calls: &[Call]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in calls.iter().filter_map(|c| c.key.clone()) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Session keys the operator wrote to the Secret, i.e. that the double issued by
/// GetSessionToken to the test user.
fn operator_sessions(sts: &StsDouble, user_key: &str) -> BTreeSet<String> {
    sts.issued_sessions()
        .into_iter()
        .filter(|s| s.action == "GetSessionToken" && s.user_access_key_id == user_key)
        .map(|s| s.access_key_id)
        .collect()
}

/// GetCallerIdentity calls the double answered, by signing key.
fn identity_calls_by_key(sts: &StsDouble) -> BTreeMap<String, (usize, usize)> {
    let mut by_key: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in sts
        .calls()
        .iter()
        .filter(|c| c.action == "GetCallerIdentity")
    {
        let e = by_key
            .entry(c.access_key_id.clone().unwrap_or_default())
            .or_default();
        if c.outcome.is_ok() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    by_key
}

/// Lifetime the double gives sessions in the consumer tests: far inside every SDK's refresh
/// window (boto3: 15 min), so each call is "near expiry" and credential_process is re-run.
const LIFETIME: Duration = Duration::from_secs(20);

async fn volume_world(
    prefix: &str,
    formats: serde_json::Value,
) -> Result<(World, ScratchDir, PathBuf)> {
    let world = World::start(prefix, Some(LIFETIME), CodePolicy::Totp).await?;
    let scratch = ScratchDir::new("secret-volume")?;
    // The mount path the SessionToken declares: the config file's credential_process points there.
    let mount = scratch.path().join("aws");
    world
        .ns
        .create_session(
            "app",
            source_spec(json!({"secret": {
                "mountPath": mount.to_str().context("UTF-8 path")?,
                "formats": formats,
            }})),
        )
        .await?;
    wait_condition(&world.ns, "app", "Ready", "True", "Issued", T).await?;
    Ok((world, scratch, mount))
}

#[tokio::test]
async fn boto3_picks_up_each_rotation_through_credential_process() -> Result<()> {
    let (world, _scratch, mount) =
        volume_world("boto3", json!(["CredentialProcess", "CredentialsFile"])).await?;
    let World {
        cp,
        ns,
        sts,
        user,
        op,
        ..
    } = &world;
    let volume =
        SecretVolume::start(ns.secrets(), "app", &mount, Duration::from_millis(250)).await?;
    let config = std::fs::read_to_string(mount.join("config"))?;
    assert_eq!(
        config,
        format!(
            "[default]\ncredential_process = cat {}/credential-process.json\n",
            mount.display()
        )
    );
    assert!(
        std::fs::symlink_metadata(mount.join("config"))?
            .file_type()
            .is_symlink()
    );
    // Only the formats asked for.
    assert!(!mount.join("AWS_ACCESS_KEY_ID").exists());

    // ONE process each, for ~2.5 lifetimes. The control reads the `credentials` file, which
    // SDKs read once: it must keep its first session and then fail with ExpiredToken.
    let seconds = 50;
    let via_process = boto3_consumer(
        cp,
        "boto3-credential-process",
        &sts.endpoint(),
        seconds,
        &[
            (
                "AWS_CONFIG_FILE",
                mount.join("config").display().to_string(),
            ),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ],
    )?;
    let via_file = boto3_consumer(
        cp,
        "boto3-credentials-file",
        &sts.endpoint(),
        seconds,
        &[
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                mount.join("credentials").display().to_string(),
            ),
        ],
    )?;
    for p in [&via_process, &via_file] {
        let status = p
            .wait_timeout(Duration::from_secs(seconds + 40))
            .await?
            .with_context(|| format!("{} did not finish:\n{}", p.name(), p.log_tail(20)))?;
        ensure!(status.success(), "{} failed:\n{}", p.name(), p.log_tail(30));
    }

    let issued = operator_sessions(sts, &user.access_key_id);
    let calls = calls_of(&via_process);
    let keys = distinct_keys(&calls);
    let failures: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
    let log = || via_process.log_tail(15);
    ensure!(calls.len() >= 60, "only {} calls:\n{}", calls.len(), log());
    ensure!(
        failures.is_empty(),
        "the credential_process consumer failed calls: {failures:?}\n{}",
        log()
    );
    ensure!(
        keys.len() >= 2,
        "one boto3 client should have signed with several rotated sessions, saw {keys:?} ({} sessions issued, {} volume versions)\n{}",
        issued.len(),
        volume.versions(),
        log()
    );
    for k in &keys {
        ensure!(
            issued.contains(k),
            "{k} was not a session the operator minted ({issued:?})"
        );
    }
    // The control: one session only, then refused once it expired.
    let control = calls_of(&via_file);
    let control_keys = distinct_keys(&control);
    ensure!(
        control_keys.len() == 1,
        "credentials-file consumer keys: {control_keys:?}"
    );
    // ...as the double saw it: GetCallerIdentity signed with each of those keys and answered
    // (the only refusals are the control's, with the first session's key).
    let seen = identity_calls_by_key(sts);
    for k in &keys {
        let count = |calls: &[Call], ok: bool| {
            calls
                .iter()
                .filter(|c| c.key.as_ref() == Some(k) && c.ok == ok)
                .count()
        };
        let want = (
            count(&calls, true) + count(&control, true),
            count(&control, false),
        );
        let got = seen.get(k).copied().unwrap_or_default();
        ensure!(
            got == want,
            "double: {k}: (ok, failed) {got:?}, consumers say {want:?}"
        );
    }
    ensure!(
        control.iter().any(|c| c
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ExpiredToken"))),
        "the credentials-file consumer should end with expired credentials:\n{}",
        via_file.log_tail(10)
    );
    assert!(op.process.is_running());
    Ok(())
}

#[tokio::test]
#[allow(deprecated)] // ProfileFiles/ProfileFileKind: aws-config's names for aws-runtime's types
async fn rust_sdk_profile_provider_picks_up_each_rotation() -> Result<()> {
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
    use aws_config::provider_config::ProviderConfig;

    let (world, _scratch, mount) = volume_world("rust-sdk", json!(["CredentialProcess"])).await?;
    let World { ns, sts, user, .. } = &world;
    let _volume =
        SecretVolume::start(ns.secrets(), "app", &mount, Duration::from_millis(250)).await?;

    // The SDK's own profile provider and identity cache, as an application would get them with
    // AWS_CONFIG_FILE=<mount>/config (given explicitly: this process's env is shared).
    let files = ProfileFiles::builder()
        .with_file(ProfileFileKind::Config, mount.join("config"))
        .build();
    let provider = ProfileFileCredentialsProvider::builder()
        // (an HTTP client only because the builder also prepares its IMDS source; unused here)
        .configure(&ProviderConfig::without_region().with_http_client(http_client()))
        .profile_files(files)
        .profile_name("default")
        .build();
    let client = aws_sdk_sts::Client::from_conf(
        sts.sdk_config_builder()
            .credentials_provider(provider)
            .build(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
    let (mut ok, mut failed) = (0, Vec::new());
    while tokio::time::Instant::now() < deadline {
        match client.get_caller_identity().send().await {
            Ok(_) => ok += 1,
            Err(e) => failed.push(format!("{}", aws_sdk_sts::error::DisplayErrorContext(e))),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let issued = operator_sessions(sts, &user.access_key_id);
    let seen = identity_calls_by_key(sts);
    let used: Vec<&String> = seen.keys().filter(|k| issued.contains(*k)).collect();
    ensure!(failed.is_empty(), "failed calls: {failed:?}");
    ensure!(ok >= 60, "only {ok} calls");
    ensure!(
        used.len() >= 2,
        "one Rust SDK client should have signed with several rotated sessions: {seen:?} (issued {issued:?})"
    );
    ensure!(
        seen.keys().all(|k| issued.contains(k)),
        "signed with keys the operator did not mint: {seen:?}"
    );
    Ok(())
}

fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

// ---------------------------------------------------------------------------------------------
// Restart targets.

fn apps(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", kind), plural)
}

pub(super) async fn create_workload(ns: &Ns, kind: &str, plural: &str, name: &str) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &apps(kind, plural));
    let mut spec = json!({
        "replicas": 1,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{
                "name": "app", "image": "registry.example/app:1",
                "envFrom": [{"secretRef": {"name": "app"}}],
            }]},
        },
    });
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec,
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

pub(super) async fn template_annotation(
    ns: &Ns,
    kind: &str,
    plural: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &apps(kind, plural));
    let obj = api.get(name).await?;
    Ok(obj
        .data
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

#[tokio::test]
async fn restart_targets_restart_once_per_rotation_and_never_block_it() -> Result<()> {
    let started = Timestamp::now();
    // 8 s sessions: a rotation every ~5 s.
    let World {
        cp,
        ns,
        sts,
        op: _op,
        ..
    } = World::start("restart", Some(Duration::from_secs(8)), CodePolicy::Totp).await?;
    create_workload(&ns, "Deployment", "deployments", "web").await?;
    ns.create_session(
        "app",
        source_spec(json!({"rolloutRestartTargets": [
            {"kind": "Deployment", "name": "web"},
            {"kind": "StatefulSet", "name": "db"},
        ]})),
    )
    .await?;
    let key = "sessiontoken.stssession.dev/app";

    // The missing StatefulSet: a clear condition, and the Secret rotates regardless.
    let st = wait_condition(&ns, "app", "RolloutRestart", "False", "TargetNotFound", T).await?;
    let message = condition(&st, "RolloutRestart").unwrap().message;
    assert!(message.contains("StatefulSet db not found"), "{message}");
    let rotated = eventually(T, "three rotations despite the missing target", || async {
        let st = ns.session("app").await?;
        Ok((st.status.as_ref().map_or(0, |s| s.rotations) >= 3).then_some(st))
    })
    .await?;
    assert_eq!(cond(&rotated, "Ready"), ("True".into(), "Issued".into()));
    // ...and the Deployment follows the sessions.
    eventually(T, "web restarted for the current session", || async {
        let current = ns.session("app").await?.status.unwrap().access_key_id;
        let annotated = template_annotation(&ns, "Deployment", "deployments", "web", key).await?;
        Ok((annotated.is_some() && annotated == current).then_some(()))
    })
    .await?;

    // The StatefulSet appears: restarted at the next rotation, and the condition clears.
    create_workload(&ns, "StatefulSet", "statefulsets", "db").await?;
    wait_condition(&ns, "app", "RolloutRestart", "True", "TargetsRestarted", T).await?;
    eventually(T, "db restarted", || async {
        Ok(
            template_annotation(&ns, "StatefulSet", "statefulsets", "db", key)
                .await?
                .map(|_| ()),
        )
    })
    .await?;

    // Rotations stop: the next session lasts an hour.
    sts.set_returned_lifetime(None);
    eventually(T, "a long session", || async {
        let st = ns.session("app").await?;
        let exp = st.status.and_then(|s| s.expiration);
        Ok(exp
            .filter(|e| *e > Timestamp::now() + SignedDuration::from_mins(30))
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // the last restart's patch and events land

    // Exactly one pod-template change of web per session, counted in the audit log.
    let patches_of = |name: &str, since: Timestamp| -> Result<usize> {
        Ok(cp
            .writes_by(OPERATOR_USER, since)?
            .into_iter()
            .filter(|e| {
                e.namespace() == ns.name
                    && e.api_group() == "apps"
                    && e.name() == name
                    && e.code() == Some(200)
            })
            .count())
    };
    let st = ns.session("app").await?;
    let status = st.status.clone().unwrap();
    let web_patches = patches_of("web", started)?;
    assert_eq!(
        web_patches as i64, status.rotations,
        "web: {web_patches} restarts for {} sessions",
        status.rotations
    );
    assert_eq!(
        template_annotation(&ns, "Deployment", "deployments", "web", key).await?,
        status.access_key_id
    );
    assert!(patches_of("db", started)? >= 1);
    // (kube's event recorder folds repeats into one Event with a series count)
    let triggered: i64 = ns
        .events()
        .await?
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutRestartTriggered"))
        .map(|e| e.series.as_ref().map_or(1, |s| i64::from(s.count)))
        .sum();
    assert!(
        triggered >= status.rotations,
        "{triggered} RolloutRestartTriggered events for {} rotations",
        status.rotations
    );

    // Idle: nothing rotates, so nothing restarts, even when the SessionToken is reconciled
    // again (a label change rewrites the Secret with the same session).
    let idle_since = Timestamp::now();
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"secret": {"labels": {"touched": "yes"}}}})),
        )
        .await?;
    eventually(T, "the relabelled Secret", || async {
        let s = ns.secrets().get("app").await?;
        Ok(s.metadata
            .labels
            .unwrap_or_default()
            .contains_key("touched")
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let idle_writes: Vec<String> = cp
        .writes_by(OPERATOR_USER, idle_since)?
        .into_iter()
        .filter(|e| e.namespace() == ns.name && e.api_group() == "apps")
        .map(|e| format!("{} {}/{}", e.verb, e.resource(), e.name()))
        .collect();
    assert!(
        idle_writes.is_empty(),
        "restarts without a rotation: {idle_writes:?}"
    );
    assert_eq!(
        ns.session("app").await?.status.unwrap().rotations,
        status.rotations
    );
    Ok(())
}

#[tokio::test]
async fn changing_formats_keeps_the_session_and_warns_about_short_windows() -> Result<()> {
    // An MFA session: losing it would need a person, so a format change must keep it.
    let World {
        ns,
        sts,
        user,
        op: _op,
        ..
    } = World::start("formats", None, CodePolicy::AcceptAny).await?;
    ns.create_session(
        "app",
        source_spec(json!({"mfa": {"serialNumber": user.serial_number().unwrap()}})),
    )
    .await?;
    ns.approve("app", "123456", "alice").await?;
    let st = wait_condition(&ns, "app", "Ready", "True", "Issued", T).await?;
    let session = st.status.clone().unwrap().access_key_id.unwrap();
    let data = ns.secret_data("app").await?.unwrap();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SESSION_EXPIRATION",
            "credentials",
            "config",
            "credential-process.json",
        ])
    );
    let doc: serde_json::Value = serde_json::from_str(&data["credential-process.json"])?;
    assert_eq!(doc["Version"], 1);
    assert_eq!(doc["AccessKeyId"], session.as_str());
    assert_eq!(doc["SessionToken"], data["AWS_SESSION_TOKEN"].as_str());
    assert_eq!(doc["Expiration"], data["AWS_SESSION_EXPIRATION"].as_str());
    assert_eq!(
        data["config"],
        "[default]\ncredential_process = cat /var/run/secrets/stssession.dev/credential-process.json\n"
    );
    // durationSeconds 3600 at the default 33 %: renewed 19m48s before expiry, under 20 min.
    let (status, reason) = cond(&st, "ConsumerRefresh");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RenewWindowTooShort")
    );
    assert!(
        ns.event_reasons()
            .await?
            .iter()
            .any(|r| r == "RenewWindowTooShort")
    );

    // Only the credential_process files, at another path, renewed 25 min before: the same
    // session rewritten (no STS call, no code), the other keys gone, the warning cleared.
    let calls = sts.call_count();
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {
                "secret": {"formats": ["CredentialProcess"], "mountPath": "/etc/aws"},
                "renewal": {"renewBefore": "25m"},
            }})),
        )
        .await?;
    let data = eventually(T, "the Secret in the new layout", || async {
        Ok(ns.secret_data("app").await?.filter(|d| d.len() == 2))
    })
    .await
    .with_context(|| "keys of dropped formats were not removed")?;
    assert_eq!(
        data["config"],
        "[default]\ncredential_process = cat /etc/aws/credential-process.json\n"
    );
    let doc: serde_json::Value = serde_json::from_str(&data["credential-process.json"])?;
    assert_eq!(doc["AccessKeyId"], session.as_str());
    let st = wait_condition(
        &ns,
        "app",
        "ConsumerRefresh",
        "True",
        "RenewWindowSufficient",
        T,
    )
    .await?;
    assert_eq!(cond(&st, "Ready"), ("True".into(), "Issued".into()));
    assert_eq!(
        st.status.unwrap().access_key_id.as_deref(),
        Some(session.as_str())
    );
    assert_eq!(sts.call_count(), calls, "a format change must not mint");

    // Env vars only: no credential_process, so no ConsumerRefresh condition at all.
    ns.sessions()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"secret": {"formats": ["EnvVars"]}}})),
        )
        .await?;
    eventually(T, "env vars only", || async {
        let d = ns.secret_data("app").await?.unwrap_or_default();
        let st = ns.session("app").await?;
        Ok((d.len() == 4
            && d.get("AWS_ACCESS_KEY_ID") == Some(&session)
            && condition(&st, "ConsumerRefresh").is_none())
        .then_some(()))
    })
    .await?;

    // Bad values are refused at apply.
    for bad in [
        json!({"secret": {"formats": []}}),
        json!({"secret": {"formats": ["Env"]}}),
        json!({"secret": {"formats": ["EnvVars", "EnvVars"]}}),
        json!({"secret": {"mountPath": "relative/path"}}),
        json!({"secret": {"mountPath": "/with space"}}),
        json!({"rolloutRestartTargets": [{"kind": "Pod", "name": "x"}]}),
        json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "Bad_Name"}]}),
        json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "a"}]}),
    ] {
        let result = ns.create_session("bad", source_spec(bad.clone())).await;
        if result.is_ok() {
            bail!("accepted {bad}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn examples_are_accepted_by_the_api_server() -> Result<()> {
    use sts_session_operator::crd::SessionToken;
    let cp = control_plane().await;
    let ns = Ns::new(cp, "examples").await?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = BTreeSet::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).with_context(|| file.display().to_string())?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let ar = match kind.as_str() {
                "Secret" => ApiResource::erase::<Secret>(&()),
                "SessionToken" => {
                    // ...and the operator's own types read it
                    let _: SessionToken = serde_json::from_value(value.clone())
                        .with_context(|| format!("{}: SessionToken", file.display()))?;
                    ApiResource::erase::<SessionToken>(&())
                }
                "AssumedRole" => {
                    let _: sts_session_operator::crd::AssumedRole =
                        serde_json::from_value(value.clone())
                            .with_context(|| format!("{}: AssumedRole", file.display()))?;
                    ApiResource::erase::<sts_session_operator::crd::AssumedRole>(&())
                }
                "Deployment" => apps("Deployment", "deployments"),
                other => bail!("{}: unexpected kind {other}", file.display()),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
            let obj: DynamicObject = serde_json::from_value(value)?;
            // Server-side dry run: schema, CEL rules, defaults; nothing stored.
            let pp = PostParams {
                dry_run: true,
                ..Default::default()
            };
            api.create(&pp, &obj)
                .await
                .with_context(|| format!("{}: {kind} {:?}", file.display(), obj.metadata.name))?;
            seen.insert(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "assume-role.yaml".to_string(),
            "assumed-roles.yaml".into(),
            "credential-process-pod.yaml".into(),
            "mfa.yaml".into(),
            "non-mfa.yaml".into(),
            "restart-targets.yaml".into(),
        ])
    );
    Ok(())
}
