//! Cache modes (seed 003): how a LUN's writes reach stable storage, and
//! what it tells initiators about it (the WCE bit of the caching mode
//! page). The names are the ones QEMU and libvirt use, so admins know
//! them.
//!
//! | mode | WCE shown | each write flushed | FUA / SYNCHRONIZE CACHE |
//! |---|---|---|---|
//! | writethrough | 0 | yes | flush |
//! | directsync | 0 | yes | flush |
//! | writeback | as set (default 1) | only with WCE=0 | flush |
//! | none | as set (default 1) | only with WCE=0 | flush |
//! | unsafe | 1 | never | ignored |
//!
//! ferry keeps no write cache of its own: `writeback` and `none` differ
//! only in the page cache of file volumes beneath (RBD images always run
//! with librbd's cache off), and `directsync` is `writethrough` by the
//! same token. `unsafe` acknowledges writes that a crash can lose, even
//! flushed ones: for scratch LUNs only, and never shared.
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Writethrough,
    None,
    Writeback,
    Unsafe,
    Directsync,
}

impl CacheMode {
    pub const ALL: [CacheMode; 5] = [
        CacheMode::Writethrough,
        CacheMode::None,
        CacheMode::Writeback,
        CacheMode::Unsafe,
        CacheMode::Directsync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Writethrough => "writethrough",
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Unsafe => "unsafe",
            CacheMode::Directsync => "directsync",
        }
    }

    /// Modes that keep every host's view coherent when several initiators
    /// share the LUN: no gateway-side cache another host cannot see, and
    /// flushes honoured.
    pub fn safe_for_shared(self) -> bool {
        matches!(
            self,
            CacheMode::Writethrough | CacheMode::None | CacheMode::Directsync
        )
    }

    /// The WCE bit initiators must see, if the mode fixes it.
    pub fn forced_wce(self) -> Option<bool> {
        match self {
            CacheMode::Writethrough | CacheMode::Directsync => Some(false),
            CacheMode::Unsafe => Some(true),
            CacheMode::Writeback | CacheMode::None => None,
        }
    }

    /// Whether a write must be flushed before it is acknowledged, given
    /// the WCE bit the initiator set and the command's FUA bit.
    pub fn flush_write(self, wce: bool, fua: bool) -> bool {
        match self {
            CacheMode::Writethrough | CacheMode::Directsync => true,
            CacheMode::Writeback | CacheMode::None => fua || !wce,
            CacheMode::Unsafe => false,
        }
    }

    /// Whether SYNCHRONIZE CACHE flushes.
    pub fn honours_flush(self) -> bool {
        self != CacheMode::Unsafe
    }

    /// A compact code for atomics.
    pub fn to_u8(self) -> u8 {
        match self {
            CacheMode::Writethrough => 0,
            CacheMode::None => 1,
            CacheMode::Writeback => 2,
            CacheMode::Unsafe => 3,
            CacheMode::Directsync => 4,
        }
    }

    pub fn from_u8(v: u8) -> CacheMode {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.to_u8() == v)
            .unwrap_or_default()
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown cache mode {s:?} (one of: writethrough, none, writeback, unsafe, directsync)"
                )
            })
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for m in CacheMode::ALL {
            assert_eq!(m.as_str().parse::<CacheMode>().unwrap(), m);
            assert_eq!(CacheMode::from_u8(m.to_u8()), m);
        }
        assert!("fast".parse::<CacheMode>().is_err());
    }

    #[test]
    fn flush_policy_per_mode() {
        use CacheMode::*;
        for (wce, fua) in [(false, false), (false, true), (true, false), (true, true)] {
            assert!(Writethrough.flush_write(wce, fua));
            assert!(Directsync.flush_write(wce, fua));
            assert!(!Unsafe.flush_write(wce, fua));
            assert_eq!(Writeback.flush_write(wce, fua), fua || !wce);
            assert_eq!(None.flush_write(wce, fua), fua || !wce);
        }
        assert!(!Unsafe.honours_flush());
        assert!(Writeback.honours_flush());
    }
}
