//! What a LUN's QoS limits are and what each command costs against them.
//! The buckets that enforce them are `ferry_host::qos`'s; the limits live
//! here so the cluster map (`ferry_map`) can hold them too.
use serde::{Deserialize, Serialize};

use crate::Command;

/// A LUN's limits; `None` is unlimited. Per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QosLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<u64>,
}

impl QosLimits {
    /// Refuses a limit of zero (it would stop the LUN; unlimited is `None`).
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in self.named() {
            if v == Some(0) {
                return Err(format!(
                    "{name} of 0 would stop the LUN; a limit is a positive number (leave it out, or `unlimited`, for none)"
                ));
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("read-iops", self.read_iops),
            ("write-iops", self.write_iops),
            ("read-bps", self.read_bps),
            ("write-bps", self.write_bps),
        ]
    }

    pub fn is_unlimited(&self) -> bool {
        self.named().iter().all(|(_, v)| v.is_none())
    }
}

impl std::fmt::Display for QosLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<String> = self
            .named()
            .iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
            .collect();
        if set.is_empty() {
            f.write_str("unlimited")
        } else {
            f.write_str(&set.join(","))
        }
    }
}

/// Which limits a command counts against, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read(u64),
    Write(u64),
    /// Neither: inquiries, reservations, TEST UNIT READY, ...
    Free,
}

/// The class of `cdb` on a LUN of `block_size`-byte blocks: reads by
/// their bytes, writes (WRITE, WRITE AND VERIFY, ORWRITE, COMPARE AND
/// WRITE, WRITE SAME, UNMAP, SYNCHRONIZE CACHE) by the bytes they send.
pub fn class_of(cdb: &[u8], block_size: u64) -> Class {
    let Ok(Some(command)) = crate::parse(cdb) else {
        return Class::Free;
    };
    match command {
        Command::Read { blocks, .. } => Class::Read(blocks.saturating_mul(block_size)),
        Command::Write { blocks, .. }
        | Command::WriteVerify { blocks, .. }
        | Command::OrWrite { blocks, .. } => Class::Write(blocks.saturating_mul(block_size)),
        // The compare data and the write data.
        Command::CompareAndWrite { blocks, .. } => {
            Class::Write(blocks.saturating_mul(block_size).saturating_mul(2))
        }
        Command::WriteSame { ndob, .. } => Class::Write(if ndob { 0 } else { block_size }),
        Command::Unmap { param_len } => Class::Write(u64::from(param_len)),
        Command::SynchronizeCache { .. } => Class::Write(0),
        _ => Class::Free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read10(blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x28;
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn classes() {
        assert_eq!(class_of(&read10(8), 512), Class::Read(4096));
        let mut w = read10(2);
        w[0] = 0x2a;
        assert_eq!(class_of(&w, 4096), Class::Write(8192));
        assert_eq!(
            class_of(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 512),
            Class::Write(0)
        );
        assert_eq!(class_of(&[0x00, 0, 0, 0, 0, 0], 512), Class::Free);
        assert_eq!(class_of(&[0xff], 512), Class::Free);
    }

    #[test]
    fn zero_is_refused_and_unlimited_shows() {
        let z = QosLimits {
            write_iops: Some(0),
            ..Default::default()
        };
        assert!(z.check().unwrap_err().contains("write-iops of 0"));
        assert_eq!(QosLimits::default().to_string(), "unlimited");
        let l: QosLimits = serde_json::from_str(r#"{"read-iops":5,"write-bps":7}"#).unwrap();
        assert_eq!(l.to_string(), "read-iops=5,write-bps=7");
        let e = serde_json::from_str::<QosLimits>(r#"{"read-ipos":5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
