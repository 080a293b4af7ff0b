//! UNMAP (SBC-3 5.28): the CDB's parameter list length and the parameter
//! list the initiator sent, through `ferry_scsi::parse` and
//! `ferry_scsi::execute` on an in-memory volume full of data.
//!
//! Input: the LUN (`LunSetup`, two bytes), the CDB's byte 1 (ANCHOR) and
//! its PARAMETER LIST LENGTH (u16), then the data-out buffer. Checks
//! besides "no panic" (the executor's promise): a refused list changes
//! nothing, and an accepted one zeroes exactly the blocks its descriptors
//! name.
#![no_main]

use std::sync::OnceLock;

use ferry_core::Volume;
use ferry_fuzz::{Input, LunSetup};
use ferry_scsi::{execute, parse, Command};
use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;

/// Non-zero bytes to fill the largest volume an input describes with.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| (0..(64 << 10) + 700).map(|i| (i % 251) as u8 | 1).collect())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = LunSetup::read(&mut input);
    let byte1 = input.u8();
    let param_len = input.u16();
    let list = input.rest();
    let (vol, _faults) = setup.volume();
    let pattern = &pattern()[..vol.size() as usize]; // ≤ 64 KiB + 700
    vol.fill(pattern);
    let caw = Mutex::new(());
    let lun = setup.context(vol.as_ref(), &caw);
    let mut cdb = [0x42, byte1, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
    let cmd = match parse(&cdb) {
        Ok(Some(cmd)) => cmd,
        Ok(None) => panic!("UNMAP is a block command"),
        Err(_) => return,
    };
    assert_eq!(
        cmd,
        Command::Unmap {
            param_len: u32::from(param_len)
        }
    );
    let result = execute(&lun, &cmd, list, &mut []);
    let after = vol.contents();
    if result.is_err() {
        assert!(after == pattern, "a refused UNMAP changed the volume");
        return;
    }
    // The blocks the descriptors name, as SBC-3 lays the list out.
    let list = &list[..list.len().min(usize::from(param_len))];
    let mut expect = pattern.to_vec();
    if list.len() >= 8 {
        let desc_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        let descs = &list[8..];
        for d in descs[..desc_len.min(descs.len()) / 16 * 16].chunks_exact(16) {
            let lba = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
            let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().expect("4 bytes")));
            if blocks > 0 {
                // Accepted, so within the volume (≤ 64 KiB).
                let start = (lba << setup.block_shift) as usize;
                let end = start + ((blocks << setup.block_shift) as usize);
                expect[start..end].fill(0);
            }
        }
    }
    assert!(after == expect, "UNMAP zeroed other blocks than it names");
});
