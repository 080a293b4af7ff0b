//! Carrying out block commands against a volume.
//!
//! Contract with the front-ends: `data_out` is what the initiator sent,
//! `data_in` is the buffer the transport will return (its length is the
//! initiator's allocation). [`execute`] returns how many bytes of `data_in`
//! it filled, or the sense for CHECK CONDITION. It never panics on any
//! CDB or buffer size: lengths are computed with checked arithmetic and
//! buffers sliced only within their lengths.
//!
//! Zero-length transfers complete without touching the volume (a backend
//! such as librbd may assert on them). Write caching follows the LUN's
//! cache mode and WCE setting (`ferry_scsi::cache`): in writethrough and
//! directsync every write is flushed before it is acknowledged; in
//! writeback and none, writes with FUA or while WCE is off; in unsafe no
//! write is, and SYNCHRONIZE CACHE does not flush either.
use ferry_core::Volume;

use crate::cache::CacheMode;
use parking_lot::Mutex;

use crate::cdb::Command;
use crate::sense::{asc, from_error, key, Sense};

/// What execution needs to know about the LUN.
pub struct LunContext<'a> {
    pub volume: &'a dyn Volume,
    /// log2 of the logical block size (9 for 512, 12 for 4096).
    pub block_shift: u32,
    /// The capacity initiators see, in logical blocks: every range is
    /// checked against it (it may be less than the volume holds).
    pub capacity_blocks: u64,
    /// Write cache enabled (mode page 8 WCE) as the initiator sees it.
    pub write_cache: bool,
    pub cache_mode: CacheMode,
    /// Serializes COMPARE AND WRITE commands of the LUN among themselves,
    /// which is what makes them atomic for the lock users (VMFS ATS,
    /// sanlock) that rely on them.
    pub caw_lock: &'a Mutex<()>,
}

impl LunContext<'_> {
    fn capacity_blocks(&self) -> u64 {
        // Never past the volume's end, whatever the front-end said.
        self.capacity_blocks
            .min(self.volume.size() >> self.block_shift)
    }

    /// Byte range of `blocks` at `lba`, range-checked against the LUN.
    fn range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity_blocks() => {
                Ok((lba << self.block_shift, blocks << self.block_shift))
            }
            _ => Err(Sense::out_of_range()),
        }
    }

    fn block_len(&self) -> usize {
        1usize << self.block_shift
    }
}

/// Largest buffer ferry allocates for one command's internal work (WRITE
/// SAME expansion, verify reads): bounds memory whatever the CDB says.
const CHUNK: u64 = 1 << 20;

fn write_err(e: ferry_core::Error) -> Sense {
    from_error(&e, true)
}

fn read_err(e: ferry_core::Error) -> Sense {
    from_error(&e, false)
}

/// The blocks a WRITE SAME of `blocks` at `lba` covers on a medium of
/// `capacity` blocks: zero means from `lba` to the end (SBC-3 5.48, with
/// WSNZ = 0 in the block limits VPD page); `None` when `lba` is past it.
fn write_same_span(lba: u64, blocks: u64, capacity: u64) -> Option<u64> {
    if blocks == 0 {
        capacity.checked_sub(lba)
    } else {
        Some(blocks)
    }
}

/// `command` as pieces of at most `max_bytes`, when it walks its range
/// block by block and is longer than that: a WRITE SAME that writes its
/// block (not one that unmaps) and a VERIFY without BYTCHK. The host runs
/// the pieces one after the other, so nothing it holds for a command is
/// held for a whole-LUN one. `None` for anything else, or when the range
/// is not valid on a medium of `capacity` blocks (the command then runs
/// whole and is refused with the right sense).
pub fn pieces(
    command: &Command,
    block_shift: u32,
    capacity: u64,
    max_bytes: u64,
) -> Option<Vec<Command>> {
    let per_piece = (max_bytes >> block_shift).max(1);
    let (lba, blocks) = match *command {
        Command::WriteSame {
            lba,
            blocks,
            unmap: false,
            ..
        } => (lba, write_same_span(lba, blocks, capacity)?),
        Command::Verify {
            lba,
            blocks,
            bytchk: false,
        } => (lba, blocks),
        _ => return None,
    };
    if blocks <= per_piece || lba.checked_add(blocks)? > capacity {
        return None;
    }
    let piece = |at: u64, n: u64| match *command {
        Command::WriteSame {
            unmap,
            lbdata,
            pbdata,
            ndob,
            ..
        } => Command::WriteSame {
            lba: at,
            blocks: n,
            unmap,
            lbdata,
            pbdata,
            ndob,
        },
        _ => Command::Verify {
            lba: at,
            blocks: n,
            bytchk: false,
        },
    };
    let mut out = Vec::new();
    let mut at = lba;
    while at < lba + blocks {
        let n = per_piece.min(lba + blocks - at);
        out.push(piece(at, n));
        at += n;
    }
    Some(out)
}

/// Executes `cmd`. Returns the number of `data_in` bytes filled.
pub fn execute(
    lun: &LunContext<'_>,
    cmd: &Command,
    data_out: &[u8],
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    match *cmd {
        Command::Read { lba, blocks, .. } => {
            let (off, len) = lun.range(lba, blocks)?;
            // Fill what the initiator can take; the transport reports any
            // residual.
            let n = (len.min(data_in.len() as u64)) as usize;
            if n == 0 {
                return Ok(0);
            }
            lun.volume
                .read_at(&mut data_in[..n], off)
                .map_err(read_err)?;
            Ok(n)
        }
        Command::Write { lba, blocks, fua } => {
            let (off, len) = lun.range(lba, blocks)?;
            write(lun, off, len, data_out, fua)?;
            Ok(0)
        }
        Command::WriteVerify {
            lba,
            blocks,
            bytchk,
        } => {
            let (off, len) = lun.range(lba, blocks)?;
            let n = write(lun, off, len, data_out, true)?;
            if bytchk {
                compare(lun, off, &data_out[..n])?;
            }
            Ok(0)
        }
        Command::Verify {
            lba,
            blocks,
            bytchk,
        } => {
            let (off, len) = lun.range(lba, blocks)?;
            if bytchk {
                if (data_out.len() as u64) < len {
                    return Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH));
                }
                compare(lun, off, &data_out[..len as usize])?;
            } else {
                // Medium verification: read it all back.
                let mut buf = vec![0u8; CHUNK.min(len) as usize];
                let mut done = 0;
                while done < len {
                    let n = CHUNK.min(len - done) as usize;
                    lun.volume
                        .read_at(&mut buf[..n], off + done)
                        .map_err(read_err)?;
                    done += n as u64;
                }
            }
            Ok(0)
        }
        Command::WriteSame {
            lba,
            blocks,
            unmap,
            lbdata,
            pbdata,
            ndob,
        } => {
            let blocks = write_same_span(lba, blocks, lun.capacity_blocks())
                .ok_or_else(Sense::out_of_range)?;
            let (off, len) = lun.range(lba, blocks)?;
            write_same(lun, off, len, data_out, unmap, lbdata, pbdata, ndob)?;
            Ok(0)
        }
        Command::Unmap { param_len } => {
            let list = &data_out[..data_out.len().min(param_len as usize)];
            unmap(lun, list)?;
            Ok(0)
        }
        Command::CompareAndWrite { lba, blocks, fua } => {
            let (off, len) = lun.range(lba, blocks)?;
            // The data-out is the verify half then the write half, split
            // where the CDB's block count says. A buffer of any other
            // length means the initiator meant another count (libiscsi
            // sends 256 blocks as a count of 0): comparing and writing at
            // the wrong split would put the wrong data on the medium, so
            // the count is refused, for a longer buffer as well as a
            // shorter one (tgtd hands it over at the transport's length).
            if data_out.len() as u64 != 2 * len {
                return Err(Sense::invalid_field());
            }
            if len == 0 {
                return Ok(0);
            }
            let half = len as usize;
            let _g = lun.caw_lock.lock();
            compare(lun, off, &data_out[..half])?;
            write(lun, off, len, &data_out[half..2 * half], fua)?;
            Ok(0)
        }
        Command::OrWrite { lba, blocks, fua } => {
            let (off, len) = lun.range(lba, blocks)?;
            if len == 0 {
                return Ok(0);
            }
            if (data_out.len() as u64) < len {
                return Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH));
            }
            // Read-modify-write; the CAW lock keeps two of these (or a
            // COMPARE AND WRITE) on one LUN from interleaving.
            let _g = lun.caw_lock.lock();
            let mut cur = vec![0u8; len as usize];
            lun.volume.read_at(&mut cur, off).map_err(read_err)?;
            for (c, d) in cur.iter_mut().zip(data_out) {
                *c |= d;
            }
            write(lun, off, len, &cur, fua)?;
            Ok(0)
        }
        Command::SynchronizeCache { lba, blocks } => {
            // The range only has to be valid; ferry flushes the volume.
            if blocks != 0 || lba != 0 {
                lun.range(lba, blocks)?;
            }
            if lun.cache_mode.honours_flush() {
                lun.volume.flush().map_err(write_err)?;
            }
            Ok(0)
        }
        Command::PreFetch { lba, blocks } => {
            lun.range(lba, blocks)?;
            Ok(0)
        }
        Command::GetLbaStatus { lba, alloc } => get_lba_status(lun, lba, alloc, data_in),
    }
}

/// How far one GET LBA STATUS looks: the last descriptor ends here and
/// the initiator asks again from there (SBC-3 allows any split).
const LBA_STATUS_WINDOW: u64 = 1 << 30;

/// GET LBA STATUS (SBC-3 5.7): descriptors of mapped (0) and deallocated
/// (1) runs of blocks, the first starting at `lba`. A block is mapped if
/// any byte of it may hold data (`Volume::allocated`).
fn get_lba_status(
    lun: &LunContext<'_>,
    lba: u64,
    alloc: u32,
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    let capacity = lun.capacity_blocks();
    if lba >= capacity {
        return Err(Sense::out_of_range());
    }
    let shift = lun.block_shift;
    let end = capacity.min(lba.saturating_add(LBA_STATUS_WINDOW >> shift));
    let extents = lun
        .volume
        .allocated(lba << shift, (end - lba) << shift)
        .map_err(read_err)?;
    // Runs of (first block, blocks, status), merged where extents touch
    // once rounded out to whole blocks.
    let mut runs: Vec<(u64, u64, u8)> = Vec::new();
    let mut push = |first: u64, last: u64, status: u8| {
        if last <= first {
            return;
        }
        match runs.last_mut() {
            Some(r) if r.2 == status && r.0 + r.1 == first => r.1 += last - first,
            _ => runs.push((first, last - first, status)),
        }
    };
    let mut at = lba;
    for e in &extents {
        let first = (e.offset >> shift).max(at);
        let last = e.end().div_ceil(1 << shift).min(end);
        push(at, first, 1);
        push(first, last, 0);
        at = at.max(last);
    }
    push(at, end, 1);
    // Each descriptor's block count is 32 bits. No more descriptors than
    // the initiator takes (at least one): it asks again from the last.
    let room = ((alloc as usize).saturating_sub(8) / 16).max(1);
    let mut out = vec![0u8; 8];
    for (first, blocks, status) in runs {
        let mut first = first;
        let mut left = blocks;
        while left > 0 && (out.len() - 8) / 16 < room {
            let n = left.min(u64::from(u32::MAX));
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&(n as u32).to_be_bytes());
            out.extend_from_slice(&[status, 0, 0, 0]);
            first += n;
            left -= n;
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    let n = out.len().min(alloc as usize).min(data_in.len());
    data_in[..n].copy_from_slice(&out[..n]);
    Ok(n)
}

/// Writes `len` bytes at `off` from `data`, flushing when asked or when
/// the write cache is off. A data-out buffer shorter than the CDB asks is
/// written as far as it goes in whole blocks (as tgt's rdwr does); returns
/// the bytes written.
fn write(lun: &LunContext<'_>, off: u64, len: u64, data: &[u8], fua: bool) -> Result<usize, Sense> {
    let have = (data.len() as u64).min(len);
    let n = (have >> lun.block_shift << lun.block_shift) as usize;
    if n == 0 {
        return Ok(0);
    }
    lun.volume.write_at(&data[..n], off).map_err(write_err)?;
    if lun.cache_mode.flush_write(lun.write_cache, fua) {
        lun.volume.flush().map_err(write_err)?;
    }
    Ok(n)
}

/// Compares the medium at `off` with `expect`; MISCOMPARE carries the
/// offset of the first differing byte (SBC-3 5.2, 5.28).
fn compare(lun: &LunContext<'_>, off: u64, expect: &[u8]) -> Result<(), Sense> {
    let mut buf = vec![0u8; (CHUNK as usize).min(expect.len())];
    let mut done = 0usize;
    while done < expect.len() {
        let n = (CHUNK as usize).min(expect.len() - done);
        lun.volume
            .read_at(&mut buf[..n], off + done as u64)
            .map_err(read_err)?;
        if let Some(i) = buf[..n]
            .iter()
            .zip(&expect[done..done + n])
            .position(|(a, b)| a != b)
        {
            return Err(Sense::with_info(
                key::MISCOMPARE,
                asc::MISCOMPARE_DURING_VERIFY,
                (done + i) as u64,
            ));
        }
        done += n;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_same(
    lun: &LunContext<'_>,
    off: u64,
    len: u64,
    data_out: &[u8],
    unmap: bool,
    lbdata: bool,
    pbdata: bool,
    ndob: bool,
) -> Result<(), Sense> {
    if len == 0 {
        return Ok(());
    }
    let bl = lun.block_len();
    let zero_block = vec![0u8; bl];
    let block: &[u8] = if ndob {
        &zero_block
    } else if data_out.len() < bl {
        return Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH));
    } else {
        &data_out[..bl]
    };
    let stamped = lbdata || pbdata;
    if unmap {
        // SBC-3 5.50: with UNMAP set the device server unmaps the range
        // rather than writing the block. ferry's volumes read unmapped
        // blocks as zeroes (LBPRZ = 1), which is what initiators check.
        lun.volume.discard(off, len).map_err(write_err)?;
    } else if !stamped && block.iter().all(|&b| b == 0) {
        lun.volume.write_zeroes(off, len).map_err(write_err)?;
    } else {
        write_repeated(lun, off, len, block, lbdata, pbdata)?;
    }
    // Unmapping or zeroing changes the medium as much as writing does:
    // the cache mode's flush applies to all three.
    flush_after_write(lun)
}

/// Flushes a write without FUA if the LUN's cache mode and WCE bit say
/// every write must be durable before it is acknowledged.
fn flush_after_write(lun: &LunContext<'_>) -> Result<(), Sense> {
    if lun.cache_mode.flush_write(lun.write_cache, false) {
        lun.volume.flush().map_err(write_err)?;
    }
    Ok(())
}

/// WRITE SAME's data path: `block` repeated over `len` bytes at `off`,
/// stamped with each block's address for LBDATA / PBDATA.
fn write_repeated(
    lun: &LunContext<'_>,
    off: u64,
    len: u64,
    block: &[u8],
    lbdata: bool,
    pbdata: bool,
) -> Result<(), Sense> {
    let bl = lun.block_len();
    let per_chunk = (CHUNK as usize / bl).max(1);
    let mut buf = Vec::with_capacity(per_chunk * bl);
    let mut done = 0u64;
    while done < len {
        let blocks_now = ((len - done) as usize / bl).min(per_chunk);
        buf.clear();
        for i in 0..blocks_now {
            let at = buf.len();
            buf.extend_from_slice(block);
            let lba = (off + done) / bl as u64 + i as u64;
            if lbdata {
                // SBC-3 5.48: the low 4 bytes of the LBA in the block's
                // first 4 bytes.
                buf[at..at + 4].copy_from_slice(&(lba as u32).to_be_bytes());
            } else if pbdata {
                // The physical block address (= LBA: one logical block per
                // physical block) in the first 8 bytes.
                buf[at..at + 8].copy_from_slice(&lba.to_be_bytes());
            }
        }
        lun.volume.write_at(&buf, off + done).map_err(write_err)?;
        done += buf.len() as u64;
    }
    Ok(())
}

/// UNMAP parameter list (SBC-3 5.28.2): an 8-byte header, then 16-byte
/// descriptors of (LBA be64, blocks be32). Every descriptor is checked
/// before any is applied, so a bad list changes nothing.
fn unmap(lun: &LunContext<'_>, list: &[u8]) -> Result<(), Sense> {
    if list.is_empty() {
        return Ok(());
    }
    if list.len() < 8 {
        return Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH));
    }
    let desc_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
    let descs = &list[8..];
    let desc_len = desc_len.min(descs.len()) / 16 * 16;
    let mut ranges = Vec::new();
    for d in descs[..desc_len].chunks_exact(16) {
        let lba = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
        let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().expect("4 bytes")));
        if blocks == 0 {
            // Names no block, so no LBA can be out of range (SBC-3 5.28:
            // even one past the end is fine).
            continue;
        }
        ranges.push(lun.range(lba, blocks)?);
    }
    if ranges.is_empty() {
        return Ok(());
    }
    for (off, len) in ranges {
        lun.volume.discard(off, len).map_err(write_err)?;
    }
    flush_after_write(lun)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::parse;
    use ferry_core::sim::{Faults, SimVolume};
    use std::sync::Arc;

    const BLOCKS: u64 = 64;

    struct Fixture {
        vol: Arc<SimVolume>,
        faults: Arc<Faults>,
        caw: Mutex<()>,
    }

    fn fixture() -> Fixture {
        let faults = Faults::new();
        Fixture {
            vol: SimVolume::new("lun", BLOCKS * 512, 4096, faults.clone()),
            faults,
            caw: Mutex::new(()),
        }
    }

    fn run(f: &Fixture, cdb: &[u8], out: &[u8], in_len: usize) -> Result<Vec<u8>, Sense> {
        run_shift(f, 9, cdb, out, in_len)
    }

    /// 4096-byte logical blocks: a LUN of [`BLOCKS`] of them.
    fn fixture_4k() -> Fixture {
        let faults = Faults::new();
        Fixture {
            vol: SimVolume::new("lun", BLOCKS * 4096, 4096, faults.clone()),
            faults,
            caw: Mutex::new(()),
        }
    }

    fn run_4k(f: &Fixture, cdb: &[u8], out: &[u8], in_len: usize) -> Result<Vec<u8>, Sense> {
        run_shift(f, 12, cdb, out, in_len)
    }

    fn run_shift(
        f: &Fixture,
        block_shift: u32,
        cdb: &[u8],
        out: &[u8],
        in_len: usize,
    ) -> Result<Vec<u8>, Sense> {
        let lun = LunContext {
            volume: f.vol.as_ref(),
            block_shift,
            capacity_blocks: u64::MAX,
            write_cache: true,
            cache_mode: CacheMode::Writeback,
            caw_lock: &f.caw,
        };
        let cmd = parse(cdb)?.expect("block command");
        let mut data_in = vec![0u8; in_len];
        let n = execute(&lun, &cmd, out, &mut data_in)?;
        data_in.truncate(n);
        Ok(data_in)
    }

    fn write10(lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x2a;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn read10(lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = write10(lba, blocks);
        c[0] = 0x28;
        c
    }

    fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    /// (lba, blocks, status) of each descriptor.
    fn lba_status(data: &[u8]) -> Vec<(u64, u32, u8)> {
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, data.len(), "parameter data length");
        data[8..]
            .chunks(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[0..8].try_into().unwrap()),
                    u32::from_be_bytes(d[8..12].try_into().unwrap()),
                    d[12],
                )
            })
            .collect()
    }

    #[test]
    fn get_lba_status_reports_mapped_and_deallocated_runs() {
        let f = fixture();
        // Blocks 8..16 (one 4 KiB unit) and 40..41 hold data.
        run(&f, &write10(8, 8), &[1u8; 8 * 512], 0).unwrap();
        run(&f, &write10(40, 1), &[1u8; 512], 0).unwrap();
        let all = lba_status(&run(&f, &get_lba_status(0, 4096), &[], 4096).unwrap());
        assert_eq!(
            all,
            vec![(0, 8, 1), (8, 8, 0), (16, 24, 1), (40, 8, 0), (48, 16, 1)],
            "mapped in 4 KiB units, the rest deallocated"
        );
        // From the middle of a run: the first descriptor starts there.
        let mid = lba_status(&run(&f, &get_lba_status(10, 4096), &[], 4096).unwrap());
        assert_eq!(mid[0], (10, 6, 0));
        // A small allocation gets as many whole descriptors as fit (at
        // least one), with a consistent length.
        let one = run(&f, &get_lba_status(0, 24), &[], 4096).unwrap();
        assert_eq!(lba_status(&one), vec![(0, 8, 1)]);
        let cut = run(&f, &get_lba_status(0, 20), &[], 4096).unwrap();
        assert_eq!(cut.len(), 20);
        // The last block is fine; one past it is out of range.
        assert_eq!(
            lba_status(&run(&f, &get_lba_status(BLOCKS - 1, 64), &[], 64).unwrap()),
            vec![(BLOCKS - 1, 1, 1)]
        );
        for lba in [BLOCKS, u64::MAX] {
            assert_eq!(
                run(&f, &get_lba_status(lba, 64), &[], 64),
                Err(Sense::out_of_range())
            );
        }
        // Other SERVICE ACTION IN(16) actions are the SCSI core's.
        let mut rc16 = get_lba_status(0, 32);
        rc16[1] = 0x10;
        assert_eq!(parse(&rc16), Ok(None));
    }

    /// Flushes caused by a plain write, a FUA write, a SYNCHRONIZE CACHE,
    /// a WRITE SAME(10) of a zero block, a WRITE SAME(16) with UNMAP and an
    /// UNMAP, in `mode` with the initiator's WCE bit `wce`.
    fn flushes(mode: CacheMode, wce: bool) -> [u64; 6] {
        let f = fixture();
        let vol = f.vol.as_ref();
        let lun = LunContext {
            volume: vol,
            block_shift: 9,
            capacity_blocks: u64::MAX,
            write_cache: wce,
            cache_mode: mode,
            caw_lock: &f.caw,
        };
        let data = [7u8; 512];
        let zero = [0u8; 512];
        let list = unmap_list(&[(4, 2)]);
        let mut fua = write10(1, 1);
        fua[1] = 0x08;
        // WRITE SAME(10), LBA 2, 3 blocks, of a zero block.
        let same_zero = [0x41, 0, 0, 0, 0, 2, 0, 0, 3, 0];
        // WRITE SAME(16) with UNMAP (byte 1 bit 3), LBA 8, 4 blocks.
        let same_unmap = [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0];
        let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
        let mut out = [0; 6];
        for (i, (cdb, data_out)) in [
            (&write10(1, 1)[..], &data[..]),
            (&fua[..], &data[..]),
            (&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &[][..]),
            (&same_zero[..], &zero[..]),
            (&same_unmap[..], &data[..]),
            (&unmap[..], &list[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let before = vol.flushes();
            let cmd = parse(cdb).unwrap().unwrap();
            execute(&lun, &cmd, data_out, &mut []).unwrap();
            out[i] = vol.flushes() - before;
        }
        out
    }

    #[test]
    fn cache_modes_decide_which_commands_flush() {
        use CacheMode::*;
        // [plain write, FUA write, SYNCHRONIZE CACHE, WRITE SAME of a
        // zero block, WRITE SAME with UNMAP, UNMAP]: zeroing and unmapping
        // change the medium like a write and are flushed like one.
        for wce in [true, false] {
            assert_eq!(flushes(Writethrough, wce), [1; 6]);
            assert_eq!(flushes(Directsync, wce), [1; 6]);
            assert_eq!(flushes(Unsafe, wce), [0; 6]);
        }
        assert_eq!(flushes(Writeback, true), [0, 1, 1, 0, 0, 0]);
        assert_eq!(flushes(None, true), [0, 1, 1, 0, 0, 0]);
        assert_eq!(flushes(Writeback, false), [1; 6]);
        assert_eq!(flushes(None, false), [1; 6]);
    }

    #[test]
    fn write_then_read_round_trips() {
        let f = fixture();
        let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        run(&f, &write10(3, 2), &data, 0).unwrap();
        assert_eq!(run(&f, &read10(3, 2), &[], 1024).unwrap(), data);
    }

    #[test]
    fn read_past_end_is_lba_out_of_range() {
        let f = fixture();
        assert_eq!(
            run(&f, &read10(63, 2), &[], 1024),
            Err(Sense::out_of_range())
        );
        assert_eq!(
            run(&f, &read10(u32::MAX, 1), &[], 512),
            Err(Sense::out_of_range())
        );
    }

    #[test]
    fn zero_length_read_and_write_touch_nothing() {
        let f = fixture();
        f.faults.arm(0); // any backend call would fail
        assert_eq!(run(&f, &read10(5, 0), &[], 0).unwrap(), Vec::<u8>::new());
        assert_eq!(run(&f, &write10(5, 0), &[], 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn read_fills_only_the_allocation() {
        let f = fixture();
        assert_eq!(run(&f, &read10(0, 4), &[], 100).unwrap().len(), 100);
    }

    #[test]
    fn backend_write_failure_is_medium_error() {
        let f = fixture();
        f.faults.arm(0);
        assert_eq!(
            run(&f, &write10(0, 1), &[1u8; 512], 0),
            Err(Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR))
        );
    }

    #[test]
    fn write_same_repeats_the_block_with_lbdata() {
        let f = fixture();
        let mut cdb = [0x41, 0x02, 0, 0, 0, 10, 0, 0, 3, 0];
        run(&f, &cdb, &[0xab; 512], 0).unwrap();
        let got = run(&f, &read10(10, 3), &[], 1536).unwrap();
        for (i, block) in got.chunks(512).enumerate() {
            assert_eq!(&block[..4], &(10 + i as u32).to_be_bytes());
            assert!(block[4..].iter().all(|&b| b == 0xab));
        }
        // UNMAP deallocates, whatever the block, and reads back zeroes.
        cdb[1] = 0x08;
        run(&f, &cdb, &[0xff; 512], 0).unwrap();
        assert!(run(&f, &read10(10, 3), &[], 1536)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn write_same_zero_blocks_runs_to_the_end() {
        let f = fixture();
        let cdb = [0x41, 0, 0, 0, 0, 60, 0, 0, 0, 0];
        run(&f, &cdb, &[7; 512], 0).unwrap();
        let got = run(&f, &read10(59, 5), &[], 5 * 512).unwrap();
        assert!(got[..512].iter().all(|&b| b == 0));
        assert!(got[512..].iter().all(|&b| b == 7));
    }

    #[test]
    fn write_same_without_its_block_is_a_length_error() {
        let f = fixture();
        let cdb = [0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            run(&f, &cdb, &[], 0),
            Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH))
        );
    }

    fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
        let mut l = vec![0u8; 8];
        l[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
        for &(lba, n) in descs {
            l.extend_from_slice(&lba.to_be_bytes());
            l.extend_from_slice(&n.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        l
    }

    #[test]
    fn unmap_zeroes_every_descriptor_or_nothing() {
        let f = fixture();
        run(&f, &write10(0, 8), &[9u8; 4096], 0).unwrap();
        let list = unmap_list(&[(1, 1), (6, 2)]);
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
        run(&f, &cdb, &list, 0).unwrap();
        let got = run(&f, &read10(0, 8), &[], 4096).unwrap();
        let zeroed: Vec<bool> = got.chunks(512).map(|b| b.iter().all(|&x| x == 0)).collect();
        assert_eq!(
            zeroed,
            [false, true, false, false, false, false, true, true]
        );
        // A zero-length descriptor one past the end names no block.
        let list = unmap_list(&[(BLOCKS, 0)]);
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
        run(&f, &cdb, &list, 0).unwrap();
        // One bad descriptor: nothing is unmapped.
        run(&f, &write10(0, 8), &[9u8; 4096], 0).unwrap();
        let list = unmap_list(&[(0, 1), (63, 2)]);
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
        assert_eq!(run(&f, &cdb, &list, 0), Err(Sense::out_of_range()));
        assert!(run(&f, &read10(0, 1), &[], 512)
            .unwrap()
            .iter()
            .all(|&b| b == 9));
    }

    #[test]
    fn compare_and_write_swaps_only_on_match() {
        let f = fixture();
        run(&f, &write10(2, 1), &[1u8; 512], 0).unwrap();
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[9] = 2;
        cdb[13] = 1;
        let mut data = vec![1u8; 512];
        data.extend_from_slice(&[2u8; 512]);
        run(&f, &cdb, &data, 0).unwrap();
        assert!(run(&f, &read10(2, 1), &[], 512)
            .unwrap()
            .iter()
            .all(|&b| b == 2));
        // Now the compare half is stale: MISCOMPARE at offset 0, no write.
        let err = run(&f, &cdb, &data, 0).unwrap_err();
        assert_eq!(
            (err.key, err.asc, err.info),
            (key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY, Some(0))
        );
        assert!(run(&f, &read10(2, 1), &[], 512)
            .unwrap()
            .iter()
            .all(|&b| b == 2));
    }

    #[test]
    fn compare_and_write_refuses_a_data_out_that_does_not_match_its_block_count() {
        let f = fixture();
        run(&f, &write10(0, 4), &[1u8; 4 * 512], 0).unwrap();
        // COMPARE AND WRITE, LBA 0, NUMBER OF LOGICAL BLOCKS (byte 13) 1,
        // but 4 blocks of data-out: split at one block, the "write half"
        // would be the second block of what was sent.
        let cdb = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        let mut data = vec![1u8; 512];
        data.extend_from_slice(&[2u8; 3 * 512]);
        assert_eq!(run(&f, &cdb, &data, 0), Err(Sense::invalid_field()));
        // NUMBER OF LOGICAL BLOCKS 3, with 4 blocks: too short.
        let mut cdb3 = cdb;
        cdb3[13] = 3;
        assert_eq!(run(&f, &cdb3, &data, 0), Err(Sense::invalid_field()));
        // A count of 0 names no block, so it carries no data either.
        let mut cdb0 = cdb;
        cdb0[13] = 0;
        assert_eq!(run(&f, &cdb0, &data, 0), Err(Sense::invalid_field()));
        assert_eq!(run(&f, &cdb0, &[], 0), Ok(vec![]));
        // Nothing was written.
        assert!(run(&f, &read10(0, 4), &[], 4 * 512)
            .unwrap()
            .iter()
            .all(|&b| b == 1));
        // Exactly two blocks: swapped.
        run(&f, &cdb, &data[..1024], 0).unwrap();
        assert!(run(&f, &read10(0, 1), &[], 512)
            .unwrap()
            .iter()
            .all(|&b| b == 2));
    }

    #[test]
    fn orwrite_ors_into_the_medium() {
        let f = fixture();
        run(&f, &write10(1, 1), &[0x0f; 512], 0).unwrap();
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8b;
        cdb[9] = 1;
        cdb[13] = 1;
        run(&f, &cdb, &[0xf0; 512], 0).unwrap();
        assert!(run(&f, &read10(1, 1), &[], 512)
            .unwrap()
            .iter()
            .all(|&b| b == 0xff));
    }

    #[test]
    fn verify_with_bytchk_reports_the_first_difference() {
        let f = fixture();
        run(&f, &write10(0, 1), &[5u8; 512], 0).unwrap();
        let mut expect = vec![5u8; 512];
        expect[300] = 6;
        let cdb = [0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0];
        let err = run(&f, &cdb, &expect, 0).unwrap_err();
        assert_eq!(err.info, Some(300));
        expect[300] = 5;
        run(&f, &cdb, &expect, 0).unwrap();
    }

    fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn blocks_of_4096_bytes_are_placed_and_range_checked_in_4096_byte_units() {
        let f = fixture_4k();
        let last = BLOCKS - 1;
        // The last two blocks, written and read back with 16-byte CDBs.
        let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 253) as u8).collect();
        run_4k(&f, &rw16(0x8a, last - 1, 2), &data, 0).unwrap();
        assert_eq!(
            run_4k(&f, &rw16(0x88, last - 1, 2), &[], 2 * 4096).unwrap(),
            data
        );
        let mut raw = vec![0u8; 2 * 4096];
        f.vol.read_at(&mut raw, (last - 1) * 4096).unwrap();
        assert_eq!(raw, data, "at byte (LBA * 4096)");
        // One block past the end, and a 2-block command over the end.
        for cdb in [
            rw16(0x8a, BLOCKS, 1),
            rw16(0x8a, last, 2),
            rw16(0x88, last, 2),
            rw16(0x8f, last, 2),
            rw16(0x8b, last, 2),
            rw16(0x90, last, 2),
            rw16(0x93, last, 2),
        ] {
            assert_eq!(
                run_4k(&f, &cdb, &[0u8; 2 * 4096], 2 * 4096),
                Err(Sense::out_of_range()),
                "{cdb:02x?}"
            );
        }
        assert_eq!(
            run_4k(&f, &read10(BLOCKS as u32, 1), &[], 4096),
            Err(Sense::out_of_range())
        );
        // A data-out short of the CDB's length: whole blocks only.
        run_4k(&f, &rw16(0x8a, 0, 2), &[9u8; 4096 + 100], 0).unwrap();
        let got = run_4k(&f, &rw16(0x88, 0, 2), &[], 2 * 4096).unwrap();
        assert!(got[..4096].iter().all(|&b| b == 9));
        assert!(got[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn blocks_of_4096_bytes_in_write_same_unmap_verify_and_compare_and_write() {
        let f = fixture_4k();
        // WRITE SAME(16) with LBDATA: every 4096-byte block stamped with
        // its own LBA.
        let mut same = rw16(0x93, 4, 3);
        same[1] = 0x02;
        run_4k(&f, &same, &[0xab; 4096], 0).unwrap();
        let got = run_4k(&f, &rw16(0x88, 4, 3), &[], 3 * 4096).unwrap();
        for (i, block) in got.chunks(4096).enumerate() {
            assert_eq!(&block[..4], &(4 + i as u32).to_be_bytes());
            assert!(block[4..].iter().all(|&b| b == 0xab));
        }
        // Its block is one 4096-byte block: 512 bytes are too few.
        assert_eq!(
            run_4k(&f, &rw16(0x93, 0, 1), &[1; 512], 0),
            Err(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH))
        );
        // UNMAP of block 5 only.
        let list = unmap_list(&[(5, 1)]);
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
        run_4k(&f, &cdb, &list, 0).unwrap();
        let got = run_4k(&f, &rw16(0x88, 4, 3), &[], 3 * 4096).unwrap();
        let zeroed: Vec<bool> = got
            .chunks(4096)
            .map(|b| b.iter().all(|&x| x == 0))
            .collect();
        assert_eq!(zeroed, [false, true, false]);
        // VERIFY(16) with BYTCHK: the miscompare offset counts bytes.
        let mut expect = got[..4096].to_vec();
        expect[4000] ^= 1;
        let mut verify = rw16(0x8f, 4, 1);
        verify[1] = 0x02;
        assert_eq!(
            run_4k(&f, &verify, &expect, 0).unwrap_err().info,
            Some(4000)
        );
        // COMPARE AND WRITE of one 4096-byte block: 8192 bytes of data-out.
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[9] = 4;
        caw[13] = 1;
        let mut halves = got[..4096].to_vec();
        halves.extend_from_slice(&[0x11; 4096]);
        assert_eq!(
            run_4k(&f, &caw, &halves[..4096 + 512], 0),
            Err(Sense::invalid_field())
        );
        run_4k(&f, &caw, &halves, 0).unwrap();
        assert!(run_4k(&f, &rw16(0x88, 4, 1), &[], 4096)
            .unwrap()
            .iter()
            .all(|&b| b == 0x11));
        // WRITE SAME with no block count runs to the end, in 4096-byte
        // blocks.
        run_4k(&f, &rw16(0x93, BLOCKS - 2, 0), &[7; 4096], 0).unwrap();
        let tail = run_4k(&f, &rw16(0x88, BLOCKS - 3, 3), &[], 3 * 4096).unwrap();
        assert!(tail[..4096].iter().all(|&b| b == 0));
        assert!(tail[4096..].iter().all(|&b| b == 7));
        // GET LBA STATUS counts 4096-byte blocks.
        assert_eq!(
            lba_status(&run_4k(&f, &get_lba_status(0, 4096), &[], 4096).unwrap())[..3],
            [(0, 4, 1), (4, 1, 0), (5, 1, 1)]
        );
    }

    #[test]
    fn synchronize_cache_checks_its_range() {
        let f = fixture();
        run(&f, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).unwrap();
        assert_eq!(
            run(&f, &[0x35, 0, 0, 0, 0, 70, 0, 0, 1, 0], &[], 0),
            Err(Sense::out_of_range())
        );
    }

    #[test]
    fn long_block_by_block_commands_run_in_pieces_that_cover_them_exactly() {
        let shift = 12;
        let limit = 64 << 20;
        let per = limit >> shift;
        let ws = |lba, blocks, unmap| Command::WriteSame {
            lba,
            blocks,
            unmap,
            lbdata: true,
            pbdata: false,
            ndob: false,
        };
        let cover = |p: Vec<Command>| -> Vec<(u64, u64)> {
            p.iter()
                .map(|c| match *c {
                    Command::WriteSame { lba, blocks, .. }
                    | Command::Verify { lba, blocks, .. } => (lba, blocks),
                    _ => panic!("{c:?}"),
                })
                .collect()
        };
        // Zero blocks: from 5 to the end of a LUN of 2.5 pieces and 5.
        let capacity = 2 * per + per / 2 + 5;
        let p = cover(pieces(&ws(5, 0, false), shift, capacity, limit).unwrap());
        assert_eq!(p, [(5, per), (5 + per, per), (5 + 2 * per, per / 2)]);
        let v = Command::Verify {
            lba: 0,
            blocks: per + 1,
            bytchk: false,
        };
        assert_eq!(
            cover(pieces(&v, shift, capacity, limit).unwrap()),
            [(0, per), (per, 1)]
        );
        // Short ones, unmapping, comparing and bad ranges run whole.
        assert!(pieces(&ws(0, per, false), shift, capacity, limit).is_none());
        assert!(pieces(&ws(0, 0, true), shift, capacity, limit).is_none());
        assert!(pieces(&ws(capacity + 1, 0, false), shift, capacity, limit).is_none());
        assert!(pieces(&ws(capacity - 1, per + 1, false), shift, capacity, limit).is_none());
        let bytchk = Command::Verify {
            lba: 0,
            blocks: capacity,
            bytchk: true,
        };
        assert!(pieces(&bytchk, shift, capacity, limit).is_none());
    }
}
