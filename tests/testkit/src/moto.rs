//! moto in server mode: the real-wire STS peer (SigV4-verified).
//!
//! [`Moto::start`] runs `moto_server` on a free loopback port with
//! `INITIAL_NO_AUTH_ACTION_COUNT` = the number of setup calls ([`SETUP_CALLS`]), makes those
//! calls through moto's IAM query API (an IAM user, a policy allowing `sts:GetSessionToken`, an
//! access key), then checks that authentication is on: one more unsigned request must be
//! rejected. From then on every request must carry a valid SigV4 signature of that key.
//!
//! [`Moto::start_without_auth`] runs one with request authentication off (no
//! `INITIAL_NO_AUTH_ACTION_COUNT`) after the same setup: moto with authentication on does not
//! recognise the session credentials its own GetSessionToken returns (AssumeRole signed with
//! them gets `InvalidClientTokenId`), so AssumeRole with session credentials can only be tried
//! against this one. Its IAM roles are made with [`Moto::create_role`].
//!
//! `moto_server` comes from `$STS_TEST_VENV/bin` (set by `hack/test.sh`), else from `PATH`; it
//! runs through `hack/moto_server.py`, which gives its authentication errors (e.g.
//! `SignatureDoesNotMatch`) the body shape real STS uses, so that SDKs parse their codes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::process::{ChildProcess, ScratchDir, free_port, tail, wait_for_port};

/// Env: virtualenv holding `moto_server` (and `kubectl`).
pub const ENV_VENV: &str = "STS_TEST_VENV";
/// The IAM calls made before authentication turns on.
pub const SETUP_CALLS: usize = 3;
/// Name of the IAM user created in moto.
pub const USER_NAME: &str = "sts-testkit-user";
/// moto's default account.
pub const ACCOUNT_ID: &str = "123456789012";
/// The region everything uses.
pub const REGION: &str = "us-east-1";

/// A running moto server with one IAM user and its access key.
pub struct Moto {
    process: ChildProcess,
    endpoint: String,
    /// Requests must be signed (SigV4) with a key moto knows.
    authenticated: bool,
    user_arn: String,
    access_key_id: String,
    secret_access_key: String,
    _scratch: ScratchDir,
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto")
            .field("endpoint", &self.endpoint)
            .field("user_arn", &self.user_arn)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Finds `moto_server`: `$STS_TEST_VENV/bin/moto_server`, else on `PATH`.
pub fn moto_server_path() -> Result<PathBuf> {
    if let Some(venv) = std::env::var_os(ENV_VENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(venv).join("bin/moto_server");
        ensure!(
            p.is_file(),
            "{} does not exist ({ENV_VENV} is set)",
            p.display()
        );
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("moto_server not found: set {ENV_VENV} (hack/test.sh does) or put it on PATH")
        })
}

/// The Python interpreter of a pip-installed script (its `#!` line).
fn script_interpreter(script: &std::path::Path) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(script).with_context(|| format!("reading {}", script.display()))?;
    let shebang = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .unwrap_or("")
        .trim();
    let interpreter = shebang.split_whitespace().next().unwrap_or("");
    ensure!(
        !interpreter.is_empty() && !interpreter.ends_with("/env"),
        "{}: no usable #! line",
        script.display()
    );
    Ok(PathBuf::from(interpreter))
}

impl Moto {
    /// Starts a private moto server and sets it up (a second or two); then every request must
    /// be signed with the user's key.
    pub async fn start() -> Result<Moto> {
        Self::start_with(true).await
    }

    /// Starts a private moto server with request authentication off (moto's default: no
    /// `INITIAL_NO_AUTH_ACTION_COUNT`), set up like [`Moto::start`]'s. It accepts AssumeRole
    /// signed with the credentials of its own GetSessionToken (with authentication on, moto
    /// answers that `InvalidClientTokenId`), and IAM calls such as [`Moto::create_role`].
    pub async fn start_without_auth() -> Result<Moto> {
        Self::start_with(false).await
    }

    async fn start_with(authenticated: bool) -> Result<Moto> {
        let server = moto_server_path()?;
        let python = script_interpreter(&server)?;
        let wrapper = crate::control_plane::workspace_root().join("hack/moto_server.py");
        ensure!(wrapper.is_file(), "{} is missing", wrapper.display());
        let scratch = ScratchDir::new("moto")?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut builder = ChildProcess::builder(&python)
                .name("moto_server")
                .arg(&wrapper)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            builder = if authenticated {
                builder.env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_CALLS.to_string())
            } else {
                builder.env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            };
            let process = builder
                .env("PYTHONUNBUFFERED", "1")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN")
                .current_dir(scratch.path())
                .log_file(scratch.path().join("moto_server.log"))
                .spawn()?;
            match wait_ready(&process, port).await {
                Ok(()) => {
                    let endpoint = format!("http://127.0.0.1:{port}");
                    let setup = setup(&endpoint, authenticated).await;
                    let (user_arn, access_key_id, secret_access_key) = setup.map_err(|e| {
                        anyhow!(
                            "moto setup failed: {e:#}\n--- {} ---\n{}",
                            process.log_path().display(),
                            process.log_tail(30)
                        )
                    })?;
                    return Ok(Moto {
                        process,
                        endpoint,
                        authenticated,
                        user_arn,
                        access_key_id,
                        secret_access_key,
                        _scratch: scratch,
                    });
                }
                Err(e) => {
                    let log = process.read_log();
                    let conflict = log.contains("Address already in use");
                    let err = anyhow!(
                        "moto_server did not start: {e:#}\n--- {} ---\n{}",
                        process.log_path().display(),
                        tail(&log, 30)
                    );
                    if !conflict {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap())
    }

    /// One moto per test binary, started on first use. Panics if it cannot start.
    pub async fn shared() -> &'static Moto {
        static SHARED: tokio::sync::OnceCell<std::result::Result<Moto, String>> =
            tokio::sync::OnceCell::const_new();
        match SHARED
            .get_or_init(|| async { Moto::start().await.map_err(|e| format!("{e:#}")) })
            .await
        {
            Ok(m) => m,
            Err(e) => panic!("moto is not available: {e}"),
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// `arn:aws:iam::123456789012:user/sts-testkit-user`
    pub fn user_arn(&self) -> &str {
        &self.user_arn
    }
    pub fn user_name(&self) -> &str {
        USER_NAME
    }
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }
    /// The user's long-term credentials.
    pub fn credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "testkit-moto",
        )
    }
    /// An STS client config for this moto with the user's key.
    pub fn sts_config(&self) -> aws_sdk_sts::Config {
        sts_config(&self.endpoint, self.credentials())
    }
    /// Whether requests must be signed ([`Moto::start`]) or not ([`Moto::start_without_auth`]).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Creates an IAM role (`CreateRole` through moto's IAM query API) with this trust policy
    /// (a JSON policy document) and returns its ARN, `arn:aws:iam::123456789012:role/NAME`.
    /// Only on a moto without authentication ([`Moto::start_without_auth`]): the call is
    /// unsigned.
    pub async fn create_role(&self, name: &str, trust_policy: &str) -> Result<String> {
        ensure!(
            !self.authenticated,
            "create_role needs a moto without authentication (Moto::start_without_auth)"
        );
        let (status, body) = iam_unsigned(
            &self.endpoint,
            &[
                ("Action", "CreateRole"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", trust_policy),
                ("MaxSessionDuration", "3600"),
            ],
        )
        .await?;
        ensure!(status == 200, "IAM CreateRole -> {status}: {body}");
        xml_text(&body, "Arn").context("CreateRole: no Arn")
    }

    /// The moto server log so far.
    pub fn read_log(&self) -> String {
        self.process.read_log()
    }
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }
}

/// An STS client config as the operator builds one: explicit endpoint, region, static
/// credentials, no ambient configuration, rustls on ring.
pub fn sts_config(
    endpoint: &str,
    credentials: aws_credential_types::Credentials,
) -> aws_sdk_sts::Config {
    use aws_smithy_http_client::tls;
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_sdk_sts::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(aws_sdk_sts::config::Region::new(REGION))
        .credentials_provider(credentials)
        .http_client(http_client)
        .build()
}

async fn wait_ready(process: &ChildProcess, port: u16) -> Result<()> {
    // A plain TCP connect: any request through a service would count as a setup call.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.try_wait()? {
            bail!("moto_server exited: {status}");
        }
        if wait_for_port(port, Duration::from_millis(200))
            .await
            .is_ok()
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "moto_server not listening after 30 s"
        );
    }
}

/// The setup calls; returns (user ARN, access key id, secret access key). With
/// `authenticated`, then checks that moto refuses unsigned requests.
async fn setup(endpoint: &str, authenticated: bool) -> Result<(String, String, String)> {
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:GetSessionToken","Resource":"*"}]}"#;
    let calls: [&[(&str, &str)]; SETUP_CALLS] = [
        &[("Action", "CreateUser"), ("UserName", USER_NAME)],
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", USER_NAME),
            ("PolicyName", "allow-get-session-token"),
            ("PolicyDocument", policy),
        ],
        &[("Action", "CreateAccessKey"), ("UserName", USER_NAME)],
    ];
    let mut bodies = Vec::new();
    for params in calls {
        let (status, body) = iam_unsigned(endpoint, params).await?;
        ensure!(status == 200, "IAM {} -> {status}: {body}", params[0].1);
        bodies.push(body);
    }
    let user_arn = xml_text(&bodies[0], "Arn").context("CreateUser: no Arn")?;
    let access_key_id =
        xml_text(&bodies[2], "AccessKeyId").context("CreateAccessKey: no AccessKeyId")?;
    let secret =
        xml_text(&bodies[2], "SecretAccessKey").context("CreateAccessKey: no SecretAccessKey")?;

    if !authenticated {
        return Ok((user_arn, access_key_id, secret));
    }
    // All setup calls counted: the next unsigned request must be refused.
    let (status, body) =
        iam_unsigned(endpoint, &[("Action", "GetUser"), ("UserName", USER_NAME)]).await?;
    ensure!(
        status == 403,
        "moto still accepts unsigned requests after {SETUP_CALLS} setup calls ({status}: {body}); \
         INITIAL_NO_AUTH_ACTION_COUNT not honoured"
    );
    Ok((user_arn, access_key_id, secret))
}

/// An IAM query-API POST without a signature. The `Authorization` header carries only a
/// credential scope: moto routes requests by it (without it, everything goes to S3) and does
/// not check signatures until `INITIAL_NO_AUTH_ACTION_COUNT` requests have been made.
async fn iam_unsigned(endpoint: &str, params: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.append_pair("Version", "2010-05-08");
    let body = form.finish();
    let req = hyper::Request::post(format!("{endpoint}/"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDTESTKITSETUP/{}/{REGION}/iam/aws4_request, \
                 SignedHeaders=content-type;host, Signature=0",
                jiff::Timestamp::now().strftime("%Y%m%d")
            ),
        )
        .body(Full::new(Bytes::from(body)))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow!("moto did not answer within 30 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Text of the first `<tag>…</tag>` (no entities expected in these values).
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_string())
}
