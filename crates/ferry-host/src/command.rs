//! The one command path: every SCSI command a front-end hands a LUN.
//!
//! Both front-ends are adapters around [`Lun::execute`]: tgtd's backing
//! store and tcmu-runner's handler turn their command structures into a
//! nexus, a CDB and the data buffers, call it, and complete the command
//! with what it returns. Everything in between happens here, once:
//!
//! 1. PERSISTENT RESERVE IN/OUT are answered from the LUN's reservations
//!    (a PR OUT saved before it is acknowledged, see `ferry_pr`);
//! 2. any other CDB is parsed (`ferry_scsi::cdb`), then checked against
//!    the reservations with the LUN's PR gate held shared until the
//!    command ends, so a PREEMPT AND ABORT that returned has no command
//!    of the preempted host still running;
//! 3. the volume under the LUN is taken once (a migration starting waits
//!    for the command to end, so its copier misses no write);
//! 4. `ferry_scsi::exec` runs it against that volume with the LUN's
//!    geometry, cache mode and write-cache bit, and the LUN's COMPARE AND
//!    WRITE lock.
//!
//! The answer is the number of data-in bytes filled, or a [`Refusal`]
//! (RESERVATION CONFLICT, or CHECK CONDITION with sense).
use std::sync::atomic::Ordering;
use std::time::Instant;

use ferry_pr::{Nexus, Refusal};
use ferry_scsi::{Command, LunContext, Sense};

use crate::lun::Lun;
use crate::metrics::CommandKind;
use crate::HostError;

const PERSISTENT_RESERVE_IN: u8 = 0x5e;
const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// Logical block sizes a LUN may have: 512 bytes to 64 KiB, powers of two.
pub fn block_shift(block_size: u32) -> Option<u32> {
    (block_size.is_power_of_two() && (512..=65536).contains(&block_size))
        .then(|| block_size.trailing_zeros())
}

/// The most bytes one piece of a long block-by-block command covers.
pub const HOLD_LIMIT: u64 = 64 << 20;

impl Lun {
    /// Carries out one command from `nexus`: `data_out` is what the
    /// initiator sent, `data_in` the buffer returned to it (its length is
    /// the initiator's allocation). Returns the data-in bytes filled.
    /// Never panics on any CDB or buffer size. Every command is counted
    /// in the LUN's metrics (`crate::metrics`), lock-free.
    pub fn execute(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> Result<usize, Refusal> {
        let started = Instant::now();
        let running = self.metrics.enter();
        let outcome = self.execute_counted(nexus, cdb, data_out, data_in);
        drop(running);
        let bytes = match &outcome {
            Ok(filled) => data_out.len() + filled,
            Err(_) => 0,
        };
        self.metrics.record(
            CommandKind::of(cdb),
            bytes as u64,
            started.elapsed(),
            outcome.as_ref().err(),
        );
        outcome
    }

    fn execute_counted(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> Result<usize, Refusal> {
        match cdb.first() {
            Some(&(PERSISTENT_RESERVE_IN | PERSISTENT_RESERVE_OUT))
                if self.reservations_passive =>
            {
                return Err(Refusal::Check(Sense::invalid_opcode()))
            }
            Some(&PERSISTENT_RESERVE_IN) => return self.pr_in(nexus, cdb, data_in),
            Some(&PERSISTENT_RESERVE_OUT) => return self.pr_out(nexus, cdb, data_out).map(|()| 0),
            _ => {}
        }
        let command = ferry_scsi::parse(cdb)
            .map_err(Refusal::Check)?
            .ok_or(Refusal::Check(Sense::invalid_opcode()))?;
        if self.reservations_passive {
            // The front-end's core answers reservations (see
            // OpenOptions::kernel_reservations): nothing to check here.
            return self.run(&command, data_out, data_in);
        }
        self.pr_checked(nexus, cdb, || self.run(&command, data_out, data_in))?
    }

    /// Runs a parsed command on the volume under the LUN, which it holds
    /// (shared) while it runs. A command that walks a long stretch block
    /// by block runs as pieces of at most [`HOLD_LIMIT`] bytes, each
    /// holding the volume anew, so a migration start or a snapshot switch
    /// waiting for the volume never waits for a whole-LUN WRITE SAME.
    fn run(
        &self,
        command: &Command,
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> Result<usize, Refusal> {
        let shift = self.block_shift.load(Ordering::Relaxed);
        let capacity = self.capacity_blocks.load(Ordering::Relaxed);
        let Some(pieces) = ferry_scsi::exec::pieces(command, shift, capacity, HOLD_LIMIT) else {
            return self.run_held(command, data_out, data_in);
        };
        for piece in pieces {
            self.run_held(&piece, data_out, &mut [])?;
        }
        Ok(0)
    }

    fn run_held(
        &self,
        command: &Command,
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> Result<usize, Refusal> {
        let volume = self.current_volume();
        let lun = LunContext {
            volume: volume.as_ref(),
            block_shift: self.block_shift.load(Ordering::Relaxed),
            capacity_blocks: self.capacity_blocks.load(Ordering::Relaxed),
            write_cache: self.write_cache.load(Ordering::Relaxed),
            cache_mode: self.cache_mode(),
            caw_lock: &self.caw,
        };
        ferry_scsi::execute(&lun, command, data_out, data_in).map_err(Refusal::Check)
    }

    /// Sets the geometry the front-end reports to initiators: blocks of
    /// `block_size` bytes, `blocks` of them (`None`: as many as the volume
    /// holds). The LUN may be smaller than its volume (the rest is out of
    /// reach; returned as a note), never larger.
    pub fn set_geometry(
        &self,
        block_size: u32,
        blocks: Option<u64>,
    ) -> Result<Option<String>, HostError> {
        let bad = |why: String| HostError::Geometry {
            lun: self.spec().to_string(),
            why,
        };
        let shift = block_shift(block_size).ok_or_else(|| {
            bad(format!(
                "unsupported block size {block_size} (a power of two from 512 to 65536)"
            ))
        })?;
        let volume = ferry_core::Volume::size(self);
        let blocks = match blocks {
            Some(b) => b,
            None if !volume.is_multiple_of(u64::from(block_size)) => {
                return Err(bad(format!(
                    "the volume's size {volume} is not a multiple of the {block_size}-byte block"
                )))
            }
            None => volume >> shift,
        };
        let bytes = blocks
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| bad(format!("{blocks} blocks of {block_size} bytes overflow")))?;
        if bytes > volume {
            return Err(bad(format!(
                "the LUN would be {bytes} bytes but the volume is only {volume}: \
                 make it size={volume} (or less)"
            )));
        }
        self.block_shift.store(shift, Ordering::Relaxed);
        self.capacity_blocks.store(blocks, Ordering::Relaxed);
        Ok((bytes < volume).then(|| {
            format!(
                "the LUN ({bytes} bytes) is smaller than its volume ({volume}); \
                 the rest of the volume is not served"
            )
        }))
    }

    /// The logical block size initiators see.
    pub fn block_size(&self) -> u32 {
        1 << self.block_shift.load(Ordering::Relaxed)
    }

    /// The capacity initiators see, in logical blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks.load(Ordering::Relaxed)
    }

    /// Records the write-cache-enabled bit (mode page 8 WCE) initiators
    /// see, which the front-end's core keeps (tgtd's mode page,
    /// tcmu-runner's device); writes follow it in the modes that leave it
    /// to the initiator.
    pub fn set_write_cache(&self, on: bool) {
        self.write_cache.store(on, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn lun(dir: &std::path::Path, size: u64) -> Arc<Lun> {
        let path = dir.join("v.img");
        ferry_file::FileVolume::create(&path, size).unwrap();
        Lun::open(&format!("file:{}", path.display())).unwrap()
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn reads_and_writes_go_to_the_volume_in_the_luns_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let lun = lun(dir.path(), 1 << 20);
        let n = Nexus::new("i,i,0x1", "t");
        assert_eq!(lun.block_size(), 512);
        assert_eq!(lun.capacity_blocks(), 2048);
        lun.set_geometry(4096, None).unwrap();
        assert_eq!(lun.capacity_blocks(), 256);
        lun.execute(&n, &rw10(0x2a, 3, 1), &[7u8; 4096], &mut [])
            .unwrap();
        let mut back = vec![0u8; 4096];
        let got = ferry_core::Volume::read_at(lun.as_ref(), &mut back, 3 * 4096);
        got.unwrap();
        assert!(back.iter().all(|&b| b == 7));
        let mut buf = vec![0u8; 8192];
        assert_eq!(lun.execute(&n, &rw10(0x28, 2, 2), &[], &mut buf), Ok(8192));
        assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 7));
    }

    #[test]
    fn the_luns_capacity_bounds_commands_not_the_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let lun = lun(dir.path(), 1 << 20);
        let n = Nexus::new("i,i,0x1", "t");
        let note = lun.set_geometry(512, Some(1024)).unwrap();
        assert!(note.unwrap().contains("smaller"));
        // The last block of the LUN, then the first past it: a READ,
        // a VERIFY and an ORWRITE are all refused there.
        assert_eq!(
            lun.execute(&n, &rw10(0x28, 1023, 1), &[], &mut [0; 512]),
            Ok(512)
        );
        for op in [0x28u8, 0x2f, 0x8b] {
            let cdb = if op == 0x8b {
                let mut c = [0u8; 16];
                c[0] = op;
                c[2..10].copy_from_slice(&1024u64.to_be_bytes());
                c[13] = 1;
                c.to_vec()
            } else {
                rw10(op, 1024, 1).to_vec()
            };
            let r = lun.execute(&n, &cdb, &[0; 512], &mut [0; 512]);
            assert_eq!(
                r,
                Err(Refusal::Check(Sense::out_of_range())),
                "opcode {op:#x}"
            );
        }
        assert!(
            lun.set_geometry(512, Some(4096)).is_err(),
            "larger than the volume"
        );
        assert!(lun.set_geometry(1000, None).is_err());
    }

    #[test]
    fn unknown_and_malformed_cdbs_are_refused_with_sense() {
        let dir = tempfile::tempdir().unwrap();
        let lun = lun(dir.path(), 1 << 20);
        let n = Nexus::new("i,i,0x1", "t");
        assert_eq!(
            lun.execute(&n, &[0xff, 0, 0, 0, 0, 0], &[], &mut []),
            Err(Refusal::Check(Sense::invalid_opcode()))
        );
        assert!(matches!(
            lun.execute(&n, &[], &[], &mut []),
            Err(Refusal::Check(_))
        ));
        assert!(matches!(
            lun.execute(&n, &[0x28, 0], &[], &mut []),
            Err(Refusal::Check(_))
        ));
    }

    #[test]
    fn reservations_are_answered_and_enforced_on_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let lun = lun(dir.path(), 1 << 20);
        let (a, b) = (Nexus::new("a,i,0x1", "t"), Nexus::new("b,i,0x2", "t"));
        let prout = |action: u8, kind: u8, key: u64, sa_key: u64| {
            let mut p = [0u8; 24];
            p[0..8].copy_from_slice(&key.to_be_bytes());
            p[8..16].copy_from_slice(&sa_key.to_be_bytes());
            ([0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0], p)
        };
        let (cdb, p) = prout(0, 0, 0, 1);
        lun.execute(&a, &cdb, &p, &mut []).unwrap();
        let (cdb, p) = prout(1, 1, 1, 0); // a: Write Exclusive
        lun.execute(&a, &cdb, &p, &mut []).unwrap();
        let write = rw10(0x2a, 0, 1);
        assert_eq!(
            lun.execute(&b, &write, &[1; 512], &mut []),
            Err(Refusal::Conflict)
        );
        assert_eq!(lun.execute(&a, &write, &[1; 512], &mut []), Ok(0));
        // READ KEYS sees a's key.
        let mut keys = [0u8; 16];
        let n = lun
            .execute(&b, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 16, 0], &[], &mut keys)
            .unwrap();
        assert_eq!(n, 16);
        assert_eq!(&keys[8..16], &1u64.to_be_bytes());
    }

    #[test]
    fn a_whole_lun_write_same_in_pieces_stamps_every_block() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = 2 * (HOLD_LIMIT >> 12) + 7;
        let lun = lun(dir.path(), blocks << 12);
        lun.set_geometry(4096, None).unwrap();
        let n = Nexus::new("i,i,0x1", "t");
        // WRITE SAME(16), LBDATA, from LBA 1 to the end.
        let mut cdb = [0u8; 16];
        cdb[0] = 0x93;
        cdb[1] = 0x02;
        cdb[9] = 1;
        lun.execute(&n, &cdb, &[0xee; 4096], &mut []).unwrap();
        let per = HOLD_LIMIT >> 12;
        for lba in [0, 1, per - 1, per, per + 1, 2 * per, blocks - 1] {
            let mut b = [0u8; 8];
            ferry_core::Volume::read_at(lun.as_ref(), &mut b, lba << 12).unwrap();
            let want = if lba == 0 {
                [0; 8]
            } else {
                let mut w = [0xee; 8];
                w[..4].copy_from_slice(&(lba as u32).to_be_bytes());
                w
            };
            assert_eq!(b, want, "LBA {lba}");
        }
    }

    #[test]
    fn a_lun_whose_target_answers_reservations_ignores_and_carries_ferrys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        ferry_file::FileVolume::create(&path, 1 << 20).unwrap();
        let spec = format!("file:{}", path.display());
        // Served by tgtd first: host a holds Write Exclusive.
        let a = Nexus::new("a,i,0x1", "t");
        {
            let lun = Lun::open(&spec).unwrap();
            let mut p = [0u8; 24];
            p[8..16].copy_from_slice(&1u64.to_be_bytes());
            lun.execute(&a, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p, &mut [])
                .unwrap();
            p[..8].copy_from_slice(&1u64.to_be_bytes());
            p[8..16].fill(0);
            lun.execute(&a, &[0x5f, 1, 1, 0, 0, 0, 0, 0, 24, 0], &p, &mut [])
                .unwrap();
        }
        let slot = std::fs::read(dir.path().join("v.img.ferry-pr")).unwrap();
        // Then by LIO, which answers reservations in the kernel.
        let opts = crate::OpenOptions {
            kernel_reservations: true,
            ..Default::default()
        };
        let lun = Lun::open_opts(&spec, opts).unwrap();
        let lio = Nexus::new("lio", "lio");
        assert_eq!(
            lun.execute(&lio, &rw10(0x2a, 0, 1), &[3; 512], &mut []),
            Ok(0)
        );
        assert_eq!(
            lun.execute(&lio, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], &mut [0; 8]),
            Err(Refusal::Check(Sense::invalid_opcode()))
        );
        // A migration carries the slot to the new volume as it was.
        let target = format!("file:{}", dir.path().join("w.img").display());
        lun.start_migration(&target, &Default::default()).unwrap();
        assert!(lun.wait_idle(std::time::Duration::from_secs(30)));
        lun.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("w.img.ferry-pr")).unwrap(),
            slot
        );
    }
}
