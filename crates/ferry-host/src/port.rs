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
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use ferry_scsi::alua::{AccessState, PortGroup};
use parking_lot::{Mutex, RwLock};

use crate::{HostError, Lun};

/// Opens the port's LUN with the front-end's geometry and cache mode.
pub type Opener = Box<dyn Fn() -> Result<Arc<Lun>, HostError> + Send + Sync>;

/// One LUN at one gateway's target port.
pub struct LunPort {
    /// The spec the front-end was configured with.
    spec: String,
    /// This gateway's target port group (and relative port) id.
    own: AtomicU16,
    /// This port's own state, as [`AccessState::code`].
    state: AtomicU8,
    /// Every group's state as the map last said.
    groups: Mutex<Vec<PortGroup>>,
    /// The open LUN, while active.
    lun: RwLock<Option<Arc<Lun>>>,
    opener: Opener,
    /// One state change at a time.
    change: Mutex<()>,
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
            own: AtomicU16::new(own),
            state: AtomicU8::new(AccessState::Standby.code()),
            groups: Mutex::new(Vec::new()),
            lun: RwLock::new(None),
            opener,
            change: Mutex::new(()),
        });
        port.become_state(initial)?;
        crate::control::process_registry().add_port(&port);
        Ok(port)
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn own_group(&self) -> u16 {
        self.own.load(Ordering::Acquire)
    }

    /// This port's state now.
    pub fn state(&self) -> AccessState {
        AccessState::from_code(self.state.load(Ordering::Acquire))
            .unwrap_or(AccessState::Unavailable)
    }

    /// The open LUN, while the port is active.
    pub fn lun(&self) -> Option<Arc<Lun>> {
        self.lun.read().clone()
    }

    /// What REPORT TARGET PORT GROUPS says through this port: the map's
    /// groups, with this port's own group in the state it really is in.
    pub fn groups(&self) -> Vec<PortGroup> {
        let own = self.own_group();
        let state = self.state();
        let mut groups = self.groups.lock().clone();
        match groups.iter_mut().find(|g| g.id == own) {
            Some(g) => g.state = state,
            None => groups.insert(
                0,
                PortGroup {
                    id: own,
                    state,
                    preferred: false,
                },
            ),
        }
        groups
    }

    /// Takes the map's view: this gateway is group `own`, and `groups`
    /// are every group's states. Opens or closes the volume when this
    /// port's own state changes; returns the state it is in after.
    pub fn set(&self, own: u16, groups: Vec<PortGroup>) -> Result<AccessState, HostError> {
        let _one = self.change.lock();
        self.own.store(own, Ordering::Release);
        let wanted = groups
            .iter()
            .find(|g| g.id == own)
            .map_or(AccessState::Unavailable, |g| g.state);
        *self.groups.lock() = groups;
        self.become_locked(wanted)?;
        Ok(self.state())
    }

    /// Moves this port to `state` alone (fencing: the agent lost the map).
    pub fn become_state(&self, state: AccessState) -> Result<(), HostError> {
        let _one = self.change.lock();
        self.become_locked(state)
    }

    fn become_locked(&self, wanted: AccessState) -> Result<(), HostError> {
        if wanted.is_active() {
            if self.lun.read().is_none() {
                self.store_state(AccessState::Transitioning);
                let lun = (self.opener)()?;
                crate::control::process_registry().add(&lun);
                *self.lun.write() = Some(lun);
                log::info!("{}: port group {} active", self.spec, self.own_group());
            }
            self.store_state(wanted);
        } else {
            // State first: from here the front-end refuses new commands.
            self.store_state(wanted);
            self.close_lun();
        }
        Ok(())
    }

    fn store_state(&self, s: AccessState) {
        self.state.store(s.code(), Ordering::Release);
    }

    /// Takes the LUN out, unregisters and flushes it; commands still
    /// running keep it (and its volume's lock) until they finish.
    fn close_lun(&self) {
        let Some(lun) = self.lun.write().take() else {
            return;
        };
        crate::control::process_registry().remove(&lun);
        if let Err(e) = ferry_core::Volume::flush(lun.as_ref()) {
            log::error!("{}: flush at close failed: {e}", lun.spec());
        }
        log::info!(
            "{}: port group {} {}, volume closed",
            self.spec,
            self.own_group(),
            self.state()
        );
    }

    /// The front-end closes the LUN (tgtd deleting the LU).
    pub fn close(&self) {
        let _one = self.change.lock();
        self.store_state(AccessState::Unavailable);
        self.close_lun();
        crate::control::process_registry().remove_port(self);
    }

    pub(crate) fn answers_to(&self, name: &str) -> bool {
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
    /// volume (and its lock) until it finishes, so the new owner's open,
    /// and so its first write, comes after the old owner's last one.
    #[test]
    fn a_command_in_flight_on_the_demoted_port_lands_before_the_new_owner_opens() {
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
        assert_eq!(old.set(1, moved.clone()).unwrap(), AccessState::Standby);
        assert!(old.lun().is_none(), "later commands are refused");
        assert!(
            new.set(2, moved.clone()).is_err(),
            "the new owner cannot open while the old write is in flight"
        );
        assert_eq!(new.state(), AccessState::Transitioning);
        ferry_core::Volume::write_at(in_flight.as_ref(), &[1u8; 512], 0).unwrap();
        drop(in_flight);
        assert_eq!(new.set(2, moved).unwrap(), AccessState::ActiveOptimized);
        let lun = new.lun().unwrap();
        ferry_core::Volume::write_at(lun.as_ref(), &[2u8; 512], 0).unwrap();
        let mut got = [0u8; 512];
        ferry_core::Volume::read_at(lun.as_ref(), &mut got, 0).unwrap();
        assert_eq!(got, [2u8; 512], "the new owner's write is the last");
        drop(lun);
        new.close();
        old.close();
    }
}
