//! `ferry migrate ...`: start, watch and steer migrations.
//!
//! Each command first looks for the process serving the volume (control
//! socket); if there is none it opens the volume itself and, for work that
//! takes time (copying, abort copy-back), does it in the foreground with a
//! progress bar. Interrupting that leaves the migration resumable.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_core::copier::{PaceChange, Progress};
use ferry_core::MigrationState;
use ferry_host::control::{call, find_host, Request};
use ferry_host::{Lun, StartOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::units::{human, parse_rate, parse_size};

#[derive(Subcommand)]
pub enum MigrateCmd {
    /// Start migrating a volume to a new target volume.
    Start(StartArgs),
    /// Show a migration's progress.
    Status(StatusArgs),
    /// Pause the copier (I/O continues).
    Pause(VolArgs),
    /// Resume the copier.
    Resume(VolArgs),
    /// Set the copier's rate limit, e.g. 100M (per second) or unlimited.
    Rate(RateArgs),
    /// Turn pacing by the foreground's impact budget on or off (off: flat
    /// out, or at the rate limit).
    Adaptive(AdaptiveArgs),
    /// Set the impact budget (percent more foreground latency the copy may
    /// cause), the floor rate the copy never goes below, and the
    /// migration's priority in the node's copy bandwidth.
    Impact(ImpactArgs),
    /// Show or set the node-wide copy bandwidth every migration on this
    /// node shares (by priority), e.g. 200M (per second) or unlimited.
    Bandwidth(BandwidthArgs),
    /// Abort: the source gets every write back and the target is discarded.
    Abort(WaitArgs),
    /// Commit a copied migration: the target stands alone.
    Commit(CommitArgs),
    /// Drive a migration that no process serves, in the foreground.
    Run(VolArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// The volume to migrate (the LUN's spec).
    pub source: String,
    /// The new volume to create and migrate to.
    pub target: String,
    /// Bytes per index bit (power of two; default: the source's object size, 4M for files).
    #[arg(long)]
    pub region_size: Option<String>,
    /// Copier rate limit per second, e.g. 200M; default unlimited.
    #[arg(long)]
    pub rate: Option<String>,
    /// Copy flat out (or at --rate), without pacing by the foreground's
    /// impact budget.
    #[arg(long)]
    pub no_adaptive: bool,
    /// The impact budget: how much more latency (percent) the foreground
    /// may see while the copy runs; default 20.
    #[arg(long, value_name = "PERCENT")]
    pub impact: Option<u32>,
    /// The floor: the copy advances at least this fast however busy the
    /// LUN, e.g. 16M (per second); default 16M.
    #[arg(long, value_name = "RATE")]
    pub floor: Option<String>,
    /// The migration's weight in the node's copy bandwidth (a migration
    /// of priority 300 gets three times the share of one of 100); default
    /// 100.
    #[arg(long, value_name = "WEIGHT")]
    pub priority: Option<u32>,
    /// Create the migration paused.
    #[arg(long)]
    pub paused: bool,
    /// Return at once instead of copying in the foreground when no process
    /// serves the volume.
    #[arg(long)]
    pub no_wait: bool,
    /// Commit as soon as the copy is complete.
    #[arg(long)]
    pub commit: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VolArgs {
    /// The volume (source or target spec).
    pub volume: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CommitArgs {
    /// The volume (source or target spec).
    pub volume: String,
    /// Delete the source volume after the commit (default: keep it, with
    /// a forwarding marker; it is not a point-in-time image, since writes
    /// to regions not yet copied reached it too). An RBD source's
    /// forwarding marker goes with it, so configure the LUN with the
    /// target's spec afterwards.
    #[arg(long)]
    pub remove_source: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    pub volume: String,
    /// Return once the abort has started instead of waiting for its end.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    pub volume: String,
    #[arg(long)]
    pub json: bool,
    /// Follow progress with a live bar until the copy ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args)]
pub struct RateArgs {
    pub volume: String,
    /// Bytes per second (e.g. 50M) or `unlimited`.
    pub rate: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImpactArgs {
    pub volume: String,
    /// Percent more foreground latency the copy may cause (e.g. 20); 0
    /// restores the default.
    pub percent: Option<u32>,
    /// The floor: the copy advances at least this fast (e.g. 16M, per
    /// second); 0 restores the default.
    #[arg(long, value_name = "RATE")]
    pub floor: Option<String>,
    /// The weight in the node's copy bandwidth; 0 restores the default
    /// (100).
    #[arg(long, value_name = "WEIGHT")]
    pub priority: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BandwidthArgs {
    /// Bytes per second (e.g. 200M) or `unlimited`; absent: show it.
    pub rate: Option<String>,
    /// The run dir the node's serving processes share.
    #[arg(long, env = "FERRY_RUN_DIR", default_value = "/run/ferry")]
    pub run_dir: std::path::PathBuf,
}

#[derive(Args)]
pub struct AdaptiveArgs {
    pub volume: String,
    #[arg(value_parser = ["on", "off"])]
    pub mode: String,
    #[arg(long)]
    pub json: bool,
}

/// Sends `req` to the process serving `volume`; `None` when none does.
fn remote(volume: &str, req: &Request) -> Result<Option<Progress>> {
    let Some(sock) = find_host(volume) else {
        return Ok(None);
    };
    let resp = call(&sock, req).with_context(|| format!("talking to {}", sock.display()))?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    resp.progress
        .map(Some)
        .context("the serving process sent no progress")
}

fn offline(volume: &str) -> Result<std::sync::Arc<Lun>> {
    Lun::open_with(volume, false).with_context(|| format!("opening {volume}"))
}

pub fn run(cmd: MigrateCmd) -> Result<()> {
    match cmd {
        MigrateCmd::Start(a) => start(a),
        MigrateCmd::Status(a) => status(a),
        MigrateCmd::Pause(a) => simple(
            &a,
            Request::Pause {
                volume: a.volume.clone(),
            },
            |l| l.set_paused(true),
        ),
        MigrateCmd::Resume(a) => simple(
            &a,
            Request::Resume {
                volume: a.volume.clone(),
            },
            |l| l.set_paused(false),
        ),
        MigrateCmd::Rate(a) => {
            let rate = parse_rate(&a.rate)?;
            let v = VolArgs {
                volume: a.volume.clone(),
                json: a.json,
            };
            simple(
                &v,
                Request::Rate {
                    volume: a.volume,
                    bytes_per_sec: rate,
                },
                |l| l.set_rate_limit(rate),
            )
        }
        MigrateCmd::Impact(a) => {
            let percent = a.percent;
            let floor = match a.floor.as_deref() {
                Some("0") => Some(0),
                Some(f) => Some(parse_rate(f)?.context("a floor cannot be unlimited")?),
                None => None,
            };
            if percent.is_none() && floor.is_none() && a.priority.is_none() {
                bail!("say the budget (percent), --floor RATE, --priority WEIGHT, or several");
            }
            let change = PaceChange {
                impact_percent: percent,
                floor_rate: floor,
                priority: a.priority,
            };
            let v = VolArgs {
                volume: a.volume.clone(),
                json: a.json,
            };
            simple(
                &v,
                Request::Impact {
                    volume: a.volume,
                    change,
                },
                |l| l.set_pace(change),
            )
        }
        MigrateCmd::Bandwidth(a) => bandwidth(a),
        MigrateCmd::Adaptive(a) => {
            let on = a.mode == "on";
            let v = VolArgs {
                volume: a.volume.clone(),
                json: a.json,
            };
            simple(
                &v,
                Request::Adaptive {
                    volume: a.volume,
                    on,
                },
                |l| l.set_adaptive(on),
            )
        }
        MigrateCmd::Commit(a) => {
            let remove = a.remove_source;
            let v = VolArgs {
                volume: a.volume.clone(),
                json: a.json,
            };
            simple(
                &v,
                Request::Commit {
                    volume: a.volume,
                    remove_source: remove,
                },
                |l| l.commit_with(remove),
            )
        }
        MigrateCmd::Abort(a) => abort(a),
        MigrateCmd::Run(a) => {
            let lun = offline(&a.volume)?;
            let p = drive(&lun, a.json)?;
            report(&p, a.json)
        }
    }
}

fn bandwidth(a: BandwidthArgs) -> Result<()> {
    use ferry_core::share;
    if let Some(r) = &a.rate {
        let rate = parse_rate(r)?;
        share::set_node_bandwidth(&a.run_dir, rate)
            .with_context(|| format!("setting the copy bandwidth in {}", a.run_dir.display()))?;
    }
    match share::node_bandwidth(&a.run_dir) {
        Some(b) => println!(
            "node copy bandwidth {}/s, shared by priority (applies within {}s)",
            human(b),
            share::POLL.as_secs()
        ),
        None => println!("node copy bandwidth unlimited"),
    }
    Ok(())
}

fn simple(
    a: &VolArgs,
    req: Request,
    local: impl FnOnce(&Lun) -> ferry_core::Result<Progress>,
) -> Result<()> {
    let p = match remote(&a.volume, &req)? {
        Some(p) => p,
        None => local(offline(&a.volume)?.as_ref())?,
    };
    report(&p, a.json)
}

fn start(a: StartArgs) -> Result<()> {
    let opts = StartOptions {
        region_size: a.region_size.as_deref().map(parse_size).transpose()?,
        rate_limit: a.rate.as_deref().map(parse_rate).transpose()?.flatten(),
        adaptive: !a.no_adaptive,
        impact_percent: a.impact,
        floor_rate: a.floor.as_deref().map(parse_rate).transpose()?.flatten(),
        priority: a.priority,
        paused: a.paused,
    };
    let req = Request::Start {
        volume: a.source.clone(),
        target: a.target.clone(),
        options: opts.clone(),
    };
    if let Some(p) = remote(&a.source, &req)? {
        if a.commit {
            bail!("--commit applies to foreground migrations; the serving process copies in the background (commit with `ferry migrate commit` once copied)");
        }
        return report(&p, a.json);
    }
    let lun = offline(&a.source)?;
    let p = lun.start_migration(&a.target, &opts)?;
    if a.no_wait {
        return report(&p, a.json);
    }
    let mut p = drive(&lun, a.json)?;
    if a.commit && p.state == MigrationState::Copied {
        p = lun.commit()?;
    }
    report(&p, a.json)
}

fn abort(a: WaitArgs) -> Result<()> {
    let req = Request::Abort {
        volume: a.volume.clone(),
    };
    if let Some(p) = remote(&a.volume, &req)? {
        return report(&p, a.json);
    }
    let lun = offline(&a.volume)?;
    let p = lun.abort()?;
    if a.no_wait {
        return report(&p, a.json);
    }
    let p = drive(&lun, a.json)?;
    report(&p, a.json)
}

fn status(a: StatusArgs) -> Result<()> {
    let req = Request::Status {
        volume: a.volume.clone(),
    };
    let fetch = || -> Result<Progress> {
        if let Some(p) = remote(&a.volume, &req)? {
            return Ok(p);
        }
        offline(&a.volume)?
            .status()
            .with_context(|| format!("{} is not being migrated", a.volume))
    };
    let mut p = fetch()?;
    if a.watch {
        let bar = bar_for(&p, a.json);
        while matches!(p.state, MigrationState::Copying | MigrationState::Aborting) {
            update_bar(&bar, &p);
            std::thread::sleep(Duration::from_millis(250));
            p = fetch()?;
        }
        update_bar(&bar, &p);
        bar.finish_and_clear();
    }
    report(&p, a.json)
}

/// Runs the copier in the foreground with a progress bar.
fn drive(lun: &Lun, json: bool) -> Result<Progress> {
    let first = lun.status().context("no migration to drive")?;
    let bar = bar_for(&first, json);
    let p = lun.run_here(|p| update_bar(&bar, p))?;
    bar.finish_and_clear();
    Ok(p)
}

fn bar_for(p: &Progress, json: bool) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(p.bytes_total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:10} [{elapsed_precise}] [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn update_bar(bar: &ProgressBar, p: &Progress) {
    let done = match p.state {
        MigrationState::Aborting => p.bytes_total.saturating_sub(p.bytes_done),
        _ => p.bytes_done,
    };
    bar.set_position(done);
    bar.set_message(if p.paused {
        "paused".to_string()
    } else {
        p.state.to_string()
    });
}

fn report(p: &Progress, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    let pct = if p.bytes_total == 0 {
        100.0
    } else {
        p.bytes_done as f64 * 100.0 / p.bytes_total as f64
    };
    println!("migration {}  {} -> {}", p.id, p.source, p.target);
    println!(
        "state     {}{}",
        p.state,
        if p.paused { " (paused)" } else { "" }
    );
    println!(
        "progress  {} / {} ({pct:.1}%), {}/{} regions of {}",
        human(p.bytes_done),
        human(p.bytes_total),
        p.regions_done,
        p.regions_total,
        human(p.region_size)
    );
    println!(
        "copier    rate {}/s, limit {}{}",
        human(p.rate_bps),
        p.rate_limit
            .map(|r| format!("{}/s", human(r)))
            .unwrap_or_else(|| "unlimited".into()),
        p.eta_secs
            .filter(|_| p.state == MigrationState::Copying)
            .map(|s| format!(", eta {s}s"))
            .unwrap_or_default()
    );
    if p.adaptive {
        println!(
            "impact    budget {}%, measured {}, floor {}/s",
            p.impact_budget,
            p.impact
                .map(|i| format!("{i:+.1}%"))
                .unwrap_or_else(|| "- (no foreground load seen)".into()),
            human(p.floor_rate)
        );
    }
    match (p.node_bandwidth, p.share_rate) {
        (Some(node), Some(share)) => println!(
            "share     priority {}: {}/s of the node's {}/s",
            p.priority,
            human(share),
            human(node)
        ),
        _ => println!("share     priority {} (no node bandwidth set)", p.priority),
    }
    if !p.adaptive {
        println!("impact    not paced (adaptive off): the copy runs flat out or at its limit");
    }
    println!("written   {} regions since start", p.regions_written);
    if let Some(e) = &p.last_error {
        println!("error     {e}");
    }
    Ok(())
}
