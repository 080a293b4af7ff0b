//! An LU's life in safe Rust: the options `--bsopts` gives (`bs_init`),
//! setting up the LU's ALUA target port for the ferry LUN the
//! backing-store path names, which opens the LUN at once unless it starts
//! standby, and registering it with the control socket (`bs_open`), and
//! closing it (`bs_close`). The shim ([`crate::shim`]) reads tgtd's structs,
//! calls these, and writes what they return back into tgtd's LU.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::Arc;

use ferry_host::{Lun, LunPort};
use ferry_scsi::alua::AccessState;
use ferry_scsi::CacheMode;

use crate::optable::{ChangesTold, NexusNames, SavedOps};
use crate::Error;

/// The plugin's per-LU private data: created in `bs_init`, reclaimed in
/// `bs_exit`, and used on tgtd's main thread only (workers get the
/// [`Lun`]).
#[derive(Default)]
pub struct LunSlot {
    /// The LU's target port, and through it the open LUN while its group
    /// is active: everything a command needs (geometry, cache mode,
    /// reservations, the COMPARE AND WRITE lock) is the LUN's.
    pub port: Option<Arc<LunPort>>,
    /// What `--bsopts` asked for.
    pub opts: BsOpts,
    /// The mode the caching mode page was last made to match.
    pub page_mode: Cell<Option<CacheMode>>,
    /// tgtd's handlers of the LU's opcodes (see [`crate::optable`]).
    pub saved_ops: SavedOps,
    /// The nexus names of the LU's sessions (see [`crate::optable`]).
    pub nexus_names: NexusNames,
    /// The port state changes each session was told of.
    pub access_told: ChangesTold,
    /// How often the capacity tgtd reports (`lu->size`) changed since
    /// `bs_open`: an online resize, or a standby port turned active on a
    /// volume resized meanwhile (see [`LunSlot::sync_capacity`]).
    pub capacity_changes: Cell<u64>,
    /// The capacity changes each session was told of (CAPACITY DATA HAS
    /// CHANGED).
    pub capacity_told: ChangesTold,
}

/// What `bs_open` tells tgtd about a LUN just opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The LUN's size in bytes.
    pub bytes: u64,
    /// The cache mode it runs in (for the caching mode page's WCE).
    pub cache_mode: CacheMode,
}

/// The target port group of an LU configured without `tpg=`.
pub const DEFAULT_GROUP: u16 = 1;

/// The options of an LU's `--bsopts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BsOpts {
    /// `cache=<mode>`: the cache mode the LUN runs in.
    pub cache_mode: Option<CacheMode>,
    /// `alua=standby`: the LU starts standby, its volume not opened,
    /// until its node's agent turns its group active (`alua=active`, the
    /// default, opens it at once).
    pub standby: bool,
    /// `tpg=<1..65535>`: this gateway's target port group.
    pub group: Option<u16>,
}

impl LunSlot {
    /// The slot of a new LU, with the options of its `--bsopts` (if any).
    pub fn new(bsopts: Option<&str>) -> Result<LunSlot, Error> {
        Ok(LunSlot {
            opts: bsopts.map(parse_bsopts).transpose()?.unwrap_or_default(),
            ..LunSlot::default()
        })
    }

    /// The open LUN, while the LU's port group is active.
    pub fn lun(&self) -> Option<Arc<Lun>> {
        self.port.as_ref().and_then(|p| p.lun())
    }

    /// The capacity tgtd should report now, given that it reports
    /// `reported` bytes: `Some(bytes)` when they differ (counted in
    /// [`LunSlot::capacity_changes`]). A port without an open LUN keeps
    /// what it reports.
    pub fn sync_capacity(&self, reported: u64) -> Option<u64> {
        let lun = self.lun()?;
        let bytes = lun.capacity_blocks() << lun.block_size().trailing_zeros();
        if bytes == reported {
            return None;
        }
        self.capacity_changes.set(self.capacity_changes.get() + 1);
        Some(bytes)
    }

    /// This LU's port state (unavailable before `bs_open`).
    pub fn state(&self) -> AccessState {
        self.port
            .as_ref()
            .map_or(AccessState::Unavailable, |p| p.state())
    }

    /// This gateway's target port group.
    pub fn group(&self) -> u16 {
        self.port
            .as_ref()
            .map_or(self.opts.group.unwrap_or(DEFAULT_GROUP), |p| p.own_group())
    }

    /// Sets up the LU's target port for the LUN `spec` names, for this
    /// LU of `1 << block_shift`-byte blocks, and registers it with the
    /// process's control socket. Unless it starts standby, opens the LUN
    /// (following a migration in progress, which resumes with its copier,
    /// or a committed one) in the cache mode `--bsopts` asked for; a
    /// standby port learns the volume's size without taking it.
    pub fn open(&mut self, spec: &str, block_shift: u32) -> Result<Opened, Error> {
        // tgtd opens an LU again for `--op update --params path=`: the
        // old port closes first (its volume too).
        self.close();
        let open_err = |e: ferry_host::HostError| Error::Open {
            spec: spec.to_string(),
            source: e.into(),
        };
        // The whole volume, in the LU's blocks (tgtd reports its capacity
        // from the size returned here).
        let block = u32::try_from(1u64 << block_shift.min(32)).unwrap_or(u32::MAX);
        let cache_mode = self.opts.cache_mode;
        let owned_spec = spec.to_string();
        let opener: ferry_host::port::Opener = Box::new(move || {
            let lun = Lun::open(&owned_spec)?;
            if let Some(m) = cache_mode {
                lun.set_cache_mode(m);
            }
            lun.set_geometry(block, None)?;
            Ok(lun)
        });
        let initial = if self.opts.standby {
            AccessState::Standby
        } else {
            AccessState::ActiveOptimized
        };
        let group = self.opts.group.unwrap_or(DEFAULT_GROUP);
        let port = LunPort::new(spec, group, initial, opener).map_err(|e| match e {
            e @ ferry_host::HostError::Geometry { .. } => Error::Geometry(e),
            e => open_err(e),
        })?;
        let (bytes, cache_mode) = match port.lun() {
            Some(lun) => (ferry_core::Volume::size(lun.as_ref()), lun.cache_mode()),
            None => {
                let bytes = ferry_host::VolumeSpec::parse(spec)
                    .and_then(|s| s.size_unlocked())
                    .map_err(|e| open_err(e.into()))?;
                // Whole blocks only, as the open LUN's geometry demands.
                if bytes % u64::from(block) != 0 {
                    port.close();
                    return Err(Error::Geometry(ferry_host::HostError::Geometry {
                        lun: spec.to_string(),
                        why: format!(
                            "{bytes} bytes is not a whole number of blocks of block size {block}"
                        ),
                    }));
                }
                (
                    bytes,
                    cache_mode.unwrap_or(ferry_host::lun::DEFAULT_CACHE_MODE),
                )
            }
        };
        ferry_host::control::ensure_process_server("tgtd");
        self.port = Some(port);
        Ok(Opened { bytes, cache_mode })
    }

    /// Closes the LU's port (`bs_close`): unregisters and flushes its
    /// LUN. Commands still running keep their reference; tgtd closes an
    /// LU without any.
    pub fn close(&mut self) {
        if let Some(port) = self.port.take() {
            port.close();
        }
    }
}

/// Parses `--bsopts`: `cache=<mode>` (writethrough, none, writeback,
/// unsafe, directsync; default writeback, see `ferry_scsi::cache`),
/// `alua=active|standby` and `tpg=<1..65535>`, separated by `;`.
/// Anything else is refused so a typo is not silently ignored.
pub fn parse_bsopts(opts: &str) -> Result<BsOpts, Error> {
    let mut out = BsOpts::default();
    for kv in opts.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        match kv.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("cache", v)) => out.cache_mode = Some(v.parse().map_err(Error::CacheMode)?),
            Some(("alua", "active")) => out.standby = false,
            Some(("alua", "standby")) => out.standby = true,
            Some(("alua", v)) => {
                return Err(Error::BadOption {
                    key: "alua",
                    why: format!("{v:?} is not active or standby"),
                })
            }
            Some(("tpg", v)) => {
                let group =
                    v.parse::<u16>()
                        .ok()
                        .filter(|g| *g != 0)
                        .ok_or_else(|| Error::BadOption {
                            key: "tpg",
                            why: format!("{v:?} is not a port group id (1 to 65535)"),
                        })?;
                out.group = Some(group);
            }
            _ => {
                let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
                return Err(Error::UnknownOption {
                    key: key.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsopts_are_checked() {
        assert_eq!(parse_bsopts("").ok(), Some(BsOpts::default()));
        assert_eq!(parse_bsopts(" ; ").ok(), Some(BsOpts::default()));
        assert_eq!(
            parse_bsopts("cache=writethrough").unwrap().cache_mode,
            Some(CacheMode::Writethrough)
        );
        assert_eq!(
            parse_bsopts("alua=standby;tpg=7").unwrap(),
            BsOpts {
                cache_mode: None,
                standby: true,
                group: Some(7)
            }
        );
        for bad in ["alua=maybe", "tpg=0", "tpg=70000", "tpg=x"] {
            assert!(
                matches!(parse_bsopts(bad), Err(Error::BadOption { .. })),
                "{bad}"
            );
        }
        assert!(parse_bsopts("cache=fast")
            .unwrap_err()
            .to_string()
            .contains("unknown cache mode"));
        assert!(matches!(
            parse_bsopts("conf=/etc/ceph"),
            Err(Error::UnknownOption { key }) if key == "conf"
        ));
    }

    #[test]
    fn a_slot_takes_its_cache_mode_from_bsopts() {
        assert_eq!(LunSlot::new(None).unwrap().opts.cache_mode, None);
        assert_eq!(
            LunSlot::new(Some("cache=unsafe")).unwrap().opts.cache_mode,
            Some(CacheMode::Unsafe)
        );
        assert!(LunSlot::new(Some("cache")).is_err());
    }

    #[test]
    fn open_registers_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FERRY_RUN_DIR", dir.path().join("run"));
        let path = dir.path().join("v.img");
        let spec = format!("file:{}", path.display());
        ferry_host::VolumeSpec::parse(&spec)
            .unwrap()
            .create(1 << 20, None)
            .unwrap();
        let mut slot = LunSlot::new(Some("cache=writethrough")).unwrap();
        assert_eq!(
            slot.open(&spec, 9).unwrap(),
            Opened {
                bytes: 1 << 20,
                cache_mode: CacheMode::Writethrough
            }
        );
        let lun = slot.lun().unwrap();
        assert_eq!(lun.cache_mode(), CacheMode::Writethrough);
        assert_eq!(lun.block_size(), 512);
        slot.close();
        assert!(slot.lun().is_none());
        drop(lun);
        // Closed: the volume opens again.
        assert_eq!(slot.open(&spec, 12).unwrap().bytes, 1 << 20);
        slot.close();
    }

    #[test]
    fn open_refuses_a_partial_last_block_and_missing_volumes() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FERRY_RUN_DIR", dir.path().join("run"));
        let path = dir.path().join("v.img");
        let spec = format!("file:{}", path.display());
        let mut slot = LunSlot::default();
        assert!(matches!(slot.open(&spec, 9), Err(Error::Open { .. })));
        ferry_host::VolumeSpec::parse(&spec)
            .unwrap()
            .create(1 << 20, None)
            .unwrap();
        let e = slot.open(&spec, 21).unwrap_err();
        assert!(matches!(e, Error::Geometry(_)), "{e}");
        assert!(e.to_string().contains("block size 2097152"), "{e}");
        assert!(slot.lun().is_none());
        let mut standby = LunSlot::new(Some("alua=standby")).unwrap();
        assert!(matches!(standby.open(&spec, 21), Err(Error::Geometry(_))));
    }

    #[test]
    fn a_standby_lu_reports_the_size_without_taking_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FERRY_RUN_DIR", dir.path().join("run"));
        let spec = format!("file:{}", dir.path().join("v.img").display());
        ferry_host::VolumeSpec::parse(&spec)
            .unwrap()
            .create(1 << 20, None)
            .unwrap();
        let holder = Lun::open(&spec).unwrap();
        let mut slot = LunSlot::new(Some("alua=standby;tpg=3")).unwrap();
        assert_eq!(slot.open(&spec, 9).unwrap().bytes, 1 << 20);
        assert_eq!(slot.state(), AccessState::Standby);
        assert_eq!(slot.group(), 3);
        assert!(slot.lun().is_none());
        drop(holder);
        slot.close();
    }
}
