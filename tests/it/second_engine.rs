//! A second Docker engine, as a second host: its own network namespace with its own address
//! (a veth pair to this machine), its own data root, exec root, containerd and socket, listening
//! on plain TCP at that address. Dropping it stops the daemon and removes everything it made:
//! processes, mounts, folders, cgroups, the namespace and the veth pair.
//!
//! It is started with `nsenter --net` rather than `ip netns exec`, which remounts /sys and so
//! loses the cgroup v1 mounts dockerd needs, and with a config file of its own (the host's
//! daemon.json sets a data root). It never runs in this machine's namespace: a second dockerd
//! there with `--bridge=none` deletes the first engine's docker0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rayfine::DockerHost;

use super::util::processes_mentioning;

/// The engine's port on its address, plain and with TLS.
const PORT: u16 = 2375;
const TLS_PORT: u16 = 2376;

pub struct SecondEngine {
    /// The network namespace it runs in.
    netns: String,
    /// Its folder: data root, exec root, socket, log.
    dir: PathBuf,
    /// The dockerd process (nsenter execs into it).
    daemon: Child,
    /// Its address, in 10.231.N.0/24.
    pub address: String,
    /// How Rayfine names it.
    pub host: DockerHost,
    /// The Docker CLI's TLS flags for it, when it speaks TLS.
    cli_tls: Vec<String>,
    /// An sshd in its namespace, when started (see [`SecondEngine::start_sshd`]).
    sshd: Option<Child>,
}

/// How to reach a second engine over SSH: its `ssh://` host and the ssh command (own key and
/// known hosts, no user configuration) for `RAYFINE_SSH_COMMAND`.
pub struct SshLogin {
    /// `ssh://root@ADDRESS?socket=/tmp/rfeN/docker.sock`.
    pub url: String,
    /// `ssh -F /dev/null -i KEY -o UserKnownHostsFile=FILE ...`.
    pub ssh_command: String,
}

/// A CA, the engine's server certificate for its address, and a client certificate, made with
/// openssl: `ca.pem`, `server-cert.pem`, `server-key.pem`, and the client's `cert.pem` and
/// `key.pem` (Docker's layout for a client's folder).
pub fn make_certificates(dir: &Path, address: &str) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(output.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    };
    std::fs::write(dir.join("server.ext"), format!("subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n")).unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rayfine-test-ca"]);
    for (name, subject) in [("server", "/CN=rayfine-test-engine"), ("client", "/CN=rayfine-test-client")] {
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}-key.pem"), "-out", &format!("{name}.csr"), "-subj", subject]);
        run(&["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-out", &format!("{name}-cert.pem"), "-days", "2", "-extfile", &format!("{name}.ext")]);
    }
    std::fs::copy(dir.join("client-cert.pem"), dir.join("cert.pem")).unwrap();
    std::fs::copy(dir.join("client-key.pem"), dir.join("key.pem")).unwrap();
}

impl SecondEngine {
    /// Starts one and waits until it answers; panics (after tearing down) with its log if not.
    pub fn start() -> SecondEngine {
        SecondEngine::start_with(None)
    }

    /// One that speaks only TLS, with client certificates made in `certs` (see
    /// [`make_certificates`]), on port 2376.
    pub fn start_tls(certs: &Path) -> SecondEngine {
        SecondEngine::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> SecondEngine {
        // A number is claimed by making its namespace, which fails if another test (of this run
        // or of another running at once) has it; nothing of another's is ever torn down.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let first = (std::process::id() % 50) * 5;
        let n = (0..250)
            .map(|k| (first + NEXT.fetch_add(1, Ordering::SeqCst) + k) % 250 + 1)
            .find(|n| Command::new("ip").args(["netns", "add", &format!("rfeng{n}")]).output().is_ok_and(|o| o.status.success()))
            .expect("a free network namespace name rfeng1..rfeng250 (ip netns add)");
        let netns = format!("rfeng{n}");
        let (outside, inside) = (format!("rfe{n}a"), format!("rfe{n}b"));
        let address = format!("10.231.{n}.2");
        // Short: containerd's socket paths under it must fit in 108 bytes.
        let dir = PathBuf::from(format!("/tmp/rfe{n}"));
        // What a crashed earlier run with this number left outside the namespace.
        let _ = Command::new("ip").args(["link", "del", &outside]).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("exec")).unwrap();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        for args in [
            vec!["link", "add", &outside, "type", "veth", "peer", "name", &inside],
            vec!["link", "set", &inside, "netns", &netns],
            vec!["addr", "add", &format!("10.231.{n}.1/24"), "dev", &outside],
            vec!["link", "set", &outside, "up"],
            vec!["netns", "exec", &netns, "ip", "addr", "add", &format!("{address}/24"), "dev", &inside],
            vec!["netns", "exec", &netns, "ip", "link", "set", &inside, "up"],
            vec!["netns", "exec", &netns, "ip", "link", "set", "lo", "up"],
            vec!["netns", "exec", &netns, "ip", "route", "add", "default", "via", &format!("10.231.{n}.1")],
        ] {
            let output = Command::new("ip").args(&args).output().expect("run ip (iproute2)");
            if !output.status.success() {
                teardown(&netns, &outside, &dir);
                panic!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
            }
        }
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let socket = dir.join("docker.sock");
        let port = if certs.is_some() { TLS_PORT } else { PORT };
        let (daemon_tls, cli_tls): (Vec<String>, Vec<String>) = match certs {
            Some(certs) => {
                make_certificates(certs, &address);
                let file = |name: &str| path(&certs.join(name));
                (
                    vec!["--tlsverify".into(), "--tlscacert".into(), file("ca.pem"), "--tlscert".into(), file("server-cert.pem"), "--tlskey".into(), file("server-key.pem")],
                    vec!["--tlsverify".into(), "--tlscacert".into(), file("ca.pem"), "--tlscert".into(), file("cert.pem"), "--tlskey".into(), file("key.pem")],
                )
            }
            None => (vec!["--tls=false".into()], Vec::new()),
        };
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg("dockerd")
            .args(["--config-file", &path(&dir.join("daemon.json"))])
            .args(["--data-root", &path(&dir.join("data"))])
            .args(["--exec-root", &path(&dir.join("exec"))])
            .args(["--pidfile", &path(&dir.join("docker.pid"))])
            .args(["-H", &format!("unix://{}", path(&socket))])
            .args(["-H", &format!("tcp://{address}:{port}")])
            .args(&daemon_tls)
            .args(["--storage-driver", "fuse-overlayfs", "--cgroup-parent", &netns])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd under nsenter");
        let host = match certs {
            Some(certs) => DockerHost::parse(&format!("tcp://{address}:{port}?certs={}", path(certs))).unwrap(),
            None => DockerHost::Tcp { host: address.clone(), port, certs: None },
        };
        let engine = SecondEngine { netns, dir, daemon, address, host, cli_tls, sshd: None };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default();
                panic!("the second engine did not answer within 60 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    /// Starts an OpenSSH server on the engine's address (port 22, in its namespace) that lets
    /// root in with a key made here, and waits until it accepts a login.
    pub fn start_sshd(&mut self) -> SshLogin {
        let keygen = |file: &str| {
            let output = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(self.dir.join(file)).output().expect("run ssh-keygen (openssh-client)");
            assert!(output.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&output.stderr));
        };
        keygen("host_key");
        keygen("client_key");
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap();
        std::fs::write(self.dir.join("authorized_keys"), read("client_key.pub")).unwrap();
        let host_key = read("host_key.pub").split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(self.dir.join("known_hosts"), format!("{} {host_key}\n", self.address)).unwrap();
        let dir = path(&self.dir);
        std::fs::write(
            self.dir.join("sshd_config"),
            format!(
                "ListenAddress {}:22\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\nPidFile {dir}/sshd.pid\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nAllowStreamLocalForwarding yes\nLogLevel VERBOSE\n",
                self.address
            ),
        )
        .unwrap();
        // sshd's privilege separation folder; Debian's package makes it only at boot.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(self.dir.join("sshd.log")).unwrap();
        let sshd = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["/usr/sbin/sshd", "-D", "-e", "-f", &format!("{dir}/sshd_config")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sshd (openssh-server) under nsenter");
        self.sshd = Some(sshd);
        let login = SshLogin {
            url: format!("ssh://root@{}?socket={}", self.address, path(&self.dir.join("docker.sock"))),
            ssh_command: format!("ssh -F /dev/null -i {dir}/client_key -o IdentitiesOnly=yes -o UserKnownHostsFile={dir}/known_hosts -o StrictHostKeyChecking=yes"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = Command::new("sh").arg("-c").arg(format!("{} -o BatchMode=yes root@{} true", login.ssh_command, self.address)).stdin(Stdio::null()).output().unwrap();
            if probe.status.success() {
                return login;
            }
            if Instant::now() > deadline {
                panic!("sshd did not let the test key in within 30 s: {}\nits log:\n{}", String::from_utf8_lossy(&probe.stderr), read("sshd.log"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The engine's address as the Docker CLI takes it.
    pub fn url(&self) -> String {
        self.host.engine_url()
    }

    /// Runs the Docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").args(&self.cli_tls).arg("-H").arg(self.url()).args(args).output().expect("run docker")
    }

    /// The non-empty lines the Docker CLI prints against this engine.
    pub fn docker_lines(&self, args: &[&str]) -> Vec<String> {
        let output = self.docker(args);
        String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    }

    /// Containers of a test scope on this engine.
    pub fn containers(&self, scope: &str) -> Vec<String> {
        self.docker_lines(&["ps", "-a", "--filter", &format!("label={}={scope}", super::docker_util::SCOPE_LABEL), "--format", "{{.ID}} {{.Status}} {{.Names}}"])
    }

    /// Waits (bounded) until no container of the scope is left here; panics naming them.
    pub fn assert_no_container_left(&self, scope: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.containers(scope);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "containers left on the second engine:\n{}", left.join("\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        // SAFETY: signals the daemon this helper started.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Before the teardown frees the address (the namespace's number) for another test's engine.
        self.remove_cache_lock_files();
        let outside = self.netns.replace("rfeng", "rfe") + "a";
        teardown(&self.netns, &outside, &self.dir);
    }
}

impl SecondEngine {
    /// Removes the image cache lock's files named by the addresses the tests reach this engine
    /// by (plain, TLS, SSH), which is gone for good: each engine has new ones, and they would
    /// pile up in /tmp run after run. Its identity's stay: it shares the first engine's (one
    /// machine, one key), whose lock other tests may hold.
    fn remove_cache_lock_files(&self) {
        let ssh = format!("ssh://root@{}?socket={}", self.address, path(&self.dir.join("docker.sock")));
        let hosts = [
            Some(self.host.clone()),
            Some(DockerHost::Tcp { host: self.address.clone(), port: PORT, certs: None }),
            Some(DockerHost::Tcp { host: self.address.clone(), port: TLS_PORT, certs: None }),
            DockerHost::parse(&ssh).ok(),
        ];
        for file in hosts.iter().flatten().flat_map(rayfine::docker::image_cache_lock_files) {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Removes what an engine numbered like this left: processes still running from its folder
/// (containerd, shims, containers' processes) or in its namespace (sshd's sessions), mounts under
/// it, the folder, the namespace, the veth pair and its cgroups. Quiet about what is not there.
fn teardown(netns: &str, outside: &str, dir: &Path) {
    // With its slash, so engine 3's teardown leaves engine 31 alone.
    let folder = format!("{}/", path(dir));
    for _ in 0..50 {
        let in_namespace = Command::new("ip").args(["netns", "pids", netns]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let left: Vec<i32> = processes_mentioning(&folder)
            .iter()
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .chain(in_namespace.split_whitespace().filter_map(|pid| pid.parse().ok()))
            .collect();
        if left.is_empty() {
            break;
        }
        for pid in left {
            // SAFETY: processes started from this test engine's folder.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&folder)).collect();
    // Deepest first.
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in under {
        let _ = Command::new("umount").args(["-l", mount]).output();
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = Command::new("ip").args(["netns", "del", netns]).output();
    let _ = Command::new("ip").args(["link", "del", outside]).output();
    // The engine's --cgroup-parent, named like its namespace, in every hierarchy: the runtime
    // makes it for the first container and nobody removes it.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        remove_cgroup(&hierarchy.path().join(netns));
    }
}

/// Removes an empty cgroup and the empty cgroups below it, deepest first (a cgroup's own files
/// go with its rmdir). Quiet about what is not there or still in use.
fn remove_cgroup(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
