//! sts-session-operator: flags, telemetry, start.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use anyhow::{Context as _, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sts_session_operator::metrics::{self, Metrics};
use sts_session_operator::plan::{Timing, parse_duration};
use sts_session_operator::reconcile::{self, Context, Settings};
use sts_session_operator::sts::{EndpointPolicy, StsClient, StsSettings};
use sts_session_operator::telemetry::{self, LogFormat};
use tracing::{error, info, warn};

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 90s, 5m or 1h30m"))
}

/// Keeps STS session credentials fresh in Secrets, as SessionToken resources ask.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespaces to watch, comma-separated. Empty: all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Region for SessionTokens that name none.
    #[arg(long, env = "DEFAULT_REGION", default_value = "us-east-1")]
    default_region: String,
    /// STS endpoint for SessionTokens that name none (trusted: set by the operator's admin).
    /// Default: AWS's regional endpoint.
    #[arg(long, env = "STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// Endpoints a SessionToken may name, as URL patterns where `*` matches one DNS label or a
    /// port, comma-separated. Default: AWS's own STS endpoints, https only.
    #[arg(long, env = "ALLOWED_STS_ENDPOINTS", value_delimiter = ',')]
    allowed_sts_endpoints: Vec<String>,
    /// Attempts per STS call without MFA (calls with a code are never retried: a retried code
    /// is a reused code).
    #[arg(long, default_value_t = 3)]
    sts_attempts: u32,
    /// STS calls in flight at most.
    #[arg(long, default_value_t = 16)]
    sts_concurrency: usize,
    /// Timeout of one STS call.
    #[arg(long, default_value = "10s", value_parser = duration)]
    sts_timeout: Duration,
    /// SessionTokens reconciled at once. (More does not start 10,000 sooner on two cores: the
    /// API server is the bottleneck; README "Benchmarks".)
    #[arg(long, default_value_t = 16)]
    reconcile_concurrency: u16,
    /// Kubernetes API requests in flight at most (a watch counts until its response starts).
    /// Each one in flight holds a connection (TLS state, buffers): this bounds the operator's
    /// connections to the API server, and with them its memory.
    /// 8: at 1,000 SessionTokens the peak resident set is ~1.3 MiB smaller than with 16 and
    /// cold starts are no slower (README "Benchmarks").
    #[arg(long, default_value_t = 8)]
    api_concurrency: usize,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,

    /// Serve /metrics only to clients whose bearer token the API server accepts (TokenReview)
    /// and whose user may `get` the non-resource URL /metrics (SubjectAccessReview; answers kept
    /// 30 s). /healthz and /readyz stay open. false: /metrics open to whoever reaches the port.
    #[arg(long, env = "METRICS_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    metrics_auth: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG syntax), overridden by RUST_LOG.
    #[arg(long, env = "LOG_LEVEL", default_value = "info,kube=warn")]
    log_level: String,
    /// Take part in leader election (a Lease), so only one replica reconciles.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader-election Lease. Default: the pod's namespace (POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "sts-session-operator")]
    lease_name: String,
    /// Identity of this replica (pod name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// A code annotation older than this is dropped unused.
    #[arg(long, default_value = "90s", value_parser = duration)]
    token_code_max_age: Duration,
    /// How often `TokenCodeRequired` repeats while a code is awaited.
    #[arg(long, default_value = "30m", value_parser = duration)]
    code_required_interval: Duration,
    /// First retry delay after a failed mint (doubles per failure).
    #[arg(long, default_value = "5s", value_parser = duration)]
    retry_base: Duration,
    /// Longest retry delay after failures.
    #[arg(long, default_value = "5m", value_parser = duration)]
    retry_cap: Duration,
    /// spec.assumeRole: the role is assumed only while the session has at least this long
    /// left, asking for no more than that, so role credentials never outlive their session.
    /// Keep the default (AssumeRole's minimum DurationSeconds): tests with an STS double that
    /// returns shorter lifetimes lower it.
    #[arg(long, default_value = "15m", value_parser = duration, hide = true)]
    role_min_session_remaining: Duration,
    /// On SIGTERM: how long reconciles in flight (an approval being used) may take to finish
    /// before the process stops anyway. Keep it below the pod's termination grace period.
    #[arg(long, default_value = "20s", value_parser = duration)]
    shutdown_timeout: Duration,
}

fn main() -> Result<()> {
    // Before any thread starts: the allocator's settings apply to arenas not yet created.
    tune_malloc();
    let args = Args::parse();
    telemetry::init(args.log_format, &args.log_level);
    // A panic is logged with its place only: its message may quote any value. (Reconciles are
    // behind a backstop that catches theirs: src/reconcile/mod.rs.)
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error!(location, "panic");
    }));
    // One thread runs every task (the blocking pool, for DNS lookups, apart). The operator waits
    // on the network: at a cold start of 10,000 SessionTokens it uses a quarter of one core, and
    // a second worker only added cross-thread wake-ups and contention on the one malloc arena
    // (`tune_malloc`): 16.5-17.0 s of CPU with two workers, 11.1-13.5 s with one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Err(e) = runtime.block_on(run(args)) {
        error!(error = format!("{e:#}"), "stopping");
        return Err(e);
    }
    Ok(())
}

/// glibc's malloc gives each thread that allocates concurrently an arena of its own (up to
/// 8 per core), and memory freed in one arena serves only that arena: with the tokio workers
/// (and the blocking threads) taking turns at the same objects, each arena grows to the peak of
/// its own share and the resident set ends up well above what is live (README "Benchmarks":
/// about 4 MiB more at 1,000 SessionTokens). The operator's threads wait on the network, not on
/// the allocator's lock: one arena. `MALLOC_ARENA_MAX` (glibc's own variable) still overrides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; called before other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Hands the pages that freed memory leaves whole back to the system, every second. glibc only
/// ever shrinks the top of its heap: a cold start leaves holes (the replies, patches and
/// watch events of thousands of reconciles, freed between objects kept in the cache), resident
/// until reused. `malloc_trim` releases them (cheap: once a second did not show in the bench's
/// CPU time). Measured (README "Benchmarks"): peak RSS 3.5-4 MiB lower at 10,000 SessionTokens,
/// 0.6 MiB at 1,000.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn trim_malloc() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
async fn trim_malloc() {}

async fn run(args: Args) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(trim_malloc());
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding {}", args.metrics_address))?;
    let auth = args
        .metrics_auth
        .then(|| Arc::new(metrics::MetricsAuth::new(Duration::from_secs(30), 1024)));
    tokio::spawn(metrics::serve_listener_with_auth(
        listener,
        metrics.clone(),
        ready_rx,
        auth.clone(),
    ));
    let ctx = Arc::new(context(&args, metrics).await?);
    if let Some(auth) = &auth {
        auth.set_client(ctx.client.clone());
    }
    ctx.client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API")?;
    // Ready means able to work, not leading: followers must be ready too, or a rolling update
    // (new pod ready before the old leader goes) could never finish.
    let _ = ready_tx.send(true);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let leadership = tokio::select! {
        leadership = lead(&args, &ctx) => leadership?,
        _ = &mut shutdown => {
            info!("stopped before leading");
            return Ok(());
        }
    };
    serve(&args, ctx, leadership, shutdown).await
}

/// This replica's name.
fn instance(args: &Args) -> String {
    args.instance
        .clone()
        .unwrap_or_else(|| format!("sts-session-operator-{}", std::process::id()))
}

/// The clients and settings every reconcile shares.
async fn context(args: &Args, metrics: Arc<Metrics>) -> Result<Context> {
    let endpoint_policy = if args
        .allowed_sts_endpoints
        .iter()
        .all(|p| p.trim().is_empty())
    {
        EndpointPolicy::aws_default()
    } else {
        EndpointPolicy::from_patterns(&args.allowed_sts_endpoints)
            .map_err(|e| anyhow::anyhow!("--allowed-sts-endpoints: {e}"))?
    };
    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration")?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("connecting to the Kubernetes API")?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(
            args.api_concurrency.max(1),
        ))
        .build();
    let sts_settings = StsSettings {
        timeout: args.sts_timeout,
        max_in_flight: args.sts_concurrency.max(1),
        non_mfa_attempts: args.sts_attempts.max(1),
        default_endpoint: args.sts_endpoint.clone(),
    };
    sts_settings
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid STS settings: {e}"))?;
    let settings = Settings {
        default_region: args.default_region.clone(),
        endpoint_policy,
        timing: Timing {
            token_code_max_age: args.token_code_max_age,
            code_required_interval: args.code_required_interval,
            backoff_base: args.retry_base,
            backoff_cap: args.retry_cap,
            role_min_session_remaining: args.role_min_session_remaining,
            // The longest an AssumeRole may take, and some clock skew.
            role_expiry_margin: args.sts_timeout.saturating_add(Duration::from_secs(5)),
            ..Timing::default()
        },
        instance: instance(args),
    };
    Ok(Context::new(
        client,
        StsClient::new(sts_settings),
        metrics,
        settings,
    ))
}

type Leadership = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
);

/// Leadership: only the Lease holder reconciles. Returns once this replica leads (`None`
/// without leader election).
async fn lead(args: &Args, ctx: &Context) -> Result<Option<Leadership>> {
    if !args.leader_election {
        ctx.metrics.set_leader(true);
        return Ok(None);
    }
    let instance = instance(args);
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&instance)
            .with_field_manager(sts_session_operator::crd::FIELD_MANAGER)
            .build()
            .await
            .context("setting up leader election")?;
    let (mut is_leader, task) = manager.watch().await;
    info!(instance, lease = args.lease_name, "waiting for leadership");
    while !*is_leader.borrow_and_update() {
        is_leader
            .changed()
            .await
            .context("leader election stopped")?;
    }
    info!(instance, "leading");
    ctx.metrics.set_leader(true);
    Ok(Some((is_leader, task)))
}

/// Runs the controllers until SIGTERM (reconciles in flight then finish, within
/// `--shutdown-timeout`) or until leadership is lost (the process ends, so the pod restarts as
/// a follower rather than racing the new leader); then releases the Lease.
async fn serve(
    args: &Args,
    ctx: Arc<Context>,
    mut leadership: Option<Leadership>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // sorted and deduplicated: a namespace named twice must not get two controllers
    let list: std::collections::BTreeSet<String> = args
        .namespaces
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let namespaces: Vec<Option<String>> = match list.is_empty() {
        true => vec![None],
        false => list.into_iter().map(Some).collect(),
    };
    info!(namespaces = ?namespaces, "starting controllers");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controllers = futures::future::join_all(namespaces.into_iter().map(|ns| {
        let mut stop = stop_rx.clone();
        reconcile::run(ctx.clone(), ns, args.reconcile_concurrency, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
    }));
    let mut controllers = std::pin::pin!(controllers);
    let lost_leadership = async {
        match leadership.as_mut() {
            Some((is_leader, _)) => {
                let _ = is_leader.wait_for(|l| !*l).await;
                ctx.metrics.set_leader(false);
                warn!("lost leadership");
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = &mut controllers => {}
        _ = shutdown => {
            // No new work; reconciles in flight (a code being used) finish, within bounds.
            info!(timeout = ?args.shutdown_timeout, "shutting down: finishing reconciles in flight");
            let _ = stop_tx.send(true);
            if tokio::time::timeout(args.shutdown_timeout, &mut controllers).await.is_err() {
                warn!("reconciles still running at the shutdown timeout: stopping anyway");
            }
        }
        _ = lost_leadership => {
            let _ = stop_tx.send(true);
            anyhow::bail!("lost leadership");
        }
    }
    let _ = stop_tx.send(true);
    if let Some((is_leader, task)) = leadership {
        drop(is_leader);
        if let Ok(Ok(Ok(manager))) = tokio::time::timeout(Duration::from_secs(5), task).await {
            let _ = manager.release().await;
        }
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
