//! PERSISTENT RESERVE IN (SPC-4 6.15): the four reports.
use ferry_scsi::sense::Sense;

use crate::state::{Nexus, PrState, PrType};
use crate::Refusal;

/// PERSISTENT RESERVE IN opcode.
pub const OPCODE: u8 = 0x5e;

/// PR IN service actions (SPC-4 table 164).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    ReadKeys,
    ReadReservation,
    ReportCapabilities,
    ReadFullStatus,
}

/// A parsed PERSISTENT RESERVE IN command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrinRequest {
    pub report: Report,
    pub allocation_length: usize,
}

impl PrinRequest {
    pub fn parse(cdb: &[u8]) -> Result<Self, Refusal> {
        if cdb.len() < 10 || cdb[0] != OPCODE {
            return Err(Refusal::Check(Sense::invalid_field()));
        }
        let report = match cdb[1] & 0x1f {
            0 => Report::ReadKeys,
            1 => Report::ReadReservation,
            2 => Report::ReportCapabilities,
            3 => Report::ReadFullStatus,
            _ => return Err(Refusal::Check(Sense::invalid_field())),
        };
        Ok(PrinRequest {
            report,
            allocation_length: u16::from_be_bytes([cdb[7], cdb[8]]) as usize,
        })
    }
}

/// Relative target port identifier ferry reports: each gateway has one
/// target port per target.
pub const RELATIVE_TARGET_PORT: u16 = 1;

impl PrState {
    /// The full parameter data of `report` (the caller truncates it to the
    /// allocation length and the buffer).
    pub fn report(&self, report: Report) -> Vec<u8> {
        match report {
            Report::ReadKeys => {
                let mut out = self.header(8 * self.registrations.len());
                for r in &self.registrations {
                    out.extend_from_slice(&r.key.to_be_bytes());
                }
                out
            }
            Report::ReadReservation => match &self.reservation {
                None => self.header(0),
                Some(r) => {
                    let mut out = self.header(16);
                    out.extend_from_slice(&self.reservation_key().to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                    out.push(0); // reserved
                    out.push(r.kind.code()); // scope 0 (LU) | type
                    out.extend_from_slice(&[0; 2]);
                    out
                }
            },
            Report::ReportCapabilities => {
                let mut out = vec![0u8; 8];
                // Length.
                out[1] = 8;
                // CRH 0: RESERVE/RELEASE(6/10) from a non-holder conflict
                // while a persistent reservation exists. SIP_C (bit 3):
                // SPEC_I_PT is taken. ATP_C (bit 2): ALL_TG_PT is taken.
                // PTPL_C (bit 0): the state persists through power loss.
                out[2] = 0x08 | 0x04 | 0x01;
                // TMV (bit 7) with the type mask below; ALLOW COMMANDS 0;
                // PTPL_A (bit 0).
                out[3] = 0x80 | u8::from(self.aptpl);
                let mask = PrType::ALL.iter().fold(0u16, |m, t| m | type_mask_bit(*t));
                out[4..6].copy_from_slice(&mask.to_be_bytes());
                out
            }
            Report::ReadFullStatus => {
                let mut body = Vec::new();
                for r in &self.registrations {
                    let tid = transport_id(&r.nexus);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    let holder = self.is_holder(&r.nexus);
                    // ALL_TG_PT (bit 1) | R_HOLDER (bit 0)
                    body.push(u8::from(r.all_target_ports) << 1 | u8::from(holder));
                    body.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.kind.code(),
                        _ => 0,
                    });
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&RELATIVE_TARGET_PORT.to_be_bytes());
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                let mut out = self.header(body.len());
                out.extend_from_slice(&body);
                out
            }
        }
    }

    fn header(&self, additional: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + additional);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&(additional as u32).to_be_bytes());
        out
    }
}

/// The bit of `t` in REPORT CAPABILITIES' type mask (SPC-4 table 170).
fn type_mask_bit(t: PrType) -> u16 {
    match t {
        PrType::WriteExclusiveAllRegistrants => 0x8000,
        PrType::ExclusiveAccessRegistrantsOnly => 0x4000,
        PrType::WriteExclusiveRegistrantsOnly => 0x2000,
        PrType::ExclusiveAccess => 0x0800,
        PrType::WriteExclusive => 0x0200,
        PrType::ExclusiveAccessAllRegistrants => 0x0001,
    }
}

/// The longest iSCSI name (RFC 3720 3.2.6.1), so that the TransportID
/// ferry writes for a port (`transport_id`) fits its 16-bit length.
const MAX_ISCSI_NAME: usize = 223;

/// The initiator port named by an iSCSI TransportID in format 01b (name
/// and ISID), in the form nexuses use (`name,i,0x<isid>`, ISID in lower
/// case), and the TransportID's length. `None` for any other protocol or
/// format, or a malformed one: a name without an ISID names an initiator
/// device, not a port, and a name longer than 223 bytes no iSCSI
/// initiator has.
pub fn parse_transport_id(tid: &[u8]) -> Option<(String, usize)> {
    const ISCSI: u8 = 0x05;
    let head = tid.get(..4)?;
    if head[0] != (0x40 | ISCSI) {
        return None;
    }
    let len = 4 + usize::from(u16::from_be_bytes([head[2], head[3]]));
    let body = tid.get(4..len)?;
    let end = body.iter().position(|&b| b == 0)?;
    let port = std::str::from_utf8(&body[..end]).ok()?;
    let (name, isid) = port.rsplit_once(",i,0x")?;
    if name.is_empty()
        || name.len() > MAX_ISCSI_NAME
        || !name.bytes().all(|b| b.is_ascii_graphic())
        || isid.len() != 12
        || !isid.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some((format!("{name},i,0x{}", isid.to_ascii_lowercase()), len))
}

/// The iSCSI TransportID of a nexus's initiator (SPC-4 7.6.4.6): format
/// 01b (name with ISID) when the port name has one, else 00b; the name
/// null-terminated and padded to a multiple of four bytes.
pub fn transport_id(nexus: &Nexus) -> Vec<u8> {
    const ISCSI: u8 = 0x05;
    let name = nexus.initiator.as_bytes();
    let format = if nexus.initiator.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let padded = (name.len() + 1).div_ceil(4) * 4;
    let mut out = vec![format | ISCSI, 0];
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.resize(4 + padded, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by reading what the `transport_id` fuzz target's round trip
    /// checks: a port name of 65,532 bytes or more was taken, and READ FULL
    /// STATUS then gave its TransportID a length of `65536 as u16`, zero.
    #[test]
    fn transport_ids_name_iscsi_names_of_at_most_223_bytes() {
        let tid = |name: &str| {
            transport_id(&Nexus::new(
                format!("{name},i,0x000000000001"),
                "iqn.t,t,0x0001",
            ))
        };
        let longest = format!("iqn.2026-11.org.example:{}", "a".repeat(223 - 24));
        assert_eq!(longest.len(), 223);
        let ours = tid(&longest);
        assert_eq!(
            parse_transport_id(&ours),
            Some((format!("{longest},i,0x000000000001"), ours.len()))
        );
        assert_eq!(parse_transport_id(&tid(&format!("{longest}b"))), None);
        // The longest port name a TransportID's length field can carry:
        // 65,534 bytes and the null, which `transport_id` wrote back with
        // a length of zero.
        let mut huge = vec![0x45, 0, 0xff, 0xff];
        huge.extend_from_slice("a".repeat(65534 - 17).as_bytes());
        huge.extend_from_slice(b",i,0x000000000001\0");
        assert_eq!(huge.len(), 4 + 0xffff);
        assert_eq!(parse_transport_id(&huge), None);
    }
}
