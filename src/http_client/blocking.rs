//! HTTP/1.1 on plain TCP streams, for a caller that blocks a thread of its own (a Python thread,
//! the blocking facade): the request is written and the answer read by that very thread.
//!
//! Why not the async client with `block_on`: its connections are driven by a runtime's worker
//! threads, so every answer first wakes a worker, which then wakes the caller. On a VM each
//! wake-up of a sleeping thread costs tens of microseconds, and a trivial call from Python paid
//! two of them (≈ 100 µs more than the same call from async Rust). A thread that reads its own
//! socket pays one, like any blocking HTTP client.
//!
//! Only what the `/call` exchange needs: one request at a time per connection, `Content-Length`
//! or chunked answers, keep-alive with a pool of idle connections. A reused connection the server
//! has closed is noticed before the request is written (it reads as closed), so a request is
//! never sent twice: a call that may have run is never retried.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest a single read or write blocks before the caller's interruption check runs.
const SLICE: Duration = Duration::from_millis(50);

/// Largest header block accepted from a server.
const MAX_HEAD: usize = 64 * 1024;

/// Largest answer body accepted: far above any call's result, far below what would exhaust
/// memory if a broken server announced an absurd size.
const MAX_BODY: usize = 1 << 34;

/// Idle connections kept per server: as many threads as call at once, within reason.
const MAX_IDLE: usize = 256;

/// Why a blocking exchange did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// No answer before the deadline.
    #[error("no answer within the deadline")]
    Timeout,
    /// The caller's check asked to stop (a signal arrived).
    #[error("interrupted")]
    Interrupted,
    /// The server could not be reached, or closed the connection, or answered something that is
    /// not HTTP/1.1.
    #[error("{0}")]
    Transport(std::io::Error),
}

/// What a request is: method, path, headers and body; and when to give up.
pub struct Request<'a> {
    /// `POST`, `GET`.
    pub method: &'a str,
    /// The path after the base URL's own, e.g. `/call`.
    pub path: &'a str,
    /// The bearer token, if the server wants one.
    pub token: Option<&'a str>,
    /// A JSON body, if any.
    pub body: Option<&'a [u8]>,
    /// When to stop waiting.
    pub deadline: Instant,
}

/// One server's address and its idle connections.
pub struct BlockingTransport {
    /// `host:port`, for the Host header and for connecting.
    authority: String,
    /// The base URL's path, prefixed to every request's.
    prefix: String,
    /// Resolved once, on first use.
    addrs: Mutex<Vec<SocketAddr>>,
    idle: Mutex<Vec<TcpStream>>,
}

impl std::fmt::Debug for BlockingTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingTransport").field("authority", &self.authority).finish()
    }
}

impl BlockingTransport {
    /// A transport for `base` if it is a plain `http://` URL; `None` otherwise (HTTPS, a URL
    /// with user info), for which callers use the async client.
    pub fn for_base(base: &str) -> Option<BlockingTransport> {
        let rest = base.strip_prefix("http://")?;
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || prefix.contains(['?', '#']) {
            return None;
        }
        let authority = match authority.strip_suffix(':') {
            Some(bare) if !bare.ends_with(']') && bare.contains(':') => return None,
            Some(bare) => format!("{bare}:80"),
            None if has_port(authority) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        Some(BlockingTransport { authority, prefix: prefix.to_string(), addrs: Mutex::new(Vec::new()), idle: Mutex::new(Vec::new()) })
    }

    /// Sends `request` and returns the answer's status and body. `interrupted` runs whenever a
    /// read or write has blocked for [`SLICE`]; returning true abandons the request.
    pub fn send(&self, request: &Request<'_>, interrupted: &mut dyn FnMut() -> bool) -> Result<(u16, Vec<u8>), BlockingError> {
        let mut stream = match self.idle_connection() {
            Some(stream) => stream,
            None => self.connect(request.deadline, interrupted)?,
        };
        let head = self.head(request);
        let mut message = Vec::with_capacity(head.len() + request.body.map_or(0, <[u8]>::len));
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(request.body.unwrap_or_default());
        write_all(&mut stream, &message, request.deadline, interrupted)?;
        let answer = read_answer(&mut stream, request.method == "HEAD", request.deadline, interrupted)?;
        if answer.keep_alive {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(stream);
            }
        }
        Ok((answer.status, answer.body))
    }

    fn head(&self, request: &Request<'_>) -> String {
        let mut head = format!("{} {}{} HTTP/1.1\r\nHost: {}\r\n", request.method, self.prefix, request.path, self.authority);
        if let Some(token) = request.token {
            head.push_str("Authorization: Bearer ");
            head.push_str(token);
            head.push_str("\r\n");
        }
        if let Some(body) = request.body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head
    }

    /// An idle connection the server has not closed, if there is one. A connection the server
    /// closed (idle timeout, restart) reads as end of file or an error without blocking.
    fn idle_connection(&self) -> Option<TcpStream> {
        loop {
            let stream = self.idle.lock().pop()?;
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let mut probe = [0u8; 1];
            let open = matches!(stream.peek(&mut probe), Err(err) if err.kind() == ErrorKind::WouldBlock);
            if open && stream.set_nonblocking(false).is_ok() {
                return Some(stream);
            }
        }
    }

    fn connect(&self, deadline: Instant, interrupted: &mut dyn FnMut() -> bool) -> Result<TcpStream, BlockingError> {
        let addrs = self.resolve()?;
        let mut last = std::io::Error::new(ErrorKind::NotFound, format!("{} resolves to no address", self.authority));
        let count = addrs.len();
        for (i, addr) in addrs.into_iter().enumerate() {
            // Each address gets an even share of what is left, the last one all of it, so one
            // that drops packets does not keep the others from being tried.
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if i + 1 == count { left } else { left / (count - i) as u32 };
            match connect_one(addr, Instant::now() + budget, interrupted) {
                Ok(stream) => return Ok(stream),
                Err(BlockingError::Transport(err)) => last = err,
                Err(BlockingError::Timeout) if i + 1 < count => {
                    last = std::io::Error::new(ErrorKind::TimedOut, format!("connecting to {addr} timed out"));
                }
                Err(other) => return Err(other),
            }
        }
        // The name may point elsewhere by the next call.
        self.addrs.lock().clear();
        Err(BlockingError::Transport(last))
    }

    /// The authority's addresses, looked up once and kept until a connection fails.
    fn resolve(&self) -> Result<Vec<SocketAddr>, BlockingError> {
        let mut addrs = self.addrs.lock();
        if addrs.is_empty() {
            *addrs = self.authority.to_socket_addrs().map_err(BlockingError::Transport)?.collect();
        }
        Ok(addrs.clone())
    }
}

/// One connection attempt to `addr`, kept going until `deadline`: a non-blocking connect whose
/// completion is awaited in slices, so the caller's check runs and the attempt is never restarted.
fn connect_one(addr: SocketAddr, deadline: Instant, interrupted: &mut dyn FnMut() -> bool) -> Result<TcpStream, BlockingError> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(BlockingError::Transport)?;
    socket.set_nonblocking(true).map_err(BlockingError::Transport)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) || err.kind() == ErrorKind::WouldBlock => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BlockingError::Timeout);
            }
            let mut poll = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&socket), events: libc::POLLOUT, revents: 0 };
            let millis = left.min(SLICE).as_millis().max(1) as libc::c_int;
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, millis) };
            if ready > 0 {
                if let Some(err) = socket.take_error().map_err(BlockingError::Transport)? {
                    return Err(BlockingError::Transport(err));
                }
                break;
            }
            if ready < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                return Err(BlockingError::Transport(std::io::Error::last_os_error()));
            }
            if interrupted() {
                return Err(BlockingError::Interrupted);
            }
        },
        Err(err) => return Err(BlockingError::Transport(err)),
    }
    socket.set_nonblocking(false).map_err(BlockingError::Transport)?;
    let stream: TcpStream = socket.into();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Whether `authority` ends in `:port` (and is not a bare IPv6 address).
fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(colon) => {
            let port = &authority[colon + 1..];
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Sets the stream's timeout for the next blocking operation: the smaller of what is left and
/// [`SLICE`]. Fails with `Timeout` once the deadline has passed.
fn arm(stream: &TcpStream, deadline: Instant, write: bool) -> Result<(), BlockingError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(BlockingError::Timeout);
    }
    let slice = Some(left.min(SLICE));
    let set = if write { stream.set_write_timeout(slice) } else { stream.set_read_timeout(slice) };
    set.map_err(BlockingError::Transport)
}

/// Whether an I/O error is only a slice running out (or a signal), after which the caller's
/// check runs and the operation goes on.
fn is_slice_end(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

fn write_all(stream: &mut TcpStream, mut data: &[u8], deadline: Instant, interrupted: &mut dyn FnMut() -> bool) -> Result<(), BlockingError> {
    while !data.is_empty() {
        arm(stream, deadline, true)?;
        match stream.write(data) {
            Ok(0) => return Err(BlockingError::Transport(ErrorKind::WriteZero.into())),
            Ok(n) => data = &data[n..],
            Err(err) if is_slice_end(&err) => {
                if interrupted() {
                    return Err(BlockingError::Interrupted);
                }
            }
            Err(err) => return Err(BlockingError::Transport(err)),
        }
    }
    Ok(())
}

/// An answer: status, body, and whether the connection can carry another request.
struct Answer {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Reads from a stream into a buffer, slice by slice, until the deadline.
struct Reader<'a, 'b> {
    stream: &'a mut TcpStream,
    buffer: Vec<u8>,
    deadline: Instant,
    interrupted: &'b mut dyn FnMut() -> bool,
}

impl Reader<'_, '_> {
    /// Reads more bytes onto the buffer; `Ok(0)` at end of file.
    fn fill(&mut self) -> Result<usize, BlockingError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            arm(self.stream, self.deadline, false)?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(err) if is_slice_end(&err) => {
                    if (self.interrupted)() {
                        return Err(BlockingError::Interrupted);
                    }
                }
                Err(err) => return Err(BlockingError::Transport(err)),
            }
        }
    }

    /// Reads until the buffer holds at least `len` bytes.
    fn fill_to(&mut self, len: usize) -> Result<(), BlockingError> {
        while self.buffer.len() < len {
            if self.fill()? == 0 {
                return Err(closed("in the middle of the answer"));
            }
        }
        Ok(())
    }

    /// Reads until the buffer holds `\r\n` at or after `from`; returns where it starts.
    fn line_end(&mut self, from: usize) -> Result<usize, BlockingError> {
        loop {
            if let Some(at) = self.buffer[from..].windows(2).position(|w| w == b"\r\n") {
                return Ok(from + at);
            }
            if self.buffer.len() - from > MAX_HEAD {
                return Err(malformed("a chunk size line is too long"));
            }
            if self.fill()? == 0 {
                return Err(closed("in the middle of a chunked answer"));
            }
        }
    }
}

fn closed(when: &str) -> BlockingError {
    BlockingError::Transport(std::io::Error::new(ErrorKind::UnexpectedEof, format!("the server closed the connection {when}")))
}

fn malformed(what: &str) -> BlockingError {
    BlockingError::Transport(std::io::Error::new(ErrorKind::InvalidData, format!("the answer is not valid HTTP/1.1: {what}")))
}

fn read_answer(stream: &mut TcpStream, head_only: bool, deadline: Instant, interrupted: &mut dyn FnMut() -> bool) -> Result<Answer, BlockingError> {
    let mut reader = Reader { stream, buffer: Vec::with_capacity(4096), deadline, interrupted };
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&reader.buffer).map_err(|err| malformed(&err.to_string()))?;
        let httparse::Status::Complete(head_len) = parsed else {
            if reader.buffer.len() > MAX_HEAD {
                return Err(malformed("the header block is too long"));
            }
            if reader.fill()? == 0 {
                return Err(closed(if reader.buffer.is_empty() { "before answering" } else { "in the middle of the answer's head" }));
            }
            continue;
        };
        let status = response.code.unwrap_or(0);
        // 1xx answers (100 Continue) precede the real one.
        if (100..200).contains(&status) {
            reader.buffer.drain(..head_len);
            continue;
        }
        let mut keep_alive = response.version == Some(1);
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or("").trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().map_err(|_| malformed("Content-Length is not a number"))?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                keep_alive &= !value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"));
            }
        }
        reader.buffer.drain(..head_len);
        let body = if head_only || status == 204 || status == 304 {
            keep_alive &= reader.buffer.is_empty();
            Vec::new()
        } else if chunked {
            let body = read_chunked(&mut reader)?;
            keep_alive &= reader.buffer.is_empty();
            body
        } else if let Some(length) = length {
            if length > MAX_BODY {
                return Err(malformed("Content-Length is larger than any answer can be"));
            }
            reader.fill_to(length)?;
            keep_alive &= reader.buffer.len() == length;
            reader.buffer.truncate(length);
            std::mem::take(&mut reader.buffer)
        } else {
            // No length: the body runs to the end of the connection.
            while reader.fill()? > 0 {}
            keep_alive = false;
            std::mem::take(&mut reader.buffer)
        };
        return Ok(Answer { status, body, keep_alive });
    }
}

/// Decodes a chunked body (RFC 9112 §7.1), trailers skipped.
fn read_chunked(reader: &mut Reader<'_, '_>) -> Result<Vec<u8>, BlockingError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let end = reader.line_end(at)?;
        let line = std::str::from_utf8(&reader.buffer[at..end]).map_err(|_| malformed("a chunk size is not text"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| malformed("a chunk size is not hexadecimal"))?;
        if size > MAX_BODY || body.len() + size > MAX_BODY {
            return Err(malformed("the chunked body is larger than any answer can be"));
        }
        at = end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let end = reader.line_end(at)?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    reader.buffer.drain(..at);
                    return Ok(body);
                }
            }
        }
        reader.fill_to(at + size + 2)?;
        body.extend_from_slice(&reader.buffer[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers each connection's requests with the given raw answers, in order, and
    /// records what it read.
    fn serve(answers: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut buffer = [0u8; 4096];
                let n = stream.read(&mut buffer).unwrap();
                seen.extend_from_slice(&buffer[..n]);
                stream.write_all(&answer).unwrap();
            }
            seen
        });
        (base, handle)
    }

    fn request(body: &[u8]) -> Request<'_> {
        Request { method: "POST", path: "/call", token: Some("t0k"), body: Some(body), deadline: Instant::now() + Duration::from_secs(5) }
    }

    #[test]
    fn a_request_carries_its_token_and_body_and_reuses_the_connection() {
        let answers = vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), b"HTTP/1.1 404 Not Found\r\ncontent-length: 1\r\n\r\nx".to_vec()];
        let (base, server) = serve(answers);
        let transport = BlockingTransport::for_base(&base).unwrap();
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap(), (200, b"ok".to_vec()));
        // Same connection: the server accepts only one.
        assert_eq!(transport.send(&request(b"[1]"), &mut || false).unwrap(), (404, b"x".to_vec()));
        let seen = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(seen.starts_with("POST /call HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("Authorization: Bearer t0k\r\n") && seen.contains("Content-Length: 2\r\n\r\n{}"), "{seen}");
        assert!(seen.ends_with("\r\n\r\n[1]"), "{seen}");
    }

    #[test]
    fn a_chunked_answer_is_decoded() {
        let (base, server) = serve(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n".to_vec()]);
        let transport = BlockingTransport::for_base(&base).unwrap();
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap(), (200, b"abcde".to_vec()));
        server.join().unwrap();
    }

    #[test]
    fn a_closed_idle_connection_is_not_reused_and_the_request_goes_on_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                // Answer one request, then close the connection.
                let (mut stream, _) = listener.accept().unwrap();
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).unwrap();
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1").unwrap();
            }
        });
        let transport = BlockingTransport::for_base(&base).unwrap();
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap().1, b"1");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap().1, b"1");
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out_and_the_check_can_interrupt() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let transport = BlockingTransport::for_base(&base).unwrap();
        let short = Request { deadline: Instant::now() + Duration::from_millis(120), ..request(b"{}") };
        let started = Instant::now();
        assert!(matches!(transport.send(&short, &mut || false), Err(BlockingError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut checks = 0;
        let result = transport.send(&request(b"{}"), &mut || {
            checks += 1;
            checks == 3
        });
        assert!(matches!(result, Err(BlockingError::Interrupted)), "{result:?}");
        drop(listener);
    }

    #[test]
    fn an_answer_cut_short_or_not_http_is_an_error_not_a_hang() {
        let (base, server) = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()]);
        let transport = BlockingTransport::for_base(&base).unwrap();
        let handle = std::thread::spawn(move || transport.send(&request(b"{}"), &mut || false));
        server.join().unwrap(); // the server closes the connection after the short answer
        assert!(matches!(handle.join().unwrap(), Err(BlockingError::Transport(err)) if err.kind() == ErrorKind::UnexpectedEof));
        let (base, server) = serve(vec![b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()]);
        let transport = BlockingTransport::for_base(&base).unwrap();
        assert!(matches!(transport.send(&request(b"{}"), &mut || false), Err(BlockingError::Transport(err)) if err.kind() == ErrorKind::InvalidData));
        server.join().unwrap();
    }

    #[test]
    fn an_absurd_chunk_size_or_length_is_an_error_not_a_panic() {
        for answer in [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab".to_vec(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999\r\n\r\nab".to_vec(),
        ] {
            let (base, server) = serve(vec![answer]);
            let transport = BlockingTransport::for_base(&base).unwrap();
            let result = transport.send(&request(b"{}"), &mut || false);
            assert!(matches!(&result, Err(BlockingError::Transport(err)) if err.kind() == ErrorKind::InvalidData), "{result:?}");
            server.join().unwrap();
        }
    }

    #[test]
    fn a_connection_with_bytes_past_its_answer_is_not_reused() {
        // Two answers in one write: the second would be taken for the next request's.
        let two_answers: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale";
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).unwrap();
            stream.write_all(two_answers).unwrap();
            // A second connection gets a fresh answer.
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut buffer).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").unwrap();
        });
        let transport = BlockingTransport::for_base(&base).unwrap();
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap().0, 204);
        assert_eq!(transport.send(&request(b"{}"), &mut || false).unwrap(), (200, b"fresh".to_vec()));
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_a_transport_error_at_once() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let transport = BlockingTransport::for_base(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let result = transport.send(&request(b"{}"), &mut || false);
        assert!(matches!(&result, Err(BlockingError::Transport(err)) if err.kind() == ErrorKind::ConnectionRefused), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn only_plain_http_urls_get_a_transport() {
        assert!(BlockingTransport::for_base("https://example.test").is_none());
        assert!(BlockingTransport::for_base("http://user@h:1").is_none());
        let t = BlockingTransport::for_base("http://h:8000/base/").unwrap();
        assert_eq!((t.authority.as_str(), t.prefix.as_str()), ("h:8000", "/base"));
        assert_eq!(BlockingTransport::for_base("http://h").unwrap().authority, "h:80");
        assert_eq!(BlockingTransport::for_base("http://[::1]").unwrap().authority, "[::1]:80");
        assert_eq!(BlockingTransport::for_base("http://h:").unwrap().authority, "h:80");
    }
}
