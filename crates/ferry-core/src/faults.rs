//! Named fault points: every metadata write and every flush the engine
//! depends on for durability has a name here, and the engine announces
//! each one through [`crate::MetaStore::fault_point`] just before the
//! operation. Production stores ignore the call; the simulated store of
//! the `sim` feature can crash the "process" at any of them, which is how
//! `tests/crash_points.rs` explores every point both ways (process crash,
//! power loss) and checks a reference model after each.
//!
//! A crash *at* a point means the operation it names never happened; a
//! crash right after it is the crash at the next point. The list is
//! exhaustive on purpose: the exploration test fails when a scenario
//! reaches a point not listed here, or when a listed point is never
//! reached, so the list cannot drift from the code.
//!
//! Three lists, one per exploration: [`ENGINE`] (the migration engine,
//! announced through [`crate::MetaStore::fault_point`] and explored by
//! `tests/crash_points.rs` here), [`SNAPSHOT`] (a file volume's snapshot
//! copy and restore) and [`RESERVATIONS`] (saving a LUN's persistent
//! reservations in a file volume's slot). The last two are durable steps
//! of the file backend on real files: `ferry_file::steps` announces them
//! to a test hook, and `ferry-host`'s `tests/crash_points.rs` explores
//! them. [`ALL`] is the three together.

/// Creating the all-clear index of a new migration.
pub const START_CREATE_INDEX: &str = "start.create_index";
/// Storing the record that puts the target in a migration.
pub const START_STORE_RECORD: &str = "start.store_record";
/// Marking the source as the source of the migration.
pub const START_STORE_MARKER: &str = "start.store_marker";
/// Reopen after a reboot: rewriting the adopted bits and the new epoch.
pub const OPEN_ADOPT_INDEX: &str = "open.adopt_index";
/// Reopen: syncing the index (the adopted bits after a reboot, what the
/// dead process wrote in the same boot).
pub const OPEN_SYNC_INDEX: &str = "open.sync_index";
/// Reopen in the same boot: clearing confirmed bits an interrupted
/// copy-back left ahead of the migrated bits.
pub const OPEN_REPAIR_CONFIRMED: &str = "open.repair_confirmed";
/// Resume: writing back a source marker a crash lost.
pub const RESUME_STORE_MARKER: &str = "resume.store_marker";
/// A write's written bit, before the data it covers.
pub const WRITE_MARK_WRITTEN: &str = "write.mark_written";
/// A partial write to a region not yet copied reaching the source, after
/// the target.
pub const WRITE_SOURCE: &str = "write.source";
/// A write the source refused: the rest of its region copied from the
/// source to the target, which has the write.
pub const WRITE_COPY_UP: &str = "write.copy_up";
/// A write's data reaching the target (or, aborting, the source).
pub const WRITE_DATA: &str = "write.data";
/// A write's region marked migrated after its data is on the target.
pub const WRITE_MARK_MIGRATED: &str = "write.mark_migrated";
/// The copier writing a region to the target.
pub const COPY_WRITE_TARGET: &str = "copy.write_target";
/// The copier marking a batch of copied regions.
pub const COPY_MARK_MIGRATED: &str = "copy.mark_migrated";
/// A checkpoint flushing the source (during an abort).
pub const CHECKPOINT_FLUSH_SOURCE: &str = "checkpoint.flush_source";
/// A checkpoint flushing the target.
pub const CHECKPOINT_FLUSH_TARGET: &str = "checkpoint.flush_target";
/// A checkpoint writing the confirmed words.
pub const CHECKPOINT_WRITE_CONFIRMED: &str = "checkpoint.write_confirmed";
/// A checkpoint syncing the index.
pub const CHECKPOINT_SYNC_INDEX: &str = "checkpoint.sync_index";
/// Storing a record with a new state (copied, committed, aborting, aborted).
pub const STATE_STORE_RECORD: &str = "state.store_record";
/// Commit's cleanup: the source marker now forwards to the target.
pub const COMMIT_STORE_MARKER: &str = "commit.store_marker";
/// Commit's cleanup: removing the index.
pub const COMMIT_REMOVE_INDEX: &str = "commit.remove_index";
/// Abort copy-back: a region written back to the source.
pub const COPY_BACK_WRITE_SOURCE: &str = "copy_back.write_source";
/// Abort copy-back: flushing the source before bits are cleared.
pub const COPY_BACK_FLUSH_SOURCE: &str = "copy_back.flush_source";
/// Abort copy-back: clearing migrated and confirmed words.
pub const COPY_BACK_CLEAR_CONFIRMED: &str = "copy_back.clear_confirmed";
/// Abort copy-back: syncing the cleared words.
pub const COPY_BACK_SYNC_INDEX: &str = "copy_back.sync_index";
/// End of an abort: flushing the source before the aborted state.
pub const FINISH_ABORT_FLUSH_SOURCE: &str = "finish_abort.flush_source";
/// End of an abort: discarding the target.
pub const ABORT_DESTROY_TARGET: &str = "abort.destroy_target";
/// End of an abort: removing the source marker.
pub const ABORT_REMOVE_MARKER: &str = "abort.remove_marker";
/// A plain (committed or aborted) volume's flush.
pub const PLAIN_FLUSH: &str = "plain.flush";

/// Opening a file volume for writing: fsync of its directory, so that a
/// rename a dead process left in the page cache (a restore, a
/// reservations save) is durable before anything is served on top of it.
pub const VOLUME_OPEN_SYNC_DIR: &str = "volume.open_sync_dir";
/// Snapshot create and restore: flushing the served volume before it is
/// copied (the data an initiator flushed or not, made durable before the
/// copy is taken of it).
pub const SNAPSHOT_FLUSH_VOLUME: &str = "snapshot.flush_volume";
/// A copy's leftover temporary file (from an earlier crash) removed.
pub const SNAPSHOT_REMOVE_STALE: &str = "snapshot.remove_stale";
/// A copy's data: creating the temporary file (a reflink where the
/// filesystem shares blocks), then each chunk of a sparse copy.
pub const SNAPSHOT_COPY_DATA: &str = "snapshot.copy_data";
/// fsync of a copy, before any name makes it a snapshot or the volume.
pub const SNAPSHOT_SYNC_COPY: &str = "snapshot.sync_copy";
/// A synced copy linked under its snapshot name (`<path>.snap-<name>`).
pub const SNAPSHOT_PUBLISH: &str = "snapshot.publish";
/// The copy's temporary name removed once it is published.
pub const SNAPSHOT_REMOVE_TEMP: &str = "snapshot.remove_temp";
/// fsync of the directory: the snapshot's name durable.
pub const SNAPSHOT_SYNC_DIR: &str = "snapshot.sync_dir";
/// A copy abandoned after a failure (not a crash): its temporary file
/// removed.
pub const SNAPSHOT_DISCARD_COPY: &str = "snapshot.discard_copy";
/// Restore: the synced copy of the snapshot renamed over the volume.
pub const RESTORE_RENAME: &str = "restore.rename";
/// Restore: fsync of the directory, making the rename durable.
pub const RESTORE_SYNC_DIR: &str = "restore.sync_dir";

/// A file volume's resize: the file's new length set and synced.
pub const VOLUME_RESIZE: &str = "volume.resize";

/// Growing a volume being migrated (`MigratingVolume::grow`): the target
/// grown.
pub const GROW_TARGET: &str = "grow.target";
/// Growing: the source grown.
pub const GROW_SOURCE: &str = "grow.source";
/// Growing: the index replaced by one for the new size (durably).
pub const GROW_INDEX: &str = "grow.index";
/// Growing: the record given the new size; from here a reopen serves it.
pub const GROW_STORE_RECORD: &str = "grow.store_record";
/// A reopen finishing a grow cut short after its index was replaced: the
/// record given the size the index has.
pub const GROW_FINISH_RECORD: &str = "grow.finish_record";

/// Saving reservations: the new state written to the slot's temporary
/// file (`<path>.ferry-pr.tmp`).
pub const PR_WRITE_TEMP: &str = "pr.write_temp";
/// Saving reservations: fsync of the temporary file.
pub const PR_SYNC_TEMP: &str = "pr.sync_temp";
/// Saving reservations: the temporary file renamed over the slot.
pub const PR_RENAME: &str = "pr.rename";
/// Saving reservations: fsync of the directory, making the rename (and
/// so the PR OUT about to be acknowledged) durable.
pub const PR_SYNC_DIR: &str = "pr.sync_dir";

/// A file volume's snapshot create and restore, and its reopen, in no
/// particular order.
pub const SNAPSHOT: &[&str] = &[
    VOLUME_OPEN_SYNC_DIR,
    SNAPSHOT_FLUSH_VOLUME,
    SNAPSHOT_REMOVE_STALE,
    SNAPSHOT_COPY_DATA,
    SNAPSHOT_SYNC_COPY,
    SNAPSHOT_PUBLISH,
    SNAPSHOT_REMOVE_TEMP,
    SNAPSHOT_SYNC_DIR,
    SNAPSHOT_DISCARD_COPY,
    RESTORE_RENAME,
    RESTORE_SYNC_DIR,
];

/// Saving persistent reservations in a file volume's slot.
pub const RESERVATIONS: &[&str] = &[PR_WRITE_TEMP, PR_SYNC_TEMP, PR_RENAME, PR_SYNC_DIR];

/// A file volume's resize (`ferry-host`'s `tests/resize.rs`).
pub const RESIZE: &[&str] = &[VOLUME_RESIZE];

/// Growing a volume being migrated, and the reopen that finishes a grow
/// cut short (`tests/grow.rs`).
pub const GROW: &[&str] = &[
    GROW_TARGET,
    GROW_SOURCE,
    GROW_INDEX,
    GROW_STORE_RECORD,
    GROW_FINISH_RECORD,
];

/// Every named point of every list.
pub const ALL: &[&str] = &concat::<
    { ENGINE.len() + SNAPSHOT.len() + RESERVATIONS.len() + RESIZE.len() + GROW.len() },
>([ENGINE, SNAPSHOT, RESERVATIONS, RESIZE, GROW]);

/// The lists one after the other; `N` must be their total length.
const fn concat<const N: usize>(lists: [&[&'static str]; 5]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut n = 0;
    let mut l = 0;
    while l < lists.len() {
        let mut i = 0;
        while i < lists[l].len() {
            out[n] = lists[l][i];
            n += 1;
            i += 1;
        }
        l += 1;
    }
    assert!(n == N, "the lists' lengths add up to N");
    out
}

/// Every named point of the migration engine, in no particular order.
pub const ENGINE: &[&str] = &[
    START_CREATE_INDEX,
    START_STORE_RECORD,
    START_STORE_MARKER,
    OPEN_ADOPT_INDEX,
    OPEN_SYNC_INDEX,
    OPEN_REPAIR_CONFIRMED,
    RESUME_STORE_MARKER,
    WRITE_MARK_WRITTEN,
    WRITE_SOURCE,
    WRITE_COPY_UP,
    WRITE_DATA,
    WRITE_MARK_MIGRATED,
    COPY_WRITE_TARGET,
    COPY_MARK_MIGRATED,
    CHECKPOINT_FLUSH_SOURCE,
    CHECKPOINT_FLUSH_TARGET,
    CHECKPOINT_WRITE_CONFIRMED,
    CHECKPOINT_SYNC_INDEX,
    STATE_STORE_RECORD,
    COMMIT_STORE_MARKER,
    COMMIT_REMOVE_INDEX,
    COPY_BACK_WRITE_SOURCE,
    COPY_BACK_FLUSH_SOURCE,
    COPY_BACK_CLEAR_CONFIRMED,
    COPY_BACK_SYNC_INDEX,
    FINISH_ABORT_FLUSH_SOURCE,
    ABORT_DESTROY_TARGET,
    ABORT_REMOVE_MARKER,
    PLAIN_FLUSH,
];
