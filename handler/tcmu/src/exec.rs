//! Carrying out one callout against a device's ferry LUN, in safe Rust:
//! every callout becomes one call of [`ferry_host::Lun::execute`].
//!
//! tcmu-runner calls its handlers per kind of work rather than per
//! command: `read`/`write` with an offset and a length (for READ and
//! WRITE, and for the sub-I/Os of commands it carries out itself, such as
//! WRITE AND VERIFY's read-back or EXTENDED COPY), `flush`, `unmap` with
//! one range, and `writesame`/`caw` and `handle_cmd` with the command
//! itself. The shim hands over the command's data buffers as slices (the
//! iovec segments in tcmu's ring); this module turns the callout into the
//! CDB it stands for ([`read_cdb`], [`write_cdb`], [`SYNCHRONIZE_CACHE`],
//! [`unmap_request`]; the command's own CDB for the others), runs it
//! through the LUN's one command path (range check against the LUN's
//! geometry, cache mode and WCE, the COMPARE AND WRITE lock, the volume
//! under any migration) and returns a [`Completion`]: the TCMU status
//! and, when a status cannot say it all, fixed sense bytes for
//! `sense_buf`.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use ferry_host::{Lun, Nexus, Refusal};
use ferry_scsi::cdb::op;
use ferry_scsi::sense::{asc, key};
use ferry_scsi::Sense;

use crate::ffi::sts;

/// A LUN as the handler serves it: its ALUA target port, which holds the
/// open LUN while the node's group is active.
pub struct DevState {
    pub port: Arc<ferry_host::LunPort>,
    /// The configured spec, for messages.
    pub spec: String,
    /// The device's logical block size.
    pub block_size: u32,
}

impl DevState {
    /// The open LUN, or the completion a command gets while the port is
    /// not active (LIO refuses media access itself in a non-active
    /// group; this covers what reaches the handler all the same).
    /// A command reaching a device whose port the agent has not set yet
    /// (tcmu-runner restarted: the device reopened standby while LIO
    /// still says active) is told transitioning, which initiators retry,
    /// until the agent's next pass turns the port active.
    pub fn lun(&self) -> Result<Arc<Lun>, Completion> {
        self.port.lun().ok_or_else(|| {
            let state = if self.port.configured() {
                self.port.state()
            } else {
                ferry_scsi::alua::AccessState::Transitioning
            };
            completion(Err(state.refusal().unwrap_or(Sense::internal_failure())))
        })
    }

    /// Runs `cdb` on the open LUN ([`run`]), or answers with the port's
    /// state. The LUN is held for the whole command, so a demotion waits
    /// for it before it closes the volume.
    pub fn run(&self, cdb: &[u8], data_out: &[&[u8]], data_in: &mut [&mut [u8]]) -> Completion {
        match self.lun() {
            Ok(lun) => run(&lun, cdb, data_out, data_in),
            Err(c) => c,
        }
    }
}

/// How to complete a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: i32,
    /// Sense to copy into `sense_buf` (only with `PASSTHROUGH_ERR`).
    pub sense: Option<[u8; 18]>,
}

impl Completion {
    pub const OK: Completion = Completion {
        status: sts::OK,
        sense: None,
    };
}

/// Maps sense to a TCMU status. Where libtcmu builds exactly this sense
/// from a status, the status is used (libtcmu writes `sense_buf` at
/// completion, so a command's sub-commands completing on several threads
/// never write it concurrently); anything else, and anything carrying an
/// INFORMATION field, is passed through as fixed-format sense bytes.
pub fn completion(result: Result<(), Sense>) -> Completion {
    let s = match result {
        Ok(()) => return Completion::OK,
        Err(s) => s,
    };
    let status = match (s.key, s.asc, s.info) {
        (key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE, None) => sts::RANGE,
        (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB, None) => sts::INVALID_CDB,
        (key::ILLEGAL_REQUEST, asc::INVALID_OPCODE, None) => sts::INVALID_CMD,
        (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST, None) => {
            sts::INVALID_PARAM_LIST
        }
        (key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH, None) => sts::INVALID_PARAM_LIST_LEN,
        (key::MEDIUM_ERROR, asc::WRITE_ERROR, None) => sts::WR_ERR,
        (key::MEDIUM_ERROR, asc::READ_ERROR, None) => sts::RD_ERR,
        (key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE, None) => sts::HW_ERR,
        _ => {
            return Completion {
                status: sts::PASSTHROUGH_ERR,
                sense: Some(s.fixed()),
            }
        }
    };
    Completion {
        status,
        sense: None,
    }
}

/// The nexus of every command. LIO answers PERSISTENT RESERVE IN/OUT in
/// the kernel and tells TCMU handlers nothing about sessions, so a LIO
/// LUN is opened with `kernel_reservations` (`crate::device::open`) and
/// never checks this nexus against anything.
fn lio_nexus() -> &'static Nexus {
    static NEXUS: OnceLock<Nexus> = OnceLock::new();
    NEXUS.get_or_init(|| Nexus::new("lio", "lio"))
}

/// Runs `cdb` on the LUN with the command's data-out and data-in
/// segments.
pub fn run(lun: &Lun, cdb: &[u8], data_out: &[&[u8]], data_in: &mut [&mut [u8]]) -> Completion {
    let data = gather(data_out);
    let result = match data_in {
        [] => lun.execute(lio_nexus(), cdb, &data, &mut []).map(drop),
        [one] => lun.execute(lio_nexus(), cdb, &data, one).map(drop),
        many => BOUNCE.with_borrow_mut(|buf| {
            // A worker's buffer, kept between commands: allocating and
            // freeing a MiB per read (mmap and munmap, with a TLB
            // shootdown across the workers each time) cost more than the
            // read itself at QD8.
            let total: usize = many.iter().map(|s| s.len()).sum();
            buf.clear();
            buf.resize(total, 0);
            let r = lun.execute(lio_nexus(), cdb, &data, buf).map(|n| {
                let mut at = 0;
                for seg in many.iter_mut() {
                    if at >= n {
                        break;
                    }
                    let k = seg.len().min(n - at);
                    seg[..k].copy_from_slice(&buf[at..at + k]);
                    at += k;
                }
            });
            if buf.capacity() > BOUNCE_KEEP {
                *buf = Vec::new();
            }
            r
        }),
    };
    completion(result.map_err(|r| match r {
        Refusal::Check(s) => s,
        // Cannot happen (see lio_nexus); TCMU has no status for it.
        Refusal::Conflict => {
            log::error!("a reservation conflict on a LIO LUN; answering HARDWARE ERROR");
            Sense::internal_failure()
        }
    }))
}

/// Largest bounce buffer a worker keeps between commands: the largest
/// command LIO sends with ferry's defaults (`hw_max_sectors=2048` of up
/// to 4 KiB blocks).
const BOUNCE_KEEP: usize = 8 << 20;

thread_local! {
    /// A worker's buffer for reads whose data-in is scattered.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Merges iovec segments `(address, length)` that follow each other in
/// memory: tcmu's data area is one mapping and a command's blocks are
/// often adjacent, so a 1 MiB command of 256 blocks is usually a handful
/// of buffers, or one, which then needs no bounce buffer at all.
pub fn coalesce(segments: impl IntoIterator<Item = (usize, usize)>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (addr, len) in segments {
        match out.last_mut() {
            Some((a, l)) if a.checked_add(*l) == Some(addr) => *l += len,
            _ => out.push((addr, len)),
        }
    }
    out
}

/// The data-out of a command as one buffer (borrowed when it is one
/// segment already).
pub fn gather<'a>(segments: &[&'a [u8]]) -> Cow<'a, [u8]> {
    match segments {
        [] => Cow::Borrowed(&[]),
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.concat()),
    }
}

/// A 16-byte READ or WRITE of `len` bytes at byte `off` of a LUN of
/// `block_size`-byte blocks (`None` when they are not whole blocks, or
/// too many for one command: tcmu-runner never asks for either).
fn rw16(opcode: u8, flags: u8, off: u64, len: usize, block_size: u32) -> Option<[u8; 16]> {
    let block = u64::from(block_size);
    let len = u64::try_from(len).ok()?;
    if off % block != 0 || len % block != 0 {
        return None;
    }
    let blocks = u32::try_from(len / block).ok()?;
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[1] = flags;
    cdb[2..10].copy_from_slice(&(off / block).to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    Some(cdb)
}

/// The READ(16) a `read` callout of `len` bytes at `off` stands for.
pub fn read_cdb(off: u64, len: usize, block_size: u32) -> Option<[u8; 16]> {
    rw16(op::READ_16, 0, off, len, block_size)
}

/// The WRITE(16) a `write` callout stands for, for a command whose CDB is
/// `orig`: with FUA when that command must be durable before it is
/// acknowledged (FUA on WRITE(10/12/16), and WRITE AND VERIFY, which
/// tcmu-runner carries out as a write callout then a read-back).
pub fn write_cdb(orig: &[u8], off: u64, len: usize, block_size: u32) -> Option<[u8; 16]> {
    let fua = match orig.first() {
        Some(&(op::WRITE_10 | op::WRITE_12 | op::WRITE_16)) => {
            orig.get(1).is_some_and(|b| b & 0x08 != 0)
        }
        Some(&(op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16)) => true,
        _ => false,
    };
    rw16(
        op::WRITE_16,
        if fua { 0x08 } else { 0 },
        off,
        len,
        block_size,
    )
}

/// What a `flush` callout stands for: SYNCHRONIZE CACHE(10) of the whole
/// LUN (whether it flushes is the cache mode's decision).
pub const SYNCHRONIZE_CACHE: [u8; 10] = [op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The UNMAP (CDB and parameter list) an `unmap` callout of `len` bytes
/// at `off` stands for. tcmu-runner calls it for each range of an UNMAP
/// and for WRITE SAME with the UNMAP bit; unmapping changes the medium as
/// a write does, so it is flushed as the cache mode flushes writes.
pub fn unmap_request(off: u64, len: u64, block_size: u32) -> Option<([u8; 10], Vec<u8>)> {
    let block = u64::from(block_size);
    if off % block != 0 || len % block != 0 {
        return None;
    }
    let (mut lba, mut blocks) = (off / block, len / block);
    let mut descriptors = Vec::new();
    while blocks > 0 {
        let n = blocks.min(u64::from(u32::MAX));
        descriptors.extend_from_slice(&lba.to_be_bytes());
        descriptors.extend_from_slice(&u32::try_from(n).ok()?.to_be_bytes());
        descriptors.extend_from_slice(&[0; 4]);
        (lba, blocks) = (lba + n, blocks - n);
    }
    let desc_len = u16::try_from(descriptors.len()).ok()?;
    let mut list = Vec::with_capacity(8 + descriptors.len());
    list.extend_from_slice(&(desc_len + 6).to_be_bytes());
    list.extend_from_slice(&desc_len.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    list.extend_from_slice(&descriptors);
    let param_len = u16::try_from(list.len()).ok()?;
    let mut cdb = [0u8; 10];
    cdb[0] = op::UNMAP;
    cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
    Some((cdb, list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Volume;

    fn lun(dir: &std::path::Path, size: u64) -> Arc<Lun> {
        let path = dir.join("v.img");
        let spec = format!("file:{}", path.display());
        ferry_host::VolumeSpec::parse(&spec)
            .unwrap()
            .create(size, None)
            .unwrap();
        Lun::open(&spec).unwrap()
    }

    #[test]
    fn scattered_write_then_scattered_read() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        let a = vec![1u8; 512];
        let b = vec![2u8; 1024];
        let w = write_cdb(&[op::WRITE_10], 4096, 1536, 512).unwrap();
        assert_eq!(run(&l, &w, &[&a, &b], &mut []), Completion::OK);
        let mut x = vec![0u8; 1000];
        let mut y = vec![0u8; 536];
        let r = read_cdb(4096, 1536, 512).unwrap();
        assert_eq!(run(&l, &r, &[], &mut [&mut x, &mut y]), Completion::OK);
        assert!(x[..512].iter().all(|&v| v == 1));
        assert!(x[512..].iter().all(|&v| v == 2));
        assert!(y.iter().all(|&v| v == 2));
    }

    #[test]
    fn reads_past_the_luns_end_are_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        let mut buf = vec![0u8; 1024];
        let r = read_cdb((1 << 20) - 512, 1024, 512).unwrap();
        assert_eq!(run(&l, &r, &[], &mut [&mut buf]).status, sts::RANGE);
        // A backstore smaller than its volume: its end is the limit.
        l.set_geometry(512, Some(1024)).unwrap();
        let r = read_cdb(1024 * 512, 512, 512).unwrap();
        assert_eq!(run(&l, &r, &[], &mut [&mut buf[..512]]).status, sts::RANGE);
    }

    #[test]
    fn adjacent_segments_merge_and_others_stay_apart() {
        assert_eq!(
            coalesce([(0x1000, 0x1000), (0x2000, 0x1000), (0x3000, 0x800)]),
            vec![(0x1000, 0x2800)]
        );
        assert_eq!(
            coalesce([
                (0x1000, 0x1000),
                (0x5000, 0x1000),
                (0x6000, 0x1000),
                (0x1000, 0x10)
            ]),
            vec![(0x1000, 0x1000), (0x5000, 0x2000), (0x1000, 0x10)]
        );
        assert_eq!(coalesce([]), vec![]);
        assert_eq!(
            coalesce([(usize::MAX - 1, 1), (0, 4)]),
            vec![(usize::MAX - 1, 1), (0, 4)]
        );
    }

    #[test]
    fn zero_length_commands_complete() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        let r = read_cdb(0, 0, 512).unwrap();
        assert_eq!(run(&l, &r, &[], &mut []), Completion::OK);
        let w = write_cdb(&[op::WRITE_16, 0x08], 0, 0, 512).unwrap();
        assert_eq!(run(&l, &w, &[], &mut []), Completion::OK);
        let (cdb, list) = unmap_request(0, 0, 512).unwrap();
        assert_eq!(run(&l, &cdb, &[&list], &mut []), Completion::OK);
    }

    #[test]
    fn unmap_reads_back_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        let w = write_cdb(&[], 0, 8192, 512).unwrap();
        run(&l, &w, &[&[9u8; 8192]], &mut []);
        let (cdb, list) = unmap_request(0, 4096, 512).unwrap();
        assert_eq!(run(&l, &cdb, &[&list], &mut []), Completion::OK);
        let mut buf = vec![7u8; 8192];
        l.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&v| v == 0));
        assert!(buf[4096..].iter().all(|&v| v == 9));
    }

    #[test]
    fn callouts_become_the_cdbs_they_stand_for() {
        // FUA and WRITE AND VERIFY make the write a FUA write.
        assert_eq!(write_cdb(&[0x2a, 0x08], 0, 512, 512).unwrap()[1], 0x08);
        assert_eq!(write_cdb(&[0x2a, 0x00], 0, 512, 512).unwrap()[1], 0);
        assert_eq!(
            write_cdb(&[op::WRITE_VERIFY_16], 0, 512, 512).unwrap()[1],
            0x08
        );
        assert_eq!(write_cdb(&[0x83], 0, 512, 512).unwrap()[1], 0);
        // Blocks and LBAs in the LUN's block size.
        let w = write_cdb(&[], 3 * 4096, 8192, 4096).unwrap();
        assert_eq!(u64::from_be_bytes(w[2..10].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(w[10..14].try_into().unwrap()), 2);
        assert_eq!(read_cdb(100, 512, 512), None);
        // An unmap of more blocks than one descriptor holds.
        let (cdb, list) = unmap_request(0, (u64::from(u32::MAX) + 1) * 512, 512).unwrap();
        assert_eq!(u16::from_be_bytes([cdb[7], cdb[8]]) as usize, list.len());
        assert_eq!(list.len(), 8 + 32);
        assert_eq!(&list[8 + 16..8 + 24], &u64::from(u32::MAX).to_be_bytes());
    }

    #[test]
    fn compare_and_write_through_the_cdb() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        run(
            &l,
            &write_cdb(&[], 512, 512, 512).unwrap(),
            &[&[1u8; 512]],
            &mut [],
        );
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[9] = 1;
        cdb[13] = 1;
        let verify = [1u8; 512];
        let write = [2u8; 512];
        assert_eq!(run(&l, &cdb, &[&verify, &write], &mut []), Completion::OK);
        // Stale compare half: MISCOMPARE at byte 0, passed through.
        let c = run(&l, &cdb, &[&verify, &write], &mut []);
        assert_eq!(c.status, sts::PASSTHROUGH_ERR);
        let sense = c.sense.unwrap();
        assert_eq!(
            (sense[0], sense[2], sense[12]),
            (0xf0, key::MISCOMPARE, 0x1d)
        );
    }

    #[test]
    fn write_same_with_lbdata_uses_the_cdb_flags() {
        let dir = tempfile::tempdir().unwrap();
        let l = lun(dir.path(), 1 << 20);
        let cdb = [0x41, 0x02, 0, 0, 0, 4, 0, 0, 2, 0];
        assert_eq!(run(&l, &cdb, &[&[0xab; 512]], &mut []), Completion::OK);
        let mut buf = vec![0u8; 1024];
        l.read_at(&mut buf, 4 * 512).unwrap();
        assert_eq!(&buf[..4], &4u32.to_be_bytes());
        assert_eq!(&buf[512..516], &5u32.to_be_bytes());
        assert!(buf[4..512].iter().all(|&v| v == 0xab));
    }

    #[test]
    fn sense_maps_to_tcmu_status_where_it_can() {
        assert_eq!(completion(Err(Sense::out_of_range())).status, sts::RANGE);
        assert_eq!(
            completion(Err(Sense::invalid_field())).status,
            sts::INVALID_CDB
        );
        assert_eq!(
            completion(Err(Sense::invalid_opcode())).status,
            sts::INVALID_CMD
        );
        assert_eq!(
            completion(Err(Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR))).status,
            sts::WR_ERR
        );
        let c = completion(Err(Sense::with_info(
            key::MISCOMPARE,
            asc::MISCOMPARE_DURING_VERIFY,
            7,
        )));
        assert_eq!(c.status, sts::PASSTHROUGH_ERR);
        assert_eq!(c.sense.unwrap()[6], 7);
    }
}
