//! The embedded single-node store: the map in one JSON file, for a gateway
//! without ZooKeeper (`--map file:/var/lib/ferry/map`).
//!
//! Layout of the directory:
//! - `map.json`: the global version, every document with its version, and
//!   migration requests. Commits take an exclusive `flock` on `map.lock`,
//!   re-read, check versions, then write a temporary file, fsync it and
//!   rename it over `map.json` (then fsync the directory), so a crash
//!   leaves either the old or the new map, never a torn one.
//! - `live/<node>`, `owners/<lun>`: the "ephemeral" entries; each holds the
//!   pid and start time of the agent that wrote it and counts only while
//!   that process lives (the single-node stand-in for a session).
//! - `status/<node>.json`, `migration-status/<lun>.json`: reports.
//!
//! Agents wait on inotify (no polling) for changes of the map, claims and
//! registrations.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema::Kind;
use crate::state::{LiveNode, MigrationRequest, MigrationStatus, NodeStatus, Snapshot};
use crate::store::{Event, MapStore, Op, Session};
use crate::MapError;

#[derive(Debug, Default, Serialize, Deserialize)]
struct MapFile {
    version: i32,
    /// "kind/name" -> document.
    docs: BTreeMap<String, Doc>,
    migrations: BTreeMap<String, Doc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doc {
    version: i32,
    doc: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    node: String,
    pid: u32,
    start: u64,
    #[serde(default)]
    live: Option<LiveNode>,
}

/// The map kept in a local directory.
/// How often [`FileStore`]'s wait looks whether a registration's or a
/// claim's process died.
pub const HOLDER_CHECK: Duration = Duration::from_millis(200);

pub struct FileStore {
    dir: PathBuf,
    inotify: OwnedFd,
    /// The live registrations and claims the last snapshot saw: a wait
    /// wakes when they no longer are (a holder died since).
    seen: std::sync::Mutex<Option<Holders>>,
}

/// Names of the live registrations and of the claimed LUNs.
type Holders = (Vec<String>, Vec<String>);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MapError + 'a {
    move |source| MapError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

use crate::state::process_start_time as start_time;

fn key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.dir())
}

/// The document a `Set` or `Delete` names, if it is at `version`.
fn at_version<'a>(
    docs: &'a mut BTreeMap<String, Doc>,
    kind: Kind,
    name: &str,
    version: i32,
) -> Result<(String, &'a mut Doc), MapError> {
    let k = key(kind, name);
    let d = docs.get_mut(&k).ok_or_else(|| MapError::NotFound {
        kind,
        name: name.to_string(),
    })?;
    if d.version != version {
        return Err(MapError::Conflict {
            what: k,
            expected: version,
            actual: d.version,
        });
    }
    Ok((k, d))
}

impl FileStore {
    /// Opens (creating) the store directory.
    pub fn open(dir: &Path) -> Result<FileStore, MapError> {
        for sub in ["", "live", "owners", "status", "migration-status"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        Ok(FileStore {
            dir: dir.to_path_buf(),
            inotify: Self::watch(dir)?,
            seen: std::sync::Mutex::new(None),
        })
    }

    fn read_map(&self) -> Result<MapFile, MapError> {
        let p = self.dir.join("map.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| MapError::Corrupt {
                path: p.display().to_string(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MapFile::default()),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), MapError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming", path))?;
        let dir = path.parent().unwrap_or(&self.dir);
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))
    }

    /// Takes the exclusive lock `name` in the store's directory; it is
    /// held until the returned file is dropped.
    fn lock(&self, name: &str) -> Result<fs::File, MapError> {
        let path = self.dir.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(file)
    }

    /// Runs `f` on the map under the store's lock and writes the result.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut MapFile) -> Result<T, MapError>,
    ) -> Result<T, MapError> {
        let _lock = self.lock("map.lock")?;
        let mut m = self.read_map()?;
        let out = f(&mut m)?;
        let bytes = serde_json::to_vec_pretty(&m).map_err(|e| MapError::invalid(e.to_string()))?;
        self.write_atomic(&self.dir.join("map.json"), &bytes)?;
        Ok(out)
    }

    fn holder(&self, path: &Path) -> Option<Holder> {
        let h: Holder = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        (start_time(h.pid) == Some(h.start)).then_some(h)
    }

    fn holders(&self, sub: &str) -> BTreeMap<String, Holder> {
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(self.dir.join(sub)) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp.") {
                continue;
            }
            if let Some(h) = self.holder(&e.path()) {
                out.insert(name, h);
            }
        }
        out
    }

    fn live_holders(&self) -> Holders {
        (
            self.holders("live").into_keys().collect(),
            self.holders("owners").into_keys().collect(),
        )
    }

    fn me(&self, node: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            node: node.to_string(),
            pid,
            start: start_time(pid).unwrap_or(0),
            live: None,
        }
    }

    fn reports<T: for<'de> Deserialize<'de>>(&self, sub: &str) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.dir.join(sub)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(name) = name.strip_suffix(".json") else {
                    continue;
                };
                if let Some(v) = fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    out.insert(name.to_string(), v);
                }
            }
        }
        out
    }

    fn watch(dir: &Path) -> Result<OwnedFd, MapError> {
        {
            use rustix::fs::inotify;
            let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
                .map_err(|e| io_err("inotify", dir)(e.into()))?;
            let flags = inotify::WatchFlags::CLOSE_WRITE
                | inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::DELETE
                | inotify::WatchFlags::CREATE;
            for sub in ["", "live", "owners"] {
                let d = dir.join(sub);
                inotify::add_watch(&fd, &d, flags).map_err(|e| io_err("watching", &d)(e.into()))?;
            }
            Ok(fd)
        }
    }
}

impl MapStore for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    fn snapshot(&self) -> Result<Snapshot, MapError> {
        let m = self.read_map()?;
        let mut s = Snapshot {
            version: m.version,
            ..Default::default()
        };
        for (k, d) in &m.docs {
            let corrupt = |why: String| MapError::Corrupt {
                path: k.clone(),
                why,
            };
            let (dir, name) = k.split_once('/').ok_or_else(|| corrupt("bad key".into()))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.dir() == dir)
                .ok_or_else(|| corrupt("unknown kind".into()))?;
            let v = d.doc.clone();
            let bad = |e: serde_json::Error| corrupt(e.to_string());
            match kind {
                Kind::Target => {
                    s.map
                        .targets
                        .insert(name.into(), serde_json::from_value(v).map_err(bad)?);
                }
                Kind::Lun => {
                    s.map
                        .luns
                        .insert(name.into(), serde_json::from_value(v).map_err(bad)?);
                }
                Kind::Initiator => {
                    s.map
                        .initiators
                        .insert(name.into(), serde_json::from_value(v).map_err(bad)?);
                }
                Kind::Node => {
                    s.map
                        .nodes
                        .insert(name.into(), serde_json::from_value(v).map_err(bad)?);
                }
            }
            s.versions.insert((kind, name.to_string()), d.version);
        }
        for (lun, d) in &m.migrations {
            let req = serde_json::from_value(d.doc.clone()).map_err(|e| MapError::Corrupt {
                path: format!("migrations/{lun}"),
                why: e.to_string(),
            })?;
            s.migrations.insert(lun.clone(), (req, d.version));
        }
        let live = self.holders("live");
        let owners = self.holders("owners");
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((
                live.keys().cloned().collect(),
                owners.keys().cloned().collect(),
            ));
        }
        for (node, h) in live {
            if let Some(l) = h.live {
                s.live.insert(node, l);
            }
        }
        for (lun, h) in owners {
            s.owners.insert(lun, h.node);
        }
        s.status = self.reports("status");
        s.migration_status = self.reports("migration-status");
        Ok(s)
    }

    fn commit(&self, base: i32, ops: &[Op]) -> Result<i32, MapError> {
        self.locked(|m| {
            if m.version != base {
                return Err(MapError::Conflict {
                    what: "the map".into(),
                    expected: base,
                    actual: m.version,
                });
            }
            for op in ops {
                match op {
                    Op::Create { kind, name, doc } => {
                        let k = key(*kind, name);
                        if m.docs.contains_key(&k) {
                            return Err(MapError::Exists {
                                kind: *kind,
                                name: name.clone(),
                            });
                        }
                        m.docs.insert(
                            k,
                            Doc {
                                version: 0,
                                doc: doc.clone(),
                            },
                        );
                    }
                    Op::Set {
                        kind,
                        name,
                        doc,
                        version,
                    } => {
                        let (_, d) = at_version(&mut m.docs, *kind, name, *version)?;
                        *d = Doc {
                            version: version + 1,
                            doc: doc.clone(),
                        };
                    }
                    Op::Delete {
                        kind,
                        name,
                        version,
                    } => {
                        let (k, _) = at_version(&mut m.docs, *kind, name, *version)?;
                        m.docs.remove(&k);
                    }
                }
            }
            m.version += 1;
            Ok(m.version)
        })
    }

    fn request_migration(
        &self,
        lun: &str,
        req: &MigrationRequest,
        expect: Option<i32>,
    ) -> Result<(), MapError> {
        let doc = serde_json::to_value(req).map_err(|e| MapError::invalid(e.to_string()))?;
        self.locked(|m| {
            let cur = m.migrations.get(lun).map(|d| d.version);
            if cur != expect {
                return Err(MapError::Conflict {
                    what: format!("migration request of {lun}"),
                    expected: expect.unwrap_or(-1),
                    actual: cur.unwrap_or(-1),
                });
            }
            m.migrations.insert(
                lun.to_string(),
                Doc {
                    version: cur.map_or(0, |v| v + 1),
                    doc,
                },
            );
            m.version += 1;
            Ok(())
        })
    }

    fn register(&self, node: &str, live: &LiveNode) -> Result<(), MapError> {
        let mut h = self.me(node);
        h.live = Some(live.clone());
        let p = self.dir.join("live").join(node);
        if let Some(other) = self.holder(&p) {
            if other.pid != h.pid {
                return Err(MapError::Exists {
                    kind: Kind::Node,
                    name: format!("{node} (registered by live process {})", other.pid),
                });
            }
        }
        let bytes = serde_json::to_vec(&h).map_err(|e| MapError::invalid(e.to_string()))?;
        self.write_atomic(&p, &bytes)
    }

    fn claim(&self, lun: &str, node: &str) -> Result<bool, MapError> {
        let p = self.dir.join("owners").join(lun);
        let me = self.me(node);
        let bytes = serde_json::to_vec(&me).map_err(|e| MapError::invalid(e.to_string()))?;
        // A stale claim (its process is gone) is replaced; a live one wins.
        // The check and the write happen under one lock of the owners
        // directory, so two claimants cannot both win.
        let _lock = self.lock("owners.lock")?;
        match self.holder(&p) {
            Some(h) => Ok(h.node == node && h.pid == me.pid),
            None => self.write_atomic(&p, &bytes).map(|_| true),
        }
    }

    fn release(&self, lun: &str, node: &str) -> Result<(), MapError> {
        let p = self.dir.join("owners").join(lun);
        if self.holder(&p).is_some_and(|h| h.node == node) {
            fs::remove_file(&p).map_err(io_err("removing", &p))?;
        }
        Ok(())
    }

    fn put_status(&self, node: &str, status: &NodeStatus) -> Result<(), MapError> {
        let p = self.dir.join("status").join(format!("{node}.json"));
        let bytes = serde_json::to_vec(status).map_err(|e| MapError::invalid(e.to_string()))?;
        self.write_atomic(&p, &bytes)
    }

    fn put_migration_status(&self, lun: &str, status: &MigrationStatus) -> Result<(), MapError> {
        let p = self
            .dir
            .join("migration-status")
            .join(format!("{lun}.json"));
        let bytes = serde_json::to_vec(status).map_err(|e| MapError::invalid(e.to_string()))?;
        self.write_atomic(&p, &bytes)
    }

    /// Wakes on a change of the files, and on the death of a process
    /// holding a registration or a claim: those end with their process
    /// (no file changes), and a node's LUNs must move at once, not at the
    /// next resync. Liveness is looked at every [`HOLDER_CHECK`].
    fn wait(&self, timeout: Duration) -> Result<Event, MapError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        // Against what the last snapshot saw: a death between that
        // snapshot and this wait counts.
        let seen = self.seen.lock().ok().and_then(|s| s.clone());
        let before = seen.unwrap_or_else(|| self.live_holders());
        let deadline = std::time::Instant::now() + timeout;
        let fd = &self.inotify;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let slice = left.min(HOLDER_CHECK);
            let ts = Timespec {
                tv_sec: slice.as_secs() as i64, // at most HOLDER_CHECK
                tv_nsec: slice.subsec_nanos().into(),
            };
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            let n = match poll(&mut fds, Some(&ts)) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => return Err(io_err("polling", &self.dir)(e.into())),
            };
            if n > 0 {
                break;
            }
            if self.live_holders() != before {
                return Ok(Event::Changed);
            }
            if left.is_zero() {
                return Ok(Event::Timeout);
            }
        }
        // Drain: one wake-up per batch of changes.
        let mut buf = [0u8; 4096];
        while let Ok(k) = rustix::io::read(fd.as_fd(), &mut buf) {
            if k == 0 {
                break;
            }
        }
        Ok(Event::Changed)
    }

    fn session(&self) -> Session {
        Session::Connected
    }

    fn session_timeout(&self) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;
    use crate::store::edit;

    fn add_target(store: &FileStore, iqn: &str) -> Result<i32, MapError> {
        edit(store, |_, m| {
            if m.targets.contains_key(iqn) {
                return Err(MapError::Exists {
                    kind: Kind::Target,
                    name: iqn.into(),
                });
            }
            m.targets.insert(
                iqn.into(),
                Target {
                    iqn: iqn.into(),
                    portals: vec![],
                    chap: None,
                    mutual_chap: None,
                },
            );
            Ok(())
        })
    }

    #[test]
    fn edits_bump_the_version_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(add_target(&s, "iqn.2026-11.org.ferry:a").unwrap(), 1);
        assert_eq!(add_target(&s, "iqn.2026-11.org.ferry:b").unwrap(), 2);
        assert!(matches!(
            add_target(&s, "iqn.2026-11.org.ferry:a"),
            Err(MapError::Exists { .. })
        ));
        let s2 = FileStore::open(d.path()).unwrap();
        let snap = s2.snapshot().unwrap();
        assert_eq!(snap.version, 2);
        assert_eq!(snap.map.targets.len(), 2);
    }

    #[test]
    fn stale_base_version_is_a_conflict() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        add_target(&s, "iqn.2026-11.org.ferry:a").unwrap();
        let e = s.commit(0, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                MapError::Conflict {
                    expected: 0,
                    actual: 1,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn concurrent_adders_of_one_name_get_one_success() {
        let d = tempfile::tempdir().unwrap();
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| {
                        let s = FileStore::open(d.path()).unwrap();
                        add_target(&s, "iqn.2026-11.org.ferry:same")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, MapError::Exists { .. })));
    }

    #[test]
    fn claims_belong_to_the_live_process() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert!(s.claim("l1", "a").unwrap());
        assert!(s.claim("l1", "a").unwrap());
        assert!(!s.claim("l1", "b").unwrap());
        assert_eq!(s.snapshot().unwrap().owners["l1"], "a");
        // A claim left by a dead process counts for nothing.
        let stale = Holder {
            node: "z".into(),
            pid: std::process::id(),
            start: 1,
            live: None,
        };
        fs::write(
            d.path().join("owners/l2"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        assert!(!s.snapshot().unwrap().owners.contains_key("l2"));
        assert!(s.claim("l2", "b").unwrap());
        s.release("l1", "a").unwrap();
        assert!(!s.snapshot().unwrap().owners.contains_key("l1"));
    }

    #[test]
    fn wait_wakes_on_a_commit_from_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(s.wait(Duration::from_millis(10)).unwrap(), Event::Timeout);
        let other = FileStore::open(d.path()).unwrap();
        add_target(&other, "iqn.2026-11.org.ferry:a").unwrap();
        assert_eq!(s.wait(Duration::from_secs(5)).unwrap(), Event::Changed);
    }

    /// A claim ends with its process, which changes no file: the wait
    /// wakes all the same, so a dead node's LUNs move at once.
    #[test]
    fn wait_wakes_when_a_claims_process_dies() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let holder = Holder {
            node: "z".into(),
            pid: child.id(),
            start: start_time(child.id()).unwrap(),
            live: None,
        };
        fs::write(
            d.path().join("owners/l1"),
            serde_json::to_vec(&holder).unwrap(),
        )
        .unwrap();
        assert_eq!(s.snapshot().unwrap().owners["l1"], "z");
        // The write itself is a change; take it.
        assert_eq!(s.wait(Duration::from_secs(5)).unwrap(), Event::Changed);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(s.wait(Duration::from_secs(30)).unwrap(), Event::Changed);
        assert!(!s.snapshot().unwrap().owners.contains_key("l1"));
    }
}
