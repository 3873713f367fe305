//! A real node on this machine: containerd 2.x (with runc and Debian's CNI plugins) and a
//! kubelet of the control plane's Kubernetes release, registered to a private control plane,
//! plus what a cluster runs besides: kube-scheduler, and a second kube-controller-manager with
//! the controllers testkit's does not run (deployments, replica sets, service accounts, the
//! root CA ConfigMap, node lifecycle: it lifts the `not-ready` taint the kubelet registers with). Dropping it stops everything it started, even after a failure: pods'
//! containers, the shims, containerd, the kubelet, mounts and cgroups.
//!
//! The pod network is the one thing left out: every pod here uses `hostNetwork` (the test
//! control plane and the STS double listen on 127.0.0.1, and the test makes no bridge with
//! private-range addresses). The CNI configuration (the loopback plugin) only makes the runtime's
//! network ready.

use anyhow::{Context as _, Result, bail, ensure};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::control_plane::ControlPlane;
use testkit::process::{ChildProcess, ScratchDir, free_port};

use crate::images::{Images, run_ok};

pub const NODE_NAME: &str = "sts-node";

/// kubelet, kube-scheduler, containerd, containerd-shim-runc-v2, ctr: `$STS_TEST_NODE_BIN_DIR`,
/// else hack/build-node.sh (cached; a cold build takes many minutes).
pub fn node_bin_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STS_TEST_NODE_BIN_DIR").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(crate::images::root().join("hack/build-node.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim().to_string();
    ensure!(
        out.status.success() && Path::new(&dir).is_dir(),
        "hack/build-node.sh failed ({}): {stdout}",
        out.status
    );
    Ok(PathBuf::from(dir))
}

pub struct Node {
    pub dir: PathBuf,
    bin: PathBuf,
    sock: PathBuf,
    cgroup_root: String,
    /// Kernel settings the kubelet changes at start (its kernel tunables), put back at the end.
    sysctls: Vec<(PathBuf, String)>,
    /// iptables chains before the kubelet started (it adds its canary and firewall chains).
    iptables: Vec<(String, BTreeSet<(String, String)>)>,
    kubelet: Option<ChildProcess>,
    containerd: Option<ChildProcess>,
    scheduler: Option<ChildProcess>,
    controllers: Option<ChildProcess>,
    // Last: removed after everything is stopped and unmounted.
    scratch: Option<ScratchDir>,
}

/// The cgroup v1 hierarchies (or the cgroup2 mount) under /sys/fs/cgroup.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

impl Node {
    /// Starts the node's daemons against `cp` and waits until the Node is Ready.
    pub async fn start(cp: &ControlPlane, images: &Images) -> Result<Node> {
        let bin = node_bin_dir()?;
        for b in [
            "kubelet",
            "kube-scheduler",
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
        ] {
            ensure!(
                bin.join(b).is_file(),
                "{} missing: run hack/build-node.sh",
                bin.join(b).display()
            );
        }
        ensure!(
            Path::new("/usr/lib/cni/loopback").is_file(),
            "/usr/lib/cni/loopback not found: `apt-get install containernetworking-plugins` (hack/test.sh installs it)"
        );
        let scratch = ScratchDir::new("node")?;
        let dir = scratch.path().to_path_buf();
        let cgroup_root = format!("sts-node-{}", std::process::id());
        let mut node = Node {
            sock: dir.join("containerd.sock"),
            dir: dir.clone(),
            bin: bin.clone(),
            cgroup_root: cgroup_root.clone(),
            sysctls: [
                "vm/overcommit_memory",
                "kernel/panic",
                "kernel/panic_on_oops",
            ]
            .iter()
            .map(|k| Path::new("/proc/sys").join(k))
            .filter_map(|p| std::fs::read_to_string(&p).ok().map(|v| (p, v)))
            .collect(),
            iptables: ["iptables", "ip6tables"]
                .iter()
                .map(|t| (t.to_string(), iptables_chains(t)))
                .collect(),
            kubelet: None,
            containerd: None,
            scheduler: None,
            controllers: None,
            scratch: Some(scratch),
        };

        // -- the rest of the control plane: scheduler and more controllers --------------------
        let cp_bin = testkit::control_plane::bin_dir()?;
        let kubeconfig = cp.admin_kubeconfig().to_path_buf();
        node.controllers = Some(
            ChildProcess::builder(cp_bin.join("kube-controller-manager"))
                .name("kube-controller-manager-node")
                .log_file(dir.join("kube-controller-manager.log"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(
                    "--controllers=deployment-controller,replicaset-controller,serviceaccount-controller,\
                     root-ca-certificate-publisher-controller,node-lifecycle-controller",
                )
                .arg(format!("--root-ca-file={}", cp.ca_file().display()))
                .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
                .arg(format!("--secure-port={}", free_port()?))
                .spawn()?,
        );
        node.scheduler = Some(
            ChildProcess::builder(bin.join("kube-scheduler"))
                .name("kube-scheduler")
                .log_file(dir.join("kube-scheduler.log"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--authentication-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg(format!(
                    "--authorization-kubeconfig={}",
                    kubeconfig.display()
                ))
                .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
                .arg(format!("--secure-port={}", free_port()?))
                .spawn()?,
        );

        // -- containerd ------------------------------------------------------------------------
        let cni_conf = dir.join("cni/net.d");
        std::fs::create_dir_all(&cni_conf)?;
        std::fs::write(
            cni_conf.join("10-sts-node.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "sts-node", "plugins": [{"type": "loopback"}]}"#,
        )?;
        let pause = format!("docker.io/{}", images.pause()?);
        let config = format!(
            r#"version = 3
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
temp = "{dir}/containerd/tmp"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
[plugins.'io.containerd.cri.v1.runtime']
  # This machine withholds CAP_SYS_RESOURCE even from root: no process may lower its
  # oom_score_adj, so runc would fail on the kubelet's -998 for sandboxes ("failed to update
  # /proc/self/oom_score_adj: Permission denied"). containerd's setting for that case: never
  # below containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni}"
"#,
            dir = dir.display(),
            sock = node.sock.display(),
            runc = bin.join("runc").display(),
            cni = cni_conf.display(),
        );
        std::fs::write(dir.join("containerd.toml"), config)?;
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        node.containerd = Some(
            ChildProcess::builder(bin.join("containerd"))
                .name("containerd")
                .log_file(dir.join("containerd.log"))
                .arg(format!(
                    "--config={}",
                    dir.join("containerd.toml").display()
                ))
                .env("PATH", &path)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while node
            .ctr()
            .arg("version")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            let c = node.containerd.as_ref().expect("started");
            ensure!(c.is_running(), "containerd exited:\n{}", c.log_tail(30));
            ensure!(
                Instant::now() < deadline,
                "containerd not answering:\n{}",
                c.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for which in ["pause", "operator", "consumer"] {
            run_ok(
                node.ctr()
                    .args(["-n", "k8s.io", "images", "import"])
                    .arg(images.archive(which)),
            )
            .with_context(|| format!("ctr images import {which}"))?;
        }

        // -- the kubelet -------------------------------------------------------------------------
        // cgroup v1 (this machine's hierarchy): the kubelet refuses it unless failCgroupV1 is
        // false (KEP-5573). Pods' cgroups go under a root of their own, made here and removed
        // at the end.
        for m in cgroup_mounts() {
            std::fs::create_dir_all(m.join(&cgroup_root))
                .with_context(|| format!("creating cgroup {}", m.join(&cgroup_root).display()))?;
        }
        let kubelet_dir = dir.join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)?;
        let kubelet_config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
containerRuntimeEndpoint: unix://{sock}
failSwapOn: false
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
podLogsDir: {dir}/pod-logs
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
syncFrequency: 10s
configMapAndSecretChangeDetectionStrategy: Watch
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
enforceNodeAllocatable: [pods]
resolvConf: /etc/resolv.conf
"#,
            sock = node.sock.display(),
            port = free_port()?,
            healthz = free_port()?,
            dir = dir.display(),
        );
        std::fs::write(dir.join("kubelet.yaml"), kubelet_config)?;
        node.kubelet = Some(
            ChildProcess::builder(bin.join("kubelet"))
                .name("kubelet")
                .log_file(dir.join("kubelet.log"))
                .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--root-dir={}", kubelet_dir.display()))
                .arg(format!("--cert-dir={}", kubelet_dir.join("pki").display()))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg("--v=2")
                .env("PATH", &path)
                .spawn()?,
        );
        node.wait_ready(cp).await?;
        Ok(node)
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new(self.bin.join("ctr"));
        c.arg("--address").arg(&self.sock);
        c
    }

    /// Diagnostics for a failure: the tails of every daemon's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in [
            &self.kubelet,
            &self.containerd,
            &self.scheduler,
            &self.controllers,
        ]
        .into_iter()
        .flatten()
        {
            out.push_str(&format!("--- {} ---\n{}\n", p.name(), p.log_tail(25)));
        }
        out
    }

    async fn wait_ready(&self, cp: &ControlPlane) -> Result<()> {
        use k8s_openapi::api::core::v1::Node as KNode;
        let nodes: kube::Api<KNode> = kube::Api::all(cp.admin_client().await?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let node = nodes.get_opt(NODE_NAME).await?;
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
            if ready.as_ref().is_some_and(|r| r.0 == "True") {
                return Ok(());
            }
            for p in [&self.kubelet, &self.containerd].into_iter().flatten() {
                ensure!(p.is_running(), "{} exited:\n{}", p.name(), p.log_tail(40));
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready after 120 s ({ready:?})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The log file of a pod's container (CRI format), under the kubelet's podLogsDir.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        let logs = self.dir.join("pod-logs");
        let prefix = format!("{namespace}_{pod}_");
        let entry = std::fs::read_dir(&logs)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?;
        let dir = entry.path().join(container);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files.pop()
    }

    /// Every process whose command line names this node's directory (the containerd shims,
    /// whose own sessions outlive containerd): found by that unique path, killed by pid.
    fn kill_leftovers(&self) {
        let needle = self.dir.to_string_lossy().to_string();
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    fn stop(&mut self) {
        // 1. The kubelet, so that it restarts nothing; then every container and sandbox.
        if let Some(k) = self.kubelet.take() {
            let _ = k.terminate();
            let _ = k.wait_timeout_blocking(Duration::from_secs(15));
        }
        if self.containerd.as_ref().is_some_and(|c| c.is_running())
            && let Ok(out) = self
                .ctr()
                .args(["-n", "k8s.io", "tasks", "ls", "-q"])
                .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
                    .output();
            }
            std::thread::sleep(Duration::from_millis(500));
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["-n", "k8s.io", "tasks", "delete", "-f", id])
                    .output();
            }
        }
        // 2. containerd, the other daemons, then whatever still names this directory.
        for p in [
            self.containerd.take(),
            self.scheduler.take(),
            self.controllers.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = p.terminate();
            let _ = p.wait_timeout_blocking(Duration::from_secs(15));
        }
        self.kill_leftovers();
        for (path, value) in self.sysctls.drain(..) {
            let _ = std::fs::write(path, value);
        }
        for (tool, before) in self.iptables.drain(..) {
            remove_new_chains(&tool, &before);
        }
        std::thread::sleep(Duration::from_millis(300));
        // 3. Mounts (secret volumes, rootfs overlays, sandbox shm) and cgroups.
        unmount_under(&self.dir);
        for m in cgroup_mounts() {
            remove_cgroup_tree(&m.join(&self.cgroup_root));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if testkit::process::keep_scratch() {
            eprintln!("node: logs kept in {}", self.dir.display());
        }
        // Only now may the directory go (ScratchDir's drop), unless STS_TEST_KEEP is set.
        if let Some(s) = self.scratch.take() {
            drop(s);
        }
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = dir.to_string_lossy().to_string();
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .map(String::from)
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", &p]).output();
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroupfs: rmdir only).
fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// (table, chain) pairs that `iptables-save` (or `ip6tables-save`) shows.
fn iptables_chains(tool: &str) -> BTreeSet<(String, String)> {
    let text = Command::new(format!("{tool}-save"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut table = String::new();
    let mut chains = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(name) = line
            .strip_prefix(':')
            .and_then(|c| c.split_whitespace().next())
        {
            chains.insert((table.clone(), name.to_string()));
        }
    }
    chains
}

/// Removes the chains that are new since `before` (the kubelet's KUBE-FIREWALL,
/// KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), and the jumps to them.
fn remove_new_chains(tool: &str, before: &BTreeSet<(String, String)>) {
    let now = iptables_chains(tool);
    let new: Vec<&(String, String)> = now.difference(before).collect();
    if new.is_empty() {
        return;
    }
    let text = Command::new(format!("{tool}-save"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let (Some(chain), Some(target)) = (words.first(), words.last()) else {
                continue;
            };
            let from_old = before.contains(&(table.clone(), chain.to_string()));
            let to_new = new.contains(&&(table.clone(), target.to_string()));
            if from_old && to_new && !rule.contains('"') {
                let _ = Command::new(tool)
                    .args(["-t", &table, "-D"])
                    .args(&words)
                    .output();
            }
        }
    }
    for (table, chain) in &new {
        let _ = Command::new(tool).args(["-t", table, "-F", chain]).output();
    }
    for (table, chain) in &new {
        let _ = Command::new(tool).args(["-t", table, "-X", chain]).output();
    }
}
