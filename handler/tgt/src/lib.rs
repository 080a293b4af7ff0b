//! `bs_ferry.so`: a tgtd backing store serving ferry volumes.
//!
//! ```text
//! tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 \
//!        --bstype ferry --backing-store file:/srv/vol.img
//! ```
//!
//! The backing-store string is a ferry volume spec. The LUN opens whatever
//! the spec names now (following a migration in progress, which resumes
//! with its copier, or a committed one), so a LUN configured once keeps
//! serving the same data through migrations and tgtd restarts. Migrations
//! are started and steered with `ferry migrate ...` through the control
//! socket this tgtd opens (`/run/ferry/ferry-<pid>.sock`).
//!
//! Every exported function runs its body inside a panic boundary, checks
//! its pointers, and hands over to safe Rust: per-LU state is a `Box`
//! stored in tgtd's per-LU private area (`bs_datasize` bytes after
//! `struct scsi_lu`), created in `bs_init` and reclaimed in `bs_exit`.
//! Commands run on the worker pool of [`runtime`]. Persistent
//! reservations are ferry's, not tgtd's (see `pr.rs`).

pub mod ffi;
mod logger;
mod pr;
pub mod runtime;

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ffi::{BackingstoreTemplate, ListHead, ScsiCmd, ScsiLu};
use parking_lot::Mutex;

/// Physical block size reported to initiators.
const PHYSICAL_BLOCK: u32 = 4096;

/// What a served LUN needs at command time.
pub struct LunState {
    pub lun: Arc<ferry_host::Lun>,
    pub block_shift: u32,
    pub caw: Mutex<()>,
}

/// The plugin's per-LU private data.
#[derive(Default)]
struct LunSlot {
    state: Option<Arc<LunState>>,
    /// The cache mode `--bsopts` asked for.
    cache_mode: Option<ferry_core::CacheMode>,
    /// The mode the caching mode page was last made to match (main
    /// thread only).
    page_mode: Option<ferry_core::CacheMode>,
    /// tgtd's handlers of the LU's opcodes (see `pr.rs`).
    saved_ops: pr::SavedOps,
    /// The nexus names of the LU's sessions (see `pr.rs`).
    nexus_names: pr::NexusNames,
}

/// The `bs_datasize` area of an LU holds one pointer to its [`LunSlot`].
///
/// # Safety
/// `lu` must be an LU allocated by tgtd for this backing store (so it has
/// at least `bs_datasize` bytes after `struct scsi_lu`).
unsafe fn slot_ptr(lu: *mut ScsiLu) -> *mut *mut LunSlot {
    // SAFETY: per the contract, the private area starts right after the
    // struct and is pointer-aligned (tgtd allocates with calloc and the
    // struct size is a multiple of 8).
    unsafe { lu.cast::<u8>().add(ffi::SCSI_LU_SIZE).cast() }
}

/// Runs `f`, turning a panic into `on_panic` (never unwinding into C).
fn boundary<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("{what} panicked");
        on_panic
    })
}

/// Entry point tgtd calls after `dlopen`.
#[no_mangle]
pub extern "C" fn register_bs_module() {
    boundary("register_bs_module", (), || {
        let tgtd = match ffi::tgtd() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bs_ferry: not loaded: {e}");
                return;
            }
        };
        logger::install(tgtd);
        let template = Box::leak(Box::new(BackingstoreTemplate {
            bs_name: c"ferry".as_ptr(),
            bs_datasize: std::mem::size_of::<*mut LunSlot>() as c_int, // 8
            bs_open: Some(bs_open),
            bs_close: Some(bs_close),
            bs_init: Some(bs_init),
            bs_exit: Some(bs_exit),
            bs_cmd_submit: Some(bs_cmd_submit),
            bs_oflags_supported: 0,
            bs_supported_ops: [0; 4],
            backingstore_siblings: ListHead {
                next: std::ptr::null_mut(),
                prev: std::ptr::null_mut(),
            },
        }));
        // SAFETY: the template is leaked, so it lives (and stays put) for
        // the life of the process, as tgtd requires.
        unsafe { (tgtd.register_backingstore_template)(template) };
        log::info!("registered backing store \"ferry\"");
    })
}

/// Parses `--bsopts`: `cache=<mode>` (writethrough, none, writeback,
/// unsafe, directsync; default writeback, see `ferry_core::cache`).
/// Anything else is refused so a typo is not silently ignored.
fn parse_bsopts(opts: &str) -> Result<Option<ferry_core::CacheMode>, String> {
    let mut mode = None;
    for kv in opts.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("cache", v)) => mode = Some(v.trim().parse()?),
            _ => {
                let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
                return Err(format!(
                    "unknown --bsopts option {key:?} (bs_ferry takes cache=<mode>)"
                ));
            }
        }
    }
    Ok(mode)
}

unsafe extern "C" fn bs_init(lu: *mut ScsiLu, bsopts: *mut c_char) -> c_int {
    boundary("bs_init", ffi::TGTADM_INVALID_REQUEST, || {
        if lu.is_null() {
            return ffi::TGTADM_INVALID_REQUEST;
        }
        let mut cache_mode = None;
        if !bsopts.is_null() {
            // SAFETY: tgtd passes a NUL-terminated string (or NULL).
            let opts = unsafe { CStr::from_ptr(bsopts) }.to_string_lossy();
            match parse_bsopts(&opts) {
                Ok(m) => cache_mode = m,
                Err(e) => {
                    log::error!("{e}");
                    return ffi::TGTADM_INVALID_REQUEST;
                }
            }
        }
        if let Err(e) = runtime::start() {
            log::error!("cannot start: {e}");
            return ffi::TGTADM_NOMEM;
        }
        // SAFETY: `lu` is tgtd's LU for this store (non-null, checked),
        // being set up on the main thread: no command of it runs yet.
        let saved_ops = unsafe { pr::install(lu) };
        let slot = Box::into_raw(Box::new(LunSlot {
            cache_mode,
            saved_ops,
            ..LunSlot::default()
        }));
        // SAFETY: as above.
        unsafe { *slot_ptr(lu) = slot };
        ffi::TGTADM_SUCCESS
    })
}

unsafe extern "C" fn bs_exit(lu: *mut ScsiLu) {
    boundary("bs_exit", (), || {
        if lu.is_null() {
            return;
        }
        // SAFETY: the pointer was set by bs_init (or is still null if
        // bs_init failed before); we take it back exactly once.
        unsafe {
            let p = std::mem::replace(&mut *slot_ptr(lu), std::ptr::null_mut());
            if !p.is_null() {
                drop(Box::from_raw(p));
            }
        }
    })
}

unsafe extern "C" fn bs_open(
    lu: *mut ScsiLu,
    path: *mut c_char,
    fd: *mut c_int,
    size: *mut u64,
) -> c_int {
    boundary("bs_open", -1, || {
        if lu.is_null() || path.is_null() || fd.is_null() || size.is_null() {
            return -1;
        }
        // SAFETY: non-null pointers from tgtd: path is a C string, fd and
        // size are out-parameters, lu is the LU bs_init set up.
        let (spec, slot, block_shift) = unsafe {
            (
                CStr::from_ptr(path).to_string_lossy().into_owned(),
                *slot_ptr(lu),
                (*lu).blk_shift,
            )
        };
        if slot.is_null() {
            return -1;
        }
        let lun = match ferry_host::Lun::open(&spec) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot open {spec:?}: {e}");
                return -1;
            }
        };
        // SAFETY: slot is bs_init's (non-null, checked).
        if let Some(m) = unsafe { (*slot).cache_mode } {
            lun.set_cache_mode(m);
        }
        let bytes = ferry_core::Volume::size(lun.as_ref());
        if bytes >> block_shift << block_shift != bytes {
            log::error!(
                "{spec}: size {bytes} is not a multiple of the {}-byte block size",
                1u64 << block_shift
            );
            return -1;
        }
        ferry_host::control::process_registry().add(&lun);
        ferry_host::control::ensure_process_server("tgtd");
        let state = Arc::new(LunState {
            lun,
            block_shift,
            caw: Mutex::new(()),
        });
        // SAFETY: as above; we also mark the LU thin-provisioned (ferry
        // volumes read unmapped blocks as zeroes) and refresh the two VPD
        // pages that depend on it through tgtd's own update hooks.
        unsafe {
            let mode = state.lun.cache_mode();
            (*slot).state = Some(state);
            // MODE SENSE shows the mode's WCE from the start.
            sync_write_cache(lu, slot, mode);
            *fd = -1; // not a file tgtd may lseek (GET LBA STATUS)
            *size = bytes;
            // Report 4 KiB physical blocks, the unit file and RBD volumes
            // allocate in, so initiators align I/O and unmaps to it.
            if let Ok(tgtd) = ffi::tgtd() {
                (tgtd.update_lbppbe)(lu, PHYSICAL_BLOCK as c_int);
            }
            let attrs = lu.cast::<u8>().add(ffi::LU_ATTRS);
            *attrs.add(ffi::ATTR_THINPROVISIONING) = 1;
            let vpds = attrs.add(ffi::ATTR_LU_VPD).cast::<*mut ffi::Vpd>();
            for page in [ffi::VPD_BLOCK_LIMITS, ffi::VPD_LB_PROVISIONING] {
                let vpd = *vpds.add(page);
                if !vpd.is_null() {
                    if let Some(update) = (*vpd).vpd_update {
                        update(lu, std::ptr::null_mut());
                    }
                }
            }
        }
        log::info!("{spec}: open, {bytes} bytes");
        0
    })
}

unsafe extern "C" fn bs_close(lu: *mut ScsiLu) {
    boundary("bs_close", (), || {
        if lu.is_null() {
            return;
        }
        // SAFETY: the slot set by bs_init; lu->path is already freed by
        // tgtd here and is not used.
        let state = unsafe {
            let slot = *slot_ptr(lu);
            if slot.is_null() {
                return;
            }
            (*slot).state.take()
        };
        if let Some(state) = state {
            ferry_host::control::process_registry().remove(&state.lun);
            if let Err(e) = ferry_core::Volume::flush(state.lun.as_ref()) {
                log::error!("{}: flush at close failed: {e}", state.lun.spec());
            }
        }
    })
}

/// The LU's WCE bit (mode page 8) as initiators see it, first made to
/// match the LUN's cache mode when the mode fixes it or just changed
/// (tgtd answers MODE SENSE from this page itself).
///
/// # Safety
/// Main thread only; `lu` is a live LU and `slot` its slot.
unsafe fn sync_write_cache(
    lu: *mut ScsiLu,
    slot: *mut LunSlot,
    mode: ferry_core::CacheMode,
) -> bool {
    let Ok(tgtd) = ffi::tgtd() else { return true };
    // SAFETY: tgtd's lookup of the LU's caching mode page; mode_data[0]
    // bit 2 is WCE (SBC-3 6.4.5). The slot is ours, on the main thread.
    unsafe {
        let pg = (tgtd.find_mode_page)(lu, 0x08, 0);
        if pg.is_null() {
            return true;
        }
        let byte = pg.cast::<u8>().add(ffi::MODE_PG_DATA);
        let changed = (*slot).page_mode != Some(mode);
        // Writeback and none leave WCE to the initiator (MODE SELECT),
        // starting from on when the mode is set.
        let want = mode.forced_wce().or(changed.then_some(true));
        if let Some(on) = want {
            *byte = if on { *byte | 0x04 } else { *byte & !0x04 };
        }
        (*slot).page_mode = Some(mode);
        *byte & 0x04 != 0
    }
}

unsafe extern "C" fn bs_cmd_submit(cmd: *mut ScsiCmd) -> c_int {
    boundary("bs_cmd_submit", -1, || {
        if cmd.is_null() {
            return -1;
        }
        // SAFETY: a live command on tgtd's main thread; its LU is ours.
        unsafe { submit(cmd, false) }
    })
}

/// The command's CDB (at most 32 bytes; empty without one).
///
/// # Safety
/// `cmd` is a live command; the slice lives as long as it does.
unsafe fn cdb_of<'a>(cmd: *mut ScsiCmd) -> &'a [u8] {
    // SAFETY: scb points at scb_len bytes of CDB (or is null).
    unsafe {
        let len = usize::try_from((*cmd).scb_len).unwrap_or(0).min(32);
        if (*cmd).scb.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts((*cmd).scb, len)
        }
    }
}

/// Hands `cmd` to the workers with the nexus that sent it (`pr`: a
/// PERSISTENT RESERVE IN/OUT); 0 when accepted, -1 for HARDWARE ERROR.
///
/// # Safety
/// `cmd` is a live, non-null command of one of our LUs, on tgtd's main
/// thread.
unsafe fn submit(cmd: *mut ScsiCmd, pr: bool) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        let lu = (*cmd).dev;
        if lu.is_null() {
            return -1;
        }
        let slot = *slot_ptr(lu);
        let Some(state) = slot.as_ref().and_then(|s| s.state.clone()) else {
            log::error!("a command for an LU that is not open; answering HARDWARE ERROR");
            return -1;
        };
        // The worker checks the command against the reservations again,
        // under the LUN's PR gate (see pr.rs), so it needs the nexus.
        let nexus = (*slot).nexus_names.of(cmd);
        let cdb = cdb_of(cmd).to_vec();
        let cache_mode = state.lun.cache_mode();
        let write_cache = sync_write_cache(lu, slot, cache_mode);
        let job = runtime::Job {
            cmd: runtime::CmdPtr(cmd),
            nexus,
            pr,
            lun: state,
            cdb,
            write_cache,
            cache_mode,
            data_out: runtime::RawBuf {
                ptr: (*cmd).out_sdb.buffer as usize as *mut u8,
                len: (*cmd).out_sdb.length as usize,
            },
            data_in: runtime::RawBuf {
                ptr: (*cmd).in_sdb.buffer as usize as *mut u8,
                len: (*cmd).in_sdb.length as usize,
            },
        };
        let rt = match runtime::start() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("worker runtime unavailable ({e}); answering HARDWARE ERROR");
                return -1;
            }
        };
        (*cmd).state |= ffi::TGT_CMD_ASYNC;
        rt.submit(job);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsopts_are_checked() {
        assert_eq!(parse_bsopts(""), Ok(None));
        assert_eq!(parse_bsopts(" ; "), Ok(None));
        assert_eq!(
            parse_bsopts("cache=writethrough"),
            Ok(Some(ferry_core::CacheMode::Writethrough))
        );
        assert!(parse_bsopts("cache=fast")
            .unwrap_err()
            .contains("unknown cache mode"));
        assert!(parse_bsopts("conf=/etc/ceph").unwrap_err().contains("conf"));
    }
}
