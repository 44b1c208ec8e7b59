//! Text output for people.

use rayfine::protocol::MethodInfo;

use rayfine::build::{BuildProgress, BuildStage};
use rayfine::docker::{ManagedContainer, ManagedService};

use super::records::Record;

/// One line per method: signature, then the first line of its doc.
pub fn methods(methods: &[MethodInfo]) {
    let width = methods.iter().map(|m| m.name.len() + m.signature.len()).max().unwrap_or(0);
    for m in methods {
        let head = format!("{}{}", m.name, m.signature);
        let flavour = if m.is_async {
            "async "
        } else if m.endpoint.starts_with("GET ") {
            "GET "
        } else {
            ""
        };
        let doc = m.doc.lines().next().unwrap_or_default();
        println!("  {flavour:6}{head:width$}  {doc}");
    }
}

/// Kept process-mode environments and every container Rayfine started. Tokens are never shown.
pub fn ps(records: &[Record], containers: &[ManagedContainer], services: &[ManagedService], json: bool) {
    if json {
        let mut rows: Vec<_> = records
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "name": r.name, "mode": "process", "env_type": r.env_type.as_deref().unwrap_or("function"), "url": r.url, "pid": r.pid, "source": r.source}))
            .collect();
        rows.extend(containers.iter().map(|c| {
            serde_json::json!({
                "id": c.env_id, "name": c.name, "mode": "docker", "container_id": c.container_id, "image": c.image,
                "env_type": c.env_type, "state": c.state, "url": c.url(), "port": c.port, "owner_pid": c.owner_pid,
                "owner_alive": c.owner_alive, "keep": c.keep, "orphan": c.is_orphan(), "host": c.host, "pool": c.pool(),
            })
        }));
        rows.extend(services.iter().map(|s| {
            serde_json::json!({
                "id": s.env_id, "name": s.name, "mode": "swarm", "service_id": s.service_id, "host": s.host, "pool": s.pool(),
                "owner_pid": s.owner_pid, "owner_alive": s.owner_alive, "keep": s.keep, "orphan": s.is_orphan(),
            })
        }));
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    if records.is_empty() && containers.is_empty() && services.is_empty() {
        eprintln!("no environments are running");
        return;
    }
    // Where containers run, once some run elsewhere; the pool, once some are replicas.
    let elsewhere = containers.iter().any(|c| c.host != rayfine::DockerHost::Local) || services.iter().any(|s| s.host != rayfine::DockerHost::Local);
    let pooled = containers.iter().any(|c| c.pool().is_some()) || services.iter().any(|s| s.pool().is_some());
    let extra = |host: &str, pool: &str| {
        let mut text = String::new();
        if elsewhere {
            text.push_str(&format!("{host:<24} "));
        }
        if pooled {
            text.push_str(&format!("{pool:<24} "));
        }
        text
    };
    println!("{:<28} {:<16} {:<8} {:<10} {:<22} {:<16} {}SOURCE", "ID", "NAME", "MODE", "STATE", "URL", "OWNER", extra("HOST", "POOL"));
    for r in records {
        println!("{:<28} {:<16} {:<8} {:<10} {:<22} {:<16} {}{}", r.id, r.name, "process", "running", r.url, "kept", extra("local", "-"), r.source);
    }
    for c in containers {
        let url = c.url().unwrap_or_else(|| "-".into());
        let pool = c.pool().unwrap_or("-");
        let owner = owner(c.keep, c.owner_pid, c.owner_alive);
        println!("{:<28} {:<16} {:<8} {:<10} {:<22} {:<16} {}{}", c.env_id, c.name, "docker", c.state, url, owner, extra(&c.host.to_string(), pool), c.image);
    }
    for s in services {
        let pool = s.pool().unwrap_or("-");
        let owner = owner(s.keep, s.owner_pid, s.owner_alive);
        println!("{:<28} {:<16} {:<8} {:<10} {:<22} {:<16} {}service {}", s.env_id, s.name, "swarm", "-", "-", owner, extra(&s.host.to_string(), pool), s.service_name);
    }
}

/// Who owns an environment, for `ps`.
fn owner(keep: bool, pid: Option<u32>, alive: bool) -> String {
    match (keep, pid, alive) {
        (true, _, _) => "kept".to_string(),
        (false, Some(pid), true) => format!("pid {pid}"),
        (false, Some(pid), false) => format!("pid {pid} (gone)"),
        (false, None, _) => "unknown".to_string(),
    }
}

/// Streams build output: a spinner with the current step on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct BuildDisplay {
    bar: indicatif::ProgressBar,
}

impl BuildDisplay {
    pub fn new() -> BuildDisplay {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("valid template"));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        BuildDisplay { bar }
    }

    /// One line of build output.
    pub fn line(&self, progress: &BuildProgress) {
        let stage = match progress.stage {
            BuildStage::Environment => "environment",
            BuildStage::Server => "server",
        };
        if self.bar.is_hidden() {
            eprintln!("[{stage}] {}", progress.line);
        } else if progress.line.starts_with("Step ") {
            self.bar.println(format!("[{stage}] {}", progress.line));
            self.bar.set_message(format!("{} ({stage})", progress.tag));
        } else {
            let text: String = progress.line.chars().take(100).collect();
            self.bar.set_message(text);
        }
    }

    /// Clears the spinner.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
