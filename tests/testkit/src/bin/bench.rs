//! `bench`: how fast, how small, how it scales (`make bench`, see README "Benchmarks").
//!
//! Starts a private local control plane, the STS test double and the *release-built* operator
//! binary (as `sts-operator`, with `tests/fixtures/operator-rbac.yaml` and `crds/`), one operator
//! process per scenario, each watching only its own namespace, and prints a table:
//!
//! - approval latency: `stssession.dev/token-code` written (merge patch sent) → the output
//!   Secret's new session seen on a watch, one approval at a time, minus the STS double's
//!   own server-side time for that call;
//! - cold start: N SessionTokens without MFA, all created *before* the operator starts, → all
//!   `Ready=True`; STS calls; the operator's API requests from the audit log;
//! - steady state: the operator's writes and STS calls while every session is valid;
//! - footprint: peak RSS (VmHWM) at 0 and N SessionTokens, start to /readyz, binary size;
//! - rotation storm: sessions that all expire at the same instant (the double returns a fixed
//!   expiration), rotated with `--sts-concurrency` calls in flight at most;
//! - the floor under each cold start: the same N SessionTokens made Ready without the operator,
//!   by a writer that does only the two writes per SessionToken any operator must ([`floor`]).
//!
//! Usage: `bench [--sizes 1000,10000] [--approvals 200] [--steady 60s] [--storm 1000] ...`
//! (`bench --help`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testkit::control_plane::{AuditEvent, ControlPlane, StartOptions, workspace_root};
use testkit::process::{ChildProcess, free_port};
use testkit::sts_double::{CodePolicy, Fault, RecordedCall, StsDouble, StsDoubleConfig, TestUser};
use tokio::sync::watch;

#[path = "bench/floor.rs"]
mod floor;

const OPERATOR_USER: &str = "sts-operator";

const HELP: &str = "\
bench: benchmarks of the release-built operator against a private local control plane.

  --sizes N,N...          cold-start sizes (SessionTokens without MFA)     [1000,10000]
  --approvals N           measured approvals (MFA, one at a time)           [200]
  --approval-tokens N     MFA SessionTokens the approvals rotate over       [100]
                          (one is approved again only after 1.1 s: claim times are whole seconds)
  --steady DURATION       steady-state window after each cold start         [60s]
  --storm N               SessionTokens in the rotation storm (0: skip)     [1000]
  --storm-sts-delay D     STS double response delay during the storm        [50ms]
  --storm-lead D          from operator start to the storm's first renewal  [40s]
  --sts-delay D           STS double response delay elsewhere               [0s]
  --create-concurrency N  the bench's own create requests in flight         [32]
  --ready-timeout D       longest wait for a cold start                     [600s]
  --large N               SessionTokens of the largest admitted size (0: skip) [200]
  --roles N               AssumedRoles drawing on --role-sessions sessions (0: skip) [1000]
  --role-sessions N       SessionTokens the AssumedRoles draw on            [10]
  --only LIST             scenarios: approval,footprint,cold,floor,storm,large,roles [all]
                          (floor: each --sizes N made Ready by the two writes alone, no operator)
  --operator PATH         operator binary   [$CARGO_TARGET_DIR/release/sts-session-operator]
  --operator-arg ARG      extra operator flag (repeatable), e.g. --operator-arg=--sts-concurrency=32
  --apiserver-arg ARG     extra kube-apiserver flag (repeatable)
  --json PATH             also write the figures as JSON
Durations: 500ms, 60s, 2m.";

// ---------------------------------------------------------------------------------------------
// Options.

struct Opts {
    sizes: Vec<usize>,
    approvals: usize,
    approval_tokens: usize,
    steady: Duration,
    storm: usize,
    large: usize,
    roles: usize,
    role_sessions: usize,
    storm_sts_delay: Duration,
    storm_lead: Duration,
    sts_delay: Duration,
    create_concurrency: usize,
    ready_timeout: Duration,
    only: Option<Vec<String>>,
    operator: PathBuf,
    operator_args: Vec<String>,
    apiserver_args: Vec<String>,
    json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("{s:?}: unit must be ms, s or m"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn default_operator() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sts-session-operator/target")
        });
    target.join("release/sts-session-operator")
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            sizes: vec![1000, 10_000],
            approvals: 200,
            approval_tokens: 100,
            steady: Duration::from_secs(60),
            storm: 1000,
            large: 200,
            roles: 1000,
            role_sessions: 10,
            storm_sts_delay: Duration::from_millis(50),
            storm_lead: Duration::from_secs(40),
            sts_delay: Duration::ZERO,
            create_concurrency: 32,
            ready_timeout: Duration::from_secs(600),
            only: None,
            operator: default_operator(),
            operator_args: vec![],
            apiserver_args: vec![],
            json: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if key == "--help" || key == "-h" {
                println!("{HELP}");
                std::process::exit(0);
            }
            let mut value = || -> Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args.next().with_context(|| format!("{key} needs a value")),
                }
            };
            match key.as_str() {
                "--sizes" => {
                    o.sizes = value()?
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| s.trim().parse().context("--sizes"))
                        .collect::<Result<_>>()?
                }
                "--approvals" => o.approvals = value()?.parse()?,
                "--approval-tokens" => o.approval_tokens = value()?.parse::<usize>()?.max(1),
                "--steady" => o.steady = parse_duration(&value()?)?,
                "--storm" => o.storm = value()?.parse()?,
                "--large" => o.large = value()?.parse()?,
                "--roles" => o.roles = value()?.parse()?,
                "--role-sessions" => o.role_sessions = value()?.parse::<usize>()?.max(1),
                "--storm-sts-delay" => o.storm_sts_delay = parse_duration(&value()?)?,
                "--storm-lead" => o.storm_lead = parse_duration(&value()?)?,
                "--sts-delay" => o.sts_delay = parse_duration(&value()?)?,
                "--create-concurrency" => o.create_concurrency = value()?.parse::<usize>()?.max(1),
                "--ready-timeout" => o.ready_timeout = parse_duration(&value()?)?,
                "--only" => {
                    o.only = Some(value()?.split(',').map(|s| s.trim().to_string()).collect())
                }
                "--operator" => o.operator = PathBuf::from(value()?),
                "--operator-arg" => o.operator_args.push(value()?),
                "--apiserver-arg" => o.apiserver_args.push(value()?),
                "--json" => o.json = Some(PathBuf::from(value()?)),
                other => bail!("unknown argument {other:?}\n\n{HELP}"),
            }
        }
        Ok(o)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|s| s == scenario))
    }

    /// The operator's `--sts-concurrency` (its default unless overridden).
    fn sts_concurrency(&self) -> String {
        self.operator_args
            .iter()
            .rev()
            .find_map(|a| a.strip_prefix("--sts-concurrency=").map(str::to_string))
            .unwrap_or_else(|| "16 (default)".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The operator process.

struct Operator {
    process: ChildProcess,
    port: u16,
    /// Spawn → /readyz answered 200.
    ready_after: Duration,
}

impl Operator {
    async fn start(world: &World, ns: &str, opts: &Opts) -> Result<Operator> {
        let port = free_port()?;
        let mut args = vec![
            format!("--namespaces={ns}"),
            format!("--sts-endpoint={}", world.sts.endpoint()),
            "--allowed-sts-endpoints=http://127.0.0.1:*".into(),
            format!("--metrics-address=127.0.0.1:{port}"),
            // Local run: /metrics open (the chart turns its TokenReview guard on).
            "--metrics-auth=false".into(),
            format!("--lease-namespace={ns}"),
        ];
        args.extend(opts.operator_args.iter().cloned());
        let spawned = Instant::now();
        let process = ChildProcess::builder(&opts.operator)
            .name(format!("operator-{ns}"))
            .log_file(world.cp.dir().join(format!("operator-{ns}.log")))
            .args(&args)
            .env("KUBECONFIG", world.cp.kubeconfig_for(OPERATOR_USER))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("RUST_LOG")
            .spawn()?;
        let deadline = spawned + Duration::from_secs(30);
        loop {
            if http_get(port, "/readyz").await.is_ok_and(|s| s == 200) {
                break;
            }
            ensure!(
                process.is_running(),
                "the operator exited:\n{}",
                process.log_tail(30)
            );
            ensure!(
                Instant::now() < deadline,
                "the operator is not ready after 30 s:\n{}",
                process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Operator {
            ready_after: spawned.elapsed(),
            process,
            port,
        })
    }

    fn memory(&self) -> Result<Mem> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Mem {
            hwm_kib: field("VmHWM:"),
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            file_kib: field("RssFile:"),
            threads: field("Threads:"),
        })
    }

    /// CPU time (user + system) used so far.
    fn cpu(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))?;
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3; utime 14, stime 15 (1-based over the whole line).
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    async fn stop(self) -> Result<()> {
        ensure!(
            self.process.is_running(),
            "the operator died:\n{}",
            self.process.log_tail(30)
        );
        let _ = self.port;
        self.process.terminate()?;
        let p = self.process;
        tokio::task::spawn_blocking(move || p.wait_timeout_blocking(Duration::from_secs(10)))
            .await??;
        Ok(())
    }
}

/// GET on loopback; the HTTP status.
async fn http_get(port: u16, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf.split(' ').nth(1).unwrap_or("").parse()?)
}

/// From `/proc/<pid>/status`, in KiB.
#[derive(serde::Serialize, Clone, Copy)]
struct Mem {
    /// Peak resident set (VmHWM).
    hwm_kib: u64,
    /// Resident set now (VmRSS = RssAnon + RssFile + RssShmem).
    rss_kib: u64,
    anon_kib: u64,
    /// Mapped file pages: mostly the binary's own code.
    file_kib: u64,
    threads: u64,
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peak RSS {} (now {}: {} heap/anon + {} binary/file; {} threads)",
            mib(self.hwm_kib),
            mib(self.rss_kib),
            mib(self.anon_kib),
            mib(self.file_kib),
            self.threads
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The world: control plane, STS double, admin client.

struct World {
    cp: ControlPlane,
    sts: StsDouble,
    user: TestUser,
    admin: Client,
    st_resource: ApiResource,
}

impl World {
    fn sessions(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), ns, &self.st_resource)
    }

    async fn namespace(&self, prefix: &str) -> Result<String> {
        let ns = self.cp.new_namespace(prefix).await?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "iam-keys"},
            "stringData": {"AWS_ACCESS_KEY_ID": self.user.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": self.user.secret_access_key},
        }))?;
        Api::<Secret>::namespaced(self.admin.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(ns)
    }

    /// Creates `n` SessionTokens `st-00000`… with `spec`, `concurrency` requests in flight.
    async fn create_tokens(
        &self,
        ns: &str,
        n: usize,
        spec: Value,
        concurrency: usize,
    ) -> Result<Duration> {
        let api = self.sessions(ns);
        let started = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
                    "metadata": {"name": format!("st-{i:05}")}, "spec": spec,
                }))
                .expect("static shape");
                async move { api.create(&PostParams::default(), &obj).await }
            })
            .buffer_unordered(concurrency)
            .try_for_each(|_| async { Ok(()) })
            .await
            .context("creating SessionTokens")?;
        Ok(started.elapsed())
    }

    fn source_spec(&self) -> Value {
        json!({"sourceCredentials": {"secretRef": {"name": "iam-keys"}}})
    }
}

// ---------------------------------------------------------------------------------------------
// Watching SessionTokens (the bench's own watch, as admin).

#[derive(Default, Clone, Debug)]
struct TokenState {
    /// The operator has written a status (any).
    seen: bool,
    ready: bool,
    rotations: i64,
    renewal: Option<Timestamp>,
    /// When this watch first saw `ready`.
    ready_at: Option<Instant>,
    /// When this watch saw each rotation count first.
    rotated_at: BTreeMap<i64, Instant>,
}

#[derive(Clone)]
struct Tracker {
    tokens: Arc<Mutex<HashMap<String, TokenState>>>,
    changed: watch::Receiver<u64>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Tracker {
    fn start(api: Api<DynamicObject>) -> Tracker {
        let tokens: Arc<Mutex<HashMap<String, TokenState>>> = Arc::default();
        let (tx, rx) = watch::channel(0u64);
        let map = tokens.clone();
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default().any_semantic());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let objs: Vec<DynamicObject> = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    _ => continue,
                };
                let mut map = map.lock().unwrap();
                for o in objs {
                    let status = o.data.get("status").cloned().unwrap_or(Value::Null);
                    let ready = status["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    let rotations = status["rotations"].as_i64().unwrap_or(0);
                    let renewal = status["renewalTime"]
                        .as_str()
                        .and_then(|s| s.parse::<Timestamp>().ok());
                    let e = map.entry(o.name_any()).or_default();
                    e.seen = status["conditions"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty());
                    e.ready = ready;
                    if ready && e.ready_at.is_none() {
                        e.ready_at = Some(now);
                    }
                    e.rotations = rotations;
                    e.rotated_at.entry(rotations).or_insert(now);
                    e.renewal = renewal;
                }
                drop(map);
                tx.send_modify(|v| *v += 1);
            }
        });
        Tracker {
            tokens,
            changed: rx,
            task: Arc::new(task),
        }
    }

    /// Waits until `cond` holds for the map (checked at most every `every`).
    async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        cond: impl Fn(&HashMap<String, TokenState>) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(&self.tokens.lock().unwrap()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(r) => r.context("watch ended")?,
                Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    fn snapshot(&self) -> HashMap<String, TokenState> {
        self.tokens.lock().unwrap().clone()
    }

    /// Until the watch has listed `n` SessionTokens.
    async fn wait_listed(&mut self, n: usize) -> Result<()> {
        self.wait(
            "the bench's watch to list everything",
            Duration::from_secs(120),
            Duration::from_millis(20),
            |m| m.len() == n,
        )
        .await
    }

    /// Until `n` SessionTokens are Ready.
    async fn wait_all_ready(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.wait(
            "every SessionToken to be Ready",
            timeout,
            Duration::from_millis(20),
            |m| m.values().filter(|t| t.ready).count() == n,
        )
        .await
    }

    /// From `started` to the last SessionToken this watch saw Ready.
    fn all_ready_after(&self, started: Instant) -> Result<Duration> {
        let last = self
            .snapshot()
            .values()
            .filter_map(|t| t.ready_at)
            .max()
            .context("no ready instants")?;
        Ok(last - started)
    }
}

// ---------------------------------------------------------------------------------------------
// Counting the operator's API requests (audit log).

#[derive(Default, Debug, Clone, serde::Serialize)]
struct Requests {
    secret_writes: usize,
    status_writes: usize,
    /// Patches of the SessionToken itself (claiming a code).
    token_writes: usize,
    /// AssumedRole status writes.
    role_status_writes: usize,
    event_writes: usize,
    lease_writes: usize,
    other_writes: usize,
    /// GETs by resource (`secrets`, `sessiontokens`, …).
    gets: BTreeMap<String, usize>,
    lists_and_watches: usize,
    /// Every request but the Lease's and the list/watches, by "verb resource[/subresource]".
    by_verb: BTreeMap<String, usize>,
}

impl Requests {
    fn from_audit(events: &[AuditEvent]) -> Requests {
        let mut r = Requests::default();
        for e in events {
            if e.resource() != "leases" && e.verb != "list" && e.verb != "watch" {
                let what = match (e.resource(), e.subresource()) {
                    ("", _) => format!("{} other", e.verb),
                    (res, "") => format!("{} {res}", e.verb),
                    (res, sub) => format!("{} {res}/{sub}", e.verb),
                };
                *r.by_verb.entry(what).or_default() += 1;
            }
            if e.is_write() {
                match (e.resource(), e.subresource()) {
                    ("secrets", _) => r.secret_writes += 1,
                    ("sessiontokens", "status") => r.status_writes += 1,
                    ("sessiontokens", _) => r.token_writes += 1,
                    ("assumedroles", "status") => r.role_status_writes += 1,
                    ("events", _) => r.event_writes += 1,
                    ("leases", _) => r.lease_writes += 1,
                    _ => r.other_writes += 1,
                }
            } else if e.verb == "get" {
                let what = match e.resource() {
                    "" => "other",
                    res => res,
                };
                *r.gets.entry(what.to_string()).or_default() += 1;
            } else if e.verb == "list" || e.verb == "watch" {
                r.lists_and_watches += 1;
            }
        }
        r
    }

    /// Writes that are not Events or the Lease.
    fn object_writes(&self) -> usize {
        self.secret_writes
            + self.status_writes
            + self.token_writes
            + self.role_status_writes
            + self.other_writes
    }

    fn total_gets(&self) -> usize {
        self.gets.values().sum()
    }

    /// Requests per SessionToken (Events included; the Lease and the watches not), and each
    /// verb and resource's share: "3.00 (1.00 get secrets + …)".
    fn per_token(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        let total: usize = self.by_verb.values().sum();
        let parts: Vec<String> = self
            .by_verb
            .iter()
            .map(|(what, count)| format!("{:.2} {what}", *count as f64 / n))
            .collect();
        format!("{:.2} ({})", total as f64 / n, parts.join(" + "))
    }
}

/// The operator's requests in `ns` between `since` and `until` (audit log).
fn operator_requests(
    cp: &ControlPlane,
    ns: &str,
    since: Timestamp,
    until: Option<Timestamp>,
) -> Result<Requests> {
    let events = cp.audit_events_where(since, |e| {
        e.username() == OPERATOR_USER
            && (e.namespace() == ns || e.namespace().is_empty())
            && until.is_none_or(|u| e.request_received_timestamp < u)
    })?;
    Ok(Requests::from_audit(&events))
}

/// Waits until the operator's audited requests in `ns` stop growing for `quiet`.
async fn settle(cp: &ControlPlane, ns: &str, since: Timestamp, quiet: Duration) -> Result<()> {
    let mut last = usize::MAX;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = cp
            .audit_events_where(since, |e| {
                e.username() == OPERATOR_USER && e.namespace() == ns
            })?
            .iter()
            .filter(|e| e.resource() != "leases")
            .count();
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= quiet {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the operator kept working for 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Most STS calls the double was serving at once.
fn max_in_flight(calls: &[RecordedCall]) -> usize {
    let mut edges: Vec<(Timestamp, i32)> = Vec::with_capacity(calls.len() * 2);
    for c in calls {
        let end = c.at + jiff::SignedDuration::try_from(c.handled_in).unwrap_or_default();
        edges.push((c.at, 1));
        edges.push((end, -1));
    }
    // Ends before starts at the same instant.
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default, serde::Serialize)]
struct Figures {
    machine: BTreeMap<String, String>,
    approval: Option<ApprovalFigures>,
    footprint_idle: Option<Idle>,
    cold: Vec<Cold>,
    floor: Vec<floor::Floor>,
    storm: Option<Storm>,
    large: Option<Large>,
    roles: Option<Roles>,
    binary_bytes: u64,
}

#[derive(serde::Serialize)]
struct Roles {
    n: usize,
    sessions: usize,
    create_s: f64,
    all_ready_s: f64,
    assume_role_calls: usize,
    requests: Requests,
    cpu_s: f64,
    mem: Mem,
}

#[derive(serde::Serialize)]
struct Large {
    n: usize,
    object_bytes: usize,
    all_ready_s: f64,
    mem: Mem,
}

#[derive(serde::Serialize)]
struct ApprovalFigures {
    n: usize,
    /// ms: p50, p95, p99, max
    total: [f64; 4],
    beyond_sts: [f64; 4],
    sts_server: [f64; 4],
    writes_per_approval: f64,
    gets_per_approval: f64,
    /// Requests per approval by verb and resource ([`Requests::per_token`]).
    per_approval: String,
}

#[derive(serde::Serialize)]
struct Idle {
    ready_after_ms: f64,
    mem: Mem,
}

#[derive(serde::Serialize)]
struct Cold {
    n: usize,
    create_s: f64,
    ready_after_ms: f64,
    all_ready_s: f64,
    sts_calls: usize,
    requests: Requests,
    mem: Mem,
    cpu_s: f64,
    steady_window_s: f64,
    steady: Option<Requests>,
    steady_sts_calls: usize,
    /// A SessionToken created once the N are Ready (and the steady window is over): from its
    /// create to Ready, in ms.
    new_token_ready_ms: Option<f64>,
    /// How busy the whole machine was from operator start to all Ready, and how fast it was.
    machine: MachineWork,
}

/// The CPU the whole machine spent over a run (every process: API server, etcd,
/// kube-controller-manager, operator, bench), and the machine's [`Speed`] before and after it.
/// On a shared VM the same work takes more CPU time when a neighbour is busy: a slow
/// run with a slow loop and more CPU-seconds for the same requests is the machine, not the
/// operator.
#[derive(serde::Serialize, Clone, Copy)]
struct MachineWork {
    busy_core_s: f64,
    idle_core_s: f64,
    steal_core_s: f64,
    before: Speed,
    after: Speed,
}

/// How fast the machine is just now: a CPU-bound loop and a memory-bound walk. The API server's
/// work is mostly allocation and garbage collection; when neighbours load the host's memory
/// system it slows, and the walk with it, while the integer loop may not notice.
#[derive(serde::Serialize, Clone, Copy)]
struct Speed {
    /// [`calibration_ms`].
    loop_ms: f64,
    /// [`memory_latency_ns`].
    memory_ns: f64,
}

impl Speed {
    fn now() -> Speed {
        Speed {
            loop_ms: calibration_ms(),
            memory_ns: memory_latency_ns(),
        }
    }
}

impl std::fmt::Display for MachineWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} core-s busy, {:.1} idle, {:.1} stolen; calibration loop {:.0} ms before, {:.0} ms after; memory walk {:.0} ns a step before, {:.0} after",
            self.busy_core_s,
            self.idle_core_s,
            self.steal_core_s,
            self.before.loop_ms,
            self.after.loop_ms,
            self.before.memory_ns,
            self.after.memory_ns
        )
    }
}

/// A timed run (a cold start, a floor): from its start to all Ready, and the machine over it.
struct Run {
    before: Speed,
    /// For the audit log: the run's requests are those after it.
    since: Timestamp,
    started: Instant,
    cpu_at_start: (f64, f64, f64),
}

impl Run {
    /// Measures the machine's [`Speed`], then starts the clock.
    fn start() -> Run {
        let before = Speed::now();
        Run {
            before,
            since: Timestamp::now(),
            started: Instant::now(),
            cpu_at_start: cpu_totals(),
        }
    }

    /// Until `n` SessionTokens are Ready: how long from the start to the last, and the machine
    /// over that span (its [`Speed`] measured again after).
    async fn until_all_ready(
        &self,
        tracker: &mut Tracker,
        n: usize,
        opts: &Opts,
        what: &str,
    ) -> Result<(Duration, MachineWork)> {
        let waited = tracker.wait_all_ready(n, opts.ready_timeout).await;
        let (end, start) = (cpu_totals(), self.cpu_at_start);
        let machine = MachineWork {
            busy_core_s: end.0 - start.0,
            idle_core_s: end.1 - start.1,
            steal_core_s: end.2 - start.2,
            before: self.before,
            after: Speed::now(),
        };
        waited?;
        let all_ready = tracker.all_ready_after(self.started)?;
        eprintln!(
            "bench: {what}: all Ready after {:.1} s",
            all_ready.as_secs_f64()
        );
        Ok((all_ready, machine))
    }
}

/// /proc/stat's first line: (busy, idle, steal) seconds of all CPUs since boot.
fn cpu_totals() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0) / 100.0;
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy, at(3) + at(4), at(7))
}

/// The median of five runs of a fixed integer loop (about 0.1 s on an idle core), in ms.
fn calibration_ms() -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut x: u64 = 0;
            for i in 0..100_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            std::hint::black_box(x);
            ms(t.elapsed())
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

/// The median of three walks of 2 million steps through a random cycle over 64 MiB (every step
/// a cache miss, most a TLB miss too), in ns per step.
fn memory_latency_ns() -> f64 {
    const SLOTS: usize = 1 << 24;
    const STEPS: usize = 2_000_000;
    let mut next: Vec<u32> = (0..SLOTS as u32).collect();
    // Sattolo's shuffle (xorshift draws): slot i holds the next slot, all in one cycle.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..SLOTS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut at = 0usize;
            for _ in 0..STEPS {
                at = next[at] as usize;
            }
            std::hint::black_box(at);
            t.elapsed().as_nanos() as f64 / STEPS as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

#[derive(serde::Serialize)]
struct Storm {
    n: usize,
    sts_delay_ms: f64,
    sts_concurrency: String,
    due_spread_s: f64,
    first_due_to_all_rotated_s: f64,
    last_due_to_all_rotated_s: f64,
    sts_calls: usize,
    max_in_flight: usize,
    requests: Requests,
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    m.insert(
        "memory".into(),
        format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
    );
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    m.insert("loadavg_at_start".into(), loadavg());
    m
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn stats(mut v: Vec<f64>) -> [f64; 4] {
    v.sort_by(|a, b| a.total_cmp(b));
    [
        percentile(&v, 50.0),
        percentile(&v, 95.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
    ]
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// MFA approvals, one at a time, round-robin over `approval_tokens` SessionTokens. The operator
/// records claims and approvals in whole seconds and claims a code for a SessionToken whose
/// status changed in the current second only in the next one, so a SessionToken is approved
/// again only 1.1 s after its last approval (real approvals are minutes apart).
async fn approval(world: &World, opts: &Opts) -> Result<ApprovalFigures> {
    let ns = world.namespace("bench-approval").await?;
    let serial = world
        .user
        .serial_number()
        .context("no MFA device")?
        .to_string();
    let mut spec = world.source_spec();
    spec["mfa"] = json!({"serialNumber": serial});
    let k = opts.approval_tokens;
    world
        .create_tokens(&ns, k, spec, opts.create_concurrency)
        .await?;
    let op = Operator::start(world, &ns, opts).await?;
    let mut tracker = Tracker::start(world.sessions(&ns));
    // The operator has looked at each (Ready=False/AwaitingTokenCode, status written).
    tracker
        .wait(
            "the MFA SessionTokens to be seen",
            Duration::from_secs(60),
            Duration::ZERO,
            |m| m.len() == k && m.values().all(|t| t.seen),
        )
        .await?;
    settle(
        &world.cp,
        &ns,
        Timestamp::now() - jiff::SignedDuration::from_secs(60),
        Duration::from_secs(1),
    )
    .await?;

    // The bench's watch on the output Secrets: the instant each new access key id is seen.
    let seen: Arc<Mutex<HashMap<String, (String, Instant)>>> = Arc::default();
    let (tx, mut secret_changed) = watch::channel(0u64);
    let secrets_task = {
        let seen = seen.clone();
        let api: Api<Secret> = Api::namespaced(world.admin.clone(), &ns);
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default().any_semantic());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event {
                    let key = s
                        .data
                        .as_ref()
                        .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                    if let Some(key) = key {
                        let mut seen = seen.lock().unwrap();
                        if seen.get(&s.name_any()).is_none_or(|(k, _)| *k != key) {
                            seen.insert(s.name_any(), (key, now));
                        }
                    }
                    tx.send_modify(|v| *v += 1);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.sts.inject_faults(Fault::Delay(opts.sts_delay));
    world.sts.reset_counters();

    let api = world.sessions(&ns);
    let warmup = k.min(10);
    let since = Timestamp::now();
    let mut samples: Vec<(String, Duration)> = Vec::new();
    let mut last_approved: HashMap<String, Instant> = HashMap::new();
    for i in 0..warmup + opts.approvals {
        let name = format!("st-{:05}", i % k);
        let code = format!("{:06}", 100_000 + i);
        if let Some(at) = last_approved.get(&name) {
            let gap = Duration::from_millis(1100);
            if at.elapsed() < gap {
                tokio::time::sleep(gap - at.elapsed()).await;
            }
        }
        let rotations_before = tracker
            .snapshot()
            .get(&name)
            .map(|t| t.rotations)
            .unwrap_or(0);
        let key_before = seen.lock().unwrap().get(&name).map(|(k, _)| k.clone());
        let patch = json!({"metadata": {"annotations": {
            "stssession.dev/token-code": code, "stssession.dev/approved-by": "bench"}}});
        let sent = Instant::now();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let updated_at = loop {
            if let Some((key, at)) = seen.lock().unwrap().get(&name)
                && Some(key) != key_before.as_ref()
            {
                break *at;
            }
            match tokio::time::timeout_at(deadline, secret_changed.changed()).await {
                Ok(r) => r?,
                Err(_) => bail!(
                    "approval {i} of {name}: no new Secret after 30 s\n{}",
                    op.process.log_tail(20)
                ),
            }
        };
        last_approved.insert(name.clone(), updated_at);
        if i >= warmup {
            samples.push((code, updated_at - sent));
        }
        // Let this reconcile finish (status written) before the next approval.
        tracker
            .wait(
                "the approval's status",
                Duration::from_secs(30),
                Duration::ZERO,
                |m| m.get(&name).is_some_and(|t| t.rotations > rotations_before),
            )
            .await?;
    }
    let until = Timestamp::now();
    secrets_task.abort();
    world.sts.clear_faults();
    let calls = world.sts.calls();
    let server: HashMap<String, Duration> = calls
        .iter()
        .filter_map(|c| Some((c.token_code_used.clone()?, c.handled_in)))
        .collect();
    let mut total = vec![];
    let mut beyond = vec![];
    let mut sts = vec![];
    for (code, d) in &samples {
        let s = *server
            .get(code)
            .with_context(|| format!("the double never saw code {code}"))?;
        total.push(ms(*d));
        sts.push(ms(s));
        beyond.push(ms(d.saturating_sub(s)));
    }
    settle(&world.cp, &ns, since, Duration::from_secs(1)).await?;
    let requests = operator_requests(&world.cp, &ns, since, Some(until))?;
    let n_all = (warmup + opts.approvals) as f64;
    op.stop().await?;
    Ok(ApprovalFigures {
        n: samples.len(),
        total: stats(total),
        beyond_sts: stats(beyond),
        sts_server: stats(sts),
        writes_per_approval: (requests.object_writes() + requests.event_writes) as f64 / n_all,
        gets_per_approval: requests.total_gets() as f64 / n_all,
        per_approval: requests.per_token(warmup + opts.approvals),
    })
}

/// The largest SessionToken the CRD admits in what a tenant can grow (32 labels and 32
/// annotations of the Secret at their longest, 32 restart targets, 50 session tags), without
/// MFA, plus 64 KiB of annotations of its own that the operator never reads.
fn largest_token(i: usize) -> Value {
    let key = |p: &str, j: usize| format!("{}{p}{j:02}/{}", "k".repeat(250), "n".repeat(59));
    let labels: serde_json::Map<String, Value> = (0..32)
        .map(|j| (key("l", j), json!("v".repeat(63))))
        .collect();
    let annotations: serde_json::Map<String, Value> = (0..32)
        .map(|j| (key("a", j), json!("x".repeat(1024))))
        .collect();
    let foreign: serde_json::Map<String, Value> = (0..64)
        .map(|j| (format!("example.com/a{j:02}"), json!("y".repeat(1024))))
        .collect();
    let targets: Vec<_> = (0..32)
        .map(|j| json!({"kind": "Deployment", "name": format!("{}{j:02}", "d".repeat(251))}))
        .collect();
    let tags: Vec<_> = (0..50)
        .map(|j| json!({"key": format!("{}{j:02}", "t".repeat(126)), "value": "v".repeat(256)}))
        .collect();
    json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": format!("st-{i:05}"), "annotations": foreign},
        "spec": {
            "sourceCredentials": {"secretRef": {"name": "iam-keys"}},
            "secret": {"name": format!("out-{i:05}"), "labels": labels, "annotations": annotations},
            "rolloutRestartTargets": targets,
            "assumeRole": {"roleArn": "arn:aws:iam::123456789012:role/deployer", "tags": tags},
        },
    })
}

/// N SessionTokens of the largest admitted size, created before the operator starts, → all
/// Ready; the operator's peak RSS.
async fn large(world: &World, opts: &Opts, n: usize) -> Result<Large> {
    let ns = world.namespace(&format!("bench-large-{n}")).await?;
    world
        .sts
        .add_role(testkit::sts_double::RoleSpec::named("deployer"));
    let object_bytes = serde_json::to_vec(&largest_token(0))?.len();
    eprintln!("bench: large: creating {n} SessionTokens of {object_bytes} bytes in {ns}");
    let api = world.sessions(&ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(largest_token(i))?;
                api.create(&PostParams::default(), &obj).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(opts.create_concurrency.min(8))
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating SessionTokens")?;
    let mut tracker = Tracker::start(world.sessions(&ns));
    let started = Instant::now();
    let op = Operator::start(world, &ns, opts).await?;
    tracker
        .wait(
            "every large SessionToken to be Ready",
            opts.ready_timeout,
            Duration::from_millis(50),
            |m| m.len() == n && m.values().filter(|t| t.ready).count() == n,
        )
        .await?;
    let all_ready_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem = op.memory()?;
    op.stop().await?;
    Ok(Large {
        n,
        object_bytes,
        all_ready_s,
        mem,
    })
}

/// `n` AssumedRoles drawing on `sessions` SessionTokens (without MFA), the sessions Ready
/// first; the AssumedRoles created while no operator runs, then one starts: from its start to
/// every AssumedRole Ready, its requests per AssumedRole (audit log), CPU and RSS.
async fn roles(world: &World, opts: &Opts) -> Result<Roles> {
    let (n, sessions) = (opts.roles, opts.role_sessions);
    let ns = world.namespace(&format!("bench-roles-{n}")).await?;
    let role = world
        .sts
        .add_role(testkit::sts_double::RoleSpec::named("deployer"));
    eprintln!("bench: roles: {sessions} SessionTokens in {ns}, Ready first");
    world
        .create_tokens(&ns, sessions, world.source_spec(), opts.create_concurrency)
        .await?;
    let mut tokens = Tracker::start(world.sessions(&ns));
    let op = Operator::start(world, &ns, opts).await?;
    tokens
        .wait(
            "the sessions to be Ready",
            opts.ready_timeout,
            Duration::from_millis(20),
            |m| m.values().filter(|t| t.ready).count() == sessions,
        )
        .await?;
    op.stop().await?;
    eprintln!("bench: roles: creating {n} AssumedRoles");
    let resource = ApiResource {
        group: "stssession.dev".into(),
        version: "v1alpha1".into(),
        api_version: "stssession.dev/v1alpha1".into(),
        kind: "AssumedRole".into(),
        plural: "assumedroles".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(world.admin.clone(), &ns, &resource);
    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
                "metadata": {"name": format!("ar-{i:05}")},
                "spec": {"sessionTokenRef": {"name": format!("st-{:05}", i % sessions)},
                         "roleArn": role.arn},
            }))
            .expect("static shape");
            async move { api.create(&PostParams::default(), &obj).await }
        })
        .buffer_unordered(opts.create_concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating AssumedRoles")?;
    let create_s = created.elapsed().as_secs_f64();
    let mut tracker = Tracker::start(api);
    tracker
        .wait(
            "the bench's watch to list every AssumedRole",
            Duration::from_secs(120),
            Duration::from_millis(20),
            |m| m.len() == n,
        )
        .await?;
    world.sts.inject_faults(Fault::Delay(opts.sts_delay));
    world.sts.reset_counters();
    let since = Timestamp::now();
    let started = Instant::now();
    let op = Operator::start(world, &ns, opts).await?;
    tracker
        .wait(
            "every AssumedRole to be Ready",
            opts.ready_timeout,
            Duration::from_millis(20),
            |m| m.values().filter(|t| t.ready).count() == n,
        )
        .await?;
    let all_ready = tracker
        .snapshot()
        .values()
        .filter_map(|t| t.ready_at)
        .max()
        .context("no ready instants")?
        - started;
    eprintln!(
        "bench: roles: all {n} Ready after {:.1} s",
        all_ready.as_secs_f64()
    );
    settle(&world.cp, &ns, since, Duration::from_secs(3)).await?;
    let requests = operator_requests(&world.cp, &ns, since, None)?;
    let assume_role_calls = world.sts.call_count();
    let cpu = op.cpu()?;
    let mem = op.memory()?;
    op.stop().await?;
    world.sts.clear_faults();
    Ok(Roles {
        n,
        sessions,
        create_s,
        all_ready_s: all_ready.as_secs_f64(),
        assume_role_calls,
        requests,
        cpu_s: cpu.as_secs_f64(),
        mem,
    })
}

/// An operator with nothing to do.
async fn idle(world: &World, opts: &Opts) -> Result<Idle> {
    let ns = world.namespace("bench-idle").await?;
    let op = Operator::start(world, &ns, opts).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem = op.memory()?;
    let ready_after_ms = ms(op.ready_after);
    op.stop().await?;
    Ok(Idle {
        ready_after_ms,
        mem,
    })
}

/// N SessionTokens without MFA, created before the operator starts, → all Ready; then the
/// steady state.
async fn cold(world: &World, opts: &Opts, n: usize) -> Result<Cold> {
    let ns = world.namespace(&format!("bench-cold-{n}")).await?;
    eprintln!("bench: cold start {n}: creating {n} SessionTokens in {ns}");
    let create = world
        .create_tokens(&ns, n, world.source_spec(), opts.create_concurrency)
        .await?;
    eprintln!(
        "bench: cold start {n}: created in {:.1} s; starting the operator",
        create.as_secs_f64()
    );
    world.sts.inject_faults(Fault::Delay(opts.sts_delay));
    world.sts.reset_counters();
    let mut tracker = Tracker::start(world.sessions(&ns));
    tracker.wait_listed(n).await?;
    let run = Run::start();
    let op = Operator::start(world, &ns, opts).await?;
    let progress = {
        let t = tracker.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let ready = t
                    .tokens
                    .lock()
                    .unwrap()
                    .values()
                    .filter(|s| s.ready)
                    .count();
                eprintln!(
                    "bench: cold start {n}: {ready} Ready after {:.0} s",
                    run.started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let ready = run
        .until_all_ready(&mut tracker, n, opts, &format!("cold start {n}"))
        .await;
    progress.abort();
    let (all_ready, machine) = ready?;
    let since = run.since;
    settle(&world.cp, &ns, since, Duration::from_secs(3)).await?;
    let requests = operator_requests(&world.cp, &ns, since, None)?;
    let sts_calls = world.sts.call_count();
    let cpu = op.cpu()?;

    let mut steady = None;
    let mut steady_sts_calls = 0;
    if !opts.steady.is_zero() {
        eprintln!(
            "bench: cold start {n}: steady state for {:.0} s",
            opts.steady.as_secs_f64()
        );
        world.sts.reset_counters();
        let from = Timestamp::now();
        tokio::time::sleep(opts.steady).await;
        let to = Timestamp::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        steady = Some(operator_requests(&world.cp, &ns, from, Some(to))?);
        steady_sts_calls = world.sts.call_count();
    }
    let new_token_ready_ms = Some(new_token(world, &ns, &mut tracker).await?);
    let mem = op.memory()?;
    let ready_after_ms = ms(op.ready_after);
    op.stop().await?;
    world.sts.clear_faults();
    Ok(Cold {
        new_token_ready_ms,
        n,
        create_s: create.as_secs_f64(),
        ready_after_ms,
        all_ready_s: all_ready.as_secs_f64(),
        sts_calls,
        requests,
        mem,
        cpu_s: cpu.as_secs_f64(),
        steady_window_s: opts.steady.as_secs_f64(),
        steady,
        steady_sts_calls,
        machine,
    })
}

/// One more SessionToken among the N valid ones: ms from its create to Ready (as the bench's
/// watch sees it).
async fn new_token(world: &World, ns: &str, tracker: &mut Tracker) -> Result<f64> {
    let api = world.sessions(ns);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": "st-new"}, "spec": world.source_spec(),
    }))?;
    let started = Instant::now();
    api.create(&PostParams::default(), &obj).await?;
    tracker
        .wait(
            "the new SessionToken to be Ready",
            Duration::from_secs(120),
            Duration::from_millis(1),
            |m| m.get("st-new").is_some_and(|t| t.ready),
        )
        .await?;
    let ready_at = tracker
        .snapshot()
        .get("st-new")
        .and_then(|t| t.ready_at)
        .context("no ready instant")?;
    let ms = ms(ready_at - started);
    eprintln!("bench: a new SessionToken among the others: Ready after {ms:.0} ms");
    Ok(ms)
}

/// N sessions that all expire at one instant E: renewal (renewBefore 60s) comes due at
/// E − 60 s − jitter (≤ 3 s) for all of them.
async fn storm(world: &World, opts: &Opts) -> Result<Storm> {
    let n = opts.storm;
    let ns = world.namespace("bench-storm").await?;
    let mut spec = world.source_spec();
    spec["durationSeconds"] = json!(3600);
    spec["renewal"] = json!({"renewBefore": "60s"});
    eprintln!("bench: storm: creating {n} SessionTokens in {ns}");
    world
        .create_tokens(&ns, n, spec, opts.create_concurrency)
        .await?;
    let mut tracker = Tracker::start(world.sessions(&ns));
    tracker
        .wait(
            "the bench's watch to list everything",
            Duration::from_secs(120),
            Duration::from_millis(20),
            |m| m.len() == n,
        )
        .await?;
    world.sts.clear_faults();
    let expiration = Timestamp::now()
        + jiff::SignedDuration::try_from(opts.storm_lead + Duration::from_secs(60))?;
    world.sts.set_returned_expiration(Some(expiration));
    let op = Operator::start(world, &ns, opts).await?;
    let first_due_bound = expiration - jiff::SignedDuration::from_secs(63);
    tracker
        .wait(
            "every SessionToken to be Ready before the storm",
            opts.storm_lead,
            Duration::from_millis(20),
            |m| m.values().filter(|t| t.ready && t.rotations == 1).count() == n,
        )
        .await
        .context("raise --storm-lead")?;
    ensure!(
        Timestamp::now() < first_due_bound,
        "the sessions were not all issued before the first renewal; raise --storm-lead"
    );
    // From now on: normal lifetimes (3600 s), so one rotation each; STS takes its time.
    world.sts.set_returned_expiration(None);
    world.sts.inject_faults(Fault::Delay(opts.storm_sts_delay));
    let snapshot = tracker.snapshot();
    let dues: Vec<Timestamp> = snapshot.values().filter_map(|t| t.renewal).collect();
    let first_due = *dues.iter().min().context("no renewal times")?;
    let last_due = *dues.iter().max().context("no renewal times")?;
    world.sts.reset_counters();
    let since = Timestamp::now();
    eprintln!(
        "bench: storm: {n} sessions due between {first_due} and {last_due}; waiting for the rotation"
    );
    tracker
        .wait(
            "every SessionToken to rotate",
            Duration::from_secs(60) + opts.storm_lead + Duration::from_secs(300),
            Duration::from_millis(20),
            |m| m.values().filter(|t| t.rotations >= 2).count() == n,
        )
        .await?;
    // The wall-clock instant the last rotation was seen.
    let snap = tracker.snapshot();
    let last_seen = snap
        .values()
        .filter_map(|t| t.rotated_at.get(&2))
        .max()
        .copied()
        .context("no rotation instants")?;
    let done = Timestamp::now() - jiff::SignedDuration::try_from(last_seen.elapsed())?;
    settle(&world.cp, &ns, since, Duration::from_secs(2)).await?;
    let requests = operator_requests(&world.cp, &ns, since, None)?;
    let calls = world.sts.calls();
    world.sts.clear_faults();
    op.stop().await?;
    Ok(Storm {
        n,
        sts_delay_ms: ms(opts.storm_sts_delay),
        sts_concurrency: opts.sts_concurrency(),
        due_spread_s: last_due.duration_since(first_due).as_secs_f64(),
        first_due_to_all_rotated_s: done.duration_since(first_due).as_secs_f64(),
        last_due_to_all_rotated_s: done.duration_since(last_due).as_secs_f64(),
        sts_calls: calls.len(),
        max_in_flight: max_in_flight(&calls),
        requests,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

/// The floor under a cold start of N, and the cold start over it.
fn floor_rows(out: &mut String, fl: &floor::Floor, cold: Option<&Cold>) {
    let _ = writeln!(
        out,
        "| floor {}: the same N made Ready by the two writes alone (no operator, no STS) | {:.1} s from writer start; {}; the machine {} | |",
        fl.n,
        fl.all_ready_s,
        fl.requests.per_token(fl.n),
        fl.machine
    );
    if let Some(c) = cold {
        let _ = writeln!(
            out,
            "| cold start {} over its floor | {:.2}× the time, {:.2}× the machine's busy core-s | |",
            fl.n,
            c.all_ready_s / fl.all_ready_s.max(f64::MIN_POSITIVE),
            c.machine.busy_core_s / fl.machine.busy_core_s.max(f64::MIN_POSITIVE)
        );
    }
}

fn report(f: &Figures, opts: &Opts) -> String {
    let mut out = String::new();
    let m = &f.machine;
    let _ = writeln!(
        out,
        "\nMachine: {} cores ({}), {}, load average at start {} / at end {}",
        m.get("nproc").map(String::as_str).unwrap_or("?"),
        m.get("cpu").map(String::as_str).unwrap_or("?"),
        m.get("memory").map(String::as_str).unwrap_or("?"),
        m.get("loadavg_at_start").map(String::as_str).unwrap_or("?"),
        m.get("loadavg_at_end").map(String::as_str).unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "Operator: release build, {:.1} MiB; STS double delay {} ms (storm: {} ms); extra flags: {}\n",
        f.binary_bytes as f64 / 1024.0 / 1024.0,
        ms(opts.sts_delay),
        ms(opts.storm_sts_delay),
        if opts.operator_args.is_empty() {
            "none".to_string()
        } else {
            opts.operator_args.join(" ")
        }
    );
    let _ = writeln!(out, "| benchmark | figure | target |");
    let _ = writeln!(out, "| --- | --- | --- |");
    if let Some(a) = &f.approval {
        let _ = writeln!(
            out,
            "| approval → Secret updated ({} approvals) | p50 {:.1} / p95 {:.1} / p99 {:.1} / max {:.1} ms | |",
            a.n, a.total[0], a.total[1], a.total[2], a.total[3]
        );
        let _ = writeln!(
            out,
            "| … minus the STS double's own time | p50 {:.1} / p95 {:.1} / p99 {:.1} / max {:.1} ms | p99 ≤ 50 ms |",
            a.beyond_sts[0], a.beyond_sts[1], a.beyond_sts[2], a.beyond_sts[3]
        );
        let _ = writeln!(
            out,
            "| … the STS double's own time | p50 {:.2} / p99 {:.2} ms | |",
            a.sts_server[0], a.sts_server[2]
        );
        let _ = writeln!(
            out,
            "| API requests per approval | {:.1} writes (Events included, Lease not), {:.1} GETs | |",
            a.writes_per_approval, a.gets_per_approval
        );
        let _ = writeln!(
            out,
            "| API requests per approval, by verb | {} | |",
            a.per_approval
        );
    }
    for c in &f.cold {
        let target = match c.n {
            1000 => "≤ 10 s",
            10_000 => "≤ 60 s",
            _ => "",
        };
        let r = &c.requests;
        let _ = writeln!(
            out,
            "| cold start {}: all Ready (tokens created beforehand in {:.1} s) | {:.1} s from operator start | {target} |",
            c.n, c.create_s, c.all_ready_s
        );
        let _ = writeln!(
            out,
            "| cold start {}: STS calls | {} | {} |",
            c.n, c.sts_calls, c.n
        );
        let _ = writeln!(
            out,
            "| cold start {}: operator writes | {} Secret + {} status + {} SessionToken = {:.2}/token; Events {}, Lease {} | floor 2/token |",
            c.n,
            r.secret_writes,
            r.status_writes,
            r.token_writes + r.other_writes,
            r.object_writes() as f64 / c.n.max(1) as f64,
            r.event_writes,
            r.lease_writes
        );
        let gets: Vec<String> = r.gets.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(
            out,
            "| cold start {}: operator reads | GET {} = {:.2}/token; {} list/watch | |",
            c.n,
            if gets.is_empty() {
                "none".into()
            } else {
                gets.join(" + ")
            },
            r.total_gets() as f64 / c.n.max(1) as f64,
            r.lists_and_watches
        );
        let _ = writeln!(
            out,
            "| cold start {}: requests per token | {} | ≤ 3.2 |",
            c.n,
            r.per_token(c.n)
        );
        let _ = writeln!(
            out,
            "| cold start {}: operator CPU time | {:.1} s | |",
            c.n, c.cpu_s
        );
        let _ = writeln!(
            out,
            "| cold start {}: the machine over the run | {} | |",
            c.n, c.machine
        );
        if let Some(ms) = c.new_token_ready_ms {
            let _ = writeln!(
                out,
                "| a new SessionToken among {} valid ones: Ready | {ms:.0} ms after its create | ≤ 1 s |",
                c.n
            );
        }
        if let Some(s) = &c.steady {
            let per_min = 60.0 / c.steady_window_s.max(1.0);
            let _ = writeln!(
                out,
                "| steady state, {} valid sessions, {:.0} s | {:.1} writes/min ({} Events), {:.1} STS calls/min, {:.1} GETs/min; Lease {:.1} writes/min | 0 |",
                c.n,
                c.steady_window_s,
                (s.object_writes() + s.event_writes) as f64 * per_min,
                s.event_writes,
                c.steady_sts_calls as f64 * per_min,
                s.total_gets() as f64 * per_min,
                s.lease_writes as f64 * per_min
            );
        }
        if let Some(fl) = f.floor.iter().find(|fl| fl.n == c.n) {
            floor_rows(&mut out, fl, Some(c));
        }
    }
    for fl in f
        .floor
        .iter()
        .filter(|fl| f.cold.iter().all(|c| c.n != fl.n))
    {
        floor_rows(&mut out, fl, None);
    }
    if let Some(i) = &f.footprint_idle {
        let _ = writeln!(
            out,
            "| footprint, 0 SessionTokens | {}; /readyz {:.0} ms after start | |",
            i.mem, i.ready_after_ms
        );
    }
    for c in &f.cold {
        let target = match c.n {
            1000 => "≤ 16 MiB",
            10_000 => "≤ 48 MiB",
            _ => "",
        };
        let _ = writeln!(
            out,
            "| footprint, {} SessionTokens | {}; /readyz {:.0} ms after start | peak {target} |",
            c.n, c.mem, c.ready_after_ms
        );
    }
    if let Some(l) = &f.large {
        let _ = writeln!(
            out,
            "| footprint, {} SessionTokens of the largest admitted size ({} KiB each, with 64 KiB of foreign annotations) | {}; all Ready after {:.1} s | peak far below the chart's 256 MiB |",
            l.n,
            l.object_bytes / 1024,
            l.mem,
            l.all_ready_s
        );
    }
    if let Some(r) = &f.roles {
        let q = &r.requests;
        let _ = writeln!(
            out,
            "| {} AssumedRoles on {} sessions: all Ready (created beforehand in {:.1} s) | {:.1} s from operator start; {} AssumeRole calls | |",
            r.n, r.sessions, r.create_s, r.all_ready_s, r.assume_role_calls
        );
        let _ = writeln!(
            out,
            "| {} AssumedRoles: operator writes | {} Secret + {} status = {:.2}/AssumedRole; Events {:.2}/AssumedRole | floor 2 |",
            r.n,
            q.secret_writes,
            q.role_status_writes,
            q.object_writes() as f64 / r.n.max(1) as f64,
            q.event_writes as f64 / r.n.max(1) as f64
        );
        let _ = writeln!(
            out,
            "| {} AssumedRoles: requests per AssumedRole | {} | |",
            r.n,
            q.per_token(r.n)
        );
        let _ = writeln!(
            out,
            "| {} AssumedRoles: operator CPU time, footprint | {:.1} s; {} | |",
            r.n, r.cpu_s, r.mem
        );
    }
    let _ = writeln!(
        out,
        "| release binary | {:.1} MiB ({} bytes) | |",
        f.binary_bytes as f64 / 1024.0 / 1024.0,
        f.binary_bytes
    );
    if let Some(s) = &f.storm {
        let _ = writeln!(
            out,
            "| rotation storm: {} sessions due within {:.1} s, STS {} ms, --sts-concurrency {} | all rotated {:.1} s after the first came due ({:.1} s after the last) | |",
            s.n,
            s.due_spread_s,
            s.sts_delay_ms,
            s.sts_concurrency,
            s.first_due_to_all_rotated_s,
            s.last_due_to_all_rotated_s
        );
        let r = &s.requests;
        let _ = writeln!(
            out,
            "| rotation storm: STS calls, most in flight | {} calls, {} at once | ≤ concurrency |",
            s.sts_calls, s.max_in_flight
        );
        let _ = writeln!(
            out,
            "| rotation storm: operator writes | {} Secret + {} status; Events {}; {} GETs | |",
            r.secret_writes,
            r.status_writes,
            r.event_writes,
            r.total_gets()
        );
        let _ = writeln!(
            out,
            "| rotation storm: requests per rotation | {} | |",
            r.per_token(s.n)
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let opts = Opts::parse()?;
    ensure!(
        opts.operator.is_file(),
        "no operator binary at {} (build it: cargo build --release --bin sts-session-operator)",
        opts.operator.display()
    );
    let mut figures = Figures {
        machine: machine(),
        binary_bytes: std::fs::metadata(&opts.operator)?.len(),
        ..Default::default()
    };
    let root = workspace_root();
    let cp = ControlPlane::start_with(StartOptions {
        crds: vec![root.join("crds")],
        apiserver_args: opts.apiserver_args.clone(),
    })
    .await?;
    cp.apply_yaml_file(root.join("tests/fixtures/operator-rbac.yaml"))
        .await?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    let world = World {
        user: sts.default_user(),
        admin: cp.admin_client().await?,
        st_resource: ApiResource {
            group: "stssession.dev".into(),
            version: "v1alpha1".into(),
            api_version: "stssession.dev/v1alpha1".into(),
            kind: "SessionToken".into(),
            plural: "sessiontokens".into(),
        },
        cp,
        sts,
    };
    let total = Instant::now();
    let result: Result<()> = async {
        if opts.runs("footprint") {
            eprintln!("bench: footprint with nothing to do");
            figures.footprint_idle = Some(idle(&world, &opts).await?);
        }
        if opts.runs("approval") {
            eprintln!("bench: approvals");
            figures.approval = Some(approval(&world, &opts).await?);
        }
        for &n in &opts.sizes {
            // Each floor right after its cold start, so that both see the machine alike.
            if opts.runs("cold") {
                figures.cold.push(cold(&world, &opts, n).await?);
            }
            if opts.runs("floor") {
                figures.floor.push(floor::floor(&world, &opts, n).await?);
            }
        }
        if opts.runs("storm") && opts.storm > 0 {
            figures.storm = Some(storm(&world, &opts).await?);
        }
        if opts.runs("large") && opts.large > 0 {
            figures.large = Some(large(&world, &opts, opts.large).await?);
        }
        if opts.runs("roles") && opts.roles > 0 {
            figures.roles = Some(roles(&world, &opts).await?);
        }
        Ok(())
    }
    .await;
    figures.machine.insert("loadavg_at_end".into(), loadavg());
    let text = report(&figures, &opts);
    println!("{text}");
    eprintln!(
        "bench: done in {:.0} s (control plane and logs: {})",
        total.elapsed().as_secs_f64(),
        world.cp.dir().display()
    );
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    world.cp.shutdown().await;
    result
}
