//! `testenv run [--crds PATH]... -- <command> [args…]`: starts one local control plane (CRDs
//! from `--crds` files/directories installed before kube-controller-manager starts), runs the
//! command with `STS_TEST_KUBECONFIG` and `STS_TEST_CONTROL_PLANE_DIR` pointing at it (so every
//! test binary the command runs shares it through `ControlPlane::shared()`), serves their
//! requests (kube-controller-manager restarts), tears it down and exits with the command's code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use testkit::control_plane::{ControlPlane, ENV_CONTROL_PLANE_DIR, ENV_KUBECONFIG, StartOptions};

const USAGE: &str = "usage: testenv run [--crds PATH]... -- <command> [args...]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("run") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut options = StartOptions::default();
    let mut cmd = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--crds" => match args.next() {
                Some(p) => options.crds.push(PathBuf::from(p)),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--" => {
                cmd.extend(args.by_ref());
                break;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if cmd.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    ExitCode::from(rt.block_on(run(options, cmd)))
}

async fn run(options: StartOptions, cmd: Vec<String>) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let started = Instant::now();
    let cp = match ControlPlane::start_with(options).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("testenv: cannot start the control plane: {e:#}");
            return 1;
        }
    };
    if let Err(e) = cp.enable_requests() {
        eprintln!("testenv: {e:#}");
        return 1;
    }
    eprintln!(
        "testenv: control plane {} started in {:.1} s; running {}",
        cp.server_url(),
        started.elapsed().as_secs_f64(),
        cmd.join(" ")
    );
    let mut child = match tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env(ENV_KUBECONFIG, cp.admin_kubeconfig())
        .env(ENV_CONTROL_PLANE_DIR, cp.dir())
        // Its own process group, so that a SIGTERM/SIGINT to testenv reaches every test binary.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testenv: cannot run {}: {e}", cmd[0]);
            cp.shutdown().await;
            return 127;
        }
    };
    let mut sigterm = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut sigint = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let status = {
        let serve = cp.serve_requests();
        tokio::pin!(serve);
        let mut serving = true;
        loop {
            tokio::select! {
                status = child.wait() => break status,
                r = &mut serve, if serving => {
                    serving = false;
                    eprintln!("testenv: no longer serving requests: {r:?}");
                }
                _ = sigterm.recv() => forward(&child, libc::SIGTERM),
                _ = sigint.recv() => forward(&child, libc::SIGINT),
            }
        }
    };
    let failed = !matches!(&status, Ok(s) if s.success());
    if failed {
        let keep = testkit::process::keep_scratch();
        eprintln!(
            "testenv: the command failed; control plane logs and audit log {} {}{}",
            if keep { "kept in" } else { "were in" },
            cp.dir().display(),
            if keep {
                ""
            } else {
                " (set STS_TEST_KEEP=1 to keep them)"
            }
        );
    }
    cp.shutdown().await;
    drop(cp);
    match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(c), _) => c.clamp(0, 255) as u8,
            (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
            _ => 1,
        },
        Err(e) => {
            eprintln!("testenv: waiting for {}: {e}", cmd[0]);
            1
        }
    }
}

/// Sends `sig` to the command's process group.
fn forward(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id() {
        eprintln!("testenv: forwarding signal {sig} to the command");
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
}
