//! Fencing an image's previous server before a new gateway serves it.
//!
//! When the cluster map moves a LUN (its node's session ended), the node
//! that died may not be dead: partitioned, hung, or its tgtd still
//! running. Before the new node opens the image, every other client that
//! has it open is blocklisted in the OSD map (it can no longer write
//! anything, even if it wakes up), and the exclusive lock it may hold is
//! broken, so the new server's first write takes the lock at once instead
//! of waiting for the dead owner's watch to time out.
//!
//! Only the node holding the LUN's claim calls this, and only for a LUN
//! its own target does not serve yet.
use crate::image::{Image, Watcher};
use crate::rados::Cluster;
use crate::{RbdSpec, Result};

/// How long a blocklist entry lasts. The fenced client must not come back
/// within it; an hour is what `rbd lock rm` uses by default too.
const BLOCKLIST_SECONDS: u32 = 3600;

/// The other clients with `spec`'s image open (watchers), by address:
/// a gateway serving it, or a dead one not fenced yet.
pub fn other_clients(spec: &RbdSpec) -> Result<Vec<String>> {
    let cluster = Cluster::connect(&spec.connect_options())?;
    let io = cluster.ioctx(&spec.pool)?;
    let image = Image::open(&io, &spec.image, None, true)?;
    Ok(watchers_besides(&cluster, &image)?
        .into_iter()
        .map(|w| format!("client.{} at {}", w.id, w.addr))
        .collect())
}

/// The clients watching `image` other than this one (`cluster`'s).
fn watchers_besides(cluster: &Cluster, image: &Image) -> Result<Vec<Watcher>> {
    // Watcher ids are client global ids, like ours.
    let me = i64::try_from(cluster.instance_id()).unwrap_or(-1);
    Ok(image
        .watchers()?
        .into_iter()
        .filter(|w| w.id != me)
        .collect())
}

/// Blocklists every other client with `spec`'s image open and breaks its
/// lock; returns the addresses fenced.
pub fn fence_other_clients(spec: &RbdSpec) -> Result<Vec<String>> {
    let cluster = Cluster::connect(&spec.connect_options())?;
    let io = cluster.ioctx(&spec.pool)?;
    // Read-write so the lock can be broken; it writes nothing, so it
    // never takes the lock itself.
    let image = Image::open(&io, &spec.image, None, false)?;
    let mut fenced = Vec::new();
    for w in watchers_besides(&cluster, &image)? {
        if fenced.contains(&w.addr) {
            continue;
        }
        let cmd = serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "add",
            "addr": w.addr,
            "expire": f64::from(BLOCKLIST_SECONDS),
        });
        cluster.mon_command(&cmd.to_string())?;
        log::warn!(
            "fenced client.{} at {} (blocklisted for {BLOCKLIST_SECONDS} s): it had {} open",
            w.id,
            w.addr,
            spec.short()
        );
        fenced.push(w.addr);
    }
    for owner in image.lock_owners()? {
        image.break_lock(&owner)?;
        log::warn!("broke {owner}'s exclusive lock on {}", spec.short());
    }
    Ok(fenced)
}
