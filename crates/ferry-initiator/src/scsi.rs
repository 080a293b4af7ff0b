//! SCSI vocabulary shared by the session API and its callers: statuses,
//! sense data, INQUIRY designators and the outcome of a raw CDB.
//!
//! These are plain values copied out of libiscsi's task structures, so
//! callers never hold anything that points into C memory.

use std::fmt;

use serde::Serialize;

/// Sense keys (SPC-4 table 49) the tests and tools look for.
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x00;
    pub const RECOVERED_ERROR: u8 = 0x01;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const ABORTED_COMMAND: u8 = 0x0b;
    pub const MISCOMPARE: u8 = 0x0e;
}

/// Additional sense codes (ASC) the tests and tools look for.
pub mod asc {
    pub const INVALID_COMMAND_OPERATION_CODE: u8 = 0x20;
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    pub const INVALID_FIELD_IN_CDB: u8 = 0x24;
    pub const MISCOMPARE_DURING_VERIFY: u8 = 0x1d;
}

/// The status a SCSI command finished with, as libiscsi reports it: the
/// SAM status byte, or one of libiscsi's own transport outcomes
/// (cancelled, error, timeout) for commands that never got a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScsiStatus {
    Good,
    CheckCondition,
    ConditionMet,
    Busy,
    ReservationConflict,
    TaskSetFull,
    AcaActive,
    TaskAborted,
    /// libiscsi cancelled the command (the connection dropped).
    Cancelled,
    /// libiscsi failed the command without a SCSI status.
    TransportError,
    /// No answer within the session's timeout (`iscsi_set_timeout`).
    Timeout,
    Other(u32),
}

impl ScsiStatus {
    /// Maps libiscsi's `enum scsi_status` value.
    pub fn from_raw(raw: u32) -> ScsiStatus {
        match raw {
            0x00 => ScsiStatus::Good,
            0x02 => ScsiStatus::CheckCondition,
            0x04 => ScsiStatus::ConditionMet,
            0x08 => ScsiStatus::Busy,
            0x18 => ScsiStatus::ReservationConflict,
            0x28 => ScsiStatus::TaskSetFull,
            0x30 => ScsiStatus::AcaActive,
            0x40 => ScsiStatus::TaskAborted,
            0x0f00_0000 => ScsiStatus::Cancelled,
            0x0f00_0001 => ScsiStatus::TransportError,
            0x0f00_0002 => ScsiStatus::Timeout,
            other => ScsiStatus::Other(other),
        }
    }

    /// True for the outcomes that mean the command never completed on the
    /// target as far as the initiator can tell: the session is suspect.
    pub fn is_transport_failure(self) -> bool {
        matches!(
            self,
            ScsiStatus::Cancelled | ScsiStatus::TransportError | ScsiStatus::Timeout
        )
    }
}

impl fmt::Display for ScsiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScsiStatus::Good => f.write_str("GOOD"),
            ScsiStatus::CheckCondition => f.write_str("CHECK CONDITION"),
            ScsiStatus::ConditionMet => f.write_str("CONDITION MET"),
            ScsiStatus::Busy => f.write_str("BUSY"),
            ScsiStatus::ReservationConflict => f.write_str("RESERVATION CONFLICT"),
            ScsiStatus::TaskSetFull => f.write_str("TASK SET FULL"),
            ScsiStatus::AcaActive => f.write_str("ACA ACTIVE"),
            ScsiStatus::TaskAborted => f.write_str("TASK ABORTED"),
            ScsiStatus::Cancelled => f.write_str("cancelled"),
            ScsiStatus::TransportError => f.write_str("transport error"),
            ScsiStatus::Timeout => f.write_str("timed out"),
            ScsiStatus::Other(raw) => write!(f, "status {raw:#x}"),
        }
    }
}

/// Decoded sense data of a CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    /// The sense key's name, as in SPC.
    pub fn key_name(&self) -> &'static str {
        match self.key {
            sense_key::NO_SENSE => "NO SENSE",
            sense_key::RECOVERED_ERROR => "RECOVERED ERROR",
            sense_key::NOT_READY => "NOT READY",
            sense_key::MEDIUM_ERROR => "MEDIUM ERROR",
            sense_key::HARDWARE_ERROR => "HARDWARE ERROR",
            sense_key::ILLEGAL_REQUEST => "ILLEGAL REQUEST",
            sense_key::UNIT_ATTENTION => "UNIT ATTENTION",
            sense_key::DATA_PROTECT => "DATA PROTECT",
            0x08 => "BLANK CHECK",
            0x09 => "VENDOR SPECIFIC",
            0x0a => "COPY ABORTED",
            sense_key::ABORTED_COMMAND => "ABORTED COMMAND",
            0x0d => "VOLUME OVERFLOW",
            sense_key::MISCOMPARE => "MISCOMPARE",
            _ => "reserved",
        }
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (key {:#04x}) asc {:#04x} ascq {:#04x}",
            self.key_name(),
            self.key,
            self.asc,
            self.ascq
        )
    }
}

/// What a raw CDB came back with. Transport failures (no status at all)
/// are errors instead; every SCSI status, CHECK CONDITION included, is an
/// outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiOutcome {
    pub status: ScsiStatus,
    /// Set when `status` is CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data-in, as much as the target returned (at most `data_in_len`).
    pub data: Vec<u8>,
}

impl ScsiOutcome {
    pub fn is_good(&self) -> bool {
        self.status == ScsiStatus::Good
    }
}

/// One designator of the Device Identification VPD page (0x83).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Designator {
    /// SPC `CODE SET`: 1 binary, 2 ASCII, 3 UTF-8.
    pub code_set: u8,
    /// 0 logical unit, 1 target port, 2 target device.
    pub association: u8,
    /// 1 T10 vendor ID, 2 EUI-64, 3 NAA, 8 SCSI name string...
    pub designator_type: u8,
    /// Protocol identifier, when `PIV` is set (5 = iSCSI).
    pub protocol: Option<u8>,
    pub value: Vec<u8>,
}

impl Designator {
    pub const TYPE_T10_VENDOR_ID: u8 = 1;
    pub const TYPE_EUI64: u8 = 2;
    pub const TYPE_NAA: u8 = 3;
    pub const TYPE_SCSI_NAME: u8 = 8;

    /// The designator as text: printable ASCII/UTF-8 values as they are,
    /// NAA as `naa.<hex>`, EUI-64 as `eui.<hex>`, anything else as hex.
    pub fn display_value(&self) -> String {
        let hex: String = self.value.iter().map(|b| format!("{b:02x}")).collect();
        match self.designator_type {
            Designator::TYPE_NAA => format!("naa.{hex}"),
            Designator::TYPE_EUI64 => format!("eui.{hex}"),
            _ if self.code_set == 2 || self.code_set == 3 => String::from_utf8_lossy(&self.value)
                .trim_end_matches(['\0', ' '])
                .to_string(),
            _ => hex,
        }
    }

    /// A short name for the designator type.
    pub fn type_name(&self) -> &'static str {
        match self.designator_type {
            0 => "vendor-specific",
            Designator::TYPE_T10_VENDOR_ID => "t10-vendor-id",
            Designator::TYPE_EUI64 => "eui-64",
            Designator::TYPE_NAA => "naa",
            4 => "relative-target-port",
            5 => "target-port-group",
            6 => "logical-unit-group",
            7 => "md5-logical-unit-id",
            Designator::TYPE_SCSI_NAME => "scsi-name-string",
            _ => "reserved",
        }
    }
}

/// The Device Identification VPD page (0x83), decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceId {
    pub designators: Vec<Designator>,
}

impl DeviceId {
    /// The logical unit's NAA designator as `naa.<hex>`, if it has one.
    pub fn naa(&self) -> Option<String> {
        self.designators
            .iter()
            .find(|d| d.designator_type == Designator::TYPE_NAA && d.association == 0)
            .map(Designator::display_value)
    }

    /// The best single identifier: NAA if present, else the first
    /// logical-unit designator, else the first of any.
    pub fn primary(&self) -> Option<String> {
        self.naa().or_else(|| {
            self.designators
                .iter()
                .find(|d| d.association == 0)
                .or_else(|| self.designators.first())
                .map(Designator::display_value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_from_libiscsi_values() {
        assert_eq!(ScsiStatus::from_raw(0), ScsiStatus::Good);
        assert_eq!(ScsiStatus::from_raw(2), ScsiStatus::CheckCondition);
        assert_eq!(ScsiStatus::from_raw(0x0f00_0002), ScsiStatus::Timeout);
        assert!(ScsiStatus::Cancelled.is_transport_failure());
        assert!(!ScsiStatus::Busy.is_transport_failure());
        assert_eq!(ScsiStatus::from_raw(0x99), ScsiStatus::Other(0x99));
    }

    #[test]
    fn sense_displays_key_and_codes() {
        let s = Sense {
            key: sense_key::ILLEGAL_REQUEST,
            asc: asc::LBA_OUT_OF_RANGE,
            ascq: 0,
        };
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST (key 0x05) asc 0x21 ascq 0x00"
        );
    }

    #[test]
    fn device_id_prefers_naa() {
        let id = DeviceId {
            designators: vec![
                Designator {
                    code_set: 2,
                    association: 0,
                    designator_type: Designator::TYPE_T10_VENDOR_ID,
                    protocol: None,
                    value: b"IET     00010001\0".to_vec(),
                },
                Designator {
                    code_set: 1,
                    association: 0,
                    designator_type: Designator::TYPE_NAA,
                    protocol: None,
                    value: vec![0x60, 0x00, 0x0e, 0x0f],
                },
            ],
        };
        assert_eq!(id.naa().as_deref(), Some("naa.60000e0f"));
        assert_eq!(id.designators[0].display_value(), "IET     00010001");
    }
}
