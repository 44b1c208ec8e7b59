//! Against a stand-in Docker engine that answers everything but never finishes creating a
//! container: the start deadline covers every step, not only the wait for readiness, and what
//! the engine may have created is removed by its name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::util::cli_with_env;

/// Paths of the requests the stand-in engine received, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Serves a Docker API that stalls `POST /containers/create`; returns its address.
fn stalled_engine() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, &log));
        }
    });
    (addr, seen)
}

fn serve(stream: TcpStream, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        let _ = reader.read_exact(&mut body);
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
        // Without the API version prefix: `/v1.41/containers/create` → `/containers/create`.
        let path = match target.strip_prefix("/v") {
            Some(rest) => rest.find('/').map(|i| rest[i..].to_string()).unwrap_or(target.clone()),
            None => target.clone(),
        };
        seen.lock().unwrap().push(format!("{method} {path}"));
        let (status, answer) = match (method.as_str(), path.split('?').next().unwrap_or_default()) {
            ("GET", "/_ping") | ("HEAD", "/_ping") => (200, "OK".to_string()),
            ("GET", "/version") => (200, r#"{"ApiVersion":"1.41","Version":"20.10.0","MinAPIVersion":"1.12"}"#.to_string()),
            ("GET", p) if p.starts_with("/images/") => (200, r#"{"Id":"sha256:00","Config":{"Labels":{},"Cmd":["true"]}}"#.to_string()),
            ("POST", "/containers/create") => {
                // Never answered: the engine is stuck.
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            ("DELETE", _) => (204, String::new()),
            ("GET", "/containers/json") => (200, "[]".to_string()),
            _ => (404, r#"{"message":"No such container"}"#.to_string()),
        };
        let reason = if status == 200 { "OK" } else { "X" };
        let head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", answer.len());
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(answer.as_bytes())).is_err() {
            return;
        }
    }
}

#[test]
fn a_start_fails_at_its_deadline_while_the_engine_stalls_on_create_and_removes_it_by_name() {
    let (addr, seen) = stalled_engine();
    let state = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let docker_host = format!("tcp://{addr}");
    let (code, _, stderr) = cli_with_env(&["run", "stalled:v1", "--startup-timeout", "2"], state.path(), &[("DOCKER_HOST", &docker_host)]);
    let took = began.elapsed();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(code, 2, "{stderr}\nrequests: {seen:?}");
    assert!(stderr.contains("not ready after 2 s") && stderr.contains("had not created the container yet"), "{stderr}");
    // Far below bollard's own 120 s request timeout, which is all that bounded a create before.
    assert!(took < Duration::from_secs(60), "the start took {took:?}");
    let create = seen.iter().find(|r| r.starts_with("POST /containers/create")).expect("a create was asked for");
    let name = create.split("name=").nth(1).expect("the create names the container").split('&').next().unwrap().to_string();
    assert!(name.starts_with("rayfine-"), "{create}");
    assert!(seen.iter().any(|r| r.starts_with(&format!("DELETE /containers/{name}"))), "the stalled container is removed by its name: {seen:?}");
}
