//! Writing and checking [`pattern::fill_lba`] data over a range of blocks:
//! the `write-pattern` / `verify-pattern` commands, used to seed a LUN
//! before a migration and check every byte after it.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pattern;
use crate::session::Session;

/// Largest single READ/WRITE the region tools issue.
const CHUNK_BYTES: u64 = 1 << 20;

/// A range of blocks of a LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    pub offset_blocks: u64,
    pub blocks: u64,
}

impl Region {
    /// `blocks` from `offset_blocks` (default: to the end of the LUN),
    /// checked against the session's capacity.
    pub fn resolve(s: &Session, offset_blocks: u64, blocks: Option<u64>) -> Result<Region> {
        let size = s.num_blocks();
        if offset_blocks > size {
            return Err(Error::Invalid(format!(
                "offset {offset_blocks} is past the end of the LUN ({size} blocks)"
            )));
        }
        let blocks = blocks.unwrap_or(size - offset_blocks);
        if blocks == 0 || offset_blocks + blocks > size {
            return Err(Error::Invalid(format!(
                "{blocks} blocks from {offset_blocks} is not a non-empty range of the LUN ({size} blocks)"
            )));
        }
        Ok(Region {
            offset_blocks,
            blocks,
        })
    }

    /// `(lba, blocks)` pieces of at most `max` blocks covering the region.
    fn chunks(&self, max: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let end = self.offset_blocks + self.blocks;
        (self.offset_blocks..end)
            .step_by(max as usize)
            .map(move |lba| (lba, (end - lba).min(max) as u32))
    }
}

fn chunk_blocks(s: &Session) -> u64 {
    (CHUNK_BYTES / u64::from(s.block_size())).max(1)
}

/// Writes the pattern of `seed` over `region`; returns the bytes written.
pub fn write_pattern(s: &mut Session, seed: u64, region: Region) -> Result<u64> {
    let bs = s.block_size() as usize;
    let mut written = 0;
    for (lba, n) in region.chunks(chunk_blocks(s)) {
        let mut buf = vec![0; n as usize * bs];
        for (i, blk) in buf.chunks_mut(bs).enumerate() {
            pattern::fill_lba(seed, lba + i as u64, blk);
        }
        s.write(lba, &buf)?;
        written += buf.len() as u64;
    }
    Ok(written)
}

/// The result of [`verify_pattern`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatternCheck {
    pub checked_blocks: u64,
    pub mismatched_blocks: u64,
    pub first_mismatch_lba: Option<u64>,
}

/// Reads `region` back and compares every block with the pattern of
/// `seed`.
pub fn verify_pattern(s: &mut Session, seed: u64, region: Region) -> Result<PatternCheck> {
    verify_pattern_except(s, seed, region, &std::collections::BTreeSet::new(), None)
}

/// Like [`verify_pattern`], skipping the blocks in `skip` (for example the
/// blocks a load overwrote since the pattern was written) and, with
/// `load_seed`, blocks holding a write stamped by that load: after a target
/// crash, writes that were in flight (never acknowledged, so not in the
/// log) may or may not have landed.
pub fn verify_pattern_except(
    s: &mut Session,
    seed: u64,
    region: Region,
    skip: &std::collections::BTreeSet<u64>,
    load_seed: Option<u64>,
) -> Result<PatternCheck> {
    let bs = s.block_size() as usize;
    let mut want = vec![0; bs];
    let mut check = PatternCheck {
        checked_blocks: 0,
        mismatched_blocks: 0,
        first_mismatch_lba: None,
    };
    for (lba, n) in region.chunks(chunk_blocks(s)) {
        let got = s.read(lba, n)?;
        for (i, blk) in got.chunks(bs).enumerate() {
            let at = lba + i as u64;
            if skip.contains(&at) {
                continue;
            }
            if load_seed.is_some_and(|ls| pattern::stamped_seq(ls, at, blk).is_some()) {
                continue;
            }
            pattern::fill_lba(seed, at, &mut want);
            check.checked_blocks += 1;
            if blk != want.as_slice() {
                check.mismatched_blocks += 1;
                check.first_mismatch_lba.get_or_insert(at);
            }
        }
    }
    Ok(check)
}
