//! A real local Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager (garbage collector, namespace and clusterrole-aggregation controllers),
//! built from Go modules by `hack/build-control-plane.sh`.
//!
//! - Authentication: an admin client certificate (`O=system:masters`) and a static token file
//!   with the [`TEST_USERS`]; authorization: RBAC; service-account token signing (TokenRequest).
//! - Audit: every request is logged at `Metadata` level (JSON lines), see
//!   [`ControlPlane::audit_events`] and [`ControlPlane::writes_by`].
//! - [`ControlPlane::shared`] gives one instance per test binary, or attaches to the instance
//!   the test command started (`STS_TEST_KUBECONFIG` + `STS_TEST_CONTROL_PLANE_DIR`, see the
//!   `testenv` binary); tests on it isolate themselves with [`ControlPlane::new_namespace`].
//!   [`ControlPlane::start`] always starts a private instance (needed for [`ControlPlane::restart`]).
//!
//! Processes are plain `std::process` children (see [`crate::process`]): an instance never
//! depends on the tokio runtime that started it, only the `async` waits run in the caller's.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, Config};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::process::{ChildProcess, ScratchDir, free_port, tail, wait_for_port, write_private};

/// Env: directory holding `etcd`, `kube-apiserver`, `kube-controller-manager`.
pub const ENV_BIN_DIR: &str = "STS_TEST_BIN_DIR";
/// Env: admin kubeconfig of a control plane started by the test command (attach to it).
pub const ENV_KUBECONFIG: &str = "STS_TEST_KUBECONFIG";
/// Env: the directory of that control plane (token file, audit log, kubeconfigs, `controlplane.json`).
pub const ENV_CONTROL_PLANE_DIR: &str = "STS_TEST_CONTROL_PLANE_DIR";

/// The admin user (client certificate, group `system:masters`; also in the token file).
pub const ADMIN: &str = "admin";
/// User name kube-controller-manager authenticates as (client certificate, `system:masters`).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

/// A predefined user of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestUser {
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// Every user a test can act as (besides `system:*` identities). Token users also get
/// `system:authenticated`. None but [`ADMIN`] has any permission until a test grants it.
pub const TEST_USERS: &[TestUser] = &[
    TestUser {
        name: ADMIN,
        groups: &["system:masters"],
    },
    TestUser {
        name: "sts-operator",
        groups: &["stssession:operators"],
    },
    TestUser {
        name: "sts-operator-2",
        groups: &["stssession:operators"],
    },
    TestUser {
        name: "alice",
        groups: &["team-a"],
    },
    TestUser {
        name: "bob",
        groups: &["team-b"],
    },
    TestUser {
        name: "mallory",
        groups: &["outsiders"],
    },
];

/// Looks a test user up by name.
pub fn test_user(name: &str) -> Option<&'static TestUser> {
    TEST_USERS.iter().find(|u| u.name == name)
}

/// The bearer token of a test user: deterministic, so any process can compute it.
pub fn token_for(user: &str) -> String {
    let digest = Sha256::digest(format!("sts-session-operator testkit token for {user}"));
    format!("testkit-{}", &hex::encode(digest)[..40])
}

const INFO_FILE: &str = "controlplane.json";
const AUDIT_LOG: &str = "audit.log";

/// What an attaching process needs to know, written to `<dir>/controlplane.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Info {
    server: String,
    apiserver_port: u16,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    controller_manager_port: u16,
    started_by_pid: u32,
    /// The starting process serves requests from attached processes (see `serve_requests`).
    #[serde(default)]
    serves_requests: bool,
}

/// Options for [`ControlPlane::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// CRD manifests (files, or directories of `*.yaml`/`*.yml`) applied before
    /// kube-controller-manager starts, so its garbage collector watches them from the start.
    pub crds: Vec<PathBuf>,
    /// More kube-apiserver flags, replacing the usual ones of the same name, e.g.
    /// `--max-requests-inflight=800` for benchmarks with many objects, or
    /// `--disable-admission-plugins=` (ServiceAccount admission on, for a real kubelet).
    pub apiserver_args: Vec<String>,
}

struct Procs {
    etcd: Option<ChildProcess>,
    apiserver: Option<ChildProcess>,
    controller_manager: Option<ChildProcess>,
}

impl Procs {
    fn all(&self) -> impl Iterator<Item = &ChildProcess> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .flatten()
    }
    fn kill_all(&mut self) {
        // Dropping kills (SIGKILL to the process group) and reaps.
        self.controller_manager = None;
        self.apiserver = None;
        self.etcd = None;
    }
}

struct Owned {
    bin_dir: PathBuf,
    apiserver_args: Vec<String>,
    procs: tokio::sync::Mutex<Procs>,
    // Last: removed after the processes are gone. `None` only while `start()` still boots.
    _scratch: Option<ScratchDir>,
}

/// A running control plane (owned), or one started by another process (attached).
pub struct ControlPlane {
    dir: PathBuf,
    info: Info,
    admin_kubeconfig: PathBuf,
    audit: Mutex<AuditCache>,
    owned: Option<Owned>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.info.server)
            .field("dir", &self.dir)
            .field("owned", &self.owned.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries.

/// The workspace root (compile-time location of this crate, two levels up).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    here.canonicalize().unwrap_or(here)
}

/// Directory with the control plane binaries: `$STS_TEST_BIN_DIR`, else whatever
/// `hack/build-control-plane.sh` prints last (it builds once and caches by version).
pub fn bin_dir() -> Result<PathBuf> {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = CACHE.get() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os(ENV_BIN_DIR).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = workspace_root().join("hack/build-control-plane.sh");
            eprintln!(
                "testkit: {ENV_BIN_DIR} not set, running {}",
                script.display()
            );
            let out = std::process::Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run {}", script.display()))?;
            ensure!(
                out.status.success(),
                "{} failed: {}",
                script.display(),
                out.status
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
            PathBuf::from(
                last.context("build-control-plane.sh printed nothing")?
                    .trim(),
            )
        }
    };
    for bin in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        ensure!(
            dir.join(bin).is_file(),
            "{} is missing in {}",
            bin,
            dir.display()
        );
    }
    Ok(CACHE.get_or_init(|| dir).clone())
}

// ---------------------------------------------------------------------------------------------
// PKI and configuration files.

struct Pki {
    ca_pem: String,
}

fn generate_pki(dir: &Path) -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sts-testkit-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    write_private(&dir.join("ca.crt"), &ca_pem)?;

    // Serving certificate (kube-apiserver and kube-controller-manager).
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "sts-testkit-serving");
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress("127.0.0.1".parse()?),
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&dir.join("serving.crt"), cert.pem())?;
    write_private(&dir.join("serving.key"), key.serialize_pem())?;

    // Client certificates.
    for (file, cn) in [
        ("admin", ADMIN),
        ("controller-manager", CONTROLLER_MANAGER_USER),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&dir.join(format!("{file}.crt")), cert.pem())?;
        write_private(&dir.join(format!("{file}.key")), key.serialize_pem())?;
    }

    // Service-account token signing key pair (ES256).
    let sa = KeyPair::generate()?;
    write_private(&dir.join("sa.key"), sa.serialize_pem())?;
    write_private(&dir.join("sa.pub"), sa.public_key_pem())?;
    Ok(Pki { ca_pem })
}

fn token_file() -> String {
    let mut out = String::new();
    for user in TEST_USERS {
        out.push_str(&format!(
            "{},{},testkit-uid-{},\"{}\"\n",
            token_for(user.name),
            user.name,
            user.name,
            user.groups.join(",")
        ));
    }
    out
}

const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
# Every request, every user, at Metadata level: user, verb, objectRef (resource, namespace,
# name, subresource, apiGroup), response code. No bodies: Secrets must not land in the log.
omitStages:
  - RequestReceived
rules:
  - level: Metadata
";

fn b64(data: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Kubeconfig YAML for `user` with either a token or a client certificate.
fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, auth: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: sts-testkit
    cluster:
      server: {server}
      certificate-authority-data: {ca}
contexts:
  - name: {user}@sts-testkit
    context:
      cluster: sts-testkit
      user: {user}
      namespace: default
current-context: {user}@sts-testkit
users:
  - name: {user}
    user:
{auth}",
        ca = b64(ca_pem),
    )
}

fn write_kubeconfigs(dir: &Path, server: &str, ca_pem: &str) -> Result<()> {
    for (file, cn) in [
        ("admin", ADMIN),
        ("controller-manager", "kube-controller-manager"),
    ] {
        let cert = fs::read_to_string(dir.join(format!("{file}.crt")))?;
        let key = fs::read_to_string(dir.join(format!("{file}.key")))?;
        let auth = format!(
            "      client-certificate-data: {}\n      client-key-data: {}\n",
            b64(&cert),
            b64(&key)
        );
        let path = dir.join(format!("kubeconfig-{file}.yaml"));
        write_private(&path, kubeconfig_yaml(server, ca_pem, cn, &auth))?;
    }
    for user in TEST_USERS.iter().filter(|u| u.name != ADMIN) {
        let auth = format!("      token: {}\n", token_for(user.name));
        let path = dir.join(format!("kubeconfig-{}.yaml", user.name));
        write_private(&path, kubeconfig_yaml(server, ca_pem, user.name, &auth))?;
    }
    Ok(())
}

/// A `kube::Config` from a kubeconfig file.
pub async fn config_from_kubeconfig(path: &Path) -> Result<Config> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

// ---------------------------------------------------------------------------------------------
// Starting.

fn is_port_conflict(log: &str) -> bool {
    log.contains("address already in use")
}

impl ControlPlane {
    /// Starts a private control plane (several seconds once the binaries are built).
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(StartOptions::default()).await
    }

    /// [`Self::start`] with options.
    pub async fn start_with(options: StartOptions) -> Result<ControlPlane> {
        let started = Instant::now();
        let bin_dir = tokio::task::spawn_blocking(bin_dir).await??;
        let scratch = ScratchDir::new("cp")?;
        let dir = scratch.path().to_path_buf();
        let pki = generate_pki(&dir)?;
        write_private(&dir.join("tokens.csv"), token_file())?;
        fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

        let mut last_err = None;
        for attempt in 1..=3 {
            let info = Info {
                server: String::new(),
                apiserver_port: free_port()?,
                etcd_client_port: free_port()?,
                etcd_peer_port: free_port()?,
                controller_manager_port: free_port()?,
                started_by_pid: std::process::id(),
                serves_requests: false,
            };
            let info = Info {
                server: format!("https://127.0.0.1:{}", info.apiserver_port),
                ..info
            };
            write_kubeconfigs(&dir, &info.server, &pki.ca_pem)?;
            fs::write(dir.join(INFO_FILE), serde_json::to_vec_pretty(&info)?)?;
            let _ = fs::remove_dir_all(dir.join("etcd-data"));
            let cp = ControlPlane {
                admin_kubeconfig: dir.join("kubeconfig-admin.yaml"),
                dir: dir.clone(),
                info,
                audit: Mutex::new(AuditCache::default()),
                owned: Some(Owned {
                    bin_dir: bin_dir.clone(),
                    apiserver_args: options.apiserver_args.clone(),
                    procs: tokio::sync::Mutex::new(Procs {
                        etcd: None,
                        apiserver: None,
                        controller_manager: None,
                    }),
                    _scratch: None,
                }),
            };
            match cp.boot(&options).await {
                Ok(()) => {
                    let mut cp = cp;
                    cp.owned.as_mut().unwrap()._scratch = Some(scratch);
                    eprintln!(
                        "testkit: control plane {} ready in {:.1} s (dir {})",
                        cp.info.server,
                        started.elapsed().as_secs_f64(),
                        cp.dir.display()
                    );
                    return Ok(cp);
                }
                Err(e) => {
                    let conflict = {
                        let procs = cp.owned.as_ref().unwrap().procs.lock().await;
                        procs.all().any(|p| is_port_conflict(&p.read_log()))
                    };
                    drop(cp);
                    if conflict && attempt < 3 {
                        eprintln!("testkit: port conflict, retrying the control plane start");
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("control plane did not start")))
    }

    /// Attaches to a control plane started by another process (see `testenv`).
    pub async fn attach(admin_kubeconfig: &Path, dir: &Path) -> Result<ControlPlane> {
        let info: Info = serde_json::from_slice(
            &fs::read(dir.join(INFO_FILE))
                .with_context(|| format!("no {INFO_FILE} in {}", dir.display()))?,
        )?;
        let cp = ControlPlane {
            dir: dir.to_path_buf(),
            info,
            admin_kubeconfig: admin_kubeconfig.to_path_buf(),
            audit: Mutex::new(AuditCache::default()),
            owned: None,
        };
        let client = cp.admin_client().await?;
        wait_readyz(&client, Duration::from_secs(30), None).await?;
        Ok(cp)
    }

    /// One control plane per test binary: attaches to the test command's instance when
    /// `STS_TEST_KUBECONFIG` is set, else starts one on first use (kept until the binary exits).
    /// Panics if that fails (every test using it would fail the same way).
    pub async fn shared() -> &'static ControlPlane {
        static SHARED: tokio::sync::OnceCell<std::result::Result<ControlPlane, String>> =
            tokio::sync::OnceCell::const_new();
        let cp = SHARED
            .get_or_init(|| async {
                let r = match std::env::var_os(ENV_KUBECONFIG).filter(|v| !v.is_empty()) {
                    Some(kubeconfig) => {
                        let dir = std::env::var_os(ENV_CONTROL_PLANE_DIR)
                            .filter(|v| !v.is_empty())
                            .ok_or_else(|| {
                                anyhow!(
                                    "{ENV_KUBECONFIG} is set but {ENV_CONTROL_PLANE_DIR} is not"
                                )
                            });
                        match dir {
                            Ok(dir) => Self::attach(Path::new(&kubeconfig), Path::new(&dir)).await,
                            Err(e) => Err(e),
                        }
                    }
                    None => Self::start().await,
                };
                r.map_err(|e| format!("{e:#}"))
            })
            .await;
        match cp {
            Ok(cp) => cp,
            Err(e) => panic!("the shared control plane is not available: {e}"),
        }
    }

    fn owned(&self) -> Result<&Owned> {
        self.owned
            .as_ref()
            .ok_or_else(|| anyhow!("this control plane was started by another process (attached); use ControlPlane::start()"))
    }

    async fn boot(&self, options: &StartOptions) -> Result<()> {
        self.start_etcd_and_apiserver().await?;
        for path in &options.crds {
            if path.is_dir() {
                self.install_crds(path).await?;
            } else {
                self.apply_yaml_file(path).await?;
            }
        }
        self.start_controller_manager().await
    }

    fn spawn(&self, bin: &str, args: Vec<String>) -> Result<ChildProcess> {
        let owned = self.owned()?;
        ChildProcess::builder(owned.bin_dir.join(bin))
            .args(args)
            .current_dir(&self.dir)
            .log_file(self.dir.join(format!("{bin}.log")))
            .spawn()
    }

    async fn start_etcd_and_apiserver(&self) -> Result<()> {
        let owned = self.owned()?;
        let mut procs = owned.procs.lock().await;
        let d = |f: &str| self.dir.join(f).display().to_string();
        let i = &self.info;
        let peer = format!("http://127.0.0.1:{}", i.etcd_peer_port);
        let client = format!("http://127.0.0.1:{}", i.etcd_client_port);
        let etcd = self.spawn(
            "etcd",
            vec![
                "--name=default".into(),
                format!("--data-dir={}", d("etcd-data")),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=default={peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let waited = wait_for_port(i.etcd_client_port, Duration::from_secs(30)).await;
        if let Err(e) = waited.and_then(|()| exited(&etcd)) {
            let msg = failure("etcd", &etcd, e);
            procs.etcd = Some(etcd);
            return Err(msg);
        }
        procs.etcd = Some(etcd);

        let mut args: Vec<String> = vec![
            format!("--etcd-servers={client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", i.apiserver_port),
            format!("--tls-cert-file={}", d("serving.crt")),
            format!("--tls-private-key-file={}", d("serving.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={}/", i.server),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // No kubelet, no serviceaccount controller: pods need no ServiceAccount.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--audit-policy-file={}", d("audit-policy.yaml")),
            format!("--audit-log-path={}", d(AUDIT_LOG)),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            "--audit-log-maxsize=1024".into(),
        ];
        // A flag in `apiserver_args` replaces the usual one of that name (list flags such as
        // --disable-admission-plugins would otherwise add up).
        let name = |a: &str| a.split('=').next().unwrap_or("").to_string();
        let overridden: Vec<String> = owned.apiserver_args.iter().map(|a| name(a)).collect();
        args.retain(|a| !overridden.contains(&name(a)));
        args.extend(owned.apiserver_args.iter().cloned());
        let apiserver = self.spawn("kube-apiserver", args)?;
        let client = self.admin_client().await?;
        if let Err(e) = wait_readyz(&client, Duration::from_secs(90), Some(&apiserver)).await {
            let msg = failure("kube-apiserver", &apiserver, e);
            procs.apiserver = Some(apiserver);
            return Err(msg);
        }
        procs.apiserver = Some(apiserver);
        drop(procs);
        // "ready": the default namespace and the RBAC bootstrap roles exist.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ns = Api::<Namespace>::all(client.clone())
                .get_opt("default")
                .await;
            let role = Api::<ClusterRole>::all(client.clone())
                .get_opt("cluster-admin")
                .await;
            if matches!((ns, role), (Ok(Some(_)), Ok(Some(_)))) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "namespace default / clusterrole cluster-admin missing after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_controller_manager(&self) -> Result<()> {
        let owned = self.owned()?;
        let mut procs = owned.procs.lock().await;
        let d = |f: &str| self.dir.join(f).display().to_string();
        let kubeconfig = d("kubeconfig-controller-manager.yaml");
        let port = self.info.controller_manager_port;
        let kcm = self.spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--controllers=garbage-collector-controller,namespace-controller,clusterrole-aggregation-controller"
                    .into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", d("serving.crt")),
                format!("--tls-private-key-file={}", d("serving.key")),
            ],
        )?;
        let r = self.wait_controller_manager(&kcm, port).await;
        let r = r.map_err(|e| failure("kube-controller-manager", &kcm, e));
        procs.controller_manager = Some(kcm);
        r
    }

    async fn wait_controller_manager(&self, kcm: &ChildProcess, port: u16) -> Result<()> {
        let mut config = Config::new(format!("https://127.0.0.1:{port}").parse()?);
        config.root_cert = Some(vec![pem_to_der(&fs::read_to_string(
            self.dir.join("ca.crt"),
        )?)?]);
        let kcm_client = Client::try_from(config)?;
        wait_readyz(&kcm_client, Duration::from_secs(60), Some(kcm))
            .await
            .map_err(|e| anyhow!("/healthz: {e:#}"))?;
        // The clusterrole-aggregation controller has filled the aggregated roles.
        let roles = Api::<ClusterRole>::all(self.admin_client().await?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            exited(kcm)?;
            if let Ok(Some(view)) = roles.get_opt("view").await
                && view.rules.is_some_and(|r| !r.is_empty())
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "clusterrole view still has no aggregated rules after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops kube-apiserver (SIGKILL: it keeps no state, and its graceful shutdown waits for
    /// clients' watches) and etcd (SIGTERM, SIGKILL after 10 s). Private instances only.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let owned = self.owned()?;
        let mut procs = owned.procs.lock().await;
        if let Some(p) = procs.apiserver.take() {
            p.kill_9()?;
        }
        if let Some(p) = procs.etcd.take() {
            p.stop(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Starts kube-apiserver and etcd again, on the same ports and data, and waits until ready.
    pub async fn start_apiserver(&self) -> Result<()> {
        {
            let procs = self.owned()?.procs.lock().await;
            ensure!(
                procs.apiserver.is_none() && procs.etcd.is_none(),
                "kube-apiserver/etcd still running"
            );
        }
        self.start_etcd_and_apiserver().await
    }

    /// Restarts kube-apiserver and etcd on the same ports and data dir (fault tests).
    /// kube-controller-manager keeps running and reconnects. Private instances only.
    pub async fn restart(&self) -> Result<()> {
        self.stop_apiserver().await?;
        self.start_apiserver().await
    }

    /// Restarts kube-controller-manager (same port). Its garbage collector discovers CRDs created
    /// after it started only on its 30 s resync, and meanwhile backs off: a restart makes it
    /// watch them at once. [`Self::apply_yaml`] does this by itself when it creates a CRD.
    /// Attached instances ask the process that started them (`testenv`) to do it.
    pub async fn restart_controller_manager(&self) -> Result<()> {
        if self.owned.is_none() {
            return self.request_from_owner("restart-controller-manager").await;
        }
        let owned = self.owned()?;
        {
            let mut procs = owned.procs.lock().await;
            if let Some(p) = procs.controller_manager.take() {
                p.stop(Duration::from_secs(10)).await?;
            }
        }
        self.start_controller_manager().await
    }

    async fn request_from_owner(&self, what: &str) -> Result<()> {
        ensure!(
            self.info.serves_requests,
            "cannot {what}: the process that started this control plane (pid {}) does not serve requests",
            self.info.started_by_pid
        );
        let dir = self.dir.join("requests");
        fs::create_dir_all(&dir)?;
        let id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let tmp = dir.join(format!("{id}.tmp"));
        fs::write(&tmp, what)?;
        fs::rename(&tmp, dir.join(format!("{id}.req")))?;
        let done = dir.join(format!("{id}.done"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(answer) = fs::read_to_string(&done) {
                let _ = fs::remove_file(&done);
                ensure!(answer == "ok", "{what} failed: {answer}");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no answer to {what} after 90 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// For the starting process (`testenv`), before it runs the command: tells attaching
    /// processes that [`Self::serve_requests`] will answer their requests.
    pub fn enable_requests(&self) -> Result<()> {
        self.owned()?;
        let mut info = self.info.clone();
        info.serves_requests = true;
        let tmp = self.dir.join(format!("{INFO_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&info)?)?;
        fs::rename(&tmp, self.dir.join(INFO_FILE))?;
        Ok(())
    }

    /// For the starting process (`testenv`): serves requests of attached processes (so far:
    /// `restart-controller-manager`) forever. Run it next to the command.
    pub async fn serve_requests(&self) -> Result<()> {
        self.owned()?;
        let dir = self.dir.join("requests");
        fs::create_dir_all(&dir)?;
        loop {
            let mut requests: Vec<PathBuf> = fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "req"))
                .collect();
            requests.sort();
            for req in requests {
                let what = fs::read_to_string(&req).unwrap_or_default();
                let _ = fs::remove_file(&req);
                let result = match what.as_str() {
                    "restart-controller-manager" => self.restart_controller_manager().await,
                    other => Err(anyhow!("unknown request {other:?}")),
                };
                let answer = match result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                let done = req.with_extension("done");
                let tmp = req.with_extension("donetmp");
                fs::write(&tmp, answer)?;
                fs::rename(&tmp, &done)?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn controller_manager_running(&self) -> bool {
        match &self.owned {
            Some(owned) => owned.procs.lock().await.controller_manager.is_some(),
            None => true,
        }
    }

    /// Kills everything now (also done on drop and at exit).
    pub async fn shutdown(&self) {
        if let Some(owned) = &self.owned {
            owned.procs.lock().await.kill_all();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Access.

    /// The control plane's directory (PKI, token file, kubeconfigs, audit log, process logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `https://127.0.0.1:<port>`
    pub fn server_url(&self) -> &str {
        &self.info.server
    }
    /// True when this process started it (then [`Self::restart`] works).
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }
    /// The CA certificate (PEM file) that signed the serving and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// Admin kubeconfig (client certificate, `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }
    /// Kubeconfig (bearer token) of a [`TEST_USERS`] user; the admin's is the certificate one.
    /// Panics on an unknown user.
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        assert!(
            test_user(user).is_some(),
            "unknown test user {user:?}; known: {TEST_USERS:?}"
        );
        if user == ADMIN {
            return self.admin_kubeconfig.clone();
        }
        self.dir.join(format!("kubeconfig-{user}.yaml"))
    }
    /// `kube::Config` for a test user (to adjust timeouts etc. before building a client).
    pub async fn config_for(&self, user: &str) -> Result<Config> {
        config_from_kubeconfig(&self.kubeconfig_for(user)).await
    }
    /// A new client acting as `user`. Create clients per test: a client belongs to the runtime
    /// it was created in.
    pub async fn client_as(&self, user: &str) -> Result<Client> {
        Ok(Client::try_from(self.config_for(user).await?)?)
    }
    /// A new client authenticating with a bearer token (e.g. from a TokenRequest).
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        let ca = fs::read_to_string(self.ca_file())?;
        let yaml = kubeconfig_yaml(
            &self.info.server,
            &ca,
            "token-user",
            &format!("      token: {token}\n"),
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }
    /// A new admin client.
    pub async fn admin_client(&self) -> Result<Client> {
        Ok(Client::try_from(
            config_from_kubeconfig(&self.admin_kubeconfig).await?,
        )?)
    }

    /// Paths of the process logs (etcd, kube-apiserver, kube-controller-manager).
    pub fn log_files(&self) -> Vec<PathBuf> {
        ["etcd", "kube-apiserver", "kube-controller-manager"]
            .iter()
            .map(|b| self.dir.join(format!("{b}.log")))
            .collect()
    }

    /// Creates a namespace `<prefix>-<random>` (admin) and returns its name.
    pub async fn new_namespace(&self, prefix: &str) -> Result<String> {
        let mut prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        prefix.truncate(50);
        let name = format!(
            "{}-{:06x}",
            prefix.trim_matches('-'),
            rand::random::<u32>() & 0xff_ffff
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "testkit.stssession.dev/test": "true" } }
        }))?;
        Api::<Namespace>::all(self.admin_client().await?)
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
    }

    // -----------------------------------------------------------------------------------------
    // Applying manifests.

    /// Server-side-applies every document of a multi-document YAML (as admin, field manager
    /// `testkit`, forced). Namespaced objects without a namespace go to `default`. Waits until
    /// applied CustomResourceDefinitions are Established; when one was new, restarts
    /// kube-controller-manager so that garbage collection covers it at once.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<DynamicObject>> {
        let client = self.admin_client().await?;
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        let mut applied = Vec::new();
        let mut new_crd = false;
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(serde_json::to_value(&value)?)?;
            if obj
                .types
                .as_ref()
                .is_some_and(|t| t.kind == "CustomResourceDefinition")
            {
                let name = obj.metadata.name.as_deref().unwrap_or_default();
                new_crd |= crds.get_opt(name).await?.is_none();
            }
            applied.push(apply_one(&client, obj).await?);
        }
        for obj in &applied {
            let types = obj.types.as_ref();
            if types.is_some_and(|t| t.kind == "CustomResourceDefinition") {
                let name = obj.metadata.name.clone().unwrap_or_default();
                let crds = Api::<CustomResourceDefinition>::all(client.clone());
                let cond = kube::runtime::wait::conditions::is_crd_established();
                tokio::time::timeout(
                    Duration::from_secs(30),
                    kube::runtime::wait::await_condition(crds, &name, cond),
                )
                .await
                .map_err(|_| anyhow!("CRD {name} not Established after 30 s"))??;
            }
        }
        if new_crd && self.controller_manager_running().await {
            let restarted = self.restart_controller_manager().await;
            match restarted {
                Err(e) if self.owned.is_some() => {
                    return Err(e.context("restarting kube-controller-manager for new CRDs"));
                }
                Err(e) => eprintln!(
                    "testkit: warning: {e:#}; garbage collection covers the new CRDs only after \
                     kube-controller-manager's next 30 s resync"
                ),
                Ok(()) => {}
            }
        }
        Ok(applied)
    }

    /// [`Self::apply_yaml`] on a file.
    pub async fn apply_yaml_file(&self, path: impl AsRef<Path>) -> Result<Vec<DynamicObject>> {
        let path = path.as_ref();
        let yaml =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        self.apply_yaml(&yaml)
            .await
            .with_context(|| format!("applying {}", path.display()))
    }

    /// Applies every `*.yaml`/`*.yml` file of `dir` (sorted by name), waiting for CRDs to be
    /// Established.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<DynamicObject>> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut all = Vec::new();
        for f in files {
            all.extend(self.apply_yaml_file(&f).await?);
        }
        Ok(all)
    }

    // -----------------------------------------------------------------------------------------
    // Audit.

    /// The audit log (JSON lines).
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join(AUDIT_LOG)
    }

    /// All `ResponseComplete` audit events so far, oldest first.
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        let mut cache = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        cache.refresh(&self.audit_log_path())?;
        Ok(cache.events.clone())
    }

    /// Audit events received at or after `since` that match `pred`.
    pub fn audit_events_where(
        &self,
        since: jiff::Timestamp,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> Result<Vec<AuditEvent>> {
        let mut cache = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        cache.refresh(&self.audit_log_path())?;
        Ok(cache
            .events
            .iter()
            .filter(|e| e.request_received_timestamp >= since && pred(e))
            .cloned()
            .collect())
    }

    /// Writes (create/update/patch/delete/deletecollection) by `user` received since `since`.
    /// Use `.len()` to count them.
    pub fn writes_by(&self, user: &str, since: jiff::Timestamp) -> Result<Vec<AuditEvent>> {
        self.audit_events_where(since, |e| e.username() == user && e.is_write())
    }

    /// Polls the audit log until an event (received since `since`) matches `pred`.
    /// The log is written right after the response, so poll rather than read once.
    pub async fn wait_for_audit_event(
        &self,
        since: jiff::Timestamp,
        timeout: Duration,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> Result<AuditEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.audit_events_where(since, &pred)?.into_iter().next() {
                return Ok(e);
            }
            ensure!(
                Instant::now() < deadline,
                "no matching audit event after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn apply_one(client: &Client, mut obj: DynamicObject) -> Result<DynamicObject> {
    let types = obj
        .types
        .clone()
        .context("object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let name = obj
        .metadata
        .name
        .clone()
        .context("object without metadata.name")?;
    // Discovery lags a moment behind a CRD that was just Established.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (ar, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("discovery of {gvk:?}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!(e).context(format!("no API for {gvk:?}"))),
        }
    };
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into())
                .clone();
            Api::namespaced_with(client.clone(), &ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let params = PatchParams::apply("testkit").force();
    api.patch(&name, &params, &Patch::Apply(&obj))
        .await
        .with_context(|| format!("applying {} {name}", gvk.kind))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// Error if the process has exited.
fn exited(p: &ChildProcess) -> Result<()> {
    match p.try_wait()? {
        Some(status) => bail!("{} exited early: {status}", p.name()),
        None => Ok(()),
    }
}

fn failure(what: &str, p: &ChildProcess, e: anyhow::Error) -> anyhow::Error {
    let msg = format!(
        "{what} did not become ready: {e:#}\n--- last lines of {} ---\n{}\n---",
        p.log_path().display(),
        tail(&p.read_log(), 40)
    );
    eprintln!("testkit: {msg}");
    anyhow!(msg)
}

/// Polls `/readyz` (or `/healthz`, for kube-controller-manager) until it answers `ok`.
async fn wait_readyz(
    client: &Client,
    timeout: Duration,
    process: Option<&ChildProcess>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let path = if process.is_some_and(|p| p.name() == "kube-controller-manager") {
        "/healthz"
    } else {
        "/readyz"
    };
    loop {
        if let Some(p) = process {
            exited(p)?;
        }
        let req = hyper::Request::get(path).body(Vec::new())?;
        let last =
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
        if Instant::now() >= deadline {
            bail!("{path} not ok after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Audit events.

/// One audit event (the fields tests look at; `Metadata` level).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: AuditUser,
    #[serde(default)]
    pub impersonated_user: Option<AuditUser>,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    #[serde(default)]
    pub user_agent: Option<String>,
    pub request_received_timestamp: jiff::Timestamp,
    pub stage_timestamp: jiff::Timestamp,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: Option<u16>,
}

/// Verbs that change state.
pub const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

impl AuditEvent {
    pub fn username(&self) -> &str {
        &self.user.username
    }
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }
    fn obj(&self) -> Option<&AuditObjectRef> {
        self.object_ref.as_ref()
    }
    pub fn resource(&self) -> &str {
        self.obj().and_then(|o| o.resource.as_deref()).unwrap_or("")
    }
    pub fn namespace(&self) -> &str {
        self.obj()
            .and_then(|o| o.namespace.as_deref())
            .unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.obj().and_then(|o| o.name.as_deref()).unwrap_or("")
    }
    pub fn subresource(&self) -> &str {
        self.obj()
            .and_then(|o| o.subresource.as_deref())
            .unwrap_or("")
    }
    /// `""` for the core group.
    pub fn api_group(&self) -> &str {
        self.obj()
            .and_then(|o| o.api_group.as_deref())
            .unwrap_or("")
    }
    /// HTTP status code of the response.
    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref().and_then(|s| s.code)
    }
}

/// Incrementally parsed audit log.
#[derive(Default)]
struct AuditCache {
    offset: u64,
    events: Vec<AuditEvent>,
}

impl AuditCache {
    fn refresh(&mut self, path: &Path) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            // Rotated or recreated.
            *self = Self::default();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        f.read_to_end(&mut buf)?;
        // Only complete lines; a partial last line is read next time.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in buf[..end].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditEvent>(line) {
                Ok(e) if e.stage == "ResponseComplete" => self.events.push(e),
                Ok(_) => {}
                Err(e) => tracing::warn!("unparsable audit line: {e}"),
            }
        }
        self.offset += end as u64 + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_parse_incrementally() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        let line = |stage: &str, verb: &str| {
            format!(
                r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"{stage}","requestURI":"/api/v1/namespaces/ns/configmaps","verb":"{verb}","user":{{"username":"alice","groups":["team-a"]}},"objectRef":{{"resource":"configmaps","namespace":"ns","name":"c","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestReceivedTimestamp":"2026-01-01T00:00:00.000001Z","stageTimestamp":"2026-01-01T00:00:00.000002Z"}}"#
            )
        };
        let mut cache = AuditCache::default();
        fs::write(
            &path,
            format!(
                "{}\n{}",
                line("ResponseComplete", "create"),
                &line("ResponseComplete", "get")[..40]
            ),
        )?;
        cache.refresh(&path)?;
        assert_eq!(cache.events.len(), 1);
        let e = &cache.events[0];
        assert_eq!(
            (
                e.username(),
                e.resource(),
                e.namespace(),
                e.name(),
                e.code()
            ),
            ("alice", "configmaps", "ns", "c", Some(201))
        );
        assert!(e.is_write() && e.api_group().is_empty() && e.subresource().is_empty());
        fs::write(
            &path,
            format!(
                "{}\n{}\n{}\n",
                line("ResponseComplete", "create"),
                line("ResponseComplete", "get"),
                line("ResponseStarted", "watch")
            ),
        )?;
        cache.refresh(&path)?;
        assert_eq!(
            cache
                .events
                .iter()
                .map(|e| e.verb.as_str())
                .collect::<Vec<_>>(),
            ["create", "get"]
        );
        Ok(())
    }

    #[test]
    fn tokens_are_deterministic_and_distinct() {
        let tokens: std::collections::HashSet<String> =
            TEST_USERS.iter().map(|u| token_for(u.name)).collect();
        assert_eq!(tokens.len(), TEST_USERS.len());
        assert_eq!(token_for("alice"), token_for("alice"));
        assert!(token_file().lines().any(|l| {
            l.ends_with(r#","sts-operator,testkit-uid-sts-operator,"stssession:operators""#)
                || l.contains(r#",sts-operator,testkit-uid-sts-operator,"stssession:operators""#)
        }));
    }
}
