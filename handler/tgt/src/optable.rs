//! The LU's opcode table: persistent reservations through tgtd, answered
//! by ferry instead of tgtd's core, GET LBA STATUS and COMPARE AND WRITE.
//!
//! tgtd answers PERSISTENT RESERVE IN/OUT itself and keeps registrations
//! in the gateway's memory, tied to a session number: they vanish with a
//! restart or a failover to another gateway. Each LU carries its own copy
//! of its device type's opcode table (`lu->dev_type_template.ops`), so at
//! `bs_init` the plugin takes over that LU's entries:
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
//!
//! This module decides what each hook does; the hooks tgtd calls
//! (`perform_checked`, `perform_pr`) and the pokes into tgtd's table,
//! commands and sense are in [`crate::shim`], which reads tgtd's
//! structures, asks here, and writes the answer back.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_long;
use std::sync::Arc;

use ferry_pr::{Nexus, Refusal};
use ferry_scsi::alua;
use parking_lot::Mutex;

use crate::ffi::{self, CmdPerform};
use crate::lun::LunSlot;

pub const PRIN: usize = 0x5e;
pub const PROUT: usize = 0x5f;
pub const COMPARE_AND_WRITE: usize = ferry_scsi::cdb::op::COMPARE_AND_WRITE as usize;
/// The opcode whose tgtd handler (`sbc_rw`) carries COMPARE AND WRITE out.
const WRITE_16: usize = ferry_scsi::cdb::op::WRITE_16 as usize;

/// tgtd's handlers of the LU's opcodes, before the shim's `install`
/// replaced them.
pub struct SavedOps(pub [Option<CmdPerform>; 256]);

impl Default for SavedOps {
    fn default() -> Self {
        SavedOps([None; 256])
    }
}

/// What an LU's opcode-table entry becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// PERSISTENT RESERVE IN/OUT: handed to the workers, with the
    /// service actions ferry answers.
    Pr,
    /// Checked against the reservations, then tgtd's handler.
    Checked,
    /// Left as tgtd set it up.
    Keep,
}

/// The hook for opcode `op`, whose tgtd handler is `orig`. Unsupported
/// opcodes keep tgtd's `spc_illegal_op` (`illegal`): REPORT SUPPORTED
/// OPERATION CODES lists every other entry into a fixed 2 KiB buffer,
/// which wrapping all 256 would overflow (it did: a smashed stack).
pub fn hook_for(op: usize, orig: Option<CmdPerform>, illegal: Option<usize>) -> Hook {
    if op == PRIN || op == PROUT {
        Hook::Pr
    } else if implemented(orig, illegal) || op == COMPARE_AND_WRITE {
        Hook::Checked
    } else {
        Hook::Keep
    }
}

/// tgtd's `spc_illegal_op`, the handler of opcodes a device type lacks.
pub fn illegal_op() -> Option<usize> {
    ffi::tgtd().ok().map(|t| t.spc_illegal_op as usize)
}

/// Whether `handler` (tgtd's, for some opcode) implements the opcode.
pub fn implemented(handler: Option<CmdPerform>, illegal: Option<usize>) -> bool {
    handler.is_some_and(|f| Some(f as usize) != illegal)
}

/// The opcode whose tgtd handler runs `op`: WRITE(16)'s `sbc_rw` for
/// COMPARE AND WRITE (tgtd's table has none for it; see the module docs),
/// `op`'s own otherwise.
pub fn handler_of(op: usize) -> usize {
    if op == COMPARE_AND_WRITE {
        WRITE_16
    } else {
        op
    }
}

/// What `perform_checked` does with a command of an open or closed LU.
pub enum Admission {
    /// Answer now with this refusal.
    Refuse(Refusal),
    /// Answer now with this data-in (REPORT TARGET PORT GROUPS).
    Reply(Vec<u8>),
    /// Answer CHECK CONDITION without sense (no CDB, or no handler).
    Fail,
    /// Hand it to the workers (GET LBA STATUS).
    HandOver,
    /// Run tgtd's handler.
    Run(CmdPerform),
}

/// ASYMMETRIC ACCESS STATE CHANGED.
const ACCESS_STATE_CHANGED: u16 = 0x2a06;
/// CAPACITY DATA HAS CHANGED (SPC-4 table D.1), owed after a resize.
const CAPACITY_DATA_HAS_CHANGED: u16 = 0x2a09;

/// Which count of changes each session has been told of: a session is
/// owed a unit attention once per change after it began. Kept for the
/// port's state changes ([`ferry_host::LunPort::changes`]: ASYMMETRIC
/// ACCESS STATE CHANGED, SPC-4 5.15.2.2, so Linux's ALUA handler checks
/// RTPG again at once instead of at its next path check) and for the
/// capacity's (CAPACITY DATA HAS CHANGED, so it reads the capacity again).
#[derive(Default)]
pub struct ChangesTold(Mutex<HashMap<SessionKey, u64>>);

impl ChangesTold {
    /// Whether session `key` is owed the unit attention now that the
    /// port's count is `changes` (and, if so, counts it as told). A new
    /// session starts at the current count.
    pub fn owed(&self, key: SessionKey, changes: u64) -> bool {
        let mut seen = self.0.lock();
        if seen.len() >= NEXUS_CACHE && !seen.contains_key(&key) {
            seen.clear();
        }
        match seen.insert(key, changes) {
            Some(told) => told != changes,
            None => false,
        }
    }
}

/// Commands a unit attention does not stop (SAM-5 5.14: INQUIRY, REPORT
/// LUNS and REQUEST SENSE are answered as usual).
fn passes_unit_attention(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x12 | 0xa0 | 0x03))
}

/// How long initiators are told an implicit transition may take: the
/// map store's session timeout plus a takeover's fencing, in seconds.
pub const TRANSITION_SECS: u8 = 30;

/// Decides on a command with CDB `cdb` for the LU of `slot`: a port that
/// is not active refuses media access with its state's sense; REPORT
/// TARGET PORT GROUPS is answered here; the rest is checked against the
/// reservations: `nexus` names the command's nexus (asked only while a
/// reservation exists or a unit attention is owed), and
/// `max_compare_and_write` reads the LU's block limits (asked only for
/// COMPARE AND WRITE).
pub fn admit(
    slot: &LunSlot,
    cdb: &[u8],
    session: Option<SessionKey>,
    nexus: impl FnOnce() -> Arc<Nexus>,
    max_compare_and_write: impl FnOnce() -> u8,
) -> Admission {
    let Some(op) = cdb.first().map(|&b| b as usize) else {
        return Admission::Fail;
    };
    if let Some(key) = session.filter(|_| !passes_unit_attention(cdb)) {
        // One unit attention per command, the port's state first.
        let owed = [
            (
                &slot.access_told,
                slot.port.as_ref().map(|p| p.changes()),
                ACCESS_STATE_CHANGED,
            ),
            (
                &slot.capacity_told,
                Some(slot.capacity_changes.get()),
                CAPACITY_DATA_HAS_CHANGED,
            ),
        ];
        for (told, changes, asc) in owed {
            if changes.is_some_and(|n| told.owed(key, n)) {
                return Admission::Refuse(Refusal::Check(ferry_scsi::Sense::new(
                    ferry_scsi::sense::key::UNIT_ATTENTION,
                    asc,
                )));
            }
        }
    }
    if let Some(refusal) = slot.state().refusal() {
        if !alua::answered_when_inactive(cdb) {
            return Admission::Refuse(Refusal::Check(refusal));
        }
    }
    if alua::is_report_target_port_groups(cdb) {
        let groups = slot.port.as_ref().map(|p| p.groups()).unwrap_or_default();
        return match alua::report_target_port_groups(cdb, &groups, TRANSITION_SECS) {
            Ok(data) => Admission::Reply(data),
            Err(sense) => Admission::Refuse(Refusal::Check(sense)),
        };
    }
    if let Some(lun) = slot.lun() {
        if !lun.reservations().is_quiet() {
            let nexus = nexus();
            if let Err(refusal) = lun.pr_check(&nexus, cdb) {
                log::debug!("opcode {op:#04x} from {nexus}: {refusal:?}");
                return Admission::Refuse(refusal);
            }
        }
    }
    // GET LBA STATUS is ferry's: tgtd's looks at holes of the LU's file
    // descriptor, which a ferry LU does not have.
    if ferry_scsi::cdb::is_get_lba_status(cdb) {
        return Admission::HandOver;
    }
    if op == COMPARE_AND_WRITE {
        let blocks = cdb.get(13).copied().unwrap_or(0);
        if blocks > max_compare_and_write() {
            // SBC-3 5.3: more than the block limits page allows.
            return Admission::Refuse(Refusal::Check(ferry_scsi::Sense::invalid_field()));
        }
    }
    match slot.saved_ops.0[handler_of(op)] {
        Some(orig) => Admission::Run(orig),
        None => Admission::Fail,
    }
}

/// tgtd refuses a REPORT SUPPORTED OPERATION CODES it cannot answer with
/// INVALID FIELD IN CDB but no field pointer, which initiators read as
/// the command not being implemented at all (libiscsi then skips its
/// checks of it). Points the sense tgtd built (`sense`, `len` bytes
/// valid) at the field of `cdb` at fault, and returns its new length;
/// `None` leaves any other sense alone. `alloc_len` is the command's
/// data-in length; `has_service_actions` says whether the LU's table
/// lists service actions for an opcode.
pub fn point_at_refused_field(
    slot: &LunSlot,
    cdb: &[u8; 16],
    sense: &mut [u8],
    len: usize,
    alloc_len: u32,
    has_service_actions: impl FnOnce(usize) -> bool,
) -> Option<usize> {
    use ferry_scsi::sense::{asc, key, key_and_asc, point_at_cdb_field};
    if key_and_asc(sense, len) != Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)) {
        return None;
    }
    let requested = usize::from(cdb[3]);
    let has_actions = implemented(slot.saved_ops.0[handler_of(requested)], illegal_op())
        .then(|| has_service_actions(requested));
    let field = ferry_scsi::cdb::report_opcodes_refused_field(cdb, alloc_len, has_actions);
    Some(point_at_cdb_field(sense, len, field))
}

/// A session as tgtd knows it: its nexus id and creation time, unique
/// together even when tgtd reuses an id.
pub type SessionKey = (u64, c_long);

/// Names of the nexuses seen, by session: the name is the same for every
/// command of a session, and working it out (a session lookup and string
/// formatting on tgtd's main thread) would otherwise be paid per command
/// while a reservation exists. The key cannot name two sessions: tgtd
/// hands session ids (TSIHs) out in rotation, so one comes back only
/// after 65535 other sessions, never within the creation time's
/// one-second resolution.
#[derive(Default)]
pub struct NexusNames(Mutex<HashMap<SessionKey, Arc<Nexus>>>);

/// Sessions remembered before the cache starts over (ended sessions are
/// never told about, so this bounds the memory).
const NEXUS_CACHE: usize = 4096;

impl NexusNames {
    /// The nexus of session `key`, named by `name` the first time it is
    /// seen (every time for a command without a session).
    pub fn of(&self, key: Option<SessionKey>, name: impl FnOnce() -> Nexus) -> Arc<Nexus> {
        let Some(key) = key else {
            return Arc::new(name());
        };
        let mut names = self.0.lock();
        if let Some(n) = names.get(&key) {
            return n.clone();
        }
        if names.len() >= NEXUS_CACHE {
            names.clear();
        }
        let n = Arc::new(name());
        names.insert(key, n.clone());
        n
    }
}

/// The I_T nexus of a command, named as on every gateway: the initiator
/// port (`iqn...,i,0x<ISID>`, from tgtd's iSCSI TransportID of the
/// session) and the target port (`iqn...,t,0x0001`, `?` when the command
/// has no target name). A session tgtd cannot name is a nexus of this
/// gateway only, `itn-<nexus id>`.
pub fn nexus(target: Option<&str>, transport_id: Option<&[u8]>, itn: u64) -> Nexus {
    let initiator = transport_id
        .and_then(initiator_port)
        .unwrap_or_else(|| format!("itn-{itn}"));
    Nexus::new(initiator, format!("{},t,0x0001", target.unwrap_or("?")))
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

    #[test]
    fn a_nexus_tgtd_cannot_name_is_this_gateways() {
        let n = nexus(None, None, 7);
        assert_eq!(n, Nexus::new("itn-7", "?,t,0x0001"));
        let n = nexus(Some("iqn.t"), Some(b"\x45\0\0\0a\0,i,0x\0\0\0\0\0\x01"), 7);
        assert_eq!(n, Nexus::new("a,i,0x000000000001", "iqn.t,t,0x0001"));
    }

    extern "C" fn some_handler(_: std::ffi::c_int, _: *mut ffi::ScsiCmd) -> std::ffi::c_int {
        0
    }

    #[test]
    fn pr_opcodes_go_to_ferry_and_unsupported_ones_stay_tgtds() {
        let illegal = Some(0x1000);
        let h: CmdPerform = some_handler;
        assert_eq!(hook_for(PRIN, None, illegal), Hook::Pr);
        assert_eq!(hook_for(PROUT, Some(h), illegal), Hook::Pr);
        assert_eq!(hook_for(0x28, Some(h), illegal), Hook::Checked);
        assert_eq!(hook_for(COMPARE_AND_WRITE, None, illegal), Hook::Checked);
        assert_eq!(hook_for(0x28, None, illegal), Hook::Keep);
    }

    #[test]
    fn each_session_is_told_of_each_change_once() {
        let told = ChangesTold::default();
        assert!(!told.owed((1, 1), 0), "a new session owes nothing");
        assert!(!told.owed((1, 1), 0));
        assert!(told.owed((1, 1), 2));
        assert!(!told.owed((1, 1), 2));
        assert!(!told.owed((2, 1), 2), "a session begun after the change");
        assert!(passes_unit_attention(&[0x12, 0, 0, 0, 36, 0]));
        assert!(!passes_unit_attention(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
    }

    #[test]
    fn a_session_is_named_once() {
        let names = NexusNames::default();
        let mut calls = 0;
        for _ in 0..3 {
            names.of(Some((1, 2)), || {
                calls += 1;
                Nexus::new("i", "t")
            });
        }
        assert_eq!(calls, 1);
        names.of(None, || {
            calls += 1;
            Nexus::new("i", "t")
        });
        assert_eq!(calls, 2);
    }
}
