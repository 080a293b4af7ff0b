//! tcmu-runner cfgstrings: `handler_ferry::config::parse`, which
//! `check_config` and `open` run on the string targetcli stored
//! (`ferry/<spec>[;tcmur_cmd_time_out=N]`).
//!
//! Input: the cfgstring as UTF-8 (tcmu-runner hands over a C string; the
//! shim refuses one that is not UTF-8). Checks besides "no panic": a
//! cfgstring without the handler prefix means the same with it, and what
//! it names is an absolute file path (or an RBD image, in builds with it)
//! whose canonical spec parses back to it.
#![no_main]

use ferry_host::VolumeSpec;
use handler_ferry::config::{parse, SUBTYPE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(cfg).ok();
    if !cfg.starts_with(&format!("{SUBTYPE}/")) {
        let prefixed = parse(&format!("{SUBTYPE}/{cfg}")).ok();
        assert_eq!(prefixed, parsed, "{cfg:?} with and without the prefix");
    }
    if let Some(spec) = parsed {
        if let Some(path) = spec.file_path() {
            assert!(path.is_absolute(), "{cfg:?}");
        }
        assert_eq!(
            VolumeSpec::parse(&spec.to_string()).ok(),
            Some(spec),
            "{cfg:?}"
        );
    }
});
