//! Shared setup for the operator's end-to-end tests: the real control plane (shared), a
//! namespace per test, an STS peer, and the real operator binary running as the
//! `sts-operator` identity with the RBAC it ships with.
//!
//! Included by several test binaries (`#[path]`), each using a part of it.
#![allow(dead_code)]

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use sts_session_operator::crd::{Condition, SessionToken};
use testkit::control_plane::ControlPlane;
use testkit::process::{ChildProcess, free_port};
use tokio::sync::OnceCell;

pub const OPERATOR_USER: &str = "sts-operator";

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// The shared control plane with the CRD and the operator's RBAC installed.
pub async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    INSTALLED
        .get_or_init(|| async {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            cp.install_crds(root.join("crds"))
                .await
                .expect("installing the CRD");
            cp.apply_yaml_file(root.join("tests/fixtures/operator-rbac.yaml"))
                .await
                .expect("installing RBAC");
        })
        .await;
    cp
}

/// Flags that make the operator's timing test-sized.
pub struct OperatorOptions {
    pub sts_endpoint: String,
    pub extra_args: Vec<String>,
    pub leader_election: bool,
    pub user: &'static str,
}

/// One operator process, watching one namespace.
pub struct Operator {
    pub process: ChildProcess,
    pub metrics_port: u16,
}

impl Operator {
    pub async fn start(cp: &ControlPlane, ns: &str, opts: &OperatorOptions) -> Result<Operator> {
        let metrics_port = free_port()?;
        let kubeconfig = cp.kubeconfig_for(opts.user);
        let mut args: Vec<String> = vec![
            format!("--namespaces={ns}"),
            format!("--sts-endpoint={}", opts.sts_endpoint),
            "--allowed-sts-endpoints=http://127.0.0.1:*".into(),
            format!("--metrics-address=127.0.0.1:{metrics_port}"),
            // /metrics open: the test users have no TokenReview rights (tests/install.rs checks
            // the guard the chart turns on).
            "--metrics-auth=false".into(),
            "--log-format=text".into(),
            format!("--leader-election={}", opts.leader_election),
            format!("--lease-namespace={ns}"),
            "--token-code-max-age=6s".into(),
            "--code-required-interval=2s".into(),
            "--retry-base=1s".into(),
            "--retry-cap=4s".into(),
            "--sts-timeout=5s".into(),
        ];
        // An extra `--flag=value` replaces the default of that flag (the operator refuses a
        // flag given twice).
        let flag = |a: &str| a.split_once('=').map(|(f, _)| f.to_string());
        let overridden: Vec<String> = opts
            .extra_args
            .iter()
            .filter(|a| *a != "--namespaces" && !a.starts_with("--namespaces="))
            .filter_map(|a| flag(a))
            .collect();
        args.retain(|a| flag(a).is_none_or(|f| !overridden.contains(&f)));
        // `--namespaces=` (empty: every namespace) replaces the default instead of adding to it.
        if opts.extra_args.iter().any(|a| a == "--namespaces=") {
            args.retain(|a| !a.starts_with("--namespaces="));
        }
        args.extend(opts.extra_args.iter().cloned());
        let process = ChildProcess::builder(env!("CARGO_BIN_EXE_sts-session-operator"))
            .name(format!("operator-{ns}"))
            .log_file(cp.dir().join(format!("operator-{ns}-{metrics_port}.log")))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            // debug everywhere: the canary tests grep these logs for secrets
            .env(
                "RUST_LOG",
                "debug,hyper=info,h2=info,rustls=info,tower=info",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .spawn()?;
        let op = Operator {
            process,
            metrics_port,
        };
        op.wait_ready().await?;
        Ok(op)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(self.metrics_port, "/readyz")
                .await
                .is_ok_and(|b| b.starts_with("200"))
            {
                return Ok(());
            }
            if !self.process.is_running() {
                bail!("operator exited:\n{}", self.process.log_tail(40));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "operator not ready after 30s:\n{}",
                    self.process.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> Result<String> {
        http_get(self.metrics_port, "/metrics").await
    }

    pub fn log(&self) -> String {
        self.process.read_log()
    }
}

/// Minimal HTTP GET over loopback: "STATUS\nBODY".
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf.split(' ').nth(1).unwrap_or("").to_string();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(format!("{status}\n{body}"))
}

/// A namespace with helpers to act in it.
pub struct Ns {
    pub name: String,
    pub client: Client,
}

impl Ns {
    pub async fn new(cp: &ControlPlane, prefix: &str) -> Result<Ns> {
        let name = cp.new_namespace(prefix).await?;
        Ok(Ns {
            name,
            client: cp.admin_client().await?,
        })
    }

    pub fn sessions(&self) -> Api<SessionToken> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn create_source_secret(
        &self,
        name: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key},
        }))?;
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// Creates a SessionToken from a raw JSON spec (sent as is, so the API server, not serde,
    /// judges malformed input).
    pub async fn create_session(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<SessionToken> {
        let ar = ApiResource::erase::<SessionToken>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.name, &ar);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        let created = api.create(&PostParams::default(), &obj).await?;
        Ok(serde_json::from_value(serde_json::to_value(created)?)?)
    }

    /// Sets the approval annotations, as `kubectl annotate` (a merge patch) would.
    pub async fn approve(&self, name: &str, code: &str, by: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {
            "stssession.dev/token-code": code, "stssession.dev/approved-by": by}}});
        self.sessions()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    pub async fn session(&self, name: &str) -> Result<SessionToken> {
        Ok(self.sessions().get(name).await?)
    }

    pub async fn secret_data(&self, name: &str) -> Result<Option<BTreeMap<String, String>>> {
        Ok(self.secrets().get_opt(name).await?.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        }))
    }

    /// Events about objects in this namespace, oldest first.
    pub async fn events(&self) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.name);
        let mut list = api.list(&ListParams::default()).await?.items;
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        Ok(list)
    }

    pub async fn event_reasons(&self) -> Result<Vec<String>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter_map(|e| e.reason)
            .collect())
    }
}

pub fn condition(st: &SessionToken, type_: &str) -> Option<Condition> {
    st.condition(type_).cloned()
}

/// (status, reason) of a condition, for compact assertions.
pub fn cond(st: &SessionToken, type_: &str) -> (String, String) {
    condition(st, type_)
        .map(|c| (c.status.into_owned(), c.reason.into_owned()))
        .unwrap_or_default()
}

/// Polls `check` until it returns Some, or fails with the last state after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            let why = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the SessionToken's condition has the given status and reason.
pub async fn wait_condition(
    ns: &Ns,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> Result<SessionToken> {
    let seen = std::sync::Mutex::new((String::new(), String::new()));
    let result = eventually(
        timeout,
        &format!("{name} {type_}={status}/{reason}"),
        || async {
            let st = ns.session(name).await?;
            let now = cond(&st, type_);
            let hit = now.0 == status && now.1 == reason;
            *seen.lock().unwrap() = now;
            Ok(hit.then_some(st))
        },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    result.with_context(|| format!("{type_} was {}/{}", seen.0, seen.1))
}
