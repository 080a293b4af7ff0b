//! Persistent reservations through tgtd, answered by ferry instead of
//! tgtd's core.
//!
//! tgtd answers PERSISTENT RESERVE IN/OUT itself and keeps registrations
//! in the gateway's memory, tied to a session number: they vanish with a
//! restart or a failover to another gateway. Each LU carries its own copy
//! of its device type's opcode table (`lu->dev_type_template.ops`), so at
//! `bs_init` this module takes over that LU's entries:
//!
//! - PERSISTENT RESERVE IN/OUT go to the worker pool, which answers them
//!   from the LUN's [`ferry_pr::Reservations`] and saves every change
//!   (with the volume, or in the ZooKeeper map) before the initiator
//!   hears GOOD;
//! - every other opcode first asks the same state whether the command's
//!   nexus may run it (RESERVATION CONFLICT, or a unit attention owed),
//!   then runs tgtd's own handler. While no reservation exists and no
//!   unit attention is owed, that check is one atomic load.
//!
//! tgtd's own PR state stays empty, so its access check always passes.
//!
//! The same table takes GET LBA STATUS to the workers as well: tgtd's
//! reads holes of the LU's file descriptor, which a ferry LU has none of,
//! while `ferry_scsi` asks the volume. And it gives the LU COMPARE AND
//! WRITE, which tgt 1.0.85's table lacks (`spc_illegal_op`) although its
//! `sbc_rw` knows the opcode: the LU's entry runs `sbc_rw` (RESERVE(6),
//! read-only and range checks, then `bs_cmd_submit`), and `ferry_scsi`
//! compares and writes under the LUN's CAW lock.
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::sync::Arc;

use ferry_pr::{Nexus, Refusal};
use parking_lot::Mutex;

use crate::ffi::{self, CmdPerform, ScsiCmd, ScsiLu};
use crate::{slot_ptr, LunSlot};

const PRIN: usize = 0x5e;
const PROUT: usize = 0x5f;
const COMPARE_AND_WRITE: usize = ferry_scsi::cdb::op::COMPARE_AND_WRITE as usize;
/// The opcode whose tgtd handler (`sbc_rw`) carries COMPARE AND WRITE out.
const WRITE_16: usize = ferry_scsi::cdb::op::WRITE_16 as usize;

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

/// tgtd's handlers of the LU's opcodes, before [`install`] replaced them.
pub struct SavedOps(pub [Option<CmdPerform>; 256]);

impl Default for SavedOps {
    fn default() -> Self {
        SavedOps([None; 256])
    }
}

/// Points `lu`'s opcode table at this module and returns tgtd's handlers.
///
/// # Safety
/// `lu` is a live LU of this backing store, on tgtd's main thread, with no
/// command of it running (bs_init).
pub unsafe fn install(lu: *mut ScsiLu) -> SavedOps {
    let mut saved = SavedOps::default();
    // Unsupported opcodes keep tgtd's `spc_illegal_op`: REPORT SUPPORTED
    // OPERATION CODES lists every other entry into a fixed 2 KiB buffer,
    // which wrapping all 256 would overflow (it did: a smashed stack).
    let illegal = illegal_op();
    for (op, orig) in saved.0.iter_mut().enumerate() {
        // SAFETY: the LU's ops[op] (see ops_entry), on tgtd's main thread
        // with no command of the LU running.
        unsafe {
            let entry = ops_entry(lu, op);
            *orig = *entry.perform;
            if op == PRIN || op == PROUT {
                *entry.perform = Some(perform_pr);
                *entry.service_actions = if op == PRIN {
                    PRIN_ACTIONS.0.as_ptr()
                } else {
                    PROUT_ACTIONS.0.as_ptr()
                };
            } else if implemented(*orig, illegal) || op == COMPARE_AND_WRITE {
                *entry.perform = Some(perform_checked);
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

/// tgtd's `spc_illegal_op`, the handler of opcodes a device type lacks.
fn illegal_op() -> Option<usize> {
    ffi::tgtd().ok().map(|t| t.spc_illegal_op as usize)
}

/// Whether `handler` (tgtd's, for some opcode) implements the opcode.
fn implemented(handler: Option<CmdPerform>, illegal: Option<usize>) -> bool {
    handler.is_some_and(|f| Some(f as usize) != illegal)
}

/// Names of the nexuses seen, by tgtd's (nexus id, creation time): the
/// name is the same for every command of a session, and working it out
/// (a session lookup and string formatting on tgtd's main thread) would
/// otherwise be paid per command while a reservation exists. The key
/// cannot name two sessions: tgtd hands session ids (TSIHs) out in
/// rotation, so one comes back only after 65535 other sessions, never
/// within the creation time's one-second resolution.
#[derive(Default)]
pub struct NexusNames(Mutex<HashMap<(u64, std::ffi::c_long), Arc<Nexus>>>);

/// Sessions remembered before the cache starts over (ended sessions are
/// never told about, so this bounds the memory).
const NEXUS_CACHE: usize = 4096;

impl NexusNames {
    /// The nexus of `cmd`.
    ///
    /// # Safety
    /// `cmd` is a live command on tgtd's main thread.
    pub unsafe fn of(&self, cmd: *mut ScsiCmd) -> Arc<Nexus> {
        // SAFETY: per the contract; it_nexus is the command's session.
        let key = unsafe {
            let itn = (*cmd).it_nexus.cast::<ffi::ItNexus>();
            if itn.is_null() {
                return Arc::new(nexus_of(cmd));
            }
            ((*itn).itn_id, (*itn).ctime)
        };
        let mut names = self.0.lock();
        if let Some(n) = names.get(&key) {
            return n.clone();
        }
        if names.len() >= NEXUS_CACHE {
            names.clear();
        }
        // SAFETY: per the contract.
        let n = Arc::new(unsafe { nexus_of(cmd) });
        names.insert(key, n.clone());
        n
    }
}

/// The I_T nexus of `cmd`, named as on every gateway: the initiator port
/// (`iqn...,i,0x<ISID>`) and the target port (`iqn...,t,0x0001`).
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
pub unsafe fn nexus_of(cmd: *mut ScsiCmd) -> Nexus {
    // SAFETY: per the contract; c_target is the command's target.
    let (target, tid) = unsafe {
        let t = (*cmd).c_target.cast::<ffi::Target>();
        if t.is_null() || (*t).name.is_null() {
            (String::from("?"), -1)
        } else {
            (
                CStr::from_ptr((*t).name).to_string_lossy().into_owned(),
                (*t).tid,
            )
        }
    };
    // SAFETY: as above.
    let itn = unsafe { (*cmd).cmd_itn_id };
    let initiator = ffi::tgtd()
        .ok()
        .and_then(|tgtd| {
            let mut buf = [0u8; 512];
            // SAFETY: tgtd fills at most `buf.len()` bytes of our buffer
            // (it returns the length needed without writing when larger).
            let n = unsafe {
                (tgtd.iscsi_transportid)(
                    tid,
                    itn,
                    buf.as_mut_ptr().cast::<c_char>(),
                    buf.len() as c_int,
                )
            };
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n > 0 && n <= buf.len())?;
            initiator_port(&buf[..n])
        })
        // Not an iSCSI session tgtd can name: a nexus of this gateway only.
        .unwrap_or_else(|| format!("itn-{itn}"));
    Nexus::new(initiator, format!("{target},t,0x0001"))
}

/// The initiator port name in tgtd's iSCSI TransportID: the name up to
/// its NUL, then `,i,0x` and six raw ISID bytes, written here in hex.
fn initiator_port(tid: &[u8]) -> Option<String> {
    let body = tid.get(4..)?;
    let end = body.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&body[..end]).ok()?;
    let rest = body.get(end + 1..)?;
    let isid = rest.strip_prefix(b",i,0x")?.get(..6)?;
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{name},i,0x{hex}"))
}

/// The LU's slot, if the LU is open.
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
                unsafe { crate::runtime::build_sense(tgtd, cmd, &s) };
            }
            ffi::SAM_STAT_CHECK_CONDITION
        }
    }
}

/// Every opcode but PR IN/OUT: the reservation check, then tgtd's handler.
unsafe extern "C" fn perform_checked(host_no: c_int, cmd: *mut ScsiCmd) -> c_int {
    crate::boundary("perform_checked", ffi::SAM_STAT_CHECK_CONDITION, || {
        if cmd.is_null() {
            return ffi::SAM_STAT_CHECK_CONDITION;
        }
        // SAFETY: tgtd calls this with a live command of our LU on its
        // main thread.
        unsafe {
            let Some(slot) = slot_of(cmd) else {
                return ffi::SAM_STAT_CHECK_CONDITION;
            };
            let cdb = crate::cdb_of(cmd);
            let Some(op) = cdb.first().map(|&b| b as usize) else {
                return ffi::SAM_STAT_CHECK_CONDITION;
            };
            if let Some(state) = &slot.state {
                if !state.lun.reservations().is_quiet() {
                    let nexus = slot.nexus_names.of(cmd);
                    if let Err(refusal) = state.lun.pr_check(&nexus, cdb) {
                        log::debug!("opcode {op:#04x} from {nexus}: {refusal:?}");
                        return refuse(cmd, refusal);
                    }
                }
            }
            // GET LBA STATUS is ferry's: tgtd's looks at holes of the LU's
            // file descriptor, which a ferry LU does not have.
            if ferry_scsi::cdb::is_get_lba_status(cdb) {
                return hand_over(cmd, false);
            }
            if op == COMPARE_AND_WRITE {
                let blocks = cdb.get(13).copied().unwrap_or(0);
                if blocks > max_compare_and_write((*cmd).dev) {
                    // SBC-3 5.3: more than the block limits page allows.
                    return refuse(cmd, Refusal::Check(ferry_scsi::Sense::invalid_field()));
                }
            }
            let status = match slot.saved_ops.0[handler_of(op)] {
                Some(orig) => orig(host_no, cmd),
                None => ffi::SAM_STAT_CHECK_CONDITION,
            };
            if status == ffi::SAM_STAT_CHECK_CONDITION
                && ferry_scsi::cdb::is_report_supported_opcodes(cdb)
            {
                point_at_refused_field(slot, cmd);
            }
            status
        }
    })
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

/// The opcode whose tgtd handler runs `op`: WRITE(16)'s `sbc_rw` for
/// COMPARE AND WRITE (tgtd's table has none for it; see the module docs),
/// `op`'s own otherwise.
fn handler_of(op: usize) -> usize {
    if op == COMPARE_AND_WRITE {
        WRITE_16
    } else {
        op
    }
}

/// tgtd refuses a REPORT SUPPORTED OPERATION CODES it cannot answer with
/// INVALID FIELD IN CDB but no field pointer, which initiators read as
/// the command not being implemented at all (libiscsi then skips its
/// checks of it). Adds the pointer to the field at fault.
///
/// # Safety
/// `cmd` is a live command of the LU of `slot`, on tgtd's main thread,
/// whose sense tgtd has just built.
unsafe fn point_at_refused_field(slot: &LunSlot, cmd: *mut ScsiCmd) {
    use ferry_scsi::sense;
    // SAFETY: per the contract; the CDB is copied out before the sense
    // buffer (another part of the command) is written.
    unsafe {
        let mut cdb = [0u8; 16];
        let got = crate::cdb_of(cmd);
        let n = got.len().min(cdb.len());
        cdb[..n].copy_from_slice(&got[..n]);
        let buf = &mut (*cmd).sense_buffer;
        let Ok(len) = usize::try_from((*cmd).sense_len) else {
            return;
        };
        if sense::key_and_asc(buf, len)
            != Some((
                sense::key::ILLEGAL_REQUEST,
                sense::asc::INVALID_FIELD_IN_CDB,
            ))
        {
            return;
        }
        let requested = usize::from(cdb[3]);
        let has_actions = implemented(slot.saved_ops.0[handler_of(requested)], illegal_op())
            .then(|| !(*ops_entry((*cmd).dev, requested).service_actions).is_null());
        let field =
            ferry_scsi::cdb::report_opcodes_refused_field(&cdb, (*cmd).in_sdb.length, has_actions);
        let new_len = sense::point_at_cdb_field(buf, len, field);
        (*cmd).sense_len = new_len as c_int;
    }
}

/// PERSISTENT RESERVE IN/OUT: handed to the workers with the nexus.
unsafe extern "C" fn perform_pr(_host_no: c_int, cmd: *mut ScsiCmd) -> c_int {
    crate::boundary("perform_pr", ffi::SAM_STAT_CHECK_CONDITION, || {
        if cmd.is_null() {
            return ffi::SAM_STAT_CHECK_CONDITION;
        }
        // SAFETY: as in perform_checked.
        unsafe { hand_over(cmd, true) }
    })
}

/// Hands `cmd` to the workers (`pr`: a PERSISTENT RESERVE IN/OUT): GOOD
/// with the command pending, or HARDWARE ERROR now.
///
/// # Safety
/// `cmd` is a live, non-null command of one of our LUs, on tgtd's main
/// thread.
unsafe fn hand_over(cmd: *mut ScsiCmd, pr: bool) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        match crate::submit(cmd, pr) {
            0 => ffi::SAM_STAT_GOOD,
            _ => refuse(cmd, Refusal::Check(ferry_scsi::Sense::internal_failure())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_write_runs_through_tgtds_write_handler() {
        assert_eq!(handler_of(0x89), 0x8a);
        assert_eq!(handler_of(0x8a), 0x8a);
        assert_eq!(handler_of(0x28), 0x28);
    }

    #[test]
    fn initiator_port_reads_tgtds_transport_id() {
        let mut tid = vec![0x45, 0, 0, 0];
        tid.extend_from_slice(b"iqn.2026-11.test:a\0,i,0x");
        tid.extend_from_slice(&[0x80, 0x12, 0x00, 0x34, 0, 1, 0]);
        assert_eq!(
            initiator_port(&tid).as_deref(),
            Some("iqn.2026-11.test:a,i,0x801200340001")
        );
        assert_eq!(initiator_port(&tid[..10]), None);
        assert_eq!(initiator_port(b"\x45\0\0\0no-nul"), None);
        assert_eq!(initiator_port(b""), None);
    }
}
