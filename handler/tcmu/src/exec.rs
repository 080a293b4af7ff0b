//! Carrying out one callout against a device's ferry LUN, in safe Rust.
//!
//! The FFI shim hands over the command's data buffers as slices (the
//! iovec segments in tcmu's ring) and gets back a [`Completion`]: the TCMU
//! status to complete with and, when a status cannot say it all, fixed
//! sense bytes for `sense_buf`. Reads and writes go straight to the
//! [`ferry_core::Volume`] (tcmu-runner has already checked their range
//! against the LUN); WRITE SAME, COMPARE AND WRITE and the few commands
//! tcmu-runner does not know (VERIFY, PRE-FETCH, ORWRITE) run the original
//! CDB through `ferry_scsi`'s parser and executor, so LBDATA/PBDATA, the
//! CAW lock, MISCOMPARE offsets and range checks are shared with the tgt
//! front-end.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::sync::Arc;

use ferry_core::Volume;
use ferry_scsi::sense::{asc, from_error, key};
use ferry_scsi::{LunContext, Sense};
use parking_lot::Mutex;

use crate::ffi::sts;

/// A LUN as the handler serves it.
pub struct DevState {
    pub lun: Arc<ferry_host::Lun>,
    /// log2 of tcmu's logical block size.
    pub block_shift: u32,
    /// Serializes COMPARE AND WRITE and ORWRITE of this LUN.
    pub caw: Mutex<()>,
    /// The configured spec, for messages.
    pub spec: String,
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

/// Whether a write carried by `cdb` must be durable before it is
/// acknowledged: FUA on WRITE(10/12/16), and WRITE AND VERIFY (which
/// tcmu-runner carries out as a write callout then a read-back).
pub fn write_needs_flush(cdb: &[u8]) -> bool {
    use ferry_scsi::cdb::op;
    match cdb.first() {
        Some(&(op::WRITE_10 | op::WRITE_12 | op::WRITE_16)) => {
            cdb.get(1).is_some_and(|b| b & 0x08 != 0)
        }
        Some(&(op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16)) => true,
        _ => false,
    }
}

/// Whether a callout changing the medium for `cdb` (a WRITE, and the
/// UNMAP callouts tcmu-runner makes for UNMAP and for WRITE SAME with the
/// UNMAP bit) must flush before it completes, in cache mode `mode` with
/// the WCE bit initiators see: unmapping changes the medium as much as a
/// write does, so it is flushed like one.
pub fn flush_needed(mode: ferry_core::CacheMode, write_cache: bool, cdb: &[u8]) -> bool {
    mode.flush_write(write_cache, write_needs_flush(cdb))
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

fn write_err(e: ferry_core::Error) -> Sense {
    from_error(&e, true)
}

fn read_err(e: ferry_core::Error) -> Sense {
    from_error(&e, false)
}

impl DevState {
    fn volume(&self) -> &dyn Volume {
        self.lun.as_ref()
    }

    /// READ: fills `segments` (at most `len` bytes) from `off`.
    pub fn read(&self, segments: &mut [&mut [u8]], off: u64, len: usize) -> Completion {
        completion(self.read_inner(segments, off, len))
    }

    fn read_inner(&self, segments: &mut [&mut [u8]], off: u64, len: usize) -> Result<(), Sense> {
        let total: usize = segments.iter().map(|s| s.len()).sum();
        let len = len.min(total);
        if len == 0 {
            return Ok(());
        }
        if let [one] = segments {
            return self
                .volume()
                .read_at(&mut one[..len], off)
                .map_err(read_err);
        }
        let mut buf = vec![0u8; len];
        self.volume().read_at(&mut buf, off).map_err(read_err)?;
        let mut at = 0;
        for seg in segments.iter_mut() {
            if at == len {
                break;
            }
            let n = seg.len().min(len - at);
            seg[..n].copy_from_slice(&buf[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// WRITE: writes `segments` (at most `len` bytes) at `off`; flushes
    /// when asked (FUA) or when the write cache is off.
    pub fn write(&self, segments: &[&[u8]], off: u64, len: usize, flush: bool) -> Completion {
        completion(self.write_inner(segments, off, len, flush))
    }

    fn write_inner(
        &self,
        segments: &[&[u8]],
        off: u64,
        len: usize,
        flush: bool,
    ) -> Result<(), Sense> {
        let data = gather(segments);
        let len = len.min(data.len());
        if len == 0 {
            return Ok(());
        }
        self.volume()
            .write_at(&data[..len], off)
            .map_err(write_err)?;
        if flush {
            self.volume().flush().map_err(write_err)?;
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE: flushes the volume (a migration checkpoint).
    pub fn flush(&self) -> Completion {
        completion(self.volume().flush().map_err(write_err))
    }

    /// One UNMAP range (tcmu-runner splits the descriptor list, and
    /// carries WRITE SAME with the UNMAP bit out through this callout
    /// too); flushed when `flush` ([`flush_needed`]).
    pub fn unmap(&self, off: u64, len: u64, flush: bool) -> Completion {
        completion(discard(self.volume(), off, len, flush))
    }

    /// Runs the original CDB through `ferry_scsi` (WRITE SAME, COMPARE AND
    /// WRITE, VERIFY, PRE-FETCH, ORWRITE). `None` when it is not a command
    /// `ferry_scsi` executes (the caller lets tcmu-runner handle it).
    pub fn execute_cdb(
        &self,
        cdb: &[u8],
        data_out: &[&[u8]],
        write_cache: bool,
    ) -> Option<Completion> {
        let cmd = match ferry_scsi::parse(cdb) {
            // GET LBA STATUS answers with data-in, which this path (for
            // commands without any) has no buffer for: tcmu-runner's.
            Ok(Some(ferry_scsi::Command::GetLbaStatus { .. })) | Ok(None) => return None,
            Ok(Some(cmd)) => cmd,
            Err(s) => return Some(completion(Err(s))),
        };
        let ctx = LunContext {
            volume: self.volume(),
            block_shift: self.block_shift,
            capacity_blocks: u64::MAX,
            write_cache,
            cache_mode: self.lun.cache_mode(),
            caw_lock: &self.caw,
        };
        let data = gather(data_out);
        let result = ferry_scsi::execute(&ctx, &cmd, &data, &mut []).map(|_| ());
        Some(completion(result))
    }
}

/// Unmaps `len` bytes at `off` of `vol`, then flushes if `flush`.
fn discard(vol: &dyn Volume, off: u64, len: u64, flush: bool) -> Result<(), Sense> {
    if len == 0 {
        return Ok(());
    }
    vol.discard(off, len).map_err(write_err)?;
    if flush {
        vol.flush().map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(dir: &std::path::Path, size: u64) -> DevState {
        let path = dir.join("v.img");
        let spec = format!("file:{}", path.display());
        ferry_host::VolumeSpec::parse(&spec)
            .unwrap()
            .create(size, None)
            .unwrap();
        DevState {
            lun: ferry_host::Lun::open(&spec).unwrap(),
            block_shift: 9,
            caw: Mutex::new(()),
            spec,
        }
    }

    #[test]
    fn scattered_write_then_scattered_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        let a = vec![1u8; 512];
        let b = vec![2u8; 1024];
        assert_eq!(d.write(&[&a, &b], 4096, 1536, false), Completion::OK);
        let mut x = vec![0u8; 1000];
        let mut y = vec![0u8; 536];
        {
            let mut segs: Vec<&mut [u8]> = vec![&mut x, &mut y];
            assert_eq!(d.read(&mut segs, 4096, 1536), Completion::OK);
        }
        assert!(x[..512].iter().all(|&v| v == 1));
        assert!(x[512..].iter().all(|&v| v == 2));
        assert!(y.iter().all(|&v| v == 2));
    }

    #[test]
    fn read_past_the_end_is_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        let mut buf = vec![0u8; 1024];
        let mut segs: Vec<&mut [u8]> = vec![&mut buf];
        assert_eq!(d.read(&mut segs, (1 << 20) - 512, 1024).status, sts::RANGE);
    }

    #[test]
    fn zero_length_commands_complete() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        assert_eq!(d.read(&mut [], 0, 0), Completion::OK);
        assert_eq!(d.write(&[], 0, 0, true), Completion::OK);
        assert_eq!(d.unmap(0, 0, true), Completion::OK);
    }

    #[test]
    fn unmap_reads_back_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        d.write(&[&[9u8; 8192]], 0, 8192, false);
        assert_eq!(d.unmap(0, 4096, false), Completion::OK);
        let mut buf = vec![7u8; 8192];
        d.read(&mut [&mut buf], 0, 8192);
        assert!(buf[..4096].iter().all(|&v| v == 0));
        assert!(buf[4096..].iter().all(|&v| v == 9));
    }

    #[test]
    fn compare_and_write_through_the_cdb() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        d.write(&[&[1u8; 512]], 512, 512, false);
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[9] = 1;
        cdb[13] = 1;
        let verify = [1u8; 512];
        let write = [2u8; 512];
        assert_eq!(
            d.execute_cdb(&cdb, &[&verify, &write], true),
            Some(Completion::OK)
        );
        // Stale compare half: MISCOMPARE at byte 0, passed through.
        let c = d.execute_cdb(&cdb, &[&verify, &write], true).unwrap();
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
        let d = dev(dir.path(), 1 << 20);
        let cdb = [0x41, 0x02, 0, 0, 0, 4, 0, 0, 2, 0];
        assert_eq!(
            d.execute_cdb(&cdb, &[&[0xab; 512]], true),
            Some(Completion::OK)
        );
        let mut buf = vec![0u8; 1024];
        d.read(&mut [&mut buf], 4 * 512, 1024);
        assert_eq!(&buf[..4], &4u32.to_be_bytes());
        assert_eq!(&buf[512..516], &5u32.to_be_bytes());
        assert!(buf[4..512].iter().all(|&v| v == 0xab));
    }

    #[test]
    fn unknown_cdbs_are_left_to_tcmu_runner() {
        let dir = tempfile::tempdir().unwrap();
        let d = dev(dir.path(), 1 << 20);
        assert_eq!(d.execute_cdb(&[0x12, 0, 0, 0, 36, 0], &[], true), None);
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

    #[test]
    fn fua_and_write_verify_need_a_flush() {
        assert!(write_needs_flush(&[0x2a, 0x08, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(!write_needs_flush(&[0x2a, 0x00, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(write_needs_flush(&[
            0x8e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0
        ]));
        assert!(!write_needs_flush(&[0x83]));
        assert!(!write_needs_flush(&[]));
    }

    #[test]
    fn unmap_callouts_flush_as_writes_do() {
        use ferry_core::CacheMode::{self, *};
        // The CDBs tcmu-runner calls the unmap callout for: UNMAP, and
        // WRITE SAME(10)/(16) with the UNMAP bit (byte 1 bit 3).
        let cdbs: [&[u8]; 3] = [
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            &[0x41, 0x08, 0, 0, 0, 8, 0, 0, 8, 0],
            &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0],
        ];
        let flushes = |mode: CacheMode, wce: bool| -> Vec<u64> {
            let vol = ferry_core::sim::SimVolume::new(
                "lun",
                1 << 20,
                4096,
                ferry_core::sim::Faults::new(),
            );
            cdbs.iter()
                .map(|cdb| {
                    let before = vol.flushes();
                    discard(&vol, 4096, 4096, flush_needed(mode, wce, cdb)).unwrap();
                    vol.flushes() - before
                })
                .collect()
        };
        for wce in [true, false] {
            assert_eq!(flushes(Writethrough, wce), [1, 1, 1]);
            assert_eq!(flushes(Directsync, wce), [1, 1, 1]);
            assert_eq!(flushes(Unsafe, wce), [0, 0, 0]);
        }
        assert_eq!(flushes(Writeback, true), [0, 0, 0]);
        assert_eq!(flushes(None, true), [0, 0, 0]);
        assert_eq!(flushes(Writeback, false), [1, 1, 1]);
        assert_eq!(flushes(None, false), [1, 1, 1]);
        // A FUA write is flushed whatever WCE says, a plain one not.
        assert!(flush_needed(
            Writeback,
            true,
            &[0x2a, 0x08, 0, 0, 0, 0, 0, 0, 1, 0]
        ));
        assert!(!flush_needed(
            Writeback,
            true,
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        ));
    }
}
