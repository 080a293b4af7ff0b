//! Deterministic block contents, so a checker can regenerate what a writer
//! wrote from a few numbers instead of keeping the data.
//!
//! Two kinds:
//!
//! - [`fill_lba`]: a block's contents from `(seed, lba)`, for
//!   `write-pattern` / `verify-pattern`;
//! - [`fill_stamped`]: a block written by the load generator, from
//!   `(seed, seq, lba)`, that also *carries* its `seq` and `lba` in a small
//!   header. After a crash, [`stamped_seq`] tells "this block holds write
//!   #seq" apart from "this block holds something else", which is how
//!   `verify-log` distinguishes a write that was never acknowledged but
//!   landed anyway (fine) from a lost acknowledged write (not fine).

/// Header of a stamped block: magic, seq, lba (little endian).
const MAGIC: &[u8; 8] = b"FERRYLD1";
pub const STAMP_HEADER: usize = 24;

/// splitmix64 of `(seed, a, b)`: a well-spread 64-bit key.
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` from `key` with xorshift64*; never all zero, so a lost
/// write cannot pass for a hole.
pub fn fill(key: u64, buf: &mut [u8]) {
    let mut x = key | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    if let Some(b) = buf.first_mut() {
        *b |= 1;
    }
}

/// The contents of block `lba` for `write-pattern` with `seed`.
pub fn fill_lba(seed: u64, lba: u64, buf: &mut [u8]) {
    fill(mix(seed, lba, 0x5041_5454), buf);
}

/// The contents of block `lba` written by the load generator's write
/// number `seq` under `seed`: a header naming `seq` and `lba`, then data.
pub fn fill_stamped(seed: u64, seq: u64, lba: u64, buf: &mut [u8]) {
    assert!(buf.len() > STAMP_HEADER, "a block holds the stamp header");
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&lba.to_le_bytes());
    fill(mix(seed, seq, lba), &mut buf[STAMP_HEADER..]);
}

/// If `buf` is exactly what [`fill_stamped`] writes for `(seed, seq, lba)`
/// for some `seq`, that `seq`.
pub fn stamped_seq(seed: u64, lba: u64, buf: &[u8]) -> Option<u64> {
    if buf.len() <= STAMP_HEADER || &buf[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let at = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    if at != lba {
        return None;
    }
    let mut want = vec![0; buf.len()];
    fill_stamped(seed, seq, lba, &mut want);
    (want == buf).then_some(seq)
}

/// A small seeded xorshift generator for choosing LBAs and operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed, 0x0052_4E47, 1) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lba_patterns_repeat_and_differ() {
        let (mut a, mut b, mut c) = (vec![0; 512], vec![0; 512], vec![0; 512]);
        fill_lba(7, 10, &mut a);
        fill_lba(7, 10, &mut b);
        fill_lba(7, 11, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        fill_lba(8, 10, &mut c);
        assert_ne!(a, c);
        assert!(a.iter().any(|&x| x != 0));
    }

    #[test]
    fn stamps_decode_only_for_their_lba_and_seed() {
        let mut blk = vec![0; 512];
        fill_stamped(3, 42, 1000, &mut blk);
        assert_eq!(stamped_seq(3, 1000, &blk), Some(42));
        assert_eq!(stamped_seq(3, 1001, &blk), None);
        assert_eq!(stamped_seq(4, 1000, &blk), None);
        blk[300] ^= 1;
        assert_eq!(stamped_seq(3, 1000, &blk), None);
        assert_eq!(stamped_seq(3, 1000, &[0; 512]), None);
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
        }
    }
}
