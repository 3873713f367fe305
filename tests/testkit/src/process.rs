//! Child processes and scratch directories that never outlive the test binary.
//!
//! Guarantees, whatever way the test binary ends:
//! - every child is spawned from one dedicated, never-ending thread with
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills it when this process dies, even by
//!   `SIGKILL` (PDEATHSIG fires when the *spawning thread* exits, which is why no test thread
//!   spawns directly);
//! - every child leads its own process group, and an `atexit` handler `SIGKILL`s all live groups
//!   and removes every live [`ScratchDir`] when the binary exits normally (the test harness exits
//!   through `exit()` also when tests failed);
//! - a [`ScratchDir`] records its owner (pid + start time); [`ScratchDir::new`] removes the
//!   directories of owners that are gone (a binary killed by a signal skips `atexit`).
//!
//! Set `STS_TEST_KEEP=1` to keep scratch directories (and their logs) for a post-mortem.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

// ---------------------------------------------------------------------------------------------
// Registry of live process groups and scratch directories, cleaned up by `atexit`.

#[derive(Default)]
struct Registry {
    /// pid (= process group id) -> name
    groups: HashMap<i32, String>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

fn registry() -> MutexGuard<'static, Registry> {
    static ATEXIT: Once = Once::new();
    ATEXIT.call_once(|| unsafe {
        libc::atexit(cleanup_at_exit);
    });
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn cleanup_at_exit() {
    let Some(mutex) = REGISTRY.get() else { return };
    // Never block exit on a lock some stray thread holds: PDEATHSIG still covers the children.
    let mut guard = None;
    for _ in 0..200 {
        match mutex.try_lock() {
            Ok(g) => {
                guard = Some(g);
                break;
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                guard = Some(p.into_inner());
                break;
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(5))
            }
        }
    }
    let Some(mut reg) = guard else { return };
    let (groups, dirs) = (
        std::mem::take(&mut reg.groups),
        std::mem::take(&mut reg.dirs),
    );
    drop(reg);
    for pid in groups.keys() {
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    for pid in groups.keys() {
        // Reap, so that files are closed before the directories go (bounded: SIGKILL is final).
        let mut status = 0;
        unsafe {
            libc::waitpid(*pid, &mut status, 0);
        }
    }
    if !keep_scratch() {
        for dir in dirs {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// `STS_TEST_KEEP=1`: leave scratch directories (logs, data) behind.
pub fn keep_scratch() -> bool {
    std::env::var_os("STS_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------------------------
// The spawner thread.

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the sender is in a static and never dropped.
                for mut req in rx {
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .expect("cannot start the testkit spawner thread");
        tx
    })
}

fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .send(SpawnRequest { cmd, reply: tx })
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Builder for a [`ChildProcess`]: a [`Command`] whose stdout and stderr go to a log file.
pub struct ProcessBuilder {
    cmd: Command,
    name: String,
    log_path: Option<PathBuf>,
}

impl ProcessBuilder {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let name = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        Self {
            cmd: Command::new(program),
            name,
            log_path: None,
        }
    }
    /// Name used in messages (default: the program's file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, val);
        self
    }
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.cmd.env_remove(key);
        self
    }
    pub fn env_clear(mut self) -> Self {
        self.cmd.env_clear();
        self
    }
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }
    /// Where stdout and stderr go (appended). Required.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }

    pub fn spawn(self) -> Result<ChildProcess> {
        let Self {
            mut cmd,
            name,
            log_path,
        } = self;
        let log_path = log_path.with_context(|| format!("{name}: no log file given"))?;
        if let Some(parent) = log_path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(
            log,
            "=== testkit: starting {name} at {}: {:?}",
            jiff::Timestamp::now(),
            cmd
        )?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Hold the registry while spawning so that `atexit` cannot miss a child.
        let mut reg = registry();
        let child = spawn_guarded(cmd).with_context(|| format!("cannot spawn {name}"))?;
        let pid = child.id() as i32;
        reg.groups.insert(pid, name.clone());
        drop(reg);
        Ok(ChildProcess {
            name,
            pid: pid as u32,
            log_path,
            state: Mutex::new(State {
                child,
                status: None,
            }),
        })
    }
}

struct State {
    child: Child,
    status: Option<ExitStatus>,
}

/// A child process (leader of its own process group) whose output goes to a log file.
/// Dropping it kills its process group with `SIGKILL`.
pub struct ChildProcess {
    name: String,
    pid: u32,
    log_path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log", &self.log_path)
            .finish()
    }
}

impl ChildProcess {
    pub fn builder(program: impl AsRef<OsStr>) -> ProcessBuilder {
        ProcessBuilder::new(program)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The whole log (lossy UTF-8).
    pub fn read_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.read_log(), lines)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reaped(&self, state: &mut State, status: ExitStatus) -> ExitStatus {
        state.status = Some(status);
        registry().groups.remove(&(self.pid as i32));
        status
    }

    /// Exit status if it has exited (reaps it), `None` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut state = self.state();
        if let Some(status) = state.status {
            return Ok(Some(status));
        }
        match state.child.try_wait()? {
            Some(status) => Ok(Some(self.reaped(&mut state, status))),
            None => Ok(None),
        }
    }
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let state = self.state();
        if state.status.is_some() {
            return Ok(());
        }
        if unsafe { libc::kill(self.pid as i32, signal) } != 0 {
            bail!(
                "kill({}, {signal}): {}",
                self.pid,
                io::Error::last_os_error()
            );
        }
        Ok(())
    }
    /// `SIGTERM` to the process.
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// `SIGKILL` to the whole process group, then reaps the process.
    pub fn kill_9(&self) -> Result<ExitStatus> {
        let mut state = self.state();
        if let Some(status) = state.status {
            return Ok(status);
        }
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGKILL);
        }
        let status = state.child.wait()?;
        Ok(self.reaped(&mut state, status))
    }

    /// Waits (polling, in the caller's runtime) until it exits.
    pub async fn wait(&self) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Waits up to `timeout`; `None` if it still runs.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
    /// Blocking variant of [`Self::wait_timeout`], for code outside a runtime.
    pub fn wait_timeout_blocking(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// `SIGTERM`, then `SIGKILL` to the group if it has not exited within `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.terminate()?;
        match self.wait_timeout(grace).await? {
            Some(status) => {
                // Leftovers of its group, if any.
                unsafe {
                    libc::kill(-(self.pid as i32), libc::SIGKILL);
                }
                Ok(status)
            }
            None => self.kill_9(),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.kill_9();
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Scratch directories.

/// Root of all scratch directories of this user: `$TMPDIR/sts-testkit-<uid>`.
pub fn scratch_root() -> PathBuf {
    std::env::temp_dir().join(format!("sts-testkit-{}", unsafe { libc::getuid() }))
}

const OWNER_FILE: &str = ".testkit-owner";

/// A process's start time (clock ticks since boot), to tell a live owner from a reused pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(owner: &str) -> bool {
    let mut it = owner.split_whitespace();
    let (Some(pid), Some(start)) = (it.next(), it.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

/// Removes scratch directories whose owner process is gone. Runs once per process.
pub fn sweep_stale_scratch_dirs() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = fs::read_dir(scratch_root()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let owner = fs::read_to_string(path.join(OWNER_FILE)).unwrap_or_default();
            if owner.is_empty() {
                // Being created right now, or broken: only old ones go.
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if !old {
                    continue;
                }
            } else if owner_alive(&owner) {
                continue;
            }
            let _ = fs::remove_dir_all(&path);
        }
    });
}

/// A directory under [`scratch_root`], removed on drop and at exit (unless `STS_TEST_KEEP`),
/// and by later runs if this process dies without cleaning up.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(prefix: &str) -> Result<Self> {
        sweep_stale_scratch_dirs();
        let root = scratch_root();
        fs::create_dir_all(&root)?;
        let pid = std::process::id();
        let path = loop {
            let candidate = root.join(format!("{prefix}-{pid}-{:08x}", rand::random::<u32>()));
            match fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create {}", candidate.display()));
                }
            }
        };
        let start = start_time(pid as i32).unwrap_or(0);
        fs::write(path.join(OWNER_FILE), format!("{pid} {start}\n"))?;
        registry().dirs.push(path.clone());
        Ok(Self { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        registry().dirs.retain(|d| d != &self.path);
        if !keep_scratch() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race remains, callers retry).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates (truncates) a file with mode 0600.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_ref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_logs_and_dies() -> Result<()> {
        let dir = ScratchDir::new("unit")?;
        let child = ChildProcess::builder("sh")
            .args(["-c", "echo out; echo err >&2; sleep 60"])
            .log_file(dir.path().join("sh.log"))
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(child.read_log().contains("out\n") && child.read_log().contains("err\n")) {
            assert!(Instant::now() < deadline, "log: {}", child.read_log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(child.is_running());
        assert!(registry().groups.contains_key(&(child.pid() as i32)));
        let status = child.kill_9()?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!registry().groups.contains_key(&(child.pid() as i32)));
        let path = dir.path().to_path_buf();
        drop(child);
        drop(dir);
        assert!(!path.exists() || keep_scratch());
        Ok(())
    }

    #[tokio::test]
    async fn stop_and_exit_status() -> Result<()> {
        let dir = ScratchDir::new("unit")?;
        let child = ChildProcess::builder("sh")
            .args(["-c", "exit 7"])
            .log_file(dir.path().join("sh.log"))
            .spawn()?;
        assert_eq!(child.wait().await?.code(), Some(7));
        let sleeper = ChildProcess::builder("sleep")
            .arg("60")
            .log_file(dir.path().join("s.log"))
            .spawn()?;
        let status = sleeper.stop(Duration::from_secs(5)).await?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        Ok(())
    }

    #[test]
    fn owners() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(owner_alive(&format!("{me} {start}")));
        assert!(!owner_alive(&format!("{me} {}", start + 1)));
        assert!(!owner_alive("garbage"));
    }
}
