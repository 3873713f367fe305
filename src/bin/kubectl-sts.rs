//! `kubectl sts`: approve, renew, revoke and inspect SessionTokens (and the AssumedRoles drawing on
//! them) of the sts-session-operator.
//! Installed as `kubectl-sts` on PATH, kubectl runs it for `kubectl sts ...`.
//!
//! The decisions (code checks, outcome, table) are in `sts_session_operator::plugin`; this
//! file only talks to the API server and the terminal. The MFA code is never printed or
//! logged: it only leaves this process inside the merge patch that sets the annotation.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use clap::{Args, Parser, Subcommand, ValueEnum};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use sts_session_operator::Sensitive;
use sts_session_operator::crd::{
    AssumedRole, RENEW_ANNOTATION, SessionToken, TOKEN_CODE_ANNOTATION,
};
use sts_session_operator::plan::{annotation_set_at, parse_duration};
use sts_session_operator::plugin::{
    self, Baseline, EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, Outcome, Waiting,
};
use sts_session_operator::reconcile::Tolerant;

const AFTER_HELP: &str = "\
Exit codes:
  0  done (approve/renew/revoke: the operator issued a new session)
  1  failed (the operator refused the code or could not mint; the API server failed)
  2  usage, invalid code, SessionToken not found, or permission denied (nothing was written)
  3  timed out waiting for the operator";

/// Approve, renew and inspect SessionTokens (stssession.dev) of the sts-session-operator.
#[derive(Parser)] // no Debug: it would hold the code
#[command(name = "kubectl-sts", bin_name = "kubectl sts", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Namespace of the SessionToken. Default: the kubeconfig context's namespace, else "default".
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Path of the kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config (else in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use. Default: the current context.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Approve a new session of a SessionToken with MFA, with a code from its device
    ///
    /// Prompts for the device's current six-digit code without echo (or reads one line from
    /// stdin when it is not a terminal), sets it as the annotation stssession.dev/token-code
    /// with you (as the API server's SelfSubjectReview names you) as
    /// stssession.dev/approved-by, and waits until the operator has used it. The code is never
    /// printed. First says how many role credential sets the approval also refreshes: the
    /// SessionToken's own role (spec.assumeRole) and the AssumedRoles drawing on its session.
    #[command(after_help = AFTER_HELP)]
    Approve {
        /// The SessionToken.
        name: String,
        /// The code, instead of prompting. Visible to other local users in the process list:
        /// prefer the prompt, or a pipe (`... | kubectl sts approve NAME`).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show SessionTokens and the AssumedRoles drawing on them: readiness, expiry, whether one
    /// awaits a code, the Secret
    ///
    /// A table with READY and REASON (the Ready condition), EXPIRES and LEFT (the current
    /// session), RENEWS (when it is renewed or, with MFA, a new code is asked for), MFA,
    /// AWAITING CODE (MFA and no usable session) and SECRET. Beneath each SessionToken, as a
    /// tree, the AssumedRoles whose spec.sessionTokenRef names it (their role credentials'
    /// expiry, their Secret, and their role in a last column ROLE); AssumedRoles naming a
    /// SessionToken that does not exist are listed beneath a line saying so. If AssumedRoles
    /// cannot be listed, a note says why and the SessionTokens are shown alone. With NAME also
    /// the conditions' messages and the last approval.
    #[command(after_help = AFTER_HELP)]
    Status {
        /// One SessionToken (default: all in the namespace).
        #[arg(conflicts_with = "all_namespaces")]
        name: Option<String>,
        /// List SessionTokens in all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Get a new session now, for a SessionToken without MFA
    ///
    /// Sets the annotation stssession.dev/renew-requested-at and waits until the operator has
    /// issued a new session. SessionTokens with MFA need a code: use `kubectl sts approve`.
    #[command(after_help = AFTER_HELP)]
    Renew {
        /// The SessionToken.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace a SessionToken's session now, and print the IAM policy that cuts off the old one
    ///
    /// Session credentials cannot be revoked by deleting a Secret: they stay valid at AWS until
    /// they expire. This gets a new session at once (as `renew`; with spec.mfa it asks for a
    /// code, as `approve`), then prints an IAM policy denying sessions issued before the moment
    /// of the request (aws:TokenIssueTime, DateLessThan), with that cut-off filled in, and how
    /// to attach it. The new session is issued after the cut-off and keeps working.
    #[command(after_help = AFTER_HELP)]
    Revoke {
        /// The SessionToken.
        name: String,
        /// With spec.mfa: the code, instead of prompting (see `approve --code`).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// How long to wait for the operator's outcome (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = duration)]
    timeout: Duration,
    /// Do not wait for the outcome: exit once the annotation is set.
    #[arg(long)]
    no_wait: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 30s, 2m or 1m30s"))
}

/// How the command ends, if not with success.
struct Exit {
    code: i32,
    message: String,
}

impl Exit {
    fn usage(message: impl Into<String>) -> Exit {
        Exit {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Exit {
        Exit {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

/// The (valid, six-digit) code of this run, redacted from every message printed (a server
/// message might echo it).
static CODE: OnceLock<Sensitive<String>> = OnceLock::new();

fn safe(text: &str) -> String {
    match CODE.get() {
        Some(code) => plugin::redact(text, code.expose()),
        None => text.to_string(),
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(exit) => {
            eprintln!("error: {}", safe(&exit.message));
            exit.code
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<(), Exit> {
    match cli.command {
        Command::Approve { name, code, wait } => {
            // A code given on the command line is checked before anything is sent.
            let code = code.map(Sensitive::new);
            if let Some(c) = &code {
                // (the validation messages never contain the code; a valid one is redacted
                // from every later message)
                plugin::validate_code(c.expose()).map_err(|e| Exit::usage(e.to_string()))?;
                let _ = CODE.set(c.clone());
            }
            let (client, ns) = connect(&cli.global).await?;
            approve(client, &ns, &name, code, &wait).await
        }
        Command::Status {
            name,
            all_namespaces,
            output,
        } => {
            let (client, ns) = connect(&cli.global).await?;
            status(client, &ns, name.as_deref(), all_namespaces, output).await
        }
        Command::Renew { name, wait } => {
            let (client, ns) = connect(&cli.global).await?;
            renew(client, &ns, &name, &wait).await
        }
        Command::Revoke { name, code, wait } => {
            let code = code.map(Sensitive::new);
            if let Some(c) = &code {
                plugin::validate_code(c.expose()).map_err(|e| Exit::usage(e.to_string()))?;
                let _ = CODE.set(c.clone());
            }
            let (client, ns) = connect(&cli.global).await?;
            revoke(client, &ns, &name, code, &wait).await
        }
    }
}

/// A client and the namespace to act in, from `--kubeconfig`/`--context`, else the usual
/// places (KUBECONFIG, ~/.kube/config, in-cluster).
async fn connect(g: &Global) -> Result<(Client, String), Exit> {
    let options = KubeConfigOptions {
        context: g.context.clone(),
        ..Default::default()
    };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Exit::usage(format!("cannot read kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Exit::usage(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if g.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Exit::usage(format!("cannot load the kubeconfig context: {e}")))?,
        None => Config::infer().await.map_err(|e| {
            Exit::usage(format!(
                "no kubeconfig found (and not running in a cluster): set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config ({e})"
            ))
        })?,
    };
    let ns = g
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| {
        Exit::usage(format!(
            "cannot build a Kubernetes client from the kubeconfig: {e}"
        ))
    })?;
    Ok((client, ns))
}

/// A clear message and exit code for an API error about `what` (e.g. "SessionToken ns/name").
fn api_error(e: kube::Error, what: &str) -> Exit {
    match e {
        kube::Error::Api(s)
            if s.code == 404 && s.message.contains("could not find the requested resource") =>
        {
            Exit::usage(
                "the API server does not serve SessionTokens (stssession.dev/v1alpha1): is the sts-session-operator's CRD installed?",
            )
        }
        kube::Error::Api(s) if s.code == 404 => Exit::usage(format!("{what} not found")),
        kube::Error::Api(s) if s.code == 403 => {
            Exit::usage(format!("Error from server (Forbidden): {}", s.message))
        }
        kube::Error::Api(s) if s.code == 401 => Exit::usage(format!(
            "Error from server (Unauthorized): the API server refused your credentials: {}",
            s.message
        )),
        kube::Error::Api(s) if matches!(s.code, 400 | 409 | 422) => Exit::usage(format!(
            "Error from server ({}): {}",
            reason_of(&s.reason, s.code),
            s.message
        )),
        kube::Error::Api(s) => Exit::failed(format!(
            "Error from server ({}): {}",
            reason_of(&s.reason, s.code),
            s.message
        )),
        other => Exit::failed(format!("cannot reach the Kubernetes API server: {other}")),
    }
}

fn reason_of(reason: &str, code: u16) -> String {
    if reason.is_empty() {
        format!("HTTP {code}")
    } else {
        reason.to_string()
    }
}

fn sessions(client: &Client, ns: &str) -> Api<SessionToken> {
    Api::namespaced(client.clone(), ns)
}

async fn get(api: &Api<SessionToken>, ns: &str, name: &str) -> Result<SessionToken, Exit> {
    api.get(name)
        .await
        .map_err(|e| api_error(e, &format!("SessionToken {ns}/{name}")))
}

/// Who the API server says we are.
async fn whoami(client: &Client) -> Result<String, Exit> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| api_error(e, "SelfSubjectReview (authentication.k8s.io/v1)"))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Exit::failed(
                "the API server's SelfSubjectReview did not name you: cannot record who approved",
            )
        })
}

/// The code from the terminal (no echo) or, when stdin is not a terminal, its first line.
fn read_code(ns: &str, name: &str) -> Result<Sensitive<String>, Exit> {
    let stdin = std::io::stdin();
    let raw = if stdin.is_terminal() {
        rpassword::prompt_password(format!("MFA code for SessionToken {ns}/{name}: "))
            .map_err(|e| Exit::usage(format!("cannot read the code from the terminal: {e}")))?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Exit::usage(format!("cannot read the code from stdin: {e}")))?;
        line
    };
    let code = Sensitive::new(plugin::code_from_line(&raw).to_string());
    drop(raw);
    Ok(code)
}

/// Says (on stderr) how many role credential sets an approval of `st` refreshes besides the
/// session: its own role and the AssumedRoles drawing on it; nothing when there are none, and
/// that they could not be counted when the AssumedRoles cannot be listed.
async fn say_what_approval_refreshes(client: &Client, ns: &str, st: &SessionToken) {
    let note = match assumed_roles(client, ns, false).await {
        Ok(roles) => plugin::refresh_note(st, &roles),
        // No AssumedRoles served, so none draw on it.
        Err(Unlisted::NotServed) => plugin::refresh_note(st, &[]),
        Err(Unlisted::Failed(why)) => Some(plugin::refresh_unknown_note(st, &why)),
    };
    if let Some(note) = note {
        eprintln!("{note}");
    }
}

async fn approve(
    client: Client,
    ns: &str,
    name: &str,
    code: Option<Sensitive<String>>,
    wait: &WaitArgs,
) -> Result<(), Exit> {
    let api = sessions(&client, ns);
    let st = get(&api, ns, name).await?;
    if st.spec.mfa.is_none() {
        return Err(Exit::usage(format!(
            "SessionToken {ns}/{name} has no spec.mfa, so it takes no code: to get a new session now, use `kubectl sts renew {name} -n {ns}`"
        )));
    }
    let username = whoami(&client).await?;
    say_what_approval_refreshes(&client, ns, &st).await;
    let code = match code {
        Some(c) => c,
        None => {
            let c = read_code(ns, name)?;
            plugin::validate_code(c.expose()).map_err(|e| Exit::usage(e.to_string()))?;
            let _ = CODE.set(c.clone());
            c
        }
    };
    let before_write = Timestamp::now();
    let pp = PatchParams {
        field_manager: Some(plugin::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patched = api
        .patch(
            name,
            &pp,
            &Patch::Merge(plugin::approve_patch(code.expose(), &username)),
        )
        .await
        .map_err(|e| api_error(e, &format!("SessionToken {ns}/{name}")))?;
    drop(code);
    // The API server's clock (managedFields), as the operator's comparisons use it.
    let set_at = annotation_set_at(&patched, TOKEN_CODE_ANNOTATION).unwrap_or(before_write);
    let base = Baseline::of(&patched);
    if wait.no_wait {
        println!(
            "Approval of SessionToken {ns}/{name} sent as {username}; check it with `kubectl sts status {name} -n {ns}`."
        );
        return Ok(());
    }
    eprintln!("Approval sent as {username}; waiting for the operator to use the code...");
    let outcome = wait_for(
        &api,
        ns,
        name,
        TOKEN_CODE_ANNOTATION,
        wait.timeout,
        |st, gone| plugin::approve_outcome(st, set_at, &base, gone),
    )
    .await?;
    match outcome {
        Outcome::Succeeded {
            expiration,
            secret,
            access_key_id,
            approved_by,
        } => {
            println!(
                "SessionToken {ns}/{name}: new session {} approved by {}.",
                access_key_id.as_deref().unwrap_or("<unknown>"),
                approved_by.as_deref().unwrap_or(&username)
            );
            print_session(ns, expiration, secret);
            Ok(())
        }
        Outcome::Failed { reason, message } => Err(Exit::failed(format!(
            "SessionToken {ns}/{name}: the approval failed: {reason}: {message}{}",
            if message.to_lowercase().contains("approve again") {
                ""
            } else {
                ". Approve again with a new code once the cause is fixed"
            }
        ))),
        Outcome::Pending(waiting) => Err(timed_out(wait.timeout, waiting, ns, name, true)),
    }
}

async fn renew(client: Client, ns: &str, name: &str, wait: &WaitArgs) -> Result<(), Exit> {
    let api = sessions(&client, ns);
    let st = get(&api, ns, name).await?;
    if st.spec.mfa.is_some() {
        return Err(Exit::usage(format!(
            "SessionToken {ns}/{name} has spec.mfa: a new session needs an MFA code; use `kubectl sts approve {name} -n {ns}`"
        )));
    }
    let now = Timestamp::now();
    let requested = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let pp = PatchParams {
        field_manager: Some(plugin::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patched = api
        .patch(name, &pp, &Patch::Merge(plugin::renew_patch(requested)))
        .await
        .map_err(|e| api_error(e, &format!("SessionToken {ns}/{name}")))?;
    let requested_at = annotation_set_at(&patched, RENEW_ANNOTATION).unwrap_or(requested);
    let base = Baseline::of(&patched);
    if wait.no_wait {
        println!(
            "Renewal of SessionToken {ns}/{name} requested; check it with `kubectl sts status {name} -n {ns}`."
        );
        return Ok(());
    }
    eprintln!("Renewal requested; waiting for the operator...");
    let outcome = wait_for(
        &api,
        ns,
        name,
        RENEW_ANNOTATION,
        wait.timeout,
        |st, gone| plugin::renew_outcome(st, requested_at, &base, gone),
    )
    .await?;
    match outcome {
        Outcome::Succeeded {
            expiration,
            secret,
            access_key_id,
            ..
        } => {
            println!(
                "SessionToken {ns}/{name}: renewed, new session {}.",
                access_key_id.as_deref().unwrap_or("<unknown>")
            );
            print_session(ns, expiration, secret);
            Ok(())
        }
        Outcome::Failed { reason, message } => Err(Exit::failed(format!(
            "SessionToken {ns}/{name}: the renewal failed: {reason}: {message}"
        ))),
        Outcome::Pending(waiting) => Err(timed_out(wait.timeout, waiting, ns, name, false)),
    }
}

/// `kubectl sts revoke`: a new session first (approve or renew), then the policy.
async fn revoke(
    client: Client,
    ns: &str,
    name: &str,
    code: Option<Sensitive<String>>,
    wait: &WaitArgs,
) -> Result<(), Exit> {
    let api = sessions(&client, ns);
    let st = get(&api, ns, name).await?;
    let old = st.status.clone().unwrap_or_default();
    // Before anything is written: the new session is issued after this moment.
    let cutoff = plugin::revoke_cutoff(Timestamp::now());
    eprintln!(
        "Revoking the session of SessionToken {ns}/{name}: first a new session, issued after {cutoff}..."
    );
    if st.spec.mfa.is_some() {
        approve(client, ns, name, code, wait).await
    } else if code.is_some() {
        Err(Exit::usage(format!(
            "SessionToken {ns}/{name} has no spec.mfa, so it takes no code: drop --code"
        )))
    } else {
        renew(client, ns, name, wait).await
    }
    .map_err(|mut e| {
        e.message.push_str(
            ". No policy printed: without a new session it would cut off the one in use (docs/revocation.md shows it)",
        );
        e
    })?;
    print!(
        "{}",
        plugin::revoke_instructions(
            &st,
            cutoff,
            old.access_key_id.as_deref(),
            old.expiration,
            Timestamp::now()
        )
    );
    Ok(())
}

fn print_session(ns: &str, expiration: Option<Timestamp>, secret: Option<String>) {
    let now = Timestamp::now();
    match expiration {
        Some(e) => println!(
            "  Expires: {} (in {})",
            Timestamp::from_second(e.as_second()).unwrap_or(e),
            plugin::format_left(Some(e), now)
        ),
        None => println!("  Expires: <unknown>"),
    }
    println!(
        "  Secret:  {ns}/{}",
        secret.as_deref().unwrap_or("<unknown>")
    );
}

fn timed_out(timeout: Duration, waiting: Waiting, ns: &str, name: &str, approve: bool) -> Exit {
    let mut message = format!(
        "timed out after {}s: {}",
        timeout.as_secs(),
        waiting.describe()
    );
    if waiting == Waiting::NotClaimed {
        message.push_str(if approve {
            ". The code is still set on the SessionToken; the operator drops it unused once it is too old"
        } else {
            ". The renewal request is still set on the SessionToken"
        });
    }
    message.push_str(&format!(
        ". See `kubectl sts status {name} -n {ns}` and `kubectl get events -n {ns}`"
    ));
    Exit {
        code: EXIT_TIMEOUT,
        message,
    }
}

/// Polls the SessionToken until `decide` gives an outcome or `timeout` passes; `decide` gets
/// how long the annotation `key` has been absent.
async fn wait_for(
    api: &Api<SessionToken>,
    ns: &str,
    name: &str,
    key: &str,
    timeout: Duration,
    decide: impl Fn(&SessionToken, Option<Duration>) -> Outcome,
) -> Result<Outcome, Exit> {
    let now = tokio::time::Instant::now();
    let deadline = now.checked_add(timeout).unwrap_or(now);
    let mut gone_since: Option<tokio::time::Instant> = None;
    let mut last = Outcome::Pending(Waiting::NotClaimed);
    loop {
        match api.get_opt(name).await {
            Ok(Some(st)) => {
                if st.annotations().contains_key(key) {
                    gone_since = None;
                } else {
                    gone_since.get_or_insert_with(tokio::time::Instant::now);
                }
                let outcome = decide(&st, gone_since.map(|g| g.elapsed()));
                if !matches!(outcome, Outcome::Pending(_)) {
                    return Ok(outcome);
                }
                last = outcome;
            }
            Ok(None) => {
                return Err(Exit::failed(format!(
                    "SessionToken {ns}/{name} was deleted while waiting"
                )));
            }
            Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403) => {
                return Err(api_error(
                    kube::Error::Api(s),
                    &format!("SessionToken {ns}/{name}"),
                ));
            }
            Err(_) => {} // transient: try again until the deadline
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(last);
        }
        tokio::time::sleep(
            deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(250)),
        )
        .await;
    }
}

/// Why the AssumedRoles could not be listed.
enum Unlisted {
    /// The API server does not serve them (404: an operator without AssumedRoles).
    NotServed,
    /// Refused (403) or failed: a short sentence for a note.
    Failed(String),
}

/// The readable items of a list; each unreadable one (a time beyond the calendar in its
/// managedFields, say) is named on stderr, not a failure of the whole list.
fn readable<K>(items: Vec<Tolerant<K>>, kind: &str) -> Vec<K> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Tolerant::Read(k) => out.push(k),
            Tolerant::Unreadable(meta) => eprintln!(
                "{kind} {}/{} cannot be read (skipped)",
                meta.namespace.unwrap_or_default(),
                meta.name.unwrap_or_default()
            ),
        }
    }
    out
}

/// The API listing `K`s in `ns` (every namespace with `all`), each item read on its own, and
/// where: `in namespace NS` or `in all namespaces`.
fn listed<K>(client: &Client, ns: &str, all: bool) -> (Api<Tolerant<K>>, String)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    if all {
        (Api::all(client.clone()), "in all namespaces".into())
    } else {
        (
            Api::namespaced(client.clone(), ns),
            format!("in namespace {ns}"),
        )
    }
}

/// The AssumedRoles in `ns` (every namespace with `all`).
async fn assumed_roles(client: &Client, ns: &str, all: bool) -> Result<Vec<AssumedRole>, Unlisted> {
    let (api, place) = listed::<AssumedRole>(client, ns, all);
    match api.list(&Default::default()).await {
        Ok(list) => Ok(readable(list.items, "AssumedRole")),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Unlisted::NotServed),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(Unlisted::Failed(format!(
            "you may not list AssumedRoles {place} (Forbidden)"
        ))),
        Err(e) => Err(Unlisted::Failed(format!(
            "listing AssumedRoles {place} failed: {}",
            api_error(e, "AssumedRoles").message
        ))),
    }
}

/// The AssumedRoles for `status`, or `None` after one note line on stderr saying why not.
async fn roles_for_status(client: &Client, ns: &str, all: bool) -> Option<Vec<AssumedRole>> {
    match assumed_roles(client, ns, all).await {
        Ok(roles) => Some(roles),
        Err(Unlisted::NotServed) => {
            eprintln!(
                "note: AssumedRoles not shown: the API server does not serve them (stssession.dev/v1alpha1 assumedroles: is the operator's AssumedRole CRD installed?)"
            );
            None
        }
        Err(Unlisted::Failed(why)) => {
            eprintln!("note: AssumedRoles not shown: {why}");
            None
        }
    }
}

async fn status(
    client: Client,
    ns: &str,
    name: Option<&str>,
    all: bool,
    output: Output,
) -> Result<(), Exit> {
    let now = Timestamp::now();
    if let Some(name) = name {
        let st = get(&sessions(&client, ns), ns, name).await?;
        let roles = roles_for_status(&client, ns, false).await;
        match output {
            Output::Json => println!(
                "{}",
                pretty(&plugin::details_json(&st, roles.as_deref(), now))
            ),
            Output::Table => {
                let listing = plugin::listing_of(&st, roles.as_deref(), now);
                print!("{}", plugin::render_table(&listing, false));
                println!();
                print!("{}", plugin::render_details(&st, now));
            }
        }
        return Ok(());
    }
    let (api, place) = listed::<SessionToken>(&client, ns, all);
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| api_error(e, &format!("SessionTokens {place}")))?;
    let items = readable(list.items, "SessionToken");
    let roles = roles_for_status(&client, ns, all).await;
    let listing = plugin::listing(&items, roles.as_deref(), now);
    let empty = listing.items.is_empty()
        && listing
            .missing_session_tokens
            .as_ref()
            .is_none_or(|m| m.is_empty());
    match output {
        Output::Json => println!("{}", pretty(&serde_json::json!(listing))),
        Output::Table if empty => {
            eprintln!(
                "No SessionTokens found{}.",
                if all {
                    String::new()
                } else {
                    format!(" in namespace {ns}")
                }
            )
        }
        Output::Table => print!("{}", plugin::render_table(&listing, all)),
    }
    Ok(())
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
