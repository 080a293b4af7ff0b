//! Asymmetric logical unit access (SPC-4 5.15), implicit only: every
//! gateway exports every LUN through its own target port group, and the
//! map, not the initiator, decides which group is active. No SET TARGET
//! PORT GROUPS: an initiator that cannot move a LUN cannot make two
//! gateways fight over it (the lock ping-pong of explicit failover).
//!
//! This module is the wire format: the asymmetric access states, the
//! REPORT TARGET PORT GROUPS reply, the VPD page 83h designators naming a
//! command's target port and group, and which commands a port in each
//! state answers. Which state a port is in is the front-end's business.
use serde::{Deserialize, Serialize};

use crate::sense::{key, Sense};

/// MAINTENANCE IN, the opcode of REPORT TARGET PORT GROUPS.
pub const MAINTENANCE_IN: u8 = 0xa3;
/// REPORT TARGET PORT GROUPS, MAINTENANCE IN's service action.
pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;

/// Standard INQUIRY byte 5: TPGS = 01b, implicit asymmetric access only.
pub const TPGS_IMPLICIT: u8 = 0x10;

/// A target port group's asymmetric access state (SPC-4 table 166).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessState {
    /// The owner's group: it holds the volume open and serves media
    /// access.
    ActiveOptimized,
    /// A live gateway that may take the LUN over: answers inquiries,
    /// refuses media access.
    Standby,
    /// A gateway that lost the map, or whose node is down.
    Unavailable,
    /// Taking over: the previous owner is being fenced or the volume
    /// opened.
    Transitioning,
}

impl AccessState {
    /// The state's code in RTPG descriptors.
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Transitioning => 0xf,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code & 0x0f {
            0x0 => AccessState::ActiveOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0xf => AccessState::Transitioning,
            _ => return None,
        })
    }

    pub const fn is_active(self) -> bool {
        matches!(self, AccessState::ActiveOptimized)
    }

    /// The NOT READY sense a port in this state answers media access
    /// with (SPC-4 5.15.2.4); none when active.
    pub const fn refusal(self) -> Option<Sense> {
        let asc = match self {
            AccessState::ActiveOptimized => return None,
            // LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE
            // TRANSITION / TARGET PORT IN STANDBY STATE / ... UNAVAILABLE
            // STATE.
            AccessState::Transitioning => 0x040a,
            AccessState::Standby => 0x040b,
            AccessState::Unavailable => 0x040c,
        };
        Some(Sense::new(key::NOT_READY, asc))
    }
}

impl std::fmt::Display for AccessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessState::ActiveOptimized => "active/optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::Transitioning => "transitioning",
        })
    }
}

/// One target port group as RTPG reports it. Each gateway is one group
/// with one target port whose relative identifier is the group's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortGroup {
    pub id: u16,
    pub state: AccessState,
    /// The map's first node: where the LUN lives when all is well.
    #[serde(default)]
    pub preferred: bool,
}

/// Whether a port in a non-active state answers `cdb` rather than
/// refusing it with its state's sense. SPC-4 5.15.2.4.4 (standby) lists
/// what such a port must still serve; ferry adds READ CAPACITY so an
/// initiator sizes the device through any path, and answers TEST UNIT
/// READY with the state's sense (how initiators learn a path is
/// standby). Reservations need the open volume, so they wait for the
/// active path.
pub fn answered_when_inactive(cdb: &[u8]) -> bool {
    let Some(&op) = cdb.first() else {
        return false;
    };
    let service_action = cdb.get(1).map_or(0, |b| b & 0x1f);
    match op {
        0x12 // INQUIRY
        | 0xa0 // REPORT LUNS
        | 0x03 // REQUEST SENSE
        | 0x25 // READ CAPACITY(10)
        | 0x1a | 0x5a // MODE SENSE(6/10)
        | 0x4d // LOG SENSE
        | 0x1c // RECEIVE DIAGNOSTIC RESULTS
        | 0x3c // READ BUFFER
        => true,
        // READ CAPACITY(16)
        0x9e => service_action == 0x10,
        // REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES
        MAINTENANCE_IN => matches!(service_action, 0x0a | 0x0c | 0x0d),
        _ => false,
    }
}

/// Whether `cdb` is REPORT TARGET PORT GROUPS.
pub fn is_report_target_port_groups(cdb: &[u8]) -> bool {
    cdb.first() == Some(&MAINTENANCE_IN)
        && cdb.get(1).map(|b| b & 0x1f) == Some(REPORT_TARGET_PORT_GROUPS)
}

/// The reply to REPORT TARGET PORT GROUPS `cdb` (SPC-4 6.36), truncated
/// to its allocation length: the length-only header or, when asked for,
/// the extended one (format 01b, with the implicit transition time in
/// seconds).
pub fn report_target_port_groups(
    cdb: &[u8],
    groups: &[PortGroup],
    transition_secs: u8,
) -> Result<Vec<u8>, Sense> {
    if cdb.len() < 12 || !is_report_target_port_groups(cdb) {
        return Err(Sense::invalid_field());
    }
    let extended = (cdb[1] >> 5) == 0b001;
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
    let mut out = vec![0u8; if extended { 8 } else { 4 }];
    if extended {
        out[4] = 0x10; // format type 001b
        out[5] = transition_secs;
    }
    for g in groups {
        out.push(if g.preferred { 0x80 } else { 0 } | g.state.code());
        // T_SUP, U_SUP, S_SUP, AO_SUP: the states ferry uses.
        out.push(0x80 | 0x08 | 0x04 | 0x01);
        out.extend_from_slice(&g.id.to_be_bytes());
        out.push(0); // reserved
                     // Status: 02h when the map changed the state, 00h otherwise.
        out.push(0x02);
        out.push(0); // vendor specific
        out.push(1); // one target port
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&g.id.to_be_bytes());
    }
    // The RETURN DATA LENGTH counts the bytes after itself.
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.truncate(alloc);
    Ok(out)
}

/// VPD page 83h designators naming the port a command came through: its
/// relative target port (type 4) and its target port group (type 5),
/// both associated with the target port and marked iSCSI (PIV, protocol
/// identifier 5). With one port per group, the relative port identifier
/// is the group id.
pub fn port_designators(group: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    for (i, kind) in [0x04u8, 0x05].into_iter().enumerate() {
        let at = i * 8;
        d[at] = 0x50 | 0x01; // iSCSI, binary
        d[at + 1] = 0x80 | 0x10 | kind; // PIV, association target port
        d[at + 3] = 4;
        d[at + 6..at + 8].copy_from_slice(&group.to_be_bytes());
    }
    d
}

/// The designators of a device identification page (`page`: the page's
/// data after its 4-byte header) with this port's relative target port
/// and target port group designators in place of any there were: the
/// same page however often it is asked for.
pub fn with_port_designators(page: &[u8], group: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(page.len() + 16);
    let mut at = 0;
    while at + 4 <= page.len() {
        let len = 4 + usize::from(page[at + 3]);
        let Some(d) = page.get(at..at + len) else {
            break;
        };
        let association = (d[1] >> 4) & 0x03;
        let kind = d[1] & 0x0f;
        if !(association == 1 && (kind == 4 || kind == 5)) {
            out.extend_from_slice(d);
        }
        at += len;
    }
    out.extend_from_slice(&port_designators(group));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtpg(extended: bool, alloc: u32) -> Vec<u8> {
        let mut cdb = vec![MAINTENANCE_IN, REPORT_TARGET_PORT_GROUPS, 0, 0, 0, 0];
        if extended {
            cdb[1] |= 0x20;
        }
        cdb.extend_from_slice(&alloc.to_be_bytes());
        cdb.extend_from_slice(&[0, 0]);
        cdb
    }

    fn groups() -> Vec<PortGroup> {
        vec![
            PortGroup {
                id: 7,
                state: AccessState::ActiveOptimized,
                preferred: true,
            },
            PortGroup {
                id: 9,
                state: AccessState::Standby,
                preferred: false,
            },
        ]
    }

    #[test]
    fn rtpg_lists_every_group_with_its_state_and_port() {
        let r = report_target_port_groups(&rtpg(false, 1024), &groups(), 10).unwrap();
        assert_eq!(r.len(), 4 + 2 * 12);
        assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]), 24);
        let a = &r[4..16];
        assert_eq!(a[0], 0x80); // preferred, active/optimized
        assert_eq!(u16::from_be_bytes([a[2], a[3]]), 7);
        assert_eq!(a[7], 1);
        assert_eq!(u16::from_be_bytes([a[10], a[11]]), 7);
        let b = &r[16..28];
        assert_eq!(b[0], 0x02); // standby, not preferred
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 9);
        assert_eq!(AccessState::from_code(b[0]), Some(AccessState::Standby));
    }

    #[test]
    fn rtpg_extended_header_and_allocation_length() {
        let r = report_target_port_groups(&rtpg(true, 1024), &groups(), 10).unwrap();
        assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]), 28);
        assert_eq!(r[4], 0x10);
        assert_eq!(r[5], 10);
        assert_eq!(r.len(), 8 + 24);
        let short = report_target_port_groups(&rtpg(false, 6), &groups(), 10).unwrap();
        assert_eq!(short.len(), 6);
        assert_eq!(
            u32::from_be_bytes([short[0], short[1], short[2], short[3]]),
            24
        );
        assert!(report_target_port_groups(&[0xa3, 0x0a], &groups(), 0).is_err());
        assert!(report_target_port_groups(&rtpg(false, 0)[..11], &groups(), 0).is_err());
    }

    #[test]
    fn designators_name_the_port_and_its_group() {
        let d = port_designators(0x1234);
        assert_eq!(&d[..8], &[0x51, 0x94, 0, 4, 0, 0, 0x12, 0x34]);
        assert_eq!(&d[8..], &[0x51, 0x95, 0, 4, 0, 0, 0x12, 0x34]);
    }

    #[test]
    fn port_designators_replace_earlier_ones() {
        // A T10 vendor ID and an NAA designator, as tgtd builds them.
        let mut page = vec![0x02, 0x01, 0, 4, b'f', b'e', b'r', b'y'];
        page.extend_from_slice(&[0x01, 0x03, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let once = with_port_designators(&page, 7);
        assert_eq!(once.len(), page.len() + 16);
        assert_eq!(&once[..page.len()], &page[..]);
        assert_eq!(with_port_designators(&once, 7), once, "idempotent");
        let moved = with_port_designators(&once, 9);
        assert_eq!(moved.len(), once.len());
        assert_eq!(&moved[moved.len() - 2..], &[0, 9]);
        // A truncated tail is dropped, not read past.
        let mut torn = page.clone();
        torn.extend_from_slice(&[0x01, 0x03, 0, 8, 1]);
        assert_eq!(with_port_designators(&torn, 7), once);
    }

    #[test]
    fn inactive_ports_answer_inquiries_and_refuse_media_access() {
        assert!(answered_when_inactive(&[0x12, 0, 0, 0, 96, 0]));
        assert!(answered_when_inactive(&[0x9e, 0x10]));
        assert!(answered_when_inactive(&rtpg(false, 64)));
        assert!(!answered_when_inactive(&[0x00, 0, 0, 0, 0, 0])); // TUR
        assert!(!answered_when_inactive(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(!answered_when_inactive(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(!answered_when_inactive(&[0x5f, 0x01]));
        assert!(!answered_when_inactive(&[0x9e, 0x12])); // GET LBA STATUS
        assert!(!answered_when_inactive(&[]));
        let s = AccessState::Standby.refusal().unwrap();
        assert_eq!((s.key, s.asc), (key::NOT_READY, 0x040b));
        assert_eq!(AccessState::Transitioning.refusal().unwrap().asc, 0x040a);
        assert_eq!(AccessState::Unavailable.refusal().unwrap().asc, 0x040c);
        assert!(AccessState::ActiveOptimized.refusal().is_none());
    }
}
