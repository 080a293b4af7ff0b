//! Deterministic data patterns, so a checker can regenerate what a writer
//! wrote from a small seed (demo, crash tests, benchmarks).

/// Fills `buf` with bytes derived from `seed` (xorshift64*). Never all
/// zero for a non-empty buffer, so a lost write cannot pass for a hole.
pub fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
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

/// A buffer of `len` bytes from `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(seed, &mut v);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_differ_by_seed_and_repeat_by_seed() {
        assert_eq!(super::bytes(1, 64), super::bytes(1, 64));
        assert_ne!(super::bytes(1, 64), super::bytes(2, 64));
        assert_ne!(super::bytes(0, 1), vec![0]);
    }
}
