//! Many migrations, one copy budget: what the copiers of one process (a
//! tgtd with several ferry LUNs, a tcmu-runner) and of one node share.
//!
//! - **A node-wide copy bandwidth.** An admin (or `ferry agent
//!   --copy-bandwidth`) writes it to `<run dir>/copy-bandwidth`; every
//!   copier on the node stays within its share of it. Unset, copiers are
//!   bounded only by their own rate limits and impact budgets.
//! - **Fair shares by priority.** Each running copier has a priority (a
//!   weight, default [`DEFAULT_PRIORITY`]); its share of the node's
//!   bandwidth is its weight over the weights of every copier on the node
//!   that is copying now. A copier that is paused or done takes nothing,
//!   so the others' shares grow at once. Each process publishes the sum of
//!   its copying weights in `<run dir>/copy-share.<pid>` and reads the
//!   others' (files of processes that are gone are ignored and removed),
//!   at most once per [`POLL`].
//! - **One probe at a time.** A copier measures its foreground's baseline
//!   by holding off for a moment (`crate::pace`); if another copier of the
//!   same process kept copying meanwhile, the baseline would include that
//!   copy's cost and every copier would under-read its impact. So a probe
//!   holds every copier of the process off until it ends.
//!
//! The arithmetic ([`fair_share`]) is plain and tested alone; the files
//! are read and written only by `CopyShare::refresh`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A copier's weight when none was given.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Highest priority accepted (a share 1000 times another's at most).
pub const MAX_PRIORITY: u32 = 100_000;

/// How often a process re-reads the node's bandwidth and the other
/// processes' weights.
pub const POLL: Duration = Duration::from_secs(1);

/// The file holding the node-wide copy bandwidth, in bytes per second.
pub const BANDWIDTH_FILE: &str = "copy-bandwidth";

const SHARE_PREFIX: &str = "copy-share.";

/// `limit * weight / total`, the bandwidth one copier of weight `weight`
/// may use when copiers of total weight `total` (its own included) copy.
/// Never 0 while a limit is set, so no copier stops outright.
pub fn fair_share(limit: u64, weight: u32, total: u64) -> u64 {
    let total = total.max(u64::from(weight)).max(1);
    let share = u128::from(limit) * u128::from(weight) / u128::from(total);
    u64::try_from(share).unwrap_or(u64::MAX).max(1)
}

/// Sets (`Some`) or clears (`None`) the node-wide copy bandwidth in `dir`.
pub fn set_node_bandwidth(dir: &Path, bytes_per_sec: Option<u64>) -> std::io::Result<()> {
    let path = dir.join(BANDWIDTH_FILE);
    match bytes_per_sec.filter(|&b| b > 0) {
        Some(b) => {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{BANDWIDTH_FILE}.{}", std::process::id()));
            std::fs::write(&tmp, format!("{b}\n"))?;
            std::fs::rename(&tmp, &path)
        }
        None => remove_if_present(&path),
    }
}

/// Removes `path`; one already gone is not an error.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The node-wide copy bandwidth set in `dir`, if any.
pub fn node_bandwidth(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(BANDWIDTH_FILE)).ok()?;
    match text.trim().parse::<u64>() {
        Ok(b) if b > 0 => Some(b),
        _ => {
            log::warn!(
                "copy share: ignoring {} (not a positive number of bytes per second)",
                dir.join(BANDWIDTH_FILE).display()
            );
            None
        }
    }
}

#[derive(Debug, Default)]
struct Members {
    next_id: u64,
    /// `id -> (weight, copying now)`.
    all: BTreeMap<u64, (u32, bool)>,
}

impl Members {
    fn copying_weight(&self) -> u64 {
        self.all
            .values()
            .filter(|(_, copying)| *copying)
            .map(|(w, _)| u64::from(*w))
            .sum()
    }
}

#[derive(Debug, Default)]
struct Node {
    /// The bandwidth last read (None: unset).
    limit: Option<u64>,
    /// The other processes' copying weights, last read.
    others: u64,
    /// The weight this process last published.
    published: Option<u64>,
    polled: Option<Instant>,
}

/// The copy budget the copiers of one process share (see the module docs).
#[derive(Debug)]
pub struct CopyShare {
    /// Where the node's files are; `None`: this process alone, with a
    /// bandwidth set by [`CopyShare::set_limit`] (tests, tools).
    dir: Option<PathBuf>,
    members: Mutex<Members>,
    node: Mutex<Node>,
    /// End of the probe in progress, if one runs.
    probe_until: Mutex<Option<Instant>>,
}

impl CopyShare {
    /// A share coordinated with the other processes of the node through
    /// `dir` (the run directory).
    pub fn on_node(dir: PathBuf) -> Arc<Self> {
        Arc::new(Self::new(Some(dir)))
    }

    /// A share for this process alone.
    pub fn local() -> Arc<Self> {
        Arc::new(Self::new(None))
    }

    fn new(dir: Option<PathBuf>) -> Self {
        CopyShare {
            dir,
            members: Mutex::new(Members::default()),
            node: Mutex::new(Node::default()),
            probe_until: Mutex::new(None),
        }
    }

    /// Sets the bandwidth of a [`CopyShare::local`] share.
    pub fn set_limit(&self, bytes_per_sec: Option<u64>) {
        self.node.lock().limit = bytes_per_sec.filter(|&b| b > 0);
    }

    /// Joins a copier with `priority` (not copying yet).
    pub fn join(self: &Arc<Self>, priority: u32) -> ShareMember {
        let mut m = self.members.lock();
        let id = m.next_id;
        m.next_id += 1;
        m.all.insert(id, (clamp_priority(priority), false));
        ShareMember {
            share: self.clone(),
            id,
        }
    }

    /// The node's bandwidth and the weight copying on the node now,
    /// reading the node's files if [`POLL`] has passed.
    fn budget(&self) -> (Option<u64>, u64) {
        let ours = self.members.lock().copying_weight();
        let mut node = self.node.lock();
        if let Some(dir) = &self.dir {
            if node.polled.is_none_or(|t| t.elapsed() >= POLL) {
                Self::refresh(dir, &mut node, ours);
            }
        }
        (node.limit, ours + node.others)
    }

    /// Reads the bandwidth and the other processes' weights, and
    /// publishes this process's weight if it changed.
    fn refresh(dir: &Path, node: &mut Node, ours: u64) {
        node.polled = Some(Instant::now());
        node.others = 0;
        if !dir.is_dir() {
            // No run dir (yet): nothing set, nobody to share with.
            node.limit = None;
            return;
        }
        node.limit = node_bandwidth(dir);
        let me = std::process::id();
        if node.published != Some(ours) {
            let path = dir.join(format!("{SHARE_PREFIX}{me}"));
            let done = if ours == 0 {
                remove_if_present(&path)
            } else {
                std::fs::write(&path, format!("{ours}\n"))
            };
            match done {
                Ok(()) => node.published = Some(ours),
                Err(e) => log::warn!("copy share: publishing {}: {e}", path.display()),
            }
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(SHARE_PREFIX))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // Its process is gone: its copiers copy nothing.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(w) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                node.others += w;
            }
        }
    }

    fn unpublish(&self) {
        if let Some(dir) = &self.dir {
            let mut node = self.node.lock();
            if node.published.is_some_and(|w| w > 0) {
                let _ =
                    std::fs::remove_file(dir.join(format!("{SHARE_PREFIX}{}", std::process::id())));
                node.published = Some(0);
            }
        }
    }
}

fn clamp_priority(p: u32) -> u32 {
    p.clamp(1, MAX_PRIORITY)
}

/// One copier's place in a [`CopyShare`]; leaves it when dropped.
#[derive(Debug)]
pub struct ShareMember {
    share: Arc<CopyShare>,
    id: u64,
}

impl ShareMember {
    /// Says whether this copier is copying now (paused, finished and
    /// erring copiers take no share).
    pub fn set_copying(&self, copying: bool) {
        if let Some(m) = self.share.members.lock().all.get_mut(&self.id) {
            m.1 = copying;
        }
    }

    pub fn set_priority(&self, priority: u32) {
        if let Some(m) = self.share.members.lock().all.get_mut(&self.id) {
            m.0 = clamp_priority(priority);
        }
    }

    /// The node's bandwidth, if one is set, and this copier's share of it
    /// now, bytes per second.
    pub fn allowance(&self) -> Option<(u64, u64)> {
        let weight = self.share.members.lock().all.get(&self.id)?.0;
        let (limit, total) = self.share.budget();
        limit.map(|l| (l, fair_share(l, weight, total)))
    }

    /// Announces a probe that holds every copier of the process off until
    /// `until`.
    pub fn probing_until(&self, until: Instant) {
        let mut p = self.share.probe_until.lock();
        *p = Some(p.map_or(until, |t| t.max(until)));
    }

    /// How long this copier must hold off for another copier's probe.
    pub fn hold(&self, now: Instant) -> Option<Duration> {
        let until = (*self.share.probe_until.lock())?;
        (until > now).then(|| until - now)
    }
}

impl Drop for ShareMember {
    fn drop(&mut self) {
        let empty = {
            let mut m = self.share.members.lock();
            m.all.remove(&self.id);
            m.copying_weight() == 0
        };
        if empty {
            self.share.unpublish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights_of_the_copiers_copying_now() {
        assert_eq!(fair_share(300, 100, 300), 100);
        assert_eq!(fair_share(400, 300, 400), 300);
        // Alone: the whole bandwidth.
        assert_eq!(fair_share(400, 100, 100), 400);
        // A total that forgot the asker still counts it.
        assert_eq!(fair_share(400, 100, 0), 400);
        // Never nothing.
        assert_eq!(fair_share(1, 1, 1_000_000), 1);
    }

    #[test]
    fn paused_copiers_take_no_share_and_leaving_gives_it_back() {
        let share = CopyShare::local();
        share.set_limit(Some(400));
        let a = share.join(100);
        let b = share.join(300);
        assert_eq!(a.allowance(), Some((400, 400)), "nobody copies yet");
        a.set_copying(true);
        b.set_copying(true);
        assert_eq!(a.allowance(), Some((400, 100)));
        assert_eq!(b.allowance(), Some((400, 300)));
        b.set_copying(false);
        assert_eq!(a.allowance(), Some((400, 400)));
        b.set_copying(true);
        b.set_priority(100);
        assert_eq!(a.allowance(), Some((400, 200)));
        drop(b);
        assert_eq!(a.allowance(), Some((400, 400)));
        share.set_limit(None);
        assert_eq!(a.allowance(), None);
    }

    #[test]
    fn a_probe_holds_every_copier_of_the_process_off() {
        let share = CopyShare::local();
        let a = share.join(100);
        let b = share.join(100);
        let now = Instant::now();
        assert_eq!(b.hold(now), None);
        a.probing_until(now + Duration::from_millis(500));
        assert_eq!(b.hold(now), Some(Duration::from_millis(500)));
        assert_eq!(b.hold(now + Duration::from_millis(600)), None);
    }

    #[test]
    fn processes_on_a_node_share_its_bandwidth_through_the_run_dir() {
        let dir = std::env::temp_dir().join(format!("ferry-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        set_node_bandwidth(&dir, Some(1000)).unwrap();
        // Another live process (pid 1 always exists) copies with weight
        // 300; a process that is gone does not count.
        std::fs::write(dir.join("copy-share.1"), "300\n").unwrap();
        std::fs::write(dir.join(format!("copy-share.{}", u32::MAX)), "5000\n").unwrap();
        let share = CopyShare::on_node(dir.clone());
        let a = share.join(100);
        a.set_copying(true);
        assert_eq!(a.allowance(), Some((1000, 250)));
        assert!(!dir.join(format!("copy-share.{}", u32::MAX)).exists());
        let mine = dir.join(format!("copy-share.{}", std::process::id()));
        assert_eq!(std::fs::read_to_string(&mine).unwrap().trim(), "100");
        drop(a);
        assert!(!mine.exists(), "a process with no copier publishes nothing");
        set_node_bandwidth(&dir, None).unwrap();
        assert_eq!(node_bandwidth(&dir), None);
        std::fs::write(dir.join(BANDWIDTH_FILE), "lots\n").unwrap();
        assert_eq!(node_bandwidth(&dir), None, "a bad file is ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
