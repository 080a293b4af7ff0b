//! A LUN as one gateway's target port presents it under implicit ALUA
//! ([`ferry_scsi::alua`]): every gateway allowed to serve a LUN exports
//! it, and only the one whose port group is active holds its volume
//! open. The others answer inquiries and refuse media access with their
//! state's sense, without opening the volume (no file lock or RBD lock
//! taken, no data read).
//!
//! The node's agent tells each port the states of all groups (from the
//! map: the owner's group active, the other live nodes' standby, dead
//! nodes' unavailable). A port reports its own group as what it really
//! is, not what the map says: active only while its volume is open, so
//! no gateway ever reports active/optimized without holding the volume.
//!
//! Ordering, so a write queued on the old owner cannot land after the
//! new owner's first write:
//! - demoting, the port's state changes first (the front-end refuses
//!   every later command), then the LUN is taken out and flushed; a
//!   command already running keeps its reference, and the volume closes,
//!   dropping its lock, only when the last one finished;
//! - promoting, the volume is opened (which waits for, or fails on, the
//!   old owner's lock; the agent fenced the old owner first), and the
//!   state turns active only once the LUN is in place.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ferry_scsi::alua::{AccessState, PortGroup};
use parking_lot::{Mutex, RwLock};

use crate::{HostError, Lun};

/// Opens the port's LUN with the front-end's geometry and cache mode.
pub type Opener = Box<dyn Fn() -> Result<Arc<Lun>, HostError> + Send + Sync>;

/// How long a demotion waits for the commands already running on the
/// LUN before it reports failure (and the agent keeps the claim, and
/// asks again).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// One LUN at one gateway's target port.
pub struct LunPort {
    /// The spec the front-end was configured with.
    spec: String,
    /// This gateway's target port group (and relative port) id, fixed
    /// when the front-end set the LUN up (it names it in VPD page 83h).
    own: u16,
    /// This port's own state, as [`AccessState::code`].
    state: AtomicU8,
    /// Every group's state as the map last said.
    groups: Mutex<Vec<PortGroup>>,
    /// The open LUN, while active.
    lun: RwLock<Option<Arc<Lun>>>,
    /// A LUN taken out of service whose running commands or flush did
    /// not finish yet: the next demotion (or close) finishes it.
    draining: Mutex<Option<Arc<Lun>>>,
    opener: Opener,
    /// One activation or demotion at a time.
    change: Mutex<()>,
    /// Bumped by every demotion before it waits for `change`: an
    /// activation asked for before it gives up rather than reopening the
    /// volume after it (requests can overtake each other on the lock).
    generation: AtomicU64,
    /// The front-end closed the LU: nothing opens it again.
    closed: AtomicBool,
    /// Bumped whenever what RTPG reports through this port changes: each
    /// nexus is owed ASYMMETRIC ACCESS STATE CHANGED once per change.
    changes: AtomicU64,
}

impl LunPort {
    /// A port of group `own` for `spec`, starting in `initial`: opened
    /// now if that is active (a LUN configured without ALUA starts so).
    pub fn new(
        spec: &str,
        own: u16,
        initial: AccessState,
        opener: Opener,
    ) -> Result<Arc<LunPort>, HostError> {
        let port = Arc::new(LunPort {
            spec: spec.to_string(),
            own,
            state: AtomicU8::new(AccessState::Standby.code()),
            groups: Mutex::new(Vec::new()),
            lun: RwLock::new(None),
            draining: Mutex::new(None),
            opener,
            change: Mutex::new(()),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            changes: AtomicU64::new(0),
        });
        if initial.is_active() {
            let _one = port.change.lock();
            port.activate(0, initial)?;
        } else {
            port.store_state(initial);
        }
        crate::control::process_registry().add_port(&port);
        Ok(port)
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn own_group(&self) -> u16 {
        self.own
    }

    /// This port's state now.
    pub fn state(&self) -> AccessState {
        AccessState::from_code(self.state.load(Ordering::Acquire))
            .unwrap_or(AccessState::Unavailable)
    }

    /// How many times what RTPG reports through this port has changed.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Sets the map's view of the groups, counting a change.
    fn store_groups(&self, groups: Vec<PortGroup>) {
        let mut current = self.groups.lock();
        if *current != groups {
            *current = groups;
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether the node's agent has given this port the groups' states
    /// yet (a port set up by a restarted serving process has not).
    pub fn configured(&self) -> bool {
        !self.groups.lock().is_empty()
    }

    /// The open LUN, while the port is active.
    pub fn lun(&self) -> Option<Arc<Lun>> {
        self.lun.read().clone()
    }

    /// What REPORT TARGET PORT GROUPS says through this port: the map's
    /// groups, with this port's own group in the state it really is in.
    pub fn groups(&self) -> Vec<PortGroup> {
        let state = self.state();
        let mut groups = self.groups.lock().clone();
        match groups.iter_mut().find(|g| g.id == self.own) {
            Some(g) => g.state = state,
            None => groups.insert(
                0,
                PortGroup {
                    id: self.own,
                    state,
                    preferred: false,
                },
            ),
        }
        groups
    }

    fn refuse(&self, why: impl Into<String>) -> HostError {
        HostError::Port {
            lun: self.spec.clone(),
            why: why.into(),
        }
    }

    /// Takes the map's view: this gateway is group `own`, and `groups`
    /// are every group's states. Opens the volume when this port's own
    /// group turns active; when it turns anything else, refuses new
    /// commands at once, then waits for the running ones and flushes and
    /// closes the volume. Returns the state it is in after; an error
    /// leaves the port not active (and a demotion to be finished by the
    /// next request).
    pub fn set(&self, own: u16, groups: Vec<PortGroup>) -> Result<AccessState, HostError> {
        if own != self.own {
            return Err(self.refuse(format!(
                "the LU was set up as port group {}, not {own}; re-create it",
                self.own
            )));
        }
        let wanted = groups
            .iter()
            .find(|g| g.id == own)
            .map_or(AccessState::Unavailable, |g| g.state);
        if wanted.is_active() {
            let generation = self.generation.load(Ordering::SeqCst);
            let _one = self.change.lock();
            self.store_groups(groups);
            self.activate(generation, wanted)?;
        } else {
            self.store_groups(groups);
            self.demote(wanted)?;
        }
        Ok(self.state())
    }

    /// Moves this port to the non-active `state` (fencing: the agent
    /// lost the map; its view of the other groups is dropped, as it may
    /// be stale).
    pub fn demote(&self, state: AccessState) -> Result<(), HostError> {
        // Ordering: the state first, before waiting for any activation in
        // progress: from here the front-end refuses new commands, and an
        // activation asked for earlier gives up (the generation).
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.store_state(if state.is_active() {
            AccessState::Unavailable
        } else {
            state
        });
        let _one = self.change.lock();
        self.close_lun()
    }

    /// Opens the volume and turns active, unless a demotion came after
    /// the request (`generation`). Called with `change` held.
    fn activate(&self, generation: u64, state: AccessState) -> Result<(), HostError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.refuse("the LU is closed"));
        }
        if self.generation.load(Ordering::SeqCst) != generation {
            return Err(self.refuse("a later request demoted the port"));
        }
        if self.state().is_active() && self.lun.read().is_some() {
            return Ok(());
        }
        // A LUN still draining from a demotion is finished first: the
        // volume is opened again only once it is closed.
        self.close_lun()?;
        self.store_state(AccessState::Transitioning);
        let lun = (self.opener)()?;
        crate::control::process_registry().add(&lun);
        *self.lun.write() = Some(lun);
        // Only from transitioning, and only if nothing demoted the port
        // meanwhile; otherwise the volume just opened is closed again.
        let superseded = self.generation.load(Ordering::SeqCst) != generation
            || self
                .state
                .compare_exchange(
                    AccessState::Transitioning.code(),
                    state.code(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err();
        if superseded {
            self.close_lun()?;
            return Err(self.refuse("a later request demoted the port"));
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
        log::info!("{}: port group {} active", self.spec, self.own);
        Ok(())
    }

    fn store_state(&self, s: AccessState) {
        if self.state.swap(s.code(), Ordering::SeqCst) != s.code() {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes the LUN out of service: unregisters it, waits (up to
    /// [`DRAIN_LIMIT`]) for the commands that hold it, flushes it and
    /// drops it (closing the volume and its lock). A LUN that did not
    /// drain or flush is kept for the next call, which tries again.
    fn close_lun(&self) -> Result<(), HostError> {
        let mut draining = self.draining.lock();
        if draining.is_none() {
            *draining = self.lun.write().take();
        }
        let Some(lun) = draining.as_ref() else {
            return Ok(());
        };
        crate::control::process_registry().remove(lun);
        let deadline = Instant::now() + DRAIN_LIMIT;
        // Commands admitted before the state changed hold their own
        // reference; the registry holds a weak one.
        while Arc::strong_count(lun) > 1 {
            if Instant::now() >= deadline {
                return Err(self.refuse(format!(
                    "commands still running after {DRAIN_LIMIT:?}; the volume stays open"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        ferry_core::Volume::flush(lun.as_ref())
            .map_err(|e| self.refuse(format!("flush before closing the volume failed: {e}")))?;
        *draining = None;
        log::info!(
            "{}: port group {} {}, volume closed",
            self.spec,
            self.own,
            self.state()
        );
        Ok(())
    }

    /// The front-end closes the LU (tgtd deleting it, with none of its
    /// commands running). Does not wait for an activation in progress
    /// (tgtd's main thread calls this): that one sees the port closed
    /// and closes what it opened.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.store_state(AccessState::Unavailable);
        if let Err(e) = self.close_lun() {
            log::error!("{e}");
        }
        crate::control::process_registry().remove_port(self);
    }

    /// Whether `name` is this port's spec (in any spelling).
    pub fn answers_to(&self, name: &str) -> bool {
        let canonical = |s: &str| crate::VolumeSpec::parse(s).map(|v| v.to_string()).ok();
        canonical(name).is_some_and(|n| Some(n) == canonical(&self.spec))
    }
}

/// The ports of a process, as `list` reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PortInfo {
    pub spec: String,
    pub own_group: u16,
    pub state: AccessState,
    pub groups: Vec<PortGroup>,
}

impl PortInfo {
    pub fn of(port: &LunPort) -> PortInfo {
        PortInfo {
            spec: port.spec.clone(),
            own_group: port.own_group(),
            state: port.state(),
            groups: port.groups(),
        }
    }
}

/// The weak handles the registry keeps.
pub(crate) type PortRef = Weak<LunPort>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn volume(dir: &std::path::Path, name: &str) -> String {
        let spec = format!("file:{}", dir.join(name).display());
        crate::VolumeSpec::parse(&spec)
            .unwrap()
            .create(1 << 20, None)
            .unwrap();
        spec
    }

    fn opener(spec: &str, opens: Arc<AtomicUsize>) -> Opener {
        let spec = spec.to_string();
        Box::new(move || {
            opens.fetch_add(1, Ordering::SeqCst);
            Ok(Lun::open(&spec)?)
        })
    }

    fn group(id: u16, state: AccessState) -> PortGroup {
        PortGroup {
            id,
            state,
            preferred: false,
        }
    }

    #[test]
    fn a_standby_port_opens_nothing_until_its_group_turns_active() {
        let dir = tempfile::tempdir().unwrap();
        let spec = volume(dir.path(), "v.img");
        let opens = Arc::new(AtomicUsize::new(0));
        let port =
            LunPort::new(&spec, 1, AccessState::Standby, opener(&spec, opens.clone())).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 0);
        assert!(port.lun().is_none());
        // Another process may open the volume meanwhile: no lock is held.
        drop(Lun::open(&spec).unwrap());
        let map = vec![
            group(1, AccessState::ActiveOptimized),
            group(2, AccessState::Standby),
        ];
        assert_eq!(port.set(1, map).unwrap(), AccessState::ActiveOptimized);
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        assert!(port.lun().is_some());
        assert!(
            Lun::open(&spec).is_err(),
            "the active port holds the volume"
        );
        let map = vec![
            group(1, AccessState::Standby),
            group(2, AccessState::ActiveOptimized),
        ];
        assert_eq!(port.set(1, map).unwrap(), AccessState::Standby);
        assert!(port.lun().is_none());
        drop(Lun::open(&spec).unwrap());
        port.close();
    }

    #[test]
    fn a_port_reports_its_own_group_as_it_is_not_as_the_map_says() {
        let dir = tempfile::tempdir().unwrap();
        let spec = volume(dir.path(), "v.img");
        // Someone else holds the volume: the map's "active" cannot be met.
        let holder = Lun::open(&spec).unwrap();
        let port = LunPort::new(
            &spec,
            1,
            AccessState::Standby,
            opener(&spec, Arc::new(AtomicUsize::new(0))),
        )
        .unwrap();
        let map = vec![
            group(1, AccessState::ActiveOptimized),
            group(2, AccessState::Standby),
        ];
        assert!(port.set(1, map.clone()).is_err());
        assert_eq!(port.state(), AccessState::Transitioning);
        assert_eq!(
            port.groups(),
            vec![
                group(1, AccessState::Transitioning),
                group(2, AccessState::Standby)
            ]
        );
        drop(holder);
        assert_eq!(
            port.set(1, map.clone()).unwrap(),
            AccessState::ActiveOptimized
        );
        assert_eq!(port.groups(), map);
        port.close();
    }

    /// A command running on the old owner when it is demoted keeps the
    /// volume (and its lock): the demotion refuses new commands at once
    /// but returns (and the agent releases the claim) only once that
    /// command finished and the volume is flushed and closed. The new
    /// owner cannot open before, so its first write comes after the old
    /// owner's last one.
    #[test]
    fn a_demotion_waits_for_the_command_in_flight_before_the_new_owner_opens() {
        let dir = tempfile::tempdir().unwrap();
        let spec = volume(dir.path(), "v.img");
        let old = LunPort::new(
            &spec,
            1,
            AccessState::ActiveOptimized,
            opener(&spec, Arc::new(AtomicUsize::new(0))),
        )
        .unwrap();
        let new = LunPort::new(
            &spec,
            2,
            AccessState::Standby,
            opener(&spec, Arc::new(AtomicUsize::new(0))),
        )
        .unwrap();
        // A write held inside the old gateway: it has its LUN, not yet
        // its data on the volume.
        let in_flight = old.lun().unwrap();
        let moved = vec![
            group(1, AccessState::Standby),
            group(2, AccessState::ActiveOptimized),
        ];
        std::thread::scope(|scope| {
            let demotion = scope.spawn(|| old.set(1, moved.clone()));
            while old.state() != AccessState::Standby {
                std::thread::yield_now();
            }
            assert!(
                new.set(2, moved.clone()).is_err(),
                "the new owner cannot open while the old write is in flight"
            );
            assert_eq!(new.state(), AccessState::Transitioning);
            assert!(
                !demotion.is_finished(),
                "the demotion returned with a command running"
            );
            ferry_core::Volume::write_at(in_flight.as_ref(), &[1u8; 512], 0).unwrap();
            drop(in_flight);
            assert_eq!(demotion.join().unwrap().unwrap(), AccessState::Standby);
        });
        assert!(old.lun().is_none(), "later commands are refused");
        assert_eq!(new.set(2, moved).unwrap(), AccessState::ActiveOptimized);
        let lun = new.lun().unwrap();
        let mut got = [0u8; 512];
        ferry_core::Volume::read_at(lun.as_ref(), &mut got, 0).unwrap();
        assert_eq!(got, [1u8; 512], "the old owner's write landed before");
        ferry_core::Volume::write_at(lun.as_ref(), &[2u8; 512], 0).unwrap();
        drop(lun);
        new.close();
        old.close();
    }

    /// A fence that comes while an activation is opening the volume wins:
    /// the port never turns active, and what was opened is closed again.
    #[test]
    fn a_fence_during_an_activation_leaves_the_port_unavailable_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = volume(dir.path(), "v.img");
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let held_spec = spec.clone();
        let port = LunPort::new(
            &spec,
            1,
            AccessState::Standby,
            Box::new(move || {
                entered_tx.send(()).unwrap();
                go_rx.lock().recv().unwrap();
                Ok(Lun::open(&held_spec)?)
            }),
        )
        .unwrap();
        std::thread::scope(|scope| {
            let activation =
                scope.spawn(|| port.set(1, vec![group(1, AccessState::ActiveOptimized)]));
            entered.recv().unwrap(); // inside the open
            let fence = scope.spawn(|| port.demote(AccessState::Unavailable));
            while port.state() != AccessState::Unavailable {
                std::thread::yield_now();
            }
            go.send(()).unwrap();
            assert!(activation.join().unwrap().is_err());
            fence.join().unwrap().unwrap();
        });
        assert_eq!(port.state(), AccessState::Unavailable);
        assert!(port.lun().is_none());
        drop(Lun::open(&spec).unwrap()); // the volume is closed
        port.close();
        assert!(
            port.set(1, vec![group(1, AccessState::ActiveOptimized)])
                .is_err(),
            "a closed port opens nothing"
        );
    }
}
