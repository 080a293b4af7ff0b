//! `ferry`: the admin's command for volumes and their live migrations.
//!
//! Migration commands talk to whichever process serves the volume (tgtd
//! with bs_ferry, `ferry serve`, ...) through its control socket; when no
//! process serves it, they work on the volume directly, in the foreground.
mod agent;
mod cli;
mod demo;
mod man;
mod map;
mod migrate;
mod pr;
mod qos;
mod resize;
mod serve;
mod snapshot;
mod units;
mod workload;

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`ferry map show | head`) like other
    // Unix tools, instead of panicking on the failed write.
    // SAFETY: setting a signal disposition to the default at start-up,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    // LUNs this command opens follow reservation pointers into ZooKeeper
    // itself (the target plugins ask the node's agent instead).
    ferry_host::set_default_homes(std::sync::Arc::new(ferry_zk::ZkReservations));
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(if cli.verbose { "info" } else { "warn" }),
    )
    .format_timestamp_millis()
    .init();
    if let Err(e) = cli::run(cli) {
        eprintln!("ferry: {e:#}");
        std::process::exit(1);
    }
}
