//! An LU's life in safe Rust: the options `--bsopts` gives (`bs_init`),
//! opening the ferry LUN the backing-store path names and registering it
//! with the control socket (`bs_open`), and flushing and unregistering
//! it (`bs_close`). The shim ([`crate::shim`]) reads tgtd's structs,
//! calls these, and writes what they return back into tgtd's LU.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::Arc;

use ferry_host::Lun;
use ferry_scsi::CacheMode;

use crate::optable::{NexusNames, SavedOps};
use crate::Error;

/// The plugin's per-LU private data: created in `bs_init`, reclaimed in
/// `bs_exit`, and used on tgtd's main thread only (workers get the
/// [`Lun`]).
#[derive(Default)]
pub struct LunSlot {
    /// The open LUN: everything a command needs (geometry, cache mode,
    /// reservations, the COMPARE AND WRITE lock) is its.
    pub lun: Option<Arc<Lun>>,
    /// The cache mode `--bsopts` asked for.
    pub cache_mode: Option<CacheMode>,
    /// The mode the caching mode page was last made to match.
    pub page_mode: Cell<Option<CacheMode>>,
    /// tgtd's handlers of the LU's opcodes (see [`crate::optable`]).
    pub saved_ops: SavedOps,
    /// The nexus names of the LU's sessions (see [`crate::optable`]).
    pub nexus_names: NexusNames,
}

/// What `bs_open` tells tgtd about a LUN just opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The LUN's size in bytes.
    pub bytes: u64,
    /// The cache mode it runs in (for the caching mode page's WCE).
    pub cache_mode: CacheMode,
}

impl LunSlot {
    /// The slot of a new LU, with the options of its `--bsopts` (if any).
    pub fn new(bsopts: Option<&str>) -> Result<LunSlot, Error> {
        Ok(LunSlot {
            cache_mode: bsopts.map(parse_bsopts).transpose()?.flatten(),
            ..LunSlot::default()
        })
    }

    /// Opens the LUN `spec` names (following a migration in progress,
    /// which resumes with its copier, or a committed one) for this LU of
    /// `1 << block_shift`-byte blocks, in the cache mode `--bsopts` asked
    /// for, and registers it with the process's control socket.
    pub fn open(&mut self, spec: &str, block_shift: u32) -> Result<Opened, Error> {
        let lun = ferry_host::Lun::open(spec).map_err(|e| Error::Open {
            spec: spec.to_string(),
            source: e.into(),
        })?;
        if let Some(m) = self.cache_mode {
            lun.set_cache_mode(m);
        }
        // The whole volume, in the LU's blocks (tgtd reports its capacity
        // from the size returned here).
        let block = u32::try_from(1u64 << block_shift.min(32)).unwrap_or(u32::MAX);
        lun.set_geometry(block, None).map_err(Error::Geometry)?;
        let bytes = ferry_core::Volume::size(lun.as_ref());
        ferry_host::control::process_registry().add(&lun);
        ferry_host::control::ensure_process_server("tgtd");
        let cache_mode = lun.cache_mode();
        self.lun = Some(lun);
        Ok(Opened { bytes, cache_mode })
    }

    /// Unregisters the LUN and flushes it (`bs_close`). Commands still
    /// running keep their reference; tgtd closes an LU without any.
    pub fn close(&mut self) {
        if let Some(lun) = self.lun.take() {
            ferry_host::control::process_registry().remove(&lun);
            if let Err(e) = ferry_core::Volume::flush(lun.as_ref()) {
                log::error!("{}: flush at close failed: {e}", lun.spec());
            }
        }
    }
}

/// Parses `--bsopts`: `cache=<mode>` (writethrough, none, writeback,
/// unsafe, directsync; default writeback, see `ferry_scsi::cache`).
/// Anything else is refused so a typo is not silently ignored.
pub fn parse_bsopts(opts: &str) -> Result<Option<CacheMode>, Error> {
    let mut mode = None;
    for kv in opts.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("cache", v)) => mode = Some(v.trim().parse().map_err(Error::CacheMode)?),
            _ => {
                let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
                return Err(Error::UnknownOption {
                    key: key.to_string(),
                });
            }
        }
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsopts_are_checked() {
        assert_eq!(parse_bsopts("").ok(), Some(None));
        assert_eq!(parse_bsopts(" ; ").ok(), Some(None));
        assert_eq!(
            parse_bsopts("cache=writethrough").ok(),
            Some(Some(CacheMode::Writethrough))
        );
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
        assert_eq!(LunSlot::new(None).unwrap().cache_mode, None);
        assert_eq!(
            LunSlot::new(Some("cache=unsafe")).unwrap().cache_mode,
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
        let lun = slot.lun.clone().unwrap();
        assert_eq!(lun.cache_mode(), CacheMode::Writethrough);
        assert_eq!(lun.block_size(), 512);
        slot.close();
        assert!(slot.lun.is_none());
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
        assert!(slot.lun.is_none());
    }
}
