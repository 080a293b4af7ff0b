//! `ferry snapshot ...`: snapshots of a LUN, taken and restored while it
//! is served (through the serving process), or of a volume nobody serves.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_host::control::{call, find_host, Request};
use ferry_host::snapshot::{SnapshotInfo, SnapshotOp};
use ferry_host::{Lun, VolumeSpec};

use crate::units::human;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot (I/O pauses for the copy: instant with reflinks).
    Create(Named),
    /// List snapshots.
    List(Unnamed),
    /// Delete a snapshot.
    Delete(Named),
    /// Roll the volume back to a snapshot while it is served; the state
    /// before is kept as snapshot `before-restore-<ms>`.
    Restore(Named),
}

#[derive(Args)]
pub struct Named {
    /// The volume (the LUN's spec).
    pub volume: String,
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct Unnamed {
    pub volume: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: SnapshotCmd) -> Result<()> {
    let (op, volume, name, json) = match cmd {
        SnapshotCmd::Create(a) => (SnapshotOp::Create, a.volume, Some(a.name), a.json),
        SnapshotCmd::List(a) => (SnapshotOp::List, a.volume, None, a.json),
        SnapshotCmd::Delete(a) => (SnapshotOp::Delete, a.volume, Some(a.name), a.json),
        SnapshotCmd::Restore(a) => (SnapshotOp::Restore, a.volume, Some(a.name), a.json),
    };
    let spec = VolumeSpec::parse(&volume)?.to_string();
    let list: Vec<SnapshotInfo> = match find_host(&spec) {
        Some(sock) => {
            let r = call(
                &sock,
                &Request::Snapshot {
                    volume: spec.clone(),
                    action: op.clone(),
                    name: name.clone(),
                },
            )
            .with_context(|| format!("asking {}", sock.display()))?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_default());
            }
            r.snapshots.unwrap_or_default()
        }
        None => {
            // Nobody serves it: do it here, on the volume itself.
            let lun = Lun::open_with(&spec, false).with_context(|| format!("opening {spec}"))?;
            lun.snapshot(&op, name.as_deref())?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    match op {
        SnapshotOp::List => {
            for s in &list {
                println!(
                    "{:<32} {:>10} data of {:>10}  created {}",
                    s.name,
                    human(s.allocated),
                    human(s.size),
                    s.created
                );
            }
        }
        SnapshotOp::Create => println!("snapshot {} of {spec} taken", name.unwrap_or_default()),
        SnapshotOp::Delete => println!("snapshot {} of {spec} deleted", name.unwrap_or_default()),
        SnapshotOp::Restore => println!(
            "{spec} restored to snapshot {}; the state before is snapshot {}",
            name.unwrap_or_default(),
            list.first().map(|s| s.name.as_str()).unwrap_or("?")
        ),
    }
    Ok(())
}
