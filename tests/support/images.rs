//! The images `hack/build-image.sh` builds (the operator's, from the project's Dockerfile, and
//! the node tests' consumer and pause images), and the tools the image and node tests share.
//! `make test` builds them first and sets `STS_TEST_IMAGES` (and `STS_TEST_HELM`); a plain
//! `cargo test` runs the scripts itself.

#![allow(dead_code)]

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `hack/<script>` and returns the last line of its stdout (a path).
fn script_output(script: &str) -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(root().join("hack").join(script))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running hack/{script}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(line) if out.status.success() && Path::new(line.trim()).exists() => {
            Ok(PathBuf::from(line.trim()))
        }
        _ => Err(format!("hack/{script} failed ({}): {stdout}", out.status)),
    }
}

/// `$VAR` if set (it must exist), else what `hack/<script>` prints.
fn from_env_or_script(
    var: &str,
    script: &str,
    cell: &'static OnceLock<Result<PathBuf, String>>,
) -> Result<PathBuf> {
    cell.get_or_init(|| {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.exists() {
                Ok(p)
            } else {
                Err(format!("{var}={} does not exist", p.display()))
            };
        }
        script_output(script)
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The pinned helm: `$STS_TEST_HELM`, else built (once, cached) by hack/build-helm.sh.
pub fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    from_env_or_script("STS_TEST_HELM", "build-helm.sh", &HELM)
}

/// kubectl from the test virtualenv (`$STS_TEST_VENV/bin`), else from PATH.
pub fn kubectl() -> Result<PathBuf> {
    if let Some(venv) = std::env::var_os("STS_TEST_VENV").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(venv).join("bin/kubectl");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("kubectl");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("kubectl not found: run the tests with `make test` (it sets STS_TEST_VENV)")
}

/// The built images: names (`images.env`) and `docker save` archives.
#[derive(Debug, Clone)]
pub struct Images {
    pub dir: PathBuf,
    pub vars: BTreeMap<String, String>,
}

impl Images {
    /// `$STS_TEST_IMAGES`, else hack/build-image.sh (cached; a cold build takes many minutes).
    pub fn get() -> Result<Images> {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = from_env_or_script("STS_TEST_IMAGES", "build-image.sh", &DIR)?;
        let text = std::fs::read_to_string(dir.join("images.env"))
            .with_context(|| format!("{}/images.env", dir.display()))?;
        let vars = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Images { dir, vars })
    }
    pub fn var(&self, key: &str) -> Result<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{key} missing from {}/images.env", self.dir.display()))
    }
    pub fn operator(&self) -> Result<&str> {
        self.var("OPERATOR_IMAGE")
    }
    pub fn consumer(&self) -> Result<&str> {
        self.var("CONSUMER_IMAGE")
    }
    pub fn pause(&self) -> Result<&str> {
        self.var("PAUSE_IMAGE")
    }
    /// `docker save` archive of one image: `operator`, `consumer` or `pause`.
    pub fn archive(&self, which: &str) -> PathBuf {
        let key = format!("{}_ARCHIVE", which.to_uppercase());
        match self.vars.get(&key) {
            Some(p) => PathBuf::from(p),
            None => self.dir.join(format!("{which}.tar")),
        }
    }
    /// (repository, tag) of an image name.
    pub fn split(image: &str) -> (&str, &str) {
        image.rsplit_once(':').unwrap_or((image, "latest"))
    }
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Documents of a multi-document YAML stream, as JSON values.
pub fn parse_docs(yaml: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(serde_json::to_value(v)?);
        }
    }
    Ok(docs)
}

/// Minimal HTTP GET: "STATUS\nBODY".
pub async fn http_get(host: &str, port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
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
