//! End-to-end tests of the `kubectl sts` plugin: the real binary, run as a child process with a
//! test user's kubeconfig, against the shared control plane, the operator and the STS double.

use crate::common::*;
use anyhow::{Context as _, Result};
use jiff::Timestamp;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use sts_session_operator::crd::{AssumedRole, SessionToken};
use sts_session_operator::plugin;
use testkit::control_plane::ControlPlane;
use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(30);
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-sts");

/// One run of a command: exit code and output.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` with `env`, feeding `stdin` (else an empty, non-terminal stdin).
async fn run_program(
    program: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    stdin: Option<&str>,
) -> Result<Run> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await?;
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .with_context(|| format!("{} {args:?} did not finish in 120 s", program.display()))??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `kubectl-sts args` as `user` of the control plane.
async fn sts_as(cp: &ControlPlane, user: &str, args: &[&str], stdin: Option<&str>) -> Result<Run> {
    let kubeconfig = cp.kubeconfig_for(user);
    run_program(
        Path::new(PLUGIN),
        args,
        &[("KUBECONFIG", kubeconfig.as_os_str())],
        stdin,
    )
    .await
}

/// Lets `user` approve and renew (get/list/watch/patch SessionTokens) in `ns`, and nothing else.
async fn grant_approver(cp: &ControlPlane, ns: &str, user: &str) -> Result<()> {
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: sts-approver, namespace: {ns}}}
rules:
  - apiGroups: ["stssession.dev"]
    resources: ["sessiontokens"]
    verbs: ["get", "list", "watch", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: sts-approver-{user}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sts-approver}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"#
    ))
    .await?;
    // RBAC takes effect through the API server's informers: wait until it does.
    let client = cp.client_as(user).await?;
    let api: kube::Api<SessionToken> = kube::Api::namespaced(client, ns);
    eventually(T, "the approver role in effect", || async {
        Ok(api.list(&Default::default()).await.ok().map(|_| ()))
    })
    .await
}

/// The STS double (any code accepted), its user's keys in `iam-keys` in `ns`.
async fn sts_with_keys(ns: &Ns) -> Result<StsDouble> {
    let sts = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })?;
    let user = sts.default_user();
    ns.create_source_secret("iam-keys", &user.access_key_id, &user.secret_access_key)
        .await?;
    Ok(sts)
}

/// The operator, watching namespace `ns`, calling `sts`.
async fn start_operator(cp: &ControlPlane, ns: &str, sts: &StsDouble) -> Result<Operator> {
    Operator::start(
        cp,
        ns,
        &OperatorOptions {
            sts_endpoint: sts.endpoint(),
            extra_args: vec![],
            leader_election: false,
            user: OPERATOR_USER,
        },
    )
    .await
}

fn spec(mfa: Option<&str>) -> serde_json::Value {
    let mut spec =
        json!({"durationSeconds": 3600, "sourceCredentials": {"secretRef": {"name": "iam-keys"}}});
    if let Some(serial) = mfa {
        spec["mfa"] = json!({"serialNumber": serial});
    }
    spec
}

fn annotations(st: &SessionToken) -> std::collections::BTreeMap<String, String> {
    st.metadata.annotations.clone().unwrap_or_default()
}

/// The table's lines as cells (cells are separated by at least two spaces; none holds two).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The table's row whose column `key` is `value`, as (header, cell) pairs.
fn table_row(
    text: &str,
    key: &str,
    value: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let t = table(text);
    let header = t.first()?.clone();
    let col = header.iter().position(|h| h == key)?;
    t.iter()
        .skip(1)
        .find(|r| r.get(col).map(String::as_str) == Some(value))
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
}

/// The cells of `cols` in a row of [`table_row`].
fn pick(row: &std::collections::BTreeMap<String, String>, cols: &[&str]) -> Vec<String> {
    cols.iter()
        .map(|c| row.get(*c).cloned().unwrap_or_default())
        .collect()
}

fn whole_seconds(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap().to_string()
}

/// `kubectl` on PATH (the test virtualenv's first), if any.
fn find_kubectl() -> Option<PathBuf> {
    let venv = std::env::var_os("STS_TEST_VENV").map(|v| PathBuf::from(v).join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    venv.into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("kubectl"))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
}

#[tokio::test]
async fn plugin_help_and_local_refusals_need_no_cluster() -> Result<()> {
    let nowhere = tempdir("nokube")?;
    let missing = nowhere.join("missing-kubeconfig");
    let env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("KUBECONFIG", missing.as_os_str()),
        ("HOME", nowhere.as_os_str()),
    ];
    let help = run_program(Path::new(PLUGIN), &["--help"], &env, None).await?;
    assert_eq!(help.code, 0, "{}", help.show());
    for word in [
        "approve",
        "status",
        "renew",
        "--namespace",
        "--kubeconfig",
        "--context",
        "Exit codes",
        "kubectl sts",
    ] {
        assert!(
            help.stdout.contains(word),
            "--help lacks {word}:\n{}",
            help.show()
        );
    }
    let approve_help = run_program(Path::new(PLUGIN), &["approve", "--help"], &env, None).await?;
    assert_eq!(approve_help.code, 0, "{}", approve_help.show());
    for word in ["--code", "--timeout", "--no-wait", "six-digit"] {
        assert!(
            approve_help.stdout.contains(word),
            "approve --help lacks {word}:\n{}",
            approve_help.show()
        );
    }
    let status_help = run_program(Path::new(PLUGIN), &["status", "--help"], &env, None).await?;
    assert!(
        status_help.code == 0 && status_help.stdout.contains("--all-namespaces"),
        "{}",
        status_help.show()
    );

    // A bad code is refused before any connection (there is no kubeconfig to connect with).
    for bad in ["12ab56", "12345", "1234567", " 12345"] {
        let r = run_program(
            Path::new(PLUGIN),
            &["approve", "app", "--code", bad],
            &env,
            None,
        )
        .await?;
        assert_eq!(r.code, 2, "{}", r.show());
        assert!(
            r.stderr.contains("six digits") && !r.stderr.contains("kubeconfig"),
            "{}",
            r.show()
        );
        assert!(
            !r.all().contains(bad.trim()),
            "the code was printed:\n{}",
            r.show()
        );
    }
    // No kubeconfig: a clear message, exit 2.
    let r = run_program(Path::new(PLUGIN), &["status"], &env, None).await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(r.stderr.contains("no kubeconfig found"), "{}", r.show());
    // Usage errors are clap's: exit 2.
    let r = run_program(Path::new(PLUGIN), &["status", "x", "-A"], &env, None).await?;
    assert_eq!(r.code, 2, "{}", r.show());
    let r = run_program(Path::new(PLUGIN), &["frobnicate"], &env, None).await?;
    assert_eq!(r.code, 2, "{}", r.show());
    let _ = std::fs::remove_dir_all(&nowhere);
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kubectl-sts-{prefix}-{}-{:08x}",
        std::process::id(),
        rand_u32()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Timestamp::now().as_nanosecond() as u64);
    h.finish() as u32
}

#[tokio::test]
async fn plugin_refuses_bad_input_and_missing_rights_without_writing() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "plugin-refuse").await?;
    grant_approver(cp, &ns.name, "alice").await?;
    ns.create_session("mfa", spec(Some("arn:aws:iam::123456789012:mfa/alice")))
        .await?;
    ns.create_session("auto", spec(None)).await?;
    let n = ns.name.as_str();
    let version = |st: SessionToken| st.metadata.resource_version.unwrap_or_default();
    let mfa_rv = version(ns.session("mfa").await?);
    let auto_rv = version(ns.session("auto").await?);

    // Malformed codes: exit 2, nothing written, the code not echoed.
    let r = sts_as(
        cp,
        "alice",
        &["approve", "mfa", "-n", n, "--code", "12ab56"],
        None,
    )
    .await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stderr.contains("six digits") && !r.all().contains("12ab56"),
        "{}",
        r.show()
    );
    let r = sts_as(cp, "alice", &["approve", "mfa", "-n", n], Some("98765\n")).await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stderr.contains("six digits") && !r.all().contains("98765"),
        "{}",
        r.show()
    );
    let r = sts_as(cp, "alice", &["approve", "mfa", "-n", n], None).await?;
    assert_eq!(r.code, 2, "empty stdin:\n{}", r.show());

    // The wrong command for the kind of SessionToken.
    let r = sts_as(
        cp,
        "alice",
        &["approve", "auto", "-n", n, "--code", "123456"],
        None,
    )
    .await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stderr.contains("no spec.mfa")
            && r.stderr.contains(&format!("kubectl sts renew auto -n {n}")),
        "{}",
        r.show()
    );
    let r = sts_as(cp, "alice", &["renew", "mfa", "-n", n], None).await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stderr
            .contains(&format!("kubectl sts approve mfa -n {n}")),
        "{}",
        r.show()
    );

    // Not found.
    let r = sts_as(
        cp,
        "alice",
        &["approve", "missing", "-n", n, "--code", "123456"],
        None,
    )
    .await?;
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stderr
            .contains(&format!("SessionToken {n}/missing not found")),
        "{}",
        r.show()
    );
    let r = sts_as(cp, "alice", &["status", "missing", "-n", n], None).await?;
    assert!(
        r.code == 2
            && r.stderr
                .contains(&format!("SessionToken {n}/missing not found")),
        "{}",
        r.show()
    );

    // No rights: the API server's message, exit 2.
    for args in [
        vec!["approve", "mfa", "-n", n, "--code", "123456"],
        vec!["status", "-n", n],
        vec!["renew", "auto", "-n", n],
    ] {
        let r = sts_as(cp, "mallory", &args, None).await?;
        assert_eq!(r.code, 2, "{args:?}\n{}", r.show());
        assert!(
            r.stderr.contains("Forbidden") && r.stderr.contains("User \"mallory\" cannot"),
            "{args:?}\n{}",
            r.show()
        );
        assert!(!r.all().contains("123456"), "{}", r.show());
    }
    // alice's rights end at her namespace
    let r = sts_as(cp, "alice", &["status", "-A"], None).await?;
    assert!(
        r.code == 2 && r.stderr.contains("Forbidden"),
        "{}",
        r.show()
    );

    assert_eq!(
        version(ns.session("mfa").await?),
        mfa_rv,
        "a refused command wrote the MFA SessionToken"
    );
    assert_eq!(
        version(ns.session("auto").await?),
        auto_rv,
        "a refused command wrote the SessionToken without MFA"
    );

    // No operator in this namespace: a bounded wait, exit 3, the code still set for it.
    let r = sts_as(
        cp,
        "alice",
        &[
            "approve",
            "mfa",
            "-n",
            n,
            "--code",
            "135790",
            "--timeout",
            "2s",
        ],
        None,
    )
    .await?;
    assert_eq!(r.code, 3, "{}", r.show());
    assert!(
        r.stderr.contains("timed out after 2s") && r.stderr.contains("has not picked up"),
        "{}",
        r.show()
    );
    assert!(
        !r.all().contains("135790"),
        "the code was printed:\n{}",
        r.show()
    );
    let st = ns.session("mfa").await?;
    assert_eq!(
        annotations(&st)
            .get("stssession.dev/token-code")
            .map(String::as_str),
        Some("135790")
    );
    assert_eq!(
        annotations(&st)
            .get("stssession.dev/approved-by")
            .map(String::as_str),
        Some("alice")
    );
    // ...set by a merge patch of field manager kubectl-sts, not kept in last-applied-configuration
    assert!(!annotations(&st).contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let managers: Vec<String> = st
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "kubectl-sts"), "{managers:?}");
    // --no-wait returns at once
    let r = sts_as(cp, "alice", &["renew", "auto", "-n", n, "--no-wait"], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(
        annotations(&ns.session("auto").await?).contains_key("stssession.dev/renew-requested-at")
    );
    Ok(())
}

#[tokio::test]
async fn plugin_approves_with_codes_and_shows_status() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "plugin-approve").await?;
    let n = ns.name.clone();
    let n = n.as_str();
    let sts = sts_with_keys(&ns).await?;
    let user = sts.default_user();
    grant_approver(cp, n, "alice").await?;
    let _op = start_operator(cp, n, &sts).await?;
    ns.create_session("app", spec(Some(user.serial_number().unwrap())))
        .await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;

    // Before any approval: awaiting a code.
    let r = sts_as(cp, "alice", &["status", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let header = &table(&r.stdout)[0];
    assert_eq!(header, &plugin::COLUMNS, "{}", r.show());
    let row = table_row(&r.stdout, "NAME", "app").with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["READY", "REASON"]),
        ["False", "AwaitingTokenCode"],
        "{}",
        r.show()
    );
    assert_eq!(
        pick(&row, &["MFA", "AWAITING CODE", "LEFT"]),
        ["yes", "yes", "<none>"],
        "{}",
        r.show()
    );

    // 1. --code: used, approver from the SelfSubjectReview.
    let r = sts_as(
        cp,
        "alice",
        &["approve", "app", "-n", n, "--code", "123456"],
        None,
    )
    .await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(
        !r.all().contains("123456"),
        "the code was printed:\n{}",
        r.show()
    );
    let st = ns.session("app").await?;
    let status = st.status.clone().unwrap();
    let approval = status.last_approval.clone().expect("lastApproval");
    assert_eq!(approval.approved_by.as_deref(), Some("alice"));
    assert!(
        !annotations(&st).contains_key("stssession.dev/token-code")
            && !annotations(&st).contains_key("stssession.dev/approved-by")
    );
    let expiration = status.expiration.expect("expiration");
    assert!(
        r.stdout.contains(&whole_seconds(expiration)),
        "no expiry in the output:\n{}",
        r.show()
    );
    assert!(
        r.stdout.contains(&format!("{n}/app")) && r.stdout.contains("approved by alice"),
        "{}",
        r.show()
    );
    assert!(
        r.stdout.contains(status.access_key_id.as_deref().unwrap()),
        "{}",
        r.show()
    );
    assert_eq!(sts.uses_of_code("123456"), 1);
    let first_key = ns.secret_data("app").await?.unwrap()["AWS_ACCESS_KEY_ID"].clone();
    assert_eq!(Some(&first_key), status.access_key_id.as_ref());

    // 2. A code STS refuses: exit 1 with the reason; the valid Secret stays.
    sts.set_rejected_codes(["654321"]);
    let r = sts_as(
        cp,
        "alice",
        &["approve", "app", "-n", n, "--code", "654321"],
        None,
    )
    .await?;
    assert_eq!(r.code, 1, "{}", r.show());
    assert!(r.stderr.contains("TokenCodeRejected"), "{}", r.show());
    assert!(
        !r.all().contains("654321"),
        "the code was printed:\n{}",
        r.show()
    );
    assert_eq!(sts.uses_of_code("654321"), 1);
    assert_eq!(
        ns.secret_data("app").await?.unwrap()["AWS_ACCESS_KEY_ID"],
        first_key
    );

    // 3. The code piped on stdin (no terminal, no --code), with --kubeconfig/--context naming a
    // kubeconfig whose user entry is not called alice, and whose context's namespace is the
    // test's (no -n): the approver is who the API server says, not a kubeconfig name.
    let dir = tempdir("kubeconfig")?;
    let renamed = dir.join("config");
    let text = std::fs::read_to_string(cp.kubeconfig_for("alice"))?;
    assert!(text.contains("namespace: default"), "{text}");
    let text = text
        .replace("alice", "someone-else")
        .replace("namespace: default", &format!("namespace: {n}"));
    std::fs::write(&renamed, text)?;
    let missing = dir.join("missing");
    let renamed_arg = renamed.to_str().unwrap();
    let args = [
        "approve",
        "app",
        "--kubeconfig",
        renamed_arg,
        "--context",
        "someone-else@sts-testkit",
    ];
    let env = [("KUBECONFIG", missing.as_os_str())];
    let r = run_program(Path::new(PLUGIN), &args, &env, Some("246810\n")).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(
        !r.all().contains("246810"),
        "the code was printed:\n{}",
        r.show()
    );
    assert_eq!(sts.uses_of_code("246810"), 1);
    let st = ns.session("app").await?;
    let status = st.status.clone().unwrap();
    assert_eq!(
        status
            .last_approval
            .as_ref()
            .unwrap()
            .approved_by
            .as_deref(),
        Some("alice")
    );
    assert!(status.last_approval.as_ref().unwrap().time >= approval.time);
    assert_ne!(
        ns.secret_data("app").await?.unwrap()["AWS_ACCESS_KEY_ID"],
        first_key,
        "a new session"
    );
    let args = [
        "status",
        "--kubeconfig",
        renamed_arg,
        "--context",
        "nowhere",
    ];
    let r = run_program(Path::new(PLUGIN), &args, &[], None).await?;
    assert!(
        r.code == 2 && r.stderr.contains("nowhere"),
        "an unknown context:\n{}",
        r.show()
    );
    let _ = std::fs::remove_dir_all(&dir);

    // status: the issued session, in the columns.
    let r = sts_as(cp, "alice", &["status", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let row = table_row(&r.stdout, "NAME", "app").with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["READY", "REASON"]),
        ["True", "Issued"],
        "{}",
        r.show()
    );
    assert_eq!(
        row["EXPIRES"],
        whole_seconds(status.expiration.unwrap()),
        "{}",
        r.show()
    );
    assert_eq!(
        row["RENEWS"],
        whole_seconds(status.renewal_time.unwrap()),
        "{}",
        r.show()
    );
    assert!(
        row["LEFT"].starts_with("59m") || row["LEFT"] == "1h00m",
        "{}",
        r.show()
    );
    assert_eq!(
        pick(&row, &["MFA", "AWAITING CODE", "SECRET"]),
        ["yes", "no", "app"],
        "{}",
        r.show()
    );
    // status NAME: the conditions' messages and the last approval
    let r = sts_as(cp, "alice", &["status", "app", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(
        r.stdout.contains("Last approval:") && r.stdout.contains("by alice at"),
        "{}",
        r.show()
    );
    for c in &status.conditions {
        assert!(
            r.stdout.contains(&c.message),
            "condition {} message missing:\n{}",
            c.type_,
            r.show()
        );
    }
    // -o json
    let r = sts_as(cp, "alice", &["status", "app", "-n", n, "-o", "json"], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let j: serde_json::Value = serde_json::from_str(&r.stdout).with_context(|| r.show())?;
    assert_eq!(
        (j["name"].as_str(), j["ready"].as_str(), j["mfa"].as_bool()),
        (Some("app"), Some("True"), Some(true))
    );
    assert_eq!(j["lastApproval"]["approvedBy"], "alice");
    let r = sts_as(cp, "alice", &["status", "-n", n, "-o", "json"], None).await?;
    let j: serde_json::Value = serde_json::from_str(&r.stdout).with_context(|| r.show())?;
    assert_eq!(j["items"][0]["awaitingCode"], false, "{}", r.show());
    // -A (as admin: alice may only list her namespace)
    let r = sts_as(cp, "admin", &["status", "-A"], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert_eq!(table(&r.stdout)[0][0], "NAMESPACE", "{}", r.show());
    let row = table_row(&r.stdout, "NAMESPACE", n).with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["NAME", "REASON"]),
        ["app", "Issued"],
        "{}",
        r.show()
    );

    // Through kubectl's plugin mechanism, with the binary's directory on PATH.
    match find_kubectl() {
        None => println!("NOTE: no kubectl on PATH: `kubectl sts` through kubectl not checked"),
        Some(kubectl) => {
            let dir = Path::new(PLUGIN).parent().unwrap().to_path_buf();
            let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )))?;
            let kubeconfig = cp.kubeconfig_for("alice");
            let env = [
                ("PATH", path.as_os_str()),
                ("KUBECONFIG", kubeconfig.as_os_str()),
            ];
            let r = run_program(&kubectl, &["sts", "status", "-n", n], &env, None).await?;
            assert_eq!(r.code, 0, "{} sts status:\n{}", kubectl.display(), r.show());
            let row = table_row(&r.stdout, "NAME", "app").with_context(|| r.show())?;
            assert_eq!(row["REASON"], "Issued", "{}", r.show());
        }
    }
    Ok(())
}

#[tokio::test]
async fn plugin_renews_a_session_without_mfa() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "plugin-renew").await?;
    let n = ns.name.clone();
    let n = n.as_str();
    let sts = sts_with_keys(&ns).await?;
    let user = sts.default_user();
    grant_approver(cp, n, "alice").await?;
    let _op = start_operator(cp, n, &sts).await?;
    ns.create_session("auto", spec(None)).await?;
    wait_condition(&ns, "auto", "Ready", "True", "Issued", T).await?;
    let before = ns.secret_data("auto").await?.unwrap()["AWS_ACCESS_KEY_ID"].clone();
    let calls = sts.call_count();

    let r = sts_as(cp, "alice", &["renew", "auto", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let after = ns.secret_data("auto").await?.unwrap()["AWS_ACCESS_KEY_ID"].clone();
    assert_ne!(after, before, "the Secret holds the old session");
    assert!(
        r.stdout.contains(&after) && r.stdout.contains(&format!("{n}/auto")),
        "{}",
        r.show()
    );
    let st = ns.session("auto").await?;
    assert!(
        r.stdout.contains(&whole_seconds(
            st.status.as_ref().unwrap().expiration.unwrap()
        )),
        "{}",
        r.show()
    );
    assert!(!annotations(&st).contains_key("stssession.dev/renew-requested-at"));
    assert_eq!(sts.call_count(), calls + 1);

    let r = sts_as(cp, "alice", &["status", "-n", n], None).await?;
    let row = table_row(&r.stdout, "NAME", "auto").with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["READY", "MFA", "AWAITING CODE"]),
        ["True", "no", "no"],
        "{}",
        r.show()
    );

    // A renewal that fails: exit 1 with the reason.
    ns.secrets().delete("iam-keys", &Default::default()).await?;
    ns.create_source_secret(
        "iam-keys",
        &user.access_key_id,
        "wrong-secret-key-000000000000000000000000",
    )
    .await?;
    let r = sts_as(cp, "alice", &["renew", "auto", "-n", n], None).await?;
    assert_eq!(r.code, 1, "{}", r.show());
    assert!(
        r.stderr.contains("renewal failed") && r.stderr.contains("SourceCredentialsInvalid"),
        "{}",
        r.show()
    );
    Ok(())
}

/// `kubectl sts revoke`: a new session at once (without MFA as `renew`; with MFA after a code,
/// as `approve`), then the IAM policy that denies sessions issued before the cut-off it prints.
/// The STS double's issue times show the old session before the cut-off and the new one not.
#[tokio::test]
async fn plugin_revokes_with_a_new_session_and_a_cutoff_policy() -> Result<()> {
    let cp = control_plane().await;
    let ns = Ns::new(cp, "plugin-revoke").await?;
    let n = ns.name.clone();
    let n = n.as_str();
    let sts = sts_with_keys(&ns).await?;
    let user = sts.default_user();
    grant_approver(cp, n, "alice").await?;
    let _op = start_operator(cp, n, &sts).await?;
    ns.create_session("auto", spec(None)).await?;
    ns.create_session("mfa", spec(Some(user.serial_number().unwrap())))
        .await?;
    wait_condition(&ns, "auto", "Ready", "True", "Issued", T).await?;
    wait_condition(&ns, "mfa", "Ready", "False", "AwaitingTokenCode", T).await?;
    ns.approve("mfa", "123456", "alice").await?;
    wait_condition(&ns, "mfa", "Ready", "True", "Issued", T).await?;
    // The cut-off is in whole seconds: let the first sessions be a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for (name, stdin, args) in [
        ("auto", None, vec!["revoke", "auto", "-n", n]),
        ("mfa", Some("654321\n"), vec!["revoke", "mfa", "-n", n]),
    ] {
        let old_key = ns.secret_data(name).await?.unwrap()["AWS_ACCESS_KEY_ID"].clone();
        let r = sts_as(cp, "alice", &args, stdin).await?;
        assert_eq!(r.code, 0, "{name}: {}", r.show());
        assert!(
            !r.all().contains("654321"),
            "the code was printed: {}",
            r.show()
        );
        let new_key = ns.secret_data(name).await?.unwrap()["AWS_ACCESS_KEY_ID"].clone();
        assert_ne!(
            new_key, old_key,
            "{name}: the Secret still holds the old session"
        );
        assert!(r.stdout.contains(&new_key), "{name}: {}", r.show());
        assert!(
            r.stdout
                .contains(&format!("previous session {old_key} stays valid")),
            "{name}: {}",
            r.show()
        );
        // The printed cut-off, and the policy (the JSON at the end) with it filled in.
        let cutoff: Timestamp = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Cut-off: "))
            .with_context(|| r.show())?
            .parse()?;
        let policy: serde_json::Value =
            serde_json::from_str(&r.stdout[r.stdout.find("{\n").with_context(|| r.show())?..])?;
        let stmt = &policy["Statement"][0];
        assert_eq!(stmt["Effect"], "Deny", "{policy}");
        assert_eq!(
            stmt["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            json!(cutoff.to_string()),
            "{policy}"
        );
        // What STS says: the old session was issued before the cut-off, the new one not.
        let old = sts.issued_session(&old_key).context("the old session")?;
        let new = sts.issued_session(&new_key).context("the new session")?;
        assert!(
            old.issued_at < cutoff,
            "{name}: old issued {} vs cut-off {cutoff}",
            old.issued_at
        );
        assert!(
            new.issued_at >= cutoff,
            "{name}: new issued {} vs cut-off {cutoff}",
            new.issued_at
        );
        let st = ns.session(name).await?;
        assert!(!annotations(&st).contains_key("stssession.dev/renew-requested-at"));
        assert!(!annotations(&st).contains_key("stssession.dev/token-code"));
    }
    // A code for a SessionToken without MFA: refused, nothing written.
    let r = sts_as(
        cp,
        "alice",
        &["revoke", "auto", "-n", n, "--code", "123456"],
        None,
    )
    .await?;
    assert_eq!(r.code, 2, "{}", r.show());
    Ok(())
}

/// Lets `user` list AssumedRoles in `ns` (on top of what it has).
async fn grant_assumed_role_reader(cp: &ControlPlane, ns: &str, user: &str) -> Result<()> {
    cp.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: assumed-role-reader, namespace: {ns}}}
rules:
  - apiGroups: ["stssession.dev"]
    resources: ["assumedroles"]
    verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: assumed-role-reader-{user}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: assumed-role-reader}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"#
    ))
    .await?;
    let api: kube::Api<AssumedRole> = kube::Api::namespaced(cp.client_as(user).await?, ns);
    eventually(T, "the AssumedRole reader role in effect", || async {
        Ok(api.list(&Default::default()).await.ok().map(|_| ()))
    })
    .await
}

/// Creates an AssumedRole of role `arn:aws:iam::123456789012:role/NAME` drawing on `session`,
/// then writes its status (`Ready` with `ready`/`reason`, the Secret, and the role credentials'
/// expiry `expires` from now) through the status subresource, as the operator would.
async fn assumed_role(
    ns: &Ns,
    name: &str,
    session: &str,
    (ready, reason): (&str, &str),
    expires: Option<Duration>,
) -> Result<()> {
    let api: kube::Api<AssumedRole> = kube::Api::namespaced(ns.client.clone(), &ns.name);
    let ar: AssumedRole = serde_json::from_value(json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "AssumedRole",
        "metadata": {"name": name},
        "spec": {"sessionTokenRef": {"name": session}, "roleArn": format!("arn:aws:iam::123456789012:role/{name}")},
    }))?;
    api.create(&Default::default(), &ar).await?;
    let now = Timestamp::now();
    let mut status = json!({
        "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "set by the test",
                        "lastTransitionTime": whole_seconds(now)}],
        "secretName": name,
        "roleArn": format!("arn:aws:iam::123456789012:role/{name}"),
    });
    if let Some(d) = expires {
        status["expiration"] = json!(whole_seconds(now + d));
    }
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// The NAME cells of the table, in order (the tree's lines included).
fn names(text: &str) -> Vec<String> {
    table(text)
        .iter()
        .skip(1)
        .filter_map(|r| r.first().cloned())
        .collect()
}

/// `kubectl-sts approve ...` as `user` (the code from `--code` or `stdin`): exit 0, saying
/// `says` on stderr, and never printing the code.
async fn approve_saying(
    cp: &ControlPlane,
    user: &str,
    args: &[&str],
    stdin: Option<&str>,
    says: &str,
) -> Result<Run> {
    let r = sts_as(cp, user, args, stdin).await?;
    assert_eq!(r.code, 0, "{args:?}: {}", r.show());
    assert!(r.stderr.contains(says), "{args:?}: {}", r.show());
    let code = match args.iter().position(|a| *a == "--code") {
        Some(i) => args[i + 1],
        None => stdin.unwrap_or_default().trim(),
    };
    assert!(
        !r.all().contains(code),
        "the code was printed:\n{}",
        r.show()
    );
    Ok(r)
}

/// The NAME column of the namespace of the AssumedRole test, in order.
const TREE: [&str; 6] = [
    "app",
    "├─ AssumedRole/deployer",
    "└─ AssumedRole/reader",
    "gone",
    "└─ AssumedRole/orphan",
    "own",
];

/// A namespace for issue 16's tests: SessionTokens `app` and `own` (with its own
/// `spec.assumeRole`), both with MFA; AssumedRoles `deployer` (Ready, 45 minutes left) and
/// `reader` (`RoleAccessDenied`) drawing on `app`, and `orphan` naming a SessionToken `gone`
/// that does not exist, their status written by the test (as the operator would); alice may
/// approve but not list AssumedRoles, bob may do both. No operator runs.
async fn assumed_role_world(cp: &ControlPlane, prefix: &str) -> Result<(Ns, StsDouble)> {
    let ns = Ns::new(cp, prefix).await?;
    let n = ns.name.as_str();
    let sts = sts_with_keys(&ns).await?;
    let serial = sts.default_user().serial_number().unwrap().to_string();
    grant_approver(cp, n, "alice").await?; // SessionTokens only
    grant_approver(cp, n, "bob").await?;
    grant_assumed_role_reader(cp, n, "bob").await?;
    ns.create_session("app", spec(Some(&serial))).await?;
    let mut own = spec(Some(&serial));
    own["assumeRole"] = json!({"roleArn": "arn:aws:iam::123456789012:role/own"});
    ns.create_session("own", own).await?;
    let three_quarters = Duration::from_secs(2700);
    let ready = ("True", "RoleAssumed");
    assumed_role(&ns, "reader", "app", ("False", "RoleAccessDenied"), None).await?;
    assumed_role(&ns, "deployer", "app", ready, Some(three_quarters)).await?;
    assumed_role(
        &ns,
        "orphan",
        "gone",
        ("False", "SessionTokenNotFound"),
        None,
    )
    .await?;
    Ok((ns, sts))
}

/// Issue 16: `kubectl sts status` shows each SessionToken with the AssumedRoles drawing on it
/// as a tree beneath it, and those naming a SessionToken that does not exist beneath a line
/// saying so (in the table, with NAME, with -A and in -o json).
#[tokio::test]
async fn plugin_status_shows_assumed_roles_beneath_their_session_token() -> Result<()> {
    let cp = control_plane().await;
    let (ns, _sts) = assumed_role_world(cp, "plugin-tree").await?;
    let n = ns.name.as_str();
    // The tree, for someone who may list AssumedRoles.
    let r = sts_as(cp, "bob", &["status", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(!r.stderr.contains("note:"), "{}", r.show());
    assert_eq!(names(&r.stdout), TREE, "{}", r.show());
    assert_eq!(table(&r.stdout)[0].last().unwrap(), "ROLE", "{}", r.show());
    let row = table_row(&r.stdout, "NAME", "├─ AssumedRole/deployer").with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["READY", "REASON", "SECRET", "ROLE"]),
        [
            "True",
            "RoleAssumed",
            "deployer",
            "arn:aws:iam::123456789012:role/deployer"
        ],
        "{}",
        r.show()
    );
    let left = &row["LEFT"];
    assert!(
        left == "45m00s" || (left.len() == 6 && left.starts_with("4") && left.contains('m')),
        "{}",
        r.show()
    );
    let row = table_row(&r.stdout, "NAME", "└─ AssumedRole/reader").with_context(|| r.show())?;
    assert_eq!(
        pick(&row, &["READY", "REASON", "LEFT"]),
        ["False", "RoleAccessDenied", "<none>"],
        "{}",
        r.show()
    );
    let gone = table(&r.stdout).into_iter().find(|l| l[0] == "gone");
    assert_eq!(
        gone.with_context(|| r.show())?,
        ["gone", "<SessionToken not found>"]
    );
    let row = table_row(&r.stdout, "NAME", "own").with_context(|| r.show())?;
    assert_eq!(
        row["ROLE"],
        "arn:aws:iam::123456789012:role/own",
        "{}",
        r.show()
    );

    // status NAME: its own AssumedRoles only, then the details.
    let r = sts_as(cp, "bob", &["status", "app", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert_eq!(
        names(&r.stdout),
        ["app", "├─ AssumedRole/deployer", "└─ AssumedRole/reader"],
        "{}",
        r.show()
    );
    assert!(r.stdout.contains("Conditions:"), "{}", r.show());

    // -o json: the AssumedRoles under their SessionToken, the missing SessionToken apart.
    let r = sts_as(cp, "bob", &["status", "-n", n, "-o", "json"], None).await?;
    let j: serde_json::Value = serde_json::from_str(&r.stdout).with_context(|| r.show())?;
    assert_eq!(j["items"][0]["name"], "app", "{}", r.show());
    assert_eq!(j["items"][0]["assumedRoles"][0]["name"], "deployer");
    assert_eq!(
        j["items"][0]["assumedRoles"][1]["reason"],
        "RoleAccessDenied"
    );
    assert_eq!(j["items"][1]["assumedRoles"], json!([]));
    assert_eq!(
        j["items"][1]["roleArn"],
        "arn:aws:iam::123456789012:role/own"
    );
    assert_eq!(j["missingSessionTokens"][0]["name"], "gone");
    assert_eq!(
        j["missingSessionTokens"][0]["assumedRoles"][0]["name"],
        "orphan"
    );
    let r = sts_as(cp, "bob", &["status", "app", "-n", n, "-o", "json"], None).await?;
    let j: serde_json::Value = serde_json::from_str(&r.stdout).with_context(|| r.show())?;
    assert_eq!(j["assumedRoles"][0]["secret"], "deployer", "{}", r.show());

    // -A (as admin): the namespace on the tree's lines too.
    let r = sts_as(cp, "admin", &["status", "-A"], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let mine: Vec<Vec<String>> = table(&r.stdout)
        .into_iter()
        .filter(|l| l[0] == n)
        .map(|l| l[..2].to_vec())
        .collect();
    assert_eq!(
        mine.iter().map(|l| l[1].as_str()).collect::<Vec<_>>(),
        TREE,
        "{}",
        r.show()
    );

    Ok(())
}

/// Issue 16: to someone who may not list AssumedRoles, `kubectl sts status` shows the
/// SessionTokens with one note, and exits 0.
#[tokio::test]
async fn plugin_status_without_rights_on_assumed_roles_shows_the_session_tokens_with_a_note()
-> Result<()> {
    let cp = control_plane().await;
    let (ns, _sts) = assumed_role_world(cp, "plugin-tree-note").await?;
    let n = ns.name.as_str();
    // Someone who may not list AssumedRoles: the SessionTokens, one note, exit 0.
    let r = sts_as(cp, "alice", &["status", "-n", n], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    assert_eq!(names(&r.stdout), ["app", "own"], "{}", r.show());
    let notes: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("note:"))
        .collect();
    assert_eq!(
        notes,
        [format!(
            "note: AssumedRoles not shown: you may not list AssumedRoles in namespace {n} (Forbidden)"
        )],
        "{}",
        r.show()
    );
    let r = sts_as(cp, "alice", &["status", "-n", n, "-o", "json"], None).await?;
    assert_eq!(r.code, 0, "{}", r.show());
    let j: serde_json::Value = serde_json::from_str(&r.stdout).with_context(|| r.show())?;
    assert!(
        j["items"][0].get("assumedRoles").is_none() && j.get("missingSessionTokens").is_none(),
        "{}",
        r.show()
    );

    Ok(())
}

/// Issue 16: `kubectl sts approve` says how many role credential sets the approval also
/// refreshes (its own role, the AssumedRoles), or that it could not count them, and approves as
/// before.
#[tokio::test]
async fn plugin_approve_counts_the_role_credential_sets_it_refreshes() -> Result<()> {
    let cp = control_plane().await;
    let (ns, sts) = assumed_role_world(cp, "plugin-count").await?;
    let n = ns.name.as_str();
    // approve counts what it refreshes: the SessionToken's own role...
    let own_role =
        "This approval also refreshes 1 role credential set: its own role (spec.assumeRole).";
    let args = ["approve", "own", "-n", n, "--code", "975310", "--no-wait"];
    approve_saying(cp, "bob", &args, None, own_role).await?;

    // ...and the AssumedRoles; and approves as before.
    let _op = start_operator(cp, n, &sts).await?;
    wait_condition(&ns, "app", "Ready", "False", "AwaitingTokenCode", T).await?;
    let two = "This approval also refreshes 2 role credential sets: AssumedRoles deployer, reader.";
    let args = ["approve", "app", "-n", n, "--code", "123456"];
    let r = approve_saying(cp, "bob", &args, None, two).await?;
    assert!(
        r.stdout
            .contains(&format!("SessionToken {n}/app: new session"))
            && r.stdout.contains("approved by bob"),
        "{}",
        r.show()
    );
    assert_eq!(sts.uses_of_code("123456"), 1);
    // Someone who may not list AssumedRoles: not counted, approved anyway.
    let uncounted = format!(
        "Could not count the role credential sets this approval also refreshes: you may not list AssumedRoles in namespace {n} (Forbidden). Approving anyway."
    );
    let args = ["approve", "app", "-n", n];
    let r = approve_saying(cp, "alice", &args, Some("246810\n"), &uncounted).await?;
    assert!(r.stdout.contains("approved by alice"), "{}", r.show());
    assert_eq!(sts.uses_of_code("246810"), 1);
    Ok(())
}
