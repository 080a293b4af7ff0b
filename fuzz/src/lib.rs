//! Shared pieces of ferry's fuzz targets: how each target reads its input
//! bytes, and encoders that write inputs in the same layout (for the seed
//! corpora, `examples/seeds.rs`).
//!
//! Every target reads its input with [`Input`], which never fails: a field
//! past the end reads as zero or empty, so every byte string is a valid
//! input and libFuzzer's mutations all reach the code under test. Lengths
//! inside an input are big-endian, like SCSI's.
#![forbid(unsafe_code)]

use std::sync::Arc;

use ferry_core::sim::{Faults, SimVolume};
use ferry_scsi::CacheMode;

/// A cursor over a fuzz input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let b = self.take(2);
        match b {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from(*hi) << 8,
            _ => 0,
        }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// A length-prefixed (u16) field.
    pub fn field(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Appends a length-prefixed (u16) field: the encoder of [`Input::field`].
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).expect("seed fields fit a u16 length");
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The LUN a block-command input describes in its first two bytes.
///
/// - byte 0, bit 0: logical block size, 512 (0) or 4096 (1);
/// - byte 0, bits 1-3: cache mode (index into `CacheMode::ALL`, modulo 5);
/// - byte 0, bit 4: the initiator's WCE bit;
/// - byte 0, bits 5-7: bytes past the last whole block, times 100 (a volume
///   whose size is not a multiple of the block size);
/// - byte 1: the number of blocks, modulo 128 (512-byte blocks) or 16
///   (4096-byte ones): at most 64 KiB, so a volume is cheap to make for
///   every input.
pub struct LunSetup {
    pub block_shift: u32,
    pub cache_mode: CacheMode,
    pub write_cache: bool,
    pub size: u64,
}

impl LunSetup {
    pub fn read(input: &mut Input<'_>) -> Self {
        let config = input.u8();
        let blocks = input.u8();
        let (block_shift, blocks) = if config & 1 == 0 {
            (9, u64::from(blocks % 128))
        } else {
            (12, u64::from(blocks % 16))
        };
        let mode = CacheMode::ALL[usize::from((config >> 1) & 0x07) % CacheMode::ALL.len()];
        LunSetup {
            block_shift,
            cache_mode: mode,
            write_cache: config & 0x10 != 0,
            size: (blocks << block_shift) + u64::from(config >> 5) * 100,
        }
    }

    /// A fresh in-memory volume of this size, with its fault switch.
    pub fn volume(&self) -> (Arc<SimVolume>, Arc<Faults>) {
        let faults = Faults::new();
        // Object size as a file volume reports it; it only matters to
        // allocation reports.
        let vol = SimVolume::new("fuzz", self.size, 4096, faults.clone());
        (vol, faults)
    }

    /// The LUN `execute` sees: this setup over `volume`, whose whole size
    /// the LUN serves, with `caw` its COMPARE AND WRITE lock.
    pub fn context<'a>(
        &self,
        volume: &'a dyn ferry_core::Volume,
        caw: &'a parking_lot::Mutex<()>,
    ) -> ferry_scsi::LunContext<'a> {
        ferry_scsi::LunContext {
            volume,
            block_shift: self.block_shift,
            capacity_blocks: self.size >> self.block_shift,
            write_cache: self.write_cache,
            cache_mode: self.cache_mode,
            caw_lock: caw,
        }
    }
}

/// The two setup bytes of [`LunSetup`]: 512-byte blocks, writeback with
/// WCE on, `blocks` blocks.
pub fn lun_512(blocks: u8) -> [u8; 2] {
    // bits 1-3 = index of writeback in CacheMode::ALL
    let wb = CacheMode::ALL
        .iter()
        .position(|m| *m == CacheMode::Writeback)
        .expect("writeback is a cache mode") as u8; // an index below 5
    [(wb << 1) | 0x10, blocks]
}

/// One command of a `cdb_exec` input: flags (bit 0: the volume's next
/// operation fails), the CDB (u8 length, at most 32 bytes), the data-in
/// allocation (u16), the data-out buffer (u16-prefixed).
pub fn put_command(out: &mut Vec<u8>, fail: bool, cdb: &[u8], data_in: u16, data_out: &[u8]) {
    out.push(u8::from(fail));
    out.push(u8::try_from(cdb.len()).expect("a CDB is short"));
    out.extend_from_slice(cdb);
    out.extend_from_slice(&data_in.to_be_bytes());
    put_field(out, data_out);
}

/// Most commands one `cdb_exec` input runs (enough for write, then read or
/// compare, then a flush and an UNMAP, on one volume).
pub const MAX_COMMANDS: usize = 8;

/// The initiator ports of the `pr_out` target, named as iSCSI nexuses are
/// (`<name>,i,0x<ISID>`), so TransportIDs in an input can name them.
pub const INITIATORS: [&str; 4] = [
    "iqn.2026-11.org.example:host-a,i,0x000000000001",
    "iqn.2026-11.org.example:host-a,i,0x000000000002",
    "iqn.2026-11.org.example:host-b,i,0x23d000000001",
    "iqn.2026-11.org.example:host-c,i,0x400001370000",
];

/// The target port every `pr_out` nexus goes through.
pub const TARGET_PORT: &str = "iqn.2026-11.org.example:lun0,t,0x0001";

/// What a `pr_out` record does.
pub mod pr_step {
    /// PERSISTENT RESERVE OUT with the record's CDB (opcode forced) and
    /// parameter list.
    pub const OUT: u8 = 0;
    /// PERSISTENT RESERVE IN with the record's CDB (opcode forced).
    pub const IN: u8 = 1;
    /// Any other command, checked against the reservation.
    pub const CHECK: u8 = 2;
    /// An administrator's clear (`ferry pr clear`).
    pub const CLEAR: u8 = 3;
}

/// One record of a `pr_out` input: the nexus (index into [`INITIATORS`];
/// bit 7 set makes the save fail), the step, the CDB (u8 length), the
/// parameter list (u16-prefixed).
pub fn put_pr_step(out: &mut Vec<u8>, nexus: u8, step: u8, cdb: &[u8], params: &[u8]) {
    out.push(nexus);
    out.push(step);
    out.push(u8::try_from(cdb.len()).expect("a CDB is short"));
    out.extend_from_slice(cdb);
    put_field(out, params);
}

/// An iSCSI TransportID in format 01b (name and ISID), null-terminated and
/// padded to a multiple of four bytes (SPC-4 7.6.4.6).
pub fn iscsi_transport_id(port: &str) -> Vec<u8> {
    let padded = (port.len() + 1).div_ceil(4) * 4;
    let mut out = vec![0x45, 0];
    out.extend_from_slice(&u16::try_from(padded).expect("short name").to_be_bytes());
    out.extend_from_slice(port.as_bytes());
    out.resize(4 + padded, 0);
    out
}

/// A PR OUT CDB for `action` with `type_code` (scope 0) and the
/// parameter list length `len`.
pub fn prout_cdb(action: u8, type_code: u8, len: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = action;
    c[2] = type_code;
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// The basic PR OUT parameter list (SPC-4 6.16.3): reservation key,
/// service action key, flags (SPEC_I_PT 0x08, ALL_TG_PT 0x04, APTPL 0x01).
pub fn prout_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

/// An UNMAP parameter list (SBC-3 5.28.2) of (LBA, blocks) descriptors.
pub fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    let body = u16::try_from(16 * descs.len()).expect("few descriptors");
    l[0..2].copy_from_slice(&(body + 6).to_be_bytes());
    l[2..4].copy_from_slice(&body.to_be_bytes());
    for &(lba, n) in descs {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

/// What a `map_json` input holds after its first byte (the byte modulo 4).
pub mod map_mode {
    /// A whole `ClusterMap` in JSON.
    pub const CLUSTER_MAP: u8 = 0;
    /// The embedded store's `map.json`, read through `FileStore::snapshot`.
    pub const MAP_FILE: u8 = 1;
    /// One document of the map (target, LUN, initiator or node).
    pub const DOCUMENT: u8 = 2;
    /// A document agents write (live node, status, migration request).
    pub const STATE: u8 = 3;
}
