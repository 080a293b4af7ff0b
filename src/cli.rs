//! Command-line definition and dispatch.
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_core::Volume;
use ferry_host::VolumeSpec;

use crate::units::{human, parse_size};

#[derive(Parser)]
#[command(
    name = "ferry",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_GIT_REV"), ")"),
    about = "Live migration of iSCSI-served block volumes between storage pools"
)]
pub struct Cli {
    /// Log what ferry does (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create and inspect volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Start and control live migrations.
    #[command(subcommand)]
    Migrate(crate::migrate::MigrateCmd),
    /// Serve volumes (with their migrations) until stopped, with a control
    /// socket for `ferry migrate`.
    Serve(crate::serve::ServeArgs),
    /// Create a volume with data, migrate it live under a verifying
    /// workload, commit, and check every byte.
    Demo(crate::demo::DemoArgs),
    /// Snapshots of a LUN, taken and restored while it is served.
    #[command(subcommand)]
    Snapshot(crate::snapshot::SnapshotCmd),
    /// Persistent reservations of a LUN: show them, or clear them.
    #[command(subcommand)]
    Pr(crate::pr::PrCmd),
    /// Edit and inspect the cluster LUN map (ZooKeeper or a local file).
    Map {
        #[command(flatten)]
        args: crate::map::MapArgs,
        #[command(subcommand)]
        cmd: crate::map::MapCmd,
    },
    /// Run this node's agent: serve the LUNs the map gives it through tgtd.
    Agent(crate::agent::AgentArgs),
    /// Internal: a logged write workload for crash tests.
    #[command(hide = true)]
    Workload(crate::workload::WorkloadArgs),
    /// Internal: write the man pages (the Debian package's).
    #[command(hide = true)]
    Man(crate::man::ManArgs),
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a new sparse volume.
    Create(CreateArgs),
    /// Show a volume's size, allocation and migration.
    Info(InfoArgs),
    /// Show or set the cache mode of a served volume (writethrough, none,
    /// writeback, unsafe, directsync); takes effect with its next command.
    CacheMode(CacheModeArgs),
    /// Show or set a served volume's QoS limits (IOPS and bytes per
    /// second, reads and writes apart), live.
    Qos(crate::qos::QosArgs),
    /// Grow a volume (served or not), or shrink it with --force; served
    /// LUNs report the new capacity to their initiators at once.
    Resize(crate::resize::ResizeArgs),
}

#[derive(Args)]
pub struct CacheModeArgs {
    pub spec: String,
    pub mode: Option<String>,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Volume spec (file:/path or a path).
    pub spec: String,
    /// Size, e.g. 10G.
    #[arg(long)]
    pub size: String,
}

#[derive(Args)]
pub struct InfoArgs {
    pub spec: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Volume(VolumeCmd::Create(a)) => {
            let spec = VolumeSpec::parse(&a.spec)?;
            let size = parse_size(&a.size)?;
            spec.create(size, None)
                .with_context(|| format!("creating {spec}"))?;
            println!("created {spec} ({})", human(size));
            Ok(())
        }
        Command::Volume(VolumeCmd::Info(a)) => info(&a),
        Command::Volume(VolumeCmd::CacheMode(a)) => cache_mode(&a),
        Command::Volume(VolumeCmd::Qos(a)) => crate::qos::run(&a),
        Command::Volume(VolumeCmd::Resize(a)) => crate::resize::run(&a),
        Command::Migrate(m) => crate::migrate::run(m),
        Command::Serve(a) => crate::serve::run(a),
        Command::Demo(a) => crate::demo::run(a),
        Command::Workload(a) => crate::workload::run(a),
        Command::Man(a) => crate::man::run(&a),
        Command::Map { args, cmd } => crate::map::run(&args, cmd),
        Command::Snapshot(c) => crate::snapshot::run(c),
        Command::Pr(c) => crate::pr::run(c),
        Command::Agent(a) => crate::agent::run(a),
    }
}

fn info(a: &InfoArgs) -> Result<()> {
    let spec = VolumeSpec::parse(&a.spec)?;
    let (vol, store) = spec.open_read_only()?;
    let allocated: u64 = vol.allocated(0, vol.size())?.iter().map(|e| e.len).sum();
    let record = ferry_core::MigratingVolume::load_record(store.as_ref())?;
    let marker = store.load_source_marker()?;
    if a.json {
        let v = serde_json::json!({
            "spec": spec.to_string(),
            "size": vol.size(),
            "allocated": allocated,
            "migration_record": record,
            "migrated_to": marker.as_ref().map(|m| serde_json::json!({
                "target": m.target,
                "committed": m.committed,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("volume     {spec}");
    println!("size       {} ({} bytes)", human(vol.size()), vol.size());
    println!("allocated  {}", human(allocated));
    if let Some(m) = marker {
        if m.committed {
            println!(
                "migrated   to {} (committed; this volume is stale)",
                m.target
            );
        } else {
            println!("migrating  to {}", m.target);
        }
    }
    if let Some(r) = record {
        println!("migration  {} from {} ({})", r.id, r.source, r.state);
    }
    Ok(())
}

fn cache_mode(a: &CacheModeArgs) -> Result<()> {
    use ferry_host::control::{call, hosts_in, run_dir, Request};
    let spec = VolumeSpec::parse(&a.spec)?.to_string();
    let (sock, mut mode) = hosts_in(&run_dir())
        .into_iter()
        .find_map(|(path, served)| {
            served
                .into_iter()
                .find(|s| s.spec == spec)
                .map(|s| (path, s.cache_mode))
        })
        .ok_or_else(|| {
            anyhow::anyhow!("no process serves {spec} (the cache mode belongs to a served LUN)")
        })?;
    if let Some(m) = &a.mode {
        let want: ferry_host::ferry_scsi::CacheMode = m.parse().map_err(anyhow::Error::msg)?;
        let r = call(
            &sock,
            &Request::CacheMode {
                volume: spec.clone(),
                mode: want,
            },
        )?;
        if !r.ok {
            anyhow::bail!("{}", r.error.unwrap_or_default());
        }
        mode = want;
    }
    println!("{spec}: cache mode {mode}");
    Ok(())
}
