//! Install paths, against the real control plane: the Helm chart (rendered by the pinned helm,
//! applied to kube-apiserver), `deploy/` (`kubectl apply -k`), the chart's least-privilege RBAC
//! (the real operator binary runs with the chart's ServiceAccount identity and arguments), and
//! the guarded-approval ValidatingAdmissionPolicy (as different users).
//!
//! helm: `$STS_TEST_HELM`, else `hack/build-helm.sh` (built once, cached). kubectl:
//! `$STS_TEST_VENV/bin/kubectl`, else `kubectl` on PATH (hack/test.sh provides both).
//!
//! Cluster-scoped objects a test creates (ClusterRoles, bindings, admission policies) are deleted
//! when it ends, even when it fails, so that nothing leaks into the test binaries that run after
//! this one on the same control plane. Policies are scoped to the test's namespaces where the
//! test allows it.

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use testkit::control_plane::ControlPlane;
use testkit::process::{ChildProcess, ScratchDir, free_port, write_private};
use testkit::sts_double::{StsDouble, StsDoubleConfig};

const CHART: &str = "charts/sts-session-operator";
const CODE: &str = "stssession.dev/token-code";
const APPROVED_BY: &str = "stssession.dev/approved-by";
const T: Duration = Duration::from_secs(30);

/// The tests share one API server. Those that reach into every namespace (an approval policy
/// without a namespace selector: default values, deploy/; an operator watching all namespaces)
/// hold this for writing; those that such tests would disturb (the approval-policy test, the
/// namespace-scoped operator test) hold it for reading.
static EVERY_NAMESPACE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Tools.

/// The pinned helm: `$STS_TEST_HELM`, else built (once, cached) by hack/build-helm.sh.
fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(p) = std::env::var_os("STS_TEST_HELM").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("STS_TEST_HELM={} is not a file", p.display()))
            };
        }
        let out = Command::new("bash")
            .arg(root().join("hack/build-helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running hack/build-helm.sh: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last() {
            Some(line) if out.status.success() && Path::new(line.trim()).is_file() => {
                Ok(PathBuf::from(line.trim()))
            }
            _ => Err(format!(
                "hack/build-helm.sh failed ({}): {stdout}",
                out.status
            )),
        }
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// kubectl from the test virtualenv (`$STS_TEST_VENV/bin`), else from PATH.
fn kubectl() -> Result<PathBuf> {
    if let Some(venv) = std::env::var_os("STS_TEST_VENV").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(venv).join("bin/kubectl");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("kubectl");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "kubectl not found: neither $STS_TEST_VENV/bin/kubectl nor kubectl on PATH. Run the tests with \
         `make test` (hack/test.sh installs kubectl from hack/requirements-test.txt into a virtualenv and \
         sets STS_TEST_VENV), or put kubectl on PATH"
    )
}

fn run(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Control plane and rendering.

async fn control_plane() -> &'static ControlPlane {
    static CRDS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cp = ControlPlane::shared().await;
    CRDS.get_or_init(|| async {
        cp.install_crds(root().join("crds"))
            .await
            .expect("installing the CRD");
    })
    .await;
    cp
}

/// A fresh release name, so that cluster-scoped objects of parallel tests do not collide.
fn release_name() -> String {
    format!("sso-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn fullname(release: &str) -> String {
    format!("{release}-sts-session-operator")
}

/// `helm template RELEASE CHART --namespace NS -f VALUES` (values as JSON, which is YAML).
fn helm_template(release: &str, namespace: &str, values: &Value) -> Result<Output> {
    let dir = ScratchDir::new("helm-values")?;
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, serde_json::to_vec_pretty(values)?)?;
    run(Command::new(helm()?)
        .args(["template", release])
        .arg(root().join(CHART))
        .args(["--namespace", namespace, "-f"])
        .arg(&file))
}

/// The chart's manifests: (YAML, documents).
fn render(release: &str, namespace: &str, values: &Value) -> Result<(String, Vec<Value>)> {
    let out = helm_template(release, namespace, values)?;
    ensure!(
        out.status.success(),
        "helm template failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    let yaml = text(&out.stdout);
    Ok((yaml.clone(), parse_docs(&yaml)?))
}

fn parse_docs(yaml: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(serde_json::to_value(v)?);
        }
    }
    Ok(docs)
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// (kind, namespace, name) of each document.
fn ids(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    docs.iter()
        .map(|d| {
            (
                s(d, "/kind").to_string(),
                s(d, "/metadata/namespace").to_string(),
                s(d, "/metadata/name").to_string(),
            )
        })
        .collect()
}

/// What every install renders besides the operator's own RBAC: the leader-election Role, the
/// approver, editor, use, restart-target and metrics roles, the Service, Deployment, PDB and the
/// three admission policies with their bindings.
fn chart_objects_everywhere(ns: &str, f: &str) -> Vec<(String, String, String)> {
    let named = |suffix: &str| format!("{f}-{suffix}");
    vec![
        id("Role", ns, &named("leader-election")),
        id("RoleBinding", ns, &named("leader-election")),
        id("ClusterRole", "", &named("approve")),
        id("Service", ns, &named("metrics")),
        id("Deployment", ns, f),
        id("PodDisruptionBudget", ns, f),
        id("ValidatingAdmissionPolicy", "", &named("approvals")),
        id("ValidatingAdmissionPolicyBinding", "", &named("approvals")),
        id("ClusterRole", "", &named("restart-targets")),
        id("ClusterRole", "", &named("edit")),
        id("ClusterRole", "", &named("use")),
        id("ValidatingAdmissionPolicy", "", &named("assumed-roles")),
        id(
            "ValidatingAdmissionPolicyBinding",
            "",
            &named("assumed-roles"),
        ),
        id("ClusterRole", "", &named("metrics-auth")),
        id("ClusterRoleBinding", "", &named("metrics-auth")),
        id("ClusterRole", "", &named("metrics-reader")),
        id("ValidatingAdmissionPolicy", "", &named("operator-writes")),
        id(
            "ValidatingAdmissionPolicyBinding",
            "",
            &named("operator-writes"),
        ),
    ]
}

fn id(kind: &str, ns: &str, name: &str) -> (String, String, String) {
    (kind.to_string(), ns.to_string(), name.to_string())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| s(d, "/kind") == kind && s(d, "/metadata/name") == name)
        .with_context(|| format!("no {kind} {name} in {:?}", ids(docs)))
}

/// True if any rule reaches Secrets (by name or wildcard, in the core group or any).
fn grants_secrets(role: &Value) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        let has = |field: &str, want: &[&str]| {
            rule[field]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| want.contains(&x.as_str().unwrap_or_default()))
        };
        has("apiGroups", &["", "*"]) && has("resources", &["secrets", "*"])
    })
}

/// Deletes objects when dropped (test end, pass or panic), on a runtime of its own.
struct Cleanup {
    kubeconfig: PathBuf,
    objects: Vec<Value>,
}

impl Cleanup {
    /// The cluster-scoped objects among `docs` (namespaced ones go with their test namespaces).
    fn cluster_scoped(cp: &ControlPlane, docs: &[Value]) -> Cleanup {
        const CLUSTER_KINDS: &[&str] = &[
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ];
        let objects = docs
            .iter()
            .filter(|d| CLUSTER_KINDS.contains(&s(d, "/kind")))
            .cloned()
            .collect();
        Cleanup {
            kubeconfig: cp.admin_kubeconfig().to_path_buf(),
            objects,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.objects);
        let kubeconfig = self.kubeconfig.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = Client::try_from(
                    testkit::control_plane::config_from_kubeconfig(&kubeconfig).await?,
                )?;
                for obj in objects.iter().rev() {
                    if let Err(e) = delete(&client, obj).await {
                        eprintln!(
                            "cleanup: {} {}: {e:#}",
                            s(obj, "/kind"),
                            s(obj, "/metadata/name")
                        );
                    }
                }
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("cleanup failed: {e:#}");
        }
    }
}

async fn dynamic_api(client: &Client, obj: &Value) -> Result<(Api<DynamicObject>, String)> {
    let (group, version) = match s(obj, "/apiVersion").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), s(obj, "/apiVersion").to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, s(obj, "/kind"));
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => {
            Api::namespaced_with(client.clone(), s(obj, "/metadata/namespace"), &ar)
        }
    };
    Ok((api, s(obj, "/metadata/name").to_string()))
}

async fn delete(client: &Client, obj: &Value) -> Result<()> {
    let (api, name) = dynamic_api(client, obj).await?;
    match api.delete(&name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn exists(client: &Client, obj: &Value) -> Result<bool> {
    let (api, name) = dynamic_api(client, obj).await?;
    Ok(api.get_opt(&name).await?.is_some())
}

/// Renders and server-side-applies the chart as admin; the cluster-scoped objects are deleted
/// when the returned guard drops.
async fn install(
    cp: &ControlPlane,
    release: &str,
    namespace: &str,
    values: &Value,
) -> Result<(Vec<Value>, Cleanup)> {
    let (yaml, docs) = render(release, namespace, values)?;
    let cleanup = Cleanup::cluster_scoped(cp, &docs);
    cp.apply_yaml(&yaml)
        .await
        .context("server-side apply of the rendered chart")?;
    Ok((docs, cleanup))
}

/// A fresh release in namespace `install-<prefix>` whose approval policies (approvals and
/// AssumedRoles) cover only a new test namespace `<prefix>` (they are cluster-scoped; other tests
/// share the API server): (release namespace, test namespace, full name, cleanup).
async fn install_guarding(
    cp: &ControlPlane,
    prefix: &str,
) -> Result<(String, String, String, Cleanup)> {
    let release_ns = cp.new_namespace(&format!("install-{prefix}")).await?;
    let ns = cp.new_namespace(prefix).await?;
    let release = release_name();
    let values = json!({"approvalPolicy": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}});
    let (_docs, cleanup) = install(cp, &release, &release_ns, &values).await?;
    Ok((release_ns, ns, fullname(&release), cleanup))
}

// ---------------------------------------------------------------------------------------------
// The chart's files.

#[test]
fn chart_crds_are_a_byte_identical_copy_of_crds() -> Result<()> {
    let list = |dir: &Path| -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p)?,
            );
        }
        Ok(out)
    };
    let source = list(&root().join("crds"))?;
    let chart = list(&root().join(CHART).join("crds"))?;
    ensure!(!source.is_empty(), "crds/ is empty");
    let fix =
        "fix: bash hack/generate-deploy.sh (copies crds/ into the chart, then regenerates deploy/)";
    ensure!(
        source.keys().eq(chart.keys()),
        "{CHART}/crds/ has {:?}, crds/ has {:?}; {fix}",
        chart.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &source {
        ensure!(
            &chart[name] == bytes,
            "{CHART}/crds/{name} differs from crds/{name}; {fix}"
        );
    }
    Ok(())
}

#[test]
fn deploy_dir_is_what_generate_deploy_makes_now() -> Result<()> {
    let scratch = ScratchDir::new("deploy")?;
    let fresh_dir = scratch.path().join("deploy");
    let out = run(Command::new("bash")
        .arg(root().join("hack/generate-deploy.sh"))
        .arg(&fresh_dir)
        .env("HELM", helm()?))?;
    ensure!(
        out.status.success(),
        "hack/generate-deploy.sh failed:\n{}",
        text(&out.stderr)
    );
    let read = |dir: &Path| -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            m.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p)?,
            );
        }
        Ok(m)
    };
    let fresh = read(&fresh_dir)?;
    let committed = read(&root().join("deploy"))?;
    let names: BTreeSet<&String> = fresh.keys().chain(committed.keys()).collect();
    let stale: Vec<&String> = names
        .into_iter()
        .filter(|n| fresh.get(*n) != committed.get(*n))
        .collect();
    ensure!(
        stale.is_empty(),
        "deploy/ is out of date ({stale:?} differ); regenerate it with: bash hack/generate-deploy.sh"
    );
    ensure!(
        fresh.contains_key("kustomization.yaml") && fresh.len() >= 4,
        "unexpected deploy/ contents: {:?}",
        fresh.keys()
    );
    Ok(())
}

#[test]
fn values_schema_rejects_bad_values_with_readable_messages() -> Result<()> {
    // Control: the defaults, and a full set of good values, render.
    let good = json!({
        "replicas": 3, "watchNamespaces": ["team-a", "team-b"], "logFormat": "text",
        "defaultRegion": "eu-west-1", "stsEndpoint": "https://sts.eu-west-1.amazonaws.com",
        "allowedStsEndpoints": ["https://sts.*.amazonaws.com"], "extraArgs": ["--sts-timeout=15s"],
        "metrics": {"serviceMonitor": {"enabled": true}}, "approverRole": {"aggregateToEdit": true},
    });
    // Without a Lease, one pod at a time: admitted with Recreate.
    let no_lease = json!({"replicas": 1, "leaderElection": {"enabled": false}, "strategy": {"type": "Recreate"}});
    let (_, docs) = render("r", "ns", &no_lease)?;
    let deploy = find(&docs, "Deployment", "r-sts-session-operator")?;
    assert_eq!(deploy["spec"]["strategy"], json!({"type": "Recreate"}));
    for values in [json!({}), good] {
        let out = helm_template("r", "ns", &values)?;
        ensure!(
            out.status.success(),
            "good values {values} refused:\n{}",
            text(&out.stderr)
        );
    }
    let cases = [
        (json!({"replicas": -1}), "/replicas"),
        (json!({"replicas": "two"}), "/replicas"),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (json!({"replicaCount": 2}), "replicaCount"),
        (json!({"watchNamespaces": "team-a"}), "/watchNamespaces"),
        (json!({"watchNamespaces": ["Team_A"]}), "/watchNamespaces/0"),
        (json!({"image": {"repository": ""}}), "/image/repository"),
        (
            json!({"approvalPolicy": {"validationActions": ["Block"]}}),
            "/approvalPolicy/validationActions/0",
        ),
        (json!({"metrics": {"port": 70000}}), "/metrics/port"),
        (
            json!({"replicas": 2, "leaderElection": {"enabled": false}}),
            "leaderElection.enabled",
        ),
        (
            json!({"approvalPolicy": {"validationActions": ["Deny", "Warn"]}}),
            "not both",
        ),
        // One replica without a Lease still runs two pods side by side during a RollingUpdate.
        (
            json!({"replicas": 1, "leaderElection": {"enabled": false}}),
            "leaderElection.enabled=false needs strategy.type=Recreate",
        ),
        (
            json!({"replicas": 1, "leaderElection": {"enabled": false}, "strategy": {"type": "RollingUpdate"}}),
            "leaderElection.enabled=false needs strategy.type=Recreate",
        ),
        (json!({"strategy": {"type": "Blue"}}), "/strategy/type"),
    ];
    for (values, expected) in cases {
        let out = helm_template("r", "ns", &values)?;
        let stderr = text(&out.stderr);
        ensure!(
            !out.status.success(),
            "helm template accepted bad values {values}"
        );
        ensure!(
            stderr.contains(expected),
            "bad values {values}: the message does not point at {expected:?}:\n{stderr}"
        );
        ensure!(
            !stderr.contains("panic"),
            "helm panicked on {values}:\n{stderr}"
        );
    }
    // The schema message names the key; print one for the record.
    let out = helm_template("r", "ns", &json!({"logFormat": "xml"}))?;
    eprintln!("example refusal:\n{}", text(&out.stderr));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendered and applied.

#[tokio::test]
async fn chart_with_default_values_applies_to_the_api_server() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.write().await;
    let ns = cp.new_namespace("install-default").await?;
    let release = release_name();
    let f = fullname(&release);
    let (docs, _cleanup) = install(cp, &release, &ns, &json!({})).await?;

    let expected: BTreeSet<_> = [
        id("ServiceAccount", &ns, &f),
        id("ClusterRole", "", &f),
        id("ClusterRoleBinding", "", &f),
    ]
    .into_iter()
    .chain(chart_objects_everywhere(&ns, &f))
    .collect();
    assert_eq!(ids(&docs), expected);

    // The Deployment as the brief asks.
    let deploy = find(&docs, "Deployment", &f)?;
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["serviceAccountName"], f.as_str());
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "sts-session-operator:0.1.0");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in [
        "--default-region=us-east-1",
        "--log-format=json",
        "--leader-election=true",
        "--metrics-auth=true",
        &format!("--lease-name={f}"),
    ] {
        assert!(args.contains(&a), "{a} missing from {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--namespaces")),
        "all namespaces by default: {args:?}"
    );
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (s(e, "/name"), s(e, "/valueFrom/fieldRef/fieldPath")))
        .collect();
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    // The operator's ClusterRole has exactly the fixture's rules (tests/fixtures/operator-rbac.yaml,
    // what the operator's own tests grant it), except Leases, which are in the release
    // namespace's Role, with the same verbs, and workloads (restart targets), which are in a
    // ClusterRole of their own that nothing binds by default (opt-in per namespace).
    let fixture = parse_docs(&std::fs::read_to_string(
        root().join("tests/fixtures/operator-rbac.yaml"),
    )?)?;
    let fixture_rules = find(&fixture, "ClusterRole", "sts-session-operator")?["rules"]
        .as_array()
        .unwrap()
        .clone();
    let (lease_rules, work_rules): (Vec<Value>, Vec<Value>) = fixture_rules
        .into_iter()
        .partition(|r| r["resources"] == json!(["leases"]));
    let (restart_rules, work_rules): (Vec<Value>, Vec<Value>) = work_rules
        .into_iter()
        .partition(|r| r["apiGroups"] == json!(["apps"]));
    let sorted = |rules: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    };
    let chart_rules = find(&docs, "ClusterRole", &f)?["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        sorted(&chart_rules),
        sorted(&work_rules),
        "the chart's ClusterRole and tests/fixtures/operator-rbac.yaml differ"
    );
    let verbs = |rules: &[Value]| -> BTreeSet<String> {
        rules
            .iter()
            .flat_map(|r| {
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
            })
            .collect()
    };
    let lease_role = find(&docs, "Role", &format!("{f}-leader-election"))?;
    assert_eq!(
        verbs(lease_role["rules"].as_array().unwrap()),
        verbs(&lease_rules)
    );
    // Workloads: the restart ClusterRole has the fixture's rule, and is bound nowhere by default.
    let restart_role = find(&docs, "ClusterRole", &format!("{f}-restart-targets"))?;
    assert_eq!(
        sorted(restart_role["rules"].as_array().unwrap()),
        sorted(&restart_rules)
    );
    assert!(
        !chart_rules
            .iter()
            .any(|r| r.to_string().contains("deployments")),
        "the operator's ClusterRole reaches workloads: {chart_rules:?}"
    );
    let bound_roles: Vec<&str> = docs
        .iter()
        .filter(|d| s(d, "/kind").ends_with("Binding") && s(d, "/apiVersion").starts_with("rbac"))
        .map(|d| s(d, "/roleRef/name"))
        .collect();
    assert!(
        !bound_roles.contains(&format!("{f}-restart-targets").as_str()),
        "{bound_roles:?}"
    );
    // Bound in listed namespaces, or (on request) cluster-wide; not shipped at all when disabled.
    let (_, listed) = render(
        &release,
        &ns,
        &json!({"rbac": {"rolloutRestartTargets": {"namespaces": ["team-a"], "clusterWide": true}}}),
    )?;
    let binding = find(&listed, "RoleBinding", &format!("{f}-restart-targets"))?;
    assert_eq!(s(binding, "/metadata/namespace"), "team-a");
    assert_eq!(s(binding, "/roleRef/kind"), "ClusterRole");
    find(
        &listed,
        "ClusterRoleBinding",
        &format!("{f}-restart-targets"),
    )?;
    let (_, no_restart) = render(
        &release,
        &ns,
        &json!({"rbac": {"rolloutRestartTargets": {"enabled": false}}}),
    )?;
    assert!(find(&no_restart, "ClusterRole", &format!("{f}-restart-targets")).is_err());

    // Approvers: `approve` + get/list/watch/patch, and reading AssumedRoles (which draw on the
    // session they approve), aggregated into "admin" (not "edit") by default.
    let approve = find(&docs, "ClusterRole", &format!("{f}-approve"))?;
    assert_eq!(
        approve["rules"],
        json!([
            {"apiGroups": ["stssession.dev"], "resources": ["sessiontokens"], "verbs": ["approve", "get", "list", "watch", "patch"]},
            {"apiGroups": ["stssession.dev"], "resources": ["assumedroles"], "verbs": ["get", "list", "watch"]},
        ])
    );
    assert_use_and_edit_roles(&docs, &f)?;
    assert_eq!(
        approve["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    assert!(
        approve["metadata"]["labels"]
            .get("rbac.authorization.k8s.io/aggregate-to-edit")
            .is_none()
    );

    // On the server: everything is there, and the aggregation controller folded `approve` into
    // "admin". (The policy's CEL is checked by behaviour, in the approval test: this control
    // plane runs no validatingadmissionpolicy-status controller to report type-checking.)
    let admin = cp.admin_client().await?;
    for d in &docs {
        ensure!(
            exists(&admin, d).await?,
            "{} {} not on the server",
            s(d, "/kind"),
            s(d, "/metadata/name")
        );
    }
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let admin_role = serde_json::to_value(roles.get("admin").await?)?;
        let has_approve = admin_role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| {
                r["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v == "approve")
                    && r["resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x == "sessiontokens")
            });
        if has_approve {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "ClusterRole admin never aggregated the approve rule"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn chart_scoped_to_namespaces_has_no_cluster_wide_secret_access() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.new_namespace("install-scoped").await?;
    let team_a = cp.new_namespace("scoped-a").await?;
    let team_b = cp.new_namespace("scoped-b").await?;
    let release = release_name();
    let f = fullname(&release);
    let values = json!({
        "watchNamespaces": [team_a, team_b],
        "approverRole": {"aggregateToAdmin": false, "aggregateToEdit": true},
        "approvalPolicy": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": team_a}}},
    });
    let (docs, _cleanup) = install(cp, &release, &ns, &values).await?;

    let expected: BTreeSet<_> = [
        id("ServiceAccount", &ns, &f),
        id("Role", &team_a, &f),
        id("RoleBinding", &team_a, &f),
        id("Role", &team_b, &f),
        id("RoleBinding", &team_b, &f),
    ]
    .into_iter()
    .chain(chart_objects_everywhere(&ns, &f))
    .collect();
    assert_eq!(ids(&docs), expected);
    let args =
        find(&docs, "Deployment", &f)?["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!(format!("--namespaces={team_a},{team_b}"))),
        "{args}"
    );
    let approve = find(&docs, "ClusterRole", &format!("{f}-approve"))?;
    assert_eq!(
        approve["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert!(
        approve["metadata"]["labels"]
            .get("rbac.authorization.k8s.io/aggregate-to-admin")
            .is_none()
    );
    for d in docs.iter().filter(|d| s(d, "/kind") == "ClusterRole") {
        assert!(
            !grants_secrets(d),
            "ClusterRole {} grants Secrets",
            s(d, "/metadata/name")
        );
    }
    // The one ClusterRoleBinding: reviewing /metrics readers' tokens (TokenReview,
    // SubjectAccessReview), nothing else.
    let crbs: Vec<&str> = docs
        .iter()
        .filter(|d| s(d, "/kind") == "ClusterRoleBinding")
        .map(|d| s(d, "/metadata/name"))
        .collect();
    assert_eq!(
        crbs,
        [format!("{f}-metrics-auth")],
        "ClusterRoleBindings in namespace-scoped mode"
    );
    assert_eq!(
        find(&docs, "ClusterRole", &format!("{f}-metrics-auth"))?["rules"],
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ])
    );

    // On the server: no ClusterRole of this release grants Secrets, and the ServiceAccount may
    // read Secrets in the listed namespaces only (the RBAC authorizer's own answer).
    let admin = cp.admin_client().await?;
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let ours = roles
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await?;
    ensure!(
        !ours.items.is_empty(),
        "the approve ClusterRole should be there"
    );
    for r in &ours.items {
        assert!(
            !grants_secrets(&serde_json::to_value(r)?),
            "ClusterRole {} grants Secrets",
            r.name_any()
        );
    }
    let sa_user = format!("system:serviceaccount:{ns}:{f}");
    let can = |verb: &'static str, resource: &'static str, namespace: Option<String>| {
        let admin = admin.clone();
        let (sa_user, ns) = (sa_user.clone(), ns.clone());
        async move { access_allowed(&admin, &sa_user, &ns, verb, resource, namespace.as_deref()).await }
    };
    assert!(
        !can("list", "secrets", None).await?,
        "the ServiceAccount can list Secrets cluster-wide"
    );
    assert!(
        !can("get", "secrets", Some(ns.clone())).await?,
        "Secrets in the release namespace (not watched)"
    );
    assert!(
        !can("get", "secrets", Some("default".into())).await?,
        "Secrets in an unlisted namespace"
    );
    assert!(
        can("get", "secrets", Some(team_a.clone())).await?,
        "Secrets in a listed namespace"
    );
    assert!(
        can("watch", "secrets", Some(team_b.clone())).await?,
        "Secrets in a listed namespace"
    );
    assert!(
        !can("list", "sessiontokens", None).await?,
        "SessionTokens cluster-wide"
    );
    assert!(
        can("create", "leases", Some(ns.clone())).await?,
        "Leases in the release namespace"
    );
    assert!(
        !can("create", "leases", Some(team_a.clone())).await?,
        "Leases elsewhere"
    );
    Ok(())
}

/// `metrics.networkPolicy`: off by default; on, one NetworkPolicy selecting the operator's pods,
/// Ingress only, admitting the configured scraper (namespace and pod selectors together: that
/// scraper, not any pod of its namespace nor that pod name anywhere) on the metrics port only.
/// The API server accepts it. (No CNI here enforces it: what it admits is checked as written.)
#[tokio::test]
async fn network_policy_admits_only_the_scraper_on_the_metrics_port() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.new_namespace("install-netpol").await?;
    let release = release_name();
    let f = fullname(&release);
    let (_, default) = render(&release, &ns, &json!({}))?;
    assert!(
        !default.iter().any(|d| s(d, "/kind") == "NetworkPolicy"),
        "a NetworkPolicy by default"
    );
    let values = json!({"metrics": {"networkPolicy": {"enabled": true, "scraper": {
        "namespaceSelector": {"matchLabels": {"team": "observability"}},
        "podSelector": {"matchLabels": {"app": "vmagent"}},
    }}}});
    let (yaml, docs) = render(&release, &ns, &values)?;
    let np = find(&docs, "NetworkPolicy", &f)?;
    let deploy = find(&docs, "Deployment", &f)?;
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"team": "observability"}},
                "podSelector": {"matchLabels": {"app": "vmagent"}},
            }],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }])
    );
    let port = &deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(port["name"], "metrics");
    // The probes use that same port (the kubelet's node is always admitted).
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    let np_yaml: String = yaml
        .split("\n---")
        .filter(|d| d.contains("kind: NetworkPolicy"))
        .collect();
    cp.apply_yaml(&np_yaml)
        .await
        .context("applying the NetworkPolicy")?;
    Ok(())
}

/// The ServiceMonitor sends Prometheus' own ServiceAccount token when `/metrics` needs one
/// (`metrics.auth`, the default), and the Deployment turns the guard on; with `metrics.auth=false`
/// neither (and no review rights, no reader role).
#[test]
fn service_monitor_sends_a_bearer_token_when_metrics_need_one() -> Result<()> {
    let f = fullname("r");
    for auth in [true, false] {
        let values = json!({"metrics": {"auth": auth, "serviceMonitor": {"enabled": true}}});
        let (_, docs) = render("r", "ns", &values)?;
        let sm = find(&docs, "ServiceMonitor", &f)?;
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(
            endpoint.get("bearerTokenFile").and_then(Value::as_str),
            auth.then_some("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            "metrics.auth={auth}: {endpoint}"
        );
        let args =
            find(&docs, "Deployment", &f)?["spec"]["template"]["spec"]["containers"][0]["args"]
                .clone();
        assert!(
            args.as_array()
                .is_some_and(|a| a.contains(&json!(format!("--metrics-auth={auth}")))),
            "{args}"
        );
        for role in ["metrics-auth", "metrics-reader"] {
            assert_eq!(
                find(&docs, "ClusterRole", &format!("{f}-{role}")).is_ok(),
                auth,
                "ClusterRole {role} with metrics.auth={auth}"
            );
        }
    }
    let (_, docs) = render("r", "ns", &json!({}))?;
    assert_eq!(
        find(&docs, "ClusterRole", &format!("{f}-metrics-reader"))?["rules"],
        json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    Ok(())
}

/// SubjectAccessReview for a ServiceAccount user.
async fn access_allowed(
    admin: &Client,
    user: &str,
    sa_ns: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool> {
    let group = match resource {
        "sessiontokens" => "stssession.dev",
        "leases" => "coordination.k8s.io",
        "events" => "events.k8s.io",
        "deployments" | "statefulsets" | "daemonsets" => "apps",
        _ => "",
    };
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace.unwrap_or_default()},
        }
    }))?;
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &sar)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[tokio::test]
async fn chart_without_approval_policy_applies() -> Result<()> {
    let cp = control_plane().await;
    let ns = cp.new_namespace("install-nopolicy").await?;
    let release = release_name();
    let f = fullname(&release);
    let values = json!({"approvalPolicy": {"enabled": false}, "operatorPolicy": {"enabled": false}, "replicas": 1});
    let (docs, _cleanup) = install(cp, &release, &ns, &values).await?;
    let expected: BTreeSet<_> = [
        id("ServiceAccount", &ns, &f),
        id("ClusterRole", "", &f),
        id("ClusterRoleBinding", "", &f),
        id("Role", &ns, &format!("{f}-leader-election")),
        id("RoleBinding", &ns, &format!("{f}-leader-election")),
        id("ClusterRole", "", &format!("{f}-approve")),
        id("ClusterRole", "", &format!("{f}-restart-targets")),
        id("ClusterRole", "", &format!("{f}-edit")),
        id("ClusterRole", "", &format!("{f}-use")),
        id("ClusterRole", "", &format!("{f}-metrics-auth")),
        id("ClusterRoleBinding", "", &format!("{f}-metrics-auth")),
        id("ClusterRole", "", &format!("{f}-metrics-reader")),
        id("Service", &ns, &format!("{f}-metrics")),
        id("Deployment", &ns, &f),
        // no PodDisruptionBudget with one replica, no policy
    ]
    .into();
    assert_eq!(ids(&docs), expected);
    let admin = cp.admin_client().await?;
    for d in &docs {
        ensure!(
            exists(&admin, d).await?,
            "{} {} not on the server",
            s(d, "/kind"),
            s(d, "/metadata/name")
        );
    }
    Ok(())
}

#[tokio::test]
async fn helm_install_and_uninstall_work() -> Result<()> {
    let cp = control_plane().await;
    let release = release_name();
    let f = fullname(&release);
    let ns = format!("{release}-system"); // helm creates it
    let scratch = ScratchDir::new("helm-home")?;
    let helm_cmd = |args: &[&str]| -> Result<Output> {
        let mut cmd = Command::new(helm()?);
        cmd.args(args)
            .env("KUBECONFIG", cp.admin_kubeconfig())
            .env("HELM_CACHE_HOME", scratch.path().join("cache"))
            .env("HELM_CONFIG_HOME", scratch.path().join("config"))
            .env("HELM_DATA_HOME", scratch.path().join("data"));
        run(&mut cmd)
    };
    // Scoped so that it cannot disturb tests running meanwhile; cleaned up even if uninstall fails.
    let (_, docs) = render(&release, &ns, &json!({}))?;
    let _cleanup = Cleanup::cluster_scoped(cp, &docs);
    let chart = root().join(CHART);
    let out = helm_cmd(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
        "--create-namespace",
        "--set",
        "approvalPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=nowhere",
    ])?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "helm install failed:\n{stdout}{}",
        text(&out.stderr)
    );
    ensure!(
        stdout.contains("STATUS: deployed")
            && stdout.contains(&format!("--clusterrole={f}-approve")),
        "helm install:\n{stdout}"
    );
    let admin = cp.admin_client().await?;
    for d in &docs {
        ensure!(
            exists(&admin, d).await?,
            "{} {} not installed by helm",
            s(d, "/kind"),
            s(d, "/metadata/name")
        );
    }
    let out = helm_cmd(&["uninstall", &release, "--namespace", &ns])?;
    ensure!(
        out.status.success(),
        "helm uninstall failed:\n{}",
        text(&out.stderr)
    );
    for d in &docs {
        ensure!(
            !exists(&admin, d).await?,
            "{} {} left behind by helm uninstall",
            s(d, "/kind"),
            s(d, "/metadata/name")
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_apply_k_deploy_installs_everything() -> Result<()> {
    let kubectl = kubectl()?;
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.write().await;
    let kubeconfig = cp.admin_kubeconfig().to_path_buf();
    let deploy = root().join("deploy");

    let out = run(Command::new(&kubectl).arg("kustomize").arg(&deploy))?;
    ensure!(
        out.status.success(),
        "kubectl kustomize deploy/ failed:\n{}",
        text(&out.stderr)
    );
    let docs = parse_docs(&text(&out.stdout))?;
    let kinds: BTreeSet<&str> = docs.iter().map(|d| s(d, "/kind")).collect();
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        ensure!(kinds.contains(k), "deploy/ has no {k}: {kinds:?}");
    }
    let crds: BTreeSet<&str> = docs
        .iter()
        .filter(|d| s(d, "/kind") == "CustomResourceDefinition")
        .map(|d| s(d, "/metadata/name"))
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from([
            "assumedroles.stssession.dev",
            "sessiontokens.stssession.dev"
        ])
    );
    // Applying a stale CRD would change it under the tests that share this API server.
    for plural in ["sessiontokens", "assumedroles"] {
        let source = std::fs::read(root().join(format!("crds/stssession.dev_{plural}.yaml")))?;
        let copy = std::fs::read(deploy.join(format!("crd-stssession.dev_{plural}.yaml")))?;
        ensure!(
            source == copy,
            "deploy/'s {plural} CRD differs from crds/: not applying it; run bash hack/generate-deploy.sh"
        );
    }

    // Delete afterwards what this test created, except the CRD (the other tests' SessionTokens
    // live in it) and whatever existed before.
    let admin = cp.admin_client().await?;
    let mut created = Vec::new();
    for d in &docs {
        let namespaced_in_our_ns = !s(d, "/metadata/namespace").is_empty();
        if s(d, "/kind") != "CustomResourceDefinition"
            && !namespaced_in_our_ns
            && !exists(&admin, d).await.unwrap_or(true)
        {
            created.push(d.clone());
        }
    }
    let _cleanup = Cleanup {
        kubeconfig: kubeconfig.clone(),
        objects: created,
    };

    for round in 1..=2 {
        let out = run(Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("apply")
            .arg("-k")
            .arg(&deploy))?;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        ensure!(
            out.status.success(),
            "kubectl apply -k deploy/ (round {round}) failed:\n{stdout}\n{stderr}"
        );
        // The Namespace enforces the "restricted" Pod Security Standard: the pod template meets it.
        ensure!(
            !stderr.contains("PodSecurity"),
            "Pod Security warnings:\n{stderr}"
        );
        eprintln!("kubectl apply -k deploy/ (round {round}):\n{stdout}{stderr}");
    }
    for d in &docs {
        ensure!(
            exists(&admin, d).await?,
            "{} {} not on the server after kubectl apply -k",
            s(d, "/kind"),
            s(d, "/metadata/name")
        );
    }
    // Nothing left to change (kubectl prints "configured" for some no-op patches; diff is exact).
    let out = run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["diff", "-k"])
        .arg(&deploy))?;
    ensure!(
        out.status.code() == Some(0),
        "kubectl diff -k deploy/ after apply:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--server-side", "-k"])
        .arg(&deploy))?;
    ensure!(
        out.status.success(),
        "kubectl apply --server-side -k deploy/ failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The operator, with the chart's identity and arguments.

/// A bearer token of the chart's ServiceAccount (TokenRequest API).
async fn service_account_token(cp: &ControlPlane, ns: &str, sa: &str) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(cp.admin_client().await?, ns);
    let req: TokenRequest = serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}}))?;
    let answer = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await?;
    answer
        .status
        .and_then(|s| s.token)
        .context("TokenRequest answered without a token")
}

struct Operator {
    process: ChildProcess,
    metrics_port: u16,
    _scratch: ScratchDir,
}

/// Runs the real operator out of cluster as the chart's ServiceAccount, with the Deployment's
/// arguments (only the metrics address is moved to a free loopback port) and its downward-API
/// environment filled in as the kubelet would.
async fn start_operator(
    cp: &ControlPlane,
    docs: &[Value],
    release_ns: &str,
    release: &str,
) -> Result<Operator> {
    let f = fullname(release);
    let deploy = find(docs, "Deployment", &f)?;
    let pod = &deploy["spec"]["template"]["spec"];
    let sa = s(pod, "/serviceAccountName");
    let container = &pod["containers"][0];
    let metrics_port = free_port()?;
    let mut args: Vec<String> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let n = args.len();
    args.retain(|a| !a.starts_with("--metrics-address="));
    ensure!(
        args.len() == n - 1,
        "the Deployment sets no --metrics-address: {args:?}"
    );
    args.push(format!("--metrics-address=127.0.0.1:{metrics_port}"));
    for e in container["env"].as_array().context("env")? {
        let path = s(e, "/valueFrom/fieldRef/fieldPath");
        ensure!(
            matches!(path, "metadata.name" | "metadata.namespace"),
            "unexpected env {e}"
        );
    }

    let token = service_account_token(cp, release_ns, sa).await?;
    let scratch = ScratchDir::new("sa-kubeconfig")?;
    let kubeconfig = scratch.path().join("kubeconfig.yaml");
    write_private(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: sa\n\
             current-context: sa\n",
            cp.server_url(),
            cp.ca_file().display()
        ),
    )?;
    let pod_name = format!("{f}-7d4b9c-x2x4z");
    let process = ChildProcess::builder(env!("CARGO_BIN_EXE_sts-session-operator"))
        .name(format!("operator-{release}"))
        .log_file(
            cp.dir()
                .join(format!("operator-{release}-{metrics_port}.log")),
        )
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", &pod_name)
        .env("POD_NAMESPACE", release_ns)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("WATCH_NAMESPACES")
        .spawn()?;
    let op = Operator {
        process,
        metrics_port,
        _scratch: scratch,
    };
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if http_get(metrics_port, "/readyz")
            .await
            .is_ok_and(|b| b.starts_with("200"))
        {
            return Ok(op);
        }
        ensure!(
            op.process.is_running(),
            "operator exited:\n{}",
            op.process.log_tail(40)
        );
        ensure!(
            tokio::time::Instant::now() < deadline,
            "operator not ready after {T:?}:\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Minimal HTTP GET over loopback: "STATUS\nBODY".
async fn http_get(port: u16, path: &str) -> Result<String> {
    http_get_auth(port, path, None).await
}

/// An HTTP GET over loopback, with `Authorization: Bearer TOKEN` if given: "STATUS\nBODY".
async fn http_get_auth(port: u16, path: &str, token: Option<&str>) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let status = buf.split(' ').nth(1).unwrap_or("").to_string();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(format!("{status}\n{body}"))
}

/// A kind of the stssession.dev/v1alpha1 group.
fn stssession_resource(kind: &str, plural: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "stssession.dev".into(),
        version: "v1alpha1".into(),
        api_version: "stssession.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn sessiontokens(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &stssession_resource("SessionToken", "sessiontokens"),
    )
}

fn assumedroles(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &stssession_resource("AssumedRole", "assumedroles"),
    )
}

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deployer";

/// An AssumedRole drawing on SessionToken `session_token` (of its own namespace).
fn assumed_role(name: &str, session_token: &str) -> DynamicObject {
    DynamicObject::new(name, &stssession_resource("AssumedRole", "assumedroles")).data(json!({
        "spec": {"sessionTokenRef": {"name": session_token}, "roleArn": ROLE_ARN},
    }))
}

fn session_token(name: &str, mfa: bool, annotations: Value) -> Result<DynamicObject> {
    let mut spec =
        json!({"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
    if mfa {
        spec["mfa"] = json!({"serialNumber": "arn:aws:iam::123456789012:mfa/alice"});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": name, "annotations": annotations}, "spec": spec,
    }))?)
}

/// (status, reason) of a condition.
fn condition(st: &DynamicObject, type_: &str) -> (String, String) {
    let v = serde_json::to_value(st).unwrap_or_default();
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| (s(c, "/status").to_string(), s(c, "/reason").to_string()))
        .unwrap_or_default()
}

/// A workload namespace with the IAM user's keys and a non-MFA SessionToken "app".
async fn workload(cp: &ControlPlane, prefix: &str, sts: &StsDouble) -> Result<String> {
    let ns = cp.new_namespace(prefix).await?;
    let admin = cp.admin_client().await?;
    let user = sts.default_user();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "iam-keys"},
        "stringData": {"AWS_ACCESS_KEY_ID": user.access_key_id, "AWS_SECRET_ACCESS_KEY": user.secret_access_key},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    sessiontokens(&admin, &ns)
        .create(
            &PostParams::default(),
            &session_token("app", false, json!({}))?,
        )
        .await?;
    Ok(ns)
}

async fn wait_issued(cp: &ControlPlane, ns: &str, op: &Operator) -> Result<()> {
    wait_ready(cp, ns, "app", op).await
}

/// Waits for `Ready=True/Issued` on SessionToken `name`.
async fn wait_ready(cp: &ControlPlane, ns: &str, name: &str, op: &Operator) -> Result<()> {
    let api = sessiontokens(&cp.admin_client().await?, ns);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let st = api.get(name).await?;
        let ready = condition(&st, "Ready");
        if ready == ("True".into(), "Issued".into()) {
            return Ok(());
        }
        ensure!(
            op.process.is_running(),
            "operator exited:\n{}",
            op.process.log_tail(40)
        );
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{ns}/{name} not Ready=True/Issued after {T:?} (Ready={ready:?}); operator log:\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The output Secret has the session's keys; deleted, it is issued again (a first issue without
/// an approval has no Event; a second one has), and the operator's Event is recorded.
async fn assert_secret_and_event(cp: &ControlPlane, ns: &str) -> Result<()> {
    let admin = cp.admin_client().await?;
    let secret = Api::<Secret>::namespaced(admin.clone(), ns)
        .get("app")
        .await?;
    let data = secret.data.unwrap_or_default();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SESSION_EXPIRATION",
        "credentials",
    ] {
        ensure!(
            data.contains_key(k),
            "output Secret has no {k}: {:?}",
            data.keys()
        );
    }
    ensure!(
        String::from_utf8_lossy(&data["AWS_ACCESS_KEY_ID"].0).starts_with("ASIA"),
        "not a session key"
    );
    Api::<Secret>::namespaced(admin.clone(), ns)
        .delete("app", &Default::default())
        .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin, ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == "Issued") {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no Issued event in {ns} (events: {reasons:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Lease in the release namespace is held by the operator ("pod" name).
async fn assert_lease_held(cp: &ControlPlane, release_ns: &str, release: &str) -> Result<()> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cp.admin_client().await?, release_ns);
    let lease = leases
        .get(&fullname(release))
        .await
        .context("the operator's Lease")?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder.starts_with(&fullname(release)),
        "Lease held by {holder:?}"
    );
    Ok(())
}

/// Requests by the ServiceAccount that RBAC refused (a missing rule that the operator survives,
/// such as Events, shows up only here).
fn forbidden_requests(
    cp: &ControlPlane,
    sa_user: &str,
    since: jiff::Timestamp,
) -> Result<Vec<String>> {
    Ok(cp
        .audit_events_where(since, |e| e.username() == sa_user && e.code() == Some(403))?
        .iter()
        .map(|e| format!("{} {}", e.verb, e.request_uri))
        .collect())
}

/// The real operator under the chart's ServiceAccount, RBAC and both admission policies (the
/// approvals' and the one fencing its own writes), with restart targets bound in the workload
/// namespace as its admins would: a non-MFA session issued and rotated (a renewal request), a
/// Deployment restarted for each session, a role assumed and refreshed, and an MFA approval by an
/// approver, and the audit log shows not one request of the operator refused.
#[tokio::test]
async fn operator_works_with_the_charts_cluster_wide_rbac() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.write().await;
    let since = jiff::Timestamp::now();
    let sts = StsDouble::start(StsDoubleConfig {
        returned_role_lifetime: Some(Duration::from_secs(6)),
        ..Default::default()
    })?;
    let role = sts.add_role(testkit::sts_double::RoleSpec::named("deployer"));
    let user = sts.default_user();
    let release_ns = cp.new_namespace("install-rbac").await?;
    let ns = workload(cp, "rbac-workload", &sts).await?;
    let release = release_name();
    let f = fullname(&release);
    let values = json!({
        "stsEndpoint": sts.endpoint(),
        "allowedStsEndpoints": ["http://127.0.0.1:*"],
        "logFormat": "text",
        "approvalPolicy": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        "extraArgs": ["--sts-timeout=3s"],
    });
    let (docs, _cleanup) = install(cp, &release, &release_ns, &values).await?;
    let admin = cp.admin_client().await?;
    // The namespace's admins let the operator restart their workloads; alice approves there.
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: sts-session-operator-restarts, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-restart-targets}}
subjects: [{{kind: ServiceAccount, name: {f}, namespace: {release_ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-approves, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-approve}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: legacy, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: legacy}}}}
  template:
    metadata: {{labels: {{app: legacy}}}}
    spec: {{containers: [{{name: legacy, image: "registry.example/legacy:1"}}]}}
"#
    ))
    .await?;
    // Restarts are opt-in per namespace: the operator may patch workloads here, not elsewhere.
    let sa_user = format!("system:serviceaccount:{release_ns}:{f}");
    for kind in ["deployments", "statefulsets", "daemonsets"] {
        let deadline = tokio::time::Instant::now() + T;
        while !access_allowed(&admin, &sa_user, &release_ns, "patch", kind, Some(&ns)).await? {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the opt-in binding never took effect"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for elsewhere in [release_ns.as_str(), "default", "kube-system"] {
            ensure!(
                !access_allowed(
                    &admin,
                    &sa_user,
                    &release_ns,
                    "patch",
                    kind,
                    Some(elsewhere)
                )
                .await?,
                "the operator may patch {kind} in {elsewhere}, which did not opt in"
            );
        }
    }
    let op = start_operator(cp, &docs, &release_ns, &release).await?;
    wait_ready(cp, &ns, "app", &op).await?;
    assert_secret_and_event(cp, &ns).await?;
    // /metrics needs a reader's token (admin's client certificate is no token: a test user).
    let metrics = http_get_auth(op.metrics_port, "/metrics", None).await?;
    ensure!(
        metrics.starts_with("401"),
        "/metrics without a token:\n{metrics}"
    );
    assert_lease_held(cp, &release_ns, &release).await?;

    // A rollout restart: "app" gets a restart target; a renewal request rotates its session,
    // and the Deployment is restarted for the new one.
    let api = sessiontokens(&admin, &ns);
    let key = |st: &DynamicObject| {
        s(
            &serde_json::to_value(st).unwrap_or_default(),
            "/status/accessKeyId",
        )
        .to_string()
    };
    let first = key(&api.get("app").await?);
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"spec": {"rolloutRestartTargets": [{"kind": "Deployment", "name": "legacy"}]}}),
        ),
    )
    .await?;
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"stssession.dev/renew-requested-at": jiff::Timestamp::now().to_string()}}})),
    )
    .await?;
    let deployments = workloads(&admin, &ns, "deployments", "Deployment");
    let deadline = tokio::time::Instant::now() + T;
    let second = loop {
        let now = key(&api.get("app").await?);
        let restarted_for = serde_json::to_value(deployments.get("legacy").await?)?
            .pointer("/spec/template/metadata/annotations/sessiontoken.stssession.dev~1app")
            .and_then(Value::as_str)
            .map(String::from);
        if now != first && restarted_for.as_deref() == Some(now.as_str()) {
            break now;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no rotation with a restart (first session {first}, now {now}, the Deployment restarted for {restarted_for:?}); operator log:\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("rotated {first} -> {second}, Deployment restarted for it");

    // A role, assumed and refreshed (the double returns 6 s role credentials).
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": "role"},
            "spec": {"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "iam-keys"}},
                     "assumeRole": {"roleArn": role.arn}},
        }))?,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let assumed = sts
            .calls()
            .iter()
            .filter(|c| c.action == "AssumeRole" && c.issued_access_key_id.is_some())
            .count();
        if assumed >= 2 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the role was not refreshed ({assumed} AssumeRole); operator log:\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ready(cp, &ns, "role", &op).await?;

    // An MFA approval, by alice (the approver role; the approval policy in force).
    let mut mfa = session_token("mfa", true, json!({}))?;
    mfa.data["spec"]["mfa"]["serialNumber"] = json!(user.serial_number());
    api.create(&PostParams::default(), &mfa).await?;
    let into_window = jiff::Timestamp::now().as_millisecond().rem_euclid(30_000);
    if into_window > 27_000 {
        tokio::time::sleep(Duration::from_millis((30_000 - into_window + 200) as u64)).await;
    }
    let alice = cp.client_as("alice").await?;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        // RBAC and the policy reach the API server's caches asynchronously.
        match annotate(&alice, &ns, "mfa", &user.totp_code_now(), "alice").await {
            Ok(()) => break,
            Err(kube::Error::Api(e)) if e.code == 403 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("alice approving: {e}"),
        }
    }
    wait_ready(cp, &ns, "mfa", &op).await?;
    let mfa = serde_json::to_value(api.get("mfa").await?)?;
    ensure!(
        s(&mfa, "/status/lastApproval/approvedBy") == "alice",
        "status.lastApproval: {:?}",
        mfa.pointer("/status/lastApproval")
    );
    ensure!(
        sts.calls().iter().any(|c| c.code_accepted == Some(true)),
        "no MFA code reached STS"
    );

    let refused = forbidden_requests(cp, &sa_user, since)?;
    ensure!(
        refused.is_empty(),
        "requests the chart's RBAC or admission policies refused: {refused:#?}\noperator log:\n{}",
        op.process.log_tail(40)
    );
    let requests = cp.audit_events_where(since, |e| e.username() == sa_user)?;
    ensure!(
        !requests.is_empty(),
        "no requests by {sa_user} in the audit log"
    );
    eprintln!(
        "the operator made {} requests, {} writes, none refused",
        requests.len(),
        requests.iter().filter(|e| e.is_write()).count()
    );
    Ok(())
}

#[tokio::test]
async fn operator_with_namespace_scoped_chart_rbac_ignores_other_namespaces() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await;
    let since = jiff::Timestamp::now();
    let sts = StsDouble::start(StsDoubleConfig::default())?;
    let release_ns = cp.new_namespace("install-rbac-ns").await?;
    let watched = workload(cp, "rbac-watched", &sts).await?;
    let unwatched = workload(cp, "rbac-unwatched", &sts).await?;
    let release = release_name();
    let values = json!({
        "watchNamespaces": [watched],
        "stsEndpoint": sts.endpoint(),
        "allowedStsEndpoints": ["http://127.0.0.1:*"],
        "logFormat": "text",
        "approvalPolicy": {"enabled": false},
    });
    let (docs, _cleanup) = install(cp, &release, &release_ns, &values).await?;
    let op = start_operator(cp, &docs, &release_ns, &release).await?;
    wait_issued(cp, &watched, &op).await?;
    assert_secret_and_event(cp, &watched).await?;
    assert_lease_held(cp, &release_ns, &release).await?;

    // The unlisted namespace is left alone: no status, no Secret, no STS call for it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = cp.admin_client().await?;
    let other = sessiontokens(&admin, &unwatched).get("app").await?;
    let status = serde_json::to_value(&other)?.get("status").cloned();
    ensure!(
        status
            .as_ref()
            .is_none_or(|s| s.is_null() || *s == json!({})),
        "the unlisted namespace's SessionToken got a status: {status:?}"
    );
    ensure!(
        Api::<Secret>::namespaced(admin, &unwatched)
            .get_opt("app")
            .await?
            .is_none(),
        "the unlisted namespace got a Secret"
    );
    ensure!(
        sts.call_count() == 2,
        "{} STS calls; expected two (the watched namespace's, and again once its Secret was deleted)",
        sts.call_count()
    );

    let sa_user = format!("system:serviceaccount:{release_ns}:{}", fullname(&release));
    let refused = forbidden_requests(cp, &sa_user, since)?;
    ensure!(
        refused.is_empty(),
        "requests the chart's RBAC refused: {refused:#?}\noperator log:\n{}",
        op.process.log_tail(40)
    );
    Ok(())
}

/// `/metrics` as the chart serves it (kubebuilder's secure metrics): 401 without a token or with
/// one the API server does not know, 403 for users without `get` on the non-resource URL
/// `/metrics` (a test user, a ServiceAccount), 200 for a ServiceAccount bound to the chart's
/// `metrics-reader` ClusterRole; `/healthz` and `/readyz` open. The answers are kept: more
/// scrapes with the same token cost no more TokenReviews (audit log).
#[tokio::test]
async fn metrics_are_served_only_to_authorized_readers() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await;
    let sts = StsDouble::start(StsDoubleConfig::default())?;
    let release_ns = cp.new_namespace("install-metrics").await?;
    let ns = workload(cp, "metrics-workload", &sts).await?;
    let release = release_name();
    let f = fullname(&release);
    let values = json!({
        "watchNamespaces": [ns],
        "stsEndpoint": sts.endpoint(),
        "allowedStsEndpoints": ["http://127.0.0.1:*"],
        "logFormat": "text",
        "approvalPolicy": {"enabled": false},
    });
    let (docs, _cleanup) = install(cp, &release, &release_ns, &values).await?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{release}-scraper")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{f}-metrics-reader")},
        "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": release_ns}],
    });
    let _binding_cleanup = Cleanup {
        kubeconfig: cp.admin_kubeconfig().to_path_buf(),
        objects: vec![binding.clone()],
    };
    cp.apply_yaml(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: scraper, namespace: {release_ns}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {release_ns}}}\n---\n{}",
        serde_json::to_string(&binding)?
    ))
    .await?;
    // RBAC reaches the authorizer's cache asynchronously: wait until it says yes for the scraper
    // (a refusal would be kept by the operator for 30 s).
    let admin = cp.admin_client().await?;
    let scraper_user = format!("system:serviceaccount:{release_ns}:scraper");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let sar: SubjectAccessReview = serde_json::from_value(json!({"spec": {
            "user": scraper_user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{release_ns}"), "system:authenticated"],
            "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
        }}))?;
        let answer = Api::<SubjectAccessReview>::all(admin.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        if answer.status.is_some_and(|s| s.allowed) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the scraper's binding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let op = start_operator(cp, &docs, &release_ns, &release).await?;
    wait_issued(cp, &ns, &op).await?;
    let port = op.metrics_port;

    for path in ["/healthz", "/readyz"] {
        let r = http_get_auth(port, path, None).await?;
        ensure!(r.starts_with("200"), "{path} without a token:\n{r}");
    }
    let status = |r: &str| r.split('\n').next().unwrap_or_default().to_string();
    let r = http_get_auth(port, "/metrics", None).await?;
    ensure!(
        status(&r) == "401" && !r.contains("sts_session"),
        "no token:\n{r}"
    );
    let r = http_get_auth(port, "/metrics", Some("not-a-token-the-api-server-knows")).await?;
    ensure!(status(&r) == "401", "an unknown token:\n{r}");
    let mallory = testkit::control_plane::token_for("mallory");
    let r = http_get_auth(port, "/metrics", Some(&mallory)).await?;
    ensure!(
        status(&r) == "403" && !r.contains("sts_session"),
        "mallory:\n{r}"
    );
    let stranger = service_account_token(cp, &release_ns, "stranger").await?;
    let r = http_get_auth(port, "/metrics", Some(&stranger)).await?;
    ensure!(
        status(&r) == "403",
        "a ServiceAccount without the role:\n{r}"
    );
    let since = jiff::Timestamp::now();
    let scraper = service_account_token(cp, &release_ns, "scraper").await?;
    let r = http_get_auth(port, "/metrics", Some(&scraper)).await?;
    ensure!(
        status(&r) == "200" && r.contains("sts_session_ready_status"),
        "the metrics reader:\n{r}"
    );

    // Kept: five more scrapes within 30 s, no more reviews.
    let sa_user = format!("system:serviceaccount:{release_ns}:{f}");
    let reviews = || -> Result<usize> {
        Ok(cp
            .audit_events_where(since, |e| {
                e.username() == sa_user && e.resource() == "tokenreviews" && e.verb == "create"
            })?
            .len())
    };
    cp.wait_for_audit_event(since, T, |e| {
        e.username() == sa_user && e.resource() == "tokenreviews"
    })
    .await?;
    let first = reviews()?;
    for _ in 0..5 {
        let r = http_get_auth(port, "/metrics", Some(&scraper)).await?;
        ensure!(status(&r) == "200", "a repeated scrape:\n{r}");
    }
    // Refusals are kept too.
    for _ in 0..3 {
        let r = http_get_auth(port, "/metrics", Some(&stranger)).await?;
        ensure!(status(&r) == "403", "a repeated refusal:\n{r}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reviews()?;
    eprintln!(
        "TokenReviews: {first} for the first scrape, {after} after 5 more scrapes and 3 more refusals"
    );
    ensure!(
        first == 1 && after == first,
        "answers not kept: {first} TokenReviews for the first scrape, {after} after 8 more requests"
    );
    let refused = forbidden_requests(cp, &sa_user, since)?;
    ensure!(refused.is_empty(), "requests refused: {refused:#?}");
    // The tokens it reviewed are nowhere in its log.
    let log = op.process.read_log();
    for (whose, token) in [
        ("scraper", &scraper),
        ("stranger", &stranger),
        ("mallory", &mallory),
    ] {
        ensure!(
            !log.contains(token.as_str()),
            "the {whose}'s token is in the operator's log"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Guarded approvals.

/// Sets the approval annotations as `kubectl annotate` does (a merge patch).
async fn annotate(
    client: &Client,
    ns: &str,
    name: &str,
    code: &str,
    by: &str,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": {CODE: code, APPROVED_BY: by}}});
    sessiontokens(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// The API error of a refused request (fails if it was admitted).
fn refused(result: Result<(), kube::Error>, what: &str) -> Result<kube::core::Status> {
    match result {
        Ok(()) => bail!("{what}: admitted, expected a refusal"),
        Err(kube::Error::Api(e)) => Ok(*e),
        Err(e) => bail!("{what}: unexpected error {e}"),
    }
}

async fn annotations(client: &Client, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    Ok(sessiontokens(client, ns)
        .get(name)
        .await?
        .metadata
        .annotations
        .unwrap_or_default())
}

#[tokio::test]
async fn approval_policy_admits_only_approvers_naming_themselves() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await;
    let (release_ns, ns, f, _cleanup) = install_guarding(cp, "approvals").await?;
    let admin = cp.admin_client().await?;

    // alice: the chart's approver ClusterRole, in this namespace. bob: an editor (get/list/patch/
    // update), no approve.
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-approves, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-approve}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: sessiontoken-editor, namespace: {ns}}}
rules:
  - apiGroups: [stssession.dev]
    resources: [sessiontokens]
    verbs: [get, list, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bob-edits, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sessiontoken-editor}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}]
"#
    ))
    .await?;
    let sts_api = sessiontokens(&admin, &ns);
    for name in [
        "probe",
        "alice-ok",
        "alice-names-bob",
        "bob",
        "mallory",
        "csa",
        "ssa",
        "pending",
    ] {
        sts_api
            .create(
                &PostParams::default(),
                &session_token(name, true, json!({}))?,
            )
            .await?;
    }
    let alice = cp.client_as("alice").await?;
    let bob = cp.client_as("bob").await?;
    let mallory = cp.client_as("mallory").await?;

    // Policies and RBAC reach the API server's caches asynchronously: wait until the policy
    // refuses alice naming bob (each try with a new code, since an unchanged code is no approval).
    first_policy_refusal("alice naming bob", |n| {
        let alice = alice.clone();
        let ns = ns.clone();
        async move { annotate(&alice, &ns, "probe", &(100_000 + n).to_string(), "bob").await }
    })
    .await?;

    // 1. alice, naming herself: admitted.
    annotate(&alice, &ns, "alice-ok", "123456", "alice")
        .await
        .context("alice approving as alice")?;
    let a = annotations(&admin, &ns, "alice-ok").await?;
    assert_eq!(
        (
            a.get(CODE).map(String::as_str),
            a.get(APPROVED_BY).map(String::as_str)
        ),
        (Some("123456"), Some("alice"))
    );

    // 2. alice, naming bob: refused, saying why.
    let e = refused(
        annotate(&alice, &ns, "alice-names-bob", "234567", "bob").await,
        "alice naming bob",
    )?;
    assert_eq!(e.code, 403, "{e:?}");
    assert!(
        e.message.contains(&format!("{f}-approvals")),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(r#"stssession.dev/approved-by annotation must name the user who sets the token code: it is "bob", but the request comes from "alice""#),
        "{}",
        e.message
    );
    assert!(
        !annotations(&admin, &ns, "alice-names-bob")
            .await?
            .contains_key(CODE)
    );

    // 1b. Approving is all alice may do: her `patch` does not reach the spec, labels or other
    // annotations (that needs `update`), not even alongside an approval.
    for (what, patch) in [
        (
            "the role",
            json!({"spec": {"assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/admin"}}}),
        ),
        (
            "the source Secret",
            json!({"spec": {"sourceCredentials": {"secretRef": {"name": "other-keys"}}}}),
        ),
        (
            "the restart targets",
            json!({"spec": {"rolloutRestartTargets": [{"kind": "Deployment", "name": "anything"}]}}),
        ),
        (
            "a label",
            json!({"metadata": {"labels": {"touched-by": "alice"}}}),
        ),
        (
            "another annotation",
            json!({"metadata": {"annotations": {"note": "x"}}}),
        ),
        (
            "the role, with an approval",
            json!({"metadata": {"annotations": {CODE: "246810", APPROVED_BY: "alice"}}, "spec": {"durationSeconds": 900}}),
        ),
    ] {
        let e = refused(
            sessiontokens(&alice, &ns)
                .patch("alice-ok", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            &format!("alice (approver) changing {what}"),
        )?;
        assert_eq!(e.code, 403, "{e:?}");
        assert!(
            e.message.contains(&format!(r#"user "alice" may not change SessionToken {ns}/alice-ok beyond the stssession.dev/token-code and stssession.dev/approved-by annotations: that needs the verb "update""#)),
            "{what}: {}",
            e.message
        );
    }
    let st = serde_json::to_value(sts_api.get("alice-ok").await?)?;
    assert_eq!(st["spec"]["durationSeconds"], 3600);
    assert!(st.pointer("/spec/assumeRole").is_none(), "{st}");

    // 3. bob (an editor) may change SessionTokens (a label, the spec) but not approve.
    let label = json!({"metadata": {"labels": {"touched-by": "bob"}}});
    sessiontokens(&bob, &ns)
        .patch("bob", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .context("bob labelling")?;
    sessiontokens(&bob, &ns)
        .patch(
            "bob",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"durationSeconds": 7200}})),
        )
        .await
        .context("bob (editor) changing the spec")?;
    let e = refused(
        annotate(&bob, &ns, "bob", "345678", "bob").await,
        "bob approving",
    )?;
    assert_eq!(e.code, 403, "{e:?}");
    assert!(
        e.message.contains(&format!(r#"user "bob" may not approve SessionToken {ns}/bob: setting the stssession.dev/token-code annotation needs the verb "approve""#)),
        "{}",
        e.message
    );
    // ... nor re-attribute alice's pending approval to himself.
    annotate(&alice, &ns, "pending", "567890", "alice")
        .await
        .context("alice approving")?;
    let by_bob = json!({"metadata": {"annotations": {APPROVED_BY: "bob"}}});
    let e = refused(
        sessiontokens(&bob, &ns)
            .patch("pending", &PatchParams::default(), &Patch::Merge(&by_bob))
            .await
            .map(|_| ()),
        "bob re-attributing alice's code",
    )?;
    assert!(
        e.message.contains(r#"user "bob" may not approve"#),
        "{}",
        e.message
    );

    // 4. mallory has no rights at all: RBAC refuses before any policy runs.
    let e = refused(
        annotate(&mallory, &ns, "mallory", "456789", "mallory").await,
        "mallory approving",
    )?;
    assert_eq!(e.code, 403, "{e:?}");
    assert!(
        e.message
            .contains(r#"User "mallory" cannot patch resource "sessiontokens""#),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("ValidatingAdmissionPolicy"),
        "{}",
        e.message
    );

    // 5. Client-side `kubectl apply` carrying the code: refused, as alice, who could otherwise
    // approve. The same manifest applied server-side is admitted.
    let kubectl = kubectl()?;
    let scratch = ScratchDir::new("approvals")?;
    let manifest = |name: &str, code: &str| -> Result<PathBuf> {
        let mut st = serde_json::to_value(session_token(
            name,
            true,
            json!({CODE: code, APPROVED_BY: "alice"}),
        )?)?;
        st["metadata"]["namespace"] = json!(ns);
        let path = scratch.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&st)?)?;
        Ok(path)
    };
    let alice_kubeconfig = cp.kubeconfig_for("alice");
    let out = run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&alice_kubeconfig)
        .arg("apply")
        .arg("-f")
        .arg(manifest("csa", "678901")?))?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "client-side kubectl apply with a code was admitted:\n{}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("must not be set with client-side `kubectl apply`"),
        "{stderr}"
    );
    assert!(!annotations(&admin, &ns, "csa").await?.contains_key(CODE));
    let out = run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&alice_kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(manifest("ssa", "789012")?))?;
    ensure!(
        out.status.success(),
        "server-side kubectl apply by alice refused:\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        annotations(&admin, &ns, "ssa")
            .await?
            .get(CODE)
            .map(String::as_str),
        Some("789012")
    );

    // 6. The operator's claim, as the chart's ServiceAccount (no approve verb): a JSON patch that
    // tests the code and removes both annotations. Admitted.
    let token = service_account_token(cp, &release_ns, &f).await?;
    let operator = cp.client_with_token(&token).await?;
    let claim: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/annotations/stssession.dev~1token-code", "value": "123456"},
        {"op": "remove", "path": "/metadata/annotations/stssession.dev~1token-code"},
        {"op": "remove", "path": "/metadata/annotations/stssession.dev~1approved-by"},
    ]))?;
    let pp = PatchParams {
        field_manager: Some("sts-session-operator".into()),
        ..Default::default()
    };
    sessiontokens(&operator, &ns)
        .patch("alice-ok", &pp, &Patch::<()>::Json(claim))
        .await
        .context("the operator's claim")?;
    let a = annotations(&admin, &ns, "alice-ok").await?;
    assert!(
        !a.contains_key(CODE) && !a.contains_key(APPROVED_BY),
        "{a:?}"
    );

    // 7. CREATE: any code counts. admin may approve (system:masters) but must name itself.
    let e = refused(
        sts_api
            .create(
                &PostParams::default(),
                &session_token(
                    "created-for-alice",
                    true,
                    json!({CODE: "890123", APPROVED_BY: "alice"}),
                )?,
            )
            .await
            .map(|_| ()),
        "admin creating with approved-by=alice",
    )?;
    assert!(
        e.message
            .contains(r#"it is "alice", but the request comes from "admin""#),
        "{}",
        e.message
    );
    sts_api
        .create(
            &PostParams::default(),
            &session_token(
                "created-by-admin",
                true,
                json!({CODE: "901234", APPROVED_BY: "admin"}),
            )?,
        )
        .await
        .context("admin creating with approved-by=admin")?;
    let e = refused(
        sts_api
            .create(
                &PostParams::default(),
                &session_token("created-no-approver", true, json!({CODE: "012345"}))?,
            )
            .await
            .map(|_| ()),
        "admin creating without approved-by",
    )?;
    assert!(e.message.contains("it is missing"), "{}", e.message);

    // 8. The binding's namespaceSelector keeps the policy to this namespace.
    let elsewhere = sessiontokens(&admin, &release_ns);
    elsewhere
        .create(
            &PostParams::default(),
            &session_token(
                "unguarded",
                true,
                json!({CODE: "111111", APPROVED_BY: "bob"}),
            )?,
        )
        .await
        .context("outside the selected namespace the policy must not apply")?;
    Ok(())
}

/// Only the operator (the chart's ServiceAccount) may add or change the annotation
/// `stssession.dev/token-code-claimed-at`, its record of a claimed code: a forged one would make
/// the operator report an interruption that never happened, or (a time at the end of the
/// calendar) trip its time arithmetic. Removing it is admitted (it can only hide an unrecorded
/// interruption, never spend or reuse a code; the operator never removes it, so refusing would
/// break `kubectl replace` of a user's own manifest).
#[tokio::test]
async fn approval_policy_lets_only_the_operator_mark_a_claim() -> Result<()> {
    const CLAIMED_AT: &str = "stssession.dev/token-code-claimed-at";
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await;
    let (release_ns, ns, f, _cleanup) = install_guarding(cp, "claims").await?;
    let operator_user = format!("system:serviceaccount:{release_ns}:{f}");
    let admin = cp.admin_client().await?;

    // alice may do anything to SessionTokens here, approve included.
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: sessiontoken-owner, namespace: {ns}}}
rules:
  - apiGroups: [stssession.dev]
    resources: [sessiontokens, sessiontokens/status]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-owns, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sessiontoken-owner}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]
"#
    ))
    .await?;
    let sts_api = sessiontokens(&admin, &ns);
    for name in ["probe", "claimed", "by-admin"] {
        sts_api
            .create(
                &PostParams::default(),
                &session_token(name, true, json!({}))?,
            )
            .await?;
    }
    let alice = cp.client_as("alice").await?;
    let set = |client: &Client, name: &'static str, value: Value| {
        let api = sessiontokens(client, &ns);
        async move {
            let patch = json!({"metadata": {"annotations": {CLAIMED_AT: value}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    };

    // Wait until the policy is in force (each try a new value: an unchanged one is no mark).
    first_policy_refusal(&format!("alice setting {CLAIMED_AT}"), |n| {
        set(
            &alice,
            "probe",
            json!(format!("2026-01-01T00:00:{:02}Z", n % 60)),
        )
    })
    .await?;

    // 1. alice may not add it, whatever the value, saying why.
    for value in ["9999-12-30T21:59:59Z", "x", ""] {
        let e = refused(
            set(&alice, "claimed", json!(value)).await,
            &format!("alice adding {CLAIMED_AT}={value:?}"),
        )?;
        assert_eq!(e.code, 403, "{e:?}");
        assert!(
            e.message.contains(&format!(
                r#"only the operator ({operator_user}) may set the stssession.dev/token-code-claimed-at annotation, its record of a claimed token code; the request comes from "alice""#
            )),
            "{}",
            e.message
        );
    }
    // ... nor create a SessionToken carrying it.
    let e = refused(
        sessiontokens(&alice, &ns)
            .create(
                &PostParams::default(),
                &session_token(
                    "born-claimed",
                    true,
                    json!({CLAIMED_AT: "2026-01-01T00:00:00Z"}),
                )?,
            )
            .await
            .map(|_| ()),
        "alice creating a SessionToken with the annotation",
    )?;
    assert!(e.message.contains("only the operator"), "{}", e.message);

    // 2. The operator's claim as it makes it (as the chart's ServiceAccount): test the code,
    // remove it and approved-by, add the claim time. Admitted.
    annotate(&alice, &ns, "claimed", "123456", "alice")
        .await
        .context("alice approving")?;
    let token = service_account_token(cp, &release_ns, &f).await?;
    let operator = cp.client_with_token(&token).await?;
    let pp = PatchParams {
        field_manager: Some("sts-session-operator".into()),
        ..Default::default()
    };
    let claim = |value: &str| -> Result<json_patch::Patch> {
        Ok(serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/annotations/stssession.dev~1token-code", "value": "123456"},
            {"op": "remove", "path": "/metadata/annotations/stssession.dev~1token-code"},
            {"op": "remove", "path": "/metadata/annotations/stssession.dev~1approved-by"},
            {"op": "add", "path": "/metadata/annotations/stssession.dev~1token-code-claimed-at", "value": value},
        ]))?)
    };
    sessiontokens(&operator, &ns)
        .patch(
            "claimed",
            &pp,
            &Patch::<()>::Json(claim("2026-11-29T10:00:00Z")?),
        )
        .await
        .context("the operator's claim")?;
    let a = annotations(&admin, &ns, "claimed").await?;
    assert_eq!(
        a.get(CLAIMED_AT).map(String::as_str),
        Some("2026-11-29T10:00:00Z"),
        "{a:?}"
    );

    // 3. alice may not change it; other edits (the mark unchanged) are admitted.
    let e = refused(
        set(&alice, "claimed", json!("9999-12-30T21:59:59Z")).await,
        "alice changing the claim time",
    )?;
    assert!(e.message.contains("only the operator"), "{}", e.message);
    let label = json!({"metadata": {"labels": {"touched-by": "alice"}}});
    sessiontokens(&alice, &ns)
        .patch("claimed", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .context("alice labelling a claimed SessionToken")?;

    // 4. Nor may admin (system:masters skips authorization, not admission).
    let e = refused(
        set(&admin, "by-admin", json!("2026-11-29T10:00:00Z")).await,
        "admin adding the claim time",
    )?;
    assert!(
        e.message.contains(r#"the request comes from "admin""#),
        "{}",
        e.message
    );

    // 5. The operator may change it (a new claim over an old one).
    let remark: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations/stssession.dev~1token-code-claimed-at", "value": "2026-11-29T11:00:00Z"},
    ]))?;
    sessiontokens(&operator, &ns)
        .patch("claimed", &pp, &Patch::<()>::Json(remark))
        .await
        .context("the operator changing the claim time")?;

    // 6. Removing it is admitted, for alice too.
    set(&alice, "claimed", Value::Null)
        .await
        .context("alice removing the claim time")?;
    assert!(
        !annotations(&admin, &ns, "claimed")
            .await?
            .contains_key(CLAIMED_AT)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The operator's own writes, fenced (operatorPolicy).

fn workloads(client: &Client, ns: &str, plural: &str, kind: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A status write as the operator makes it (a JSON Patch replacing the whole status).
async fn write_status(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    let ops = json!([{"op": "add", "path": "/status", "value": {"observedGeneration": 1}}]);
    api.patch_status(
        name,
        &PatchParams {
            field_manager: Some("sts-session-operator".into()),
            ..Default::default()
        },
        &Patch::<()>::Json(serde_json::from_value(ops)?),
    )
    .await?;
    Ok(())
}

/// Deployment `web` in `ns`, a restart target.
fn web_deployment(ns: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: "registry.example/web:1"}}]}}
"#
    )
}

/// An Opaque Secret `name` with these labels and one key.
fn labelled_secret(name: &str, labels: &[(&str, &str)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_string());
    secret.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    secret.string_data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    secret
}

/// A release whose `operatorPolicy` is under test: a client with the operator's real
/// ServiceAccount token and all the RBAC the chart gives it (restart targets bound in the
/// workload namespace `ns`); the approval policies scoped away from everything (they are not
/// what these tests are about). Tests using it hold `EVERY_NAMESPACE` for reading: deploy/'s and
/// default-valued releases' approval policies cover every namespace and would refuse what this
/// operator identity (of another release) may do.
struct Fence {
    release_ns: String,
    ns: String,
    /// The release's full name (the ServiceAccount's name).
    f: String,
    admin: Client,
    op: Client,
    _cleanup: Cleanup,
}

impl Fence {
    async fn install(cp: &ControlPlane, prefix: &str) -> Result<Fence> {
        let release_ns = cp.new_namespace(&format!("install-{prefix}")).await?;
        let ns = cp.new_namespace(prefix).await?;
        let release = release_name();
        let f = fullname(&release);
        let values = json!({
            "approvalPolicy": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}}},
            "rbac": {"rolloutRestartTargets": {"namespaces": [ns]}},
        });
        let (_docs, cleanup) = install(cp, &release, &release_ns, &values).await?;
        let token = service_account_token(cp, &release_ns, &f).await?;
        Ok(Fence {
            admin: cp.admin_client().await?,
            op: cp.client_with_token(&token).await?,
            release_ns,
            ns,
            f,
            _cleanup: cleanup,
        })
    }

    /// `e` is a refusal by the release's operator-writes policy (not by RBAC or another one).
    fn fenced(&self, e: &kube::core::Status, what: &str) -> Result<()> {
        let policy = format!("{}-operator-writes", self.f);
        ensure!(
            e.code == 403 && e.message.contains(&policy),
            "{what}: refused, but not by {policy}: {e:?}"
        );
        Ok(())
    }
}

/// The operator's real ServiceAccount token, with all the RBAC the chart gives it (restart
/// targets bound in the test's namespace), against the chart's `operatorPolicy`: every write the
/// operator makes passes (built with the operator's own functions: the claim patches, the
/// restart patch, its Secrets' labels), and what a stolen token would do is refused by the
/// policy (not by RBAC: the messages name it): a Deployment's image, replicas or labels, an
/// unlabelled Secret, a foreign Secret taken over or deleted, a SessionToken's spec or labels,
/// a token code set.
#[tokio::test]
async fn operator_policy_fences_the_operators_own_writes() -> Result<()> {
    use sts_session_operator::approval::{CLAIMED_AT_ANNOTATION, Claim};
    use sts_session_operator::crd::{
        APPROVED_BY_ANNOTATION, OWNER_UID_LABEL, RENEW_ANNOTATION, TOKEN_CODE_ANNOTATION,
    };
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await; // (Fence)
    let fence = Fence::install(cp, "fence").await?;
    let (ns, admin, op) = (&fence.ns, &fence.admin, &fence.op);
    let pp = PatchParams {
        field_manager: Some("sts-session-operator".into()),
        ..Default::default()
    };
    let fenced = |e: &kube::core::Status, what: &str| fence.fenced(e, what);
    let secrets_op: Api<Secret> = Api::namespaced(op.clone(), ns);
    let secrets_admin: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let secret = |name: &str, ours: bool| -> Result<Secret> {
        Ok(if ours {
            labelled_secret(
                name,
                &[
                    ("app.kubernetes.io/managed-by", "sts-session-operator"),
                    (OWNER_UID_LABEL, "0b4c-uid"),
                ],
            )
        } else {
            labelled_secret(name, &[("team", "a")])
        })
    };

    // Wait until the policy (and the RBAC) are in force: the operator creating an unlabelled
    // Secret is refused by the policy.
    let first = first_policy_refusal("the operator creating an unlabelled Secret", |n| {
        let (secrets, probe) = (
            secrets_op.clone(),
            labelled_secret(&format!("probe-{n}"), &[("team", "a")]),
        );
        async move {
            secrets
                .create(&PostParams::default(), &probe)
                .await
                .map(|_| ())
        }
    })
    .await?;
    fenced(&first, "an unlabelled Secret")?;
    ensure!(
        first
            .message
            .contains("may create only Opaque Secrets labelled as its own"),
        "{}",
        first.message
    );

    // -- Secrets ---------------------------------------------------------------------------
    // Its own: created, updated (server-side apply, as it writes them), deleted.
    secrets_op
        .create(&PostParams::default(), &secret("ours", true)?)
        .await
        .context("the operator creating a Secret of its own")?;
    let mut update = secret("ours", true)?;
    update.string_data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    secrets_op
        .patch(
            "ours",
            &PatchParams::apply("sts-session-operator").force(),
            &Patch::Apply(&update),
        )
        .await
        .context("the operator updating a Secret of its own")?;
    // Not even labelled, a Secret the token controller would fill with a ServiceAccount's token.
    let mut sa_token = secret("sa-token", true)?;
    sa_token.type_ = Some("kubernetes.io/service-account-token".into());
    sa_token.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/service-account.name".to_string(),
        "default".to_string(),
    )]));
    sa_token.string_data = None;
    let e = refused(
        secrets_op
            .create(&PostParams::default(), &sa_token)
            .await
            .map(|_| ()),
        "the operator creating a labelled service-account-token Secret",
    )?;
    fenced(&e, "a service-account-token Secret")?;
    // A foreign Secret: not taken over (labels added), not changed, not deleted.
    secrets_admin
        .create(&PostParams::default(), &secret("foreign", false)?)
        .await?;
    let take_over = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "sts-session-operator", OWNER_UID_LABEL: "0b4c-uid"}}, "stringData": {"k": "stolen"}});
    let e = refused(
        secrets_op
            .patch("foreign", &pp, &Patch::Merge(&take_over))
            .await
            .map(|_| ()),
        "the operator taking over a foreign Secret",
    )?;
    fenced(&e, "taking over a foreign Secret")?;
    let e = refused(
        secrets_op
            .delete("foreign", &Default::default())
            .await
            .map(|_| ()),
        "the operator deleting a foreign Secret",
    )?;
    fenced(&e, "deleting a foreign Secret")?;
    ensure!(secrets_admin.get_opt("foreign").await?.is_some());
    // Its own Secret may not be made foreign either (the label removed).
    let unlabel = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}});
    let e = refused(
        secrets_op
            .patch("ours", &pp, &Patch::Merge(&unlabel))
            .await
            .map(|_| ()),
        "the operator unlabelling its Secret",
    )?;
    fenced(&e, "unlabelling its own Secret")?;
    secrets_op
        .delete("ours", &Default::default())
        .await
        .context("the operator deleting a Secret of its own")?;

    // -- Workloads ---------------------------------------------------------------------------
    cp.apply_yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {{keep: "me"}}}}
    spec: {{containers: [{{name: web, image: "registry.example/web:1"}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec: {{containers: [{{name: db, image: "registry.example/db:1"}}]}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec: {{containers: [{{name: agent, image: "registry.example/agent:1"}}]}}
"#
    ))
    .await?;
    let now = jiff::Timestamp::now();
    for (plural, kind, name, long_name) in [
        ("deployments", "Deployment", "web", "app"),
        ("statefulsets", "StatefulSet", "db", &*"a".repeat(200)),
        ("daemonsets", "DaemonSet", "agent", "app"),
    ] {
        let api = workloads(op, ns, plural, kind);
        // The restart, exactly as the operator makes it (two of them: a second SessionToken's
        // annotation, and a long SessionToken name's hashed key).
        for st_name in ["app", long_name] {
            let restart = sts_session_operator::plan::restart_patch(st_name, "ASIAFENCETEST", now);
            api.patch(name, &pp, &Patch::Merge(&restart))
                .await
                .with_context(|| format!("the operator restarting {kind} {name}"))?;
        }
        // Anything else: refused.
        let image = json!({"spec": {"template": {"spec": {"containers": [{"name": name, "image": "evil.example/x:1"}]}}}});
        let e = refused(
            api.patch(name, &pp, &Patch::Strategic(&image))
                .await
                .map(|_| ()),
            &format!("the operator changing {kind} {name}'s image"),
        )?;
        fenced(&e, "an image")?;
        ensure!(e.message.contains("may only restart"), "{}", e.message);
        let sneak = json!({"spec": {"template": {"metadata": {"annotations": {"stssession.dev/restartedAt": "2026-01-01T00:00:00Z", "other": "x"}}}}});
        let e = refused(
            api.patch(name, &pp, &Patch::Merge(&sneak))
                .await
                .map(|_| ()),
            &format!("the operator adding another template annotation to {kind} {name}"),
        )?;
        fenced(&e, "another template annotation")?;
        let label = json!({"metadata": {"labels": {"owned": "by-operator"}}});
        let e = refused(
            api.patch(name, &pp, &Patch::Merge(&label))
                .await
                .map(|_| ()),
            &format!("the operator labelling {kind} {name}"),
        )?;
        fenced(&e, "a workload label")?;
    }
    let deployments = workloads(op, ns, "deployments", "Deployment");
    for (what, patch) in [
        ("replicas", json!({"spec": {"replicas": 5}})),
        (
            "the service account",
            json!({"spec": {"template": {"spec": {"serviceAccountName": "default"}}}}),
        ),
        (
            "a template annotation removed",
            json!({"spec": {"template": {"metadata": {"annotations": {"keep": null}}}}}),
        ),
    ] {
        let e = refused(
            deployments
                .patch("web", &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            &format!("the operator changing the Deployment's {what}"),
        )?;
        fenced(&e, what)?;
    }
    let web = workloads(admin, ns, "deployments", "Deployment")
        .get("web")
        .await?;
    let web = serde_json::to_value(&web)?;
    assert_eq!(
        web.pointer("/spec/template/spec/containers/0/image"),
        Some(&json!("registry.example/web:1"))
    );
    assert_eq!(
        web.pointer("/spec/template/metadata/annotations/sessiontoken.stssession.dev~1app"),
        Some(&json!("ASIAFENCETEST"))
    );
    // Other users are not fenced.
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.example/web:2"}]}}}});
    workloads(admin, ns, "deployments", "Deployment")
        .patch("web", &PatchParams::default(), &Patch::Strategic(&image))
        .await
        .context("admin changing the image")?;

    // -- SessionTokens -----------------------------------------------------------------------
    let admin_sts = sessiontokens(admin, ns);
    admin_sts
        .create(
            &PostParams::default(),
            &session_token(
                "st",
                true,
                json!({TOKEN_CODE_ANNOTATION: "123456", APPROVED_BY_ANNOTATION: "admin", "keep": "me"}),
            )?,
        )
        .await?;
    let op_sts = sessiontokens(op, ns);
    for (what, patch) in [
        ("spec", json!({"spec": {"durationSeconds": 7200}})),
        (
            "spec (the source Secret)",
            json!({"spec": {"sourceCredentials": {"secretRef": {"name": "foreign"}}}}),
        ),
        ("labels", json!({"metadata": {"labels": {"x": "y"}}})),
        (
            "another annotation",
            json!({"metadata": {"annotations": {"keep": null}}}),
        ),
        (
            "a token code",
            json!({"metadata": {"annotations": {TOKEN_CODE_ANNOTATION: "654321"}}}),
        ),
    ] {
        let e = refused(
            op_sts
                .patch("st", &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            &format!("the operator changing a SessionToken's {what}"),
        )?;
        fenced(&e, what)?;
        ensure!(e.message.contains("may only claim"), "{}", e.message);
    }
    // The claim, as the operator builds it.
    let rv = admin_sts
        .get("st")
        .await?
        .resource_version()
        .unwrap_or_default();
    let claim = Claim::new(
        TOKEN_CODE_ANNOTATION,
        &rv,
        &[APPROVED_BY_ANNOTATION],
        Some((CLAIMED_AT_ANNOTATION, jiff::Timestamp::now().to_string())),
    );
    let patch: json_patch::Patch = serde_json::from_value(claim.patch.clone())?;
    op_sts
        .patch("st", &pp, &Patch::<()>::Json(patch))
        .await
        .context("the operator's claim")?;
    let a = annotations(admin, ns, "st").await?;
    ensure!(
        !a.contains_key(TOKEN_CODE_ANNOTATION)
            && a.contains_key(CLAIMED_AT_ANNOTATION)
            && a.contains_key("keep"),
        "{a:?}"
    );
    // A renewal request claimed.
    admin_sts
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {RENEW_ANNOTATION: "2026-01-01T00:00:00Z"}}}),
            ),
        )
        .await?;
    let rv = admin_sts
        .get("st")
        .await?
        .resource_version()
        .unwrap_or_default();
    let claim = Claim::new(RENEW_ANNOTATION, &rv, &[], None);
    let patch: json_patch::Patch = serde_json::from_value(claim.patch.clone())?;
    op_sts
        .patch("st", &pp, &Patch::<()>::Json(patch))
        .await
        .context("the operator claiming a renewal request")?;
    // Status: not fenced.
    write_status(&op_sts, "st")
        .await
        .context("the operator writing status")?;
    // Nor may it create or delete one.
    let e = refused(
        op_sts.delete("st", &Default::default()).await.map(|_| ()),
        "the operator deleting a SessionToken",
    )?;
    ensure!(e.code == 403, "{e:?}"); // RBAC: it has no delete
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// AssumedRoles: `use` is a permission, and the operator only reads them.

/// `<release>-use` grants `use` (and `get`) on SessionTokens and aggregates into admin, not edit;
/// `<release>-edit` manages AssumedRoles too.
fn assert_use_and_edit_roles(docs: &[Value], f: &str) -> Result<()> {
    let use_role = find(docs, "ClusterRole", &format!("{f}-use"))?;
    ensure!(
        use_role["rules"]
            == json!([{"apiGroups": ["stssession.dev"], "resources": ["sessiontokens"], "verbs": ["use", "get"]}]),
        "{use_role}"
    );
    let labels = &use_role["metadata"]["labels"];
    ensure!(
        labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
            && labels
                .get("rbac.authorization.k8s.io/aggregate-to-edit")
                .is_none(),
        "the use role aggregates into admin only: {labels}"
    );
    let edit = find(docs, "ClusterRole", &format!("{f}-edit"))?;
    ensure!(
        edit["rules"][0]["resources"] == json!(["sessiontokens", "assumedroles"])
            && !edit.to_string().contains("\"use\""),
        "{edit}"
    );
    Ok(())
}

/// Repeats `attempt` (given 1, 2, ...) until the API server refuses it through a
/// ValidatingAdmissionPolicy, and returns that refusal: policies and RBAC reach its caches
/// asynchronously (until then an attempt may be admitted, or refused by RBAC).
async fn first_policy_refusal<F, Fut>(what: &str, mut attempt: F) -> Result<kube::core::Status>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let deadline = tokio::time::Instant::now() + T;
    for n in 1.. {
        match attempt(n).await {
            Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy") => {
                eprintln!("refusal: {}", e.message);
                return Ok(*e);
            }
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {} // RBAC not there yet
            Err(e) => bail!("unexpected error while waiting for the policy ({what}): {e}"),
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no policy ever refused {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what}: out of attempts")
}

/// A client of ServiceAccount `ns/name` (created here), with its real token, and its user name.
async fn service_account_client(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
) -> Result<(Client, String)> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(cp.admin_client().await?, ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let token = service_account_token(cp, ns, name).await?;
    Ok((
        cp.client_with_token(&token).await?,
        format!("system:serviceaccount:{ns}:{name}"),
    ))
}

/// A merge patch of an AssumedRole, the outcome only.
async fn patch_assumed_role(
    client: &Client,
    ns: &str,
    name: &str,
    patch: Value,
) -> Result<(), kube::Error> {
    assumedroles(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// For `assumed_roles_need_use_on_their_session_token`: ServiceAccounts `erin`, `uma` and `ada`
/// of `ns`, all bound to `<release>-edit`; `uma` also to `<release>-use`, `ada` to a Role granting
/// `use` on SessionToken `a` only. (client, user name) of each.
async fn use_identities(cp: &ControlPlane, ns: &str, f: &str) -> Result<[(Client, String); 3]> {
    let erin = service_account_client(cp, ns, "erin").await?;
    let uma = service_account_client(cp, ns, "uma").await?;
    let ada = service_account_client(cp, ns, "ada").await?;
    // The `use` grants first, the edit binding last: once it is in force, so are they.
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: uma-uses, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-use}}
subjects: [{{kind: ServiceAccount, name: uma, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: use-a, namespace: {ns}}}
rules: [{{apiGroups: [stssession.dev], resources: [sessiontokens], resourceNames: [a], verbs: [use]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ada-uses-a, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-a}}
subjects: [{{kind: ServiceAccount, name: ada, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: editors, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-edit}}
subjects:
  - {{kind: ServiceAccount, name: erin, namespace: {ns}}}
  - {{kind: ServiceAccount, name: uma, namespace: {ns}}}
  - {{kind: ServiceAccount, name: ada, namespace: {ns}}}
"#
    ))
    .await?;
    Ok([erin, uma, ada])
}

/// Creating an AssumedRole, or changing its spec, needs the verb `use` on the SessionToken it
/// draws on (the chart's `<release>-assumed-roles` policy asks the authorizer), with real
/// ServiceAccount identities that all may manage AssumedRoles (`<release>-edit`): `erin` without
/// `use`, `uma` with `<release>-use` bound in the namespace, `ada` with `use` on SessionToken `a`
/// only. Labels and annotations alone need no `use`; the SessionToken's namespace cannot even be
/// written down.
#[tokio::test]
async fn assumed_roles_need_use_on_their_session_token() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await;
    let (_release_ns, ns, f, _cleanup) = install_guarding(cp, "use").await?;
    let admin = cp.admin_client().await?;
    let [(erin, erin_name), (uma, _), (ada, _)] = use_identities(cp, &ns, &f).await?;
    for name in ["a", "b"] {
        sessiontokens(&admin, &ns)
            .create(
                &PostParams::default(),
                &session_token(name, true, json!({}))?,
            )
            .await?;
    }

    // erin (no `use`) creating an AssumedRole on `a`: refused, saying why.
    let e = first_policy_refusal("erin creating an AssumedRole", |n| {
        let api = assumedroles(&erin, &ns);
        async move {
            api.create(
                &PostParams::default(),
                &assumed_role(&format!("erin-{n}"), "a"),
            )
            .await
            .map(|_| ())
        }
    })
    .await?;
    ensure!(
        e.code == 403 && e.message.contains(&format!("{f}-assumed-roles")),
        "{e:?}"
    );
    ensure!(
        e.message.contains(&format!(r#"user "{erin_name}" may not use SessionToken {ns}/a for AssumedRole {ns}/erin-"#))
            && e.message.contains(&format!(r#"creating an AssumedRole needs the verb "use" on that SessionToken (sessiontokens.stssession.dev; ClusterRole {f}-use)"#)),
        "{}",
        e.message
    );

    // uma (`<release>-use` in the namespace) and ada (`use` on `a`) may.
    for (client, name, on) in [
        (&uma, "by-uma", "a"),
        (&uma, "uma-on-b", "b"),
        (&ada, "by-ada", "a"),
    ] {
        assumedroles(client, &ns)
            .create(&PostParams::default(), &assumed_role(name, on))
            .await
            .with_context(|| format!("{name}: creating an AssumedRole on {on} with `use`"))?;
    }
    // ada may change the role of hers (still on `a`), but not draw on `b`: neither a new
    // AssumedRole nor hers re-pointed.
    patch_assumed_role(
        &ada,
        &ns,
        "by-ada",
        json!({"spec": {"roleArn": "arn:aws:iam::123456789012:role/reader"}}),
    )
    .await
    .context("ada changing the role of an AssumedRole on a")?;
    let e = refused(
        assumedroles(&ada, &ns)
            .create(&PostParams::default(), &assumed_role("ada-on-b", "b"))
            .await
            .map(|_| ()),
        "ada creating an AssumedRole on b",
    )?;
    ensure!(
        e.message.contains(&format!(
            "SessionToken {ns}/b for AssumedRole {ns}/ada-on-b"
        )),
        "{}",
        e.message
    );
    let e = refused(
        patch_assumed_role(
            &ada,
            &ns,
            "by-ada",
            json!({"spec": {"sessionTokenRef": {"name": "b"}}}),
        )
        .await,
        "ada re-pointing her AssumedRole at b",
    )?;
    ensure!(
        e.message.contains(&format!("SessionToken {ns}/b for AssumedRole {ns}/by-ada: changing the spec of an AssumedRole needs the verb \"use\"")),
        "{}",
        e.message
    );
    let by_ada = serde_json::to_value(assumedroles(&admin, &ns).get("by-ada").await?)?;
    ensure!(
        by_ada["spec"]["sessionTokenRef"] == json!({"name": "a"}),
        "{by_ada}"
    );

    // erin may label and annotate uma's AssumedRole, but not change its spec.
    patch_assumed_role(
        &erin,
        &ns,
        "by-uma",
        json!({"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}}),
    )
    .await
    .context("erin (no `use`) labelling an AssumedRole")?;
    for (what, spec) in [
        (
            "its role",
            json!({"roleArn": "arn:aws:iam::123456789012:role/admin"}),
        ),
        (
            "its SessionToken",
            json!({"sessionTokenRef": {"name": "b"}}),
        ),
    ] {
        let e = refused(
            patch_assumed_role(&erin, &ns, "by-uma", json!({"spec": spec})).await,
            &format!("erin changing {what}"),
        )?;
        ensure!(
            e.code == 403 && e.message.contains("changing the spec of an AssumedRole"),
            "{what}: {}",
            e.message
        );
    }
    field_validation_keeps_the_session_token_in_the_namespace(&admin, &ns).await
}

/// `spec.sessionTokenRef.namespace` does not exist: refused with field validation Strict, and
/// dropped (the API server stores none) by default.
async fn field_validation_keeps_the_session_token_in_the_namespace(
    admin: &Client,
    ns: &str,
) -> Result<()> {
    let body = |name: &str| -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
            "metadata": {"name": name},
            "spec": {"sessionTokenRef": {"name": "a", "namespace": "kube-system"}, "roleArn": ROLE_ARN},
        }))?)
    };
    let url = format!("/apis/stssession.dev/v1alpha1/namespaces/{ns}/assumedroles");
    let request = hyper::Request::post(format!("{url}?fieldValidation=Strict"))
        .header("content-type", "application/json")
        .body(body("strict")?)?;
    match admin.request::<Value>(request).await {
        Err(kube::Error::Api(e)) => ensure!(
            e.message
                .contains(r#"unknown field "spec.sessionTokenRef.namespace""#),
            "{e:?}"
        ),
        other => bail!("a sessionTokenRef.namespace with fieldValidation=Strict: {other:?}"),
    }
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(body("lenient")?)?;
    let stored: Value = admin
        .request(request)
        .await
        .context("the default field validation")?;
    ensure!(
        stored["spec"]["sessionTokenRef"] == json!({"name": "a"}),
        "stored: {stored}"
    );
    Ok(())
}

/// The operator's ServiceAccount against `operatorPolicy`, for AssumedRoles: it writes Secrets
/// labelled with an AssumedRole's uid (not with neither uid label), restarts workloads with the
/// `assumedrole.stssession.dev/` annotation, writes AssumedRoles' status, and cannot create,
/// change or delete an AssumedRole: not with the chart's RBAC, and not even with a mistaken
/// binding granting it all verbs on them (the policy refuses).
#[tokio::test]
async fn operator_policy_fences_assumed_roles_and_their_secrets() -> Result<()> {
    let cp = control_plane().await;
    let _lock = EVERY_NAMESPACE.read().await; // (Fence)
    let fence = Fence::install(cp, "fence-ar").await?;
    let (ns, op) = (&fence.ns, &fence.op);
    let fenced = |e: &kube::core::Status, what: &str| fence.fenced(e, what);
    // -- Secrets: managed-by plus the AssumedRole's uid label is its own; managed-by alone is not.
    let secrets: Api<Secret> = Api::namespaced(op.clone(), ns);
    const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sts-session-operator");
    let secret = |name: &str, labels: &[(&str, &str)]| -> Secret {
        let mut secret = labelled_secret(name, labels);
        secret.metadata.annotations = Some(BTreeMap::from([(
            "stssession.dev/assumed-role".to_string(),
            "deployer".to_string(),
        )]));
        secret
    };
    let e = first_policy_refusal("the operator creating a Secret without a uid label", |n| {
        let (secrets, s) = (
            secrets.clone(),
            secret(&format!("probe-{n}"), &[MANAGED_BY]),
        );
        async move { secrets.create(&PostParams::default(), &s).await.map(|_| ()) }
    })
    .await?;
    fenced(&e, "a Secret with neither uid label")?;
    let ours = secret(
        "role-creds",
        &[MANAGED_BY, ("stssession.dev/assumed-role-uid", "5e1f-uid")],
    );
    secrets
        .create(&PostParams::default(), &ours)
        .await
        .context("the operator creating an AssumedRole's Secret")?;
    secrets
        .patch(
            "role-creds",
            &PatchParams::apply("sts-session-operator").force(),
            &Patch::Apply(&ours),
        )
        .await
        .context("the operator updating an AssumedRole's Secret")?;
    secrets
        .delete("role-creds", &Default::default())
        .await
        .context("the operator deleting an AssumedRole's Secret")?;

    // -- Restarts for an AssumedRole: its annotation is admitted, another one is not.
    cp.apply_yaml(&web_deployment(ns)).await?;
    let deployments = workloads(op, ns, "deployments", "Deployment");
    let restart = |key: &str| json!({"spec": {"template": {"metadata": {"annotations": {"stssession.dev/restartedAt": "2026-01-01T00:00:00Z", key: "ASIAFENCEROLE"}}}}});
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&restart("assumedrole.stssession.dev/deployer")),
        )
        .await
        .context("the operator restarting a Deployment for an AssumedRole")?;
    let e = refused(
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&restart("otherrole.stssession.dev/deployer")),
            )
            .await
            .map(|_| ()),
        "the operator setting another template annotation",
    )?;
    fenced(&e, "another template annotation")?;
    operator_writes_no_assumed_role(cp, &fence).await
}

/// The AssumedRole half of `operator_policy_fences_assumed_roles_and_their_secrets`.
async fn operator_writes_no_assumed_role(cp: &ControlPlane, fence: &Fence) -> Result<()> {
    let Fence {
        release_ns,
        ns,
        f,
        admin,
        op,
        ..
    } = fence;
    let fenced = |e: &kube::core::Status, what: &str| fence.fenced(e, what);
    assumedroles(admin, ns)
        .create(&PostParams::default(), &assumed_role("deployer", "app"))
        .await?;
    let ars = assumedroles(op, ns);
    let writes = |n: u32| {
        let ars = ars.clone();
        async move {
            let create = ars
                .create(
                    &PostParams::default(),
                    &assumed_role(&format!("by-operator-{n}"), "app"),
                )
                .await
                .map(|_| ());
            let update = ars
                .patch(
                    "deployer",
                    &PatchParams::default(),
                    &Patch::Merge(
                        &json!({"spec": {"roleArn": "arn:aws:iam::123456789012:role/admin"}}),
                    ),
                )
                .await
                .map(|_| ());
            let delete = ars
                .delete("deployer", &Default::default())
                .await
                .map(|_| ());
            [("create", create), ("update", update), ("delete", delete)]
        }
    };
    // With the chart's RBAC: refused (RBAC: it may only read them).
    for (verb, result) in writes(0).await {
        let e = refused(result, &format!("the operator: {verb} an AssumedRole"))?;
        ensure!(e.code == 403, "{verb}: {e:?}");
    }
    // Its status: admitted.
    write_status(&ars, "deployer")
        .await
        .context("the operator writing an AssumedRole's status")?;
    // A mistaken binding granting it everything on AssumedRoles: the policy still refuses.
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: too-much, namespace: {ns}}}
rules: [{{apiGroups: [stssession.dev], resources: [assumedroles], verbs: ["*"]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: too-much, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: too-much}}
subjects: [{{kind: ServiceAccount, name: {f}, namespace: {release_ns}}}]
"#
    ))
    .await?;
    first_policy_refusal("the operator deleting an AssumedRole", |_| {
        let ars = ars.clone();
        async move {
            ars.delete("deployer", &Default::default())
                .await
                .map(|_| ())
        }
    })
    .await?;
    for (verb, result) in writes(1).await {
        let e = refused(
            result,
            &format!("the operator (all verbs bound): {verb} an AssumedRole"),
        )?;
        fenced(&e, verb)?;
        ensure!(
            e.message
                .contains(&format!("may not {verb} AssumedRole {ns}/")),
            "{}",
            e.message
        );
    }
    ensure!(assumedroles(admin, ns).get_opt("deployer").await?.is_some());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table of docs/rbac-and-approvals.md ("Who may do what"), cell by cell.

/// One identity of the table: a client with its real ServiceAccount token, and its user name.
struct Who {
    column: &'static str,
    client: Client,
    user: String,
    groups: Vec<String>,
}

/// The table's rows: (the first cell, word for word, what the test does for it).
const TABLE_ROWS: &[(&str, &str)] = &[
    ("read SessionTokens", "read"),
    (
        "approve: set `stssession.dev/token-code` and `stssession.dev/approved-by` naming oneself",
        "approve",
    ),
    (
        "withdraw a pending approval (remove both annotations)",
        "withdraw",
    ),
    (
        "change a SessionToken's spec (role, source Secret, restart targets, ...)",
        "spec",
    ),
    (
        "change a SessionToken's labels or other annotations",
        "labels",
    ),
    ("create or delete SessionTokens", "create-delete"),
    (
        "mark a claim: set `stssession.dev/token-code-claimed-at`",
        "mark",
    ),
    ("write a SessionToken's status", "status"),
    ("update a Secret labelled as the operator's", "our-secret"),
    (
        "update any other Secret (e.g. the IAM keys)",
        "other-secret",
    ),
    (
        "restart a workload (the two restart annotations of its pod template)",
        "restart",
    ),
    ("change a workload's pod template (e.g. its image)", "image"),
    (
        "let the operator restart this namespace's workloads (bind `<release>-restart-targets`)",
        "opt-in",
    ),
    (
        "read `/metrics` (needs `<release>-metrics-reader`)",
        "metrics",
    ),
    ("read AssumedRoles", "ar-read"),
    (
        "create an AssumedRole drawing on a SessionToken (needs `use` on it)",
        "ar-create",
    ),
    (
        "create an AssumedRole drawing on a SessionToken one was granted `use` on",
        "ar-create-granted",
    ),
    (
        "change an AssumedRole's spec (role, Secret, the SessionToken it draws on, ...)",
        "ar-spec",
    ),
    (
        "change only an AssumedRole's labels or annotations",
        "ar-labels",
    ),
    ("delete AssumedRoles", "ar-delete"),
    ("write an AssumedRole's status", "ar-status"),
];
const TABLE_COLUMNS: [&str; 4] = ["operator", "approver", "editor", "namespace admin"];

/// The table in docs/rbac-and-approvals.md: (row text, [yes/no per column]).
fn rbac_table() -> Result<Vec<(String, [bool; 4])>> {
    let doc = std::fs::read_to_string(root().join("docs/rbac-and-approvals.md"))?;
    let start = doc
        .find("<!-- rbac-table")
        .context("docs/rbac-and-approvals.md has no <!-- rbac-table marker")?;
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut lines = doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('|'));
    let header = cells(lines.next().context("no table after the marker")?);
    ensure!(
        header.len() == 5 && header[1..] == TABLE_COLUMNS,
        "the table's columns: {header:?}"
    );
    let mut rows = Vec::new();
    for line in lines.skip(1) {
        let c = cells(line);
        ensure!(c.len() == 5, "a row without 5 cells: {line}");
        let mut yes = [false; 4];
        for (i, cell) in c[1..].iter().enumerate() {
            yes[i] = match cell.as_str() {
                "yes" => true,
                "no" => false,
                other => bail!("cell {other:?} of row {:?}: yes or no", c[0]),
            };
        }
        rows.push((c[0].clone(), yes));
    }
    Ok(rows)
}

/// Admitted (true) or refused with 403 (false); anything else is an error.
fn admitted<T>(r: Result<T, kube::Error>, what: &str) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(false),
        Err(e) => bail!("{what}: {e}"),
    }
}

/// For the AssumedRole rows: SessionToken `shared`, on which every identity of the table was
/// granted `use` (a Role naming it), and AssumedRole `ar-app`, drawing on `app` (created by the
/// table test), on which only namespace admins have `use` (the chart's `<release>-use`).
async fn assumed_role_table_setup(
    cp: &ControlPlane,
    ns: &str,
    release_ns: &str,
    f: &str,
) -> Result<()> {
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: use-shared, namespace: {ns}}}
rules: [{{apiGroups: [stssession.dev], resources: [sessiontokens], resourceNames: [shared], verbs: [use]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: use-shared, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-shared}}
subjects:
  - {{kind: ServiceAccount, name: {f}, namespace: {release_ns}}}
  - {{kind: ServiceAccount, name: approver, namespace: {ns}}}
  - {{kind: ServiceAccount, name: editor, namespace: {ns}}}
  - {{kind: ServiceAccount, name: nsadmin, namespace: {ns}}}
"#
    ))
    .await?;
    let admin = cp.admin_client().await?;
    sessiontokens(&admin, ns)
        .create(
            &PostParams::default(),
            &session_token("shared", false, json!({}))?,
        )
        .await?;
    assumedroles(&admin, ns)
        .create(&PostParams::default(), &assumed_role("ar-app", "app"))
        .await?;
    Ok(())
}

/// One cell of an AssumedRole row (dry runs), or None for another row.
async fn assumed_role_cell(
    action: &str,
    client: &Client,
    ns: &str,
    what: &str,
) -> Result<Option<bool>> {
    let api = assumedroles(client, ns);
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_post = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let patch = |body: Value| {
        let (api, dry) = (api.clone(), dry.clone());
        async move {
            api.patch("ar-app", &dry, &Patch::Merge(&body))
                .await
                .map(|_| ())
        }
    };
    let got = match action {
        "ar-read" => admitted(api.get("ar-app").await, what)?,
        "ar-create" => admitted(
            api.create(&dry_post, &assumed_role("another", "app")).await,
            what,
        )?,
        "ar-create-granted" => admitted(
            api.create(&dry_post, &assumed_role("another", "shared"))
                .await,
            what,
        )?,
        "ar-spec" => {
            let role = admitted(
                patch(json!({"spec": {"roleArn": "arn:aws:iam::123456789012:role/admin"}})).await,
                what,
            )?;
            let repoint = admitted(
                patch(json!({"spec": {"sessionTokenRef": {"name": "pending"}}})).await,
                what,
            )?;
            ensure!(
                role == repoint,
                "{what}: role {role}, re-pointing {repoint}"
            );
            role
        }
        "ar-labels" => {
            let labels = admitted(
                patch(json!({"metadata": {"labels": {"x": "y"}}})).await,
                what,
            )?;
            let annotations = admitted(
                patch(json!({"metadata": {"annotations": {"note": "x"}}})).await,
                what,
            )?;
            ensure!(
                labels == annotations,
                "{what}: labels {labels}, annotations {annotations}"
            );
            labels
        }
        "ar-delete" => {
            let dry_delete = kube::api::DeleteParams {
                dry_run: true,
                ..Default::default()
            };
            admitted(api.delete("ar-app", &dry_delete).await, what)?
        }
        "ar-status" => admitted(
            api.patch_status(
                "ar-app",
                &dry,
                &Patch::Merge(&json!({"status": {"observedGeneration": 1}})),
            )
            .await,
            what,
        )?,
        _ => return Ok(None),
    };
    Ok(Some(got))
}

#[tokio::test]
async fn the_rbac_table_in_the_docs_is_what_the_api_server_enforces() -> Result<()> {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::api::DeleteParams;
    let table = rbac_table()?;
    let known: BTreeSet<&str> = TABLE_ROWS.iter().map(|(row, _)| *row).collect();
    let shown: BTreeSet<&str> = table.iter().map(|(row, _)| row.as_str()).collect();
    ensure!(
        known == shown,
        "the table's rows differ from the ones this test checks: only in the docs {:?}, only here {:?}",
        shown.difference(&known).collect::<Vec<_>>(),
        known.difference(&shown).collect::<Vec<_>>()
    );

    let cp = control_plane().await;
    // The chart's edit and approve ClusterRoles aggregate into the built-in admin and edit.
    let _lock = EVERY_NAMESPACE.write().await;
    let (release_ns, ns, f, _cleanup) = install_guarding(cp, "table").await?;
    let admin = cp.admin_client().await?;
    cp.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: approver, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: editor, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: nsadmin, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: approver, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-approve}}
subjects: [{{kind: ServiceAccount, name: approver, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: editor, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{kind: ServiceAccount, name: editor, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: nsadmin, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}}
subjects: [{{kind: ServiceAccount, name: nsadmin, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: sts-session-operator-restarts, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {f}-restart-targets}}
subjects: [{{kind: ServiceAccount, name: {f}, namespace: {release_ns}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: iam-keys, namespace: {ns}}}
stringData: {{AWS_ACCESS_KEY_ID: AKIAEXAMPLE, AWS_SECRET_ACCESS_KEY: not-a-secret}}
---
apiVersion: v1
kind: Secret
metadata:
  name: app
  namespace: {ns}
  labels: {{app.kubernetes.io/managed-by: sts-session-operator, stssession.dev/session-token-uid: 0b4c-uid}}
stringData: {{AWS_ACCESS_KEY_ID: ASIAEXAMPLE}}
---
{web}"#,
        web = web_deployment(&ns)
    ))
    .await?;
    assumed_role_table_setup(cp, &ns, &release_ns, &f).await?;
    let sts_admin = sessiontokens(&admin, &ns);
    sts_admin
        .create(
            &PostParams::default(),
            &session_token("app", true, json!({"note": "kept"}))?,
        )
        .await?;
    sts_admin
        .create(
            &PostParams::default(),
            &session_token(
                "pending",
                true,
                json!({CODE: "112233", APPROVED_BY: "admin"}),
            )?,
        )
        .await?;

    let sa = |ns: &str, name: &str| {
        (
            format!("system:serviceaccount:{ns}:{name}"),
            vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_string(),
            ],
        )
    };
    let mut who = Vec::new();
    for (column, sa_ns, name) in [
        ("operator", release_ns.as_str(), f.as_str()),
        ("approver", ns.as_str(), "approver"),
        ("editor", ns.as_str(), "editor"),
        ("namespace admin", ns.as_str(), "nsadmin"),
    ] {
        let token = service_account_token(cp, sa_ns, name).await?;
        let (user, groups) = sa(sa_ns, name);
        who.push(Who {
            column,
            client: cp.client_with_token(&token).await?,
            user,
            groups,
        });
    }
    let can = |w: &Who, verb: &str, group: &str, resource: &str| {
        let admin = admin.clone();
        let sar = json!({"spec": {"user": w.user, "groups": w.groups,
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": ns}}});
        async move {
            let sar: SubjectAccessReview = serde_json::from_value(sar)?;
            let answer = Api::<SubjectAccessReview>::all(admin)
                .create(&PostParams::default(), &sar)
                .await?;
            anyhow::Ok(answer.status.is_some_and(|s| s.allowed))
        }
    };
    // Aggregation and RBAC caches, then the policies, take effect asynchronously.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let ready = can(&who[2], "update", "stssession.dev", "sessiontokens").await?
            && can(&who[3], "update", "stssession.dev", "sessiontokens").await?
            && can(&who[2], "create", "stssession.dev", "assumedroles").await?
            && can(&who[3], "use", "stssession.dev", "sessiontokens").await?
            && can(&who[3], "approve", "stssession.dev", "sessiontokens").await?
            && can(&who[1], "approve", "stssession.dev", "sessiontokens").await?
            && can(&who[0], "patch", "apps", "deployments").await?;
        if ready {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the roles never aggregated into admin/edit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_post = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + T;
    loop {
        // The policies in force: the approver's label and the operator's unlabelled Secret ...
        let label = sessiontokens(&who[1].client, &ns)
            .patch(
                "app",
                &dry,
                &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await;
        let secret = Api::<Secret>::namespaced(who[0].client.clone(), &ns)
            .patch(
                "iam-keys",
                &dry,
                &Patch::Merge(&json!({"data": {"x": "eA=="}})),
            )
            .await;
        // ... and the AssumedRole one: the editor (no `use`) creating an AssumedRole.
        let drawing = assumedroles(&who[2].client, &ns)
            .create(&dry_post, &assumed_role("probe", "app"))
            .await;
        let by_policy = |r: Result<(), kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy"));
        if by_policy(label.map(|_| ()))
            && by_policy(secret.map(|_| ()))
            && by_policy(drawing.map(|_| ()))
        {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the admission policies never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for (row, expected) in &table {
        let action = TABLE_ROWS
            .iter()
            .find(|(r, _)| r == row)
            .map(|(_, a)| *a)
            .unwrap_or_default();
        for (i, w) in who.iter().enumerate() {
            let sts = sessiontokens(&w.client, &ns);
            let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &ns);
            let deployments = workloads(&w.client, &ns, "deployments", "Deployment");
            let what = format!("{row} as the {}", w.column);
            let json_patch =
                |ops: Value| -> Result<json_patch::Patch> { Ok(serde_json::from_value(ops)?) };
            let got = match action {
                "read" => admitted(sts.get("app").await, &what)?,
                "approve" => admitted(
                    sts.patch("app", &dry, &Patch::Merge(&json!({"metadata": {"annotations": {CODE: "135790", APPROVED_BY: w.user}}})))
                        .await,
                    &what,
                )?,
                "withdraw" => admitted(
                    sts.patch(
                        "pending",
                        &dry,
                        &Patch::<()>::Json(json_patch(json!([
                            {"op": "remove", "path": "/metadata/annotations/stssession.dev~1token-code"},
                            {"op": "remove", "path": "/metadata/annotations/stssession.dev~1approved-by"},
                        ]))?),
                    )
                    .await,
                    &what,
                )?,
                "spec" => admitted(
                    sts.patch("app", &dry, &Patch::Merge(&json!({"spec": {"durationSeconds": 7200}})))
                        .await,
                    &what,
                )?,
                "labels" => {
                    let labels = admitted(
                        sts.patch("app", &dry, &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})))
                            .await,
                        &what,
                    )?;
                    let annotations = admitted(
                        sts.patch("app", &dry, &Patch::Merge(&json!({"metadata": {"annotations": {"note": "x"}}})))
                            .await,
                        &what,
                    )?;
                    ensure!(labels == annotations, "{what}: labels {labels}, annotations {annotations}");
                    labels
                }
                "create-delete" => {
                    let created = admitted(
                        sts.create(&dry_post, &session_token("another", false, json!({}))?).await,
                        &what,
                    )?;
                    let deleted = admitted(sts.delete("app", &dry_delete).await, &what)?;
                    ensure!(created == deleted, "{what}: create {created}, delete {deleted}");
                    created
                }
                "mark" => admitted(
                    sts.patch(
                        "app",
                        &dry,
                        &Patch::<()>::Json(json_patch(json!([
                            {"op": "add", "path": "/metadata/annotations/stssession.dev~1token-code-claimed-at", "value": "2026-01-01T00:00:00Z"},
                        ]))?),
                    )
                    .await,
                    &what,
                )?,
                "status" => admitted(
                    sts.patch_status("app", &dry, &Patch::Merge(&json!({"status": {"observedGeneration": 1}})))
                        .await,
                    &what,
                )?,
                "our-secret" => admitted(
                    secrets.patch("app", &dry, &Patch::Merge(&json!({"data": {"AWS_ACCESS_KEY_ID": "QVNJQU5FVw=="}})))
                        .await,
                    &what,
                )?,
                "other-secret" => admitted(
                    secrets.patch("iam-keys", &dry, &Patch::Merge(&json!({"data": {"AWS_ACCESS_KEY_ID": "QUtJQU5FVw=="}})))
                        .await,
                    &what,
                )?,
                "restart" => admitted(
                    deployments
                        .patch(
                            "web",
                            &dry,
                            &Patch::Merge(&sts_session_operator::plan::restart_patch(
                                "app",
                                "ASIATABLE",
                                jiff::Timestamp::now(),
                            )),
                        )
                        .await,
                    &what,
                )?,
                "image" => admitted(
                    deployments
                        .patch(
                            "web",
                            &dry,
                            &Patch::Strategic(&json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "evil.example/x:1"}]}}}})),
                        )
                        .await,
                    &what,
                )?,
                "opt-in" => {
                    let rb: RoleBinding = serde_json::from_value(json!({
                        "metadata": {"name": "opt-in"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{f}-restart-targets")},
                        "subjects": [{"kind": "ServiceAccount", "name": f, "namespace": release_ns}],
                    }))?;
                    admitted(
                        Api::<RoleBinding>::namespaced(w.client.clone(), &ns)
                            .create(&dry_post, &rb)
                            .await,
                        &what,
                    )?
                }
                "metrics" => {
                    let sar: SubjectAccessReview = serde_json::from_value(json!({"spec": {
                        "user": w.user, "groups": w.groups,
                        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
                    }}))?;
                    Api::<SubjectAccessReview>::all(admin.clone())
                        .create(&PostParams::default(), &sar)
                        .await?
                        .status
                        .is_some_and(|s| s.allowed)
                }
                other => assumed_role_cell(other, &w.client, &ns, &what)
                    .await?
                    .with_context(|| format!("no check for {other:?}"))?,
            };
            cells += 1;
            let want = expected[i];
            if got != want {
                mismatches.push(format!(
                    "{what}: the docs say {}, the API server {}",
                    if want { "yes" } else { "no" },
                    if got { "admits it" } else { "refuses it" }
                ));
            }
        }
    }
    eprintln!("{cells} cells of the RBAC table checked");
    ensure!(
        mismatches.is_empty(),
        "docs/rbac-and-approvals.md's table is wrong in {} of {cells} cells:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    ensure!(cells == TABLE_ROWS.len() * 4, "{cells} cells checked");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

/// The upgrade steps of docs/install.md ("Upgrades"), on a private control plane (the previous
/// CRD must not reach the tests sharing the common one): the chart installed with the previous
/// release's CRD (tests/fixtures/crd-previous.yaml), SessionTokens created and issued (one with
/// MFA, approved once), then the CRD upgraded (`kubectl apply --server-side -f crds/`) and the
/// operator replaced (the chart applied again, the process stopped and the new one started, as
/// a rolling update does). Afterwards the sessions without MFA keep rotating, the MFA session
/// stays Issued on the same session, and no code is asked for or used.
#[tokio::test]
async fn upgrade_from_the_previous_crd_keeps_sessions_rotating_without_a_new_code() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let result = upgrade_steps(&cp).await;
    cp.shutdown().await;
    result
}

async fn upgrade_steps(cp: &ControlPlane) -> Result<()> {
    let admin = cp.admin_client().await?;
    // 1. The previous release: its CRD, then the chart (without CRDs: helm installs crds/ only
    //    on first install and never upgrades them).
    cp.apply_yaml_file(root().join("tests/fixtures/crd-previous.yaml"))
        .await
        .context("the previous CRD")?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: testkit::sts_double::CodePolicy::AcceptAny,
        returned_lifetime: Some(Duration::from_secs(12)),
        ..Default::default()
    })?;
    let release_ns = cp.new_namespace("upgrade-release").await?;
    let release = release_name();
    let values = json!({
        "stsEndpoint": sts.endpoint(),
        "allowedStsEndpoints": ["http://127.0.0.1:*"],
        "logFormat": "text",
        "approvalPolicy": {"enabled": false},
        "replicas": 1,
    });
    let (docs, _cleanup) = install(cp, &release, &release_ns, &values).await?;
    let ns = workload(cp, "upgrade", &sts).await?;
    let api = sessiontokens(&admin, &ns);
    // An MFA SessionToken on a second double (spec.endpoint) that returns the asked-for hour,
    // so that it asks for no code during the test; its own IAM user's keys.
    let sts_mfa = StsDouble::start(StsDoubleConfig {
        code_policy: testkit::sts_double::CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    let mfa_user = sts_mfa.default_user();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "iam-keys-mfa"},
        "stringData": {"AWS_ACCESS_KEY_ID": mfa_user.access_key_id, "AWS_SECRET_ACCESS_KEY": mfa_user.secret_access_key},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let mut mfa = session_token("mfa", true, json!({}))?;
    mfa.data["spec"]["mfa"]["serialNumber"] = json!(mfa_user.serial_number().unwrap());
    mfa.data["spec"]["sourceCredentials"]["secretRef"]["name"] = json!("iam-keys-mfa");
    mfa.data["spec"]["endpoint"] = json!(sts_mfa.endpoint());
    api.create(&PostParams::default(), &mfa).await?;
    let op = start_operator(cp, &docs, &release_ns, &release).await?;
    wait_issued(cp, &ns, &op).await?;
    let state = |name: &'static str| {
        let api = api.clone();
        async move {
            let st = api.get(name).await?;
            let v = serde_json::to_value(&st)?;
            anyhow::Ok((
                v.pointer("/status/rotations")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                v.pointer("/status/accessKeyId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                condition(&st, "Ready"),
            ))
        }
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    let deadline = tokio::time::Instant::now() + T;
    while state("mfa").await?.2 != pair("False", "AwaitingTokenCode") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "mfa never asked for a code: {:?}",
            state("mfa").await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    annotate(&admin, &ns, "mfa", "123456", "alice").await?;
    let deadline = tokio::time::Instant::now() + T;
    while state("mfa").await?.2 != pair("True", "Issued") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "mfa not issued: {:?}\n{}",
            state("mfa").await?,
            op.process.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, mfa_key, _) = state("mfa").await?;
    let code_calls = || {
        sts_mfa
            .calls()
            .iter()
            .filter(|c| c.token_code_used.is_some())
            .count()
    };
    let codes_before = code_calls();
    let (rotations_before, _, _) = state("app").await?;

    // 2. The upgrade: the new CRD, the chart applied again, the operator replaced.
    cp.install_crds(root().join("crds"))
        .await
        .context("upgrading the CRD")?;
    let (docs, _cleanup2) = install(cp, &release, &release_ns, &values).await?;
    drop(op); // stops the old process
    let op = start_operator(cp, &docs, &release_ns, &release).await?;

    // 3. Rotations go on, the MFA session stays, no code.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (rotations, _, ready) = state("app").await?;
        if rotations >= rotations_before + 2 && ready == pair("True", "Issued") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "app did not keep rotating after the upgrade: {rotations} rotations (had {rotations_before}), Ready={ready:?}\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, key, ready) = state("mfa").await?;
    ensure!(
        ready == pair("True", "Issued"),
        "mfa after the upgrade: Ready={ready:?}"
    );
    ensure!(
        key == mfa_key,
        "the MFA session was replaced by the upgrade ({mfa_key} -> {key})"
    );
    ensure!(
        code_calls() == codes_before,
        "the upgrade used a code: {} STS calls with a code, {codes_before} before",
        code_calls()
    );
    Ok(())
}
