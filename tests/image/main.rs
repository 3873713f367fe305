//! The operator's image, built from the project's Dockerfile as it is (hack/build-image.sh, run
//! by `make test`), run the way the chart's Deployment runs it: the pod template is read from the
//! chart (`helm install`ed into the shared control plane) and turned into `docker run` flags:
//! its args and env, read-only root filesystem, user 65532, all capabilities dropped, no new
//! privileges, the runtime's default seccomp profile, the memory limit, and the in-cluster
//! configuration the kubelet gives a pod (the ServiceAccount's token, CA and namespace at
//! /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT). The container
//! shares the host's network (the test control plane and the STS double listen on 127.0.0.1).
//! Then: the probes' endpoints answer, a non-MFA SessionToken is issued and rotated, an MFA one
//! is approved, and the container's process really runs as the chart says.

#[path = "../support/images.rs"]
mod images;

use anyhow::{Context as _, Result, bail, ensure};
use images::{Images, helm, http_get, run_ok};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::control_plane::ControlPlane;
use testkit::process::{ChildProcess, ScratchDir, free_port};
use testkit::sts_double::{StsDouble, StsDoubleConfig};

const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A private dockerd.

/// dockerd with its own socket, data root and exec root in a scratch directory, no bridge and
/// no iptables. Dropping it removes every container and stops dockerd (SIGTERM, then SIGKILL).
struct Dockerd {
    host: String,
    process: Option<ChildProcess>,
    dir: ScratchDir,
}

impl Dockerd {
    fn start() -> Result<Dockerd> {
        for tool in ["dockerd", "docker"] {
            ensure!(
                which(tool).is_some(),
                "{tool} not found: `apt-get install docker.io` (hack/test.sh installs it)"
            );
        }
        let dir = ScratchDir::new("dockerd")?;
        let host = format!("unix://{}/docker.sock", dir.path().display());
        let process = ChildProcess::builder("dockerd")
            .name("dockerd")
            .log_file(dir.path().join("dockerd.log"))
            .arg(format!("--data-root={}/data", dir.path().display()))
            .arg(format!("--exec-root={}/exec", dir.path().display()))
            .arg(format!("--pidfile={}/docker.pid", dir.path().display()))
            .arg(format!("--host={host}"))
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=overlay2",
            ])
            .spawn()?;
        let d = Dockerd {
            host,
            process: Some(process),
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Ok(d);
            }
            let p = d.process.as_ref().expect("running");
            ensure!(p.is_running(), "dockerd exited:\n{}", p.log_tail(30));
            ensure!(
                std::time::Instant::now() < deadline,
                "dockerd not answering after 60 s:\n{}",
                p.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host);
        c
    }

    fn load(&self, archive: &Path) -> Result<()> {
        run_ok(self.docker().arg("load").arg("-i").arg(archive))?;
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = self.docker().args(["rm", "-f"]).args(&ids).output();
            }
        }
        if let Some(p) = self.process.take() {
            let _ = p.terminate();
            let _ = p.wait_timeout_blocking(Duration::from_secs(30));
            // drop: SIGKILL to the process group if still there
        }
        // Nothing of it may stay mounted under the scratch directory (removed next).
        unmount_under(self.dir.path());
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).output();
    }
}

// ---------------------------------------------------------------------------------------------
// The chart's pod, as docker run flags.

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

/// `helm uninstall` when dropped.
struct Release {
    name: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Ok(helm) = helm() {
            let _ = Command::new(helm)
                .args([
                    "uninstall",
                    &self.name,
                    "--namespace",
                    &self.namespace,
                    "--wait",
                ])
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .output();
        }
    }
}

/// What `docker run` gets from the pod template: flags, image arguments, and the port the
/// probes use.
struct PodAsDocker {
    flags: Vec<String>,
    args: Vec<String>,
    probe_port: u16,
    liveness_path: String,
    readiness_path: String,
}

/// Turns the chart's pod template into `docker run` flags, failing on anything the test does not
/// know how to reproduce (so a chart change cannot silently go untested).
fn pod_as_docker(
    deploy: &Deployment,
    pod_name: &str,
    namespace: &str,
    api_port: u16,
    sa_dir: &Path,
) -> Result<PodAsDocker> {
    let pod = deploy
        .spec
        .template
        .spec
        .as_ref()
        .context("Deployment without a pod template")?;
    ensure!(pod.containers.len() == 1, "one container expected");
    ensure!(
        pod.automount_service_account_token != Some(false),
        "the pod does not mount its ServiceAccount token"
    );
    let c = &pod.containers[0];
    let psc = pod.security_context.clone().unwrap_or_default();
    let csc = c
        .security_context
        .clone()
        .context("container securityContext")?;
    let mut flags = vec!["--network=host".to_string()];

    let uid = csc.run_as_user.or(psc.run_as_user).context("runAsUser")?;
    let gid = csc
        .run_as_group
        .or(psc.run_as_group)
        .context("runAsGroup")?;
    ensure!(uid == 65532 && gid == 65532, "user {uid}:{gid}");
    flags.push(format!("--user={uid}:{gid}"));
    ensure!(
        csc.run_as_non_root.or(psc.run_as_non_root) == Some(true),
        "runAsNonRoot"
    );
    ensure!(
        csc.read_only_root_filesystem == Some(true),
        "readOnlyRootFilesystem"
    );
    flags.push("--read-only".into());
    ensure!(
        csc.allow_privilege_escalation == Some(false),
        "allowPrivilegeEscalation"
    );
    flags.push("--security-opt=no-new-privileges".into());
    ensure!(csc.privileged != Some(true), "privileged");
    let caps = csc.capabilities.clone().unwrap_or_default();
    ensure!(
        caps.drop == Some(vec!["ALL".to_string()]) && caps.add.unwrap_or_default().is_empty(),
        "capabilities: {:?}",
        csc.capabilities
    );
    flags.push("--cap-drop=ALL".into());
    let seccomp = csc
        .seccomp_profile
        .or(psc.seccomp_profile)
        .context("seccompProfile")?;
    ensure!(
        seccomp.type_ == "RuntimeDefault",
        "seccomp {}",
        seccomp.type_
    );
    // RuntimeDefault = the runtime's default profile: docker's, applied unless disabled.

    if let Some(limit) = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        let mi = limit.0.strip_suffix("Mi").context("memory limit in Mi")?;
        flags.push(format!("--memory={mi}m"));
    }

    // Environment: the container's own (downward API filled in as the kubelet does), and the
    // API server's address, as the kubelet sets it for every pod.
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod_name.to_string(),
                Some("metadata.namespace") => namespace.to_string(),
                other => bail!("env {} from {other:?}: not reproduced", e.name),
            },
            _ => bail!("env {}: not reproduced", e.name),
        };
        flags.push(format!("--env={}={value}", e.name));
    }
    ensure!(
        c.env_from.is_none() && c.volume_mounts.is_none() && pod.volumes.is_none(),
        "the pod has volumes or envFrom the test does not reproduce"
    );
    ensure!(
        pod.enable_service_links == Some(false),
        "enableServiceLinks"
    );
    flags.push("--env=KUBERNETES_SERVICE_HOST=127.0.0.1".into());
    flags.push(format!("--env=KUBERNETES_SERVICE_PORT={api_port}"));
    flags.push(format!("--env=KUBERNETES_SERVICE_PORT_HTTPS={api_port}"));
    flags.push(format!(
        "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        sa_dir.display()
    ));
    flags.push(format!("--hostname={pod_name}"));

    // Probes: httpGet on the named port `metrics`.
    let port = c
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .context("port `metrics`")?
        .container_port;
    let path_of =
        |probe: &Option<k8s_openapi::api::core::v1::Probe>, what: &str| -> Result<String> {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .with_context(|| format!("{what}: httpGet"))?;
            ensure!(
                serde_json::to_value(&get.port)? == json!("metrics"),
                "{what} on port {:?}",
                get.port
            );
            get.path.clone().with_context(|| format!("{what}: path"))
        };
    Ok(PodAsDocker {
        flags,
        args: c.args.clone().unwrap_or_default(),
        probe_port: u16::try_from(port)?,
        liveness_path: path_of(&c.liveness_probe, "livenessProbe")?,
        readiness_path: path_of(&c.readiness_probe, "readinessProbe")?,
    })
}

/// A ServiceAccount token directory as the kubelet projects it: token, ca.crt, namespace.
async fn service_account_dir(cp: &ControlPlane, ns: &str, sa: &str, dir: &Path) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(cp.admin_client().await?, ns);
    let req: TokenRequest = serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}}))?;
    let token = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest answered without a token")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::copy(cp.ca_file(), dir.join("ca.crt"))?;
    std::fs::write(dir.join("namespace"), ns)?;
    // The kubelet's default mode (0644) and a directory the container's user can enter.
    for f in ["token", "ca.crt", "namespace"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `/proc/<pid>/status` fields of the container's process.
fn proc_status(pid: u32) -> Result<BTreeMap<String, String>> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
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
        tokio::time::sleep(Duration::from_millis(200)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serves_a_rotation_and_an_approval_under_the_charts_security_settings() -> Result<()>
{
    let images = Images::get()?;
    let image = images.operator()?.to_string();
    println!(
        "image: {image}, {} bytes uncompressed, {} bytes compressed",
        images.var("OPERATOR_IMAGE_BYTES")?,
        images.var("OPERATOR_IMAGE_GZIP_BYTES")?
    );
    let docker = Dockerd::start()?;
    docker.load(&images.archive("operator"))?;

    // The image: numeric non-root user (what runAsNonRoot can verify), the entrypoint, and
    // nothing but the binary, libraries and data: no shell.
    let config =
        run_ok(
            docker
                .docker()
                .args(["image", "inspect", "-f", "{{json .Config}}", &image]),
        )?;
    let config: Value = serde_json::from_str(config.trim())?;
    ensure!(
        config["User"] == "65532:65532",
        "image user {}",
        config["User"]
    );
    ensure!(
        config["Entrypoint"] == json!(["/usr/local/bin/sts-session-operator"]),
        "entrypoint {}",
        config["Entrypoint"]
    );
    let scratch = ScratchDir::new("image-test")?;
    let created = run_ok(docker.docker().args(["create", &image]))?;
    let rootfs = scratch.path().join("rootfs.tar");
    run_ok(
        docker
            .docker()
            .args(["export", "-o"])
            .arg(&rootfs)
            .arg(created.trim()),
    )?;
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&rootfs))?;
    run_ok(docker.docker().args(["rm", created.trim()]))?;
    let files: Vec<&str> = listing.lines().collect();
    ensure!(
        files.contains(&"usr/local/bin/sts-session-operator"),
        "no binary in the image"
    );
    for shell in [
        "bin/sh",
        "bin/bash",
        "usr/bin/sh",
        "bin/busybox",
        "usr/bin/cat",
        "bin/cat",
    ] {
        ensure!(!files.contains(&shell), "the image has {shell}");
    }

    // The chart, installed into the shared control plane (the Deployment's pods are never made:
    // the shared control plane runs no deployment controller; docker runs its pod instead).
    let cp = ControlPlane::shared().await;
    cp.install_crds(images::root().join("crds")).await?;
    let admin = cp.admin_client().await?;
    let sts = StsDouble::start(StsDoubleConfig {
        // Sessions of 24 s: renewal (33 % before expiry) about 16 s after each issue.
        returned_lifetime: Some(Duration::from_secs(24)),
        ..Default::default()
    })?;
    let user = sts.default_user();
    let release_ns = cp.new_namespace("image-op").await?;
    let ns = cp.new_namespace("image-work").await?;
    let release = format!("img-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let fullname = format!("{release}-sts-session-operator");
    let metrics_port = free_port()?;
    let (repo, tag) = Images::split(&image);
    let values = json!({
        "image": {"repository": repo, "tag": tag},
        "replicas": 1,
        "watchNamespaces": [ns],
        "stsEndpoint": sts.endpoint(),
        "allowedStsEndpoints": ["http://127.0.0.1:*"],
        "metrics": {"port": metrics_port},
        "approvalPolicy": {"enabled": false},
    });
    let values_file = scratch.path().join("values.json");
    std::fs::write(&values_file, serde_json::to_vec_pretty(&values)?)?;
    run_ok(
        Command::new(helm()?)
            .args(["install", &release])
            .arg(images::root().join("charts/sts-session-operator"))
            .args(["--namespace", &release_ns, "-f"])
            .arg(&values_file)
            .arg("--kubeconfig")
            .arg(cp.admin_kubeconfig()),
    )?;
    let _release = Release {
        name: release.clone(),
        namespace: release_ns.clone(),
        kubeconfig: cp.admin_kubeconfig().to_path_buf(),
    };
    let deploy = Api::<Deployment>::namespaced(admin.clone(), &release_ns)
        .get(&fullname)
        .await?;
    let sa = deploy
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.service_account_name.clone())
        .context("serviceAccountName")?;
    let sa_dir = scratch.path().join("serviceaccount");
    service_account_dir(cp, &release_ns, &sa, &sa_dir).await?;
    let api_port: u16 = cp
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("API server port")?;
    let pod_name = format!("{fullname}-5d8f7c9b4-q7x2k");
    let pod = pod_as_docker(&deploy, &pod_name, &release_ns, api_port, &sa_dir)?;
    ensure!(
        pod.probe_port == metrics_port,
        "probe port {}",
        pod.probe_port
    );

    let out = run_ok(
        docker
            .docker()
            .args(["run", "--detach", "--name", "operator"])
            .args(&pod.flags)
            .arg(&image)
            .args(&pod.args),
    )?;
    let id = out.trim().to_string();
    let logs = || -> String {
        docker
            .docker()
            .args(["logs", &id])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    };
    let running = || -> bool {
        docker
            .docker()
            .args(["inspect", "-f", "{{.State.Running}}", &id])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    };

    // The probes: what the kubelet would GET.
    for path in [&pod.liveness_path, &pod.readiness_path] {
        let r = eventually(T, &format!("{path} = 200"), || async {
            if !running() {
                bail!("the container stopped:\n{}", logs());
            }
            let r = http_get("127.0.0.1", pod.probe_port, path).await?;
            Ok(r.starts_with("200").then_some(r))
        })
        .await
        .with_context(logs)?;
        println!("{path}: {}", r.lines().next().unwrap_or(""));
    }

    // The process as the kernel sees it.
    let pid: u32 = run_ok(
        docker
            .docker()
            .args(["inspect", "-f", "{{.State.Pid}}", &id]),
    )?
    .trim()
    .parse()?;
    let status = proc_status(pid)?;
    ensure!(
        status["Uid"].split_whitespace().all(|u| u == "65532"),
        "Uid {}",
        status["Uid"]
    );
    ensure!(
        status["Gid"].split_whitespace().all(|g| g == "65532"),
        "Gid {}",
        status["Gid"]
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        ensure!(status[cap] == "0000000000000000", "{cap} {}", status[cap]);
    }
    ensure!(
        status["NoNewPrivs"] == "1",
        "NoNewPrivs {}",
        status["NoNewPrivs"]
    );
    ensure!(
        status["Seccomp"] == "2",
        "Seccomp {} (2 = a filter)",
        status["Seccomp"]
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .context("no / mount")?;
    ensure!(
        root_mount
            .split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "root filesystem not read-only: {root_mount}"
    );

    // The Lease, held by the "pod".
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), &release_ns);
    eventually(T, "the Lease held by the container", || async {
        let holder = leases
            .get_opt(&fullname)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        Ok((holder == pod_name).then_some(()))
    })
    .await
    .with_context(logs)?;

    // A non-MFA SessionToken: issued, then rotated before it expires.
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "iam-keys"},
        "stringData": {"AWS_ACCESS_KEY_ID": user.access_key_id, "AWS_SECRET_ACCESS_KEY": user.secret_access_key},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &source)
        .await?;
    let sts_api = sessiontokens(&admin, &ns);
    let st = |name: &str, mfa: bool| -> Result<DynamicObject> {
        let mut spec = json!({"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
        if mfa {
            spec["mfa"] = json!({"serialNumber": user.serial_number().context("MFA serial")?});
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": name}, "spec": spec,
        }))?)
    };
    sts_api
        .create(&PostParams::default(), &st("app", false)?)
        .await?;
    let first = eventually(T, "app's first session in its Secret", || async {
        secret_key(&admin, &ns, "app").await
    })
    .await
    .with_context(logs)?;
    let second = eventually(T, "app's rotation", || async {
        Ok(secret_key(&admin, &ns, "app")
            .await?
            .filter(|k| *k != first))
    })
    .await
    .with_context(logs)?;
    for key in [&first, &second] {
        let s = sts
            .issued_session(key)
            .with_context(|| format!("{key} not issued by the double"))?;
        ensure!(
            !s.mfa_authenticated && s.action == "GetSessionToken",
            "{s:?}"
        );
    }
    let app = sts_api.get("app").await?;
    ensure!(
        condition(&app, "Ready") == ("True".into(), "Issued".into()),
        "app: {:?}",
        condition(&app, "Ready")
    );
    println!("non-MFA: issued {first}, rotated to {second}");

    // An MFA SessionToken: waits for a code, then is approved.
    sts_api
        .create(&PostParams::default(), &st("app-mfa", true)?)
        .await?;
    eventually(T, "app-mfa AwaitingTokenCode", || async {
        let c = condition(&sts_api.get("app-mfa").await?, "Ready");
        Ok((c.1 == "AwaitingTokenCode").then_some(()))
    })
    .await
    .with_context(logs)?;
    let code = user.totp_code_now();
    let patch = json!({"metadata": {"annotations": {
        "stssession.dev/token-code": code, "stssession.dev/approved-by": "admin"}}});
    sts_api
        .patch("app-mfa", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let mfa_key = eventually(T, "app-mfa approved", || async {
        secret_key(&admin, &ns, "app-mfa").await
    })
    .await
    .with_context(logs)?;
    let s = sts
        .issued_session(&mfa_key)
        .context("MFA session not issued by the double")?;
    ensure!(s.mfa_authenticated, "{s:?}");
    ensure!(
        sts.accepted_uses_of_code(&code) == 1,
        "code used {} times",
        sts.accepted_uses_of_code(&code)
    );
    let approved = serde_json::to_value(sts_api.get("app-mfa").await?)?;
    ensure!(
        approved.pointer("/status/lastApproval").is_some(),
        "no status.lastApproval: {approved}"
    );
    println!("MFA: approved, session {mfa_key}");

    // Still healthy, and nothing secret in its output.
    ensure!(running(), "the container stopped:\n{}", logs());
    ensure!(
        http_get("127.0.0.1", pod.probe_port, &pod.readiness_path)
            .await?
            .starts_with("200"),
        "not ready at the end"
    );
    let out = logs();
    ensure!(!out.trim().is_empty(), "no logs");
    for line in out.lines() {
        ensure!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line (logFormat json): {line}"
        );
    }
    let mut secrets = vec![user.secret_access_key.clone(), code.clone()];
    for s in sts.issued_sessions() {
        secrets.push(s.secret_access_key);
        secrets.push(s.session_token);
    }
    for s in &secrets {
        ensure!(
            !out.contains(s.as_str()),
            "a secret value is in the container's logs"
        );
    }
    drop(docker);
    Ok(())
}
