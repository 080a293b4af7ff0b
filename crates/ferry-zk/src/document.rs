//! One document in ZooKeeper that a single writer keeps, with every write
//! a compare-and-set against the version it last read or wrote.
//!
//! A serving gateway keeps a LUN's persistent reservations this way
//! (`<root>/reservations/<lun>`). The compare-and-set is the fence: a
//! gateway that lost the LUN to another (which has written since) fails
//! its next write instead of overwriting newer state.
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ferry_map::MapError;
use parking_lot::Mutex;
use zookeeper_client as zk;

use crate::{connect_client, connect_on, zk_err, ZkConfig, ZkError};

/// A client shared by every document of one process on the same
/// servers, root and credentials: a gateway serving many LUNs holds one
/// ZooKeeper session, not one per LUN.
struct Connection {
    cfg: ZkConfig,
    rt: tokio::runtime::Runtime,
    /// Replaced after the session expires (a client cannot come back).
    client: Mutex<zk::Client>,
    /// When a new session last failed to come up: requests meanwhile fail
    /// at once instead of each waiting out a connect timeout.
    failed_reconnect: Mutex<Option<Instant>>,
}

/// How long after a failed reconnection requests fail without trying.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(2);

/// The connections in use, by servers, root and credentials.
static CONNECTIONS: Mutex<BTreeMap<String, Weak<Connection>>> = Mutex::new(BTreeMap::new());

impl Connection {
    fn shared(cfg: ZkConfig) -> Result<Arc<Connection>, ZkError> {
        let key = format!(
            "{}{}|{}",
            cfg.servers,
            cfg.root,
            cfg.auth.as_deref().unwrap_or("")
        );
        let mut all = CONNECTIONS.lock();
        all.retain(|_, c| c.strong_count() > 0);
        if let Some(c) = all.get(&key).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let (rt, client) = connect_client(&cfg)?;
        let c = Arc::new(Connection {
            cfg,
            rt,
            client: Mutex::new(client),
            failed_reconnect: Mutex::new(None),
        });
        all.insert(key, Arc::downgrade(&c));
        Ok(c)
    }

    /// The current client: a new one after a session expired, unless one
    /// failed to come up within the last [`RECONNECT_BACKOFF`] (then the
    /// expired client, whose requests fail at once).
    fn client(&self) -> zk::Client {
        let mut client = self.client.lock();
        if client.state().is_terminated() {
            let mut failed = self.failed_reconnect.lock();
            if failed.is_none_or(|t| t.elapsed() >= RECONNECT_BACKOFF) {
                match self.reconnect() {
                    Ok(fresh) => {
                        *client = fresh;
                        *failed = None;
                    }
                    Err(e) => {
                        log::warn!("zk://{}{}: {e}", self.cfg.servers, self.cfg.root);
                        *failed = Some(Instant::now());
                    }
                }
            }
        }
        client.clone()
    }

    /// Runs one request, giving up after a third of the session timeout
    /// (a cut-off client would otherwise wait for the session to end).
    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, zk::Error>>,
    ) -> Result<T, zk::Error> {
        let limit = (self.cfg.session_timeout / 3).max(Duration::from_secs(1));
        self.rt
            .block_on(async { tokio::time::timeout(limit, f).await })
            .unwrap_or(Err(zk::Error::ConnectionLoss))
    }

    fn reconnect(&self) -> Result<zk::Client, ZkError> {
        let fresh = connect_on(&self.rt, &self.cfg)?;
        log::info!(
            "zk://{}{}: new ZooKeeper session",
            self.cfg.servers,
            self.cfg.root
        );
        Ok(fresh)
    }

    fn acls(&self) -> zk::Acls<'static> {
        if self.cfg.auth.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }
}

/// One document, read and written through a shared connection.
pub struct ZkDocument {
    conn: Arc<Connection>,
    path: String,
    /// The version last read or written; `None`: the document did not
    /// exist then.
    version: Mutex<Option<i32>>,
    /// A write whose answer was lost (bytes, version expected): it may
    /// have been applied, which the next write finds out.
    unsure: Mutex<Option<(Vec<u8>, Option<i32>)>>,
}

impl std::fmt::Debug for ZkDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ZkDocument {
    /// Connects for the document at `rel` under the root of `cfg`
    /// (`reservations/db`), sharing the process's connection to those
    /// servers if there is one. Nothing is read yet.
    pub fn open(cfg: ZkConfig, rel: &str) -> Result<ZkDocument, ZkError> {
        if rel.is_empty()
            || rel.starts_with('/')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ZkError::BadDocumentPath {
                path: rel.to_string(),
                root: cfg.root.clone(),
            });
        }
        let path = format!("{}/{rel}", cfg.root);
        Ok(ZkDocument {
            conn: Connection::shared(cfg)?,
            path,
            version: Mutex::new(None),
            unsure: Mutex::new(None),
        })
    }

    /// `zk://servers/root/rel`, for messages.
    pub fn describe(&self) -> String {
        format!("zk://{}{}", self.conn.cfg.servers, self.path)
    }

    fn client(&self) -> zk::Client {
        self.conn.client()
    }

    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, zk::Error>>,
    ) -> Result<T, zk::Error> {
        self.conn.run(f)
    }

    fn acls(&self) -> zk::Acls<'static> {
        self.conn.acls()
    }

    /// Reads the document (`None`: absent) and remembers its version for
    /// the next [`ZkDocument::store`].
    pub fn load(&self) -> Result<Option<Vec<u8>>, MapError> {
        let c = self.client();
        let (data, version) = match self.run(c.get_data(&self.path)) {
            Ok((d, st)) => (Some(d), Some(st.version)),
            Err(zk::Error::NoNode) => (None, None),
            Err(e) => return Err(zk_err("reading", &self.path, e)),
        };
        *self.version.lock() = version;
        Ok(data)
    }

    /// Replaces the document with `bytes`, durably (ZooKeeper has a quorum
    /// log it) when this returns, if nobody else wrote it since this
    /// handle last read or wrote it; otherwise [`MapError::Conflict`] and
    /// nothing changes.
    pub fn store(&self, bytes: &[u8]) -> Result<(), MapError> {
        let mut version = self.version.lock();
        let mut unsure = self.unsure.lock();
        // An earlier write whose outcome is unknown is settled first; while
        // that cannot be read, nothing is written (it may have landed, and
        // a write at the old version would then look like a stranger's).
        if let Some((b, e)) = unsure.take() {
            if e == *version {
                let next = e.map_or(0, |v| v + 1);
                match self.holds(&b, next) {
                    Ok(true) => *version = Some(next),
                    Ok(false) => {}
                    Err(err) => {
                        *unsure = Some((b, e));
                        return Err(zk_err("reading", &self.path, err));
                    }
                }
            }
        }
        let expected = *version;
        let r = match expected {
            Some(v) => {
                let c = self.client();
                self.run(c.set_data(&self.path, bytes, Some(v)))
                    .map(|st| st.version)
            }
            None => {
                self.create_parents()?;
                let opts = zk::CreateMode::Persistent.with_acls(self.acls());
                let c = self.client();
                self.run(c.create(&self.path, bytes, &opts))
                    .map(|(st, _)| st.version)
            }
        };
        match r {
            Ok(v) => {
                *version = Some(v);
                Ok(())
            }
            // The request may have been applied before its answer was
            // lost: then the document holds exactly our bytes, one
            // version on.
            Err(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::ConnectionLoss)
                if matches!(self.holds(bytes, expected.map_or(0, |v| v + 1)), Ok(true)) =>
            {
                *version = Some(expected.map_or(0, |v| v + 1));
                Ok(())
            }
            Err(
                e @ (zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::SessionExpired),
            ) => {
                *unsure = Some((bytes.to_vec(), expected));
                Err(zk_err("writing", &self.path, e))
            }
            Err(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode) => {
                Err(MapError::Conflict {
                    what: self.describe(),
                    expected: expected.unwrap_or(-1),
                    actual: self.current_version().unwrap_or(-1),
                })
            }
            Err(e) => Err(zk_err("writing", &self.path, e)),
        }
    }

    /// Reads the document and writes it back unchanged, so this handle
    /// is its writer from now on: any other handle's next write (a
    /// gateway that served the LUN before, still running somewhere)
    /// fails. `None` if the document does not exist (nothing written).
    pub fn claim(&self) -> Result<Option<Vec<u8>>, MapError> {
        for _ in 0..10 {
            let Some(bytes) = self.load()? else {
                return Ok(None);
            };
            match self.store(&bytes) {
                Ok(()) => return Ok(Some(bytes)),
                Err(MapError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(MapError::Conflict {
            what: self.describe(),
            expected: -1,
            actual: self.current_version().unwrap_or(-1),
        })
    }

    /// Replaces the document whatever it holds now (an administrator's
    /// import), and remembers the new version.
    pub fn overwrite(&self, bytes: &[u8]) -> Result<(), MapError> {
        for _ in 0..10 {
            self.load()?;
            match self.store(bytes) {
                Err(MapError::Conflict { .. }) => continue,
                r => return r,
            }
        }
        Err(MapError::Conflict {
            what: self.describe(),
            expected: -1,
            actual: self.current_version().unwrap_or(-1),
        })
    }

    /// Whether the document holds exactly `bytes` at `version`.
    fn holds(&self, bytes: &[u8], version: i32) -> Result<bool, zk::Error> {
        let c = self.client();
        match self.run(c.get_data(&self.path)) {
            Ok((d, st)) => Ok(d == bytes && st.version == version),
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn current_version(&self) -> Option<i32> {
        let c = self.client();
        self.run(c.check_stat(&self.path))
            .ok()
            .flatten()
            .map(|st| st.version)
    }

    /// Creates the document's missing ancestors (empty, persistent).
    fn create_parents(&self) -> Result<(), MapError> {
        let mut cur = String::new();
        let parent = self.path.rsplit_once('/').map_or("", |(p, _)| p);
        for comp in parent.split('/').filter(|c| !c.is_empty()) {
            cur = format!("{cur}/{comp}");
            let opts = zk::CreateMode::Persistent.with_acls(self.acls());
            let c = self.client();
            match self.run(c.create(&cur, b"", &opts)) {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_err("creating", &cur, e)),
            }
        }
        Ok(())
    }
}
