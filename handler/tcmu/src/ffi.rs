//! Declarations of the tcmu-runner 1.5.4 (x86_64) handler ABI, written
//! here from the layout of tcmu-runner's headers (`tcmu-runner.h`,
//! `libtcmu.h`, `libtcmu_common.h`), plus runtime binding to the functions
//! tcmu-runner and libtcmu export.
//!
//! tcmu-runner ships no development headers, so the structs are declared
//! by hand and only as far as the handler uses them; the sizes and offsets
//! are pinned by the tests below (numbers measured with
//! `layout/layout.c` compiled against the 1.5.4 source), and
//! `tests/layout.rs` re-measures them against the headers when a source
//! tree is present (`TCMU_SRC`).
//!
//! The functions are looked up with `dlsym(RTLD_DEFAULT)`
//! ([`ferry_plugin::Resolver`]) when the handler first needs them, not
//! linked: tcmu-runner `dlopen`s handlers
//! with `RTLD_LOCAL`, but the executable (which exports the `tcmur_*`
//! functions through its dynamic list) and libtcmu.so.2 are in the global
//! scope. A missing symbol is then a clear error instead of a failed
//! `dlopen`, and the rlib links into ordinary test binaries.
#![allow(non_camel_case_types)]
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub use libc::iovec;

/// `struct tcmu_device` (libtcmu_priv.h): opaque to handlers.
#[repr(C)]
pub struct TcmuDevice {
    _private: [u8; 0],
}

/// `SENSE_BUFFERSIZE` (libtcmu_common.h).
pub const SENSE_BUFFERSIZE: usize = 96;

/// `struct tcmulib_cmd` (libtcmu_common.h), 136 bytes: one SCSI command
/// from the ring. `iovec` points into the ring's data area, shared with
/// the kernel, valid until the command is completed.
#[repr(C)]
pub struct TcmulibCmd {
    pub cmd_id: u16,
    pub cdb: *mut u8,
    pub iovec: *mut iovec,
    pub iov_cnt: usize,
    pub sense_buf: [u8; SENSE_BUFFERSIZE],
    pub hm_private: *mut c_void,
}

/// `struct list_node` (ccan/list).
#[repr(C)]
pub struct ListNode {
    pub next: *mut ListNode,
    pub prev: *mut ListNode,
}

/// Completion callback of a [`TcmurCmd`].
pub type DoneFn = unsafe extern "C" fn(*mut TcmuDevice, *mut TcmurCmd, c_int);

/// `struct tcmur_cmd` (tcmu-runner.h), 96 bytes: tcmu-runner's wrapper of
/// a command, passed to every handler callout. Sub-commands tcmu-runner
/// makes itself (split UNMAPs, WRITE VERIFY's read-back) are separate
/// `tcmur_cmd`s sharing the original `lib_cmd`. The `tcmur_cmd` of a ring
/// command sits right after its copied CDB in one allocation, so it is
/// often misaligned: read its fields with `read_unaligned`.
#[repr(C)]
pub struct TcmurCmd {
    pub lib_cmd: *mut TcmulibCmd,
    pub iovec: *mut iovec,
    pub iov_cnt: usize,
    pub iov_base_copy: *mut c_void,
    pub cmd_state: *mut c_void,
    pub requested: usize,
    pub cmds_list_entry: ListNode,
    pub start_time: libc::timespec,
    pub timed_out: bool,
    pub done: Option<DoneFn>,
}

/// `enum tcmulib_cfg_type` (libtcmu.h).
pub const TCMULIB_CFG_DEV_CFGSTR: c_int = 0;
pub const TCMULIB_CFG_DEV_SIZE: c_int = 1;
pub const TCMULIB_CFG_WRITE_CACHE: c_int = 2;

/// The union in `struct tcmulib_cfg_info`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CfgData {
    pub dev_size: u64,
    pub dev_cfgstring: *mut c_char,
    pub write_cache: bool,
}

/// `struct tcmulib_cfg_info` (libtcmu.h), 16 bytes: a reconfiguration
/// request (new size, new cfgstring or write cache setting).
#[repr(C)]
pub struct TcmulibCfgInfo {
    pub type_: c_int,
    pub data: CfgData,
}

/// TCMU status codes (libtcmu_common.h): what callouts return and
/// completions carry. libtcmu turns each into SCSI status and sense.
pub mod sts {
    use std::ffi::c_int;
    pub const ASYNC_HANDLED: c_int = -2;
    pub const NOT_HANDLED: c_int = -1;
    pub const OK: c_int = 0;
    pub const NO_RESOURCE: c_int = 1;
    /// The handler filled `sense_buf` itself.
    pub const PASSTHROUGH_ERR: c_int = 2;
    pub const WR_ERR: c_int = 4;
    pub const RD_ERR: c_int = 5;
    pub const MISCOMPARE: c_int = 6;
    pub const INVALID_CMD: c_int = 7;
    pub const INVALID_CDB: c_int = 8;
    pub const INVALID_PARAM_LIST: c_int = 9;
    pub const INVALID_PARAM_LIST_LEN: c_int = 10;
    pub const HW_ERR: c_int = 13;
    pub const RANGE: c_int = 14;
}

pub type CheckConfigFn = unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> bool;
pub type ReconfigFn = unsafe extern "C" fn(*mut TcmuDevice, *mut TcmulibCfgInfo) -> c_int;
pub type OpenFn = unsafe extern "C" fn(*mut TcmuDevice, bool) -> c_int;
pub type CloseFn = unsafe extern "C" fn(*mut TcmuDevice);
pub type HandleCmdFn = unsafe extern "C" fn(*mut TcmuDevice, *mut TcmurCmd) -> c_int;
pub type RwFn = unsafe extern "C" fn(
    *mut TcmuDevice,
    *mut TcmurCmd,
    *mut iovec,
    usize,
    usize,
    libc::off_t,
) -> c_int;
pub type FlushFn = unsafe extern "C" fn(*mut TcmuDevice, *mut TcmurCmd) -> c_int;
pub type UnmapFn = unsafe extern "C" fn(*mut TcmuDevice, *mut TcmurCmd, u64, u64) -> c_int;
/// WRITE SAME and COMPARE AND WRITE: (off, len, iovec, iov_cnt).
pub type RangeIovFn =
    unsafe extern "C" fn(*mut TcmuDevice, *mut TcmurCmd, u64, u64, *mut iovec, usize) -> c_int;

/// `struct tcmur_handler` (tcmu-runner.h), 200 bytes. tcmu-runner keeps
/// the pointer it is registered with for the life of the process.
#[repr(C)]
pub struct TcmurHandler {
    pub name: *const c_char,
    pub subtype: *const c_char,
    pub cfg_desc: *const c_char,
    pub opaque: *mut c_void,
    pub check_config: Option<CheckConfigFn>,
    pub reconfig: Option<ReconfigFn>,
    pub open: Option<OpenFn>,
    pub close: Option<CloseFn>,
    /// 0: callouts run on the device's command thread (or the thread that
    /// completes a previous step) and may complete asynchronously; more:
    /// tcmu-runner runs them synchronously on that many threads of its own.
    pub nr_threads: c_int,
    pub handle_cmd: Option<HandleCmdFn>,
    pub read: Option<RwFn>,
    pub write: Option<RwFn>,
    pub flush: Option<FlushFn>,
    pub unmap: Option<UnmapFn>,
    pub writesame: Option<RangeIovFn>,
    pub caw: Option<RangeIovFn>,
    pub report_event: Option<unsafe extern "C" fn(*mut TcmuDevice) -> c_int>,
    pub lock: Option<unsafe extern "C" fn(*mut TcmuDevice, u16) -> c_int>,
    pub unlock: Option<unsafe extern "C" fn(*mut TcmuDevice) -> c_int>,
    pub get_lock_tag: Option<unsafe extern "C" fn(*mut TcmuDevice, *mut u16) -> c_int>,
    pub get_lock_state: Option<unsafe extern "C" fn(*mut TcmuDevice) -> c_int>,
    /// Internal to tcmu-runner.
    pub _is_dbus_handler: bool,
    pub update_logdir: Option<unsafe extern "C" fn() -> bool>,
    pub init: Option<unsafe extern "C" fn() -> c_int>,
    pub destroy: Option<unsafe extern "C" fn()>,
}

type LogFn = unsafe extern "C" fn(*mut TcmuDevice, *const c_char, c_int, *const c_char, ...);
type RegisterFn = unsafe extern "C" fn(*mut TcmurHandler) -> c_int;
type CompleteFn = unsafe extern "C" fn(*mut TcmuDevice, *mut c_void, c_int);
type SetPtrFn = unsafe extern "C" fn(*mut TcmuDevice, *mut c_void);
type GetPtrFn = unsafe extern "C" fn(*mut TcmuDevice) -> *mut c_void;
type GetStrFn = unsafe extern "C" fn(*mut TcmuDevice) -> *mut c_char;
type GetConstStrFn = unsafe extern "C" fn(*mut TcmuDevice) -> *const c_char;
type GetU32Fn = unsafe extern "C" fn(*mut TcmuDevice) -> u32;
type GetU64Fn = unsafe extern "C" fn(*mut TcmuDevice) -> u64;
type SetBoolFn = unsafe extern "C" fn(*mut TcmuDevice, bool);
type GetBoolFn = unsafe extern "C" fn(*mut TcmuDevice) -> bool;
type SetU32Fn = unsafe extern "C" fn(*mut TcmuDevice, u32);
type SetU32BoolFn = unsafe extern "C" fn(*mut TcmuDevice, u32, bool);

/// The tcmu-runner and libtcmu functions the handler calls, resolved at
/// load time. Thread rules: `tcmur_cmd_complete` may be called from any
/// thread (it takes the device's ring lock); the `tcmu_dev_get_*`/`set_*`
/// accessors read and write plain fields and are called where tcmu-runner
/// calls the handler (open, reconfig, callouts).
pub struct Tcmu {
    pub tcmur_register_handler: RegisterFn,
    pub tcmur_cmd_complete: CompleteFn,
    /// The handler's private pointer. Not `tcmu_dev_set_private`: in
    /// tcmu-runner that slot holds the runner's own `struct tcmur_device`.
    pub tcmur_dev_set_private: SetPtrFn,
    pub tcmur_dev_get_private: GetPtrFn,
    pub tcmu_dev_get_cfgstring: GetStrFn,
    pub tcmu_dev_get_uio_name: GetConstStrFn,
    pub tcmu_dev_get_block_size: GetU32Fn,
    pub tcmu_dev_get_num_lbas: GetU64Fn,
    pub tcmu_dev_set_write_cache_enabled: SetBoolFn,
    pub tcmu_dev_get_write_cache_enabled: GetBoolFn,
    pub tcmu_dev_set_opt_unmap_gran: SetU32BoolFn,
    pub tcmu_dev_set_unmap_gran_align: SetU32Fn,
    log_err: LogFn,
    log_warn: LogFn,
    log_info: LogFn,
    log_dbg: LogFn,
}

/// What errors call the process when a symbol is missing.
const HOST: &str = "this process (not tcmu-runner 1.5?)";

fn resolve() -> Result<Tcmu, ferry_plugin::Error> {
    let r = ferry_plugin::Resolver::new(HOST);
    // SAFETY: each field's type is the C signature of the tcmu-runner or
    // libtcmu function named beside it (declared from tcmu-runner 1.5.4's
    // headers above).
    unsafe {
        Ok(Tcmu {
            tcmur_register_handler: r.function(c"tcmur_register_handler")?,
            tcmur_cmd_complete: r.function(c"tcmur_cmd_complete")?,
            tcmur_dev_set_private: r.function(c"tcmur_dev_set_private")?,
            tcmur_dev_get_private: r.function(c"tcmur_dev_get_private")?,
            tcmu_dev_get_cfgstring: r.function(c"tcmu_dev_get_cfgstring")?,
            tcmu_dev_get_uio_name: r.function(c"tcmu_dev_get_uio_name")?,
            tcmu_dev_get_block_size: r.function(c"tcmu_dev_get_block_size")?,
            tcmu_dev_get_num_lbas: r.function(c"tcmu_dev_get_num_lbas")?,
            tcmu_dev_set_write_cache_enabled: r.function(c"tcmu_dev_set_write_cache_enabled")?,
            tcmu_dev_get_write_cache_enabled: r.function(c"tcmu_dev_get_write_cache_enabled")?,
            tcmu_dev_set_opt_unmap_gran: r.function(c"tcmu_dev_set_opt_unmap_gran")?,
            tcmu_dev_set_unmap_gran_align: r.function(c"tcmu_dev_set_unmap_gran_align")?,
            log_err: r.function(c"tcmu_err_message")?,
            log_warn: r.function(c"tcmu_warn_message")?,
            log_info: r.function(c"tcmu_info_message")?,
            log_dbg: r.function(c"tcmu_dbg_message")?,
        })
    }
}

static TCMU: OnceLock<Result<Tcmu, ferry_plugin::Error>> = OnceLock::new();

/// tcmu-runner's functions, resolved on first use.
pub fn tcmu() -> Result<&'static Tcmu, &'static ferry_plugin::Error> {
    TCMU.get_or_init(resolve).as_ref()
}

impl Tcmu {
    /// Writes one line to tcmu-runner's log (its log file and syslog) at
    /// `level`; safe from any thread.
    pub fn log(&self, level: log::Level, line: &CStr) {
        let f = match level {
            log::Level::Error => self.log_err,
            log::Level::Warn => self.log_warn,
            log::Level::Info => self.log_info,
            log::Level::Debug | log::Level::Trace => self.log_dbg,
        };
        // SAFETY: tcmu's printf-like logger with a constant "%s\n" format
        // and one valid C string; a null device means "no device" and the
        // function name is a C string literal. It locks internally.
        unsafe {
            f(
                std::ptr::null_mut(),
                c"handler_ferry".as_ptr(),
                0,
                c"%s\n".as_ptr(),
                line.as_ptr(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    // Numbers measured with layout/layout.c against tcmu-runner 1.5.4's
    // headers (Debian 12's tcmu 1.5.4-4.1 source), gcc 12, x86_64.

    #[test]
    fn handler_layout_matches_tcmu_runner() {
        assert_eq!(size_of::<TcmurHandler>(), 200);
        assert_eq!(offset_of!(TcmurHandler, subtype), 8);
        assert_eq!(offset_of!(TcmurHandler, cfg_desc), 16);
        assert_eq!(offset_of!(TcmurHandler, opaque), 24);
        assert_eq!(offset_of!(TcmurHandler, check_config), 32);
        assert_eq!(offset_of!(TcmurHandler, reconfig), 40);
        assert_eq!(offset_of!(TcmurHandler, open), 48);
        assert_eq!(offset_of!(TcmurHandler, close), 56);
        assert_eq!(offset_of!(TcmurHandler, nr_threads), 64);
        assert_eq!(offset_of!(TcmurHandler, handle_cmd), 72);
        assert_eq!(offset_of!(TcmurHandler, read), 80);
        assert_eq!(offset_of!(TcmurHandler, write), 88);
        assert_eq!(offset_of!(TcmurHandler, flush), 96);
        assert_eq!(offset_of!(TcmurHandler, unmap), 104);
        assert_eq!(offset_of!(TcmurHandler, writesame), 112);
        assert_eq!(offset_of!(TcmurHandler, caw), 120);
        assert_eq!(offset_of!(TcmurHandler, report_event), 128);
        assert_eq!(offset_of!(TcmurHandler, lock), 136);
        assert_eq!(offset_of!(TcmurHandler, unlock), 144);
        assert_eq!(offset_of!(TcmurHandler, get_lock_tag), 152);
        assert_eq!(offset_of!(TcmurHandler, get_lock_state), 160);
        assert_eq!(offset_of!(TcmurHandler, _is_dbus_handler), 168);
        assert_eq!(offset_of!(TcmurHandler, update_logdir), 176);
        assert_eq!(offset_of!(TcmurHandler, init), 184);
        assert_eq!(offset_of!(TcmurHandler, destroy), 192);
    }

    #[test]
    fn commands_layout_matches_tcmu_runner() {
        assert_eq!(size_of::<TcmurCmd>(), 96);
        assert_eq!(offset_of!(TcmurCmd, iovec), 8);
        assert_eq!(offset_of!(TcmurCmd, iov_cnt), 16);
        assert_eq!(offset_of!(TcmurCmd, iov_base_copy), 24);
        assert_eq!(offset_of!(TcmurCmd, cmd_state), 32);
        assert_eq!(offset_of!(TcmurCmd, requested), 40);
        assert_eq!(offset_of!(TcmurCmd, cmds_list_entry), 48);
        assert_eq!(offset_of!(TcmurCmd, start_time), 64);
        assert_eq!(offset_of!(TcmurCmd, timed_out), 80);
        assert_eq!(offset_of!(TcmurCmd, done), 88);

        assert_eq!(size_of::<TcmulibCmd>(), 136);
        assert_eq!(offset_of!(TcmulibCmd, cdb), 8);
        assert_eq!(offset_of!(TcmulibCmd, iovec), 16);
        assert_eq!(offset_of!(TcmulibCmd, iov_cnt), 24);
        assert_eq!(offset_of!(TcmulibCmd, sense_buf), 32);
        assert_eq!(offset_of!(TcmulibCmd, hm_private), 128);
    }

    #[test]
    fn cfg_info_layout_matches_libtcmu() {
        assert_eq!(size_of::<TcmulibCfgInfo>(), 16);
        assert_eq!(offset_of!(TcmulibCfgInfo, data), 8);
    }
}
