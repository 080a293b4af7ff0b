//! Checks before a migration out of an RBD image starts, so that a doomed
//! migration is refused with reasons instead of failing halfway:
//!
//! - no other client has the source open (each open handle watches the
//!   image header; a second writer would bypass ferry's routing);
//! - the target pool exists and the cluster accepts a small write there
//!   (a full or read-only cluster fails here, not during the copy);
//! - the target pool's free space (`max_avail` of `ceph df`, which already
//!   accounts for replication) covers the source's used bytes (whole
//!   objects holding data, from diff iterate);
//! - no image of the target's name exists yet.
//!
//! The checks only read, apart from one 4 KiB probe object that is removed
//! at once.
use crate::error::{RbdError, Result};
use crate::image::{image_exists, Watcher};
use crate::rados::{Cluster, IoCtx};
use crate::spec::RbdSpec;
use crate::volume::RbdVolume;

/// What the prechecks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecheckReport {
    pub source: String,
    pub target: String,
    /// Clients other than us with the source open.
    pub other_clients: Vec<Watcher>,
    /// Bytes of the source's objects that hold data.
    pub source_used_bytes: u64,
    /// Whether the target pool exists.
    pub target_pool_exists: bool,
    /// Why a probe write to the target pool failed, if it did.
    pub target_write_error: Option<String>,
    /// Bytes the target pool can still take (0 if it does not exist).
    pub target_free_bytes: u64,
    /// An image of the target's name already exists.
    pub target_exists: bool,
}

impl PrecheckReport {
    /// One sentence per failed check; empty when the migration may start.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.other_clients.is_empty() {
            let who: Vec<String> = self
                .other_clients
                .iter()
                .map(|w| format!("client.{} at {}", w.id, w.addr))
                .collect();
            p.push(format!(
                "source {} is open by other clients ({}); stop them first",
                self.source,
                who.join(", ")
            ));
        }
        if !self.target_pool_exists {
            p.push(format!("the target pool of {} does not exist", self.target));
        } else {
            if let Some(e) = &self.target_write_error {
                p.push(format!(
                    "the target pool of {} refuses writes: {e}",
                    self.target
                ));
            }
            if self.target_free_bytes < self.source_used_bytes {
                p.push(format!(
                    "the target pool of {} has {} bytes free, the source uses {}",
                    self.target, self.target_free_bytes, self.source_used_bytes
                ));
            }
            if self.target_exists {
                p.push(format!("target image {} already exists", self.target));
            }
        }
        p
    }

    /// `Ok` when every check passed, else [`RbdError::Precheck`].
    pub fn ensure_ok(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(RbdError::Precheck(p))
        }
    }
}

/// Writes and removes a small probe object: does the pool accept writes?
pub fn probe_write(io: &IoCtx) -> Result<()> {
    let oid = format!("ferry_probe.{}", io.cluster().instance_id());
    io.write_object_full(&oid, &[0u8; 4096])?;
    io.remove_object(&oid)?;
    Ok(())
}

/// Bytes `pool` can still take: `max_avail` from the monitors' `df`, or,
/// if that is unavailable, the cluster's raw free space.
pub fn pool_free_bytes(cluster: &Cluster, pool: &str) -> Result<u64> {
    let from_df = cluster
        .mon_command(r#"{"prefix": "df", "format": "json"}"#)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v.get("pools")?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(pool))?
                .get("stats")?
                .get("max_avail")?
                .as_u64()
        });
    match from_df {
        Some(n) => Ok(n),
        None => Ok(cluster.stat()?.avail_bytes),
    }
}

/// Runs every check for migrating `source` to the image `target` (created
/// later by the caller). Connects to the target's cluster unless it is
/// reached the same way as the source's.
pub fn precheck_migration(source: &RbdVolume, target: &RbdSpec) -> Result<PrecheckReport> {
    let same_cluster = target.connect_options() == source.spec().connect_options();
    let cluster = if same_cluster {
        source.cluster().clone()
    } else {
        Cluster::connect(&target.connect_options())?
    };
    let mut report = PrecheckReport {
        source: source.spec().short(),
        target: target.short(),
        other_clients: source.other_clients()?,
        source_used_bytes: source.used_bytes()?,
        target_pool_exists: false,
        target_write_error: None,
        target_free_bytes: 0,
        target_exists: false,
    };
    let io = match cluster.ioctx(&target.pool) {
        Ok(io) => io,
        Err(RbdError::NoPool { .. }) => return Ok(report),
        Err(e) => return Err(e),
    };
    report.target_pool_exists = true;
    report.target_write_error = probe_write(&io).err().map(|e| e.to_string());
    report.target_free_bytes = pool_free_bytes(&cluster, &target.pool)?;
    report.target_exists = image_exists(&io, &target.image)?;
    Ok(report)
}
