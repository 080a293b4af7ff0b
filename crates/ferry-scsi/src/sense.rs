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
