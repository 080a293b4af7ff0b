//! Opening, resizing and closing a device's LUN, and what tcmu-runner's
//! whole process shares: the registry of served LUNs behind the control
//! socket `ferry migrate` talks to.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use ferry_core::Volume;
use parking_lot::Mutex;

use crate::config;
use crate::exec::DevState;
use crate::Error;
use ferry_scsi::alua::AccessState;

/// Specs of the open devices: a second backstore on the same volume is
/// refused at `check_config`, with a message, rather than at `open`.
fn served() -> &'static Mutex<BTreeSet<String>> {
    static SERVED: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    SERVED.get_or_init(Default::default)
}

/// `check_config`: the cfgstring names an existing volume not served yet.
pub fn check_config(cfgstring: &str) -> Result<(), Error> {
    let spec = config::check(cfgstring)?.to_string();
    if served().lock().contains(&spec) {
        return Err(Error::AlreadyServed { spec });
    }
    Ok(())
}

/// `open`: sets up the device's ALUA target port for the LUN the
/// cfgstring names and registers it with the control socket; unless the
/// cfgstring says `alua=standby`, opens the LUN at once (resuming a
/// migration in progress, with its copier) for a device of `num_lbas`
/// blocks of `block_size` bytes.
pub fn open(cfgstring: &str, block_size: u32, num_lbas: u64) -> Result<Arc<DevState>, Error> {
    let spec = config::parse(cfgstring)?;
    let start = config::port_start(cfgstring)?;
    let name = spec.to_string();
    let opened = name.clone();
    let opener: ferry_host::port::Opener = Box::new(move || {
        // LIO answers persistent reservations in the kernel: ferry's saved
        // ones (a LUN tgtd served before may have some) are not enforced
        // here.
        let opts = ferry_host::OpenOptions {
            kernel_reservations: true,
            ..Default::default()
        };
        let lun = ferry_host::Lun::open_opts(&opened, opts)?;
        // The backstore's geometry, as LIO reports it to initiators:
        // commands are checked against it (it may be smaller than the
        // volume).
        if let Some(note) = lun.set_geometry(block_size, Some(num_lbas))? {
            log::warn!("{opened}: {note}");
        }
        Ok(lun)
    });
    let initial = if start.standby {
        AccessState::Standby
    } else {
        AccessState::ActiveOptimized
    };
    let port = ferry_host::LunPort::new(&name, start.group.unwrap_or(1), initial, opener).map_err(
        |e| match e {
            e @ ferry_host::HostError::Geometry { .. } => Error::Geometry(e),
            e => Error::Open {
                spec: name.clone(),
                source: e.into(),
            },
        },
    )?;
    let lun_bytes = num_lbas * u64::from(block_size);
    ferry_host::control::ensure_process_server("tcmu-runner");
    served().lock().insert(name.clone());
    match port.lun() {
        Some(lun) => log::info!(
            "{name}: open, {lun_bytes} bytes in {block_size}-byte blocks (volume {} bytes)",
            lun.size()
        ),
        None => log::info!("{name}: standby, {lun_bytes} bytes in {block_size}-byte blocks"),
    }
    Ok(Arc::new(DevState {
        port,
        spec: name,
        block_size,
    }))
}

/// `close`: closes the port (unregistering and flushing its LUN).
/// tcmu-runner calls it once no command is outstanding, so this drops
/// the last strong reference to the LUN (stopping its copier; the
/// migration resumes at the next open).
pub fn close(state: Arc<DevState>) {
    served().lock().remove(&state.spec);
    state.port.close();
    log::info!("{}: closed", state.spec);
}

/// `reconfig` of the size: a LUN may grow (or shrink) to any size the
/// volume covers, in whole blocks.
pub fn resize(state: &DevState, new_bytes: u64) -> Result<(), Error> {
    let lun = state.port.lun().ok_or_else(|| Error::Standby {
        spec: state.spec.clone(),
        why: "a resize is made where the LUN is active".into(),
    })?;
    let block = lun.block_size();
    if new_bytes % u64::from(block) != 0 {
        return Err(Error::PartialBlock {
            spec: state.spec.clone(),
            bytes: new_bytes,
            block: u64::from(block),
        });
    }
    lun.set_geometry(block, Some(new_bytes / u64::from(block)))
        .map_err(|e| Error::Resize {
            spec: state.spec.clone(),
            source: Box::new(Error::Geometry(e)),
        })?;
    log::info!("{}: resized to {new_bytes} bytes", state.spec);
    Ok(())
}

/// `reconfig` of the cfgstring: only to one naming the same volume. A LUN
/// changes volumes through `ferry migrate`, which keeps it serving.
pub fn change_cfgstring(state: &DevState, cfgstring: &str) -> Result<(), Error> {
    let spec = config::parse(cfgstring)?.to_string();
    if spec == state.spec
        || state.port.answers_to(&spec)
        || state.port.lun().is_some_and(|l| l.answers_to(&spec))
    {
        return Ok(());
    }
    Err(Error::SwitchVolume {
        from: state.spec.clone(),
        to: spec,
    })
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
        assert!(err.to_string().contains("only 1048576"), "{err}");
        let err = open(&cfg, 1000, 2048).err().unwrap();
        assert!(err.to_string().contains("block size 1000"), "{err}");
        let state = open(&cfg, 512, 2048).unwrap();
        assert!(matches!(
            check_config(&cfg).unwrap_err(),
            Error::AlreadyServed { .. }
        ));
        assert!(resize(&state, 1 << 19).is_ok());
        assert_eq!(state.port.lun().unwrap().capacity_blocks(), 1024);
        assert!(resize(&state, 1 << 20).is_ok());
        assert_eq!(state.port.lun().unwrap().capacity_blocks(), 2048);
        assert!(matches!(
            resize(&state, 2 << 20).unwrap_err(),
            Error::Resize { .. }
        ));
        assert!(matches!(
            resize(&state, 1000).unwrap_err(),
            Error::PartialBlock { bytes: 1000, .. }
        ));
        assert!(change_cfgstring(&state, &cfg).is_ok());
        assert!(change_cfgstring(&state, "ferry//elsewhere.img")
            .unwrap_err()
            .to_string()
            .contains("ferry migrate"));
        close(state);
        check_config(&cfg).unwrap();
        // Closed means the volume's lock is gone: it opens again.
        close(open(&cfg, 512, 2048).unwrap());
    }

    /// `alua=standby`: the device is set up without opening the volume;
    /// commands that reach the handler get the standby sense; the port
    /// turns active (and opens the volume) when asked.
    #[test]
    fn a_standby_device_opens_its_volume_only_when_its_group_turns_active() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FERRY_RUN_DIR", dir.path().join("run"));
        let cfg = format!("{};alua=standby;tpg=7", volume(dir.path(), 1 << 20));
        let state = open(&cfg, 512, 2048).unwrap();
        assert!(state.port.lun().is_none());
        let path = dir.path().join("v.img");
        drop(ferry_host::Lun::open(path.to_str().unwrap()).unwrap()); // not held
        let read = crate::exec::read_cdb(0, 512, 512).unwrap();
        let mut buf = [0u8; 512];
        let c = state.run(&read, &[], &mut [&mut buf[..]]);
        // Not yet given its states by the agent: transitioning (retried).
        let sense = c.sense.expect("transitioning sense");
        assert_eq!((sense[2], sense[12], sense[13]), (0x02, 0x04, 0x0a));
        let standby = vec![ferry_scsi::alua::PortGroup {
            id: 7,
            state: AccessState::Standby,
            preferred: false,
        }];
        assert_eq!(state.port.set(7, standby).unwrap(), AccessState::Standby);
        let c = state.run(&read, &[], &mut [&mut buf[..]]);
        let sense = c.sense.expect("standby sense");
        assert_eq!((sense[2], sense[12], sense[13]), (0x02, 0x04, 0x0b));
        assert!(resize(&state, 1 << 19).is_err());
        let active = vec![ferry_scsi::alua::PortGroup {
            id: 7,
            state: AccessState::ActiveOptimized,
            preferred: false,
        }];
        assert_eq!(
            state.port.set(7, active).unwrap(),
            AccessState::ActiveOptimized
        );
        assert_eq!(
            state.run(&read, &[], &mut [&mut buf[..]]),
            crate::exec::Completion::OK
        );
        close(state);
        assert!(matches!(
            config::port_start("ferry//v.img;alua=maybe"),
            Err(Error::BadOption { .. })
        ));
        assert!(matches!(
            config::port_start("ferry//v.img;tpg=0"),
            Err(Error::BadOption { .. })
        ));
    }
}
