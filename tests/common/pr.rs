//! Persistent-reservation commands as an initiator sends them, for the
//! tests that check what ferry LUNs do with them.
use std::time::Duration;

use ferry_initiator::{ConnectOptions, ScsiStatus, Session};

use super::Tgtd;

pub const HOST_A: &str = "iqn.2026-11.org.ferry:host-a";
pub const HOST_B: &str = "iqn.2026-11.org.ferry:host-b";

/// Logs `name` in to LUN 1 of target 1 with a fixed ISID: the same
/// initiator port every time, as a real host's would be.
pub fn connect(t: &Tgtd, name: &str, isid: u32) -> Session {
    connect_to(&t.url(1, 1), name, isid)
}

/// Logs `name` in to `url` with a fixed ISID.
pub fn connect_to(url: &str, name: &str, isid: u32) -> Session {
    let opts = ConnectOptions {
        initiator_name: name.to_string(),
        timeout: Duration::from_secs(10),
        isid: Some(isid),
        ..ConnectOptions::default()
    };
    Session::connect_with(url, &opts).unwrap()
}

pub fn prout(s: &mut Session, action: u8, kind: u8, key: u64, sa_key: u64) -> ScsiStatus {
    let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut params = [0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    s.raw_cdb(&cdb, Some(&params), 0).unwrap().status
}

/// READ KEYS: (generation, keys).
pub fn read_keys(s: &mut Session) -> (u32, Vec<u64>) {
    let r = s
        .raw_cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .unwrap();
    assert!(r.is_good(), "READ KEYS: {r:?}");
    let generation = u32::from_be_bytes(r.data[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    assert_eq!(r.data.len(), 8 + len, "the reply is exactly its length");
    let keys = r.data[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (generation, keys)
}

/// READ RESERVATION: (key, type) of the reservation, if any.
pub fn read_reservation(s: &mut Session) -> Option<(u64, u8)> {
    let r = s
        .raw_cdb(&[0x5e, 1, 0, 0, 0, 0, 0, 0, 64, 0], None, 64)
        .unwrap();
    assert!(r.is_good(), "READ RESERVATION: {r:?}");
    (r.data.len() >= 24).then(|| {
        (
            u64::from_be_bytes(r.data[8..16].try_into().unwrap()),
            r.data[21] & 0x0f,
        )
    })
}

pub fn write_status(s: &mut Session) -> ScsiStatus {
    let cdb = [0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    s.raw_cdb(&cdb, Some(&[0x5a; 512]), 0).unwrap().status
}

pub fn read_status(s: &mut Session) -> ScsiStatus {
    let cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    s.raw_cdb(&cdb, None, 512).unwrap().status
}
