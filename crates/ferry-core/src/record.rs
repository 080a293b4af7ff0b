//! The migration record: what a target knows about its migration.
//!
//! It lives with the target (see [`crate::MetaStore`]) so that opening the
//! target by name alone finds the source ("original volume info"), the region
//! size and the state. It is stored as JSON followed by a CRC32 trailer line;
//! a record whose checksum does not match is reported as corrupt, never
//! guessed at.
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the record layout this build writes and reads.
pub const RECORD_FORMAT: u32 = 1;
const TRAILER: &str = "\ncrc32=";

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// The copier is moving regions; I/O is routed per region.
    Copying,
    /// Every region is on the target; waiting for commit (or abort).
    Copied,
    /// The target stands alone; the source is no longer used.
    Committed,
    /// Abort in progress: regions written since the start are copied back.
    Aborting,
    /// The source holds everything again; the target is discarded.
    Aborted,
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MigrationState::Copying => "copying",
            MigrationState::Copied => "copied",
            MigrationState::Committed => "committed",
            MigrationState::Aborting => "aborting",
            MigrationState::Aborted => "aborted",
        };
        f.write_str(s)
    }
}

/// The durable description of one migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub format: u32,
    /// Random id, shared with the source marker's logs.
    pub id: String,
    /// Spec of the source volume, enough to reopen it.
    pub source: String,
    /// Identity of the original volume (size, object size, backend ids...).
    pub source_info: BTreeMap<String, String>,
    /// Spec of the target volume.
    pub target: String,
    /// Bytes migrated: the source's size.
    pub size: u64,
    /// Bytes covered by one index bit.
    pub region_size: u64,
    pub state: MigrationState,
    /// Copier controls, kept here so they survive a restart.
    pub paused: bool,
    /// Copier rate limit in bytes per second; `None` is unlimited.
    pub rate_limit: Option<u64>,
    /// Whether the copier is paced by the foreground's impact budget
    /// (`crate::pace`); off, it copies flat out (or at `rate_limit`).
    pub adaptive: bool,
    /// The impact budget in percent of foreground latency; `None`: the
    /// default (`crate::pace::DEFAULT_BUDGET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact_percent: Option<u32>,
    /// The floor copy rate in bytes per second; `None`: the default
    /// (`crate::pace::DEFAULT_FLOOR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_rate: Option<u64>,
    /// The copier's weight in the node's copy budget; `None`: the default
    /// (`crate::share::DEFAULT_PRIORITY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    pub created_unix: u64,
    pub updated_unix: u64,
}

/// Seconds since the Unix epoch, 0 if the clock is before it.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MigrationRecord {
    /// Serializes with the checksum trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a record always serializes");
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(format!("{TRAILER}{crc:08x}\n").as_bytes());
        out
    }

    /// Parses and verifies a stored record. `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let corrupt = |why: String| Error::Corrupt {
            what: what.to_string(),
            why,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("record is not UTF-8".into()))?;
        let at = text
            .rfind(TRAILER)
            .ok_or_else(|| corrupt("record has no checksum trailer".into()))?;
        let (body, trailer) = text.split_at(at);
        let stored = u32::from_str_radix(trailer[TRAILER.len()..].trim(), 16)
            .map_err(|_| corrupt("record checksum is not hexadecimal".into()))?;
        let actual = crc32fast::hash(body.as_bytes());
        if stored != actual {
            return Err(corrupt(format!(
                "record checksum {stored:08x} does not match contents ({actual:08x})"
            )));
        }
        let rec: MigrationRecord =
            serde_json::from_str(body).map_err(|e| corrupt(format!("record is not valid: {e}")))?;
        if rec.format != RECORD_FORMAT {
            return Err(corrupt(format!(
                "record format {} is not supported (this build reads {RECORD_FORMAT})",
                rec.format
            )));
        }
        if !crate::index::region_size_ok(rec.region_size) {
            return Err(corrupt(format!(
                "record region size {} is invalid",
                rec.region_size
            )));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MigrationRecord {
        MigrationRecord {
            format: RECORD_FORMAT,
            id: "abc".into(),
            source: "file:/a".into(),
            source_info: BTreeMap::from([("size".into(), "4096".into())]),
            target: "file:/b".into(),
            size: 4096,
            region_size: 4096,
            state: MigrationState::Copying,
            paused: false,
            rate_limit: Some(10),
            adaptive: true,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            created_unix: 1,
            updated_unix: 2,
        }
    }

    #[test]
    fn record_round_trips() {
        let rec = sample();
        assert_eq!(MigrationRecord::decode(&rec.encode(), "t").unwrap(), rec);
    }

    #[test]
    fn flipped_byte_is_reported_corrupt() {
        let mut bytes = sample().encode();
        let at = bytes.iter().position(|&b| b == b'4').unwrap();
        bytes[at] = b'5';
        let err = MigrationRecord::decode(&bytes, "t").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn truncated_record_is_reported_corrupt() {
        let bytes = sample().encode();
        let err = MigrationRecord::decode(&bytes[..bytes.len() / 2], "t").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }));
    }
}
