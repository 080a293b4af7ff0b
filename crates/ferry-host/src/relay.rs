//! Reservations kept outside the volume, reached through the node's agent.
//!
//! The target plugins (tgtd's, tcmu-runner's) are data-path processes:
//! they link no ZooKeeper client. A LUN whose reservations the map keeps
//! is served on a node whose agent put them there, and that agent holds a
//! ZooKeeper session anyway, so the plugin asks it: [`AgentRelay`] is the
//! plugins' [`ReservationHomes`], and [`RelayServer`] serves the agent's
//! own homes on `$FERRY_RUN_DIR/ferry-agent.relay` (root only, like the
//! control sockets; not a `.sock`, so the CLI's host search skips it).
//!
//! One JSON request line and one JSON response line per connection. A
//! document a plugin opened stays open in the agent under a token: its
//! claim (the compare-and-set version that fences an older gateway) lives
//! there. If the agent restarts, the token is gone and the next PR OUT
//! fails (CHECK CONDITION) instead of saving with a stale claim; the LUN
//! claims afresh when it is next opened.
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_pr::{OpenMode, Pointer, PrError, ReservationHomes, ReservationStore};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::HostError;

/// The relay socket's name in a run directory.
pub const RELAY_SOCKET: &str = "ferry-agent.relay";

/// How long a plugin waits for the agent (a ZooKeeper write included).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum RelayRequest {
    Open { pointer: Pointer, mode: OpenMode },
    Load { token: u64 },
    Save { token: u64, bytes: Vec<u8> },
    Close { token: u64 },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RelayResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<PrErrorWire>,
    #[serde(default)]
    token: u64,
    #[serde(default)]
    describe: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<Vec<u8>>,
}

/// [`PrError`] on the wire (it is `non_exhaustive`, so kinds map here).
#[derive(Debug, Serialize, Deserialize)]
struct PrErrorWire {
    fenced: bool,
    what: String,
    why: String,
}

impl From<&PrError> for PrErrorWire {
    fn from(e: &PrError) -> Self {
        match e {
            PrError::Fenced { what } => PrErrorWire {
                fenced: true,
                what: what.clone(),
                why: String::new(),
            },
            PrError::Store { what, why } | PrError::BadPointer { what, why } => PrErrorWire {
                fenced: false,
                what: what.clone(),
                why: why.clone(),
            },
            e => PrErrorWire {
                fenced: false,
                what: "reservations".into(),
                why: e.to_string(),
            },
        }
    }
}

impl From<PrErrorWire> for PrError {
    fn from(w: PrErrorWire) -> Self {
        if w.fenced {
            PrError::Fenced { what: w.what }
        } else {
            PrError::Store {
                what: w.what,
                why: w.why,
            }
        }
    }
}

/// The plugins' homes: the node's agent, at its relay socket.
pub struct AgentRelay {
    path: PathBuf,
}

impl AgentRelay {
    /// The agent of run directory `run_dir` (the plugin's
    /// `FERRY_RUN_DIR`, which the agent shares).
    pub fn new(run_dir: &Path) -> Self {
        AgentRelay {
            path: run_dir.join(RELAY_SOCKET),
        }
    }

    fn call(&self, what: &str, req: &RelayRequest) -> Result<RelayResponse, PrError> {
        let unreachable = |e: std::io::Error| {
            PrError::store(
                what,
                format!(
                    "the node's agent does not answer at {} ({e}); it keeps these \
                     reservations for this node's target",
                    self.path.display()
                ),
            )
        };
        let resp: RelayResponse =
            crate::socket::call(&self.path, req, CALL_TIMEOUT).map_err(unreachable)?;
        match resp.error {
            Some(e) => Err(e.into()),
            None => Ok(resp),
        }
    }
}

impl ReservationHomes for AgentRelay {
    fn open(&self, pointer: &Pointer, mode: OpenMode) -> Result<ferry_pr::OpenedHome, PrError> {
        let resp = self.call(
            &pointer.describe(),
            &RelayRequest::Open {
                pointer: pointer.clone(),
                mode,
            },
        )?;
        let store = RelayedStore {
            relay: AgentRelay {
                path: self.path.clone(),
            },
            token: resp.token,
            describe: resp.describe,
        };
        Ok((Box::new(store), resp.bytes))
    }
}

/// A document the agent holds open for this process.
struct RelayedStore {
    relay: AgentRelay,
    token: u64,
    describe: String,
}

impl ReservationStore for RelayedStore {
    fn load(&self) -> Result<Option<Vec<u8>>, PrError> {
        let req = RelayRequest::Load { token: self.token };
        Ok(self.relay.call(&self.describe, &req)?.bytes)
    }
    fn save(&self, bytes: &[u8]) -> Result<(), PrError> {
        let req = RelayRequest::Save {
            token: self.token,
            bytes: bytes.to_vec(),
        };
        self.relay.call(&self.describe, &req).map(drop)
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl Drop for RelayedStore {
    fn drop(&mut self) {
        let req = RelayRequest::Close { token: self.token };
        if let Err(e) = self.relay.call(&self.describe, &req) {
            log::debug!("closing {}: {e}", self.describe);
        }
    }
}

/// The agent's side: serves `homes` to the node's plugins.
pub struct RelayServer {
    _listening: crate::socket::Listening,
}

#[derive(Default)]
struct Open {
    next: AtomicU64,
    stores: Mutex<HashMap<u64, Arc<dyn ReservationStore>>>,
}

impl RelayServer {
    /// Listens at `run_dir`'s relay socket.
    pub fn start(homes: Arc<dyn ReservationHomes>, run_dir: &Path) -> Result<Self, HostError> {
        crate::socket::root_only_dir(run_dir)?;
        let path = run_dir.join(RELAY_SOCKET);
        let open = Arc::new(Open::default());
        let listening =
            crate::socket::Listening::start(&path, "reservations relay", move |stream| {
                let (homes, open) = (homes.clone(), open.clone());
                // A ZooKeeper write can take a while: one slow LUN does not
                // hold up the others.
                let _ = std::thread::Builder::new()
                    .name("ferry-relay-req".into())
                    .spawn(move || serve(homes.as_ref(), &open, &stream));
            })?;
        Ok(RelayServer {
            _listening: listening,
        })
    }
}

fn serve(homes: &dyn ReservationHomes, open: &Open, stream: &UnixStream) {
    let Some(line) = crate::socket::read_request(stream) else {
        return;
    };
    let result = match serde_json::from_str::<RelayRequest>(&line) {
        Ok(req) => answer(homes, open, req),
        Err(e) => Err(PrError::store("the relay", format!("bad request: {e}"))),
    };
    let resp = result.unwrap_or_else(|e| RelayResponse {
        error: Some((&e).into()),
        ..Default::default()
    });
    crate::socket::reply(stream, &resp);
}

fn answer(
    homes: &dyn ReservationHomes,
    open: &Open,
    req: RelayRequest,
) -> Result<RelayResponse, PrError> {
    let held = |token: u64| {
        open.stores.lock().get(&token).cloned().ok_or_else(|| {
            PrError::store(
                "the node's agent",
                "it no longer holds this LUN's reservations open (restarted?); the LUN \
                 claims them again when it is next opened",
            )
        })
    };
    match req {
        RelayRequest::Open { pointer, mode } => {
            log::info!("relay: opening {} ({mode:?})", pointer.describe());
            let (store, bytes) = homes.open(&pointer, mode)?;
            let token = open.next.fetch_add(1, Ordering::Relaxed) + 1;
            let describe = store.describe();
            open.stores.lock().insert(token, Arc::from(store));
            Ok(RelayResponse {
                token,
                describe,
                bytes,
                ..Default::default()
            })
        }
        RelayRequest::Load { token } => Ok(RelayResponse {
            bytes: held(token)?.load()?,
            ..Default::default()
        }),
        RelayRequest::Save { token, bytes } => {
            held(token)?.save(&bytes)?;
            Ok(RelayResponse::default())
        }
        RelayRequest::Close { token } => {
            open.stores.lock().remove(&token);
            Ok(RelayResponse::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Documents by name, with their versions.
    type Docs = Arc<Mutex<HashMap<String, (Vec<u8>, u64)>>>;

    /// Homes in memory that fence like ZooKeeper: a claim makes the
    /// opener the only writer.
    #[derive(Default)]
    struct MemHomes {
        docs: Docs,
    }

    struct MemStore {
        docs: Docs,
        key: String,
        version: Mutex<u64>,
    }

    impl ReservationStore for MemStore {
        fn load(&self) -> Result<Option<Vec<u8>>, PrError> {
            Ok(self.docs.lock().get(&self.key).map(|d| d.0.clone()))
        }
        fn save(&self, bytes: &[u8]) -> Result<(), PrError> {
            let mut docs = self.docs.lock();
            let mut v = self.version.lock();
            let d = docs.entry(self.key.clone()).or_default();
            if d.1 != *v {
                return Err(PrError::Fenced {
                    what: self.key.clone(),
                });
            }
            *d = (bytes.to_vec(), d.1 + 1);
            *v = d.1;
            Ok(())
        }
        fn describe(&self) -> String {
            format!("mem:{}", self.key)
        }
    }

    impl ReservationHomes for MemHomes {
        fn open(&self, p: &Pointer, mode: OpenMode) -> Result<ferry_pr::OpenedHome, PrError> {
            let key = p.describe();
            let version = self.docs.lock().get(&key).map_or(0, |d| d.1);
            let store = MemStore {
                docs: self.docs.clone(),
                key,
                version: Mutex::new(version),
            };
            let bytes = match mode {
                OpenMode::Read => store.load()?,
                OpenMode::Claim => {
                    let b = store.load()?;
                    if let Some(b) = &b {
                        store.save(b)?;
                    }
                    b
                }
                OpenMode::Replace(b) => {
                    store.save(&b)?;
                    Some(b)
                }
            };
            Ok((Box::new(store), bytes))
        }
    }

    #[test]
    fn a_plugin_opens_claims_and_saves_through_the_agent_and_an_older_claim_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let _server = RelayServer::start(Arc::new(MemHomes::default()), dir.path()).unwrap();
        let relay = AgentRelay::new(dir.path());
        let p = Pointer::new("zk://h:1/r", "db", None);
        let (first, bytes) = relay.open(&p, OpenMode::Replace(b"one".to_vec())).unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"one"[..]));
        assert_eq!(first.describe(), "mem:zk://h:1/r/reservations/db");
        first.save(b"two").unwrap();
        // A second gateway claims the LUN: the first is fenced.
        let (second, bytes) = relay.open(&p, OpenMode::Claim).unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"two"[..]));
        let e = first.save(b"stale").unwrap_err();
        assert!(matches!(e, PrError::Fenced { .. }), "{e:?}");
        second.save(b"three").unwrap();
        assert_eq!(second.load().unwrap().as_deref(), Some(&b"three"[..]));
    }

    #[test]
    fn without_an_agent_the_error_says_where_it_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let relay = AgentRelay::new(dir.path());
        let p = Pointer::new("zk://h:1/r", "db", None);
        let e = relay.open(&p, OpenMode::Claim).err().unwrap().to_string();
        assert!(e.contains("zk://h:1/r/reservations/db"), "{e}");
        assert!(e.contains(RELAY_SOCKET), "{e}");
    }
}
