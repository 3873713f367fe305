//! Hostile tenants (issue #12): one operator serves every namespace, so every byte of every
//! object a tenant can edit is hostile. Each case runs its own operator process watching two
//! namespaces (`--namespaces=A,B`) and, as the tenant of A (user `alice`, with full rights on
//! SessionTokens, their status and Secrets in A only), writes something hostile to the API
//! server. Then, whatever the API server admitted, while that operator runs and again after it
//! is replaced by a new process (which must list everything afresh):
//!
//! 1. the operator process still runs and logged no panic (a panicking reconcile task need not
//!    end the process: it is counted as a crash all the same),
//! 2. a fresh (non-MFA) SessionToken in B, and one in A, become `Ready=True` within 10 s,
//! 3. no token code reached STS twice,
//! 4. no secret reached the operator's log (a code annotation with its value, the long-term
//!    secret key, a session's secrets, raw or base64).
//!
//! One more test runs an operator for every namespace (the chart's default) on a control plane
//! of its own: there one tenant's unreadable object must not blind it to the others.
//!
//! Every case records `hostile=N crashes=N stalls=N` (tests/support/summary.rs). A case fails
//! with the operator's panic line, or the condition a fresh SessionToken was stuck in.
//! Hostile writes are sent raw (`request_text`): some of what is written (times beyond the
//! range of `jiff::Timestamp`) cannot even be read back through the typed API.

#[path = "../operator/common.rs"]
mod common;
#[path = "../support/summary.rs"]
mod summary;

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use kube::Client;
use kube::api::{DeleteParams, GetParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::control_plane::ControlPlane;
use testkit::sts_double::{CodePolicy, Fault, RoleSpec, StsDouble, StsDoubleConfig};

/// A fresh SessionToken must be served within this, whatever else is going on.
const FRESH: Duration = Duration::from_secs(10);
const T: Duration = Duration::from_secs(30);
const TENANT: &str = "alice";

/// Beyond `jiff::Timestamp::MAX` (9999-12-30T22:00:00Z), valid for the API server (Go).
const BEYOND_JIFF: &str = "9999-12-31T23:59:59Z";
/// Just inside `jiff::Timestamp::MAX`: parses, but any addition overflows.
const AT_JIFF_MAX: &str = "9999-12-30T21:59:59Z";
/// Just inside `jiff::Timestamp::MIN` (-009999-01-02T01:59:59Z).
const AT_JIFF_MIN: &str = "-009999-01-02T01:59:59Z";
/// Below `jiff::Timestamp::MIN`.
const BELOW_JIFF: &str = "-009999-01-01T00:00:00Z";

const CODE: &str = "stssession.dev/token-code";
const APPROVED_BY: &str = "stssession.dev/approved-by";
const CLAIMED_AT: &str = "stssession.dev/token-code-claimed-at";
const RENEW: &str = "stssession.dev/renew-requested-at";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Six-digit codes, distinct within this test binary.
fn next_code() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:06}",
        100_000 + (std::process::id() % 500) * 1_000 + n % 1_000
    )
}

fn spec(extra: Value) -> Value {
    let mut spec =
        json!({"durationSeconds": 900, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
    for (k, v) in extra.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    spec
}

/// A DNS subdomain name of exactly `len` characters (labels of at most 63).
fn long_name(prefix: &str, len: usize) -> String {
    let mut name = String::from(prefix);
    while name.len() < len {
        if name.len() % 60 == 59 && name.len() + 2 <= len {
            name.push('.');
        } else {
            name.push('x');
        }
    }
    name.truncate(len);
    name
}

/// Raw writes and reads as one client: bodies go out as written, answers come back as JSON
/// (never through the typed API, which cannot represent some of what a tenant may write).
struct Raw {
    client: Client,
    ns: String,
}

impl Raw {
    fn sessions(&self) -> String {
        format!(
            "/apis/stssession.dev/v1alpha1/namespaces/{}/sessiontokens",
            self.ns
        )
    }
    fn secrets(&self) -> String {
        format!("/api/v1/namespaces/{}/secrets", self.ns)
    }
    async fn send(&self, req: hyper::Request<Vec<u8>>) -> Result<Value, kube::Error> {
        let text = self.client.request_text(req).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn create(&self, path: &str, body: &Value) -> Result<Value, kube::Error> {
        let req = kube::core::Request::new(path)
            .create(&PostParams::default(), serde_json::to_vec(body).unwrap())
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await
    }
    async fn get(&self, path: &str, name: &str) -> Result<Value, kube::Error> {
        let req = kube::core::Request::new(path)
            .get(name, &GetParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await
    }
    async fn get_opt(&self, path: &str, name: &str) -> Result<Option<Value>, kube::Error> {
        match self.get(path, name).await {
            Ok(v) => Ok(Some(v)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn replace(&self, path: &str, name: &str, body: &Value) -> Result<Value, kube::Error> {
        let req = kube::core::Request::new(path)
            .replace(
                name,
                &PostParams::default(),
                serde_json::to_vec(body).unwrap(),
            )
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await
    }
    async fn merge(&self, path: &str, name: &str, body: Value) -> Result<Value, kube::Error> {
        let req = kube::core::Request::new(path)
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await
    }
    async fn merge_status(&self, name: &str, body: Value) -> Result<Value, kube::Error> {
        let req = kube::core::Request::new(self.sessions())
            .patch_subresource(
                "status",
                name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await
    }
    async fn delete(&self, path: &str, name: &str) -> Result<(), kube::Error> {
        let req = kube::core::Request::new(path)
            .delete(name, &DeleteParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.send(req).await.map(|_| ())
    }
    async fn annotate(&self, name: &str, annotations: Value) -> Result<Value, kube::Error> {
        self.merge(
            &self.sessions(),
            name,
            json!({"metadata": {"annotations": annotations}}),
        )
        .await
    }
    async fn create_session(&self, name: &str, spec: Value) -> Result<Value, kube::Error> {
        self.create(
            &self.sessions(),
            &json!({"apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
                "metadata": {"name": name}, "spec": spec}),
        )
        .await
    }
    async fn create_secret(&self, name: &str, labels: Value, data: Value) -> Result<Value> {
        Ok(self
            .create(
                &self.secrets(),
                &json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "labels": labels}, "stringData": data}),
            )
            .await?)
    }
}

/// The first panic in an operator log: the `panicked at` line and the message after it.
fn panic_line(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines.iter().position(|l| l.contains("panicked at"))?;
    let mut text = lines[i..lines.len().min(i + 2)].join(" | ");
    // where in the operator, if the panic is in a dependency
    if !lines[i].contains("panicked at src/")
        && let Some(frame) = lines[i..]
            .iter()
            .take(60)
            .find(|l| l.trim_start().starts_with("at ./src/"))
    {
        text.push_str(&format!(" | {}", frame.trim()));
    }
    Some(text)
}

/// One hostile case: namespaces A (the hostile tenant's) and B, an STS double, one operator
/// watching both.
struct Case<'cp> {
    name: &'static str,
    cp: &'cp ControlPlane,
    /// The operator watches every namespace (no `--namespaces`).
    cluster_wide: bool,
    a: Ns,
    b: Ns,
    /// The tenant of A, with full rights on SessionTokens (status too) and Secrets in A.
    tenant: Raw,
    sts: StsDouble,
    op: Operator,
    tried: u64,
    crashes: u64,
    stalls: u64,
    /// Secret values found in the operator's log (each kind once per check).
    leaks: u64,
    fresh: u32,
    /// `panicked at` lines already counted in this operator's log.
    panics_seen: usize,
    /// Bytes of this operator's log already searched for leaks.
    log_checked: usize,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl<'cp> Case<'cp> {
    async fn start(name: &'static str) -> Result<Case<'static>> {
        Case::start_with(name, |_| {}).await
    }

    async fn start_with(
        name: &'static str,
        configure: impl FnOnce(&StsDouble),
    ) -> Result<Case<'static>> {
        Case::start_in(control_plane().await, name, false, configure).await
    }

    async fn start_in(
        cp: &'cp ControlPlane,
        name: &'static str,
        cluster_wide: bool,
        configure: impl FnOnce(&StsDouble),
    ) -> Result<Case<'cp>> {
        let a = Ns::new(cp, "hostile-a").await?;
        let b = Ns::new(cp, "hostile-b").await?;
        let sts = StsDouble::start(StsDoubleConfig {
            code_policy: CodePolicy::AcceptAny,
            ..Default::default()
        })?;
        configure(&sts);
        let user = sts.default_user();
        for ns in [&a, &b] {
            ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
                .await?;
        }
        cp.apply_yaml(&format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: hostile-tenant, namespace: {ns}}}
rules:
  - apiGroups: [stssession.dev]
    resources: [sessiontokens, sessiontokens/status]
    verbs: ["*"]
  - apiGroups: [""]
    resources: [secrets]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: hostile-tenant, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: hostile-tenant}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {TENANT}}}]
"#,
            ns = a.name
        ))
        .await?;
        let tenant = Raw {
            client: cp.client_as(TENANT).await?,
            ns: a.name.clone(),
        };
        // RBAC reaches the authorizer's cache asynchronously.
        eventually(T, "the tenant's Role to take effect", || async {
            Ok(tenant
                .get_opt(&tenant.secrets(), "iam-keys")
                .await
                .ok()
                .flatten())
        })
        .await?;
        let op = Operator::start(cp, &b.name, &Self::options(&sts, &a, &b, cluster_wide)).await?;
        Ok(Case {
            name,
            cp,
            cluster_wide,
            a,
            b,
            tenant,
            sts,
            op,
            tried: 0,
            crashes: 0,
            stalls: 0,
            leaks: 0,
            fresh: 0,
            panics_seen: 0,
            log_checked: 0,
            failures: vec![],
            notes: vec![],
        })
    }

    fn options(sts: &StsDouble, a: &Ns, b: &Ns, cluster_wide: bool) -> OperatorOptions {
        let namespaces = match cluster_wide {
            true => String::new(),
            false => format!("{},{}", a.name, b.name),
        };
        OperatorOptions {
            sts_endpoint: sts.endpoint(),
            extra_args: vec![format!("--namespaces={namespaces}")],
            leader_election: false,
            user: OPERATOR_USER,
        }
    }

    fn mfa(&self) -> Value {
        json!({"mfa": {"serialNumber": self.sts.default_user().serial_number().unwrap()}})
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("[{}] {note}", self.name);
        self.notes.push(note);
    }

    fn fail(&mut self, failure: impl Into<String>) {
        let failure = failure.into();
        println!("[{}] FAILURE: {failure}", self.name);
        self.failures.push(failure);
    }

    /// Kills the operator (kill -9) and starts a new one, as a pod restart would.
    async fn restart_operator(&mut self) -> Result<()> {
        self.op.process.kill_9()?;
        let opts = Self::options(&self.sts, &self.a, &self.b, self.cluster_wide);
        self.op = Operator::start(self.cp, &self.b.name, &opts).await?;
        self.panics_seen = 0;
        self.log_checked = 0;
        Ok(())
    }

    /// A fresh non-MFA SessionToken in `ns`: `Ready=True` within [`FRESH`], or why not.
    async fn fresh_in(&self, ns: &Ns, n: u32) -> Result<(), String> {
        let name = format!("fresh-{n}");
        ns.create_session(&name, spec(json!({})))
            .await
            .map_err(|e| format!("creating {}/{name}: {e:#}", ns.name))?;
        match wait_condition(ns, &name, "Ready", "True", "Issued", FRESH).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}/{name}: {e:#}", ns.name)),
        }
    }

    /// The three assertions, after `when`. Failures are collected (see [`Case::finish`]); a
    /// dead operator is counted, then replaced so the case can go on.
    async fn check(&mut self, when: &str) {
        if self.op.process.is_running() {
            self.fresh += 1;
            let n = self.fresh;
            let (in_b, in_a) = tokio::join!(self.fresh_in(&self.b, n), self.fresh_in(&self.a, n));
            // (A process that exited meanwhile is a crash: its stalls go without saying.)
            let stalls: Vec<String> = [("namespace B", in_b), ("namespace A", in_a)]
                .into_iter()
                .filter_map(|(which, r)| {
                    r.err()
                        .map(|why| format!("{when}: stall in {which}: {why}"))
                })
                .collect();
            if !stalls.is_empty() && self.op.process.is_running() {
                self.stalls += 1;
                for stall in stalls {
                    self.fail(stall);
                }
            }
        }
        // Read after the fresh SessionTokens had their chance: a reconcile may panic meanwhile
        // (a panicking reconcile task need not end the process).
        let whole = self.op.log();
        let running = self.op.process.is_running();
        // Leaks: only in what this operator logged since the last check.
        let log = whole
            .get(self.log_checked..)
            .unwrap_or_default()
            .to_string();
        self.log_checked = whole.len();
        let panics = whole.matches("panicked at").count();
        if !running || panics > self.panics_seen {
            self.crashes += 1;
            self.panics_seen = panics;
            let why = panic_line(&whole).unwrap_or_else(|| self.op.process.log_tail(15));
            let exit = self.op.process.try_wait().ok().flatten();
            self.fail(format!(
                "{when}: operator crashed (process running: {running}, exit: {exit:?}): {why}"
            ));
            if !running {
                match self.restart_operator().await {
                    Ok(()) => {}
                    Err(e) => self.fail(format!("{when}: restarting the operator: {e:#}")),
                }
            }
        }
        // No secret may be logged, e.g. in a response dumped whole because it could not be
        // read: a code annotation with its value, the long-term secret key, a session's secrets
        // (raw or base64, as in a Secret's data).
        let needle = format!("\"{CODE}\":\"");
        if let Some((n, line)) = log.lines().enumerate().find(|(_, l)| l.contains(&needle)) {
            // (the line itself is not shown: it holds the code)
            let head: String = line.chars().take(100).collect();
            self.leaks += 1;
            self.fail(format!(
                "{when}: the operator logged a token-code annotation with its value (line {} of its log since the last check, starting {head:?})",
                n + 1
            ));
        }
        let mut secrets = vec![(
            "the long-term secret access key",
            self.sts.default_user().secret_access_key,
        )];
        for s in self.sts.issued_sessions() {
            secrets.push(("a session's secret access key", s.secret_access_key));
            secrets.push(("a session token", s.session_token));
        }
        let mut reported = std::collections::BTreeSet::new();
        for (what, value) in secrets {
            if reported.contains(what) {
                continue;
            }
            let b64 = serde_json::to_value(k8s_openapi::ByteString(value.clone().into_bytes()))
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            for (form, needle) in [("", value), (" (base64)", b64)] {
                if let Some((n, line)) = log.lines().enumerate().find(|(_, l)| l.contains(&needle))
                {
                    let head: String = line.chars().take(100).collect();
                    self.fail(format!(
                        "{when}: the operator logged {what}{form} (line {} of its log since the last check, starting {head:?})",
                        n + 1
                    ));
                    reported.insert(what);
                    self.leaks += 1;
                    break;
                }
            }
        }
        let mut uses: BTreeMap<String, usize> = BTreeMap::new();
        for call in self.sts.calls() {
            if let (Some(code), Some(_)) = (call.token_code_used, call.code_accepted) {
                *uses.entry(code).or_default() += 1;
            }
        }
        for (code, n) in uses.iter().filter(|(_, n)| **n > 1) {
            self.fail(format!("{when}: token code {code} reached STS {n} times"));
        }
    }

    /// [`Case::check`], then again with a new operator process (kill -9, start), which must
    /// list everything afresh: what a watch event could skip, a list cannot.
    async fn check_and_restart(&mut self, when: &str) {
        self.check(&format!("{when} (watch)")).await;
        if let Err(e) = self.restart_operator().await {
            self.fail(format!("{when}: restarting the operator: {e:#}"));
            return;
        }
        self.check(&format!("{when} (after a restart: list)")).await;
    }

    /// Records the figures and fails with every failure seen.
    fn finish(self) -> Result<()> {
        println!(
            "[{}] hostile objects tried / operator crashes / stalls: {} / {} / {} (secrets in the log: {})",
            self.name, self.tried, self.crashes, self.stalls, self.leaks
        );
        summary::record(
            &format!("hostile::{}", self.name),
            &[
                ("hostile", self.tried),
                ("crashes", self.crashes),
                ("stalls", self.stalls),
                ("leaks", self.leaks),
            ],
        );
        if !self.failures.is_empty() {
            bail!(
                "{}: {} failure(s):\n- {}\nnotes: {:?}",
                self.name,
                self.failures.len(),
                self.failures.join("\n- "),
                self.notes
            );
        }
        Ok(())
    }

    /// A SessionToken in A, created by the tenant, and served once (`Ready` set either way).
    async fn session_in_a(&self, name: &str, spec: Value, ready: (&str, &str)) -> Result<()> {
        self.tenant
            .create_session(name, spec)
            .await
            .with_context(|| format!("creating {name}"))?;
        wait_condition(&self.a, name, "Ready", ready.0, ready.1, T).await?;
        Ok(())
    }

    /// Sets annotations on a SessionToken in A, as the tenant; counts one hostile write.
    async fn annotate(&mut self, name: &str, annotations: Value) -> Result<()> {
        self.tried += 1;
        self.tenant
            .annotate(name, annotations)
            .await
            .with_context(|| format!("annotating {name}"))?;
        Ok(())
    }

    /// A status subresource write as the tenant; counts one hostile write. Err: refused.
    async fn status(&mut self, name: &str, status: Value) -> Result<Value, kube::Error> {
        self.tried += 1;
        self.tenant
            .merge_status(name, json!({"status": status}))
            .await
    }

    /// Waits until the operator has claimed (removed) the renew annotation.
    async fn renew_handled(&self, name: &str) -> Result<()> {
        // The operator honours at most one renewal request a minute per SessionToken.
        eventually(
            Duration::from_secs(75),
            &format!("the renew request on {name} to be handled"),
            || async {
                let st = self.a.session(name).await?;
                let annotations = st.metadata.annotations.unwrap_or_default();
                Ok((!annotations.contains_key(RENEW)).then_some(()))
            },
        )
        .await
    }

    /// Asks for a new session now (non-MFA): makes the operator mint, and write status.
    async fn renew(&self, name: &str) -> Result<()> {
        self.tenant
            .annotate(name, json!({RENEW: jiff::Timestamp::now().to_string()}))
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Annotations the operator reads.

#[tokio::test]
async fn claimed_at_annotation_at_the_end_of_time() -> Result<()> {
    let mut c = Case::start("claimed_at_at_jiff_max").await?;
    let mfa = c.mfa();
    c.session_in_a("claimed", spec(mfa), ("False", "AwaitingTokenCode"))
        .await?;
    c.annotate("claimed", json!({CLAIMED_AT: AT_JIFF_MAX}))
        .await?;
    c.check("token-code-claimed-at at jiff's maximum").await;
    // The same beside a real approval, which makes the operator look at the claim again.
    if c.op.process.is_running() {
        let code = next_code();
        c.annotate(
            "claimed",
            json!({CODE: code, APPROVED_BY: "admin", CLAIMED_AT: AT_JIFF_MAX}),
        )
        .await?;
        c.check_and_restart("token-code-claimed-at at jiff's maximum, with a code")
            .await;
    }
    c.finish()
}

#[tokio::test]
async fn every_annotation_the_operator_reads_set_to_junk() -> Result<()> {
    let mut c = Case::start("annotations_junk").await?;
    let mfa = c.mfa();
    c.session_in_a("mfa", spec(mfa.clone()), ("False", "AwaitingTokenCode"))
        .await?;
    c.session_in_a("plain", spec(json!({})), ("True", "Issued"))
        .await?;
    let junk = "\u{202e}\u{0007}<script>\"'%00../../${x}".repeat(2_000); // ~64 KiB
    // token-code: huge (the annotations of an object may total 256 KiB), non-ASCII digits,
    // digits with a NUL, and a code on the non-MFA one; approved-by: junk.
    let attempts = [
        json!({CODE: "1".repeat(180_000), APPROVED_BY: junk}),
        json!({CODE: "١٢٣٤٥٦", APPROVED_BY: ""}),
        json!({CODE: "12345\u{0000}", APPROVED_BY: "x".repeat(60_000)}),
        json!({CODE: " 123456", APPROVED_BY: null}),
    ];
    for (i, a) in attempts.into_iter().enumerate() {
        match c.annotate("mfa", a).await {
            Ok(()) => {}
            Err(e) => c.note(format!("junk code {i} refused by the API server: {e:#}")),
        }
        // claimed (removed) or refused: either way, before the next one
        let _ = eventually(T, "the junk code to be claimed", || async {
            let st = c.a.session("mfa").await?;
            Ok((!st
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(CODE))
            .then_some(()))
        })
        .await
        .map_err(|e| c.fail(format!("junk code {i} was never claimed: {e:#}")));
    }
    c.annotate("plain", json!({CODE: next_code(), APPROVED_BY: "admin"}))
        .await?;
    // renew-requested-at: far future, beyond jiff, empty, junk.
    for value in [BEYOND_JIFF.to_string(), String::new(), junk_of(100_000)] {
        c.annotate("plain", json!({RENEW: value})).await?;
    }
    c.annotate("mfa", json!({RENEW: AT_JIFF_MAX})).await?;
    // token-code-claimed-at: empty, junk, beyond jiff either way, at jiff's minimum.
    for value in [
        "",
        "x",
        BEYOND_JIFF,
        BELOW_JIFF,
        AT_JIFF_MIN,
        "+010000-01-01T00:00:00Z",
    ] {
        c.annotate("mfa", json!({CLAIMED_AT: value})).await?;
        c.annotate("plain", json!({CLAIMED_AT: value})).await?;
    }
    // last-applied-configuration: huge, and holding the code annotation's name, beside a
    // usable code.
    let code = next_code();
    let last_applied = format!(
        "{{\"metadata\":{{\"annotations\":{{\"{CODE}\":\"{code}\"}}}},\"pad\":\"{}\"}}",
        "p".repeat(150_000)
    );
    c.annotate(
        "mfa",
        json!({CLAIMED_AT: null, LAST_APPLIED: last_applied, CODE: code, APPROVED_BY: "admin"}),
    )
    .await?;
    c.check_and_restart("junk in every annotation the operator reads")
        .await;
    c.finish()
}

fn junk_of(len: usize) -> String {
    "\u{feff}9999-99-99T99:99:99Z\u{0}".repeat(len / 24 + 1)[..len].to_string()
}

#[tokio::test]
async fn oversized_annotations_and_many_labels() -> Result<()> {
    let mut c = Case::start("oversized_metadata").await?;
    let mut annotations = serde_json::Map::new();
    for i in 0..5 {
        annotations.insert(format!("hostile.example/a{i}"), json!("a".repeat(50_000)));
    }
    let mut labels = serde_json::Map::new();
    for i in 0..1_000 {
        labels.insert(format!("hostile.example/l{i}"), json!("v".repeat(63)));
    }
    // ~250 KiB of annotations (the limit is 256 KiB in all), 1,000 labels; and the same on the
    // output Secret through spec.secret.
    let big_secret_meta =
        json!({"secret": {"annotations": annotations.clone(), "labels": labels.clone()}});
    c.tried += 1;
    let result = c
        .tenant
        .create(
            &c.tenant.sessions(),
            &json!({"apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
                "metadata": {"name": "big", "annotations": annotations, "labels": labels},
                "spec": spec(big_secret_meta)}),
        )
        .await;
    match result {
        Ok(_) => {
            // Served: the Secret carries it all (or the write is refused, shown in status).
            let st = eventually(T, "big to be served", || async {
                let st = c.a.session("big").await?;
                Ok(st.condition("Ready").is_some().then_some(st))
            })
            .await?;
            c.note(format!("big: Ready {:?}", cond(&st, "Ready")));
        }
        Err(e) => c.note(format!("refused at create: {e}")),
    }
    c.check_and_restart("oversized metadata").await;
    c.finish()
}

#[tokio::test]
async fn names_at_the_253_character_limit() -> Result<()> {
    let mut role = None;
    let mut c = Case::start_with("names_at_253", |sts| {
        role = Some(sts.add_role(RoleSpec::named("hostile-role")))
    })
    .await?;
    let role = role.unwrap();
    let st_name = long_name("st", 253);
    let secret_name = long_name("out", 253);
    let role_name = long_name("role", 253);
    c.tried += 3;
    c.session_in_a(&st_name, spec(json!({})), ("True", "Issued"))
        .await
        .map_err(|e| c.fail(format!("a SessionToken named with 253 characters: {e:#}")))
        .ok();
    c.session_in_a(
        "long-secret",
        spec(json!({"secret": {"name": secret_name}})),
        ("True", "Issued"),
    )
    .await
    .map_err(|e| c.fail(format!("an output Secret named with 253 characters: {e:#}")))
    .ok();
    c.session_in_a(
        &role_name,
        spec(json!({"durationSeconds": 3600, "assumeRole": {"roleArn": role.arn}})),
        ("True", "Issued"),
    )
    .await
    .map_err(|e| c.fail(format!("spec.assumeRole on a 253-character name: {e:#}")))
    .ok();
    c.check_and_restart("names at the 253-character limit")
        .await;
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// Status subresource writes.

#[tokio::test]
async fn last_failure_at_the_end_of_time_with_max_failed_attempts() -> Result<()> {
    let mut c = Case::start("last_failure_at_jiff_max").await?;
    c.session_in_a("failing", spec(json!({})), ("True", "Issued"))
        .await?;
    let status = json!({"failedAttempts": i32::MAX,
        "lastFailure": {"time": AT_JIFF_MAX, "reason": "StsError", "message": "hostile"}});
    c.status("failing", status).await?;
    c.renew("failing").await?;
    c.check_and_restart("lastFailure.time at jiff's maximum, failedAttempts i32::MAX")
        .await;
    c.finish()
}

/// `status.expiration` / `renewalTime` / `issuedAt` at `time`, on a non-MFA and an MFA
/// SessionToken each.
async fn status_times(name: &'static str, time: &str) -> Result<()> {
    let mut c = Case::start(name).await?;
    let mfa = c.mfa();
    c.session_in_a("plain", spec(json!({})), ("True", "Issued"))
        .await?;
    c.session_in_a("mfa", spec(mfa), ("False", "AwaitingTokenCode"))
        .await?;
    for st in ["plain", "mfa"] {
        let status = json!({"expiration": time, "renewalTime": time, "issuedAt": time});
        match c.status(st, status).await {
            Ok(_) => {}
            Err(e) => c.note(format!("{st}: refused by the API server: {e}")),
        }
    }
    c.renew("plain").await?;
    let code = next_code();
    c.annotate("mfa", json!({CODE: code, APPROVED_BY: "admin"}))
        .await?;
    c.check_and_restart(&format!("status times at {time}"))
        .await;
    c.finish()
}

#[tokio::test]
async fn status_times_at_jiffs_maximum() -> Result<()> {
    status_times("status_times_at_jiff_max", AT_JIFF_MAX).await
}

#[tokio::test]
async fn status_times_at_jiffs_minimum() -> Result<()> {
    status_times("status_times_at_jiff_min", AT_JIFF_MIN).await
}

#[tokio::test]
async fn status_times_beyond_jiffs_range() -> Result<()> {
    status_times("status_times_beyond_jiff_max", BEYOND_JIFF).await
}

#[tokio::test]
async fn status_times_below_jiffs_range() -> Result<()> {
    status_times("status_times_below_jiff_min", BELOW_JIFF).await
}

#[tokio::test]
async fn status_counters_at_their_maximum() -> Result<()> {
    let mut role = None;
    let mut c = Case::start_with("status_counters_at_max", |sts| {
        role = Some(sts.add_role(RoleSpec::named("counted")))
    })
    .await?;
    let role = role.unwrap();
    c.session_in_a("plain", spec(json!({})), ("True", "Issued"))
        .await?;
    c.session_in_a(
        "role",
        spec(json!({"durationSeconds": 3600, "assumeRole": {"roleArn": role.arn}})),
        ("True", "Issued"),
    )
    .await?;
    c.status(
        "plain",
        json!({"rotations": i64::MAX, "failedAttempts": i32::MAX, "observedGeneration": i64::MAX}),
    )
    .await?;
    c.status(
        "role",
        json!({"rotations": i64::MAX, "role": {"assumptions": i64::MAX, "failedAttempts": i32::MAX,
            "lastFailure": {"time": AT_JIFF_MAX, "reason": "x", "message": "x"}}}),
    )
    .await?;
    // A new session: rotations + 1; with the role, assumptions + 1.
    c.renew("plain").await?;
    c.renew("role").await?;
    c.check_and_restart("status counters at their maximum")
        .await;
    c.finish()
}

#[tokio::test]
async fn garbage_status_conditions() -> Result<()> {
    let mut c = Case::start("garbage_conditions").await?;
    c.session_in_a("many", spec(json!({})), ("True", "Issued"))
        .await?;
    c.session_in_a("huge", spec(json!({})), ("True", "Issued"))
        .await?;
    let t = jiff::Timestamp::now().to_string();
    // 1,000 conditions, most of them duplicate types, a few unknown statuses.
    let many: Vec<Value> = (0..1_000)
        .map(|i| {
            let type_ = ["Ready", "Issuing", "RoleAssumed", "Whatever"][i % 4];
            let status = ["True", "False", "Unknown", "Maybe"][i % 4];
            json!({"type": type_, "status": status,
                "reason": format!("R{i}"), "message": "m", "lastTransitionTime": t})
        })
        .collect();
    c.status("many", json!({"conditions": many})).await?;
    // Messages of 300 KiB, reasons of 10 KiB, a future and a past transition time.
    let huge = json!([
        {"type": "Ready", "status": "True", "reason": "R".repeat(10_000), "message": "m".repeat(300_000), "lastTransitionTime": AT_JIFF_MAX},
        // (Before jiff's minimum is refused at write time now: status times are date-time.)
        {"type": "Issuing", "status": "Unknown", "reason": "TokenCodeClaimed", "message": "m".repeat(300_000), "lastTransitionTime": "0001-01-01T00:00:00Z"},
    ]);
    c.status("huge", json!({"conditions": huge})).await?;
    c.renew("many").await?;
    c.renew("huge").await?;
    c.check_and_restart("garbage conditions").await;
    c.finish()
}

#[tokio::test]
async fn condition_with_a_junk_transition_time() -> Result<()> {
    let mut c = Case::start("condition_time_junk").await?;
    c.session_in_a("junk-time", spec(json!({})), ("True", "Issued"))
        .await?;
    let conditions = json!([{"type": "Ready", "status": "True", "reason": "Issued",
        "message": "m", "lastTransitionTime": "x"}]);
    match c
        .status("junk-time", json!({"conditions": conditions}))
        .await
    {
        Ok(_) => c.note("lastTransitionTime \"x\": admitted by the API server"),
        Err(e) => c.note(format!(
            "lastTransitionTime \"x\": refused by the API server: {e}"
        )),
    }
    c.renew("junk-time").await?;
    c.check_and_restart("a condition with lastTransitionTime \"x\"")
        .await;
    c.finish()
}

#[tokio::test]
async fn status_secret_names_pointing_at_other_secrets() -> Result<()> {
    let mut c = Case::start("status_secret_names_elsewhere").await?;
    c.session_in_a("sibling", spec(json!({})), ("True", "Issued"))
        .await?;
    c.session_in_a("pointer", spec(json!({})), ("True", "Issued"))
        .await?;
    c.tenant
        .create_secret("victim", json!({}), json!({"mine": "do not touch"}))
        .await?;
    let before = |v: &Value| v["metadata"]["resourceVersion"].clone();
    let mut versions = BTreeMap::new();
    for name in ["iam-keys", "victim", "sibling"] {
        let s = c.tenant.get(&c.tenant.secrets(), name).await?;
        versions.insert(name, before(&s));
    }
    // The output Secret "moved" (per status) from the source Secret, another tenant's Secret,
    // a sibling's output Secret; kept sessions in them too.
    // B's source Secret, read by admin (the tenant of A cannot).
    let b_keys =
        c.b.secrets()
            .get("iam-keys")
            .await?
            .metadata
            .resource_version;
    let traversal = format!("../../{}/secrets/iam-keys", c.b.name);
    for (secret_name, session_name) in [
        ("iam-keys", "victim"),
        ("victim", "iam-keys"),
        ("sibling", "sibling"),
        (traversal.as_str(), traversal.as_str()),
        ("/", ""),
    ] {
        c.status(
            "pointer",
            json!({"secretName": secret_name, "sessionSecretName": session_name}),
        )
        .await?;
        c.renew("pointer").await?;
        if let Err(e) = c.renew_handled("pointer").await {
            c.fail(format!("pointer after {secret_name:?}: {e:#}"));
            continue;
        }
        eventually(T, "status.secretName to be pointer again", || async {
            let st = c.a.session("pointer").await?;
            Ok((st.status.and_then(|s| s.secret_name).as_deref() == Some("pointer")).then_some(()))
        })
        .await
        .map_err(|e| c.fail(format!("pointer after {secret_name:?}: {e:#}")))
        .ok();
    }
    c.check_and_restart("status.secretName/sessionSecretName pointing elsewhere")
        .await;
    if c.b
        .secrets()
        .get("iam-keys")
        .await?
        .metadata
        .resource_version
        != b_keys
    {
        c.fail("the source Secret of namespace B was changed");
    }
    for (name, rv) in versions {
        match c.tenant.get_opt(&c.tenant.secrets(), name).await? {
            Some(s) if before(&s) == rv => {}
            Some(_) => c.fail(format!("the Secret {name} was changed by the operator")),
            None => c.fail(format!("the Secret {name} was deleted by the operator")),
        }
    }
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// managedFields beyond jiff's range.

/// Adds a managedFields entry dated [`BEYOND_JIFF`] with an update (PUT) that sends the
/// object's managedFields explicitly, as a tenant may. Checks that the API server kept it.
async fn forge_managed_fields(tenant: &Raw, path: &str, name: &str) -> Result<()> {
    // First the field the forged entry claims, set by the tenant (an entry owning nothing
    // would be dropped: a request that changes a field takes it over from every other manager).
    tenant
        .merge(
            path,
            name,
            json!({"metadata": {"labels": {"hostile": "yes"}}}),
        )
        .await?;
    // Then a PUT that changes nothing but managedFields.
    let mut obj = tenant.get(path, name).await?;
    let entry = json!({"manager": "hostile", "operation": "Update",
        "apiVersion": obj["apiVersion"], "time": BEYOND_JIFF, "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {"f:hostile": {}}}}});
    obj["metadata"]["managedFields"]
        .as_array_mut()
        .context("managedFields")?
        .push(entry);
    tenant.replace(path, name, &obj).await?;
    let stored = tenant.get(path, name).await?;
    ensure!(
        stored["metadata"]["managedFields"]
            .to_string()
            .contains(BEYOND_JIFF),
        "the API server did not keep the forged managedFields time: {}",
        stored["metadata"]["managedFields"]
    );
    Ok(())
}

#[tokio::test]
async fn managed_fields_time_beyond_jiff_on_a_session_token() -> Result<()> {
    let mut c = Case::start("managed_fields_beyond_jiff_session_token").await?;
    c.session_in_a("forged", spec(json!({})), ("True", "Issued"))
        .await?;
    c.tried += 1;
    let path = c.tenant.sessions();
    forge_managed_fields(&c.tenant, &path, "forged").await?;
    c.check("managedFields time beyond jiff on a SessionToken (watch)")
        .await;
    c.restart_operator().await?;
    c.check("managedFields time beyond jiff on a SessionToken (after a restart: list)")
        .await;
    c.finish()
}

#[tokio::test]
async fn managed_fields_time_beyond_jiff_on_an_operator_labelled_secret() -> Result<()> {
    let mut c = Case::start("managed_fields_beyond_jiff_secret").await?;
    c.session_in_a("owner", spec(json!({})), ("True", "Issued"))
        .await?;
    c.tried += 2;
    c.tenant
        .create_secret(
            "lookalike",
            json!({"app.kubernetes.io/managed-by": "sts-session-operator"}),
            json!({"x": "y"}),
        )
        .await?;
    let path = c.tenant.secrets();
    forge_managed_fields(&c.tenant, &path, "lookalike").await?;
    // ... and on the operator's own output Secret.
    forge_managed_fields(&c.tenant, &path, "owner").await?;
    c.check("managedFields time beyond jiff on Secrets labelled managed-by the operator (watch)")
        .await;
    c.restart_operator().await?;
    c.check("managedFields time beyond jiff on Secrets labelled managed-by the operator (after a restart: list)").await;
    c.finish()
}

#[tokio::test]
async fn managed_fields_dating_a_code_absurdly() -> Result<()> {
    let mut c = Case::start("managed_fields_code_times").await?;
    let mfa = c.mfa();
    for (name, time) in [
        ("future", "9000-01-01T00:00:00Z"),
        ("past", "1970-01-01T00:00:01Z"),
    ] {
        c.session_in_a(name, spec(mfa.clone()), ("False", "AwaitingTokenCode"))
            .await?;
        // One PUT: the code and a managedFields entry saying it was set at `time`.
        let path = c.tenant.sessions();
        let mut obj = c.tenant.get(&path, name).await?;
        obj["metadata"]["annotations"] = json!({CODE: next_code(), APPROVED_BY: "admin"});
        obj["metadata"]["managedFields"]
            .as_array_mut()
            .context("managedFields")?
            .push(json!({"manager": "hostile", "operation": "Update",
                "apiVersion": "stssession.dev/v1alpha1", "time": time, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {
                    format!("f:{CODE}"): {}, format!("f:{APPROVED_BY}"): {}}}}}));
        c.tried += 1;
        c.tenant.replace(&path, name, &obj).await?;
    }
    c.check_and_restart("managedFields dating a code in 9000 and in 1970")
        .await;
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// Output Secrets.

#[tokio::test]
async fn two_session_tokens_naming_the_same_output_secret() -> Result<()> {
    let mut c = Case::start("same_output_secret").await?;
    for round in 0..20 {
        let out = format!("shared-{round}");
        let (x, y) = (format!("x-{round}"), format!("y-{round}"));
        let body = spec(json!({"secret": {"name": out}}));
        c.tried += 2;
        let (rx, ry) = tokio::join!(
            c.tenant.create_session(&x, body.clone()),
            c.tenant.create_session(&y, body.clone())
        );
        rx?;
        ry?;
        // Exactly one of them holds the Secret; the other says SecretConflict.
        let settled = eventually(FRESH, "one Issued, one SecretConflict", || async {
            if !c.op.process.is_running() {
                return Ok(Some(())); // a crash: judged below
            }
            let (sx, sy) = (c.a.session(&x).await?, c.a.session(&y).await?);
            let (rx, ry) = (cond(&sx, "Ready"), cond(&sy, "Ready"));
            let issued = ("True".to_string(), "Issued".to_string());
            let conflict = ("False".to_string(), "SecretConflict".to_string());
            Ok(
                ((rx == issued && ry == conflict) || (ry == issued && rx == conflict))
                    .then_some(()),
            )
        })
        .await;
        if !c.op.process.is_running() || c.op.log().contains("panicked at") {
            c.check(&format!("round {round}")).await;
        } else if let Err(e) = settled {
            c.fail(format!("round {round}: {e:#}"));
        }
        // Each round on its own: the next operator (after a crash) does not meet this one's.
        for name in [&x, &y] {
            c.tenant.delete(&c.tenant.sessions(), name).await?;
        }
    }
    c.check_and_restart("after 20 rounds of two SessionTokens naming one Secret")
        .await;
    c.finish()
}

#[tokio::test]
async fn secret_write_refused_then_the_tenant_takes_the_name() -> Result<()> {
    let mut c = Case::start("invalid_label_then_foreign_secret").await?;
    c.tried += 2;
    c.tenant
        .create_session(
            "badlabel",
            spec(json!({"secret": {"labels": {"bad key!": "x"}}})),
        )
        .await?;
    // The session is minted, the Secret write refused (kept in memory, retried).
    wait_condition(&c.a, "badlabel", "Issuing", "False", "SecretWriteFailed", T).await?;
    let foreign = c
        .tenant
        .create_secret("badlabel", json!({}), json!({"mine": "x"}))
        .await?;
    let rv = foreign["metadata"]["resourceVersion"].clone();
    wait_condition(&c.a, "badlabel", "Ready", "False", "SecretConflict", T)
        .await
        .map_err(|e| c.fail(format!("badlabel: {e:#}")))
        .ok();
    c.check_and_restart("a Secret write refused, then the name taken by a foreign Secret")
        .await;
    let now = c.tenant.get(&c.tenant.secrets(), "badlabel").await?;
    if now["metadata"]["resourceVersion"] != rv {
        c.fail("the operator wrote to the foreign Secret");
    }
    c.finish()
}

#[tokio::test]
async fn retained_secret_replaced_by_a_foreign_one() -> Result<()> {
    let mut c = Case::start("retained_secret_replaced").await?;
    c.session_in_a(
        "kept",
        spec(json!({"secret": {"retainOnDelete": true}})),
        ("True", "Issued"),
    )
    .await?;
    let secrets = c.tenant.secrets();
    // Replaced by a Secret of the tenant's, then by one wearing the operator's labels with
    // another owner's UID.
    for labels in [
        json!({}),
        json!({"app.kubernetes.io/managed-by": "sts-session-operator",
            "stssession.dev/session-token-uid": "00000000-0000-0000-0000-000000000000"}),
    ] {
        c.tried += 1;
        // One PUT (no window for the operator to write the Secret again in between): the
        // tenant's data and labels, nothing of the operator's.
        let mut foreign = c.tenant.get(&secrets, "kept").await?;
        foreign["metadata"]["labels"] = labels.clone();
        foreign["metadata"]["annotations"] = json!({});
        foreign["data"] = json!({"mine": "eA=="});
        let created = c.tenant.replace(&secrets, "kept", &foreign).await?;
        let rv = created["metadata"]["resourceVersion"].clone();
        c.renew("kept").await?;
        if let Err(e) = c.renew_handled("kept").await {
            c.fail(format!("kept: {e:#}"));
        }
        wait_condition(&c.a, "kept", "Ready", "False", "SecretConflict", T)
            .await
            .map_err(|e| c.fail(format!("kept with labels {labels}: {e:#}")))
            .ok();
        let now = c.tenant.get(&secrets, "kept").await?;
        if now["metadata"]["resourceVersion"] != rv {
            c.fail(format!(
                "the operator wrote to the foreign Secret (labels {labels})"
            ));
        }
    }
    c.check_and_restart("a retained Secret replaced by foreign ones")
        .await;
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// Churn.

#[tokio::test]
async fn spec_flip_flopping() -> Result<()> {
    let mut c = Case::start("spec_flip_flop").await?;
    let mfa = c.mfa();
    c.session_in_a("flip", spec(json!({})), ("True", "Issued"))
        .await?;
    let path = c.tenant.sessions();
    for i in 0..30 {
        let patch = match i % 3 {
            0 => {
                json!({"spec": {"mfa": mfa["mfa"], "secret": {"name": "flip-b"}, "durationSeconds": 1800}})
            }
            1 => {
                json!({"spec": {"mfa": null, "secret": {"name": "flip-a", "retainOnDelete": true}, "durationSeconds": 900}})
            }
            _ => json!({"spec": {"mfa": null, "secret": null, "renewal": {"renewBefore": "1m"}}}),
        };
        c.tried += 1;
        c.tenant.merge(&path, "flip", patch).await?;
    }
    // The last one (i = 29) was: no MFA, default Secret name.
    wait_condition(&c.a, "flip", "Ready", "True", "Issued", T)
        .await
        .map_err(|e| c.fail(format!("flip never settled: {e:#}")))
        .ok();
    eventually(T, "status.secretName to be flip", || async {
        let st = c.a.session("flip").await?;
        Ok((st.status.and_then(|s| s.secret_name).as_deref() == Some("flip")).then_some(()))
    })
    .await
    .map_err(|e| c.fail(format!("{e:#}")))
    .ok();
    c.check_and_restart("a spec flip-flopped 30 times").await;
    c.finish()
}

#[tokio::test]
async fn session_token_deleted_while_its_code_is_in_use() -> Result<()> {
    let mut c = Case::start("deleted_while_code_in_use").await?;
    let mfa = c.mfa();
    c.session_in_a("doomed", spec(mfa), ("False", "AwaitingTokenCode"))
        .await?;
    c.sts.inject_faults(Fault::Delay(Duration::from_secs(3)));
    let code = next_code();
    c.annotate("doomed", json!({CODE: code, APPROVED_BY: "admin"}))
        .await?;
    // Claimed: the annotation is gone and the claim is on record.
    wait_condition(&c.a, "doomed", "Issuing", "Unknown", "TokenCodeClaimed", T).await?;
    c.tried += 1;
    c.tenant.delete(&c.tenant.sessions(), "doomed").await?;
    eventually(T, "the STS call to end", || async {
        Ok((c.sts.uses_of_code(&code) >= 1).then_some(()))
    })
    .await?;
    c.sts.clear_faults();
    c.check_and_restart("a SessionToken deleted while its code was in use")
        .await;
    // No credentials outlive their SessionToken (owner reference, garbage collector).
    let gone = eventually(T, "no Secret doomed", || async {
        Ok(c.a
            .secrets()
            .get_opt("doomed")
            .await?
            .is_none()
            .then_some(()))
    })
    .await;
    if let Err(e) = gone {
        c.fail(format!("{e:#}"));
    }
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// One operator for every namespace (the chart's default): what one tenant writes must not blind
// it to the others. On a control plane of its own, since this operator sees every namespace.

#[tokio::test]
async fn cluster_wide_operator_is_not_blinded_by_one_tenants_objects() -> Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cp = ControlPlane::start_with(testkit::control_plane::StartOptions {
        crds: vec![root.join("crds")],
        ..Default::default()
    })
    .await?;
    cp.apply_yaml_file(root.join("tests/fixtures/operator-rbac.yaml"))
        .await?;
    let mut c = Case::start_in(&cp, "cluster_wide_poison", true, |_| {}).await?;
    let mfa = c.mfa();
    // An innocent tenant's SessionToken in B, about to be approved.
    c.b.create_session("victim", spec(mfa.clone())).await?;
    wait_condition(&c.b, "victim", "Ready", "False", "AwaitingTokenCode", T).await?;
    let sessions = c.tenant.sessions();
    let secrets = c.tenant.secrets();
    let poisons: [(&str, &str, &str); 5] = [
        ("status.expiration beyond jiff", "sessiontoken", "p-status"),
        (
            "a condition with lastTransitionTime \"x\"",
            "sessiontoken",
            "p-condition",
        ),
        (
            "managedFields time beyond jiff on a SessionToken",
            "sessiontoken",
            "p-fields",
        ),
        (
            "managedFields time beyond jiff on an operator-labelled Secret",
            "secret",
            "p-secret",
        ),
        (
            "token-code-claimed-at at jiff's maximum",
            "sessiontoken",
            "p-claim",
        ),
    ];
    for (i, (what, kind, name)) in poisons.into_iter().enumerate() {
        c.tried += 1;
        let admitted = match i {
            0 => {
                c.session_in_a(name, spec(json!({})), ("True", "Issued"))
                    .await?;
                c.tenant
                    .merge_status(name, json!({"status": {"expiration": BEYOND_JIFF}}))
                    .await
            }
            1 => {
                c.session_in_a(name, spec(json!({})), ("True", "Issued"))
                    .await?;
                let conditions = json!([{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "m", "lastTransitionTime": "x"}]);
                c.tenant
                    .merge_status(name, json!({"status": {"conditions": conditions}}))
                    .await
            }
            2 => {
                c.session_in_a(name, spec(json!({})), ("True", "Issued"))
                    .await?;
                forge_managed_fields(&c.tenant, &sessions, name).await?;
                Ok(Value::Null)
            }
            3 => {
                c.tenant
                    .create_secret(
                        name,
                        json!({"app.kubernetes.io/managed-by": "sts-session-operator"}),
                        json!({"x": "y"}),
                    )
                    .await?;
                forge_managed_fields(&c.tenant, &secrets, name).await?;
                Ok(Value::Null)
            }
            _ => {
                c.session_in_a(name, spec(mfa.clone()), ("False", "AwaitingTokenCode"))
                    .await?;
                c.tenant
                    .annotate(name, json!({CLAIMED_AT: AT_JIFF_MAX}))
                    .await
            }
        };
        match admitted {
            Ok(_) => {
                c.check(&format!("{what} (watch)")).await;
                c.restart_operator().await?;
                if i == 0 {
                    // B approves while the new operator lists: the code waits in B's object.
                    c.b.approve("victim", &next_code(), "admin").await?;
                }
                c.check(&format!("{what} (after a restart: list)")).await;
            }
            Err(e) => c.note(format!("{what}: refused by the API server: {e}")),
        }
        // Clean up before the next one, with an operator that starts afresh.
        let path = if kind == "secret" {
            &secrets
        } else {
            &sessions
        };
        c.tenant.delete(path, name).await?;
        if !c.op.process.is_running() {
            c.restart_operator().await?;
        }
    }
    c.finish()
}
