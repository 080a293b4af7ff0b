//! Online resize of a served LUN: the volume under it changes size with
//! I/O held off, the LUN's capacity follows, and each front-end owes
//! every nexus a CAPACITY DATA HAS CHANGED unit attention
//! ([`Lun::capacity_changes`]), so initiators read the capacity again
//! without logging out.
//!
//! Growing is what admins do; shrinking drops data at the end and is
//! refused unless forced. The volume's own resize is durable when it
//! returns and leaves the old size or the new one after a crash
//! (`ferry_core::Volume::resize`).
use std::sync::atomic::Ordering;

use ferry_core::Volume;

use crate::lun::Lun;
use crate::HostError;

/// The largest size a LUN may be given: 2^56 bytes (64 PiB), far past
/// any backend here, so a typo of a few digits is refused, not tried.
pub const MAX_SIZE: u64 = 1 << 56;

impl Lun {
    /// Changes the volume under the LUN to `size` bytes (a whole number
    /// of the LUN's blocks); a smaller size only with `force`. Returns the
    /// size before.
    pub fn set_size(&self, size: u64, force: bool) -> Result<u64, HostError> {
        let bad = |why: String| HostError::Resize {
            lun: self.spec().to_string(),
            why,
        };
        let block = u64::from(self.block_size());
        if size == 0 || !size.is_multiple_of(block) {
            return Err(bad(format!(
                "{size} bytes is not a positive whole number of the LUN's {block}-byte blocks"
            )));
        }
        if size > MAX_SIZE {
            return Err(bad(format!(
                "{size} bytes is more than the {MAX_SIZE} a LUN may have"
            )));
        }
        if let Some(p) = self.status() {
            return Err(bad(format!(
                "it is being migrated to {} ({}); resize it after the commit or abort",
                p.target, p.state
            )));
        }
        let old = self.quiesced(|vol| {
            let old = vol.size();
            if size < old && !force {
                return Err(ferry_core::Error::CannotResize {
                    volume: self.spec().to_string(),
                    why: format!(
                        "{size} bytes is smaller than its {old}: shrinking drops the data at the end (--force to do it anyway)"
                    ),
                });
            }
            if size != old {
                vol.resize(size)?;
                // ORDERING: the volume has its new size (durably) before
                // any command can see the new capacity; commands wait on
                // the quiesce until then.
                self.size.store(size, Ordering::Release);
                self.capacity_blocks
                    .store(size >> self.block_shift.load(Ordering::Relaxed), Ordering::Relaxed);
                self.capacity_changes.fetch_add(1, Ordering::AcqRel);
            }
            Ok((old, None))
        })?;
        if old != size {
            log::info!("{}: resized from {old} to {size} bytes", self.spec());
        }
        Ok(old)
    }

    /// How many times the LUN's capacity changed since it was opened: a
    /// front-end owes each nexus a CAPACITY DATA HAS CHANGED unit
    /// attention per change.
    pub fn capacity_changes(&self) -> u64 {
        self.capacity_changes.load(Ordering::Acquire)
    }
}
