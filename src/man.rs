//! `ferry man DIR` (hidden): writes a man page for `ferry` and for each of
//! its commands, from the same definitions the command line parses
//! (clap_mangen), so the pages cannot drift from the options. The Debian
//! package (`scripts/deb.sh`) installs them.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Args)]
pub struct ManArgs {
    /// Where to write the pages (`ferry.1`, `ferry-agent.1`,
    /// `ferry-map-lun-add.1`, ...).
    pub dir: PathBuf,
}

pub fn run(a: &ManArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cmd = crate::cli::Cli::command();
    let n = write_pages(&cmd, "ferry", &a.dir)?;
    println!("{n} man pages in {}", a.dir.display());
    Ok(())
}

/// Writes `cmd`'s page as `name.1`, then its subcommands' (hidden ones
/// left out); the number written.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        n += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(n)
}
