//! The functions tcmu-runner calls: `handler_init` and the callouts of the
//! registered `struct tcmur_handler`.
//!
//! Each one runs inside a panic boundary, checks its pointers, reads what
//! it needs from tcmu-runner's structures and makes one call into the
//! safe modules ([`crate::device`], [`crate::exec`]). This module and
//! [`crate::ffi`] hold all of the handler's `unsafe` code.
//!
//! Completion protocol (tcmu-runner 1.5.4, `nr_threads = 0`): an I/O
//! callout that returns `TCMU_STS_OK` has queued the command, and
//! tcmu-runner (which reports `TCMU_STS_ASYNC_HANDLED` upward) waits for
//! `tcmur_cmd_complete(dev, cmd, status)`, which calls the command's
//! `done` callback; that completes the command in the ring and wakes the
//! kernel, from any thread. Any other return value completes the command
//! at once, so errors found before queueing are simply returned.
//! `handle_cmd`, which tcmu-runner calls first for every command, cannot
//! complete asynchronously in 1.5.4 (its `done` is not set); it handles
//! only the few block commands tcmu-runner does not know, synchronously.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ferry_plugin::boundary;
use ferry_scsi::cdb::op;

use crate::exec::{self, Completion, DevState};
use crate::ffi::{self, iovec, sts, TcmuDevice, TcmulibCfgInfo, TcmurCmd, TcmurHandler};
use crate::{config, device, pool, Error};

/// Entry point tcmu-runner looks up after `dlopen`ing
/// `handler_ferry.so`: registers the `ferry` subtype.
#[no_mangle]
pub extern "C" fn handler_init() -> c_int {
    boundary("handler_init", -1, || {
        let tcmu = match ffi::tcmu() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("handler_ferry: not loaded: {e}");
                return -1;
            }
        };
        ferry_plugin::logger::install("ferry", move |level, line| tcmu.log(level, line));
        let leak = |s: &str| -> *const c_char {
            let c = CString::new(s).unwrap_or_default();
            Box::leak(c.into_boxed_c_str()).as_ptr()
        };
        let handler = Box::leak(Box::new(TcmurHandler {
            name: c"ferry: live-migratable volumes".as_ptr(),
            subtype: leak(config::SUBTYPE),
            cfg_desc: leak(config::CFG_DESC),
            opaque: std::ptr::null_mut(),
            check_config: Some(check_config),
            reconfig: Some(reconfig),
            open: Some(open),
            close: Some(close),
            // Callouts run on the device's command thread and queue to the
            // handler's own pool (see the module docs).
            nr_threads: 0,
            handle_cmd: Some(handle_cmd),
            read: Some(read),
            write: Some(write),
            flush: Some(flush),
            unmap: Some(unmap),
            writesame: Some(writesame),
            caw: Some(caw),
            report_event: None,
            lock: None,
            unlock: None,
            get_lock_tag: None,
            get_lock_state: None,
            _is_dbus_handler: false,
            update_logdir: None,
            init: None,
            destroy: None,
        }));
        // SAFETY: the handler and its strings are leaked, so they live
        // (and stay put) for the life of the process, as tcmu-runner
        // requires of a registered handler.
        let rc = unsafe { (tcmu.tcmur_register_handler)(handler) };
        if rc == 0 {
            log::info!("handler registered (subtype \"{}\")", config::SUBTYPE);
        }
        rc
    })
}

/// Gives tcmu-runner a `reason` it will `free()`.
///
/// # Safety
/// `reason` is null or points to a writable `char *`.
unsafe fn set_reason(reason: *mut *mut c_char, msg: &str) {
    if reason.is_null() {
        return;
    }
    let Ok(c) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: strdup copies the valid C string into malloc'd memory, the
    // allocator tcmu-runner frees it with; `reason` is writable per the
    // contract.
    unsafe { *reason = libc::strdup(c.as_ptr()) };
}

unsafe extern "C" fn check_config(cfgstring: *const c_char, reason: *mut *mut c_char) -> bool {
    boundary("check_config", false, || {
        let result = if cfgstring.is_null() {
            Err(Error::NoCfgString)
        } else {
            // SAFETY: tcmu-runner passes a NUL-terminated string.
            let cfg = unsafe { CStr::from_ptr(cfgstring) }.to_string_lossy();
            device::check_config(&cfg)
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                log::warn!("check_config: {e}");
                // SAFETY: `reason` comes from tcmu-runner: null or a
                // pointer to its `char *reason`.
                unsafe { set_reason(reason, &e.to_string()) };
                false
            }
        }
    })
}

/// The device's state, as `open` stored it.
///
/// # Safety
/// `dev` is a live device of this handler.
unsafe fn state(tcmu: &ffi::Tcmu, dev: *mut TcmuDevice) -> Option<Arc<DevState>> {
    // SAFETY: per the contract; the private pointer is null or the
    // `Box<Arc<DevState>>` open stored, alive until close takes it.
    unsafe {
        let p = (tcmu.tcmur_dev_get_private)(dev).cast::<Arc<DevState>>();
        p.as_ref().cloned()
    }
}

/// The device's name for messages (`uio3`).
///
/// # Safety
/// `dev` is a live device.
unsafe fn dev_name(tcmu: &ffi::Tcmu, dev: *mut TcmuDevice) -> String {
    // SAFETY: per the contract; libtcmu returns its own NUL-terminated
    // name buffer, or null.
    unsafe {
        let p = (tcmu.tcmu_dev_get_uio_name)(dev);
        if p.is_null() {
            "device".to_string()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

unsafe extern "C" fn open(dev: *mut TcmuDevice, reopen: bool) -> c_int {
    boundary("open", -libc::EIO, || {
        let Ok(tcmu) = ffi::tcmu() else {
            return -libc::EIO;
        };
        if dev.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: `dev` is the device tcmu-runner is opening; its
        // cfgstring is a NUL-terminated buffer inside it.
        let (cfg, block_size, num_lbas, name) = unsafe {
            let c = (tcmu.tcmu_dev_get_cfgstring)(dev);
            let cfg = if c.is_null() {
                String::new()
            } else {
                CStr::from_ptr(c).to_string_lossy().into_owned()
            };
            (
                cfg,
                (tcmu.tcmu_dev_get_block_size)(dev),
                (tcmu.tcmu_dev_get_num_lbas)(dev),
                dev_name(tcmu, dev),
            )
        };
        if let Err(e) = pool::pool() {
            log::error!("{name}: cannot start workers: {e}");
            return -libc::ENOMEM;
        }
        // SAFETY: `dev` is live; a state left by an open without a close
        // (tcmu-runner does not do that) is taken back once, so its volume
        // lock does not block the open below.
        let stale = unsafe {
            let p = (tcmu.tcmur_dev_get_private)(dev).cast::<Arc<DevState>>();
            if p.is_null() {
                None
            } else {
                (tcmu.tcmur_dev_set_private)(dev, std::ptr::null_mut());
                Some(*Box::from_raw(p))
            }
        };
        if let Some(old) = stale {
            log::warn!("{name}: open without close; closing {} first", old.spec);
            device::close(old);
        }
        let state = match device::open(&cfg, block_size, num_lbas) {
            Ok(s) => s,
            Err(e) => {
                log::error!("{name}: {e}");
                return -libc::EINVAL;
            }
        };
        // Unmap whole ranges per callout (ferry splits nothing), with a
        // granularity of 4 KiB physical blocks; a non-zero alignment also
        // keeps tcmu-runner's WRITE SAME (UNMAP) path from dividing by it.
        let gran = (4096 / state.block_size).max(1);
        if reopen {
            log::info!("{name}: reopened {}", state.spec);
        }
        let slot = Box::into_raw(Box::new(state));
        // SAFETY: `dev` is live; the setters write plain fields tcmu-runner
        // reads when it builds VPD pages and MODE SENSE, and the private
        // pointer is ours until close.
        unsafe {
            (tcmu.tcmu_dev_set_write_cache_enabled)(dev, true);
            (tcmu.tcmu_dev_set_opt_unmap_gran)(dev, gran, false);
            (tcmu.tcmu_dev_set_unmap_gran_align)(dev, gran);
            (tcmu.tcmur_dev_set_private)(dev, slot.cast::<c_void>());
        }
        0
    })
}

unsafe extern "C" fn close(dev: *mut TcmuDevice) {
    boundary("close", (), || {
        let Ok(tcmu) = ffi::tcmu() else { return };
        if dev.is_null() {
            return;
        }
        // SAFETY: `dev` is live; we take back the box open stored, exactly
        // once (the pointer is cleared first). tcmu-runner calls close
        // only when no command of the device is outstanding.
        let state = unsafe {
            let p = (tcmu.tcmur_dev_get_private)(dev).cast::<Arc<DevState>>();
            if p.is_null() {
                return;
            }
            (tcmu.tcmur_dev_set_private)(dev, std::ptr::null_mut());
            *Box::from_raw(p)
        };
        device::close(state);
    })
}

unsafe extern "C" fn reconfig(dev: *mut TcmuDevice, cfg: *mut TcmulibCfgInfo) -> c_int {
    boundary("reconfig", -libc::EIO, || {
        let Ok(tcmu) = ffi::tcmu() else {
            return -libc::EIO;
        };
        if dev.is_null() || cfg.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: live device and request from libtcmu's netlink handler;
        // the union member read is the one `type_` names.
        let (state, name, request) = unsafe {
            let request = match (*cfg).type_ {
                ffi::TCMULIB_CFG_DEV_SIZE => Reconfig::Size((*cfg).data.dev_size),
                ffi::TCMULIB_CFG_DEV_CFGSTR => {
                    let p = (*cfg).data.dev_cfgstring;
                    if p.is_null() {
                        return -libc::EINVAL;
                    }
                    Reconfig::CfgString(CStr::from_ptr(p).to_string_lossy().into_owned())
                }
                ffi::TCMULIB_CFG_WRITE_CACHE => Reconfig::WriteCache((*cfg).data.write_cache),
                _ => return -libc::EOPNOTSUPP,
            };
            (state(tcmu, dev), dev_name(tcmu, dev), request)
        };
        let Some(state) = state else {
            return -libc::ENODEV;
        };
        let result = match request {
            Reconfig::Size(bytes) => device::resize(&state, bytes),
            Reconfig::CfgString(cfg) => device::change_cfgstring(&state, &cfg),
            Reconfig::WriteCache(on) => {
                // SAFETY: live device; plain field setter.
                unsafe { (tcmu.tcmu_dev_set_write_cache_enabled)(dev, on) };
                log::info!(
                    "{}: write cache {}",
                    state.spec,
                    if on { "on" } else { "off" }
                );
                Ok(())
            }
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{name}: reconfig refused: {e}");
                -libc::EINVAL
            }
        }
    })
}

enum Reconfig {
    Size(u64),
    CfgString(String),
    WriteCache(bool),
}

/// A device pointer handed to a worker. tcmu-runner keeps the device
/// alive until every command it handed out has completed.
struct DevPtr(*mut TcmuDevice);
// SAFETY: see above; the worker only passes it back to tcmur_cmd_complete.
unsafe impl Send for DevPtr {}

/// A command handed to a worker: tcmu-runner leaves it (and its buffers)
/// alone until it is completed, and exactly one worker completes it.
struct CmdPtr(*mut TcmurCmd);
// SAFETY: see above; the hand-off goes through the pool's channel, which
// orders the memory accesses.
unsafe impl Send for CmdPtr {}

/// A command's data segments (copied out of its iovec array at queueing
/// time), in tcmu's ring, valid until the command completes.
struct Segments(Vec<(*mut u8, usize)>);
// SAFETY: the memory belongs to the command and follows it (see CmdPtr).
unsafe impl Send for Segments {}

impl Segments {
    /// # Safety
    /// `iov` points to `cnt` iovecs (or `cnt` is 0) whose buffers stay
    /// valid until the command completes.
    unsafe fn new(iov: *const iovec, cnt: usize) -> Segments {
        if iov.is_null() || cnt == 0 {
            return Segments(Vec::new());
        }
        let raw = (0..cnt)
            // SAFETY: per the contract; read unaligned, as nothing in
            // tcmu-runner promises iovec arrays are aligned.
            .map(|i| unsafe { std::ptr::read_unaligned(iov.add(i)) })
            .filter(|v| !v.iov_base.is_null() && v.iov_len > 0)
            .map(|v| (v.iov_base as usize, v.iov_len));
        // Merged segments are adjacent ranges of the same mapping (tcmu's
        // data area is one mapping), so each is one valid buffer.
        Segments(
            exec::coalesce(raw)
                .into_iter()
                .map(|(addr, len)| (addr as *mut u8, len))
                .collect(),
        )
    }

    /// # Safety
    /// The command owning the segments is not completed yet, and nothing
    /// else accesses its buffers meanwhile.
    unsafe fn as_mut(&mut self) -> Vec<&mut [u8]> {
        self.0
            .iter()
            // SAFETY: per the contract; distinct iovecs do not overlap.
            .map(|&(p, n)| unsafe { std::slice::from_raw_parts_mut(p, n) })
            .collect()
    }

    /// # Safety
    /// As for [`Segments::as_mut`].
    unsafe fn as_ref(&self) -> Vec<&[u8]> {
        self.0
            .iter()
            // SAFETY: per the contract.
            .map(|&(p, n)| unsafe { std::slice::from_raw_parts(p.cast_const(), n) })
            .collect()
    }
}

/// The `lib_cmd` of a command. tcmu-runner 1.5.4 places its `tcmur_cmd`
/// in the command's allocation right after the copied CDB, so the struct
/// is often not pointer-aligned: its fields are read unaligned.
///
/// # Safety
/// `cmd` points to a live `tcmur_cmd`.
unsafe fn lib_cmd(cmd: *const TcmurCmd) -> *mut ffi::TcmulibCmd {
    // SAFETY: per the contract; addr_of! makes no reference, and the read
    // tolerates any alignment.
    unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*cmd).lib_cmd)) }
}

/// Length of a CDB by its group code (SPC-4 4.2.5.1); 1 where the length
/// is not fixed (only the opcode is then read).
fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 1,
    }
}

/// What a callout needs to queue a command.
struct Queued {
    dev: DevPtr,
    cmd: CmdPtr,
    state: Arc<DevState>,
    tcmu: &'static ffi::Tcmu,
}

impl Queued {
    /// # Safety
    /// `dev` and `cmd` are null or the live device and command of a
    /// callout.
    unsafe fn new(dev: *mut TcmuDevice, cmd: *mut TcmurCmd) -> Option<Queued> {
        let tcmu = ffi::tcmu().ok()?;
        if dev.is_null() || cmd.is_null() {
            return None;
        }
        // SAFETY: per the contract.
        let state = unsafe { state(tcmu, dev) }?;
        Some(Queued {
            dev: DevPtr(dev),
            cmd: CmdPtr(cmd),
            state,
            tcmu,
        })
    }

    /// The original command's CDB (the `lib_cmd` of tcmu-runner's
    /// sub-commands is the command they serve).
    fn cdb(&self) -> Vec<u8> {
        // SAFETY: a live command: lib_cmd and its CDB (of the length its
        // group code implies, as the kernel copied it to the ring) stay
        // valid until completion.
        unsafe {
            let lib = lib_cmd(self.cmd.0);
            if lib.is_null() || (*lib).cdb.is_null() {
                return Vec::new();
            }
            let cdb = (*lib).cdb;
            std::slice::from_raw_parts(cdb, cdb_len(*cdb)).to_vec()
        }
    }

    /// Tells the LUN the WCE bit initiators see (tcmu-runner answers
    /// MODE SENSE and MODE SELECT from its device), first forced to what
    /// the LUN's cache mode requires.
    fn sync_write_cache(&self) {
        // A port that is not active has no LUN to tell: its commands are
        // refused.
        let Some(lun) = self.state.port.lun() else {
            return;
        };
        // SAFETY: live device; plain field getter and setter.
        let on = unsafe {
            let on = (self.tcmu.tcmu_dev_get_write_cache_enabled)(self.dev.0);
            match lun.cache_mode().forced_wce() {
                Some(want) if want != on => {
                    (self.tcmu.tcmu_dev_set_write_cache_enabled)(self.dev.0, want);
                    want
                }
                _ => on,
            }
        };
        lun.set_write_cache(on);
    }

    /// Queues the command as `cdb` on the LUN, with the callout's data
    /// segments (`data_in`: they are its data-in, else its data-out).
    fn run(self, what: &'static str, cdb: Option<Vec<u8>>, segs: Segments, data_in: bool) -> c_int {
        let Some(cdb) = cdb else {
            log::error!(
                "{}: a {what} callout tcmu-runner should not make",
                self.state.spec
            );
            return sts::INVALID_CDB;
        };
        self.sync_write_cache();
        let wait = self
            .state
            .port
            .lun()
            .map_or(std::time::Duration::ZERO, |l| l.throttle(&cdb));
        let mut segs = segs;
        self.submit_after(wait, move |s| {
            if data_in {
                // SAFETY: runs before the command completes; the buffers
                // are the command's data-in, touched by no one else
                // meanwhile.
                let mut bufs = unsafe { segs.as_mut() };
                s.run(&cdb, &[], &mut bufs)
            } else {
                // SAFETY: as above, for its data-out.
                let bufs = unsafe { segs.as_ref() };
                s.run(&cdb, &bufs, &mut [])
            }
        })
    }

    /// Queues `run` on a worker, which completes the command with its
    /// result. Returns the status for the callout to return.
    fn submit(self, run: impl FnOnce(&DevState) -> Completion + Send + 'static) -> c_int {
        self.submit_after(std::time::Duration::ZERO, run)
    }

    /// [`Queued::submit`], the command held back `wait` first (its LUN's
    /// QoS limits).
    fn submit_after(
        self,
        wait: std::time::Duration,
        run: impl FnOnce(&DevState) -> Completion + Send + 'static,
    ) -> c_int {
        let Ok(pool) = pool::pool() else {
            return sts::NO_RESOURCE;
        };
        let Queued {
            dev,
            cmd,
            state,
            tcmu,
        } = self;
        let job = Box::new(move || {
            // Move the pointer wrappers (not just their fields) in here.
            let (dev, cmd) = (dev, cmd);
            let c = catch_unwind(AssertUnwindSafe(|| run(&state))).unwrap_or_else(|_| {
                log::error!(
                    "{}: a command panicked; answering HARDWARE ERROR",
                    state.spec
                );
                exec::completion(Err(ferry_scsi::Sense::internal_failure()))
            });
            // SAFETY: the command is live and ours to complete, once.
            unsafe { complete(tcmu, dev.0, cmd.0, c) };
        });
        match pool::submit_after(pool, wait, job) {
            Ok(()) => sts::OK,
            // Not queued: tcmu-runner completes it with this status.
            Err(_) => sts::NO_RESOURCE,
        }
    }
}

/// Completes `cmd`: sense (if any) into its `sense_buf`, then
/// `tcmur_cmd_complete`.
///
/// # Safety
/// `dev` and `cmd` are a live device and one of its commands handed to a
/// callout that returned `TCMU_STS_OK`, not completed yet.
unsafe fn complete(tcmu: &ffi::Tcmu, dev: *mut TcmuDevice, cmd: *mut TcmurCmd, c: Completion) {
    // SAFETY: per the contract; only a command's final completion writes
    // its sense (sub-commands complete with status codes, see
    // exec::completion), and sense_buf is 96 bytes.
    unsafe {
        if let Some(sense) = c.sense {
            let lib = lib_cmd(cmd);
            if !lib.is_null() {
                let buf = &mut (*lib).sense_buf;
                buf.fill(0);
                buf[..sense.len()].copy_from_slice(&sense);
            }
        }
        (tcmu.tcmur_cmd_complete)(dev, cmd.cast::<c_void>(), c.status);
    }
}

/// Which way a `read` or `write` callout moves data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transfer {
    Read,
    Write,
}

/// A `read` or `write` callout: `len` bytes at byte `off` of the LUN, to
/// or from the command's iovec, run as the READ(16) or WRITE(16) it
/// stands for.
///
/// # Safety
/// A callout's device, command and iovec.
unsafe fn transfer(
    way: Transfer,
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    iov: *mut iovec,
    iov_cnt: usize,
    len: usize,
    off: libc::off_t,
) -> c_int {
    // SAFETY: per the contract.
    let Some(q) = (unsafe { Queued::new(dev, cmd) }) else {
        return sts::HW_ERR;
    };
    let Ok(off) = u64::try_from(off) else {
        return sts::RANGE;
    };
    let block = q.state.block_size;
    let (what, cdb) = match way {
        Transfer::Read => ("read", exec::read_cdb(off, len, block)),
        Transfer::Write => ("write", exec::write_cdb(&q.cdb(), off, len, block)),
    };
    // SAFETY: per the contract: the command's iovec, valid until
    // completion.
    let segs = unsafe { Segments::new(iov, iov_cnt) };
    q.run(what, cdb.map(Vec::from), segs, way == Transfer::Read)
}

unsafe extern "C" fn read(
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    iov: *mut iovec,
    iov_cnt: usize,
    len: usize,
    off: libc::off_t,
) -> c_int {
    // SAFETY: the callout's own arguments.
    boundary("read", sts::HW_ERR, || unsafe {
        transfer(Transfer::Read, dev, cmd, iov, iov_cnt, len, off)
    })
}

unsafe extern "C" fn write(
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    iov: *mut iovec,
    iov_cnt: usize,
    len: usize,
    off: libc::off_t,
) -> c_int {
    // SAFETY: the callout's own arguments.
    boundary("write", sts::HW_ERR, || unsafe {
        transfer(Transfer::Write, dev, cmd, iov, iov_cnt, len, off)
    })
}

unsafe extern "C" fn flush(dev: *mut TcmuDevice, cmd: *mut TcmurCmd) -> c_int {
    boundary("flush", sts::HW_ERR, || {
        // SAFETY: a callout's device and command.
        let Some(q) = (unsafe { Queued::new(dev, cmd) }) else {
            return sts::HW_ERR;
        };
        let cdb = exec::SYNCHRONIZE_CACHE.to_vec();
        q.run("flush", Some(cdb), Segments(Vec::new()), false)
    })
}

unsafe extern "C" fn unmap(dev: *mut TcmuDevice, cmd: *mut TcmurCmd, off: u64, len: u64) -> c_int {
    boundary("unmap", sts::HW_ERR, || {
        // SAFETY: a callout's device and command.
        let Some(q) = (unsafe { Queued::new(dev, cmd) }) else {
            return sts::HW_ERR;
        };
        let Some((cdb, list)) = exec::unmap_request(off, len, q.state.block_size) else {
            return q.run("unmap", None, Segments(Vec::new()), false);
        };
        q.sync_write_cache();
        q.submit(move |s| s.run(&cdb, &[&list], &mut []))
    })
}

/// WRITE SAME and COMPARE AND WRITE: the command's own CDB (its flags:
/// UNMAP, LBDATA, PBDATA) runs on the LUN with its data-out.
///
/// # Safety
/// A callout's device, command and iovec.
unsafe fn queue_cdb(
    what: &'static str,
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    iov: *mut iovec,
    iov_cnt: usize,
) -> c_int {
    // SAFETY: per the contract.
    let Some(q) = (unsafe { Queued::new(dev, cmd) }) else {
        return sts::HW_ERR;
    };
    let cdb = q.cdb();
    // SAFETY: per the contract.
    let segs = unsafe { Segments::new(iov, iov_cnt) };
    q.run(what, Some(cdb), segs, false)
}

unsafe extern "C" fn writesame(
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    _off: u64,
    _len: u64,
    iov: *mut iovec,
    iov_cnt: usize,
) -> c_int {
    // SAFETY: the callout's own arguments.
    boundary("writesame", sts::HW_ERR, || unsafe {
        queue_cdb("WRITE SAME", dev, cmd, iov, iov_cnt)
    })
}

unsafe extern "C" fn caw(
    dev: *mut TcmuDevice,
    cmd: *mut TcmurCmd,
    _off: u64,
    _len: u64,
    iov: *mut iovec,
    iov_cnt: usize,
) -> c_int {
    // SAFETY: the callout's own arguments.
    boundary("caw", sts::HW_ERR, || unsafe {
        queue_cdb("COMPARE AND WRITE", dev, cmd, iov, iov_cnt)
    })
}

/// Block commands tcmu-runner 1.5.4 answers with INVALID COMMAND
/// OPERATION CODE, which ferry_scsi executes.
fn handled_here(opcode: u8) -> bool {
    matches!(
        opcode,
        op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::PRE_FETCH_10
            | op::PRE_FETCH_16
            | op::ORWRITE_16
    )
}

unsafe extern "C" fn handle_cmd(dev: *mut TcmuDevice, cmd: *mut TcmurCmd) -> c_int {
    boundary("handle_cmd", sts::HW_ERR, || {
        if dev.is_null() || cmd.is_null() {
            return sts::NOT_HANDLED;
        }
        // SAFETY: a live command; its CDB has at least its opcode.
        let opcode = unsafe {
            let lib = lib_cmd(cmd);
            if lib.is_null() || (*lib).cdb.is_null() {
                return sts::NOT_HANDLED;
            }
            *(*lib).cdb
        };
        if !handled_here(opcode) {
            return sts::NOT_HANDLED;
        }
        // SAFETY: a callout's device and command.
        let Some(q) = (unsafe { Queued::new(dev, cmd) }) else {
            return sts::NOT_HANDLED;
        };
        let cdb = q.cdb();
        // SAFETY: the command's own data-out iovec, valid (and ours) while
        // this synchronous call runs.
        let (segs, lib) = unsafe {
            let lib = lib_cmd(cmd);
            (Segments::new((*lib).iovec, (*lib).iov_cnt), lib)
        };
        // SAFETY: as above.
        let data = unsafe { segs.as_ref() };
        q.sync_write_cache();
        let c = q.state.run(&cdb, &data, &mut []);
        if let Some(sense) = c.sense {
            // SAFETY: the live command's 96-byte sense buffer; tcmu-runner
            // completes the command with our status after we return.
            unsafe {
                let buf = &mut (*lib).sense_buf;
                buf.fill(0);
                buf[..sense.len()].copy_from_slice(&sense);
            }
        }
        c.status
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_lengths_by_group() {
        assert_eq!(cdb_len(0x08), 6);
        assert_eq!(cdb_len(0x2a), 10);
        assert_eq!(cdb_len(0x42), 10);
        assert_eq!(cdb_len(0x8a), 16);
        assert_eq!(cdb_len(0xaa), 12);
        assert_eq!(cdb_len(0x7f), 1);
        assert_eq!(cdb_len(0xc0), 1);
    }

    #[test]
    fn only_unknown_block_commands_are_handled_here() {
        assert!(handled_here(op::VERIFY_16));
        assert!(handled_here(op::PRE_FETCH_10));
        assert!(handled_here(op::ORWRITE_16));
        assert!(!handled_here(op::READ_10));
        assert!(!handled_here(op::WRITE_SAME_16));
        assert!(!handled_here(0x12));
    }
}
