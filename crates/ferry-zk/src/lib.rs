//! The cluster LUN map in ZooKeeper (3.6 or later: persistent recursive
//! watches).
//!
//! Layout under the root (default `/ferry`; `zk://h1:2181,h2:2181/path`):
//!
//! | znode | kind | written by |
//! |---|---|---|
//! | `version` | persistent; its version is the map's version | every edit |
//! | `targets/<iqn>`, `luns/<name>`, `initiators/<iqn>`, `nodes/<name>` | persistent JSON | admins (CLI) |
//! | `migrations/<lun>` | persistent JSON request | admins |
//! | `live/<node>` | **ephemeral** registration | the node's agent |
//! | `owners/<lun>` | **ephemeral** serving claim | the serving node's agent |
//! | `status/<node>`, `migration-status/<lun>` | persistent JSON reports | agents |
//!
//! Every edit of the desired state is one `multi`: a version check of
//! `version` (so it applies to exactly the map that was validated), the
//! document writes with their own expected versions, and a write of
//! `version` that bumps it. Agents hold one persistent recursive watch on
//! the root; a change anywhere wakes them (their own reports excepted).
//!
//! With credentials (`user:password`, digest scheme) every znode is
//! created with the creator-only ACL, so clients without them can neither
//! read CHAP secrets nor change the map. Credentials are never logged.
//!
//! The client runs on a private single-worker tokio runtime, so the
//! session's heartbeats continue while the agent blocks in `tgtadm`; the
//! API here is blocking.
//!
//! Errors: reading a URL, connecting and authenticating fail with a
//! [`ZkError`]; requests on the map, and on a [`ZkDocument`], with the
//! map's own [`MapError`] (see [`error`] for why), into which a `ZkError`
//! converts.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_map::state::{LiveNode, MigrationRequest, MigrationStatus, NodeStatus, Snapshot};
use ferry_map::store::{Event, MapStore, Op, Session};
use ferry_map::Kind;
use parking_lot::Mutex;
use zookeeper_client as zk;

mod document;
pub mod error;
pub mod reservations;
pub use document::ZkDocument;
pub use error::ZkError;
pub use ferry_map::MapError;
pub use reservations::ZkReservations;

/// How to reach the map.
#[derive(Clone)]
pub struct ZkConfig {
    /// `host:port[,host:port...]`.
    pub servers: String,
    /// The map's root znode.
    pub root: String,
    /// `user:password` for the digest scheme.
    pub auth: Option<String>,
    pub session_timeout: Duration,
    /// How long to try reaching a server before giving up.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ZkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkConfig")
            .field("servers", &self.servers)
            .field("root", &self.root)
            .field("auth", &self.auth.as_ref().map(|_| "<hidden>"))
            .field("session_timeout", &self.session_timeout)
            .finish()
    }
}

impl ZkConfig {
    /// Parses `zk://host:port[,host:port]/root` (root defaults to
    /// `/ferry`).
    pub fn parse(url: &str) -> Result<ZkConfig, ZkError> {
        let bad = |why: &'static str| ZkError::BadUrl {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| bad("no zk:// prefix"))?;
        let (servers, root) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ferry"),
        };
        if servers.is_empty() {
            return Err(bad("no servers"));
        }
        for s in servers.split(',') {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| bad("a server without :port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("bad host:port"));
            }
        }
        let root = root.trim_end_matches('/');
        if root.is_empty()
            || root.contains("//")
            || !root[1..].split('/').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
        {
            return Err(bad("bad root path"));
        }
        Ok(ZkConfig {
            servers: servers.to_string(),
            root: root.to_string(),
            auth: None,
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        })
    }
}

/// Dirs under the root, created on first use.
const DIRS: [&str; 10] = [
    "targets",
    "luns",
    "initiators",
    "nodes",
    "migrations",
    "live",
    "owners",
    "status",
    "migration-status",
    "reservations",
];

/// A connection to the map in ZooKeeper.
pub struct ZkStore {
    cfg: ZkConfig,
    rt: tokio::runtime::Runtime,
    client: zk::Client,
    session: Arc<Mutex<Session>>,
    /// Bumped on every reconnection (see [`ZkStore::ensure_watch`]).
    reconnects: Arc<AtomicU64>,
    /// The watch, and the reconnection count when it was added.
    watcher: Mutex<Option<(zk::PersistentWatcher, u64)>>,
}

fn zk_err(op: &'static str, path: &str, e: zk::Error) -> MapError {
    match e {
        zk::Error::NoAuth => MapError::NotAuthorized {
            op,
            path: path.to_string(),
        },
        zk::Error::SessionExpired => MapError::SessionExpired,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::NoHosts => {
            MapError::Unreachable {
                store: "ZooKeeper".into(),
                why: e.to_string(),
            }
        }
        zk::Error::AuthFailed => MapError::NotAuthorized {
            op: "authenticate to",
            path: path.to_string(),
        },
        e => MapError::Store {
            op,
            path: path.to_string(),
            why: e.to_string(),
        },
    }
}

/// A private single-worker runtime and a client connected (and
/// authenticated) to `cfg`'s servers, or [`ZkError::ConnectTimeout`] after
/// its connect timeout.
fn connect_client(cfg: &ZkConfig) -> Result<(tokio::runtime::Runtime, zk::Client), ZkError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ferry-zk")
        .enable_all()
        .build()
        .map_err(ZkError::Runtime)?;
    let client = connect_on(&rt, cfg)?;
    Ok((rt, client))
}

/// A client connected (and authenticated) to `cfg`'s servers on `rt`, or
/// [`ZkError::ConnectTimeout`] after its connect timeout.
fn connect_on(rt: &tokio::runtime::Runtime, cfg: &ZkConfig) -> Result<zk::Client, ZkError> {
    let store = || format!("zk://{}{}", cfg.servers, cfg.root);
    let mut connector = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_connection_timeout(cfg.connect_timeout);
    if let Some(a) = &cfg.auth {
        connector = connector.with_auth("digest", a.as_bytes());
    }
    rt.block_on(async {
        tokio::time::timeout(cfg.connect_timeout, connector.connect(&cfg.servers)).await
    })
    .map_err(|_| ZkError::ConnectTimeout {
        store: store(),
        timeout: cfg.connect_timeout,
    })?
    .map_err(|e| match e {
        zk::Error::AuthFailed => ZkError::AuthFailed {
            root: cfg.root.clone(),
        },
        source => ZkError::Connect {
            store: store(),
            source,
        },
    })
}

impl ZkStore {
    /// Connects, authenticates, and makes sure the layout exists. Fails
    /// with [`ZkError::ConnectTimeout`] after `connect_timeout`.
    pub fn connect(cfg: ZkConfig) -> Result<ZkStore, ZkError> {
        let (rt, client) = connect_client(&cfg)?;
        let session = Arc::new(Mutex::new(Session::Connected));
        let reconnects = Arc::new(AtomicU64::new(0));
        {
            let session = session.clone();
            let reconnects = reconnects.clone();
            let mut states = client.state_watcher();
            rt.spawn(async move {
                loop {
                    let s = states.changed().await;
                    let mut cur = session.lock();
                    if matches!(s, zk::SessionState::SyncConnected)
                        && matches!(*cur, Session::Disconnected(_))
                    {
                        reconnects.fetch_add(1, AtomicOrdering::SeqCst);
                    }
                    *cur = match s {
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                            Session::Connected
                        }
                        zk::SessionState::Disconnected => match *cur {
                            Session::Disconnected(t) => Session::Disconnected(t),
                            _ => Session::Disconnected(Instant::now()),
                        },
                        _ => Session::Expired,
                    };
                    log::info!("ZooKeeper session: {s:?}");
                    if matches!(*cur, Session::Expired) {
                        break;
                    }
                }
            });
        }
        let store = ZkStore {
            cfg,
            rt,
            client,
            session,
            reconnects,
            watcher: Mutex::new(None),
        };
        store.ensure_layout()?;
        // Watch from the start, so nothing between the first snapshot and
        // the first wait goes unseen.
        store.ensure_watch()?;
        Ok(store)
    }

    /// Runs one request, giving up after a third of the session timeout:
    /// while the client is cut off, requests would otherwise wait until it
    /// gives up on the session, and the agent must stay free to fence.
    fn run<T, E: From<zk::Error>>(&self, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let limit = (self.cfg.session_timeout / 3).max(Duration::from_secs(1));
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, f).await })
        {
            Ok(r) => r,
            Err(_) => Err(zk::Error::ConnectionLoss.into()),
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.cfg.root)
    }

    fn acls(&self) -> zk::Acls<'static> {
        if self.cfg.auth.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    fn ensure_layout(&self) -> Result<(), MapError> {
        let opts = zk::CreateMode::Persistent.with_acls(self.acls());
        // Ancestors of the root (e.g. /prod for /prod/ferry) and the root.
        let mut cur = String::new();
        for comp in self.cfg.root[1..].split('/') {
            cur = format!("{cur}/{comp}");
            self.create_if_missing(&cur, &opts)?;
        }
        for d in DIRS.iter().copied().chain(["version"]) {
            self.create_if_missing(&self.path(d), &opts)?;
        }
        Ok(())
    }

    fn create_if_missing(&self, path: &str, opts: &zk::CreateOptions<'_>) -> Result<(), MapError> {
        match self.run(self.client.create(path, b"", opts)) {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(zk_err("creating", path, e)),
        }
    }

    fn get(&self, path: &str) -> Result<Option<(Vec<u8>, i32)>, MapError> {
        match self.run(self.client.get_data(path)) {
            Ok((d, st)) => Ok(Some((d, st.version))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err("reading", path, e)),
        }
    }

    fn children(&self, dir: &str) -> Result<Vec<String>, MapError> {
        let p = self.path(dir);
        self.run(self.client.list_children(&p))
            .map_err(|e| zk_err("listing", &p, e))
    }

    /// Every document under `dir`, parsed.
    fn docs<T: serde::de::DeserializeOwned>(
        &self,
        dir: &str,
    ) -> Result<BTreeMap<String, (T, i32)>, MapError> {
        let mut out = BTreeMap::new();
        for name in self.children(dir)? {
            let p = self.path(&format!("{dir}/{name}"));
            // Gone between the listing and the read: skip it.
            let Some((data, v)) = self.get(&p)? else {
                continue;
            };
            let doc = serde_json::from_slice(&data).map_err(|e| MapError::Corrupt {
                path: p.clone(),
                why: e.to_string(),
            })?;
            out.insert(name, (doc, v));
        }
        Ok(out)
    }

    /// Like [`ZkStore::docs`] for documents agents write: one malformed
    /// report (a newer or older agent) is logged and skipped rather than
    /// stopping every reader.
    fn reports<T: serde::de::DeserializeOwned>(
        &self,
        dir: &str,
    ) -> Result<BTreeMap<String, T>, MapError> {
        let mut out = BTreeMap::new();
        for name in self.children(dir)? {
            let p = self.path(&format!("{dir}/{name}"));
            let Some((data, _)) = self.get(&p)? else {
                continue;
            };
            match serde_json::from_slice(&data) {
                Ok(doc) => {
                    out.insert(name, doc);
                }
                Err(e) => log::warn!("skipping unreadable report {p}: {e}"),
            }
        }
        Ok(out)
    }

    fn version(&self) -> Result<i32, MapError> {
        let p = self.path("version");
        self.get(&p)?
            .map(|(_, v)| v)
            .ok_or_else(|| MapError::Corrupt {
                path: p,
                why: "missing".into(),
            })
    }

    fn read_snapshot(&self) -> Result<Snapshot, MapError> {
        let mut s = Snapshot {
            version: self.version()?,
            ..Default::default()
        };
        for (k, (t, v)) in self.docs("targets")? {
            s.versions.insert((Kind::Target, k.clone()), v);
            s.map.targets.insert(k, t);
        }
        for (k, (t, v)) in self.docs("luns")? {
            s.versions.insert((Kind::Lun, k.clone()), v);
            s.map.luns.insert(k, t);
        }
        for (k, (t, v)) in self.docs("initiators")? {
            s.versions.insert((Kind::Initiator, k.clone()), v);
            s.map.initiators.insert(k, t);
        }
        for (k, (t, v)) in self.docs("nodes")? {
            s.versions.insert((Kind::Node, k.clone()), v);
            s.map.nodes.insert(k, t);
        }
        s.migrations = self.docs("migrations")?;
        s.live = self.reports::<LiveNode>("live")?;
        for name in self.children("owners")? {
            if let Some((d, _)) = self.get(&self.path(&format!("owners/{name}")))? {
                s.owners
                    .insert(name, String::from_utf8_lossy(&d).into_owned());
            }
        }
        s.status = self.reports::<NodeStatus>("status")?;
        s.migration_status = self.reports::<MigrationStatus>("migration-status")?;
        Ok(s)
    }

    fn doc_path(&self, kind: Kind, name: &str) -> String {
        self.path(&format!("{}/{name}", kind.dir()))
    }

    fn put_report(&self, path: String, bytes: Vec<u8>) -> Result<(), MapError> {
        match self.run(self.client.set_data(&path, &bytes, None)) {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) => {
                let opts = zk::CreateMode::Persistent.with_acls(self.acls());
                match self.run(self.client.create(&path, &bytes, &opts)) {
                    Ok(_) => Ok(()),
                    Err(zk::Error::NodeExists) => self
                        .run(self.client.set_data(&path, &bytes, None))
                        .map(|_| ())
                        .map_err(|e| zk_err("writing", &path, e)),
                    Err(e) => Err(zk_err("creating", &path, e)),
                }
            }
            Err(e) => Err(zk_err("writing", &path, e)),
        }
    }

    /// Adds the persistent recursive watch on the root, and adds it again
    /// after every reconnection: the client library (0.11) re-registers
    /// only one-shot watches with the server when it reconnects, so a
    /// persistent watch would silently stop firing after a ZooKeeper
    /// restart. The new watch is added before the old one is dropped, so
    /// the server always has one.
    fn ensure_watch(&self) -> Result<(), MapError> {
        let mut slot = self.watcher.lock();
        let epoch = self.reconnects.load(AtomicOrdering::SeqCst);
        if slot.as_ref().is_none_or(|(_, e)| *e != epoch) {
            let w = self
                .run(
                    self.client
                        .watch(&self.cfg.root, zk::AddWatchMode::PersistentRecursive),
                )
                .map_err(|e| zk_err("watching", &self.cfg.root, e))?;
            *slot = Some((w, epoch));
        }
        Ok(())
    }

    /// Whether `live/<node>` was left by an agent of this host that died
    /// before its session ended.
    fn predecessor_is_dead(&self, path: &str) -> bool {
        self.get(path)
            .ok()
            .flatten()
            .and_then(|(d, _)| serde_json::from_slice::<LiveNode>(&d).ok())
            .is_some_and(|l| l.is_dead_on_this_host())
    }

    /// Takes over the registration and claims of this node's dead
    /// predecessor in one multi (each ephemeral deleted at the version
    /// read and created again under this session), so a restarted agent
    /// keeps its LUNs where they are instead of letting them move when
    /// the old session expires. Nobody else can slip in between.
    fn adopt(&self, node: &str, live: &LiveNode, live_version: i32) -> Result<(), MapError> {
        let lp = self.path(&format!("live/{node}"));
        let opts = zk::CreateMode::Ephemeral.with_acls(self.acls());
        let mut w = self.client.new_multi_writer();
        let add = |r: Result<(), zk::Error>, p: &str| r.map_err(|e| zk_err("preparing", p, e));
        add(w.add_delete(&lp, Some(live_version)), &lp)?;
        add(w.add_create(&lp, &to_json(live)?, &opts), &lp)?;
        let mut adopted = Vec::new();
        for lun in self.children("owners")? {
            let op = self.path(&format!("owners/{lun}"));
            if let Some((d, v)) = self.get(&op)? {
                if d == node.as_bytes() {
                    add(w.add_delete(&op, Some(v)), &op)?;
                    add(w.add_create(&op, node.as_bytes(), &opts), &op)?;
                    adopted.push(lun);
                }
            }
        }
        self.run(w.commit())
            .map_err(|e| zk_err("adopting", &lp, e.into()))?;
        log::info!(
            "node {node}: took over the registration and {} claim(s) of this host's previous agent",
            adopted.len()
        );
        Ok(())
    }

    /// Whether an event concerns the desired state or membership (agents'
    /// own reports do not wake agents).
    fn interesting(&self, path: &str) -> bool {
        let rel = path.strip_prefix(&self.cfg.root).unwrap_or(path);
        !(rel.starts_with("/status")
            || rel.starts_with("/migration-status")
            || rel.starts_with("/reservations"))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, MapError> {
    serde_json::to_vec(v).map_err(|e| MapError::invalid(e.to_string()))
}

impl MapStore for ZkStore {
    fn describe(&self) -> String {
        format!("zk://{}{}", self.cfg.servers, self.cfg.root)
    }

    fn snapshot(&self) -> Result<Snapshot, MapError> {
        // Reads are several requests; a snapshot is consistent when the
        // map's version did not move while it was read.
        for _ in 0..10 {
            let s = self.read_snapshot()?;
            if self.version()? == s.version {
                return Ok(s);
            }
        }
        Err(MapError::Store {
            op: "reading",
            path: self.cfg.root.clone(),
            why: "the map kept changing during ten reads".into(),
        })
    }

    fn commit(&self, base: i32, ops: &[Op]) -> Result<i32, MapError> {
        let vpath = self.path("version");
        let opts = zk::CreateMode::Persistent.with_acls(self.acls());
        let mut w = self.client.new_multi_writer();
        let add = |r: Result<(), zk::Error>, p: &str| r.map_err(|e| zk_err("preparing", p, e));
        add(w.add_check_version(&vpath, base), &vpath)?;
        let mut what = vec![("the map".to_string(), base, None)];
        for op in ops {
            match op {
                Op::Create { kind, name, doc } => {
                    let p = self.doc_path(*kind, name);
                    add(w.add_create(&p, &to_json(doc)?, &opts), &p)?;
                    what.push((p, -1, Some((*kind, name.clone()))));
                }
                Op::Set {
                    kind,
                    name,
                    doc,
                    version,
                } => {
                    let p = self.doc_path(*kind, name);
                    add(w.add_set_data(&p, &to_json(doc)?, Some(*version)), &p)?;
                    what.push((p, *version, Some((*kind, name.clone()))));
                }
                Op::Delete {
                    kind,
                    name,
                    version,
                } => {
                    let p = self.doc_path(*kind, name);
                    add(w.add_delete(&p, Some(*version)), &p)?;
                    what.push((p, *version, Some((*kind, name.clone()))));
                }
            }
        }
        add(w.add_set_data(&vpath, b"", Some(base)), &vpath)?;
        match self.run(w.commit()) {
            Ok(results) => match results.last() {
                Some(zk::MultiWriteResult::SetData { stat }) => Ok(stat.version),
                _ => self.version(),
            },
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let (p, expected, doc) = what
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| (vpath.clone(), base, None));
                let actual = || self.get(&p).ok().flatten().map_or(-1, |(_, v)| v);
                Err(match (source, doc) {
                    (zk::Error::BadVersion, None) => MapError::Conflict {
                        what: "the map".into(),
                        expected,
                        actual: self.version().unwrap_or(-1),
                    },
                    (zk::Error::BadVersion, Some(_)) => MapError::Conflict {
                        what: p.clone(),
                        expected,
                        actual: actual(),
                    },
                    (zk::Error::NodeExists, Some((kind, name))) => MapError::Exists { kind, name },
                    (zk::Error::NoNode, Some((kind, name))) => MapError::NotFound { kind, name },
                    (e, _) => zk_err("committing", &p, e),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                Err(zk_err("committing", &self.cfg.root, source))
            }
        }
    }

    fn request_migration(
        &self,
        lun: &str,
        req: &MigrationRequest,
        expect: Option<i32>,
    ) -> Result<(), MapError> {
        let p = self.path(&format!("migrations/{lun}"));
        let vpath = self.path("version");
        let bytes = to_json(req)?;
        let mut w = self.client.new_multi_writer();
        let add = |r: Result<(), zk::Error>| r.map_err(|e| zk_err("preparing", &p, e));
        match expect {
            None => add(w.add_create(
                &p,
                &bytes,
                &zk::CreateMode::Persistent.with_acls(self.acls()),
            ))?,
            Some(v) => add(w.add_set_data(&p, &bytes, Some(v)))?,
        }
        // Bump the map version too, so every agent's watch sees one change.
        add(w.add_set_data(&vpath, b"", None))?;
        match self.run(w.commit()) {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode,
            }) => Err(MapError::Conflict {
                what: format!("migration request of {lun}"),
                expected: expect.unwrap_or(-1),
                actual: self.get(&p)?.map_or(-1, |(_, v)| v),
            }),
            Err(e) => Err(zk_err("committing", &p, e.into())),
        }
    }

    fn register(&self, node: &str, live: &LiveNode) -> Result<(), MapError> {
        let p = self.path(&format!("live/{node}"));
        let opts = zk::CreateMode::Ephemeral.with_acls(self.acls());
        match self.run(self.client.create(&p, &to_json(live)?, &opts)) {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => {
                // Ours from before a reconnect, or another live agent's.
                let st = self
                    .run(self.client.check_stat(&p))
                    .map_err(|e| zk_err("reading", &p, e))?;
                match st {
                    Some(st) if st.ephemeral_owner == self.client.session_id().0 => Ok(()),
                    Some(st) if self.predecessor_is_dead(&p) => self.adopt(node, live, st.version),
                    Some(_) => Err(MapError::Exists {
                        kind: Kind::Node,
                        name: format!("{node} (registered by another live agent; wait for its session to end)"),
                    }),
                    None => self.register(node, live),
                }
            }
            Err(e) => Err(zk_err("registering", &p, e)),
        }
    }

    fn claim(&self, lun: &str, node: &str) -> Result<bool, MapError> {
        let p = self.path(&format!("owners/{lun}"));
        let opts = zk::CreateMode::Ephemeral.with_acls(self.acls());
        match self.run(self.client.create(&p, node.as_bytes(), &opts)) {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => {
                let st = self
                    .run(self.client.check_stat(&p))
                    .map_err(|e| zk_err("reading", &p, e))?;
                Ok(st.is_some_and(|st| st.ephemeral_owner == self.client.session_id().0))
            }
            Err(e) => Err(zk_err("claiming", &p, e)),
        }
    }

    fn release(&self, lun: &str, node: &str) -> Result<(), MapError> {
        let p = self.path(&format!("owners/{lun}"));
        match self.get(&p)? {
            Some((d, v)) if d == node.as_bytes() => match self.run(self.client.delete(&p, Some(v)))
            {
                Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                Err(e) => Err(zk_err("releasing", &p, e)),
            },
            _ => Ok(()),
        }
    }

    fn put_status(&self, node: &str, status: &NodeStatus) -> Result<(), MapError> {
        self.put_report(self.path(&format!("status/{node}")), to_json(status)?)
    }

    fn put_migration_status(&self, lun: &str, status: &MigrationStatus) -> Result<(), MapError> {
        self.put_report(
            self.path(&format!("migration-status/{lun}")),
            to_json(status)?,
        )
    }

    fn wait(&self, timeout: Duration) -> Result<Event, MapError> {
        self.ensure_watch()?;
        let mut slot = self.watcher.lock();
        let Some((w, watched_since)) = slot.as_mut() else {
            return Err(MapError::SessionExpired);
        };
        // The reconnection count the watch was added at (a reconnection
        // since then, even before this wait, means adding it again).
        let watched_since = *watched_since;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Wake every half second to notice a reconnection: the watch
            // does not always deliver the session event that says so, and
            // it must be added again (`ensure_watch`) or this node would
            // sleep through changes until its next resync (a LUN it
            // should claim first would go to another node meanwhile).
            let tick = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
            let ev = self
                .rt
                .block_on(async { tokio::time::timeout_at(tick, w.changed()).await });
            let Ok(ev) = ev else {
                if self.reconnects.load(AtomicOrdering::SeqCst) != watched_since {
                    return Ok(Event::Changed);
                }
                if tick >= deadline {
                    return Ok(Event::Timeout);
                }
                continue;
            };
            if ev.event_type == zk::EventType::Session {
                if ev.session_state.is_terminated() {
                    // Expired, closed or failed authentication: the
                    // watcher delivers nothing more (and would panic).
                    *slot = None;
                    return Err(MapError::SessionExpired);
                }
                if ev.session_state == zk::SessionState::SyncConnected {
                    // Reconnected: add the watch again on the next wait
                    // (see `ensure_watch`); what changed meanwhile is
                    // read by the pass this wakes.
                    if let Some((_, e)) = slot.as_mut() {
                        *e = u64::MAX;
                    }
                }
                return Ok(Event::Changed);
            }
            if self.interesting(&ev.path) {
                // Swallow the rest of this burst (one multi fires several),
                // still minding session events.
                while let Ok(ev) = self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(2), w.changed()).await
                }) {
                    if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() {
                        *slot = None;
                        return Err(MapError::SessionExpired);
                    }
                }
                return Ok(Event::Changed);
            }
        }
    }

    fn session(&self) -> Session {
        *self.session.lock()
    }

    fn session_timeout(&self) -> Duration {
        self.client.session_timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c = ZkConfig::parse("zk://127.0.0.1:2181").unwrap();
        assert_eq!(
            (c.servers.as_str(), c.root.as_str()),
            ("127.0.0.1:2181", "/ferry")
        );
        let c = ZkConfig::parse("zk://a:1,b:2/prod/ferry/").unwrap();
        assert_eq!(
            (c.servers.as_str(), c.root.as_str()),
            ("a:1,b:2", "/prod/ferry")
        );
        for bad in [
            "127.0.0.1:2181",
            "zk://",
            "zk://host",
            "zk://h:x",
            "zk://h:1//x",
            "zk://h:1/a b",
        ] {
            assert!(ZkConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_stay_out_of_debug_output() {
        let mut c = ZkConfig::parse("zk://h:1").unwrap();
        c.auth = Some("admin:topsecret".into());
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
