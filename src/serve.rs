//! `ferry serve`: host volumes (and resume their migrations) in a plain
//! process with a control socket. The iSCSI front-ends host LUNs the same
//! way inside tgtd and tcmu-runner; this is the front-end-free version.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ferry_host::{ControlServer, Lun, Registry};

#[derive(Args)]
pub struct ServeArgs {
    /// Volume specs to serve.
    #[arg(required = true)]
    pub volumes: Vec<String>,
    /// Control socket path (default: `$FERRY_RUN_DIR/ferry-<pid>.sock`).
    #[arg(long)]
    pub socket: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics of these volumes and their migrations at
    /// this address (`host:port`, path /metrics; e.g. 127.0.0.1:9561).
    #[arg(long, value_name = "ADDRESS")]
    pub metrics: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let registry = Arc::new(Registry::default());
    let mut luns = Vec::new();
    for v in &a.volumes {
        let lun = Lun::open(v).with_context(|| format!("opening {v}"))?;
        registry.add(&lun);
        luns.push(lun);
    }
    let server = match &a.socket {
        Some(p) => ControlServer::start_at(registry.clone(), p),
        None => ControlServer::start(registry.clone()),
    }
    .context("starting the control socket")?;
    println!(
        "serving {} volume(s); control socket {}",
        luns.len(),
        server.path().display()
    );
    let _metrics = match &a.metrics {
        Some(addr) => {
            let registry = registry.clone();
            let render: ferry_host::metrics::http::Render = Arc::new(move || {
                let mut page = ferry_host::metrics::text::Exposition::default();
                let answer = registry.handle(&ferry_host::Request::Metrics);
                ferry_host::metrics::text::process(&mut page, &answer);
                page.render()
            });
            let server = ferry_host::metrics::http::MetricsServer::start(addr, render)?;
            println!("metrics on http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("stopping: flushing volumes");
    for lun in &luns {
        if let Err(e) = ferry_core::Volume::flush(lun.as_ref()) {
            log::error!("{}: flush at shutdown failed: {e}", lun.spec());
        }
    }
    Ok(())
}
