//! `testenv run -- <command> [args…]`: starts one local control plane, runs the command with
//! `STS_TEST_KUBECONFIG` and `STS_TEST_CONTROL_PLANE_DIR` pointing at it (so every test binary
//! the command runs shares it through `ControlPlane::shared()`), tears it down and exits with
//! the command's exit code.

use std::process::ExitCode;
use std::time::Instant;

use testkit::control_plane::{ControlPlane, ENV_CONTROL_PLANE_DIR, ENV_KUBECONFIG};

fn usage() -> ExitCode {
    eprintln!("usage: testenv run -- <command> [args...]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args.as_slice() {
        [run, dashdash, cmd @ ..] if run == "run" && dashdash == "--" && !cmd.is_empty() => cmd.to_vec(),
        _ => return usage(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(run(cmd));
    ExitCode::from(code)
}

async fn run(cmd: Vec<String>) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let started = Instant::now();
    let cp = match ControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("testenv: cannot start the control plane: {e:#}");
            return 1;
        }
    };
    eprintln!(
        "testenv: control plane {} started in {:.1} s; running {:?}",
        cp.server_url(),
        started.elapsed().as_secs_f64(),
        cmd
    );
    let mut child = match tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env(ENV_KUBECONFIG, cp.admin_kubeconfig())
        .env(ENV_CONTROL_PLANE_DIR, cp.dir())
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
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = sigterm.recv() => forward(&child, libc::SIGTERM),
            // The terminal sends SIGINT to the child too; just wait for it.
            _ = sigint.recv() => {}
        }
    };
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

fn forward(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id() {
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}
