//! The operator on a real node (tests/node/node.rs: containerd 2.x + runc + kubelet, registered
//! to a private control plane with a scheduler and the workload controllers), installed the way
//! the README's Install section says (`helm install` of the chart, with the image built from the
//! Dockerfile by hack/build-image.sh), and its output consumed the ways "Workloads across
//! rotations" describes:
//!
//! - the chart's pod becomes Ready (its probes, run by the kubelet), takes the Lease and serves
//!   SessionTokens; `kubectl rollout restart` of it in the middle of an approval loses nothing;
//! - a pod mounting the output Secret as a volume, with AWS_CONFIG_FILE on its `config` key
//!   (`credential_process`), signs STS calls with three successive sessions without a restart
//!   (seen at the STS double); a pod with `subPath` mounts keeps the first session and fails
//!   once it expires, as documented;
//! - a Deployment in `rolloutRestartTargets` gets new pods after each rotation, started with
//!   the new keys from `envFrom`.
//!
//! Every pod uses the host's network (see node.rs), the chart's through a helm post-renderer that
//! adds `hostNetwork: true` and, since two pods of it cannot both listen on the metrics port of
//! one host, a rolling update that stops the old pod before starting the new one.

#[path = "../support/images.rs"]
mod images;
mod node;

use anyhow::{Context as _, Result, bail, ensure};
use images::{Images, helm, kubectl, run_ok};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use node::Node;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::control_plane::{ControlPlane, StartOptions};
use testkit::process::{ScratchDir, free_port};
use testkit::sts_double::{StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(120);
/// Sessions the double returns: renewal (33 % before expiry) ~50 s after each issue, ~25 s
/// before it ends: room for the kubelet (syncFrequency 10 s) to update the mounted Secret.
const LIFETIME: Duration = Duration::from_secs(75);

fn sessiontokens(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "stssession.dev".into(),
        version: "v1alpha1".into(),
        api_version: "stssession.dev/v1alpha1".into(),
        kind: "SessionToken".into(),
        plural: "sessiontokens".into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn condition(st: &DynamicObject, type_: &str) -> (String, String) {
    let v = serde_json::to_value(st).unwrap_or_default();
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn secret_key(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| {
            d.get("AWS_ACCESS_KEY_ID")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        }))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// JSON lines a consumer printed (its container log, CRI format: `TIME STREAM TAG LINE`).
fn consumer_lines(log: Option<&Path>) -> Vec<Value> {
    let Some(text) = log.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Pods' phases and conditions, and the node's taints, for a failure message.
async fn describe(admin: &Client) -> String {
    let mut out = String::new();
    if let Ok(list) = Api::<Pod>::all(admin.clone())
        .list(&ListParams::default())
        .await
    {
        for p in list.items {
            let status = p.status.unwrap_or_default();
            out.push_str(&format!(
                "pod {}/{}: {:?} {}\n",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
                status.phase,
                serde_json::to_string(&status.conditions).unwrap_or_default(),
            ));
            for c in status.container_statuses.unwrap_or_default() {
                out.push_str(&format!(
                    "  {}: {}\n",
                    c.name,
                    serde_json::to_string(&c.state).unwrap_or_default()
                ));
            }
        }
    }
    if let Ok(n) = Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .get(node::NODE_NAME)
        .await
    {
        out.push_str(&format!(
            "node taints: {}\n",
            serde_json::to_string(&n.spec.and_then(|s| s.taints)).unwrap_or_default()
        ));
    }
    out
}

/// The helm post-renderer: host network for the chart's pod, and a rolling update that stops
/// the old pod first (one host, one metrics port). Nothing else of the chart changes.
const POST_RENDERER: &str = r#"#!/bin/sh
# Reads the chart's manifests on stdin, writes them with the Deployment's pod on the host network.
exec awk '
  /^kind: Deployment$/ { deploy = 1 }
  /^---/ { deploy = 0 }
  { print }
  deploy && /^  revisionHistoryLimit:/ {
    print "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}"
  }
  deploy && /^      serviceAccountName:/ { print "      hostNetwork: true" }
'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_and_consumers_on_a_real_node() -> Result<()> {
    let images = Images::get()?;
    let root = images::root();
    let cp = ControlPlane::start_with(StartOptions {
        crds: vec![root.join("crds")],
        // ServiceAccount admission on (testkit turns it off: it runs no kubelet), so that pods
        // get the projected ServiceAccount token volume a real cluster gives them.
        apiserver_args: vec!["--disable-admission-plugins=".into()],
    })
    .await?;
    let admin = cp.admin_client().await?;
    let node = Node::start(&cp, &images).await?;
    println!("node {} Ready", node::NODE_NAME);
    let result = scenario(&cp, &admin, &node, &images).await;
    if let Err(e) = &result {
        eprintln!(
            "node test failed: {e:#}\n{}{}",
            describe(&admin).await,
            node.logs()
        );
    }
    drop(node);
    result
}

async fn scenario(cp: &ControlPlane, admin: &Client, node: &Node, images: &Images) -> Result<()> {
    let root = images::root();
    let scratch = ScratchDir::new("node-test")?;
    let kubeconfig = cp.admin_kubeconfig();
    let sts = StsDouble::start(StsDoubleConfig {
        returned_lifetime: Some(LIFETIME),
        ..Default::default()
    })?;
    let user = sts.default_user();
    let api_port: u16 = cp
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("API server port")?;

    // -- helm install, as README "Install" says -------------------------------------------------
    let operator_image = images.operator()?;
    let (repo, tag) = Images::split(operator_image);
    let metrics_port = free_port()?;
    let post = scratch.path().join("host-network.sh");
    std::fs::write(&post, POST_RENDERER)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&post, std::fs::Permissions::from_mode(0o755))?;
    }
    let release_ns = "sts-session-operator";
    let release = "sts-session-operator";
    let fullname = "sts-session-operator";
    run_ok(
        Command::new(helm()?)
            .args(["install", release])
            .arg(root.join("charts/sts-session-operator"))
            .args(["--namespace", release_ns, "--create-namespace"])
            .args(["--set", &format!("image.repository={repo}")])
            .args(["--set", &format!("image.tag={tag}")])
            .args(["--set", "replicas=1"])
            .args(["--set", &format!("metrics.port={metrics_port}")])
            .args(["--set", &format!("stsEndpoint={}", sts.endpoint())])
            .args(["--set", "allowedStsEndpoints={http://127.0.0.1:*}"])
            // The API server as the host network sees it (the kubelet's own variables would name
            // the `kubernetes` Service, which needs kube-proxy).
            .args(["--set", "extraEnv[0].name=KUBERNETES_SERVICE_HOST"])
            .args(["--set-string", "extraEnv[0].value=127.0.0.1"])
            .args(["--set", "extraEnv[1].name=KUBERNETES_SERVICE_PORT"])
            .args(["--set-string", &format!("extraEnv[1].value={api_port}")])
            .arg("--post-renderer")
            .arg(&post)
            .args(["--wait", "--timeout", "3m"])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )
    .with_context(|| node.logs())?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), release_ns);
    let operator_pod = |pods: Vec<Pod>| -> Option<Pod> {
        pods.into_iter()
            .find(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
    };
    let selector = format!("app.kubernetes.io/instance={release}");
    let op = eventually(T, "the operator pod Ready", || async {
        Ok(operator_pod(
            pods.list(&ListParams::default().labels(&selector))
                .await?
                .items,
        ))
    })
    .await?;
    let op_name = op.metadata.name.clone().unwrap_or_default();
    let spec = op.spec.clone().context("pod spec")?;
    ensure!(
        spec.node_name.as_deref() == Some(node::NODE_NAME),
        "scheduled to {:?}",
        spec.node_name
    );
    let c = &spec.containers[0];
    let sc = c.security_context.clone().context("securityContext")?;
    ensure!(sc.read_only_root_filesystem == Some(true) && sc.run_as_user == Some(65532));
    println!("operator pod {op_name} Ready on {}", node::NODE_NAME);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), release_ns);
    let holder = || async {
        Ok::<_, anyhow::Error>(
            leases
                .get_opt(fullname)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default(),
        )
    };
    eventually(T, "the Lease held by the operator pod", || async {
        Ok((holder().await? == op_name).then_some(()))
    })
    .await?;

    // -- a workload namespace: keys, a SessionToken, consumers ------------------------------------
    let ns = "team-a";
    run_ok(
        Command::new(kubectl()?)
            .args(["create", "namespace", ns])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )?;
    // The namespace's admins let the operator restart their workloads (opt-in per namespace,
    // docs/rbac-and-approvals.md), as the docs say.
    run_ok(
        Command::new(kubectl()?)
            .args([
                "create",
                "rolebinding",
                "sts-session-operator-restarts",
                "-n",
                ns,
            ])
            .arg(format!("--clusterrole={fullname}-restart-targets"))
            .arg(format!("--serviceaccount={release_ns}:{fullname}"))
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )?;
    eventually(T, "the default ServiceAccount", || async {
        Ok(
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), ns)
                .get_opt("default")
                .await?
                .map(|_| ()),
        )
    })
    .await?;
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "iam-keys"},
        "stringData": {"AWS_ACCESS_KEY_ID": user.access_key_id, "AWS_SECRET_ACCESS_KEY": user.secret_access_key},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &source)
        .await?;
    let script = std::fs::read_to_string(root.join("tests/fixtures/boto3_consumer.py"))?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "consumer"}, "data": {"boto3_consumer.py": script},
    }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let consumer_image = images.consumer()?;

    // The restart target exists before the SessionToken, so each rotation restarts it.
    let legacy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "legacy-app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "legacy-app"}},
            "template": {
                "metadata": {"labels": {"app": "legacy-app"}},
                "spec": {
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app", "image": consumer_image, "imagePullPolicy": "Never",
                        // Prints the public key id it started with (never the secret parts).
                        "command": ["sh", "-c", "echo \"started with $AWS_ACCESS_KEY_ID\"; exec sleep 3600"],
                        "envFrom": [{"secretRef": {"name": "app-aws", "optional": true}}],
                    }],
                },
            },
        },
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    deployments.create(&PostParams::default(), &legacy).await?;

    let st: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": "app"},
        "spec": {
            "durationSeconds": 3600,
            "sourceCredentials": {"secretRef": {"name": "iam-keys"}},
            "secret": {"name": "app-aws"},
            "rolloutRestartTargets": [{"kind": "Deployment", "name": "legacy-app"}],
        },
    }))?;
    let sts_api = sessiontokens(admin, ns);
    sts_api.create(&PostParams::default(), &st).await?;
    let first = eventually(T, "the first session in app-aws", || async {
        secret_key(admin, ns, "app-aws").await
    })
    .await?;
    println!("session 1: {first}");

    // Consumers: the config file (credential_process) through a volume, and through subPath.
    let consumer = |name: &str, sub_path: bool| -> Result<Pod> {
        let mount = "/var/run/secrets/stssession.dev";
        let mounts = if sub_path {
            json!([
                {"name": "aws", "mountPath": format!("{mount}/config"), "subPath": "config"},
                {"name": "aws", "mountPath": format!("{mount}/credential-process.json"), "subPath": "credential-process.json"},
                {"name": "script", "mountPath": "/script"},
            ])
        } else {
            json!([{"name": "aws", "mountPath": mount}, {"name": "script", "mountPath": "/script"}])
        };
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "hostNetwork": true,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "consumer", "image": consumer_image, "imagePullPolicy": "Never",
                    "command": ["python3", "-u", "/script/boto3_consumer.py",
                                "--endpoint", sts.endpoint(), "--seconds", "900", "--interval", "1"],
                    "env": [
                        {"name": "AWS_CONFIG_FILE", "value": format!("{mount}/config")},
                        {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/nonexistent"},
                        {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
                    ],
                    "volumeMounts": mounts,
                }],
                "volumes": [
                    {"name": "aws", "secret": {"secretName": "app-aws"}},
                    {"name": "script", "configMap": {"name": "consumer"}},
                ],
            },
        }))?)
    };
    let ns_pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    ns_pods
        .create(&PostParams::default(), &consumer("consumer", false)?)
        .await?;
    ns_pods
        .create(&PostParams::default(), &consumer("consumer-subpath", true)?)
        .await?;

    // -- three successive sessions at the double, from one consumer process ---------------------
    let signed_keys = |sts: &StsDouble| -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for c in sts.calls() {
            if c.action != "GetCallerIdentity" || !c.outcome.is_ok() {
                continue;
            }
            if let Some(k) = c.access_key_id.filter(|k| !keys.contains(k)) {
                keys.push(k);
            }
        }
        keys
    };
    let consumer_log = || node.container_log(ns, "consumer", "consumer");
    let keys = eventually(
        Duration::from_secs(300),
        "GetCallerIdentity signed with 3 sessions",
        || async {
            let keys = signed_keys(&sts);
            let pod = ns_pods.get("consumer").await?;
            ensure!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"),
                "the consumer pod failed"
            );
            Ok((keys.len() >= 3).then_some(keys))
        },
    )
    .await
    .with_context(|| {
        format!(
            "signed so far: {:?}; consumer output tail: {:?}",
            signed_keys(&sts),
            consumer_lines(consumer_log().as_deref())
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        )
    })?;
    for k in &keys {
        let s = sts
            .issued_session(k)
            .with_context(|| format!("{k} is not a session the double issued"))?;
        ensure!(s.action == "GetSessionToken", "{s:?}");
    }
    let pod = ns_pods.get("consumer").await?;
    ensure!(restarts(&pod) == 0, "the consumer restarted");
    let lines = consumer_lines(consumer_log().as_deref());
    let starts = lines.iter().filter(|l| l.get("pid").is_some()).count();
    ensure!(starts == 1, "the consumer process started {starts} times");
    let failed: Vec<&Value> = lines.iter().filter(|l| l["ok"] == false).collect();
    ensure!(failed.is_empty(), "the consumer saw failures: {failed:?}");
    let seen: Vec<String> = lines
        .iter()
        .filter(|l| l["ok"] == true)
        .filter_map(|l| l["key"].as_str().map(String::from))
        .fold(Vec::new(), |mut v, k| {
            if !v.contains(&k) {
                v.push(k)
            }
            v
        });
    ensure!(
        seen.len() >= 3 && seen[..3] == keys[..3],
        "consumer saw {seen:?}, the double {keys:?}"
    );
    println!(
        "consumer signed with {} sessions, one process, no restart: {keys:?}",
        keys.len()
    );

    // -- the subPath consumer: stuck on its first session, fails once it expires -----------------
    let sub_lines = consumer_lines(
        node.container_log(ns, "consumer-subpath", "consumer")
            .as_deref(),
    );
    let sub_keys: BTreeSet<String> = sub_lines
        .iter()
        .filter(|l| l["ok"] == true)
        .filter_map(|l| l["key"].as_str().map(String::from))
        .collect();
    ensure!(
        sub_keys.len() == 1,
        "the subPath consumer signed with {sub_keys:?}"
    );
    let sub_errors: Vec<String> = sub_lines
        .iter()
        .filter(|l| l["ok"] == false)
        .filter_map(|l| l["error"].as_str().map(String::from))
        .collect();
    ensure!(
        !sub_errors.is_empty()
            && sub_errors
                .iter()
                .all(|e| e.contains("expired") || e.contains("Expired")),
        "the subPath consumer should fail with expired credentials: {:?}",
        sub_errors.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "subPath consumer: one session only, then: {}",
        sub_errors[0]
    );

    // -- restart targets: a new pod per rotation, started with the new keys ----------------------
    let app = sts_api.get("app").await?;
    let rotations = serde_json::to_value(&app)?
        .pointer("/status/rotations")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let legacy_pods = eventually(
        T,
        "legacy-app's pod started with the current key",
        || async {
            let current = secret_key(admin, ns, "app-aws").await?.context("app-aws")?;
            let list = ns_pods
                .list(&ListParams::default().labels("app=legacy-app"))
                .await?
                .items;
            for p in &list {
                let name = p.metadata.name.clone().unwrap_or_default();
                if p.metadata.deletion_timestamp.is_some() || !pod_ready(p) {
                    continue;
                }
                let lines = node
                    .container_log(ns, &name, "app")
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .unwrap_or_default();
                if lines.contains(&format!("started with {current}")) {
                    return Ok(Some((current, list.len())));
                }
            }
            Ok(None)
        },
    )
    .await?;
    let (current, legacy_pods) = legacy_pods;
    let replica_sets = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels("app=legacy-app"))
        .await?
        .items;
    let deploy = deployments.get("legacy-app").await?;
    let annotations = deploy
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    ensure!(
        annotations.get("sessiontoken.stssession.dev/app") == Some(&current),
        "legacy-app's template annotations: {annotations:?}"
    );
    ensure!(
        replica_sets.len() as i64 >= 3,
        "legacy-app has {} ReplicaSets after {rotations} rotations",
        replica_sets.len()
    );
    println!(
        "restart target: {} ReplicaSets, newest pod started with {current} ({legacy_pods} pods listed)",
        replica_sets.len()
    );

    // -- rollout restart of the operator in the middle of an approval ----------------------------
    let mfa: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": "app-mfa"},
        "spec": {
            "durationSeconds": 3600,
            "mfa": {"serialNumber": user.serial_number().context("MFA serial")?},
            "sourceCredentials": {"secretRef": {"name": "iam-keys"}},
        },
    }))?;
    sts_api.create(&PostParams::default(), &mfa).await?;
    eventually(T, "app-mfa AwaitingTokenCode", || async {
        Ok(
            (condition(&sts_api.get("app-mfa").await?, "Ready").1 == "AwaitingTokenCode")
                .then_some(()),
        )
    })
    .await?;
    let whoami = run_ok(
        Command::new(kubectl()?)
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )?;
    let code = user.totp_code_now();
    // The old pod's log goes with the pod: read what it wrote so far (checked for secrets below).
    let read_log = |pod: &str| {
        node.container_log(release_ns, pod, "operator")
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default()
    };
    let mut old_log = read_log(&op_name);
    // The approval and the restart, back to back (README: `kubectl annotate`).
    let annotate = Command::new(kubectl()?)
        .args(["annotate", "st", "app-mfa", "-n", ns])
        .arg(format!("stssession.dev/token-code={code}"))
        .arg(format!("stssession.dev/approved-by={}", whoami.trim()))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()?;
    ensure!(
        annotate.status.success(),
        "kubectl annotate failed: {}",
        String::from_utf8_lossy(&annotate.stderr)
    );
    run_ok(
        Command::new(kubectl()?)
            .args([
                "rollout",
                "restart",
                &format!("deployment/{fullname}"),
                "-n",
                release_ns,
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )?;
    run_ok(
        Command::new(kubectl()?)
            .args([
                "rollout",
                "status",
                &format!("deployment/{fullname}"),
                "-n",
                release_ns,
                "--timeout=3m",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    )
    .with_context(|| node.logs())?;
    let issued = eventually(T, "app-mfa issued after the restart", || async {
        let st = sts_api.get("app-mfa").await?;
        let issuing = condition(&st, "Issuing");
        ensure!(
            issuing.1 != "Interrupted",
            "the approval was interrupted by the restart"
        );
        Ok((condition(&st, "Ready") == ("True".into(), "Issued".into())).then_some(st))
    })
    .await?;
    let key = secret_key(admin, ns, "app-mfa")
        .await?
        .context("app-mfa Secret")?;
    ensure!(
        sts.issued_session(&key)
            .is_some_and(|s| s.mfa_authenticated),
        "{key} not an MFA session"
    );
    ensure!(
        sts.accepted_uses_of_code(&code) == 1,
        "the code was used {} times",
        sts.accepted_uses_of_code(&code)
    );
    ensure!(
        serde_json::to_value(&issued)?
            .pointer("/status/lastApproval")
            .is_some(),
        "no lastApproval"
    );
    // Whatever the old pod wrote until it stopped, if its log is still there.
    let last = read_log(&op_name);
    if last.len() > old_log.len() {
        old_log = last;
    }
    let new_op = eventually(T, "a new operator pod Ready", || async {
        Ok(operator_pod(
            pods.list(&ListParams::default().labels(&selector))
                .await?
                .items,
        )
        .filter(|p| p.metadata.name.as_deref() != Some(op_name.as_str())))
    })
    .await?;
    let new_name = new_op.metadata.name.unwrap_or_default();
    eventually(T, "the Lease held by the new pod", || async {
        Ok((holder().await? == new_name).then_some(()))
    })
    .await?;
    println!(
        "rollout restart mid-approval: {op_name} -> {new_name}, approval kept (session {key})"
    );

    // Nothing secret in the operator pods' logs.
    let mut secrets = vec![user.secret_access_key.clone(), code.clone()];
    for s in sts.issued_sessions() {
        secrets.push(s.secret_access_key);
        secrets.push(s.session_token);
    }
    for (pod_name, text) in [(&op_name, old_log), (&new_name, read_log(&new_name))] {
        ensure!(!text.is_empty(), "no log for {pod_name}");
        for s in &secrets {
            ensure!(
                !text.contains(s.as_str()),
                "a secret value is in {pod_name}'s log"
            );
        }
    }
    Ok(())
}
