//! Crash safety: the operator killed with SIGKILL at random moments, across many rotations
//! (without MFA) and many approvals (with MFA, kills landing while the STS call is in flight:
//! some by chance, at least one on purpose, with the call held at the STS double until the kill),
//! and started again each time (no leader election: the new process need not wait for the dead
//! one's Lease).
//!
//! What must hold afterwards: every SessionToken is Ready; no Secret was seen holding expired
//! credentials while the operator had been up long enough to renew them; no token code reached
//! STS twice; every approval either minted a session or ended as `Issuing=False/Interrupted`
//! (never lost silently), and an approval whose STS call a kill cut short ended as exactly that;
//! no operator process panicked or exited on its own.
//!
//! Random choices come from one seed, printed (set `STS_TEST_SEED` to replay one). The default
//! sizes fit CI (about a minute each, running side by side); `STS_TEST_LONG=1` runs far more.

use crate::common::*;
use crate::summary;
use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{ListParams, WatchEvent, WatchParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sts_session_operator::crd::SessionToken;
use testkit::control_plane::ControlPlane;
use testkit::sts_double::{CodePolicy, Fault, HoldFilter, StsDouble, StsDoubleConfig};

/// Linux's SIGSTOP (libc is not a dependency of these tests).
const SIGSTOP: i32 = 19;

fn seed() -> u64 {
    std::env::var("STS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Timestamp::now().as_nanosecond() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The operator, killed and started again on demand; keeps the dead ones for their logs.
struct Crashy {
    cp: &'static ControlPlane,
    ns: String,
    opts: OperatorOptions,
    current: Option<Operator>,
    dead: Vec<Operator>,
    kills: u64,
    /// When the running operator became ready; `None` while it is down.
    up_since: Arc<Mutex<Option<Instant>>>,
}

impl Crashy {
    async fn start(cp: &'static ControlPlane, ns: &str, opts: OperatorOptions) -> Result<Crashy> {
        let op = Operator::start(cp, ns, &opts).await?;
        Ok(Crashy {
            cp,
            ns: ns.to_string(),
            opts,
            current: Some(op),
            dead: vec![],
            kills: 0,
            up_since: Arc::new(Mutex::new(Some(Instant::now()))),
        })
    }

    fn current(&self) -> &Operator {
        self.current.as_ref().expect("an operator is running")
    }

    /// SIGKILL now; fails if the process had already exited by itself.
    fn kill(&mut self) -> Result<()> {
        let op = self.current.take().expect("an operator is running");
        *lock(&self.up_since) = None;
        let status = op.process.kill_9()?;
        ensure!(
            status.signal() == Some(9),
            "the operator had exited by itself ({status}):\n{}",
            op.process.log_tail(40)
        );
        self.kills += 1;
        self.dead.push(op);
        Ok(())
    }

    async fn restart(&mut self) -> Result<()> {
        let op = Operator::start(self.cp, &self.ns, &self.opts).await?;
        *lock(&self.up_since) = Some(Instant::now());
        self.current = Some(op);
        Ok(())
    }

    /// No process panicked; the current one still runs.
    fn check_no_panic(&self) -> Result<()> {
        for op in self.dead.iter().chain(self.current.as_ref()) {
            let log = op.log();
            ensure!(
                !log.contains("panicked"),
                "an operator panicked:\n{}",
                op.process.log_tail(60)
            );
        }
        let op = self.current();
        ensure!(
            op.process.is_running(),
            "the operator exited:\n{}",
            op.process.log_tail(40)
        );
        Ok(())
    }
}

fn crash_opts(endpoint: String, extra: &[&str]) -> OperatorOptions {
    OperatorOptions {
        sts_endpoint: endpoint,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        leader_election: false,
        user: OPERATOR_USER,
    }
}

/// What the Secret sampler saw.
#[derive(Default, Debug)]
struct Samples {
    samples: u64,
    /// Expired credentials seen while the operator had been up for the grace period.
    violations: Vec<String>,
    /// Expired credentials seen while the operator was down or just restarted (allowed).
    expired_while_down: u64,
}

/// Lists the Secrets every 100 ms until `stop`; an expired session in one of `names` is a
/// violation when the operator has been up (ready) for at least `grace` at that moment: long
/// enough to read its objects again and renew what is due.
async fn sample_secrets(
    ns: Ns,
    names: Vec<String>,
    up_since: Arc<Mutex<Option<Instant>>>,
    grace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Samples {
    let mut out = Samples::default();
    while !*stop.borrow() {
        // Read before the request: what the list returns is at least this recent.
        let t0 = Timestamp::now();
        let up = *lock(&up_since);
        if let Ok(list) = ns.secrets().list(&ListParams::default()).await {
            out.samples += 1;
            for s in list.items {
                let name = s.metadata.name.clone().unwrap_or_default();
                if !names.contains(&name) {
                    continue;
                }
                let exp = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("AWS_SESSION_EXPIRATION"))
                    .and_then(|v| String::from_utf8_lossy(&v.0).parse::<Timestamp>().ok());
                let Some(exp) = exp else { continue };
                if exp > t0 {
                    continue;
                }
                match up {
                    Some(since) if since.elapsed() >= grace => out.violations.push(format!(
                        "{name} held credentials that expired at {exp}, seen at {t0}, with the operator up for {:?}",
                        since.elapsed()
                    )),
                    _ => out.expired_while_down += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

#[tokio::test]
async fn kill_9_across_rotations_never_leaves_expired_credentials() -> Result<()> {
    let long = summary::long();
    let (want_rotations, want_kills, budget) = if long {
        (1000u64, 100u64, Duration::from_secs(1200))
    } else {
        (100, 10, Duration::from_secs(150))
    };
    let seed = seed();
    println!("crash/rotations: seed {seed} (STS_TEST_SEED replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let cp = control_plane().await;
    let ns = Ns::new(cp, "crash-rot").await?;
    // 5 s sessions renew about 2 s before they expire; every call takes 300 ms, so many kills
    // land while one is in flight.
    let sts = StsDouble::start(StsDoubleConfig {
        returned_lifetime: Some(Duration::from_secs(5)),
        ..Default::default()
    })?;
    sts.inject_faults(Fault::Delay(Duration::from_millis(300)));
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let names: Vec<String> = (0..5).map(|i| format!("app-{i}")).collect();
    for name in &names {
        ns.create_session(name, json!({"durationSeconds": 900, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}}))
            .await?;
    }
    let mut op = Crashy::start(cp, &ns.name, crash_opts(sts.endpoint(), &[])).await?;
    for name in &names {
        wait_condition(
            &ns,
            name,
            "Ready",
            "True",
            "Issued",
            Duration::from_secs(30),
        )
        .await?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // 4 s of uptime: the restarted process lists, reconciles and mints (300 ms) what is due;
    // generous for a loaded 2-core machine, short against kills every 1-6 s.
    let grace = Duration::from_secs(4);
    let sampler = tokio::spawn(sample_secrets(
        Ns {
            name: ns.name.clone(),
            client: ns.client.clone(),
        },
        names.clone(),
        op.up_since.clone(),
        grace,
        stop_rx,
    ));

    let started = Instant::now();
    let rotations = |ns: &Ns| {
        let api = ns.sessions();
        async move {
            let list = api.list(&ListParams::default()).await?;
            anyhow::Ok(
                list.items
                    .iter()
                    .map(|s| s.status.as_ref().map_or(0, |s| s.rotations))
                    .sum::<i64>() as u64,
            )
        }
    };
    let initial = rotations(&ns).await?;
    let mut downtime = Duration::ZERO;
    loop {
        let done = rotations(&ns).await? - initial;
        if done >= want_rotations && op.kills >= want_kills {
            break;
        }
        ensure!(
            started.elapsed() < budget,
            "only {done} rotations and {} kills in {budget:?}",
            op.kills
        );
        // Up for 1-6 s (sometimes long enough to renew, sometimes not), then killed, down for
        // 0-3 s (sometimes past an expiry: the sampler must see those, and the restarted
        // process must catch up within the grace period).
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..6000))).await;
        op.kill()?;
        let down = Duration::from_millis(rng.random_range(0..3000));
        tokio::time::sleep(down).await;
        let restart_started = Instant::now();
        op.restart().await?;
        downtime += down + restart_started.elapsed();
    }
    // Run a while longer without kills: the last restart must catch up as well.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_tx.send(true)?;
    let samples = sampler.await?;

    for name in &names {
        wait_condition(
            &ns,
            name,
            "Ready",
            "True",
            "Issued",
            Duration::from_secs(30),
        )
        .await?;
    }
    op.check_no_panic()?;
    let rotated = rotations(&ns).await? - initial;
    let ok_calls = sts.calls().iter().filter(|c| c.outcome.is_ok()).count() as u64;
    println!(
        "crash/rotations: {rotated} rotations, {} kills, {:.1}s down in all, {ok_calls} sessions issued by STS, {} samples ({} expired while the operator was down or catching up), {:?}",
        op.kills,
        downtime.as_secs_f64(),
        samples.samples,
        samples.expired_while_down,
        started.elapsed()
    );
    ensure!(
        samples.violations.is_empty(),
        "expired credentials while the operator could renew them:\n{}",
        samples.violations.join("\n")
    );
    ensure!(
        samples.samples > 100,
        "too few samples: {}",
        samples.samples
    );
    // A kill can cost one extra session per SessionToken (minted, then lost with the process
    // before status recorded it); anything beyond that is a duplicate mint.
    let bound = initial + rotated + op.kills * names.len() as u64 + names.len() as u64;
    ensure!(
        ok_calls <= bound,
        "{ok_calls} sessions issued for {rotated} rotations and {} kills",
        op.kills
    );
    summary::record(
        "faults::kill_9_across_rotations",
        &[("rotations", rotated), ("kills", op.kills)],
    );
    Ok(())
}

/// How one approval ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Minted: `status.lastApproval.approvedBy` names this approval.
    Issued,
    /// `Issuing=False/Interrupted`.
    Interrupted,
}

#[derive(Default)]
struct Board {
    /// SessionToken -> (code, when its claim was seen in status) while a claim is in progress.
    claimed: HashMap<String, (String, Instant)>,
    /// Codes whose STS call a kill cut short: killed within 600 ms of the claim being seen in
    /// status, STS not having answered by then.
    cut_short: BTreeSet<String>,
    kill_times: Vec<Instant>,
}

/// One SessionToken approved again and again, each time with a fresh code.
async fn approve_repeatedly(
    ns: Ns,
    name: String,
    approvals: usize,
    board: Arc<Mutex<Board>>,
    codes: Arc<std::sync::atomic::AtomicU32>,
) -> Result<Vec<(String, Outcome)>> {
    let mut outcomes = vec![];
    loop {
        let code = format!(
            "{:06}",
            100_000 + codes.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let by = format!("tester-{code}");
        // Not all at once: approvals that a kill interrupted together would stay in step.
        let jitter = rand::rng().random_range(0..1000);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let before = ns.session(&name).await?;
        let stale_interrupted = condition(&before, "Issuing")
            .filter(|c| c.reason == "Interrupted")
            .map(|c| c.message);
        ns.approve(&name, &code, &by).await?;
        let approved_at = Instant::now();
        let deadline = approved_at + Duration::from_secs(90);
        let outcome = loop {
            let st = ns.session(&name).await?;
            let issuing = condition(&st, "Issuing");
            let status = st.status.clone().unwrap_or_default();
            if status
                .last_approval
                .as_ref()
                .and_then(|a| a.approved_by.as_deref())
                == Some(by.as_str())
            {
                break Outcome::Issued;
            }
            match issuing {
                Some(c) if c.status == "Unknown" && c.reason == "TokenCodeClaimed" => {
                    lock(&board)
                        .claimed
                        .entry(name.clone())
                        .or_insert((code.clone(), Instant::now()));
                }
                Some(c)
                    if c.status == "False"
                        && c.reason == "Interrupted"
                        && Some(&c.message) != stale_interrupted.as_ref() =>
                {
                    break Outcome::Interrupted;
                }
                // The previous approval's outcome, still shown.
                Some(c) if c.status == "False" && c.reason == "Interrupted" => {}
                Some(c) if c.status == "False" => {
                    bail!(
                        "{name}: approval with {code} ended as Issuing=False/{}: {}",
                        c.reason,
                        c.message
                    )
                }
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}: approval with {code} neither minted a session nor ended as Interrupted in 90 s (lost?); status: {:?}",
                    st.status
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        lock(&board).claimed.remove(&name);
        let (cut_short, killed_since) = {
            let b = lock(&board);
            (
                b.cut_short.contains(&code),
                b.kill_times.iter().any(|k| *k > approved_at),
            )
        };
        if outcome == Outcome::Interrupted {
            ensure!(
                killed_since,
                "{name}: approval with {code} Interrupted without a kill"
            );
        }
        if cut_short {
            ensure!(
                outcome == Outcome::Interrupted,
                "{name}: a kill cut the STS call with {code} short, yet the approval ended as {outcome:?}"
            );
        }
        if outcome == Outcome::Issued {
            let st = ns.session(&name).await?;
            ensure!(
                cond(&st, "Ready") == ("True".into(), "Issued".into()),
                "{name}: {:?}",
                st.status
            );
            let key = st.status.as_ref().and_then(|s| s.access_key_id.clone());
            let data = ns.secret_data(&name).await?.unwrap_or_default();
            ensure!(
                data.get("AWS_ACCESS_KEY_ID") == key.as_ref(),
                "{name}: the Secret does not hold the session status names"
            );
        }
        outcomes.push((code, outcome.clone()));
        if outcomes.len() >= approvals && outcome == Outcome::Issued {
            return Ok(outcomes);
        }
    }
}

#[tokio::test]
async fn kill_9_across_mfa_approvals_never_reuses_or_silently_loses_a_code() -> Result<()> {
    let long = summary::long();
    let (approvals_per_token, kill_budget) = if long { (40, 80u64) } else { (6, 8) };
    let seed = seed();
    println!("crash/approvals: seed {seed} (STS_TEST_SEED replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let cp = control_plane().await;
    let ns = Ns::new(cp, "crash-mfa").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    // Every call takes 1 s: a kill soon after the claim lands mid-call.
    sts.inject_faults(Fault::Delay(Duration::from_secs(1)));
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let names: Vec<String> = (0..4).map(|i| format!("mfa-{i}")).collect();
    for name in &names {
        ns.create_session(
            name,
            json!({"durationSeconds": 900, "mfa": {"serialNumber": user.serial_number().unwrap()}, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}}),
        )
        .await?;
    }
    // A claim left by a dead process is declared Interrupted 2 s + 10 s after it was made; codes
    // stay usable for a minute, so a restart never turns a pending code into an expired one.
    let mut op = Crashy::start(
        cp,
        &ns.name,
        crash_opts(
            sts.endpoint(),
            &["--sts-timeout=2s", "--token-code-max-age=60s"],
        ),
    )
    .await?;
    for name in &names {
        wait_condition(
            &ns,
            name,
            "Ready",
            "False",
            "AwaitingTokenCode",
            Duration::from_secs(30),
        )
        .await?;
    }

    let board = Arc::new(Mutex::new(Board::default()));
    let codes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let drivers: Vec<_> = names
        .iter()
        .map(|name| {
            tokio::spawn(approve_repeatedly(
                Ns {
                    name: ns.name.clone(),
                    client: ns.client.clone(),
                },
                name.clone(),
                approvals_per_token,
                board.clone(),
                codes.clone(),
            ))
        })
        .collect();
    let all_done = || drivers.iter().all(|d| d.is_finished());
    let mut mid_call_kills = 0u64;
    // Kills driven into an STS call on purpose: the first one (before any approval can finish)
    // and the one half-way through the budget. The double holds the next call carrying a code
    // until the operator is dead, so the kill lands mid-call every time, whatever the seed and
    // the machine's load. The other kills keep the random schedule.
    let forced: BTreeSet<u64> = [0, kill_budget / 2].into();
    let mut forced_kills = 0u64;
    // Kills until the budget is spent; the approvals then finish undisturbed.
    while !all_done() && op.kills < kill_budget {
        let mut cut = None;
        let mut held = None;
        if forced.contains(&op.kills) {
            if op.kills > 0 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
                if all_done() {
                    break;
                }
            }
            let hold = sts.hold_next(HoldFilter::WithTokenCode);
            let call = hold
                .arrived(Duration::from_secs(60))
                .await
                .with_context(|| {
                    format!(
                        "no approval reached STS within 60 s of arming a hold (kill {})",
                        op.kills
                    )
                })?;
            // Anywhere from at once to 300 ms into the call.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            cut = call.token_code_used.clone();
            held = Some(hold);
        } else {
            // Up for 1-5 s, then: half of the time kill right after a claim (mid-call, if the
            // timing works out), else at a random moment.
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
            if all_done() {
                break;
            }
            if rng.random_bool(0.5) {
                let until = Instant::now() + Duration::from_secs(5);
                let mut target = None;
                while Instant::now() < until && !all_done() {
                    let fresh = lock(&board)
                        .claimed
                        .values()
                        .find(|(_, seen)| seen.elapsed() < Duration::from_millis(300))
                        .map(|(code, seen)| (code.clone(), *seen));
                    if fresh.is_some() {
                        target = fresh;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Some((code, seen)) = target {
                    let wait = Duration::from_millis(rng.random_range(0..300));
                    tokio::time::sleep(wait).await;
                    if seen.elapsed() < Duration::from_millis(600) {
                        cut = Some(code);
                    }
                }
            }
        }
        lock(&board).kill_times.push(Instant::now());
        let killed_at = Timestamp::now();
        op.kill()?;
        if let Some(hold) = held.take() {
            // Held at STS all along: certainly cut short. Let it go on; its answer (a session
            // the dead process never saw) goes nowhere.
            let code = cut.take().context("a held approval call carries a code")?;
            ensure!(
                sts.uses_of_code(&code) == 0,
                "the held call with {code} was judged before the kill"
            );
            hold.release();
            lock(&board).cut_short.insert(code);
            mid_call_kills += 1;
            forced_kills += 1;
        } else if let Some(code) = cut {
            // Cut short, unless STS had already answered (then either outcome is right).
            let answered = sts.calls().iter().any(|c| {
                c.token_code_used.as_deref() == Some(code.as_str())
                    && c.at + jiff::SignedDuration::try_from(c.handled_in).unwrap_or_default()
                        <= killed_at
            });
            if !answered {
                lock(&board).cut_short.insert(code);
                mid_call_kills += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
        op.restart().await?;
    }
    for d in &drivers {
        while !d.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut outcomes: BTreeMap<String, Vec<(String, Outcome)>> = BTreeMap::new();
    for (name, d) in names.iter().zip(drivers) {
        outcomes.insert(
            name.clone(),
            d.await?.with_context(|| format!("driving {name}"))?,
        );
    }
    for name in &names {
        let st = ns.session(name).await?;
        ensure!(
            cond(&st, "Ready") == ("True".into(), "Issued".into()),
            "{name} is not Ready: {:?}",
            st.status
        );
    }
    let used: Vec<&String> = outcomes.values().flatten().map(|(c, _)| c).collect();
    let mut reused = vec![];
    for code in &used {
        if sts.uses_of_code(code) > 1 {
            reused.push(code.to_string());
        }
    }
    ensure!(
        reused.is_empty(),
        "codes sent to STS more than once: {reused:?}"
    );
    op.check_no_panic()?;
    let interrupted = outcomes
        .values()
        .flatten()
        .filter(|(_, o)| *o == Outcome::Interrupted)
        .count();
    let cut_short = lock(&board).cut_short.len();
    println!(
        "crash/approvals: {} approvals ({} interrupted, {cut_short} with the STS call cut short), {} kills ({mid_call_kills} mid-call, {forced_kills} of them held at STS on purpose), {} STS calls, {:?}",
        used.len(),
        interrupted,
        op.kills,
        sts.call_count(),
        started.elapsed()
    );
    ensure!(
        op.kills >= 3,
        "too few kills to prove anything: {}",
        op.kills
    );
    ensure!(
        forced_kills >= 1,
        "no kill was driven into an STS call: the test proves too little"
    );
    ensure!(
        cut_short >= 1,
        "no kill landed mid-call: the test proves too little"
    );
    let issued = outcomes
        .values()
        .flatten()
        .filter(|(_, o)| *o == Outcome::Issued)
        .count() as u64;
    summary::record(
        "faults::kill_9_across_mfa_approvals",
        &[
            ("rotations", issued),
            ("kills", op.kills),
            ("kills_mid_call", mid_call_kills),
            ("approvals", used.len() as u64),
        ],
    );
    Ok(())
}

/// A process that dies right after claiming a code (the annotation removed) but before
/// writing anything else must not lose the approval without a trace: its successor says
/// `Issuing=False/Interrupted`. The operator is frozen (SIGSTOP) the instant the removal is
/// seen, which with the claim recorded only in status afterwards caught it in that gap every
/// time, then killed.
#[tokio::test]
async fn a_claimed_code_is_on_record_before_its_annotation_goes() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "crash-claim").await?;
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    sts.inject_faults(Fault::Delay(Duration::from_secs(2)));
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    let rounds = if summary::long() { 20 } else { 2 };
    let names: Vec<String> = (0..rounds).map(|i| format!("mfa-{i}")).collect();
    for name in &names {
        ns.create_session(
            name,
            json!({"durationSeconds": 900, "mfa": {"serialNumber": user.serial_number().unwrap()}, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}}),
        )
        .await?;
    }
    let mut op = Crashy::start(
        cp,
        &ns.name,
        crash_opts(
            sts.endpoint(),
            &["--sts-timeout=3s", "--token-code-max-age=60s"],
        ),
    )
    .await?;
    let mut frozen_in_the_gap = 0;
    for (i, name) in names.iter().enumerate() {
        wait_condition(
            &ns,
            name,
            "Ready",
            "False",
            "AwaitingTokenCode",
            Duration::from_secs(30),
        )
        .await?;
        let code = format!("{:06}", 700_000 + i);
        let api = ns.sessions();
        // From the watch cache's current state ("0": no "too large resource version" when
        // the cache lags behind a loaded etcd), which comes first as an ADDED event.
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let mut stream = api.watch(&wp, "0").await?.boxed();
        ns.approve(name, &code, "alice").await?;
        // Freeze the operator the moment the annotation is seen gone.
        let seen_code = tokio::time::timeout(Duration::from_secs(30), async {
            let mut had_code = false;
            while let Some(ev) = stream.next().await {
                match ev? {
                    WatchEvent::Added(st) | WatchEvent::Modified(st) => {
                        let has = has_code(&st);
                        if had_code && !has {
                            op.current().process.signal(SIGSTOP)?;
                            return anyhow::Ok(st);
                        }
                        had_code |= has;
                    }
                    WatchEvent::Error(e) => bail!("the watch failed: {e:?}"),
                    _ => {}
                }
            }
            bail!("the watch ended")
        })
        .await
        .context("the code was never claimed")??;
        drop(seen_code);
        let st = ns.session(name).await?;
        let issuing_when_frozen = cond(&st, "Issuing");
        op.kill()?;
        op.restart().await?;
        let st = wait_condition(&ns, name, "Issuing", "False", "Interrupted", Duration::from_secs(40))
            .await
            .with_context(|| format!("{name}: killed right after claiming the code (Issuing then: {issuing_when_frozen:?}), the approval was lost without a trace"))?;
        ensure!(
            condition(&st, "Issuing")
                .unwrap()
                .message
                .contains("Approve again")
        );
        ensure!(cond(&st, "Ready") == ("False".into(), "AwaitingTokenCode".into()));
        ensure!(sts.uses_of_code(&code) <= 1);
        if issuing_when_frozen.1.is_empty() {
            frozen_in_the_gap += 1;
        }
    }
    op.check_no_panic()?;
    println!(
        "crash/claim: {} kills right after a claim, {frozen_in_the_gap} before status recorded it",
        op.kills
    );
    summary::record("faults::killed_right_after_a_claim", &[("kills", op.kills)]);
    Ok(())
}

fn has_code(st: &SessionToken) -> bool {
    st.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("stssession.dev/token-code"))
}
