//! CDB parsing (SBC-3 section 5): bytes in, a typed [`Command`] or the sense
//! an initiator should get for a malformed CDB.
//!
//! Every parser checks the CDB is long enough for its opcode and refuses
//! fields ferry does not implement (protection information, grouping is
//! ignored as SBC allows). Ranges are checked at execution, against the
//! volume's size, with overflow-checked arithmetic.
use crate::sense::{CdbField, Sense};

/// Operation codes handled here (SBC-3 table 16).
pub mod op {
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16); ferry handles its GET LBA STATUS action.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN; the SCSI cores answer its REPORT SUPPORTED
    /// OPERATION CODES action.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
}

/// A parsed block command. `lba` and `blocks` are in logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    Write {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    /// WRITE AND VERIFY: write, then check the medium holds the data.
    WriteVerify {
        lba: u64,
        blocks: u64,
        bytchk: bool,
    },
    /// VERIFY; with `bytchk` the data-out buffer is compared to the medium.
    Verify {
        lba: u64,
        blocks: u64,
        bytchk: bool,
    },
    /// `blocks == 0` means "to the end of the medium" (SBC-3 5.48).
    WriteSame {
        lba: u64,
        blocks: u64,
        unmap: bool,
        lbdata: bool,
        pbdata: bool,
        /// WRITE SAME(16) NDOB: no data-out buffer; write zeroes.
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    /// ORWRITE(16): OR the data-out buffer into the medium (SBC-3 5.10).
    OrWrite {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u64,
    },
    PreFetch {
        lba: u64,
        blocks: u64,
    },
    /// Which blocks from `lba` on are mapped and which deallocated
    /// (SBC-3 5.7); `alloc` is the allocation length.
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Length of the CDB for `opcode`'s group (SPC-4 4.2.5.1), if fixed.
fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// (lba, blocks) of a 10-, 12- or 16-byte CDB with the usual layout.
fn lba_len(cdb: &[u8]) -> (u64, u64) {
    match cdb.len() {
        10 => (be32(&cdb[2..]), be16(&cdb[7..])),
        12 => (be32(&cdb[2..]), be32(&cdb[6..])),
        _ => (be64(&cdb[2..]), be32(&cdb[10..])),
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT (byte 1, bits 7-5): ferry has no
/// protection information, so anything but 0 is an invalid field
/// (SBC-3 4.22.2 for a logical unit formatted without PI).
fn check_no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::invalid_field());
    }
    Ok(())
}

/// Whether `cdb` is GET LBA STATUS (SERVICE ACTION IN(16), action 0x12),
/// which front-ends route to ferry rather than their SCSI core.
pub fn is_get_lba_status(cdb: &[u8]) -> bool {
    cdb.first() == Some(&op::SERVICE_ACTION_IN_16)
        && cdb.get(1).map(|b| b & 0x1f) == Some(op::SA_GET_LBA_STATUS)
}

/// Whether `cdb` is REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN,
/// action 0x0c).
pub fn is_report_supported_opcodes(cdb: &[u8]) -> bool {
    cdb.first() == Some(&op::MAINTENANCE_IN)
        && cdb.get(1).map(|b| b & 0x1f) == Some(op::SA_REPORT_SUPPORTED_OPCODES)
}

/// The field of a REPORT SUPPORTED OPERATION CODES CDB that made a SCSI
/// core refuse it with INVALID FIELD IN CDB (SPC-4 6.35), for the sense
/// data's field pointer. `in_len` is the initiator's data-in buffer;
/// `has_actions` tells, for the requested opcode, `None` if the LU does not
/// support it, else whether it has service actions.
pub fn report_opcodes_refused_field(
    cdb: &[u8],
    in_len: u32,
    has_actions: Option<bool>,
) -> CdbField {
    let options = cdb.get(2).map_or(0, |b| b & 0x07);
    let alloc = cdb
        .get(6..10)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    // REPORTING OPTIONS, bits 2..0 of byte 2.
    let reporting_options = CdbField {
        byte: 2,
        bit: Some(2),
    };
    // In the order tgtd checks: the allocation length first.
    match (options, has_actions) {
        _ if in_len < alloc => CdbField { byte: 6, bit: None },
        (3.., _) => reporting_options,
        (1 | 2, None) => CdbField { byte: 3, bit: None },
        // 001b asked for an opcode with service actions, or 010b for one
        // without: the option does not fit the opcode.
        _ => reporting_options,
    }
}

/// Parses a CDB. `Ok(None)` means the opcode is not a block command this
/// layer handles (the caller answers INVALID COMMAND OPERATION CODE or
/// lets its SCSI core handle it).
pub fn parse(cdb: &[u8]) -> Result<Option<Command>, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let need = cdb_len(opcode).ok_or_else(Sense::invalid_opcode)?;
    if cdb.len() < need {
        return Err(Sense::invalid_field());
    }
    let cdb = &cdb[..need];
    let fua = cdb[1] & 0x08 != 0;
    let cmd = match opcode {
        op::READ_6 | op::WRITE_6 => {
            let lba = (u64::from(cdb[1] & 0x1f) << 16) | be16(&cdb[2..]);
            // SBC-3 5.16: a transfer length of 0 means 256 blocks.
            let blocks = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            if opcode == op::READ_6 {
                Command::Read {
                    lba,
                    blocks,
                    fua: false,
                }
            } else {
                Command::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            }
        }
        op::READ_10 | op::READ_12 | op::READ_16 => {
            check_no_protect(cdb)?;
            let (lba, blocks) = lba_len(cdb);
            Command::Read { lba, blocks, fua }
        }
        op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            check_no_protect(cdb)?;
            let (lba, blocks) = lba_len(cdb);
            Command::Write { lba, blocks, fua }
        }
        op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
            check_no_protect(cdb)?;
            let (lba, blocks) = lba_len(cdb);
            Command::WriteVerify {
                lba,
                blocks,
                bytchk: cdb[1] & 0x02 != 0,
            }
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            check_no_protect(cdb)?;
            let (lba, blocks) = lba_len(cdb);
            // BYTCHK is two bits in SBC-3 r25+: 0 medium only, 1 compare
            // the data-out buffer; 2 is reserved and 3 (one block compared
            // to every block) is not supported.
            let bytchk = match (cdb[1] >> 1) & 0x03 {
                0 => false,
                1 => true,
                _ => return Err(Sense::invalid_field()),
            };
            Command::Verify {
                lba,
                blocks,
                bytchk,
            }
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            check_no_protect(cdb)?;
            if cdb[1] & 0x10 != 0 {
                // ANCHOR: ferry does not anchor blocks.
                return Err(Sense::invalid_field());
            }
            let (lba, blocks) = lba_len(cdb);
            let lbdata = cdb[1] & 0x02 != 0;
            let pbdata = cdb[1] & 0x04 != 0;
            if lbdata && pbdata {
                return Err(Sense::invalid_field());
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap: cdb[1] & 0x08 != 0,
                lbdata,
                pbdata,
                ndob: opcode == op::WRITE_SAME_16 && cdb[1] & 0x01 != 0,
            }
        }
        op::UNMAP => {
            if cdb[1] & 0x01 != 0 {
                // ANCHOR
                return Err(Sense::invalid_field());
            }
            Command::Unmap {
                param_len: be16(&cdb[7..]) as u32, // a u16 widened
            }
        }
        op::COMPARE_AND_WRITE => {
            check_no_protect(cdb)?;
            Command::CompareAndWrite {
                lba: be64(&cdb[2..]),
                blocks: u64::from(cdb[13]),
                fua,
            }
        }
        op::ORWRITE_16 => {
            check_no_protect(cdb)?;
            let (lba, blocks) = lba_len(cdb);
            Command::OrWrite { lba, blocks, fua }
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks) = lba_len(cdb);
            Command::SynchronizeCache { lba, blocks }
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            let (lba, blocks) = lba_len(cdb);
            Command::PreFetch { lba, blocks }
        }
        op::SERVICE_ACTION_IN_16 if is_get_lba_status(cdb) => Command::GetLbaStatus {
            lba: be64(&cdb[2..]),
            alloc: be32(&cdb[10..]) as u32,
        },
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cdb: &[u8]) -> Command {
        parse(cdb).unwrap().unwrap()
    }

    #[test]
    fn refused_report_opcodes_points_at_the_field_at_fault() {
        let rsoc = |options: u8, opcode: u8, alloc: u32| {
            let mut c = [0u8; 12];
            c[0] = op::MAINTENANCE_IN;
            c[1] = op::SA_REPORT_SUPPORTED_OPCODES;
            c[2] = options;
            c[3] = opcode;
            c[6..10].copy_from_slice(&alloc.to_be_bytes());
            c
        };
        assert!(is_report_supported_opcodes(&rsoc(0, 0, 512)));
        assert!(!is_report_supported_opcodes(&[op::MAINTENANCE_IN, 0x0a]));
        let options = CdbField {
            byte: 2,
            bit: Some(2),
        };
        // Reporting options 3..7 do not exist.
        assert_eq!(
            report_opcodes_refused_field(&rsoc(5, 0, 512), 512, Some(false)),
            options
        );
        // The allocation length is larger than the initiator's buffer.
        assert_eq!(
            report_opcodes_refused_field(&rsoc(0, 0, 4096), 512, Some(false)),
            CdbField { byte: 6, bit: None }
        );
        // An opcode the LU does not support.
        assert_eq!(
            report_opcodes_refused_field(&rsoc(1, 0xee, 512), 512, None),
            CdbField { byte: 3, bit: None }
        );
        // 010b for TEST UNIT READY (no service actions), 001b for PR IN.
        assert_eq!(
            report_opcodes_refused_field(&rsoc(2, 0, 512), 512, Some(false)),
            options
        );
        assert_eq!(
            report_opcodes_refused_field(&rsoc(1, 0x5e, 512), 512, Some(true)),
            options
        );
        // A CDB too short to say anything still gets an answer.
        assert_eq!(report_opcodes_refused_field(&[0xa3], 0, None), options);
    }

    #[test]
    fn read_6_zero_length_means_256_blocks() {
        assert_eq!(
            p(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]),
            Command::Read {
                lba: 0x010203,
                blocks: 256,
                fua: false
            }
        );
    }

    #[test]
    fn write_6_lba_is_21_bits() {
        assert_eq!(
            p(&[0x0a, 0xff, 0xff, 0xff, 0x01, 0x00]),
            Command::Write {
                lba: 0x1fffff,
                blocks: 1,
                fua: false
            }
        );
    }

    #[test]
    fn read_10_with_fua() {
        assert_eq!(
            p(&[0x28, 0x08, 0, 0, 0x10, 0x00, 0, 0x00, 0x08, 0]),
            Command::Read {
                lba: 0x1000,
                blocks: 8,
                fua: true
            }
        );
    }

    #[test]
    fn write_12_and_read_12() {
        assert_eq!(
            p(&[0xaa, 0, 0, 0, 0, 0x20, 0, 0, 0x01, 0x00, 0, 0]),
            Command::Write {
                lba: 0x20,
                blocks: 0x100,
                fua: false
            }
        );
        assert_eq!(
            p(&[0xa8, 0, 0, 0, 0, 0x01, 0, 0, 0, 0x02, 0, 0]),
            Command::Read {
                lba: 1,
                blocks: 2,
                fua: false
            }
        );
    }

    #[test]
    fn write_16_full_64_bit_lba() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        cdb[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        cdb[10..14].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            p(&cdb),
            Command::Write {
                lba: u64::MAX,
                blocks: 7,
                fua: false
            }
        );
    }

    #[test]
    fn protection_fields_are_refused() {
        let cdb = [0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(parse(&cdb), Err(Sense::invalid_field()));
    }

    #[test]
    fn short_cdb_is_an_invalid_field() {
        assert_eq!(parse(&[0x28, 0, 0]), Err(Sense::invalid_field()));
        assert_eq!(parse(&[]), Err(Sense::invalid_opcode()));
    }

    #[test]
    fn vendor_group_opcode_is_invalid() {
        assert_eq!(parse(&[0xc0, 0, 0, 0, 0, 0]), Err(Sense::invalid_opcode()));
    }

    #[test]
    fn unknown_block_opcode_is_left_to_the_caller() {
        assert_eq!(parse(&[0x12, 0, 0, 0, 36, 0]), Ok(None)); // INQUIRY
    }

    #[test]
    fn write_same_16_flags() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x93;
        cdb[1] = 0x08 | 0x01; // UNMAP, NDOB
        cdb[9] = 5;
        cdb[13] = 9;
        assert_eq!(
            p(&cdb),
            Command::WriteSame {
                lba: 5,
                blocks: 9,
                unmap: true,
                lbdata: false,
                pbdata: false,
                ndob: true
            }
        );
        cdb[1] = 0x06; // LBDATA and PBDATA together
        assert_eq!(parse(&cdb), Err(Sense::invalid_field()));
        cdb[1] = 0x10; // ANCHOR
        assert_eq!(parse(&cdb), Err(Sense::invalid_field()));
    }

    #[test]
    fn write_same_10_has_no_ndob() {
        let cdb = [0x41, 0x01, 0, 0, 0, 1, 0, 0, 2, 0];
        assert!(matches!(
            p(&cdb),
            Command::WriteSame {
                ndob: false,
                lba: 1,
                blocks: 2,
                ..
            }
        ));
    }

    #[test]
    fn unmap_parameter_length() {
        assert_eq!(
            p(&[0x42, 0, 0, 0, 0, 0, 0, 0x00, 0x18, 0]),
            Command::Unmap { param_len: 24 }
        );
        assert_eq!(
            parse(&[0x42, 1, 0, 0, 0, 0, 0, 0, 0x18, 0]),
            Err(Sense::invalid_field())
        );
    }

    #[test]
    fn compare_and_write_blocks_in_byte_13() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[1] = 0x08;
        cdb[9] = 3;
        cdb[13] = 1;
        assert_eq!(
            p(&cdb),
            Command::CompareAndWrite {
                lba: 3,
                blocks: 1,
                fua: true
            }
        );
    }

    #[test]
    fn orwrite_16() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8b;
        cdb[9] = 2;
        cdb[13] = 3;
        assert_eq!(
            p(&cdb),
            Command::OrWrite {
                lba: 2,
                blocks: 3,
                fua: false
            }
        );
    }

    #[test]
    fn verify_bytchk_values() {
        assert_eq!(
            p(&[0x2f, 0x02, 0, 0, 0, 4, 0, 0, 1, 0]),
            Command::Verify {
                lba: 4,
                blocks: 1,
                bytchk: true
            }
        );
        assert_eq!(
            parse(&[0x2f, 0x06, 0, 0, 0, 4, 0, 0, 1, 0]),
            Err(Sense::invalid_field())
        );
    }

    #[test]
    fn write_verify_and_sync_cache_and_prefetch() {
        assert_eq!(
            p(&[0x2e, 0x02, 0, 0, 0, 1, 0, 0, 1, 0]),
            Command::WriteVerify {
                lba: 1,
                blocks: 1,
                bytchk: true
            }
        );
        assert_eq!(
            p(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Command::SynchronizeCache { lba: 0, blocks: 0 }
        );
        let mut c16 = [0u8; 16];
        c16[0] = 0x90;
        c16[13] = 8;
        assert_eq!(p(&c16), Command::PreFetch { lba: 0, blocks: 8 });
    }
}
