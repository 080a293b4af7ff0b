//! Re-measures the tcmu-runner ABI the handler declares (`src/ffi.rs`)
//! against tcmu-runner's own headers: `layout/layout.c` is compiled
//! against a tcmu-runner source tree and its numbers compared with the
//! Rust declarations. tcmu-runner ships no development headers, so the
//! source is fetched separately, outside the repository:
//!
//! ```text
//! TCMU_SRC=$(bash scripts/tcmu-src.sh) cargo nextest run -p ferry-tcmu --test layout
//! ```
//!
//! (`scripts/tcmu-src.sh` runs `apt-get source tcmu` once into a cache.)
//! The test is `#[ignore]`d, so a plain test run reports it skipped (the
//! unit tests in `ffi.rs` pin the same numbers as measured once);
//! `scripts/test.sh` sets `TCMU_SRC` and runs it. Run without `TCMU_SRC`,
//! it fails.
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use handler_ferry::ffi::{self, sts, TcmulibCfgInfo, TcmulibCmd, TcmurCmd, TcmurHandler};

fn measure(src: &Path) -> BTreeMap<String, i64> {
    assert!(
        src.join("tcmu-runner.h").exists(),
        "TCMU_SRC={} has no tcmu-runner.h",
        src.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("layout");
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/layout.c");
    let out = std::process::Command::new("cc")
        .arg("-I")
        .arg(src)
        .arg("-I")
        .arg(src.join("ccan"))
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .expect("running cc");
    assert!(
        out.status.success(),
        "compiling layout.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

macro_rules! expect {
    ($m:ident, size $t:ty, $c:literal) => {
        $m.push((format!("sizeof(struct {})", $c), size_of::<$t>() as i64));
    };
    ($m:ident, off $t:ty, $c:literal, $($f:ident = $cf:literal),+) => {
        $( $m.push((format!("offsetof(struct {}, {})", $c, $cf), offset_of!($t, $f) as i64)); )+
    };
}

#[test]
#[ignore = "needs tcmu-runner's source tree (TCMU_SRC): scripts/test.sh fetches it"]
fn declarations_match_tcmu_runner_headers() {
    let src = std::env::var_os("TCMU_SRC")
        .map(PathBuf::from)
        .expect("TCMU_SRC is not set: export TCMU_SRC=$(bash scripts/tcmu-src.sh)");
    let c = measure(&src);
    let mut want: Vec<(String, i64)> = Vec::new();
    expect!(want, size TcmurHandler, "tcmur_handler");
    expect!(want, off TcmurHandler, "tcmur_handler",
        name = "name", subtype = "subtype", cfg_desc = "cfg_desc", opaque = "opaque",
        check_config = "check_config", reconfig = "reconfig", open = "open", close = "close",
        nr_threads = "nr_threads", handle_cmd = "handle_cmd", read = "read", write = "write",
        flush = "flush", unmap = "unmap", writesame = "writesame", caw = "caw",
        report_event = "report_event", lock = "lock", unlock = "unlock",
        get_lock_tag = "get_lock_tag", get_lock_state = "get_lock_state",
        _is_dbus_handler = "_is_dbus_handler", update_logdir = "update_logdir",
        init = "init", destroy = "destroy");
    expect!(want, size TcmurCmd, "tcmur_cmd");
    expect!(want, off TcmurCmd, "tcmur_cmd",
        lib_cmd = "lib_cmd", iovec = "iovec", iov_cnt = "iov_cnt",
        iov_base_copy = "iov_base_copy", cmd_state = "cmd_state", requested = "requested",
        cmds_list_entry = "cmds_list_entry", start_time = "start_time",
        timed_out = "timed_out", done = "done");
    expect!(want, size TcmulibCmd, "tcmulib_cmd");
    expect!(want, off TcmulibCmd, "tcmulib_cmd",
        cmd_id = "cmd_id", cdb = "cdb", iovec = "iovec", iov_cnt = "iov_cnt",
        sense_buf = "sense_buf", hm_private = "hm_private");
    expect!(want, size TcmulibCfgInfo, "tcmulib_cfg_info");
    expect!(want, off TcmulibCfgInfo, "tcmulib_cfg_info", type_ = "type", data = "data");
    for (name, v) in [
        ("TCMULIB_CFG_DEV_CFGSTR", ffi::TCMULIB_CFG_DEV_CFGSTR),
        ("TCMULIB_CFG_DEV_SIZE", ffi::TCMULIB_CFG_DEV_SIZE),
        ("TCMULIB_CFG_WRITE_CACHE", ffi::TCMULIB_CFG_WRITE_CACHE),
        ("TCMU_STS_ASYNC_HANDLED", sts::ASYNC_HANDLED),
        ("TCMU_STS_NOT_HANDLED", sts::NOT_HANDLED),
        ("TCMU_STS_OK", sts::OK),
        ("TCMU_STS_NO_RESOURCE", sts::NO_RESOURCE),
        ("TCMU_STS_PASSTHROUGH_ERR", sts::PASSTHROUGH_ERR),
        ("TCMU_STS_WR_ERR", sts::WR_ERR),
        ("TCMU_STS_RD_ERR", sts::RD_ERR),
        ("TCMU_STS_MISCOMPARE", sts::MISCOMPARE),
        ("TCMU_STS_INVALID_CMD", sts::INVALID_CMD),
        ("TCMU_STS_INVALID_CDB", sts::INVALID_CDB),
        ("TCMU_STS_INVALID_PARAM_LIST", sts::INVALID_PARAM_LIST),
        (
            "TCMU_STS_INVALID_PARAM_LIST_LEN",
            sts::INVALID_PARAM_LIST_LEN,
        ),
        ("TCMU_STS_HW_ERR", sts::HW_ERR),
        ("TCMU_STS_RANGE", sts::RANGE),
        ("SENSE_BUFFERSIZE", ffi::SENSE_BUFFERSIZE as i32),
    ] {
        want.push((name.to_string(), i64::from(v)));
    }
    let mut wrong = Vec::new();
    for (name, rust) in &want {
        match c.get(name) {
            Some(cv) if cv == rust => {}
            other => wrong.push(format!("{name}: C {other:?}, Rust {rust}")),
        }
    }
    assert!(wrong.is_empty(), "ABI mismatch:\n{}", wrong.join("\n"));
    assert_eq!(want.len(), c.len(), "layout.c prints what this test checks");
}
