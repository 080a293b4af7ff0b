//! `ferry pr ...`: a LUN's persistent reservations as the initiators made
//! them, read from (or cleared in) the process serving it, or from the
//! volume's metadata when nobody serves it.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_host::control::{call, find_host, Request};
use ferry_host::{Lun, VolumeSpec};

#[derive(Subcommand)]
pub enum PrCmd {
    /// Show registrations, the reservation and the generation.
    Show(PrArgs),
    /// Drop every registration and the reservation (for a LUN a dead or
    /// fenced host still holds); registered hosts see RESERVATIONS
    /// PREEMPTED, as after a PR OUT CLEAR.
    Clear(PrArgs),
    /// Move where the state is kept, while no gateway serves the LUN:
    /// into a ZooKeeper map (the volume keeps a pointer; agents do this
    /// themselves before a node serves a LUN of their map), or back into
    /// the volume (a LUN leaving the map).
    Move(MoveArgs),
}

#[derive(Args)]
pub struct MoveArgs {
    /// The volume (the LUN's spec).
    pub volume: String,
    /// Keep them in this map: `zk://host:port[,host:port...][/root]`.
    #[arg(long, conflicts_with = "to_volume", requires = "lun")]
    pub to_map: Option<String>,
    /// The LUN's name in that map (the document is
    /// `<root>/reservations/<lun>`).
    #[arg(long, requires = "to_map")]
    pub lun: Option<String>,
    /// A file holding `user:password` for the map, which every gateway
    /// reads by this path.
    #[arg(long, requires = "to_map")]
    pub zk_auth_file: Option<std::path::PathBuf>,
    /// Keep them with the volume again.
    #[arg(long)]
    pub to_volume: bool,
}

#[derive(Args)]
pub struct PrArgs {
    /// The volume (the LUN's spec).
    pub volume: String,
    #[arg(long)]
    pub json: bool,
    /// Clear an RBD image's reservations here although another client
    /// has it open (a gateway that is dead but not fenced yet).
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: PrCmd) -> Result<()> {
    let (a, clear) = match cmd {
        PrCmd::Show(a) => (a, false),
        PrCmd::Clear(a) => (a, true),
        PrCmd::Move(m) => return move_home(m),
    };
    let spec = VolumeSpec::parse(&a.volume)?;
    let (state, home) = match find_host(&spec.to_string()) {
        Some(sock) => {
            let req = Request::Reservations {
                volume: spec.to_string(),
                clear,
            };
            let r = call(&sock, &req).with_context(|| format!("asking {}", sock.display()))?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_default());
            }
            (r.reservations.unwrap_or_default(), r.reservations_home)
        }
        None if clear => {
            // Nobody here serves it: write the cleared state where the
            // volume keeps it (its metadata, or the map it points to),
            // which also replaces a document too damaged to open the LUN
            // with. A gateway elsewhere serving it
            // would keep enforcing (and saving) its own state, so that is
            // refused.
            let others = spec.other_clients()?;
            if !others.is_empty() && !a.force {
                bail!(
                    "{spec} is open by {}: clear it on the gateway serving it, \
                     or pass --force if that gateway is dead",
                    others.join(", ")
                );
            }
            let (_, served) = ferry_host::lun::resolve(&spec)?;
            let (next, home) = ferry_agent::reservations::replace_offline(
                &served,
                &ferry_zk::ZkReservations,
                |old| old.cleared(),
            )?;
            (next, Some(home))
        }
        None => {
            let lun = Lun::open_with(&spec.to_string(), false)
                .with_context(|| format!("opening {spec}"))?;
            (lun.reservations().state(), Some(lun.reservations_home()))
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(());
    }
    if clear {
        println!("{spec}: persistent reservations cleared");
    }
    if let Some(h) = &home {
        println!("kept in {h}");
    }
    println!("generation {}", state.generation);
    match &state.reservation {
        None => println!("reservation: none"),
        Some(r) => println!(
            "reservation: {:?} (type {}) held by {}",
            r.kind,
            r.kind.code(),
            r.holder
                .as_ref()
                .map_or("every registrant".to_string(), |h| h.to_string())
        ),
    }
    println!("registrations: {}", state.registrations.len());
    for r in &state.registrations {
        let holder = if state.is_holder(&r.nexus) {
            "  holder"
        } else {
            ""
        };
        println!("  {:#018x}  {}{holder}", r.key, r.nexus);
    }
    Ok(())
}

fn move_home(m: MoveArgs) -> Result<()> {
    let spec = VolumeSpec::parse(&m.volume)?;
    if let Some(sock) = find_host(&spec.to_string()) {
        bail!(
            "{spec} is served here ({}): stop serving it first",
            sock.display()
        );
    }
    let others = spec.other_clients()?;
    if !others.is_empty() {
        bail!(
            "{spec} is open by {}: stop serving it there first",
            others.join(", ")
        );
    }
    let changed = match (&m.to_map, &m.lun, m.to_volume) {
        (Some(map), Some(lun), false) => {
            let cfg = ferry_zk::ZkConfig::parse(map)?;
            let auth = match &m.zk_auth_file {
                Some(f) => Some(
                    std::fs::canonicalize(f)
                        .with_context(|| format!("ZooKeeper credentials {}", f.display()))?,
                ),
                None => None,
            };
            let url = format!("zk://{}{}", cfg.servers, cfg.root);
            let p = ferry_host::ferry_pr::Pointer::new(&url, lun, auth.as_deref());
            ferry_agent::reservations::keep_in_map(&spec.to_string(), &p, &zk_homes())?
        }
        (None, None, true) => {
            ferry_agent::reservations::keep_with_volume(&spec.to_string(), &zk_homes())?
        }
        _ => bail!("say where: --to-map URL --lun NAME, or --to-volume"),
    };
    let lun = Lun::open_with(&spec.to_string(), false)?;
    println!(
        "{spec}: persistent reservations {} in {}",
        if changed { "now kept" } else { "already kept" },
        lun.reservations_home()
    );
    Ok(())
}

/// The homes this command follows reservation pointers with.
fn zk_homes() -> std::sync::Arc<dyn ferry_host::ferry_pr::ReservationHomes> {
    std::sync::Arc::new(ferry_zk::ZkReservations)
}
