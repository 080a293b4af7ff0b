//! The handler's cfgstring: which ferry volume a backstore serves.
//!
//! targetcli (`/backstores/user:ferry create name=lun0 size=1G
//! cfgstring=/srv/vol0.img`) stores `ferry/<cfgstring>` in the device's
//! configfs `dev_config`; tcmu-runner hands that whole string, handler
//! prefix included, to `check_config` (from targetcli's D-Bus check and
//! again when the device appears) and to `open`. The part after `ferry/`
//! is a ferry volume spec, optionally followed by tcmu-runner's own
//! `;tcmur_cmd_time_out=N` option, which tcmu-runner removes before
//! `open` but not before `check_config`.
//!
//! rtslib refuses a `:` anywhere in a cfgstring, so through targetcli a
//! file volume is named by its plain absolute path, and an RBD image as
//! `rbd/pool/image[@snap][?options]` (the form tcmu-runner's own rbd
//! handler uses), which means the spec `rbd:pool/image...`. Specs with a
//! scheme (`file:/path`, `rbd:...`) work when `dev_config` is written to
//! configfs directly. Relative paths are refused: they would resolve
//! against tcmu-runner's working directory.
#![forbid(unsafe_code)]

use ferry_host::VolumeSpec;

use crate::error::{Cause, Error};

/// The handler's subtype, and the prefix of its cfgstrings.
pub const SUBTYPE: &str = "ferry";

/// What `targetcli ... help create` shows for the cfgstring.
pub const CFG_DESC: &str = "A ferry volume: the absolute path of a file volume \
(made with `ferry volume create /path --size N`), e.g. cfgstring=/srv/vol0.img, \
or rbd/pool/image for a Ceph RBD image (builds with RBD support). \
The LUN follows the volume through `ferry migrate` (start, commit, abort) and \
tcmu-runner restarts; the backstore size must not exceed the volume's.";

/// tcmu-runner's options, which may trail the spec after `;`.
const RUNNER_OPTIONS: &[&str] = &["tcmur_cmd_time_out"];

/// The handler's own options after the spec: `alua=standby` (the device
/// starts standby: its volume is not opened until the node's agent turns
/// its port group active) and `tpg=<1..65535>` (the node's target port
/// group, which the agent also gives LIO).
const ALUA_OPTIONS: &[&str] = &["alua", "tpg"];

/// How a device's ALUA target port starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStart {
    pub standby: bool,
    pub group: Option<u16>,
}

/// The handler's options of a cfgstring (see [`parse`]).
pub fn port_start(cfgstring: &str) -> Result<PortStart, Error> {
    let mut out = PortStart::default();
    for opt in cfgstring.split(';').skip(1).map(str::trim) {
        let bad = |why: &str| Error::BadOption {
            option: opt.to_string(),
            why: why.to_string(),
        };
        match opt.split_once('=') {
            Some(("alua", "standby")) => out.standby = true,
            Some(("alua", "active")) => out.standby = false,
            Some(("alua", _)) => return Err(bad("alua is active or standby")),
            Some(("tpg", v)) => {
                out.group = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|g| *g != 0)
                        .ok_or_else(|| bad("tpg is a port group id, 1 to 65535"))?,
                )
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Parses a cfgstring (`ferry/<spec>[;option=value...]`, or a bare spec)
/// into the volume spec it names. Errors say what is wrong, for targetcli
/// to show.
pub fn parse(cfgstring: &str) -> Result<VolumeSpec, Error> {
    let rest = cfgstring
        .strip_prefix(SUBTYPE)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(cfgstring);
    let mut parts = rest.split(';');
    let spec = parts.next().unwrap_or_default().trim();
    for opt in parts.map(str::trim).filter(|o| !o.is_empty()) {
        let key = opt.split_once('=').map_or(opt, |(k, _)| k);
        if !RUNNER_OPTIONS.contains(&key) && !ALUA_OPTIONS.contains(&key) {
            return Err(Error::UnknownOption {
                key: key.to_string(),
                cfgstring: cfgstring.to_string(),
            });
        }
    }
    if spec.is_empty() {
        return Err(Error::NoVolume {
            cfgstring: cfgstring.to_string(),
        });
    }
    // rtslib-friendly spelling of `rbd:` (no colon).
    let spec = match spec.strip_prefix("rbd/") {
        Some(rest) => std::borrow::Cow::Owned(format!("rbd:{rest}")),
        None => std::borrow::Cow::Borrowed(spec),
    };
    let spec = spec.as_ref();
    let path = spec.strip_prefix("file:").unwrap_or(spec);
    let has_scheme = spec
        .split_once(':')
        .is_some_and(|(scheme, _)| !scheme.contains('/'));
    if (!has_scheme || spec.starts_with("file:")) && !path.starts_with('/') {
        return Err(Error::RelativePath {
            path: path.to_string(),
        });
    }
    VolumeSpec::parse(spec).map_err(|e| Error::Spec { source: e.into() })
}

/// Full check for `check_config`: the cfgstring parses and names a volume
/// that exists (or a migration's source, which forwards to its target).
pub fn check(cfgstring: &str) -> Result<VolumeSpec, Error> {
    let spec = parse(cfgstring)?;
    let marker = spec
        .store()
        .and_then(|s| s.load_source_marker())
        .map_err(cannot_check(&spec))?;
    if !spec.exists().map_err(cannot_check(&spec))? && marker.is_none() {
        return Err(Error::NoSuchVolume {
            spec: spec.to_string(),
        });
    }
    Ok(spec)
}

/// Wraps why checking `spec` failed.
fn cannot_check<E: Into<Cause>>(spec: &VolumeSpec) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Check {
        spec: spec.to_string(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_prefix_and_runner_options_are_stripped() {
        assert_eq!(
            parse("ferry//srv/v.img").unwrap().to_string(),
            "file:/srv/v.img"
        );
        assert_eq!(
            parse("ferry//srv/v.img;tcmur_cmd_time_out=30")
                .unwrap()
                .to_string(),
            "file:/srv/v.img"
        );
        assert_eq!(
            parse("ferry/file:/srv/v.img").unwrap().to_string(),
            "file:/srv/v.img"
        );
        assert_eq!(parse("/a/../b").unwrap().to_string(), "file:/b");
    }

    #[test]
    fn bad_cfgstrings_say_why() {
        for (cfg, why) in [
            ("ferry/", "names no volume"),
            ("ferry/vol.img", "relative"),
            ("ferry/file:vol.img", "relative"),
            ("ferry//v.img;conf=/x", "unknown option \"conf\""),
            ("ferry/nbd:foo", "unknown volume type"),
        ] {
            let err = parse(cfg).unwrap_err().to_string();
            assert!(err.contains(why), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn rbd_slash_means_rbd_colon() {
        let plain = ferry_host::VolumeSpec::parse("rbd:pool/img@s").map(|s| s.to_string());
        let ours = parse("ferry/rbd/pool/img@s").map(|s| s.to_string());
        match (plain, ours) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }

    #[test]
    fn check_wants_an_existing_volume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        let cfg = format!("ferry/{}", path.display());
        assert!(matches!(
            check(&cfg).unwrap_err(),
            Error::NoSuchVolume { .. }
        ));
        std::fs::write(&path, [0u8; 512]).unwrap();
        assert_eq!(
            check(&cfg).unwrap().to_string(),
            format!("file:{}", path.display())
        );
    }
}
