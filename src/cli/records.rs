//! Records of kept environments (`rayfine run --keep`), so later commands can find them.
//!
//! One JSON file per environment in the state folder, readable by the owner only: it holds the
//! token. A record whose server process is gone is stale and is removed when seen.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// What a later `rayfine call` needs to reach a kept environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Registry id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Server base URL.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// Server process id, which is also its process group.
    pub pid: u32,
    /// What was loaded (folder path or image).
    pub source: String,
    /// The container, for Docker mode (then `pid` is 0 and the engine says whether it runs).
    #[serde(default)]
    pub container_id: Option<String>,
    /// `function` or `http`: how calls reach it (`/call`, or `POST /{method}` on its own server).
    /// Absent from records written before it existed (see [`Record::env_type`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_type: Option<String>,
    /// The Docker engine of the container, when not this machine's (`tcp://host:port`, `ssh://user@host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Record {
    /// The record of a started environment (a folder's path or an image as `source`); it holds
    /// the token, so later commands can call it.
    pub fn of(env: &rayfine::EnvironmentWrapper, source: String) -> Record {
        Record {
            id: env.id().into(),
            name: env.name().into(),
            url: env.url().into(),
            token: env.token().unwrap_or_default().to_string(),
            pid: env.pid().unwrap_or(0),
            source,
            container_id: env.container_id().map(str::to_string),
            env_type: Some(env.env_type().as_str().to_string()),
            host: env.docker_host().filter(|h| **h != rayfine::DockerHost::Local).map(|h| h.to_string()),
        }
    }

    /// The engine its container is on.
    pub fn docker_host(&self) -> anyhow::Result<rayfine::DockerHost> {
        match &self.host {
            Some(text) => rayfine::DockerHost::parse(text).with_context(|| format!("the record of {}", self.id)),
            None => Ok(rayfine::DockerHost::Local),
        }
    }
}

impl Record {
    /// How the environment is served: as recorded; for an older record, what its container's
    /// label says; else function-based (a process-mode environment always is). An unreadable
    /// value is refused, not guessed.
    pub async fn env_type(&self) -> anyhow::Result<rayfine::EnvType> {
        let recorded = match (&self.env_type, &self.container_id) {
            (Some(recorded), _) => Some(recorded.clone()),
            (None, Some(container)) => rayfine::docker::list_managed_containers_on(&self.docker_host()?)
                .await
                .ok()
                .and_then(|containers| containers.into_iter().find(|c| container.starts_with(&c.container_id)))
                .map(|c| c.env_type)
                .filter(|t| !t.is_empty()),
            (None, None) => None,
        };
        match recorded {
            Some(text) => text.parse().with_context(|| format!("the record of {} names an unknown environment type `{text}`", self.id)),
            None => Ok(rayfine::EnvType::Function),
        }
    }
}

fn path_of(id: &str) -> PathBuf {
    rayfine::state_dir().join(format!("{id}.json"))
}

/// Saves a record, owner-only.
pub fn save(record: &Record) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = rayfine::state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = path_of(&record.id);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(record)?)?;
    Ok(())
}

/// Every record whose server is still running; stale ones are deleted.
pub fn live() -> Vec<Record> {
    let (live, stale): (Vec<Record>, Vec<Record>) = all().into_iter().partition(|r| r.container_id.is_some() || is_alive(r.pid));
    for record in stale {
        forget(&record.id);
    }
    live
}

/// Every record, by id.
fn all() -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(rayfine::state_dir()) else { return vec![] };
    let mut records: Vec<Record> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter_map(|path| std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()))
        .collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
}

/// The record with this id, or the only one with this name, live or not (a caller explains a
/// stopped one).
pub fn find(id_or_name: &str) -> anyhow::Result<Record> {
    let records = all();
    if let Some(record) = records.iter().find(|r| r.id == id_or_name) {
        return Ok(record.clone());
    }
    let named: Vec<&Record> = records.iter().filter(|r| r.name == id_or_name).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no running environment with id or name `{id_or_name}` (see `rayfine ps`)"),
        many => bail!(
            "{} environments are named `{id_or_name}`; use an id: {}",
            many.len(),
            many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Deletes a record and its log.
pub fn forget(id: &str) {
    let _ = std::fs::remove_file(path_of(id));
    let _ = std::fs::remove_file(rayfine::state_dir().join(format!("{id}.log")));
}

/// The last `n` lines of a kept process-mode environment's log, if it has one.
pub fn last_log_lines(id: &str, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(rayfine::state_dir().join(format!("{id}.log"))).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Whether a process with this id runs: it exists and is not a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    rayfine::labels::is_running(pid)
}

/// Stops a kept environment's server and its worker: SIGTERM to the group, then SIGKILL.
pub fn stop(record: &Record) {
    if !is_alive(record.pid) {
        forget(&record.id);
        return;
    }
    let group = -(record.pid as i32);
    // SAFETY: plain syscalls on the group the record names; the record is live (checked above).
    unsafe {
        libc::kill(group, libc::SIGTERM);
    }
    for _ in 0..30 {
        if !is_alive(record.pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if is_alive(record.pid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
    }
    forget(&record.id);
}
