//! Which commands a persistent reservation lets a nexus run (SPC-4
//! 5.12.1 table 63, SBC-3 table 13).
use crate::state::{Nexus, PrState};

/// How a command relates to reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Allowed whatever the reservation: identification, capacity, status.
    Always,
    /// Reads: blocked only by the exclusive-access types.
    Read,
    /// Everything that may change the medium or the LUN's state.
    Write,
    /// RESERVE / RELEASE (6) and (10), the SPC-2 reservations: they
    /// conflict for every nexus while any nexus is registered (SPC-4
    /// 5.12.3 with CRH 0), so the two kinds never mix.
    Legacy,
}

/// Classifies a CDB. Opcodes not listed are [`Class::Write`]: an
/// unknown command is kept from non-holders rather than let through.
pub fn classify(cdb: &[u8]) -> Class {
    let Some(&op) = cdb.first() else {
        return Class::Write;
    };
    let service_action = cdb.get(1).map_or(0, |b| b & 0x1f);
    match op {
        0x16 | 0x17 | 0x56 | 0x57 => Class::Legacy,
        0x00 // TEST UNIT READY
        | 0x03 // REQUEST SENSE
        | 0x12 // INQUIRY
        | 0x25 // READ CAPACITY(10)
        | 0x4d // LOG SENSE
        | 0x5e // PERSISTENT RESERVE IN
        | 0x5f // PERSISTENT RESERVE OUT: its own rules (out.rs)
        | 0xa0 // REPORT LUNS
        => Class::Always,
        // SERVICE ACTION IN(16): READ CAPACITY(16) / GET LBA STATUS.
        0x9e if service_action == 0x10 => Class::Always,
        0x9e => Class::Read,
        // MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED
        // OPERATION CODES / TASK MANAGEMENT FUNCTIONS.
        0xa3 if matches!(service_action, 0x0a | 0x0c | 0x0d) => Class::Always,
        0x08 | 0x28 | 0xa8 | 0x88 // READ(6/10/12/16)
        | 0x2f | 0xaf | 0x8f // VERIFY(10/12/16)
        | 0x34 | 0x90 // PRE-FETCH(10/16)
        | 0x1a | 0x5a // MODE SENSE(6/10)
        | 0x3c // READ BUFFER
        | 0x1c // RECEIVE DIAGNOSTIC RESULTS
        => Class::Read,
        _ => Class::Write,
    }
}

impl PrState {
    /// Whether `nexus` may run `cdb` now: `false` means RESERVATION
    /// CONFLICT.
    pub fn allows(&self, nexus: &Nexus, cdb: &[u8]) -> bool {
        if classify(cdb) == Class::Legacy {
            return self.registrations.is_empty();
        }
        let Some(r) = &self.reservation else {
            return true;
        };
        if self.is_holder(nexus) {
            return true;
        }
        match classify(cdb) {
            Class::Always => true,
            _ if r.kind.registrants_allowed() && self.is_registered(nexus) => true,
            Class::Read => !r.kind.exclusive_access(),
            Class::Write | Class::Legacy => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_status_commands_are_told_apart() {
        assert_eq!(classify(&[0x28; 10]), Class::Read);
        assert_eq!(classify(&[0x8a; 16]), Class::Write);
        assert_eq!(classify(&[0x12, 0, 0, 0, 36, 0]), Class::Always);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9e;
        rc16[1] = 0x10;
        assert_eq!(classify(&rc16), Class::Always);
        rc16[1] = 0x12; // GET LBA STATUS
        assert_eq!(classify(&rc16), Class::Read);
        assert_eq!(classify(&[0x35; 10]), Class::Write); // SYNCHRONIZE CACHE
        assert_eq!(classify(&[0x42; 10]), Class::Write); // UNMAP
        assert_eq!(classify(&[]), Class::Write);
        assert_eq!(classify(&[0xc7]), Class::Write); // vendor specific
        assert_eq!(classify(&[0x16, 0, 0, 0, 0, 0]), Class::Legacy);
    }
}
