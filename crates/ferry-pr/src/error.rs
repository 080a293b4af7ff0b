//! What can go wrong with a LUN's saved reservations.
use std::fmt;

/// An error of the reservations' saved form or of the store keeping it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrError {
    /// The bytes are not a reservation document this version reads.
    Unreadable { why: String },
    /// The store keeping them failed (`what` names it: a volume's
    /// metadata, a ZooKeeper document).
    Store { what: String, why: String },
    /// Another gateway wrote the document since this one claimed it: this
    /// gateway no longer serves the LUN and must not save over it.
    Fenced { what: String },
    /// A pointer that names no usable home.
    BadPointer { what: String, why: String },
}

impl PrError {
    pub fn store(what: impl Into<String>, why: impl fmt::Display) -> Self {
        PrError::Store {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

impl fmt::Display for PrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrError::Unreadable { why } => write!(f, "unreadable reservations: {why}"),
            PrError::Store { what, why } => write!(f, "reservations in {what}: {why}"),
            PrError::Fenced { what } => write!(
                f,
                "reservations in {what}: another gateway has written them since this one \
                 claimed them, so this one no longer serves the LUN"
            ),
            PrError::BadPointer { what, why } => write!(f, "reservation pointer {what}: {why}"),
        }
    }
}

impl std::error::Error for PrError {}
