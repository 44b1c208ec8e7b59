//! Runs `wrk` (Debian package `wrk`) against a URL and reads its figures from a Lua `done` hook,
//! so nothing depends on the layout of wrk's human-readable report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// One load: `connections` keep-alive connections sending the same request for `duration`.
pub struct Load<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub duration: Duration,
    /// POST body (JSON); `None` sends `GET`.
    pub body: Option<&'a str>,
    /// Bearer token; written into the script file (mode 0600), never onto a command line.
    pub token: Option<&'a str>,
    /// Per-request timeout: an answer slower than this counts as an error.
    pub timeout: Duration,
}

/// What wrk measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Answers received, whatever their status.
    pub requests: u64,
    pub per_second: f64,
    /// Answers with a status other than 2xx/3xx.
    pub bad_status: u64,
    /// Connect, read and write errors and timeouts.
    pub failures: u64,
}

impl Measured {
    /// Successful answers over everything attempted, in percent.
    pub fn success_percent(&self) -> f64 {
        let attempted = self.requests + self.failures;
        if attempted == 0 {
            return 0.0;
        }
        100.0 * (self.requests - self.bad_status.min(self.requests)) as f64 / attempted as f64
    }
}

/// The settings line the report quotes, so figures can be compared with other servers.
pub fn describe(connections: u32, duration: Duration) -> String {
    format!("wrk -t{} -c{connections} -d{}s --timeout … (keep-alive, loopback)", threads(connections), duration.as_secs())
}

fn threads(connections: u32) -> u32 {
    connections.clamp(1, 2)
}

/// Runs wrk once; `scratch` holds the generated script.
pub fn run(load: &Load<'_>, scratch: &Path) -> anyhow::Result<Measured> {
    let script = scratch.join("load.lua");
    write_private(&script, &lua_script(load)).with_context(|| format!("cannot write {}", script.display()))?;
    let output = Command::new("wrk")
        .arg("-t")
        .arg(threads(load.connections).to_string())
        .arg("-c")
        .arg(load.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg(format!("{}s", load.timeout.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(load.url)
        .output();
    let _ = std::fs::remove_file(&script);
    let output = match output {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!("`wrk` is not installed: it measures the HTTP figures (Debian package `wrk`)"),
        Err(err) => return Err(err).context("cannot run wrk"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RAYFINE_WRK ")) else {
        bail!("wrk gave no figures (exit {}): {}{}", output.status, stdout.trim(), String::from_utf8_lossy(&output.stderr).trim());
    };
    parse(line).with_context(|| format!("cannot read wrk's figures from `{line}`"))
}

/// `requests duration_us connect read write status timeout p50 p99 mean`.
fn parse(line: &str) -> anyhow::Result<Measured> {
    let numbers: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    let [requests, duration_us, connect, read, write, status, timeout, p50, p99, mean] = numbers[..] else {
        bail!("expected 10 numbers, got {}", numbers.len());
    };
    Ok(Measured {
        p50_us: p50,
        p99_us: p99,
        mean_us: mean,
        requests: requests as u64,
        per_second: if duration_us > 0.0 { requests / (duration_us / 1e6) } else { 0.0 },
        bad_status: status as u64,
        failures: (connect + read + write + timeout) as u64,
    })
}

fn lua_script(load: &Load<'_>) -> String {
    let mut script = String::new();
    if let Some(body) = load.body {
        script.push_str("wrk.method = \"POST\"\n");
        script.push_str(&format!("wrk.body = {}\n", lua_string(body)));
        script.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    if let Some(token) = load.token {
        script.push_str(&format!("wrk.headers[\"Authorization\"] = {}\n", lua_string(&format!("Bearer {token}"))));
    }
    script.push_str(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RAYFINE_WRK %d %d %d %d %d %d %d %.1f %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"#,
    );
    script
}

/// A Lua long string whose brackets cannot occur in `text`.
fn lua_string(text: &str) -> String {
    let mut level = 0;
    loop {
        let eq = "=".repeat(level);
        let close = format!("]{eq}]");
        // The first closing bracket must be ours, also when the text ends in part of one.
        if format!("{text}{close}").find(&close) == Some(text.len()) {
            return format!("[{eq}[{text}{close}");
        }
        level += 1;
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_done_hook_line() {
        let m = parse("1000 2000000 0 1 0 10 2 80.0 210.5 95.5").unwrap();
        assert_eq!(m.requests, 1000);
        assert_eq!(m.per_second, 500.0);
        assert_eq!((m.p50_us, m.p99_us, m.mean_us), (80.0, 210.5, 95.5));
        assert_eq!((m.bad_status, m.failures), (10, 3));
        assert!((m.success_percent() - 100.0 * 990.0 / 1003.0).abs() < 1e-9);
        assert!(parse("1 2 3").is_err());
    }

    #[test]
    fn lua_strings_survive_any_body() {
        assert_eq!(lua_string(r#"{"a":"]]"}"#), r#"[=[{"a":"]]"}]=]"#);
        assert_eq!(lua_string("plain"), "[[plain]]");
        assert_eq!(lua_string("a]"), "[=[a]]=]");
        assert_eq!(lua_string("a]="), "[[a]=]]");
    }
}
