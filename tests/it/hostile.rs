//! Hostile input: thousands of malformed requests against the real server. Each must get a JSON
//! 4xx in the protocol's error shape, none may crash or hang it, and it must keep serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{http, EnvCopy, RunningServer};

const TOKEN: &str = "hostile-test-token";

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One raw HTTP/1.1 request; returns the status and body, or why there was no answer.
fn send(port: u16, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(|e| format!("write: {e}"))?;
    // The server may answer (413) and close before taking a giant body: not an error.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status line: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The request is hostile: the answer must be a 4xx whose body is the protocol's error shape.
fn check(outcome: Result<(u16, String), String>) -> Result<u16, String> {
    let (status, body) = outcome?;
    if !(400..500).contains(&status) {
        return Err(format!("status {status}: {body}"));
    }
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|_| format!("status {status}, body not JSON: {body:?}"))?;
    if value["status"] != "error" || !value["error"]["type"].is_string() || !value["detail"].is_string() {
        return Err(format!("status {status}, not the error shape: {value}"));
    }
    Ok(status)
}

/// Requests that must all be refused, by category.
fn hostile_requests(rng: &mut Rng) -> Vec<(&'static str, String, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, String, Vec<u8>)> = Vec::new();
    let mut push = |category: &'static str, path: &str, body: Vec<u8>| out.push((category, "POST".to_string(), path.to_string(), body));
    let valid = r#"{"method":"echo","args":[],"kwargs":{"text":"hello world"}}"#;
    for _ in 0..2000 {
        let len = rng.below(300);
        let mut body = rng.bytes(len);
        body.retain(|b| *b != b'{' || rng.below(2) == 0);
        push("random bytes", "/call", body);
    }
    for _ in 0..1000 {
        let cut = rng.below(valid.len() - 1);
        push("truncated JSON", "/call", valid.as_bytes()[..cut].to_vec());
    }
    let wrong = [
        r#"{"method":5}"#,
        r#"{"method":null}"#,
        r#"{"method":["echo"]}"#,
        r#"{"method":{"name":"echo"}}"#,
        r#"{"method":"echo","args":{"a":1}}"#,
        r#"{"method":"echo","args":"text"}"#,
        r#"{"method":"echo","args":12}"#,
        r#"{"method":"echo","kwargs":[1,2]}"#,
        r#"{"method":"echo","kwargs":"text"}"#,
        r#"{"method":"echo","timeout":"soon"}"#,
        r#"{"method":"echo","timeout":-1}"#,
        r#"{"method":"echo","timeout":0}"#,
        r#"{"method":"echo","timeout":1e308}"#,
        r#"{"method":"echo","extra":1}"#,
        r#"[]"#,
        r#""echo""#,
        r#"null"#,
        r#"{}"#,
        r#"{"method":"add","kwargs":{"a":1}}"#,
        r#"{"method":"add","kwargs":{"a":1,"b":2,"c":3}}"#,
        r#"{"method":"echo","args":[1,2,3,4]}"#,
    ];
    for _ in 0..10 {
        for body in wrong {
            push("wrong types", "/call", body.as_bytes().to_vec());
        }
    }
    let numbers = ["1e999999", "-1e400", "NaN", "Infinity", "-Infinity", "1e", "0x10", "01", "1.", ".5", "+1"];
    let big_int = "9".repeat(5000);
    for _ in 0..10 {
        for n in numbers.iter().copied().chain([big_int.as_str()]) {
            push("huge or bad numbers", "/call", format!(r#"{{"method":"echo","kwargs":{{"text":{n}}}}}"#).into_bytes());
            push("huge or bad numbers", "/echo", format!(r#"{{"text":{n}}}"#).into_bytes());
        }
    }
    // serde_json's limit is 128 levels; anything deeper is refused before Python sees it.
    for depth in [1_000, 10_000, 100_000] {
        for path in ["/call", "/echo"] {
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let body = if path == "/call" { format!(r#"{{"method":"echo","kwargs":{{"text":{nested}}}}}"#) } else { format!(r#"{{"text":{nested}}}"#) };
            push("deep nesting", path, body.into_bytes());
            push("deep nesting", path, "{\"a\":".repeat(depth.min(20_000)).into_bytes());
        }
    }
    for _ in 0..100 {
        let mut body = br#"{"method":"echo","kwargs":{"text":"ab"#.to_vec();
        // 0xC0, 0xC1 and 0xF5..=0xFF never occur in UTF-8.
        let len = 1 + rng.below(6);
        body.extend(rng.bytes(len).into_iter().map(|b| [0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF][b as usize % 6]));
        body.extend_from_slice(br#""}}"#);
        push("invalid UTF-8", "/call", body);
        let mut method = br#"{"method":""#.to_vec();
        method.extend([0xff, 0xfe, b'x']);
        method.extend_from_slice(br#""}"#);
        push("invalid UTF-8", "/call", method);
    }
    let names = [
        "../x", "a/b", "__class__", "__init__", "__dict__", "_private", "", " ", "echo ", "ECHO", "asyncio", "json", "os", "sys",
        "\u{0}", "echo\u{0}", "..", ".", "x.y", "echo.__globals__", "Actor", "env", "__import__", "eval", "exec", "open",
    ];
    let long_name = "x".repeat(10_000);
    for _ in 0..8 {
        for name in names.iter().copied().chain([long_name.as_str()]) {
            push("method names", "/call", serde_json::json!({"method": name}).to_string().into_bytes());
        }
    }
    let paths = [
        "/..%2Fx", "/a/b", "/__class__", "/__init__", "/_private", "/%00", "/echo%00", "/..", "/x%2F..%2Fecho", "/asyncio", "/os",
        "/call/extra", "/methods/x", "/health/x", "/_rayfine/other", "/%FF%FE",
    ];
    for _ in 0..8 {
        for path in paths {
            push("method names (path)", path, b"{}".to_vec());
        }
    }
    for _ in 0..3 {
        out.push(("wrong HTTP method", "GET".into(), "/call".into(), Vec::new()));
        out.push(("wrong HTTP method", "PUT".into(), "/methods".into(), Vec::new()));
        out.push(("wrong HTTP method", "DELETE".into(), "/echo".into(), Vec::new()));
        out.push(("wrong HTTP method", "POST".into(), "/health".into(), Vec::new()));
    }
    out
}

#[test]
fn thousands_of_malformed_requests_get_json_4xx_and_the_server_keeps_serving() {
    let env = EnvCopy::of("echo");
    let (mut server, ready) =
        RunningServer::start(&env, &[("RAYFINE_TOKEN", TOKEN), ("RAYFINE_BODY_TIMEOUT", "1"), ("RAYFINE_MAX_BODY_BYTES", "1048576")]);
    assert_eq!(ready["event"], "ready");
    let port = server.port;

    // A steady caller beside the attack: every one of its calls must succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        let url = server.url("/call");
        std::thread::spawn(move || {
            let mut calls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = http("POST", &url, r#"{"method":"echo","kwargs":{"text":"still here"}}"#, Some(TOKEN));
                assert_eq!((status, &body["result"]), (200, &serde_json::json!("still here")));
                calls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            calls
        })
    };

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let requests = hostile_requests(&mut rng);
    let mut per_category: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut wrong = Vec::new();
    for (category, method, path, body) in &requests {
        *per_category.entry(category).or_default() += 1;
        if let Err(why) = check(send(port, method, path, body)) {
            wrong.push(format!("{category}: {method} {path} {:?} -> {why}", String::from_utf8_lossy(&body[..body.len().min(80)])));
        }
    }

    // Giant bodies: over the limit, declared and chunked-free; answered 413 without reading it all.
    let giant = vec![b' '; 3 * 1024 * 1024];
    for _ in 0..3 {
        match check(send(port, "POST", "/call", &giant)) {
            Ok(413) => {}
            other => wrong.push(format!("giant body: {other:?}")),
        }
    }
    *per_category.entry("giant bodies").or_default() += 3;

    // Slow bodies: a declared body that never finishes arriving gets 408 after the body timeout,
    // while other requests are served.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "POST /call HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"method\":").unwrap();
        slow.push(stream);
    }
    let t = Instant::now();
    for mut stream in slow {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        match check(text.get(9..12).and_then(|s| s.parse().ok()).map(|s| (s, body)).ok_or_else(|| format!("no answer: {text:?}"))) {
            Ok(408) => {}
            other => wrong.push(format!("slow body: {other:?}")),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10), "slow bodies were not cut off by the 1 s body timeout");
    *per_category.entry("slow bodies").or_default() += 20;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let steady_calls = steady.join().expect("the steady caller's calls all succeeded");
    assert!(server.child.try_wait().unwrap().is_none(), "the server died");
    assert_eq!(http("GET", &server.url("/health"), "", None).0, 200);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    let total: usize = per_category.values().sum();
    println!("malformed requests: {total} ({per_category:?}); wrong answers: {}; steady calls meanwhile: {steady_calls}", wrong.len());
    assert!(wrong.is_empty(), "{} of {total} hostile requests got a wrong answer:\n{}", wrong.len(), wrong.iter().take(30).cloned().collect::<Vec<_>>().join("\n"));
    drop(server);
    env.assert_no_process_left();
}
