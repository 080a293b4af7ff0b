//! The control path: how `ferry migrate ...` reaches a process serving a LUN
//! (tgtd with bs_ferry, tcmu-runner with handler_ferry, `ferry serve`).
//!
//! Each hosting process listens on a Unix socket
//! `$FERRY_RUN_DIR/ferry-<pid>.sock` (default run dir `/run/ferry`, mode
//! 0700, socket 0600: root only). The protocol is one JSON request line and
//! one JSON response line per connection. The CLI finds the host of a
//! volume by asking every socket in the run dir (`list`); sockets whose
//! process is gone are removed. The I/O path never waits on this: control
//! requests take only the LUN's own locks.
//!
//! Each connection is served on a thread of its own (up to
//! [`MAX_REQUESTS`] at once), so one slow request (a migration start
//! against a cluster that does not answer, a commit) never keeps `list`
//! or `status` waiting: a CLI that got no answer would conclude nobody
//! serves the volume and work on it offline. (That is refused anyway,
//! since the serving process holds the volume's lock, but the admin
//! would get an error instead of an answer.) `list` itself waits at most
//! [`LIST_WAIT`] for a LUN busy with a control operation and then
//! reports the progress it saw last.
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry_core::copier::{PaceChange, Progress};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::lun::{Lun, StartOptions};
use crate::port::{LunPort, PortInfo, PortRef};
use crate::HostError;

/// The directory holding control sockets.
pub fn run_dir() -> PathBuf {
    std::env::var_os("FERRY_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ferry"))
}

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Volumes this process serves.
    List,
    /// Every served LUN's counters (`crate::metrics`), and the ALUA ports.
    Metrics,
    Status {
        volume: String,
    },
    Start {
        volume: String,
        target: String,
        options: StartOptions,
    },
    Pause {
        volume: String,
    },
    Resume {
        volume: String,
    },
    Rate {
        volume: String,
        bytes_per_sec: Option<u64>,
    },
    Adaptive {
        volume: String,
        on: bool,
    },
    /// Changes the copier's impact budget (percent), floor rate (bytes
    /// per second) or priority; an absent one stays as it is, 0 restores
    /// its default.
    Impact {
        volume: String,
        #[serde(flatten)]
        change: PaceChange,
    },
    Abort {
        volume: String,
    },
    Commit {
        volume: String,
        /// Delete the source after the commit.
        #[serde(default)]
        remove_source: bool,
    },
    /// Creates, lists, deletes or restores a snapshot of the LUN.
    Snapshot {
        volume: String,
        action: crate::snapshot::SnapshotOp,
        #[serde(default)]
        name: Option<String>,
    },
    /// Sets the LUN's cache mode (takes effect with the next command).
    CacheMode {
        volume: String,
        mode: ferry_scsi::CacheMode,
    },
    /// Reports the LUN's persistent reservations; with `clear`, first
    /// drops them all (an administrator freeing a LUN a dead host holds).
    Reservations {
        volume: String,
        #[serde(default)]
        clear: bool,
    },
    /// Changes the size of the volume under the LUN (smaller only with
    /// `force`); every front-end then reports the new capacity.
    Resize {
        volume: String,
        size: u64,
        #[serde(default)]
        force: bool,
    },
    /// Sets the LUN's QoS limits (all four at once; absent is unlimited)
    /// when `limits` is given; answers the limits in force.
    Qos {
        volume: String,
        #[serde(default)]
        limits: Option<crate::qos::QosLimits>,
    },
    /// Gives the LUN's target port (served or standby) every ALUA port
    /// group's state; this gateway is group `own_group`. Opens or closes
    /// the volume when this gateway's own state changes.
    Alua {
        volume: String,
        own_group: u16,
        groups: Vec<ferry_scsi::alua::PortGroup>,
    },
}

impl Request {
    fn volume(&self) -> Option<&str> {
        match self {
            Request::List | Request::Metrics => None,
            Request::Status { volume }
            | Request::Start { volume, .. }
            | Request::Pause { volume }
            | Request::Resume { volume }
            | Request::Rate { volume, .. }
            | Request::Adaptive { volume, .. }
            | Request::Impact { volume, .. }
            | Request::Abort { volume }
            | Request::Commit { volume, .. }
            | Request::CacheMode { volume, .. }
            | Request::Reservations { volume, .. }
            | Request::Alua { volume, .. }
            | Request::Qos { volume, .. }
            | Request::Resize { volume, .. }
            | Request::Snapshot { volume, .. } => Some(volume),
        }
    }
}

/// One served volume, as `list` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Served {
    pub spec: String,
    pub size: u64,
    pub migration: Option<Progress>,
    #[serde(default)]
    pub cache_mode: ferry_scsi::CacheMode,
    #[serde(default)]
    pub qos: crate::qos::QosLimits,
}

/// A control response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<Vec<Served>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<crate::snapshot::SnapshotInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ferry_pr::PrState>,
    /// Where the reservations are saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations_home: Option<String>,
    /// The process's ALUA target ports (`list`), and a port's state after
    /// an `alua` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortInfo>>,
    /// A LUN's QoS limits (`qos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<crate::qos::QosLimits>,
    /// Every served LUN's counters (`metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<crate::metrics::LunReport>>,
}

impl Response {
    fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
    fn progress(r: ferry_core::Result<Progress>) -> Self {
        match r {
            Ok(p) => Response {
                ok: true,
                progress: Some(p),
                ..Default::default()
            },
            Err(e) => Response::error(e.to_string()),
        }
    }
}

/// Most control connections served at once; more are answered at once
/// with an error. Each runs on its own thread, and a CLI makes one at a
/// time, so this only bounds a runaway client.
pub const MAX_REQUESTS: usize = 32;

/// Longest `list` waits for one LUN's migration state before reporting
/// what that LUN last reported (a commit or abort may hold it for a flush
/// of the target).
pub const LIST_WAIT: Duration = Duration::from_millis(100);

/// What a control socket does with each request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// The LUNs a process serves, by configured spec.
#[derive(Default)]
pub struct Registry {
    luns: Mutex<BTreeMap<String, Weak<Lun>>>,
    /// ALUA target ports, standby ones included, by configured spec.
    ports: Mutex<BTreeMap<String, PortRef>>,
}

impl Registry {
    pub fn add(&self, lun: &Arc<Lun>) {
        self.luns
            .lock()
            .insert(lun.spec().to_string(), Arc::downgrade(lun));
    }

    pub fn remove(&self, lun: &Lun) {
        self.luns.lock().remove(&lun.spec().to_string());
    }

    pub fn add_port(&self, port: &Arc<LunPort>) {
        self.ports
            .lock()
            .insert(port.spec().to_string(), Arc::downgrade(port));
    }

    /// Forgets `port`, not another port registered since under its spec.
    pub fn remove_port(&self, port: &LunPort) {
        let mut ports = self.ports.lock();
        if ports
            .get(port.spec())
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), port))
        {
            ports.remove(port.spec());
        }
    }

    fn all_ports(&self) -> Vec<Arc<LunPort>> {
        let mut map = self.ports.lock();
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    fn all(&self) -> Vec<Arc<Lun>> {
        let mut map = self.luns.lock();
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    fn find(&self, name: &str) -> Option<Arc<Lun>> {
        self.all().into_iter().find(|l| l.answers_to(name))
    }

    /// Carries out one request.
    pub fn handle(&self, req: &Request) -> Response {
        if let Request::List = req {
            let served = self
                .all()
                .iter()
                .map(|l| Served {
                    spec: l.spec().to_string(),
                    size: ferry_core::Volume::size(l.as_ref()),
                    migration: l.status_within(LIST_WAIT),
                    cache_mode: l.cache_mode(),
                    qos: l.qos(),
                })
                .collect();
            let ports = self.all_ports().iter().map(|p| PortInfo::of(p)).collect();
            return Response {
                ok: true,
                served: Some(served),
                ports: Some(ports),
                ..Default::default()
            };
        }
        if let Request::Metrics = req {
            let metrics = self.all().iter().map(|l| l.metrics_report()).collect();
            let ports = self.all_ports().iter().map(|p| PortInfo::of(p)).collect();
            return Response {
                ok: true,
                metrics: Some(metrics),
                ports: Some(ports),
                ..Default::default()
            };
        }
        let name = req.volume().unwrap_or_default();
        if let Request::Alua {
            own_group, groups, ..
        } = req
        {
            let Some(port) = self.all_ports().into_iter().find(|p| p.answers_to(name)) else {
                return Response::error(format!("this process has no ALUA port for {name}"));
            };
            let result = port.set(*own_group, groups.clone());
            let info = Some(vec![PortInfo::of(&port)]);
            return match result {
                Ok(_) => Response {
                    ok: true,
                    ports: info,
                    ..Default::default()
                },
                Err(e) => Response {
                    ports: info,
                    ..Response::error(e.to_string())
                },
            };
        }
        let Some(lun) = self.find(name) else {
            return Response::error(format!("this process does not serve {name}"));
        };
        match req {
            Request::List | Request::Metrics | Request::Alua { .. } => {
                unreachable!("handled above")
            }
            Request::Status { .. } => match lun.status() {
                Some(p) => Response::progress(Ok(p)),
                None => Response::error(format!("{name} is not being migrated")),
            },
            Request::Start {
                target, options, ..
            } => Response::progress(lun.start_migration(target, options)),
            Request::Pause { .. } => Response::progress(lun.set_paused(true)),
            Request::Resume { .. } => Response::progress(lun.set_paused(false)),
            Request::Rate { bytes_per_sec, .. } => {
                Response::progress(lun.set_rate_limit(*bytes_per_sec))
            }
            Request::Adaptive { on, .. } => Response::progress(lun.set_adaptive(*on)),
            Request::Impact { change, .. } => Response::progress(lun.set_pace(*change)),
            Request::Abort { .. } => Response::progress(lun.abort()),
            Request::Commit { remove_source, .. } => {
                Response::progress(lun.commit_with(*remove_source))
            }
            Request::Snapshot { action, name, .. } => match lun.snapshot(action, name.as_deref()) {
                Ok(list) => Response {
                    ok: true,
                    snapshots: Some(list),
                    ..Default::default()
                },
                Err(e) => Response::error(e.to_string()),
            },
            Request::CacheMode { mode, .. } => {
                lun.set_cache_mode(*mode);
                Response {
                    ok: true,
                    ..Default::default()
                }
            }
            Request::Resize { size, force, .. } => match lun.set_size(*size, *force) {
                Ok(_) => Response {
                    ok: true,
                    ..Default::default()
                },
                Err(e) => Response::error(e.to_string()),
            },
            Request::Qos { limits, .. } => match limits.map_or(Ok(()), |l| lun.set_qos(l)) {
                Ok(()) => Response {
                    ok: true,
                    qos: Some(lun.qos()),
                    ..Default::default()
                },
                Err(e) => Response::error(e.to_string()),
            },
            Request::Reservations { clear, .. } => match lun.reservations_report(*clear) {
                Ok(state) => Response {
                    ok: true,
                    reservations: Some(state),
                    reservations_home: Some(lun.reservations_home()),
                    ..Default::default()
                },
                Err(e) => Response::error(e.to_string()),
            },
        }
    }
}

/// The registry of the LUNs this process serves: one per process, shared
/// by every LUN a plugin opens (tgtd, tcmu-runner).
pub fn process_registry() -> &'static Arc<Registry> {
    static REGISTRY: std::sync::OnceLock<Arc<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::default()))
}

/// The copy budget every copier of this process shares, coordinated with
/// the node's other processes through the run dir (`ferry_core::share`).
pub fn process_share() -> &'static Arc<ferry_core::share::CopyShare> {
    static SHARE: std::sync::OnceLock<Arc<ferry_core::share::CopyShare>> =
        std::sync::OnceLock::new();
    SHARE.get_or_init(|| ferry_core::share::CopyShare::on_node(run_dir()))
}

/// Starts this process's control socket for [`process_registry`] once.
/// A plugin calls it from its host's main thread, so the control thread
/// inherits the host's signal mask. `host` names the process in the error
/// logged when the socket cannot be created.
pub fn ensure_process_server(host: &str) {
    static SERVER: std::sync::OnceLock<Mutex<Option<ControlServer>>> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| match ControlServer::start(process_registry().clone()) {
        Ok(s) => Mutex::new(Some(s)),
        Err(e) => {
            log::error!("no control socket ({e}); `ferry migrate` cannot reach this {host}");
            Mutex::new(None)
        }
    });
}

/// A listening control socket; removed when dropped.
pub struct ControlServer {
    listening: crate::socket::Listening,
}

impl ControlServer {
    /// Listens at `$FERRY_RUN_DIR/ferry-<pid>.sock`.
    pub fn start(registry: Arc<Registry>) -> Result<Self, HostError> {
        let dir = run_dir();
        crate::socket::root_only_dir(&dir)?;
        let path = dir.join(format!("ferry-{}.sock", std::process::id()));
        Self::start_at(registry, &path)
    }

    /// Listens at `path`.
    pub fn start_at(registry: Arc<Registry>, path: &Path) -> Result<Self, HostError> {
        Self::start_with(Arc::new(move |req: &Request| registry.handle(req)), path)
    }

    /// Listens at `path`, answering each request with `handler` on a
    /// thread of the connection's own.
    pub fn start_with(handler: Handler, path: &Path) -> Result<Self, HostError> {
        let running = Arc::new(AtomicUsize::new(0));
        let listening = crate::socket::Listening::start(path, "control socket", move |stream| {
            dispatch(&handler, &running, stream)
        })?;
        Ok(ControlServer { listening })
    }

    pub fn path(&self) -> &Path {
        self.listening.path()
    }
}

/// Serves one connection on a thread of its own, unless [`MAX_REQUESTS`]
/// are running already.
fn dispatch(handler: &Handler, running: &Arc<AtomicUsize>, stream: UnixStream) {
    if running.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS {
        running.fetch_sub(1, Ordering::AcqRel);
        reply(
            &stream,
            &Response::error(format!(
                "{MAX_REQUESTS} control requests are running already; retry"
            )),
        );
        return;
    }
    let (h, r) = (handler.clone(), running.clone());
    let spawned = std::thread::Builder::new()
        .name("ferry-control-req".into())
        .spawn(move || {
            serve_one(h.as_ref(), stream);
            r.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        running.fetch_sub(1, Ordering::AcqRel);
        log::warn!("no thread for a control request: {e}");
    }
}

fn reply(stream: &UnixStream, resp: &Response) {
    crate::socket::reply(stream, resp);
}

fn serve_one(handler: &(dyn Fn(&Request) -> Response + Send + Sync), stream: UnixStream) {
    let Some(line) = crate::socket::read_request(&stream) else {
        return;
    };
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            log::info!("control request: {}", line.trim());
            handler(&req)
        }
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    reply(&stream, &resp);
}

/// Sends one request to the socket at `path`.
pub fn call(path: &Path, req: &Request) -> Result<Response, HostError> {
    crate::socket::call(path, req, Duration::from_secs(30)).map_err(HostError::call(path))
}

/// Finds the control socket of the process serving `volume`, if any.
/// Sockets nobody listens on any more are removed.
pub fn find_host(volume: &str) -> Option<PathBuf> {
    find_host_in(&run_dir(), volume)
}

/// [`find_host`] among the sockets of `dir`.
pub fn find_host_in(dir: &Path, volume: &str) -> Option<PathBuf> {
    let wanted = crate::spec::VolumeSpec::parse(volume).ok()?.to_string();
    hosts_in(dir).into_iter().find_map(|(path, served)| {
        served
            .iter()
            .any(|s| {
                s.spec == wanted
                    || s.migration
                        .as_ref()
                        .is_some_and(|m| m.source == wanted || m.target == wanted)
            })
            .then_some(path)
    })
}

/// Every live control socket in `dir` with its answer to `list` (or why
/// it gave none). Sockets nobody listens on any more are removed.
fn lists_in(dir: &Path) -> Vec<(PathBuf, Result<Response, HostError>)> {
    asked_in(dir, &Request::List)
}

/// Every live control socket in `dir` with its answer to `req` (or why
/// it gave none). Sockets nobody listens on any more are removed.
fn asked_in(dir: &Path, req: &Request) -> Vec<(PathBuf, Result<Response, HostError>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sock"))
        .filter_map(|path| match call(&path, req) {
            Err(HostError::Call { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                log::info!("removing stale control socket {}", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
            answer => Some((path, answer)),
        })
        .collect()
}

/// Every live control socket in `dir` with the volumes its process
/// serves. Sockets nobody listens on any more are removed.
pub fn hosts_in(dir: &Path) -> Vec<(PathBuf, Vec<Served>)> {
    lists_in(dir)
        .into_iter()
        .filter_map(|(path, answer)| match answer {
            Ok(resp) => Some((path, resp.served.unwrap_or_default())),
            Err(e) => {
                log::warn!("{e}");
                None
            }
        })
        .collect()
}

/// Every live control socket in `dir` with the ALUA ports its process
/// has (standby ones included), or why it did not say (a fence must not
/// take silence for "no ports"). Sockets nobody listens on any more are
/// removed.
pub fn ports_in(dir: &Path) -> Vec<(PathBuf, Result<Vec<PortInfo>, String>)> {
    lists_in(dir)
        .into_iter()
        .map(|(path, answer)| {
            let ports = match answer {
                Ok(r) if r.ok => Ok(r.ports.unwrap_or_default()),
                Ok(r) => Err(r.error.unwrap_or_else(|| "list refused".into())),
                Err(e) => Err(e.to_string()),
            };
            (path, ports)
        })
        .collect()
}

/// Every live control socket in `dir` with its answer to `metrics`: the
/// counters of the LUNs its process serves and its ALUA ports, or why it
/// did not say.
pub fn metrics_in(dir: &Path) -> Vec<(PathBuf, Result<Response, String>)> {
    asked_in(dir, &Request::Metrics)
        .into_iter()
        .map(|(path, answer)| {
            let answer = match answer {
                Ok(r) if r.ok => Ok(r),
                Ok(r) => Err(r.error.unwrap_or_else(|| "metrics refused".into())),
                Err(e) => Err(e.to_string()),
            };
            (path, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A request that blocks until the test lets it go does not keep the
    /// socket from answering `list` (nor another request) meanwhile.
    #[test]
    fn list_is_answered_while_another_request_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
        let handler: Handler = Arc::new(move |req: &Request| match req {
            Request::List => Response {
                ok: true,
                served: Some(Vec::new()),
                ..Default::default()
            },
            Request::Pause { .. } => {
                entered_tx.lock().send(()).unwrap();
                release_rx.lock().recv().unwrap();
                Response {
                    ok: true,
                    ..Default::default()
                }
            }
            _ => Response::error("not in this test"),
        });
        let server = ControlServer::start_with(handler, &path).unwrap();
        let slow = {
            let path = path.clone();
            std::thread::spawn(move || {
                call(
                    &path,
                    &Request::Pause {
                        volume: "file:/v".into(),
                    },
                )
            })
        };
        entered_rx.recv().unwrap();
        // The pause is inside the handler now, and stays there.
        for _ in 0..3 {
            let r = call(&path, &Request::List).unwrap();
            assert!(r.ok && r.served == Some(Vec::new()), "{r:?}");
        }
        let r = call(
            &path,
            &Request::Status {
                volume: "file:/v".into(),
            },
        )
        .unwrap();
        assert_eq!(r.error.as_deref(), Some("not in this test"));
        assert!(!slow.is_finished(), "the slow request ended early");
        release_tx.send(()).unwrap();
        assert!(slow.join().unwrap().unwrap().ok);
        drop(server);
        assert!(!path.exists(), "the socket outlived its server");
    }
}
