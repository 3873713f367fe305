//! Prometheus metrics, and the small HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Labels are only ever namespaces, names, fixed outcome words and condition reasons: nothing
//! secret reaches a series.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod auth;
mod roles;
pub use auth::MetricsAuth;

/// Content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of `sts_session_reconcile_duration_seconds`: 5 ms .. ~41 s.
const RECONCILE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// What [`Metrics::set_session`] records for one `SessionToken`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionMetrics {
    /// Expiration of the current session; `None`: no expiration series.
    pub expiration: Option<jiff::Timestamp>,
    /// When the session is due for renewal; `None`: no renewal series.
    pub renewal: Option<jiff::Timestamp>,
    /// With `spec.assumeRole`: expiration of the role credentials in the output Secret.
    pub role_expiration: Option<jiff::Timestamp>,
    /// With `spec.assumeRole`: when the role is assumed again.
    pub role_renewal: Option<jiff::Timestamp>,
    pub ready: bool,
    pub awaiting_token_code: bool,
}

/// The per-SessionToken gauges, kept as one small record per SessionToken and turned into
/// series only when scraped (four `Family`s would keep four label sets and four gauges each:
/// about 0.6 KiB per SessionToken, 6 MiB at 10,000).
#[derive(Debug, Default)]
struct SessionSeries {
    /// namespace → name → what was recorded.
    sessions: RwLock<HashMap<Box<str>, ByName>>,
}

/// name → what was recorded, in one namespace.
type ByName = HashMap<Box<str>, Recorded>;

/// A [`SessionMetrics`] as kept: Unix seconds (what the gauges show), [`Recorded::NONE`] for
/// none. 40 bytes instead of 104 (an `Option<Timestamp>` takes 24): 1 MiB less at 10,000.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    expiration: i64,
    renewal: i64,
    role_expiration: i64,
    role_renewal: i64,
    ready: bool,
    awaiting_token_code: bool,
}

impl Recorded {
    const NONE: i64 = i64::MIN;

    fn seconds(t: Option<jiff::Timestamp>) -> i64 {
        t.map_or(Self::NONE, unix_seconds)
    }

    fn some(seconds: i64) -> Option<i64> {
        (seconds != Self::NONE).then_some(seconds)
    }
}

impl From<SessionMetrics> for Recorded {
    fn from(s: SessionMetrics) -> Self {
        let SessionMetrics {
            expiration,
            renewal,
            role_expiration,
            role_renewal,
            ready,
            awaiting_token_code,
        } = s;
        Recorded {
            expiration: Self::seconds(expiration),
            renewal: Self::seconds(renewal),
            role_expiration: Self::seconds(role_expiration),
            role_renewal: Self::seconds(role_renewal),
            ready,
            awaiting_token_code,
        }
    }
}

type SessionGauge = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&Recorded) -> Option<i64>,
);

const SESSION_GAUGES: [SessionGauge; 6] = [
    (
        "sts_session_expiration_timestamp",
        "Unix time when the SessionToken's current session credentials expire",
        Some(Unit::Seconds),
        |s| Recorded::some(s.expiration),
    ),
    (
        "sts_session_renewal_timestamp",
        "Unix time when the SessionToken's session is due for renewal",
        Some(Unit::Seconds),
        |s| Recorded::some(s.renewal),
    ),
    (
        "sts_session_role_expiration_timestamp",
        "Unix time when the role credentials (spec.assumeRole) in the SessionToken's Secret expire",
        Some(Unit::Seconds),
        |s| Recorded::some(s.role_expiration),
    ),
    (
        "sts_session_role_renewal_timestamp",
        "Unix time when the SessionToken's role (spec.assumeRole) is assumed again",
        Some(Unit::Seconds),
        |s| Recorded::some(s.role_renewal),
    ),
    (
        "sts_session_ready_status",
        "1 if the SessionToken is Ready (its Secret holds valid session credentials), else 0",
        None,
        |s| Some(i64::from(s.ready)),
    ),
    (
        "sts_session_awaiting_token_code",
        "1 if the SessionToken waits for a human to provide an MFA token code, else 0",
        None,
        |s| Some(i64::from(s.awaiting_token_code)),
    ),
];

impl Collector for SessionSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        for (name, help, unit, value) in &SESSION_GAUGES {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for (namespace, names) in sessions.iter() {
                for (session, recorded) in names {
                    if let Some(v) = value(recorded) {
                        let labels = [("namespace", &**namespace), ("name", &**session)];
                        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `process_resident_memory_bytes`: the process' resident set (Linux `/proc/self/statm`), read
/// at each scrape; absent where that file is not (the dashboard's "operator memory").
#[derive(Debug, Default)]
struct ProcessSeries;

fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages.saturating_mul(page))
}

impl Collector for ProcessSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = resident_bytes() {
            let family = encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size of the operator process",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(bytes).encode(family)?;
        }
        Ok(())
    }
}

/// The operator's metrics. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: Arc<SessionSeries>,
    roles: Arc<roles::RoleSeries>,
    sts_calls: Family<OutcomeLabels, Counter>,
    assume_role_calls: Family<OutcomeLabels, Counter>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ReasonLabels, Counter>,
    reconcile_panics: Counter,
    unreadable_objects: Family<KindLabels, Counter>,
    leader: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_seconds(t: jiff::Timestamp) -> i64 {
    t.as_second()
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sessions = Arc::new(SessionSeries::default());
        let sts_calls = Family::<OutcomeLabels, Counter>::default();
        let assume_role_calls = Family::<OutcomeLabels, Counter>::default();
        let reconcile_duration = Histogram::new(RECONCILE_BUCKETS);
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        let reconcile_panics = Counter::default();
        let unreadable_objects = Family::<KindLabels, Counter>::default();

        registry.register_collector(Box::new(sessions.clone()));
        let roles = Arc::new(roles::RoleSeries::default());
        registry.register_collector(Box::new(roles.clone()));
        registry.register_collector(Box::new(ProcessSeries));
        let leader = Gauge::default();
        registry.register(
            "sts_session_leader",
            "1 while this replica reconciles (holds the leader Lease, or runs without leader election), else 0",
            leader.clone(),
        );
        registry.register(
            "sts_session_sts_calls",
            "GetSessionToken calls by outcome",
            sts_calls.clone(),
        );
        registry.register(
            "sts_session_assume_role_calls",
            "AssumeRole calls (spec.assumeRole) by outcome",
            assume_role_calls.clone(),
        );
        registry.register_with_unit(
            "sts_session_reconcile_duration",
            "Duration of SessionToken reconciliations",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "sts_session_reconcile_errors",
            "Reconciliations that ended in an error, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "sts_session_reconcile_panics",
            "Reconciliations that panicked (caught: the object gets Ready=False/InternalError and is retried)",
            reconcile_panics.clone(),
        );
        registry.register(
            "sts_session_unreadable_objects",
            "Objects a watch received but could not read (skipped, the others served), by kind",
            unreadable_objects.clone(),
        );
        // Present from the start, at 0, so that alerts on them have a series to look at.
        for kind in ["SessionToken", "AssumedRole", "Secret"] {
            let _ = unreadable_objects.get_or_create(&KindLabels { kind: kind.into() });
        }

        Self {
            registry,
            sessions,
            roles,
            sts_calls,
            assume_role_calls,
            reconcile_duration,
            reconcile_errors,
            reconcile_panics,
            unreadable_objects,
            leader,
        }
    }

    /// Whether this replica reconciles: call with `true` once it holds the leader Lease (or at
    /// start without leader election), `false` when it loses it.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts one reconcile that panicked.
    pub fn reconcile_panicked(&self) {
        self.reconcile_panics.inc();
    }

    /// Counts one object of `kind` that a watch could not read.
    pub fn unreadable_object(&self, kind: &str) {
        self.unreadable_objects
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Records the state of one `AssumedRole` (replacing what was recorded before).
    pub fn set_assumed_role(
        &self,
        namespace: &str,
        name: &str,
        m: &crate::plan::AssumedRoleMetrics,
    ) {
        self.roles.set(namespace, name, m);
    }

    /// Forgets a deleted `AssumedRole`.
    pub fn remove_assumed_role(&self, namespace: &str, name: &str) {
        self.roles.remove(namespace, name);
    }

    /// Records the state of one `SessionToken` (replacing what was recorded before).
    pub fn set_session(&self, namespace: &str, name: &str, s: SessionMetrics) {
        let s = Recorded::from(s);
        let mut sessions = self
            .sessions
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let names = match sessions.get_mut(namespace) {
            Some(names) => names,
            None => sessions.entry(namespace.into()).or_default(),
        };
        match names.get_mut(name) {
            Some(recorded) => *recorded = s,
            None => {
                names.insert(name.into(), s);
            }
        }
    }

    /// Drops every series of one `SessionToken` (call when it is deleted).
    pub fn remove_session(&self, namespace: &str, name: &str) {
        let mut sessions = self
            .sessions
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(names) = sessions.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                sessions.remove(namespace);
            } else if names.capacity() > 64 && names.len() < names.capacity() / 4 {
                names.shrink_to_fit();
            }
        }
    }

    /// Counts one STS call: `outcome` is `sts::OUTCOME_SUCCESS` or `StsError::metric_outcome()`.
    pub fn sts_call(&self, outcome: &str) {
        self.sts_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one AssumeRole call, `outcome` as for [`Metrics::sts_call`].
    pub fn assume_role_call(&self, outcome: &str) {
        self.assume_role_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records one finished reconciliation, and its error reason if it failed.
    pub fn reconcile_finished(&self, duration: Duration, error_reason: Option<&str>) {
        self.reconcile_duration.observe(duration.as_secs_f64());
        if let Some(reason) = error_reason {
            self.reconcile_errors
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// All metrics in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

/// Serves `GET /metrics`, `/healthz` (200 `ok` while the process serves) and `/readyz` (200
/// once `ready` is true, else 503) on `addr`; 404 for other paths. Runs until an accept error
/// it cannot get past (only binding errors are returned early).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_listener(listener, metrics, ready).await
}

/// [`serve`] on an already bound listener (tests bind port 0), `/metrics` open to anyone.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_listener_with_auth(listener, metrics, ready, None).await
}

/// [`serve_listener`], with `/metrics` served only to readers `auth` allows (401 without a
/// valid bearer token, 403 without the right, 503 when the API server cannot be asked).
pub async fn serve_listener_with_auth(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    auth: Option<Arc<MetricsAuth>>,
) -> std::io::Result<()> {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_transient_accept_error(&e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                let auth = auth.clone();
                async move {
                    if let Some(denied) = guard(&req, auth.as_deref()).await {
                        return Ok::<_, Infallible>(denied);
                    }
                    Ok::<_, Infallible>(respond(&req, &metrics, &ready))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics server: connection ended with an error");
            }
        });
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

/// The refusal of a `/metrics` request `auth` does not allow, if it is one.
async fn guard(
    req: &Request<Incoming>,
    auth: Option<&MetricsAuth>,
) -> Option<Response<Full<Bytes>>> {
    let auth = auth?;
    if req.uri().path() != "/metrics" || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    match auth.check(req.headers().get(AUTHORIZATION)).await {
        Ok(auth::Verdict::Allowed) => None,
        Ok(auth::Verdict::Unauthenticated) => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "unauthorized: a bearer token the Kubernetes API accepts is needed\n",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="sts-session-operator""#),
            );
            Some(r)
        }
        Ok(auth::Verdict::Forbidden) => Some(text(
            StatusCode::FORBIDDEN,
            "forbidden: needs get on the non-resource URL /metrics (ClusterRole ...-metrics-reader)\n",
        )),
        Err(e) => {
            tracing::debug!(error = %e, "metrics: request not judged");
            Some(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the bearer token now\n",
            ))
        }
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    ready: &watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if *ready.borrow() => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ts(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn session_series_come_and_go() {
        let m = Metrics::new();
        m.set_session(
            "team-a",
            "deploy",
            SessionMetrics {
                expiration: Some(ts(1_900_000_000)),
                renewal: Some(ts(1_899_990_000)),
                role_expiration: Some(ts(1_899_999_000)),
                role_renewal: None,
                ready: true,
                awaiting_token_code: false,
            },
        );
        m.set_session(
            "team-b",
            "ci",
            SessionMetrics {
                expiration: None,
                renewal: None,
                role_expiration: None,
                role_renewal: None,
                ready: false,
                awaiting_token_code: true,
            },
        );
        let out = m.encode();
        assert!(out.contains(r#"sts_session_expiration_timestamp_seconds{namespace="team-a",name="deploy"} 1900000000"#), "{out}");
        assert!(out.contains(r#"sts_session_renewal_timestamp_seconds{namespace="team-a",name="deploy"} 1899990000"#), "{out}");
        assert!(out.contains(r#"sts_session_role_expiration_timestamp_seconds{namespace="team-a",name="deploy"} 1899999000"#), "{out}");
        assert!(
            !out.contains(r#"sts_session_role_renewal_timestamp_seconds{"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_ready_status{namespace="team-a",name="deploy"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_awaiting_token_code{namespace="team-a",name="deploy"} 0"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_ready_status{namespace="team-b",name="ci"} 0"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_awaiting_token_code{namespace="team-b",name="ci"} 1"#),
            "{out}"
        );
        assert!(
            !out.contains(r#"sts_session_expiration_timestamp_seconds{namespace="team-b""#),
            "{out}"
        );
        assert!(
            out.contains("# UNIT sts_session_expiration_timestamp_seconds seconds"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");

        // An update without expiration drops that series.
        m.set_session(
            "team-a",
            "deploy",
            SessionMetrics {
                ready: true,
                ..Default::default()
            },
        );
        let out = m.encode();
        assert!(
            !out.contains(r#"sts_session_expiration_timestamp_seconds{namespace="team-a""#),
            "{out}"
        );
        assert!(
            !out.contains(r#"sts_session_renewal_timestamp_seconds{namespace="team-a""#),
            "{out}"
        );

        m.remove_session("team-a", "deploy");
        let out = m.encode();
        assert!(!out.contains(r#"name="deploy""#), "{out}");
        assert!(out.contains(r#"name="ci""#), "{out}");
        m.remove_session("team-b", "ci");
        m.remove_session("team-b", "ci");
        assert!(!m.encode().contains("namespace="));
    }

    #[test]
    fn leader_and_process_memory() {
        let m = Metrics::new();
        assert!(m.encode().contains("sts_session_leader 0\n"));
        m.set_leader(true);
        let out = m.encode();
        assert!(out.contains("sts_session_leader 1\n"), "{out}");
        let resident = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<i64>().ok());
        assert!(resident.is_some_and(|b| b > 1 << 20), "{out}");
        m.set_leader(false);
        assert!(m.encode().contains("sts_session_leader 0\n"));
    }

    #[test]
    fn counters_and_histogram() {
        let m = Metrics::new();
        m.sts_call("success");
        m.sts_call("success");
        m.sts_call("token_code_rejected");
        m.reconcile_finished(Duration::from_millis(30), None);
        m.reconcile_finished(Duration::from_secs(2), Some("KubeError"));
        let out = m.encode();
        assert!(
            out.contains(r#"sts_session_sts_calls_total{outcome="success"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_sts_calls_total{outcome="token_code_rejected"} 1"#),
            "{out}"
        );
        assert!(
            out.contains("sts_session_reconcile_duration_seconds_count 2"),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_reconcile_duration_seconds_bucket{le="0.05"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sts_session_reconcile_errors_total{reason="KubeError"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn metrics_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Metrics>();
    }

    /// One HTTP/1.1 request over a raw socket; returns (status, headers, body).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn http_endpoints() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_session(
            "ns",
            "st",
            SessionMetrics {
                expiration: Some(ts(2_000_000_000)),
                ..Default::default()
            },
        );
        let (ready_tx, ready_rx) = watch::channel(false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_listener(listener, metrics.clone(), ready_rx));

        let (status, _, body) = get(addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        let (status, _, _) = get(addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        ready_tx.send(true).unwrap();
        let (status, _, body) = get(addr, "GET", "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        ready_tx.send(false).unwrap();
        assert_eq!(get(addr, "GET", "/readyz").await.0, 503);

        let (status, head, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(
            body.contains(
                r#"sts_session_expiration_timestamp_seconds{namespace="ns",name="st"} 2000000000"#
            ),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        // Fresh values on every scrape.
        metrics.remove_session("ns", "st");
        let (_, _, body) = get(addr, "GET", "/metrics").await;
        assert!(!body.contains(r#"name="st""#), "{body}");

        assert_eq!(get(addr, "GET", "/").await.0, 404);
        assert_eq!(get(addr, "GET", "/metricsx").await.0, 404);
        let (status, head, _) = get(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get, head"), "{head}");
        let (status, _, body) = get(addr, "HEAD", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, ""));

        // Garbage does not take the server down.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);

        server.abort();
    }

    #[tokio::test]
    async fn with_auth_metrics_need_a_token_and_health_stays_open() {
        let (_ready_tx, ready_rx) = watch::channel(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(MetricsAuth::new(Duration::from_secs(30), 8));
        let server = tokio::spawn(serve_listener_with_auth(
            listener,
            Arc::new(Metrics::new()),
            ready_rx,
            Some(auth),
        ));
        let (status, head, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 401, "{body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(!body.contains("sts_session"), "{body}");
        assert_eq!(get(addr, "HEAD", "/metrics").await.0, 401);
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
        assert_eq!(get(addr, "GET", "/readyz").await.0, 200);
        // A token, but no API server to ask yet: not served, not cached.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        assert!(buf.starts_with("HTTP/1.1 503"), "{buf}");
        server.abort();
    }

    #[tokio::test]
    async fn serve_reports_bind_errors() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let (_tx, rx) = watch::channel(true);
        let r = serve(addr, Arc::new(Metrics::new()), rx).await;
        assert!(r.is_err());
    }
}
