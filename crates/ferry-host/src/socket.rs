//! Root-only Unix sockets speaking one JSON line each way per
//! connection: the control socket ([`crate::control`]) and the agent's
//! reservations relay ([`crate::relay`]) are both served and called this
//! way.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::HostError;

/// How long a server waits for a connection's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes `dir` exist, readable by root only.
pub(crate) fn root_only_dir(dir: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(dir).map_err(HostError::socket("creating the run directory", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
        HostError::socket("restricting to root the run directory", dir),
    )
}

/// A listening socket, its connections handed to a callback on its
/// accept thread; the socket file is removed when this is dropped.
pub(crate) struct Listening {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    /// Listens at `path` (replacing a stale socket there, mode 0600) and
    /// hands each connection to `on_connection`; `what` names the socket
    /// in errors and logs ("control socket").
    pub(crate) fn start(
        path: &Path,
        what: &'static str,
        mut on_connection: impl FnMut(UnixStream) + Send + 'static,
    ) -> Result<Self, HostError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(HostError::socket("binding", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(HostError::socket("restricting to root", path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!(
                    "ferry-{}",
                    what.split(' ').next().unwrap_or("socket")
                ))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        match conn {
                            Ok(stream) => on_connection(stream),
                            Err(e) => log::warn!("{what} accept failed: {e}"),
                        }
                    }
                })
                .map_err(HostError::socket("starting the thread serving", path))?
        };
        log::info!("{what} at {}", path.display());
        Ok(Listening {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection's request line (`None`: it sent nothing in time).
pub(crate) fn read_request(stream: &UnixStream) -> Option<String> {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

/// Answers a connection with one JSON line.
pub(crate) fn reply(stream: &UnixStream, resp: &impl Serialize) {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    let _ = (&mut &*stream).write_all(&out);
}

/// Sends `req` to the socket at `path` and reads its answer, waiting at
/// most `timeout` for it.
pub(crate) fn call<Resp: DeserializeOwned>(
    path: &Path,
    req: &impl Serialize,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(&stream).read_line(&mut resp)?;
    serde_json::from_str(&resp).map_err(std::io::Error::other)
}
