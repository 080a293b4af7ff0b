//! `ferry volume resize`: grow a volume (or, forced, shrink it) while it
//! is served, through the serving process (every front-end then reports
//! the new capacity with a CAPACITY DATA HAS CHANGED unit attention), or
//! offline when nothing serves it.
use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_core::Volume;
use ferry_host::control::{call, find_host, Request};
use ferry_host::VolumeSpec;

use crate::units::{human, parse_size};

#[derive(Args)]
pub struct ResizeArgs {
    /// The volume (a served LUN's spec, or one nothing serves).
    pub spec: String,
    /// The new size, e.g. 20G.
    pub size: String,
    /// Allow a smaller size: the data past it is lost.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &ResizeArgs) -> Result<()> {
    let spec = VolumeSpec::parse(&a.spec)?;
    let size = parse_size(&a.size)?;
    if size > ferry_host::resize::MAX_LUN_SIZE {
        bail!(
            "{} is more than the {} a volume may have",
            a.size,
            human(ferry_host::resize::MAX_LUN_SIZE)
        );
    }
    let name = spec.to_string();
    if let Some(sock) = find_host(&name) {
        let r = call(
            &sock,
            &Request::Resize {
                volume: name.clone(),
                size,
                force: a.force,
            },
        )?;
        if !r.ok {
            bail!("{}", r.error.unwrap_or_default());
        }
        println!("{name}: {} ({size} bytes), served", human(size));
        return Ok(());
    }
    // Nothing serves it: resize it here, holding its lock meanwhile.
    let (vol, store) = spec.open().with_context(|| format!("opening {name}"))?;
    if store.load_source_marker()?.is_some()
        || ferry_core::MigratingVolume::load_record(store.as_ref())?.is_some()
    {
        bail!("{name} belongs to a migration; serve it (ferry serve) and resize it after the commit or abort");
    }
    let old = vol.size();
    if size < old && !a.force {
        bail!(
            "{} is smaller than {name}'s {}: shrinking drops the data at the end (--force to do it anyway)",
            a.size,
            human(old)
        );
    }
    if size & 511 != 0 {
        bail!("{size} bytes is not a whole number of 512-byte blocks");
    }
    vol.resize(size)?;
    println!("{name}: {} -> {} ({size} bytes)", human(old), human(size));
    Ok(())
}
