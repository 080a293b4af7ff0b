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
//! A process serving an image (or migrating it offline) holds its
//! exclusive lock for as long as it has it open (`Image::hold_exclusive`),
//! and the lock is never handed to a client asking for it: this is the one
//! path that takes it from a holder still watching the image. A holder
//! whose watch has expired (it died) loses it to the next opener anyway.
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

/// Adds `addr` to the OSD blocklist for [`BLOCKLIST_SECONDS`]: from then
/// on the OSDs refuse everything that client sends, image data, metadata
/// and ferry's index objects alike.
pub(crate) fn blocklist(cluster: &Cluster, addr: &str) -> Result<()> {
    let cmd = serde_json::json!({
        "prefix": "osd blocklist",
        "blocklistop": "add",
        "addr": addr,
        "expire": f64::from(BLOCKLIST_SECONDS),
    });
    cluster.mon_command(&cmd.to_string())?;
    Ok(())
}

/// Blocklists every other client with `spec`'s image open and breaks its
/// lock (the exclusive lock a serving process holds, see
/// `Image::hold_exclusive`, or ferry's advisory one); returns the
/// addresses fenced.
pub fn fence_other_clients(spec: &RbdSpec) -> Result<Vec<String>> {
    let cluster = Cluster::connect(&spec.connect_options())?;
    let io = cluster.ioctx(&spec.pool)?;
    // Read-write so the lock can be broken; it writes nothing, so it
    // never takes the lock itself.
    let image = Image::open(&io, &spec.image, None, false)?;
    let mut fenced = Vec::new();
    let watchers = watchers_besides(&cluster, &image)?;
    // A lock holder whose watch has lapsed (hung, partitioned) is fenced
    // too: it may still write.
    let me = format!("client.{}", cluster.instance_id());
    let lockers: Vec<_> = image
        .lockers()?
        .into_iter()
        .filter(|l| l.client != me)
        .collect();
    let targets = watchers
        .iter()
        .map(|w| (format!("client.{}", w.id), w.addr.clone()))
        .chain(lockers.iter().map(|l| (l.client.clone(), l.addr.clone())));
    for (client, addr) in targets {
        if fenced.contains(&addr) {
            continue;
        }
        blocklist(&cluster, &addr)?;
        log::warn!(
            "fenced {client} at {addr} (blocklisted for {BLOCKLIST_SECONDS} s): it had {} open",
            spec.short()
        );
        fenced.push(addr);
    }
    for owner in image.lock_owners()? {
        image.break_lock(&owner)?;
        log::warn!("broke {owner}'s exclusive lock on {}", spec.short());
    }
    for l in image.lockers()?.into_iter().filter(|l| l.client != me) {
        image.break_advisory(&l)?;
        log::warn!("broke {l}'s lock on {}", spec.short());
    }
    Ok(fenced)
}
