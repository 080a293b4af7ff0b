//! Sense data: what a command that ends in CHECK CONDITION reports.
//!
//! Keys and additional sense codes are from SPC-4 (tables 28 and 29 in
//! T10/1731-D r37, "sense key descriptions" and "ASC and ASCQ
//! assignments").

/// SAM status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SAM status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
/// SAM status RESERVATION CONFLICT.
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;

/// Sense keys used by ferry (SPC-4 table 28).
pub mod key {
    pub const NO_SENSE: u8 = 0x00;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const MISCOMPARE: u8 = 0x0e;
}

/// Additional sense code + qualifier, packed `asc << 8 | ascq` (the form
/// tgtd's `sense_data_build` takes). SPC-4 table 29.
pub mod asc {
    /// WRITE ERROR.
    pub const WRITE_ERROR: u16 = 0x0c00;
    /// UNRECOVERED READ ERROR.
    pub const READ_ERROR: u16 = 0x1100;
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH: u16 = 0x1a00;
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: u16 = 0x1d00;
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: u16 = 0x2000;
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: u16 = 0x2100;
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: u16 = 0x2400;
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: u16 = 0x2600;
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: u16 = 0x4400;
}

/// Sense to report with CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    /// `asc << 8 | ascq`.
    pub asc: u16,
    /// INFORMATION field (e.g. offset of the first miscompare), if valid.
    pub info: Option<u64>,
}

impl Sense {
    pub const fn new(key: u8, asc: u16) -> Self {
        Sense {
            key,
            asc,
            info: None,
        }
    }

    pub const fn with_info(key: u8, asc: u16, info: u64) -> Self {
        Sense {
            key,
            asc,
            info: Some(info),
        }
    }

    pub const fn invalid_field() -> Self {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
    }

    pub const fn out_of_range() -> Self {
        Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
    }

    pub const fn invalid_opcode() -> Self {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_OPCODE)
    }
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE: the target's own fault
    /// (a panic, a failed save), not the medium's.
    pub const fn internal_failure() -> Self {
        Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
    }

    /// Fixed-format sense data (SPC-4 4.5.3), 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        if let Some(info) = self.info {
            b[0] |= 0x80; // VALID: the INFORMATION field holds `info`
                          // Fixed format has 4 bytes of information; larger values are
                          // truncated, as SPC-4 allows when VALID is set.
            b[3..7].copy_from_slice(&(info as u32).to_be_bytes());
        }
        b[7] = 10; // additional sense length
        b[12] = (self.asc >> 8) as u8;
        b[13] = self.asc as u8;
        b
    }
}

/// The sense key and `asc << 8 | ascq` of sense data `buf[..len]` in
/// either format, if it is sense data.
pub fn key_and_asc(buf: &[u8], len: usize) -> Option<(u8, u16)> {
    let b = buf.get(..len)?;
    match b.first()? & 0x7f {
        0x70 | 0x71 if len >= 14 => Some((b[2] & 0x0f, u16::from_be_bytes([b[12], b[13]]))),
        0x72 | 0x73 if len >= 4 => Some((b[1] & 0x0f, u16::from_be_bytes([b[2], b[3]]))),
        _ => None,
    }
}

/// The CDB field an ILLEGAL REQUEST points at: the sense-key specific
/// field pointer of SPC-4 4.5.2.4.2 (C/D set: the field is in the CDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdbField {
    /// Byte of the CDB.
    pub byte: u16,
    /// Most significant bit of the field within that byte, when the field
    /// does not start a byte.
    pub bit: Option<u8>,
}

/// The most sense data a device server returns (SPC-4 4.5.1).
const MAX_SENSE_LEN: usize = 252;

/// Adds `field` as the sense-key specific information of the sense data
/// `buf[..len]` (fixed or descriptor format) and returns its new length;
/// other data is returned unchanged.
///
/// Initiators read a CHECK CONDITION without a field pointer to a
/// MAINTENANCE IN or SERVICE ACTION IN command as "this command is not
/// implemented" (libiscsi does, and so skips its checks): pointing at the
/// field says the command exists and this use of it is what is refused.
pub fn point_at_cdb_field(buf: &mut [u8], len: usize, field: CdbField) -> usize {
    let [hi, lo] = field.byte.to_be_bytes();
    let sks = [
        0x80 | 0x40 | field.bit.map_or(0, |b| 0x08 | (b & 0x07)),
        hi,
        lo,
    ];
    match buf.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if len >= 18 && buf.len() >= 18 => {
            buf[15..18].copy_from_slice(&sks);
            len
        }
        // Descriptor format: append a sense-key specific descriptor
        // (type 2, SPC-4 4.5.2.4) after those already there, if the sense
        // data stays within its 252 bytes (so its ADDITIONAL SENSE LENGTH,
        // at most 244, fits its byte).
        Some(0x72 | 0x73)
            if len >= 8
                && len
                    .checked_add(8)
                    .is_some_and(|end| end <= buf.len().min(MAX_SENSE_LEN))
                && buf[7] as usize + 8 == len =>
        {
            buf[len..len + 8].copy_from_slice(&[0x02, 0x06, 0, 0, sks[0], sks[1], sks[2], 0]);
            buf[7] += 8;
            len + 8
        }
        _ => len,
    }
}

/// Maps an engine error to sense. `writing` picks WRITE ERROR over
/// UNRECOVERED READ ERROR for media failures (SBC-3 4.17).
pub fn from_error(err: &ferry_core::Error, writing: bool) -> Sense {
    use ferry_core::Error;
    match err {
        Error::OutOfRange { .. } => Sense::out_of_range(),
        Error::Unsupported(_) => Sense::invalid_opcode(),
        Error::VolumeIo { .. } | Error::Injected(_) if writing => {
            Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR)
        }
        Error::VolumeIo { .. } | Error::Injected(_) => {
            Sense::new(key::MEDIUM_ERROR, asc::READ_ERROR)
        }
        // Fenced volumes and metadata failures are the target's fault,
        // not the medium's; the log says which.
        e => {
            log::error!("answering HARDWARE ERROR: {e}");
            Sense::internal_failure()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_pointer_goes_into_either_format() {
        let mut fixed = [0u8; 32];
        fixed[..18].copy_from_slice(&Sense::invalid_field().fixed());
        let at = CdbField {
            byte: 2,
            bit: Some(2),
        };
        assert_eq!(
            key_and_asc(&fixed, 18),
            Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB))
        );
        assert_eq!(point_at_cdb_field(&mut fixed, 18, at), 18);
        assert_eq!(&fixed[15..18], &[0xca, 0x00, 0x02]);

        let mut desc = [0u8; 32];
        desc[..4].copy_from_slice(&[0x72, 0x05, 0x24, 0x00]);
        let at = CdbField {
            byte: 0x0106,
            bit: None,
        };
        assert_eq!(key_and_asc(&desc, 8), Some((0x05, 0x2400)));
        assert_eq!(point_at_cdb_field(&mut desc, 8, at), 16);
        assert_eq!(desc[7], 8);
        assert_eq!(&desc[8..16], &[0x02, 0x06, 0, 0, 0xc0, 0x01, 0x06, 0]);

        // Unknown formats, short buffers and descriptor lists whose length
        // disagrees are left alone.
        assert_eq!(key_and_asc(&[0x70, 0, 5], 3), None);
        let mut odd = [0x7fu8; 18];
        assert_eq!(key_and_asc(&odd, 18), None);
        assert_eq!(point_at_cdb_field(&mut odd, 18, at), 18);
        assert_eq!(odd, [0x7f; 18]);
        let mut short = [0x72u8, 5, 0x24, 0, 0, 0, 0, 0];
        assert_eq!(point_at_cdb_field(&mut short, 8, at), 8);
        let mut bad_len = [0u8; 32];
        bad_len[..8].copy_from_slice(&[0x72, 5, 0x24, 0, 0, 0, 0, 4]);
        assert_eq!(point_at_cdb_field(&mut bad_len, 8, at), 8);
    }

    /// Found by the `cdb_exec` fuzz target: descriptor-format sense data
    /// whose ADDITIONAL SENSE LENGTH was 248 or more overflowed the byte
    /// when the descriptor was added (a panic with overflow checks, a
    /// wrong length without).
    #[test]
    fn field_pointer_keeps_sense_data_within_252_bytes() {
        let at = CdbField { byte: 1, bit: None };
        for additional in [244u8, 248, 255] {
            let len = usize::from(additional) + 8;
            let mut buf = [0u8; 300];
            buf[..8].copy_from_slice(&[0x72, 5, 0x24, 0, 0, 0, 0, additional]);
            assert_eq!(point_at_cdb_field(&mut buf, len, at), len);
            assert_eq!(buf[7], additional);
            assert!(buf[len..].iter().all(|&b| b == 0));
        }
        let mut buf = [0u8; 300];
        buf[..8].copy_from_slice(&[0x72, 5, 0x24, 0, 0, 0, 0, 236]);
        assert_eq!(point_at_cdb_field(&mut buf, 244, at), 252);
        assert_eq!(buf[7], 244);
        assert_eq!(point_at_cdb_field(&mut buf, usize::MAX, at), usize::MAX);
    }

    #[test]
    fn fixed_format_carries_key_asc_and_info() {
        let s = Sense::with_info(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY, 0x1234);
        let b = s.fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0x0e);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x1d, 0x00));
    }
}
