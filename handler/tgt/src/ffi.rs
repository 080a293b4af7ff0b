//! Declarations of the tgtd (1.0.85, x86_64) ABI a backing store uses,
//! written here from the layout of tgt's headers, plus runtime binding to
//! the functions tgtd exports.
//!
//! The structs are declared only as far as the plugin touches them; the
//! sizes and offsets are pinned by the tests below (numbers measured with a
//! C program compiled against tgt's own headers with tgt's build flags),
//! and `tests/layout.rs` re-measures them against the headers when tgt's
//! source is present.
//!
//! tgtd's functions are looked up with `dlsym` ([`ferry_plugin::Resolver`])
//! when tgtd loads the plugin, not linked: the plugin then loads (and
//! reports a clear error) even if a symbol is missing, and the rlib links
//! into ordinary test binaries.
#![allow(non_camel_case_types)]
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr};
use std::sync::OnceLock;

/// `struct list_head` (list.h).
#[repr(C)]
pub struct ListHead {
    pub next: *mut ListHead,
    pub prev: *mut ListHead,
}

/// `struct scsi_data_buffer` (tgtd.h).
#[repr(C)]
pub struct ScsiDataBuffer {
    /// A pointer stored as `uint64_t`.
    pub buffer: u64,
    pub length: u32,
    pub transfer_len: u32,
    pub resid: i32,
}

/// `struct scsi_cmd` (tgtd.h), 480 bytes.
#[repr(C)]
pub struct ScsiCmd {
    pub c_target: *mut c_void,
    pub c_hlist: ListHead,
    pub qlist: ListHead,
    pub dev_id: u64,
    pub dev: *mut ScsiLu,
    pub state: c_ulong,
    pub data_dir: c_int,
    pub in_sdb: ScsiDataBuffer,
    pub out_sdb: ScsiDataBuffer,
    pub cmd_itn_id: u64,
    /// Byte offset set by sbc for READ/WRITE/WRITE SAME/VERIFY.
    pub offset: u64,
    /// Transfer length in bytes, set by sbc (not for VERIFY or SYNC CACHE).
    pub tl: u32,
    pub scb: *mut u8,
    pub scb_len: c_int,
    pub lun: [u8; 8],
    pub attribute: c_int,
    pub tag: u64,
    pub result: c_int,
    pub mreq: *mut c_void,
    pub sense_buffer: [u8; 252],
    pub sense_len: c_int,
    pub bs_list: ListHead,
    pub it_nexus: *mut c_void,
    pub itn_lu_info: *mut c_void,
}

/// `scsi_cmd.state` bit: completion will come through `target_cmd_io_done`.
pub const TGT_CMD_ASYNC: c_ulong = 1 << 2;

/// The leading fields of `struct scsi_lu` (tgtd.h); the rest is reached
/// through the offsets below. The whole struct is [`SCSI_LU_SIZE`] bytes.
#[repr(C)]
pub struct ScsiLu {
    pub fd: c_int,
    pub addr: u64,
    pub size: u64,
    pub lun: u64,
    pub path: *mut c_char,
    pub bsoflags: c_int,
    pub blk_shift: c_uint,
}

/// `sizeof(struct scsi_lu)`: the plugin's private data starts here.
pub const SCSI_LU_SIZE: usize = 7608;
/// Offset of `struct lu_phy_attr attrs` in `struct scsi_lu`.
pub const LU_ATTRS: usize = 6376;
/// Offsets within `struct lu_phy_attr`.
pub const ATTR_SCSI_SN: usize = 37;
pub const ATTR_THINPROVISIONING: usize = 141;
pub const ATTR_LU_VPD: usize = 152;
/// `lu_vpd[]` slots of the block limits (0xb0) and logical block
/// provisioning (0xb2) VPD pages: the index is `page & 0x7f`.
pub const VPD_BLOCK_LIMITS: usize = 0xb0 & 0x7f;
pub const VPD_LB_PROVISIONING: usize = 0xb2 & 0x7f;
/// The device identification page's slot.
pub const VPD_DEVICE_ID: usize = 0x83 & 0x7f;

/// `struct vpd` (tgtd.h): the update hook, and the page's bytes after
/// its 4-byte header in `data[]` at [`VPD_DATA`].
#[repr(C)]
pub struct Vpd {
    pub size: u16,
    pub vpd_update: Option<unsafe extern "C" fn(*mut ScsiLu, *mut c_void)>,
}

/// Offset of `data[]` in `struct vpd`: right after the hook.
pub const VPD_DATA: usize = 16;
/// Index in the block limits page's `data[]` of MAXIMUM COMPARE AND
/// WRITE LENGTH (page byte 5, SBC-3 6.5.3; tgtd's `update_vpd_b0` sets it).
pub const VPD_B0_MAX_COMPARE_AND_WRITE: usize = 5 - 4;

/// `struct mode_pg` (tgtd.h) header; `mode_data` follows at offset 20.
#[repr(C)]
pub struct ModePg {
    pub siblings: ListHead,
    pub pcode: u8,
    pub subpcode: u8,
    pub pcode_size: i16,
}

/// Offset of `mode_data[]` in `struct mode_pg`.
pub const MODE_PG_DATA: usize = 20;

/// tgtadm_err values (tgtadm_error.h).
pub const TGTADM_SUCCESS: c_int = 0;
pub const TGTADM_NOMEM: c_int = 2;
pub const TGTADM_INVALID_REQUEST: c_int = 17;

/// SAM status codes (scsi.h).
pub const SAM_STAT_GOOD: c_int = 0x00;
pub const SAM_STAT_CHECK_CONDITION: c_int = 0x02;
pub const SAM_STAT_RESERVATION_CONFLICT: c_int = 0x18;

/// `device_type_operations.cmd_perform`: runs one command, returns a SAM
/// status (or GOOD with `TGT_CMD_ASYNC` set, completing later).
pub type CmdPerform = unsafe extern "C" fn(c_int, *mut ScsiCmd) -> c_int;

/// Offset in `struct scsi_lu` of `dev_type_template.ops[]`, the LU's own
/// copy of its device type's opcode table (`struct device_type_operations
/// ops[256]`): tgtd copies the template into each LU, so a backing store
/// may change its LU's entries without touching other LUs.
pub const LU_OPS: usize = 176;
/// `sizeof(struct device_type_operations)`; `cmd_perform` is its first
/// field.
pub const DEVICE_TYPE_OPERATIONS_SIZE: usize = 24;

/// `struct service_action` (tgtd.h): one entry of an opcode's service
/// action list, which ends with a null `cmd_perform`.
#[repr(C)]
pub struct ServiceAction {
    pub service_action: u32,
    pub cmd_perform: Option<CmdPerform>,
}

/// Offset of `service_actions` in `struct device_type_operations`.
pub const OPS_SERVICE_ACTIONS: usize = 8;

/// The leading fields of `struct it_nexus` (target.h): the nexus id and
/// its creation time, unique together even when tgtd reuses an id.
#[repr(C)]
pub struct ItNexus {
    pub itn_id: u64,
    pub ctime: std::ffi::c_long,
}

/// The leading fields of `struct target` (target.h).
#[repr(C)]
pub struct Target {
    pub name: *mut c_char,
    pub tid: c_int,
}

pub type BsOpen = unsafe extern "C" fn(*mut ScsiLu, *mut c_char, *mut c_int, *mut u64) -> c_int;
pub type BsClose = unsafe extern "C" fn(*mut ScsiLu);
pub type BsInit = unsafe extern "C" fn(*mut ScsiLu, *mut c_char) -> c_int;
pub type BsExit = unsafe extern "C" fn(*mut ScsiLu);
pub type BsCmdSubmit = unsafe extern "C" fn(*mut ScsiCmd) -> c_int;

/// `struct backingstore_template` (bs.h / tgtd.h), 112 bytes. tgtd links
/// its `backingstore_siblings` into its list, so an instance must live at
/// a fixed address for the life of the process.
#[repr(C)]
pub struct BackingstoreTemplate {
    pub bs_name: *const c_char,
    pub bs_datasize: c_int,
    pub bs_open: Option<BsOpen>,
    pub bs_close: Option<BsClose>,
    pub bs_init: Option<BsInit>,
    pub bs_exit: Option<BsExit>,
    pub bs_cmd_submit: Option<BsCmdSubmit>,
    pub bs_oflags_supported: c_int,
    /// Opcode bitmap; all clear means "every opcode" (tgt's compat mode).
    pub bs_supported_ops: [c_ulong; 4],
    pub backingstore_siblings: ListHead,
}

pub type EventHandler = unsafe extern "C" fn(c_int, c_int, *mut c_void);

/// The tgtd functions the plugin calls, resolved at load time.
pub struct Tgtd {
    pub register_backingstore_template: unsafe extern "C" fn(*mut BackingstoreTemplate) -> c_int,
    pub target_cmd_io_done: unsafe extern "C" fn(*mut ScsiCmd, c_int),
    pub sense_data_build: unsafe extern "C" fn(*mut ScsiCmd, u8, u16),
    pub sense_data_build_with_info: unsafe extern "C" fn(*mut ScsiCmd, u8, u16, u64),
    pub find_mode_page: unsafe extern "C" fn(*mut ScsiLu, u8, u8) -> *mut ModePg,
    pub tgt_event_add: unsafe extern "C" fn(c_int, c_int, EventHandler, *mut c_void) -> c_int,
    pub tgt_event_del: unsafe extern "C" fn(c_int),
    /// Sets the LU's logical-blocks-per-physical-block exponent from a
    /// physical block size in bytes (READ CAPACITY 16).
    pub update_lbppbe: unsafe extern "C" fn(*mut ScsiLu, c_int),
    /// iSCSI's TransportID of a nexus (iscsid.c): `0x45`, length, the
    /// initiator name, NUL, `,i,0x` and the six raw ISID bytes. Returns
    /// the length needed, or 0 if the session is gone.
    pub iscsi_transportid: unsafe extern "C" fn(c_int, u64, *mut c_char, c_int) -> c_int,
    /// The handler tgtd puts in the opcode table for opcodes it does not
    /// support; REPORT SUPPORTED OPERATION CODES counts the others.
    pub spc_illegal_op: CmdPerform,
    pub log_error: unsafe extern "C" fn(*const c_char, ...),
    pub log_warning: unsafe extern "C" fn(*const c_char, ...),
    pub log_debug: unsafe extern "C" fn(*const c_char, ...),
    nr_iothreads: *const c_int,
    pub is_debug: *const c_int,
}

// SAFETY: the fields are addresses of tgtd's functions and globals, which
// live for the whole process; sharing the addresses between threads is
// fine (what may be called from which thread is documented at each use).
unsafe impl Send for Tgtd {}
// SAFETY: as above; the struct is immutable after resolution.
unsafe impl Sync for Tgtd {}

fn resolve() -> Result<Tgtd, ferry_plugin::Error> {
    let r = ferry_plugin::Resolver::new("tgtd");
    let nr_iothreads = r.global::<c_int>(c"nr_iothreads")?.as_ptr().cast_const();
    let is_debug = r.global::<c_int>(c"is_debug")?.as_ptr().cast_const();
    // SAFETY: each field's type is the C signature of the tgtd function
    // named beside it (declared from tgt's headers above).
    unsafe {
        Ok(Tgtd {
            register_backingstore_template: r.function(c"register_backingstore_template")?,
            target_cmd_io_done: r.function(c"target_cmd_io_done")?,
            sense_data_build: r.function(c"sense_data_build")?,
            sense_data_build_with_info: r.function(c"sense_data_build_with_info")?,
            find_mode_page: r.function(c"find_mode_page")?,
            tgt_event_add: r.function(c"tgt_event_add")?,
            tgt_event_del: r.function(c"tgt_event_del")?,
            update_lbppbe: r.function(c"update_lbppbe")?,
            iscsi_transportid: r.function(c"iscsi_transportid")?,
            spc_illegal_op: r.function(c"spc_illegal_op")?,
            log_error: r.function(c"log_error")?,
            log_warning: r.function(c"log_warning")?,
            log_debug: r.function(c"log_debug")?,
            nr_iothreads,
            is_debug,
        })
    }
}

static TGTD: OnceLock<Result<Tgtd, ferry_plugin::Error>> = OnceLock::new();

/// tgtd's functions, resolved on first use.
pub fn tgtd() -> Result<&'static Tgtd, &'static ferry_plugin::Error> {
    TGTD.get_or_init(resolve).as_ref()
}

impl Tgtd {
    /// tgtd's `nr_iothreads` (its `--nr_iothreads` option, 16 unless
    /// given).
    pub fn nr_iothreads(&self) -> c_int {
        // SAFETY: the address of tgtd's global `int nr_iothreads`
        // (resolved by name), set while tgtd parses its options, before
        // it loads backing stores.
        unsafe { *self.nr_iothreads }
    }

    /// Writes one line to tgtd's log: errors as errors, everything else
    /// as warnings (tgtd's debug level shows only with `-d`). Safe from
    /// any thread.
    pub fn log(&self, level: log::Level, line: &CStr) {
        let f = match level {
            log::Level::Error => self.log_error,
            _ => self.log_warning,
        };
        // SAFETY: tgtd's printf-like logger with a constant "%s\n" format
        // and one valid C string argument; safe from any thread.
        unsafe { f(c"%s\n".as_ptr(), line.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    // Numbers measured on tgt 1.0.85 headers, gcc 12, x86_64, with tgt's
    // build flags (-D_GNU_SOURCE -DUSE_SIGNALFD -DUSE_TIMERFD -DUSE_EVENTFD).

    #[test]
    fn scsi_cmd_layout_matches_tgt() {
        assert_eq!(size_of::<ScsiCmd>(), 480);
        assert_eq!(offset_of!(ScsiCmd, dev), 48);
        assert_eq!(offset_of!(ScsiCmd, state), 56);
        assert_eq!(offset_of!(ScsiCmd, data_dir), 64);
        assert_eq!(offset_of!(ScsiCmd, in_sdb), 72);
        assert_eq!(offset_of!(ScsiCmd, out_sdb), 96);
        assert_eq!(offset_of!(ScsiCmd, cmd_itn_id), 120);
        assert_eq!(offset_of!(ScsiCmd, offset), 128);
        assert_eq!(offset_of!(ScsiCmd, tl), 136);
        assert_eq!(offset_of!(ScsiCmd, scb), 144);
        assert_eq!(offset_of!(ScsiCmd, scb_len), 152);
        assert_eq!(offset_of!(ScsiCmd, tag), 168);
        assert_eq!(offset_of!(ScsiCmd, result), 176);
        assert_eq!(offset_of!(ScsiCmd, sense_buffer), 192);
        assert_eq!(offset_of!(ScsiCmd, sense_len), 444);
        assert_eq!(offset_of!(ScsiCmd, bs_list), 448);
    }

    #[test]
    fn ops_table_and_target_layout_matches_tgt() {
        // offsetof(struct scsi_lu, dev_type_template) 120 +
        // offsetof(struct device_type_template, ops) 56.
        assert_eq!(LU_OPS, 176);
        assert_eq!(DEVICE_TYPE_OPERATIONS_SIZE, 24);
        const { assert!(LU_OPS + 256 * DEVICE_TYPE_OPERATIONS_SIZE < LU_ATTRS) };
        assert_eq!(offset_of!(Target, tid), 8);
        assert_eq!(offset_of!(ItNexus, ctime), 8);
        assert_eq!(size_of::<ServiceAction>(), 16);
        assert_eq!(offset_of!(ServiceAction, cmd_perform), 8);
        assert_eq!(offset_of!(ScsiCmd, c_target), 0);
    }

    #[test]
    fn data_buffer_layout_matches_tgt() {
        assert_eq!(size_of::<ScsiDataBuffer>(), 24);
        assert_eq!(offset_of!(ScsiDataBuffer, length), 8);
        assert_eq!(offset_of!(ScsiDataBuffer, transfer_len), 12);
        assert_eq!(offset_of!(ScsiDataBuffer, resid), 16);
    }

    #[test]
    fn scsi_lu_head_layout_matches_tgt() {
        assert_eq!(offset_of!(ScsiLu, fd), 0);
        assert_eq!(offset_of!(ScsiLu, size), 16);
        assert_eq!(offset_of!(ScsiLu, path), 32);
        assert_eq!(offset_of!(ScsiLu, bsoflags), 40);
        assert_eq!(offset_of!(ScsiLu, blk_shift), 44);
    }

    #[test]
    fn template_layout_matches_tgt() {
        assert_eq!(size_of::<BackingstoreTemplate>(), 112);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_datasize), 8);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_open), 16);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_close), 24);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_init), 32);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_exit), 40);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_cmd_submit), 48);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_oflags_supported), 56);
        assert_eq!(offset_of!(BackingstoreTemplate, bs_supported_ops), 64);
        assert_eq!(offset_of!(BackingstoreTemplate, backingstore_siblings), 96);
    }

    #[test]
    fn vpd_and_mode_page_layout_matches_tgt() {
        assert_eq!(offset_of!(Vpd, vpd_update), 8);
        // data[] follows the hook: the struct's size without the array.
        assert_eq!(size_of::<Vpd>(), VPD_DATA);
        // mode_data[] follows pcode_size directly (offset 20); the Rust
        // struct's size is padded to 24 like C's, which has the array.
        assert_eq!(offset_of!(ModePg, pcode), 16);
        assert_eq!(offset_of!(ModePg, pcode_size) + 2, MODE_PG_DATA);
    }
}
