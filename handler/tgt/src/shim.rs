//! The functions tgtd calls: `register_bs_module`, the backing store's
//! `bs_*` callbacks, the LU's opcode-table hooks and the completions'
//! event handler.
//!
//! Each one runs inside a panic boundary, checks its pointers, reads what
//! it needs from tgtd's structures, makes one call into the safe modules
//! ([`crate::lun`], [`crate::optable`], [`crate::runtime`]) and writes
//! what comes back into tgtd's structures. This module and [`crate::ffi`]
//! hold all of the plugin's `unsafe` code.
//!
//! Per-LU state is a `Box<LunSlot>` stored in tgtd's per-LU private area
//! (`bs_datasize` bytes after `struct scsi_lu`), created in `bs_init` and
//! reclaimed in `bs_exit`. Everything here runs on tgtd's main thread but
//! the workers' use of a command's [`CmdPtr`] and [`RawBuf`]s.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use ferry_plugin::boundary;
use ferry_pr::{Nexus, Refusal};
use ferry_scsi::CacheMode;
use ferry_scsi::Sense;

use crate::ffi::{self, BackingstoreTemplate, CmdPerform, ListHead, ScsiCmd, ScsiLu};
use crate::lun::LunSlot;
use crate::optable::{self, Admission, Hook, SavedOps};
use crate::runtime::{Done, Job, Runtime};
use crate::Error;

/// Physical block size reported to initiators.
const PHYSICAL_BLOCK: u32 = 4096;

/// A command pointer handed between threads. tgtd keeps the command (and
/// its buffers) alive and untouched until we call `target_cmd_io_done`.
pub struct CmdPtr(pub *mut ScsiCmd);
// SAFETY: see above: exactly one thread works on a command at a time
// (main thread at submit, one worker, main thread at completion), and the
// hand-offs go through channels, which order the memory accesses.
unsafe impl Send for CmdPtr {}

/// A data buffer of a command (data-in or data-out), which follows the
/// command to its worker.
pub struct RawBuf {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: the buffer belongs to the command and follows it (see CmdPtr).
unsafe impl Send for RawBuf {}

impl RawBuf {
    /// # Safety
    /// `ptr` is null, or valid for reads and writes of `len` bytes until
    /// the command owning it completes, and accessed by nothing but this
    /// `RawBuf` meanwhile.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> RawBuf {
        RawBuf { ptr, len }
    }

    /// The buffer's bytes (none for a null buffer).
    pub fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: per `new`'s contract; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's bytes, to fill (none for a null buffer).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: per `new`'s contract; the slice borrows `self` mutably,
        // so it is the only one.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
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
        ferry_plugin::logger::install("bs_ferry", move |level, line| tgtd.log(level, line));
        let template = Box::leak(Box::new(BackingstoreTemplate {
            bs_name: c"ferry".as_ptr(),
            // A pointer's 8 bytes: fits a c_int.
            bs_datasize: std::mem::size_of::<*mut LunSlot>() as c_int,
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

static RUNTIME: OnceLock<Result<Runtime, Error>> = OnceLock::new();

/// The worker runtime, started on first use, its completions watched by
/// tgtd's event loop.
///
/// # Safety
/// On tgtd's main thread (`tgt_event_add` requires it).
unsafe fn runtime() -> Result<&'static Runtime, &'static Error> {
    RUNTIME
        .get_or_init(|| {
            let tgtd = ffi::tgtd().map_err(Error::Host)?;
            let rt = Runtime::start(tgtd.nr_iothreads())?;
            // SAFETY: registering our handler for the runtime's eventfd
            // (which lives as long as the runtime, in a static once this
            // succeeds) with tgtd's event loop, on the main thread as
            // tgt_event_add requires.
            let rc = unsafe {
                (tgtd.tgt_event_add)(
                    rt.completion_fd().as_raw_fd(),
                    libc::EPOLLIN,
                    on_completions,
                    std::ptr::null_mut(),
                )
            };
            if rc != 0 {
                return Err(Error::EventAdd(rc));
            }
            log::info!("runtime started: {} workers", rt.workers());
            Ok(rt)
        })
        .as_ref()
}

unsafe extern "C" fn bs_init(lu: *mut ScsiLu, bsopts: *mut c_char) -> c_int {
    boundary("bs_init", ffi::TGTADM_INVALID_REQUEST, || {
        if lu.is_null() {
            return ffi::TGTADM_INVALID_REQUEST;
        }
        let opts = (!bsopts.is_null()).then(|| {
            // SAFETY: tgtd passes a NUL-terminated string (or NULL).
            unsafe { CStr::from_ptr(bsopts) }.to_string_lossy()
        });
        let mut slot = match LunSlot::new(opts.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("{e}");
                return ffi::TGTADM_INVALID_REQUEST;
            }
        };
        // SAFETY: tgtd calls bs_init on its main thread.
        if let Err(e) = unsafe { runtime() } {
            log::error!("cannot start: {e}");
            return ffi::TGTADM_NOMEM;
        }
        // SAFETY: `lu` is tgtd's LU for this store (non-null, checked),
        // being set up on the main thread: no command of it runs yet.
        slot.saved_ops = unsafe { install(lu) };
        // SAFETY: as above.
        unsafe { *slot_ptr(lu) = Box::into_raw(Box::new(slot)) };
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
        // SAFETY: non-null pointers from tgtd: path is a C string, lu is
        // the LU bs_init set up (its slot null if bs_init failed), on the
        // main thread with no command of the LU running: nothing else
        // refers to the slot.
        let (spec, slot, block_shift) = unsafe {
            (
                CStr::from_ptr(path).to_string_lossy().into_owned(),
                (*slot_ptr(lu)).as_mut(),
                (*lu).blk_shift,
            )
        };
        let Some(slot) = slot else { return -1 };
        let opened = match slot.open(&spec, block_shift) {
            Ok(o) => o,
            Err(e) => {
                log::error!("{e}");
                return -1;
            }
        };
        // SAFETY: as above; fd and size are out-parameters. We also mark
        // the LU thin-provisioned (ferry volumes read unmapped blocks as
        // zeroes) and refresh the two VPD pages that depend on it through
        // tgtd's own update hooks.
        unsafe {
            // MODE SENSE shows the mode's WCE from the start.
            sync_write_cache(lu, slot, opened.cache_mode);
            *fd = -1; // not a file tgtd may lseek (GET LBA STATUS)
            *size = opened.bytes;
            // Report 4 KiB physical blocks, the unit file and RBD volumes
            // allocate in, so initiators align I/O and unmaps to it.
            if let Ok(tgtd) = ffi::tgtd() {
                // 4096 fits a c_int.
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
            name_the_port(vpds.add(ffi::VPD_DEVICE_ID), slot.group());
        }
        log::info!("{spec}: open, {} bytes", opened.bytes);
        0
    })
}

/// Puts the relative target port and target port group designators
/// ([`ferry_scsi::alua::with_port_designators`]) in the LU's device
/// identification page, which tgtd builds without them. The page is
/// rewritten in place when its length stays (bs_open again, after
/// `tgtadm --op update --params path=`), reallocated otherwise (tgtd
/// frees it with `free`, and its `vpd_update` rewrites only the
/// designators before them, at fixed offsets).
///
/// # Safety
/// `slot` is the LU's VPD table entry for page 83h, on tgtd's main thread
/// with no command of the LU running.
unsafe fn name_the_port(slot: *mut *mut ffi::Vpd, group: u16) {
    // SAFETY: per the contract; the old page is tgtd's (or our)
    // allocation of VPD_DATA + size bytes, the new one calloc'd for the
    // new page.
    unsafe {
        let old = *slot;
        if old.is_null() {
            return;
        }
        let size = usize::from((*old).size);
        let data = std::slice::from_raw_parts(old.cast::<u8>().add(ffi::VPD_DATA), size);
        let page = ferry_scsi::alua::with_port_designators(data, group);
        let Ok(new_size) = u16::try_from(page.len()) else {
            return;
        };
        if page.len() == size {
            std::ptr::copy_nonoverlapping(page.as_ptr(), old.cast::<u8>().add(ffi::VPD_DATA), size);
            return;
        }
        let new = libc::calloc(1, ffi::VPD_DATA + page.len()).cast::<ffi::Vpd>();
        if new.is_null() {
            log::warn!("no memory to name the target port in VPD page 83h");
            return;
        }
        std::ptr::copy_nonoverlapping(old.cast::<u8>(), new.cast::<u8>(), ffi::VPD_DATA);
        (*new).size = new_size;
        let to = new.cast::<u8>().add(ffi::VPD_DATA);
        std::ptr::copy_nonoverlapping(page.as_ptr(), to, page.len());
        *slot = new;
        libc::free(old.cast());
    }
}

unsafe extern "C" fn bs_close(lu: *mut ScsiLu) {
    boundary("bs_close", (), || {
        if lu.is_null() {
            return;
        }
        // SAFETY: the slot set by bs_init (null if it failed); tgtd
        // closes an LU on its main thread, with no command of it running.
        // lu->path is already freed by tgtd here and is not used.
        if let Some(slot) = unsafe { (*slot_ptr(lu)).as_mut() } {
            slot.close();
        }
    })
}

/// The LU's WCE bit (mode page 8) as initiators see it, first made to
/// match the LUN's cache mode when the mode fixes it or just changed
/// (tgtd answers MODE SENSE from this page itself).
///
/// # Safety
/// Main thread only; `lu` is a live LU and `slot` its slot.
unsafe fn sync_write_cache(lu: *mut ScsiLu, slot: &LunSlot, mode: CacheMode) -> bool {
    let Ok(tgtd) = ffi::tgtd() else { return true };
    // SAFETY: tgtd's lookup of the LU's caching mode page; mode_data[0]
    // bit 2 is WCE (SBC-3 6.4.5).
    unsafe {
        let pg = (tgtd.find_mode_page)(lu, 0x08, 0);
        if pg.is_null() {
            return true;
        }
        let byte = pg.cast::<u8>().add(ffi::MODE_PG_DATA);
        let changed = slot.page_mode.get() != Some(mode);
        // Writeback and none leave WCE to the initiator (MODE SELECT),
        // starting from on when the mode is set.
        let want = mode.forced_wce().or(changed.then_some(true));
        if let Some(on) = want {
            *byte = if on { *byte | 0x04 } else { *byte & !0x04 };
        }
        slot.page_mode.set(Some(mode));
        *byte & 0x04 != 0
    }
}

unsafe extern "C" fn bs_cmd_submit(cmd: *mut ScsiCmd) -> c_int {
    boundary("bs_cmd_submit", -1, || {
        if cmd.is_null() {
            return -1;
        }
        // SAFETY: a live command on tgtd's main thread; its LU is ours.
        unsafe { submit(cmd) }
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

/// The LU's slot, if the LU is set up.
///
/// # Safety
/// `cmd` is a live command of one of our LUs, on tgtd's main thread.
unsafe fn slot_of(cmd: *mut ScsiCmd) -> Option<&'static LunSlot> {
    // SAFETY: per the contract; the slot lives until bs_exit, which tgtd
    // calls only once the LU has no commands.
    unsafe {
        let lu = (*cmd).dev;
        if lu.is_null() {
            return None;
        }
        (*slot_ptr(lu)).as_ref()
    }
}

/// Hands `cmd` to the workers with the nexus that sent it; 0 when
/// accepted, -1 for HARDWARE ERROR.
///
/// # Safety
/// `cmd` is a live, non-null command of one of our LUs, on tgtd's main
/// thread.
unsafe fn submit(cmd: *mut ScsiCmd) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        let lu = (*cmd).dev;
        if lu.is_null() {
            return -1;
        }
        let Some(slot) = (*slot_ptr(lu)).as_ref() else {
            log::error!("a command for an LU that is not set up; answering HARDWARE ERROR");
            return -1;
        };
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("worker runtime unavailable ({e}); answering HARDWARE ERROR");
                return -1;
            }
        };
        let Some(lun) = slot.lun() else {
            // The port was demoted after the command was admitted: it is
            // answered with the port's state, through the completions, so
            // tgtd does not turn it into a HARDWARE ERROR (which a
            // multipath initiator would not retry on another path).
            let sense = slot.state().refusal().unwrap_or(Sense::internal_failure());
            (*cmd).state |= ffi::TGT_CMD_ASYNC;
            rt.answer(Done {
                cmd: CmdPtr(cmd),
                outcome: Err(Refusal::Check(sense)),
                sized_reply: false,
            });
            return 0;
        };
        // The worker checks the command against the reservations again,
        // under the LUN's PR gate (see optable.rs), so it needs the nexus.
        let nexus = nexus_of(slot, cmd);
        let cdb = cdb_of(cmd).to_vec();
        // tgtd answers MODE SELECT itself: the LUN learns WCE from the page.
        lun.set_write_cache(sync_write_cache(lu, slot, lun.cache_mode()));
        let job = Job {
            cmd: CmdPtr(cmd),
            nexus,
            lun,
            cdb,
            // The buffers are the command's, valid until it completes and
            // left to its worker meanwhile (see CmdPtr). tgtd keeps a
            // pointer in a u64 and x86_64's usize holds it; the lengths
            // widen from u32.
            data_out: RawBuf::new(
                (*cmd).out_sdb.buffer as usize as *mut u8,
                (*cmd).out_sdb.length as usize,
            ),
            data_in: RawBuf::new(
                (*cmd).in_sdb.buffer as usize as *mut u8,
                (*cmd).in_sdb.length as usize,
            ),
        };
        (*cmd).state |= ffi::TGT_CMD_ASYNC;
        rt.submit(job);
    }
    0
}

/// tgtd event handler for the runtime's eventfd: completes the commands
/// the workers have finished. Runs on tgtd's main thread.
unsafe extern "C" fn on_completions(_fd: c_int, _events: c_int, _data: *mut c_void) {
    boundary("on_completions", (), || {
        let (Some(Ok(rt)), Ok(tgtd)) = (RUNTIME.get(), ffi::tgtd()) else {
            return;
        };
        for done in rt.finished() {
            // SAFETY: a live command we accepted in bs_cmd_submit and
            // have not completed, on tgtd's main thread.
            unsafe { complete(tgtd, done) };
        }
    })
}

/// Sets `done`'s status, sense and residual in its command and completes
/// it with `target_cmd_io_done`.
///
/// # Safety
/// `done.cmd` is a live command we accepted and have not completed; on
/// tgtd's main thread, where sense_data_build and target_cmd_io_done must
/// run.
unsafe fn complete(tgtd: &ffi::Tgtd, done: Done) {
    let Done {
        cmd,
        outcome,
        sized_reply,
    } = done;
    let cmd = cmd.0;
    // SAFETY: per the contract.
    unsafe {
        let result = match outcome {
            Ok(n) => {
                (*cmd).sense_len = 0;
                let len = (*cmd).in_sdb.length;
                if sized_reply {
                    // What scsi_set_in_resid_by_actual does: the reply is n
                    // bytes of the initiator's buffer (fewer for PR IN and
                    // GET LBA STATUS).
                    let n = u32::try_from(n).unwrap_or(u32::MAX).min(len);
                    (*cmd).in_sdb.transfer_len = n;
                    // At most the buffer's length, which tgtd caps far
                    // below i32::MAX.
                    (*cmd).in_sdb.resid = (len - n) as i32;
                }
                ffi::SAM_STAT_GOOD
            }
            Err(Refusal::Conflict) => ffi::SAM_STAT_RESERVATION_CONFLICT,
            Err(Refusal::Check(s)) => {
                build_sense(tgtd, cmd, &s);
                ffi::SAM_STAT_CHECK_CONDITION
            }
        };
        (*cmd).result = result;
        (tgtd.target_cmd_io_done)(cmd, result);
    }
}

/// Puts `s` in `cmd`'s sense data, through tgtd (which knows the LU's
/// sense format).
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
unsafe fn build_sense(tgtd: &ffi::Tgtd, cmd: *mut ScsiCmd, s: &Sense) {
    // SAFETY: per the contract.
    unsafe {
        match s.info {
            Some(info) => (tgtd.sense_data_build_with_info)(cmd, s.key, s.asc, info),
            None => (tgtd.sense_data_build)(cmd, s.key, s.asc),
        }
    }
}

/// Answers `refusal` synchronously: the status to return.
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
unsafe fn refuse(cmd: *mut ScsiCmd, refusal: Refusal) -> c_int {
    match refusal {
        Refusal::Conflict => ffi::SAM_STAT_RESERVATION_CONFLICT,
        Refusal::Check(s) => {
            if let Ok(tgtd) = ffi::tgtd() {
                // SAFETY: per the contract.
                unsafe { build_sense(tgtd, cmd, &s) };
            }
            ffi::SAM_STAT_CHECK_CONDITION
        }
    }
}

// The LU's opcode table (see crate::optable).

/// The service actions ferry answers, as REPORT SUPPORTED OPERATION
/// CODES lists them (tgtd's own lists lack READ FULL STATUS and PREEMPT
/// AND ABORT).
struct ActionList<const N: usize>([ffi::ServiceAction; N]);
// SAFETY: immutable after construction; tgtd only reads it.
unsafe impl<const N: usize> Sync for ActionList<N> {}

const fn action(service_action: u32) -> ffi::ServiceAction {
    ffi::ServiceAction {
        service_action,
        cmd_perform: Some(perform_pr),
    }
}
const END: ffi::ServiceAction = ffi::ServiceAction {
    service_action: 0,
    cmd_perform: None,
};
static PRIN_ACTIONS: ActionList<5> = ActionList([action(0), action(1), action(2), action(3), END]);
static PROUT_ACTIONS: ActionList<9> = ActionList([
    action(0),
    action(1),
    action(2),
    action(3),
    action(4),
    action(5),
    action(6),
    action(7),
    END,
]);

/// Points `lu`'s opcode table at the hooks ([`optable::hook_for`]) and
/// returns tgtd's handlers.
///
/// # Safety
/// `lu` is a live LU of this backing store, on tgtd's main thread, with no
/// command of it running (bs_init).
unsafe fn install(lu: *mut ScsiLu) -> SavedOps {
    let mut saved = SavedOps::default();
    let illegal = optable::illegal_op();
    for (op, orig) in saved.0.iter_mut().enumerate() {
        // SAFETY: the LU's ops[op] (see ops_entry), on tgtd's main thread
        // with no command of the LU running.
        unsafe {
            let entry = ops_entry(lu, op);
            *orig = *entry.perform;
            match optable::hook_for(op, *orig, illegal) {
                Hook::Pr => {
                    *entry.perform = Some(perform_pr);
                    *entry.service_actions = if op == optable::PRIN {
                        PRIN_ACTIONS.0.as_ptr()
                    } else {
                        PROUT_ACTIONS.0.as_ptr()
                    };
                }
                Hook::Checked => *entry.perform = Some(perform_checked),
                Hook::Keep => {}
            }
        }
    }
    saved
}

/// The two fields of an LU's opcode-table entry (`struct
/// device_type_operations`) that ferry reads and writes.
struct OpsEntry {
    perform: *mut Option<CmdPerform>,
    service_actions: *mut *const ffi::ServiceAction,
}

/// `lu`'s table entry for opcode `op`.
///
/// # Safety
/// `lu` is a live LU; `op` < 256. The pointers are valid as long as the
/// LU is (offsets pinned by the layout tests in ffi.rs).
unsafe fn ops_entry(lu: *mut ScsiLu, op: usize) -> OpsEntry {
    // SAFETY: per the contract: the entry lies within `struct scsi_lu`.
    unsafe {
        let entry = lu
            .cast::<u8>()
            .add(ffi::LU_OPS + op * ffi::DEVICE_TYPE_OPERATIONS_SIZE);
        OpsEntry {
            perform: entry.cast(),
            service_actions: entry.add(ffi::OPS_SERVICE_ACTIONS).cast(),
        }
    }
}

/// The session `cmd` came on, as tgtd names it (none without one).
///
/// # Safety
/// `cmd` is a live command, on tgtd's main thread.
unsafe fn session_of(cmd: *mut ScsiCmd) -> Option<optable::SessionKey> {
    // SAFETY: per the contract; it_nexus is the command's session.
    unsafe {
        let itn = (*cmd).it_nexus.cast::<ffi::ItNexus>();
        (!itn.is_null()).then(|| ((*itn).itn_id, (*itn).ctime))
    }
}

/// The nexus of `cmd`, named once per session ([`optable::NexusNames`]).
///
/// # Safety
/// `cmd` is a live command of the LU of `slot`, on tgtd's main thread.
unsafe fn nexus_of(slot: &LunSlot, cmd: *mut ScsiCmd) -> Arc<Nexus> {
    // SAFETY: per the contract.
    let key = unsafe { session_of(cmd) };
    // SAFETY: per the contract.
    slot.nexus_names.of(key, || unsafe { name_nexus(cmd) })
}

/// Names the I_T nexus of `cmd` ([`optable::nexus`]) from its target and
/// tgtd's iSCSI TransportID of its session.
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
unsafe fn name_nexus(cmd: *mut ScsiCmd) -> Nexus {
    // SAFETY: per the contract; c_target is the command's target.
    let (target, tid, itn) = unsafe {
        let t = (*cmd).c_target.cast::<ffi::Target>();
        let (target, tid) = if t.is_null() || (*t).name.is_null() {
            (None, -1)
        } else {
            (
                Some(CStr::from_ptr((*t).name).to_string_lossy().into_owned()),
                (*t).tid,
            )
        };
        (target, tid, (*cmd).cmd_itn_id)
    };
    let mut buf = [0u8; 512];
    let len = ffi::tgtd().ok().and_then(|tgtd| {
        // SAFETY: tgtd fills at most `buf.len()` bytes of our buffer (it
        // returns the length needed without writing when larger); 512
        // fits a c_int.
        let n = unsafe {
            (tgtd.iscsi_transportid)(
                tid,
                itn,
                buf.as_mut_ptr().cast::<c_char>(),
                buf.len() as c_int,
            )
        };
        usize::try_from(n).ok().filter(|&n| n > 0 && n <= buf.len())
    });
    optable::nexus(target.as_deref(), len.map(|n| &buf[..n]), itn)
}

/// MAXIMUM COMPARE AND WRITE LENGTH of `lu`'s block limits VPD page, as
/// initiators read it (tgtd builds the page; 0 if it has none).
///
/// # Safety
/// `lu` is a live LU, on tgtd's main thread.
unsafe fn max_compare_and_write(lu: *mut ScsiLu) -> u8 {
    // SAFETY: per the contract; the LU's VPD table and the page tgtd
    // allocated with its data (offsets pinned by the layout tests).
    unsafe {
        let vpds = lu
            .cast::<u8>()
            .add(ffi::LU_ATTRS + ffi::ATTR_LU_VPD)
            .cast::<*mut ffi::Vpd>();
        let vpd = *vpds.add(ffi::VPD_BLOCK_LIMITS);
        if vpd.is_null() || usize::from((*vpd).size) <= ffi::VPD_B0_MAX_COMPARE_AND_WRITE {
            return 0;
        }
        *vpd.cast::<u8>()
            .add(ffi::VPD_DATA + ffi::VPD_B0_MAX_COMPARE_AND_WRITE)
    }
}

/// Every opcode but PR IN/OUT: the reservation check, then tgtd's handler
/// ([`optable::admit`]).
unsafe extern "C" fn perform_checked(host_no: c_int, cmd: *mut ScsiCmd) -> c_int {
    boundary("perform_checked", ffi::SAM_STAT_CHECK_CONDITION, || {
        if cmd.is_null() {
            return ffi::SAM_STAT_CHECK_CONDITION;
        }
        // SAFETY: tgtd calls this with a live command of our LU on its
        // main thread.
        unsafe {
            let Some(slot) = slot_of(cmd) else {
                return ffi::SAM_STAT_CHECK_CONDITION;
            };
            let cdb = cdb_of(cmd);
            let lu = (*cmd).dev;
            // An online resize (or a port turned active on a volume
            // resized meanwhile): tgtd answers READ CAPACITY and checks
            // LBA ranges from lu->size, which only this thread writes.
            if let Some(bytes) = slot.sync_capacity((*lu).size) {
                log::info!("LU capacity {} -> {bytes} bytes", (*lu).size);
                (*lu).size = bytes;
            }
            let admission = optable::admit(
                slot,
                cdb,
                session_of(cmd),
                || nexus_of(slot, cmd),
                || max_compare_and_write(lu),
            );
            match admission {
                Admission::Refuse(refusal) => refuse(cmd, refusal),
                Admission::Reply(data) => reply(cmd, &data),
                Admission::Fail => ffi::SAM_STAT_CHECK_CONDITION,
                Admission::HandOver => hand_over(cmd),
                Admission::Run(orig) => {
                    let status = orig(host_no, cmd);
                    if status == ffi::SAM_STAT_CHECK_CONDITION
                        && ferry_scsi::cdb::is_report_supported_opcodes(cdb)
                    {
                        point_at_refused_field(slot, cmd);
                    }
                    if status == ffi::SAM_STAT_GOOD && is_standard_inquiry(cdb) {
                        announce_tpgs(cmd);
                    }
                    status
                }
            }
        }
    })
}

/// Whether `cdb` asks for standard INQUIRY data (not a VPD page).
fn is_standard_inquiry(cdb: &[u8]) -> bool {
    cdb.first() == Some(&0x12) && cdb.get(1).is_some_and(|b| b & 0x01 == 0)
}

/// Sets TPGS to implicit ALUA in the standard INQUIRY data tgtd just
/// returned (tgt itself knows no ALUA).
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread whose data-in tgtd has
/// just filled.
unsafe fn announce_tpgs(cmd: *mut ScsiCmd) {
    // SAFETY: per the contract; byte 5 is written only when tgtd
    // transferred it, within the buffer's length.
    unsafe {
        let sdb = &(*cmd).in_sdb;
        let buf = sdb.buffer as usize as *mut u8;
        if !buf.is_null() && sdb.transfer_len > 5 && sdb.length > 5 {
            *buf.add(5) |= ferry_scsi::alua::TPGS_IMPLICIT;
        }
    }
}

/// Answers `cmd` GOOD with `data`, cut to the initiator's buffer.
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
unsafe fn reply(cmd: *mut ScsiCmd, data: &[u8]) -> c_int {
    // SAFETY: per the contract; the copy stays within the buffer's
    // length.
    unsafe {
        let sdb = &mut (*cmd).in_sdb;
        let buf = sdb.buffer as usize as *mut u8;
        let len = sdb.length as usize;
        let n = if buf.is_null() {
            0
        } else {
            data.len().min(len)
        };
        if n > 0 {
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf, n);
        }
        // n <= length, a u32.
        sdb.transfer_len = n as u32;
        sdb.resid = (len - n) as i32;
    }
    ffi::SAM_STAT_GOOD
}

/// Adds the field pointer tgtd leaves out of a refused REPORT SUPPORTED
/// OPERATION CODES ([`optable::point_at_refused_field`]).
///
/// # Safety
/// `cmd` is a live command of the LU of `slot`, on tgtd's main thread,
/// whose sense tgtd has just built.
unsafe fn point_at_refused_field(slot: &LunSlot, cmd: *mut ScsiCmd) {
    // SAFETY: per the contract; the CDB is copied out before the sense
    // buffer (another part of the command) is written.
    unsafe {
        let mut cdb = [0u8; 16];
        let got = cdb_of(cmd);
        let n = got.len().min(cdb.len());
        cdb[..n].copy_from_slice(&got[..n]);
        let Ok(len) = usize::try_from((*cmd).sense_len) else {
            return;
        };
        let lu = (*cmd).dev;
        let alloc_len = (*cmd).in_sdb.length;
        let sense = &mut (*cmd).sense_buffer;
        let new_len = optable::point_at_refused_field(slot, &cdb, sense, len, alloc_len, |op| {
            !(*ops_entry(lu, op).service_actions).is_null()
        });
        if let Some(new_len) = new_len {
            // At most the 252-byte sense buffer.
            (*cmd).sense_len = new_len as c_int;
        }
    }
}

/// PERSISTENT RESERVE IN/OUT: handed to the workers with the nexus.
unsafe extern "C" fn perform_pr(_host_no: c_int, cmd: *mut ScsiCmd) -> c_int {
    boundary("perform_pr", ffi::SAM_STAT_CHECK_CONDITION, || {
        if cmd.is_null() {
            return ffi::SAM_STAT_CHECK_CONDITION;
        }
        // SAFETY: as in perform_checked.
        unsafe { hand_over(cmd) }
    })
}

/// Hands `cmd` to the workers: GOOD with the command pending, or
/// HARDWARE ERROR now.
///
/// # Safety
/// `cmd` is a live, non-null command of one of our LUs, on tgtd's main
/// thread.
unsafe fn hand_over(cmd: *mut ScsiCmd) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        match submit(cmd) {
            0 => ffi::SAM_STAT_GOOD,
            _ => refuse(cmd, Refusal::Check(Sense::internal_failure())),
        }
    }
}
