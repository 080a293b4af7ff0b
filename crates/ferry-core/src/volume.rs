//! The block-volume abstraction every backend and the migrating volume share.
//!
//! Offsets and lengths are in bytes. Callers (the SCSI front-ends) check
//! ranges against [`Volume::size`] first; implementations check again and
//! return [`Error::OutOfRange`] rather than touching bytes past the end.
use crate::error::{Error, Result};

/// A run of bytes `[offset, offset + len)` that may hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A block volume. Implementations must be safe to call from many threads at
/// once; writes to disjoint ranges must not interfere.
pub trait Volume: Send + Sync {
    /// A short human-readable name (spec or path) used in errors and logs.
    fn name(&self) -> &str;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// The backend's natural allocation unit (4 MiB for RBD objects); the
    /// default region size of a migration out of this volume.
    fn object_size(&self) -> u64 {
        crate::DEFAULT_REGION_SIZE
    }

    /// Fills `buf` from `offset`. Holes read as zeroes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at `offset`. When this returns, a reader in this or any
    /// later process (short of power loss) sees the data.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable across power loss.
    fn flush(&self) -> Result<()>;

    /// Changes the size to `size` bytes, durably when it returns: a
    /// volume reopened after a crash has the old size or the new one,
    /// never another. Growing adds bytes that read as zeroes; shrinking
    /// drops the end. Callers hold I/O off while it runs. The default
    /// refuses (volumes that cannot change size).
    fn resize(&self, size: u64) -> Result<()> {
        Err(Error::CannotResize {
            volume: self.name().to_string(),
            why: format!("this kind of volume cannot change size (asked for {size} bytes)"),
        })
    }

    /// Makes `[offset, offset+len)` read as zeroes, deallocating where the
    /// backend can. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.size(), offset, len)?;
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize]; // ≤ 1 MiB, fits usize
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(&zeroes[..n as usize], offset + done)?; // n ≤ CHUNK
            done += n;
        }
        Ok(())
    }

    /// A hint that `[offset, offset+len)` is unused. Afterwards it reads as
    /// zeroes (ferry always promises that, so UNMAP can set LBPRZ).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    /// Extents within `[offset, offset+len)` that may hold non-zero data, in
    /// order. Bytes outside them are guaranteed to read as zeroes. The
    /// default reports the whole range.
    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        Ok(if len == 0 {
            vec![]
        } else {
            vec![Extent { offset, len }]
        })
    }
}

/// Checks that `[offset, offset+len)` lies within a volume of `size` bytes,
/// without overflowing.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

impl<T: Volume + ?Sized> Volume for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn object_size(&self) -> u64 {
        (**self).object_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn resize(&self, size: u64) -> Result<()> {
        (**self).resize(size)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        (**self).allocated(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_rejects_overflow_and_past_end() {
        assert!(check_range(100, 0, 100).is_ok());
        assert!(check_range(100, 100, 0).is_ok());
        assert!(matches!(
            check_range(100, 99, 2),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range(100, u64::MAX, 2),
            Err(Error::OutOfRange { .. })
        ));
    }
}
