//! A seam for crash tests of the file backend's durable steps: a
//! snapshot's copy and its publication, a restore's rename and directory
//! sync, and the file moves of a reservations save. Each step is announced
//! here by its name in `ferry_core::faults` ([`ferry_core::faults::SNAPSHOT`],
//! [`ferry_core::faults::RESERVATIONS`]) just before it runs, with the path
//! it acts on.
//!
//! Production installs no hook: an announcement is then one atomic load.
//! A test installs a [`StepHook`] for a directory; every step on a path
//! under it goes through the hook, which may refuse it. A refused step is
//! not done, and the caller returns the error: that is how a test stops
//! the "process" at a step (refusing every step after it as well) or fails
//! one step and lets the rest run. Because the hook sees each step before
//! it runs, it also knows when the previous one finished, which is how a
//! test follows fsyncs and directory syncs to model power loss.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sees each durable step of the file backend before it runs.
pub trait StepHook: Send + Sync {
    /// Called just before the step `point` (a `ferry_core::faults` name)
    /// acts on `path`; an error means the step is not done.
    fn before(&self, point: &'static str, path: &Path) -> io::Result<()>;
}

type Hooks = Vec<(PathBuf, Arc<dyn StepHook>)>;

/// How many hooks are installed: zero in production.
static INSTALLED: AtomicUsize = AtomicUsize::new(0);
static HOOKS: Mutex<Hooks> = Mutex::new(Vec::new());

fn hooks() -> MutexGuard<'static, Hooks> {
    // A test that panicked while holding the lock leaves the list intact.
    HOOKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes its hook when dropped.
#[must_use = "the hook is removed when this is dropped"]
pub struct Installed {
    dir: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let mut all = hooks();
        if let Some(i) = all.iter().position(|(d, _)| *d == self.dir) {
            all.remove(i);
            INSTALLED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Sends every step on a path under `dir` to `hook` until the returned
/// guard is dropped. Tests give each hook its own directory.
pub fn install(dir: &Path, hook: Arc<dyn StepHook>) -> Installed {
    let mut all = hooks();
    all.push((dir.to_path_buf(), hook));
    INSTALLED.fetch_add(1, Ordering::SeqCst);
    Installed {
        dir: dir.to_path_buf(),
    }
}

/// Announces the durable step `point` on `path`, just before it runs.
pub fn before(point: &'static str, path: &Path) -> io::Result<()> {
    if INSTALLED.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    let hook = hooks()
        .iter()
        .find(|(d, _)| path.starts_with(d))
        .map(|(_, h)| h.clone());
    match hook {
        Some(h) => h.before(point, path),
        None => Ok(()),
    }
}
