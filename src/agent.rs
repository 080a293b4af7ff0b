//! `ferry agent`: keep this node's tgtd in line with the cluster LUN map.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ferry_agent::tgt::Tgtadm;
use ferry_agent::{Agent, AgentConfig, LioFrontend, TgtFrontend};

use crate::map::MapArgs;

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name in the map (`ferry map node add`).
    #[arg(long, env = "FERRY_NODE")]
    pub node: String,
    /// The target to drive: tgt (tgtd through tgtadm) or lio (configfs;
    /// LUNs served by tcmu-runner with handler_ferry). Must match the
    /// node's entry in the map.
    #[arg(long, default_value = "tgt")]
    pub frontend: String,
    /// tgtd's management channel (`tgtd -C N`); default: tgtd's default.
    #[arg(long)]
    pub tgtd_control: Option<u16>,
    /// LIO's configfs directory.
    #[arg(long, default_value = "/sys/kernel/config/target")]
    pub configfs: PathBuf,
    /// Where tgtd's ferry LUNs put their control sockets (tgtd's
    /// `FERRY_RUN_DIR`), for migration requests.
    #[arg(long, env = "FERRY_RUN_DIR", default_value = "/run/ferry")]
    pub run_dir: PathBuf,
    /// The node-wide copy bandwidth every migration on this node shares
    /// by priority (e.g. 200M, per second; `unlimited` clears it). Kept in
    /// the run dir, where `ferry migrate bandwidth` changes it later.
    #[arg(long, value_name = "RATE")]
    pub copy_bandwidth: Option<String>,
    /// Where to serve Prometheus metrics (`host:port`, path /metrics):
    /// this node's and those of every serving process in the run dir.
    /// Loopback only unless told otherwise; `off` serves none.
    #[arg(long, value_name = "ADDRESS", default_value = ferry_host::metrics::http::DEFAULT_ADDRESS)]
    pub metrics: String,
    #[command(flatten)]
    pub map: MapArgs,
}

pub fn run(a: AgentArgs) -> Result<()> {
    ferry_map::schema::check_name(ferry_map::Kind::Node, &a.node)?;
    if let Some(rate) = &a.copy_bandwidth {
        let rate = crate::units::parse_rate(rate)?;
        ferry_core::share::set_node_bandwidth(&a.run_dir, rate)
            .with_context(|| format!("setting the copy bandwidth in {}", a.run_dir.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let map = a.map.clone();
    // The first connection is made here so that a bad URL or bad
    // credentials fail the command at once; later ones (after a session
    // expired) are retried by the agent.
    let first = std::sync::Mutex::new(Some(map.open()?));
    let connect: ferry_agent::Connect = Box::new(move || {
        if let Some(s) = first.lock().ok().and_then(|mut f| f.take()) {
            return Ok(s);
        }
        map.open().map_err(|e| ferry_map::MapError::Unreachable {
            store: map.map.clone(),
            why: format!("{e:#}"),
        })
    });
    let frontend: Box<dyn ferry_agent::Frontend> = match a.frontend.as_str() {
        "tgt" => {
            let tgt = TgtFrontend::new(Tgtadm {
                control: a.tgtd_control,
            });
            match reservations_in_map(&a.map)? {
                Some(prepare) => Box::new(tgt.with_prepare(prepare)),
                None => Box::new(tgt),
            }
        }
        "lio" => Box::new(LioFrontend {
            root: a.configfs.clone(),
            node: a.node.clone(),
        }),
        f => anyhow::bail!("unknown frontend {f:?} (tgt or lio)"),
    };
    let cfg = AgentConfig {
        node: a.node.clone(),
        frontend,
        run_dir: a.run_dir.clone(),
    };
    // The node's target plugins reach reservations kept in a ZooKeeper
    // map through this agent (they link no ZooKeeper client).
    let _relay = if a.map.map.starts_with("zk://") {
        let homes = Arc::new(ferry_zk::ZkReservations);
        Some(
            ferry_host::relay::RelayServer::start(homes, &a.run_dir)
                .with_context(|| format!("reservations relay in {}", a.run_dir.display()))?,
        )
    } else {
        None
    };
    let mut agent = Agent::new(cfg, connect);
    let _metrics = if a.metrics == "off" {
        None
    } else {
        let node_metrics = agent.metrics();
        let (node, run_dir) = (a.node.clone(), a.run_dir.clone());
        let render: ferry_host::metrics::http::Render = Arc::new(move || {
            let mut page = ferry_host::metrics::text::Exposition::default();
            node_metrics.write(&mut page, &node);
            ferry_host::metrics::text::run_dir(&mut page, &run_dir);
            page.render()
        });
        let server = ferry_host::metrics::http::MetricsServer::start(&a.metrics, render)?;
        eprintln!("ferry agent: metrics on http://{}/metrics", server.addr());
        Some(server)
    };
    eprintln!("ferry agent: node {} on {}", a.node, a.map.map);
    agent.run(&stop);
    Ok(())
}

/// With a ZooKeeper map, LUNs keep their persistent reservations in it
/// (`<root>/reservations/<lun>`): before this node first serves a LUN,
/// its volume's reservation slot is pointed there (and what it held is
/// copied over). tgtd's plugin then reads and saves them there. The
/// embedded file map is one node's, so there the volume keeps them.
fn reservations_in_map(map: &MapArgs) -> Result<Option<ferry_agent::PrepareLun>> {
    if !map.map.starts_with("zk://") {
        return Ok(None);
    }
    let cfg = ferry_zk::ZkConfig::parse(&map.map)?;
    let url = format!("zk://{}{}", cfg.servers, cfg.root);
    // tgtd reads the credentials file by this name: make it absolute.
    let auth_file = match &map.zk_auth_file {
        Some(f) => Some(
            std::fs::canonicalize(f)
                .with_context(|| format!("ZooKeeper credentials {}", f.display()))?,
        ),
        None => None,
    };
    Ok(Some(Box::new(move |lun: &str, spec: &str| {
        let pointer = ferry_host::ferry_pr::Pointer::new(&url, lun, auth_file.as_deref());
        let homes: Arc<dyn ferry_host::ferry_pr::ReservationHomes> =
            Arc::new(ferry_zk::ZkReservations);
        ferry_agent::reservations::keep_in_map(spec, &pointer, &homes)
            .map(drop)
            .map_err(|e| format!("keeping its persistent reservations in {url}: {e}"))
    })))
}
