//! Errors of the initiator: every one carries libiscsi's own description
//! (`iscsi_get_error`) where there is one, and CHECK CONDITIONs carry the
//! decoded sense so tests can assert on key/ASC/ASCQ.

use crate::scsi::{sense_key, ScsiStatus, Sense};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the initiator's calls can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL did not parse (`iscsi_parse_full_url`).
    #[error("invalid iSCSI URL {url:?}: {message}")]
    Url { url: String, message: String },

    /// Connecting, logging in or checking the LUN failed or timed out.
    #[error("connecting to {url}: {message}")]
    Connect { url: String, message: String },

    /// The command finished with CHECK CONDITION.
    #[error("{op}: CHECK CONDITION, {sense} ({message})")]
    CheckCondition {
        op: &'static str,
        sense: Sense,
        message: String,
    },

    /// The command finished with another non-GOOD status, or libiscsi gave
    /// up on it (cancelled, transport error, timeout).
    #[error("{op}: {status} ({message})")]
    Status {
        op: &'static str,
        status: ScsiStatus,
        message: String,
    },

    /// libiscsi refused or failed the call without any command status.
    #[error("{op}: {message}")]
    Iscsi { op: &'static str, message: String },

    /// The target answered, but not with what the command asks for
    /// (short data, a page that doesn't decode...).
    #[error("{op}: {message}")]
    Protocol { op: &'static str, message: String },

    /// A bad argument, caught before anything was sent.
    #[error("{0}")]
    Invalid(String),

    /// Reading or writing a local file (the load log).
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },

    /// A load log that doesn't parse.
    #[error("{path}:{line}: {message}")]
    Log {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
}

impl Error {
    /// The sense data, for a CHECK CONDITION.
    pub fn sense(&self) -> Option<Sense> {
        match self {
            Error::CheckCondition { sense, .. } => Some(*sense),
            _ => None,
        }
    }

    /// True for COMPARE AND WRITE's "the compare data did not match".
    pub fn is_miscompare(&self) -> bool {
        self.sense().is_some_and(|s| s.key == sense_key::MISCOMPARE)
    }

    /// True when the command ran out of time (the target did not answer).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Status {
                status: ScsiStatus::Timeout,
                ..
            }
        ) || matches!(self, Error::Connect { message, .. } if message.contains("timed out"))
    }
}
