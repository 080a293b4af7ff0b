//! Opening, resizing and closing a device's LUN, and what tcmu-runner's
//! whole process shares: the registry of served LUNs behind the control
//! socket `ferry migrate` talks to.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use ferry_core::Volume;
use parking_lot::Mutex;

use crate::config;
use crate::exec::{self, DevState};

/// Specs of the open devices: a second backstore on the same volume is
/// refused at `check_config`, with a message, rather than at `open`.
fn served() -> &'static Mutex<BTreeSet<String>> {
    static SERVED: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    SERVED.get_or_init(Default::default)
}

/// `check_config`: the cfgstring names an existing volume not served yet.
pub fn check_config(cfgstring: &str) -> Result<(), String> {
    let spec = config::check(cfgstring)?.to_string();
    if served().lock().contains(&spec) {
        return Err(format!(
            "{spec} is already served by another backstore of this tcmu-runner"
        ));
    }
    Ok(())
}

/// `open`: opens the LUN the cfgstring names (resuming a migration in
/// progress, with its copier) for a device of `num_lbas` blocks of
/// `block_size` bytes, and registers it with the control socket.
pub fn open(cfgstring: &str, block_size: u32, num_lbas: u64) -> Result<Arc<DevState>, String> {
    let spec = config::parse(cfgstring)?;
    let block_shift = exec::block_shift(block_size)
        .ok_or_else(|| format!("unsupported block size {block_size}"))?;
    let lun_bytes = num_lbas
        .checked_mul(u64::from(block_size))
        .ok_or_else(|| format!("{num_lbas} blocks of {block_size} bytes overflow"))?;
    let name = spec.to_string();
    let lun = ferry_host::Lun::open(&name).map_err(|e| format!("cannot open {name}: {e}"))?;
    if let Some(note) = exec::check_size(lun_bytes, lun.size())? {
        log::warn!("{name}: {note}");
    }
    ferry_host::control::process_registry().add(&lun);
    ferry_host::control::ensure_process_server("tcmu-runner");
    served().lock().insert(name.clone());
    log::info!(
        "{name}: open, {lun_bytes} bytes in {block_size}-byte blocks (volume {} bytes)",
        lun.size()
    );
    Ok(Arc::new(DevState {
        lun,
        block_shift,
        caw: Mutex::new(()),
        spec: name,
    }))
}

/// `close`: flushes and unregisters. tcmu-runner calls it once no command
/// is outstanding, so this drops the last strong reference to the LUN
/// (stopping its copier; the migration resumes at the next open).
pub fn close(state: Arc<DevState>) {
    ferry_host::control::process_registry().remove(&state.lun);
    served().lock().remove(&state.spec);
    if let Err(e) = state.lun.flush() {
        log::error!("{}: flush at close failed: {e}", state.spec);
    }
    log::info!("{}: closed", state.spec);
}

/// `reconfig` of the size: a LUN may grow (or shrink) to any size the
/// volume covers, in whole blocks.
pub fn resize(state: &DevState, new_bytes: u64) -> Result<(), String> {
    let block = 1u64 << state.block_shift;
    if new_bytes % block != 0 {
        return Err(format!(
            "{}: new size {new_bytes} is not a multiple of the {block}-byte block",
            state.spec
        ));
    }
    exec::check_size(new_bytes, state.lun.size()).map_err(|e| format!("{}: {e}", state.spec))?;
    log::info!("{}: resized to {new_bytes} bytes", state.spec);
    Ok(())
}

/// `reconfig` of the cfgstring: only to one naming the same volume. A LUN
/// changes volumes through `ferry migrate`, which keeps it serving.
pub fn change_cfgstring(state: &DevState, cfgstring: &str) -> Result<(), String> {
    let spec = config::parse(cfgstring)?.to_string();
    if spec == state.spec || state.lun.answers_to(&spec) {
        return Ok(());
    }
    Err(format!(
        "{}: cannot switch to {spec}; move the data with `ferry migrate start {} {spec}`",
        state.spec, state.spec
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(dir: &std::path::Path, size: u64) -> String {
        let path = dir.join("v.img");
        ferry_host::VolumeSpec::parse(path.to_str().unwrap())
            .unwrap()
            .create(size, None)
            .unwrap();
        format!("ferry/{}", path.display())
    }

    #[test]
    fn open_checks_the_size_and_close_releases() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FERRY_RUN_DIR", dir.path().join("run"));
        let cfg = volume(dir.path(), 1 << 20);
        let err = open(&cfg, 512, 4096).err().unwrap();
        assert!(err.contains("only 1048576"), "{err}");
        assert!(open(&cfg, 1000, 2048).err().unwrap().contains("block size"));
        let state = open(&cfg, 512, 2048).unwrap();
        assert!(check_config(&cfg).unwrap_err().contains("already served"));
        assert!(resize(&state, 1 << 20).is_ok());
        assert!(resize(&state, 2 << 20).is_err());
        assert!(resize(&state, 1000).is_err());
        assert!(change_cfgstring(&state, &cfg).is_ok());
        assert!(change_cfgstring(&state, "ferry//elsewhere.img")
            .unwrap_err()
            .contains("ferry migrate"));
        close(state);
        check_config(&cfg).unwrap();
        // Closed means the volume's lock is gone: it opens again.
        close(open(&cfg, 512, 2048).unwrap());
    }
}
