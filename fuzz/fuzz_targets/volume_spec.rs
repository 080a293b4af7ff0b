//! Volume specs: `ferry_host::VolumeSpec::parse`, what tgtadm's
//! `--backing-store`, the map's LUN documents and the `ferry` command line
//! hand ferry. Parsing does no I/O besides reading the working directory.
//!
//! Input: the spec as UTF-8 (other bytes are not a `&str` and never reach
//! the parser). Checks besides "no panic": a parsed spec prints in its
//! canonical form (`file:` and an absolute path without `.` or `..`), and
//! that form parses to the same spec.
#![no_main]

use ferry_host::VolumeSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = VolumeSpec::parse(text) else {
        return;
    };
    let canonical = spec.to_string();
    if let Some(path) = spec.file_path() {
        assert!(path.is_absolute(), "{text:?} -> {canonical:?}");
    }
    assert!(canonical.starts_with("file:/"), "{text:?} -> {canonical:?}");
    assert_eq!(
        VolumeSpec::parse(&canonical).ok().as_ref(),
        Some(&spec),
        "{text:?} -> {canonical:?}"
    );
});
