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

use ferry_core::{MigrationState, Volume};

use crate::lun::Lun;
use crate::HostError;

pub use ferry_scsi::MAX_LUN_SIZE;

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
        if size > MAX_LUN_SIZE {
            return Err(bad(format!(
                "{size} bytes is more than the {MAX_LUN_SIZE} a LUN may have"
            )));
        }
        if let Some(old) = self.grow_migration(size)? {
            return Ok(old);
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
                self.publish_size(size);
            }
            Ok((old, None))
        })?;
        if old != size {
            log::info!("{}: resized from {old} to {size} bytes", self.spec());
        }
        Ok(old)
    }

    /// Grows the migration under the LUN, if one is in progress: with
    /// its copier stopped and I/O held off, `MigratingVolume::grow` grows
    /// both legs and the index durably and hands back the volume to serve
    /// (see `ferry_core::migrate::grow`). `None`: no migration in progress.
    fn grow_migration(&self, size: u64) -> Result<Option<u64>, HostError> {
        let _admin = self.admin.lock();
        let mut slot = self.migration.lock();
        let Some(m) = slot.as_mut() else {
            return Ok(None);
        };
        if !matches!(
            m.vol.state(),
            MigrationState::Copying | MigrationState::Copied | MigrationState::Aborting
        ) {
            return Ok(None);
        }
        let old = m.vol.size();
        if size == old {
            return Ok(Some(old));
        }
        if let Some(c) = m.copier.take() {
            c.stop();
        }
        let mut current = self.current.write();
        let grown = m.vol.grow(size).or_else(|e| {
            // Only a grow cut short after it began replacing the index is
            // reopened (which finishes it, or serves the old size). A
            // fence from before (a failed flush) stays: a failed flush is
            // never retried, and a reopen would trust what it lost.
            if !m.vol.index_replaced() {
                return Err(e);
            }
            log::error!(
                "{}: growing failed ({e}); reopening the migration",
                self.spec()
            );
            m.vol.reopen()
        });
        let result = match grown {
            Ok(vol) => {
                let now = vol.size();
                m.vol = vol.clone();
                *current = vol;
                if now != old {
                    self.publish_size(now);
                    log::info!(
                        "{}: grown from {old} to {now} bytes while migrating",
                        self.spec()
                    );
                }
                if now == size {
                    Ok(Some(old))
                } else {
                    Err(HostError::Resize {
                        lun: self.spec().to_string(),
                        why: format!("growing to {size} bytes was cut short; it stays {now}"),
                    })
                }
            }
            Err(e) => Err(HostError::from(e)),
        };
        drop(current);
        // The copier goes on with whichever volume is served.
        if self.run_copier && !m.vol.is_fenced() {
            match ferry_core::Copier::spawn(m.vol.clone(), crate::lun::copier_config()) {
                Ok(c) => m.copier = Some(c),
                Err(e) => log::error!("{}: the copier did not restart: {e}", self.spec()),
            }
        }
        result
    }

    /// Reports `size` bytes from now on: the LUN's size and capacity, and
    /// one more change each front-end owes every nexus a unit attention
    /// for. Called with I/O held off and the volume already that size.
    fn publish_size(&self, size: u64) {
        self.size.store(size, Ordering::Release);
        self.capacity_blocks.store(
            size >> self.block_shift.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.capacity_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the LUN's capacity changed since it was opened: a
    /// front-end owes each nexus a CAPACITY DATA HAS CHANGED unit
    /// attention per change.
    pub fn capacity_changes(&self) -> u64 {
        self.capacity_changes.load(Ordering::Acquire)
    }
}
