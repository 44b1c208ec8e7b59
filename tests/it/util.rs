//! Helpers shared by the integration tests: fixture folders, the real server over a real socket,
//! the CLI binary, and the leak check every test ends with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the files of `from` into `to`, subfolders included (OpenEnv keeps `server/`).
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "__pycache__" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A private copy of an example environment or test fixture, so that every process started for
/// one test carries a unique path in its command line and can be found by the leak check.
pub struct EnvCopy {
    pub dir: TempDir,
}

impl EnvCopy {
    pub fn of(name: &str) -> EnvCopy {
        let source = [repo().join("environments").join(name), repo().join("tests/fixtures").join(name)]
            .into_iter()
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no environment or fixture named {name}"));
        let dir = tempfile::Builder::new().prefix(&format!("rayfine-test-{name}-")).tempdir().unwrap();
        copy_tree(&source, dir.path());
        EnvCopy { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Processes whose command line mentions this folder (servers and workers started for it).
    pub fn processes(&self) -> Vec<String> {
        processes_mentioning(self.path_str())
    }

    /// Waits (bounded: see [`wait_until_gone`], 10 s) until no process mentions this folder;
    /// panics naming the leftovers.
    pub fn assert_no_process_left(&self) {
        let started = Instant::now();
        let left = wait_until_gone(Duration::from_secs(10), || self.processes());
        if !left.is_empty() {
            panic!("processes left behind for {} after {:?}:\n{}", self.path_str(), started.elapsed(), left.join("\n"));
        }
    }
}

/// Waits (bounded: 60 s) until `file` exists: a fixture's method made it (a `nap` named by its
/// `started` argument) once it ran. Returns when it was made, however late this saw it.
pub fn wait_for_file(file: &Path) -> std::time::SystemTime {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(made) = std::fs::metadata(file).and_then(|m| m.modified()) {
            return made;
        }
        assert!(Instant::now() < deadline, "{} did not appear within 60 s", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `list` (processes as "pid cmdline") is empty, for up to `within`, or up to a
/// minute while every process left has been SIGKILLed (the signal pending, or the exit begun):
/// those have been dealt with, and the kernel ends them when they next run, which on a machine
/// starved by the fork bomb test can be late. Returns what is left, each with where it waits
/// (its pending signals, and each thread's state and schedstat).
pub fn wait_until_gone(within: Duration, list: impl Fn() -> Vec<String>) -> Vec<String> {
    let started = Instant::now();
    loop {
        let left = list();
        if left.is_empty() {
            return left;
        }
        let all_killed = left.iter().all(|line| line.split_whitespace().next().and_then(|pid| pid.parse().ok()).is_some_and(was_killed));
        if started.elapsed() > if all_killed { within.max(Duration::from_secs(60)) } else { within } {
            return left.iter().map(|line| format!("{line}\n{}", where_it_waits(line))).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` has been SIGKILLed: the signal is pending for it (shared or its own), or
/// it has begun to exit (`PF_EXITING` in its flags).
fn was_killed(pid: u32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    const PF_EXITING: u64 = 0x4;
    let proc = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let pending = status
        .lines()
        .filter_map(|line| line.strip_prefix("ShdPnd:").or_else(|| line.strip_prefix("SigPnd:")))
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & SIGKILL_BIT != 0);
    // Field 9 of stat, counted after the command name's closing parenthesis (field 2).
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    let flags = stat.rsplit(") ").next().and_then(|rest| rest.split_whitespace().nth(6)).and_then(|f| f.parse::<u64>().ok());
    pending || flags.is_some_and(|flags| flags & PF_EXITING != 0)
}

/// Where a leftover process ("pid cmdline") is: its state, parent and process group, and each
/// thread's state and kernel wait channel, so that a process that outlived its server says why.
fn where_it_waits(line: &str) -> String {
    let Some(pid) = line.split_whitespace().next() else { return String::new() };
    let proc = Path::new("/proc").join(pid);
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    // ShdPnd and SigPnd: whether a SIGKILL (signal 9, bit 8: 0x100) reached it and waits to be acted on.
    let wanted = ["State", "PPid", "Threads", "ShdPnd", "SigPnd", "SigBlk", "SigIgn", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"];
    let mut said: Vec<String> = status.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))).map(|l| format!("  {l}")).collect();
    for task in std::fs::read_dir(proc.join("task")).into_iter().flatten().flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        let state = read("stat").rsplit(") ").next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?").to_string();
        // schedstat: ns on a CPU, ns runnable but waiting for one, times run.
        said.push(format!(
            "  thread {} {} state {state} wchan {} schedstat {} stack: {}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("schedstat").trim(),
            read("stack").lines().take(4).collect::<Vec<_>>().join(" | ")
        ));
    }
    said.join("\n")
}

/// Live (non-zombie) processes whose command line contains `needle`, as "pid cmdline".
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if !zombie && cmdline.contains(needle) && pid != std::process::id() {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// Waits (bounded) until no process's command line holds `needle`; panics naming them.
pub fn wait_until_no_process_mentions(needle: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !processes_mentioning(needle).is_empty() {
        assert!(Instant::now() < deadline, "{what}: {:?}", processes_mentioning(needle));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real `rayfine-server` on 127.0.0.1 with an ephemeral port; killed on drop.
pub struct RunningServer {
    pub child: Child,
    pub port: u16,
    pub stderr_log: PathBuf,
    _log_dir: TempDir,
}

impl RunningServer {
    /// Starts the server for `env` and waits for its first event after `listening`.
    pub fn start(env: &EnvCopy, vars: &[(&str, &str)]) -> (RunningServer, serde_json::Value) {
        Self::start_with(env, vars, |_| {})
    }

    /// Starts the server allowed to run on the first core only, as under a CPU limit.
    pub fn start_on_one_core(env: &EnvCopy, vars: &[(&str, &str)]) -> (RunningServer, serde_json::Value) {
        Self::start_with(env, vars, |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(|| {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_with(env: &EnvCopy, vars: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> (RunningServer, serde_json::Value) {
        let log_dir = tempfile::tempdir().unwrap();
        let stderr_log = log_dir.path().join("stderr.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rayfine-server"));
        command
            .args(["--host", "127.0.0.1", "--port", "0", "--env-path", env.path_str(), "--exit-on-stdin-eof"])
            .env_remove("RAYFINE_TOKEN")
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        adjust(&mut command);
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "listening");
        let port = first["port"].as_u64().unwrap() as u16;
        let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        (RunningServer { child, port, stderr_log, _log_dir: log_dir }, second)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with a private state folder; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], state: &Path) -> (i32, String, String) {
    cli_with_env(args, state, &[])
}

/// Runs the CLI with extra environment variables.
pub fn cli_with_env(args: &[&str], state: &Path, vars: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rayfine"))
        .args(args)
        .envs(vars.iter().copied())
        .env("RAYFINE_STATE_DIR", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A blocking JSON POST with reqwest's async client on a throwaway runtime is overkill; tests
/// use this tiny HTTP/1.1 client over std's TcpStream, which also keeps them honest about the
/// raw wire format.
pub fn http(method: &str, url: &str, body: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response[9..12].parse().unwrap();
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, json)
}

/// Runs one ignored test of this binary in a child process (a fresh registry, handlers and
/// process to kill), and waits for it.
pub fn run_child(test: &str, envs: &[(&str, &str)]) -> std::process::Output {
    child_command(test, envs).output().unwrap()
}

/// Starts one ignored test of this binary in a child process, stdout piped.
pub fn spawn_child(test: &str, envs: &[(&str, &str)]) -> Child {
    child_command(test, envs).stdout(Stdio::piped()).spawn().unwrap()
}

fn child_command(test: &str, envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"]).env("RAYFINE_TEST_CHILD", "1").envs(envs.iter().copied());
    command
}

/// Whether this process is such a child.
pub fn in_child() -> bool {
    std::env::var_os("RAYFINE_TEST_CHILD").is_some()
}

/// Reads the child's stdout until a line holds `needle`; panics after `within`.
pub fn wait_for_line(child: &mut Child, needle: &str, within: Duration) {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut found = false;
        // Reads to the end, so the child never writes into a closed pipe after the line.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !found && line.contains(&needle) {
                found = true;
                let _ = tx.send(Ok(()));
            }
            if !found {
                seen.push(line);
            }
        }
        if !found {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(within) {
        Ok(Ok(())) => {}
        Ok(Err(output)) => panic!("the child ended without printing the line; its output:\n{output}"),
        Err(_) => panic!("the child did not print the line within {within:?}"),
    }
}

/// `rayfine bench --quick --no-docker --only SECTION` from the repository root, with `vars` set;
/// asserts that it succeeded and returns its JSON report.
pub fn quick_bench(section: &str, vars: &[(&str, &std::ffi::OsStr)]) -> serde_json::Value {
    let scratch = tempfile::tempdir().unwrap();
    let output = scratch.path().join("bench.json");
    let result = Command::new(env!("CARGO_BIN_EXE_rayfine"))
        .args(["bench", "--quick", "--no-docker", "--only", section, "--output"])
        .arg(&output)
        .current_dir(repo())
        .env("RAYFINE_STATE_DIR", scratch.path())
        .env_remove("RAYFINE_SERVER_BIN")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(result.status.success(), "rayfine bench --only {section} failed:\n{}", String::from_utf8_lossy(&result.stderr));
    serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap()
}

/// The median of the bench report's row whose `what` contains `needle`.
pub fn bench_figure(report: &serde_json::Value, needle: &str) -> f64 {
    let rows = report["rows"].as_array().unwrap();
    let row = rows.iter().find(|row| row["what"].as_str().unwrap().contains(needle)).unwrap_or_else(|| panic!("no row `{needle}` in {report:#}"));
    row["median"]["value"].as_f64().unwrap()
}
