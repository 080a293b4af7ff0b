//! The metrics page over HTTP: `GET /metrics` answers the page, anything
//! else 404 (or 405 for another method). One thread accepts and answers
//! connections one at a time, each with a read and write deadline, which
//! is all a scraper every few seconds needs; the page is rendered per
//! request by the caller's function (the agent asks the serving processes
//! then, so a scrape always sees current counts).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::text::CONTENT_TYPE;
use crate::HostError;

/// Renders the page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// How long a client may take to send its request, or to take the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// The largest request head read.
const MAX_REQUEST: usize = 8192;

/// The default address: loopback only, so nothing is exposed to the
/// network unless the admin says so.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9560";

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    pub fn start(addr: &str, render: Render) -> Result<MetricsServer, HostError> {
        let bad = |why: String| HostError::Metrics {
            addr: addr.to_string(),
            why,
        };
        let listener = TcpListener::bind(addr).map_err(|e| {
            bad(match e.kind() {
                std::io::ErrorKind::AddrInUse => "the address is already in use".into(),
                std::io::ErrorKind::AddrNotAvailable => {
                    "no interface of this machine has that address".into()
                }
                _ => e.to_string(),
            })
        })?;
        let local = listener.local_addr().map_err(|e| bad(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bad(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ferry-metrics".into())
                .spawn(move || accept(listener, render, &stop))
                .map_err(|e| bad(e.to_string()))?
        };
        log::info!("metrics on http://{local}/metrics");
        Ok(MetricsServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: TcpListener, render: Render, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, &render) {
                    log::debug!("metrics client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log::warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn answer(mut conn: TcpStream, render: &Render) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(CLIENT_DEADLINE))?;
    conn.set_write_timeout(Some(CLIENT_DEADLINE))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, render()),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "ferry serves its metrics at /metrics\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        reply.push_str(&body);
    }
    conn.write_all(reply.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn serves_the_page_and_refuses_a_taken_address() {
        let server = MetricsServer::start("127.0.0.1:0", Arc::new(|| "x 1\n".to_string())).unwrap();
        let page = get(server.addr(), "/metrics");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains(CONTENT_TYPE));
        assert!(page.ends_with("\r\n\r\nx 1\n"), "{page}");
        assert!(get(server.addr(), "/").starts_with("HTTP/1.1 404"));
        let taken = server.addr().to_string();
        let err = MetricsServer::start(&taken, Arc::new(String::new))
            .err()
            .unwrap();
        assert!(err.to_string().contains("already in use"), "{err}");
        let err = MetricsServer::start("nonsense", Arc::new(String::new))
            .err()
            .unwrap();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }
}
