//! Clear errors for what admins get wrong: a missing pool or image, a bad
//! spec, a conf that does not exist, and a cluster nobody answers for
//! (which must fail within seconds, not hang).
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use ferry_rbd::{RbdError, RbdMetaStore, RbdSpec, RbdVolume};

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn missing_pool_and_image_say_which() {
    let conf = ceph();
    let err = RbdVolume::open(&spec(&conf, "ferry-no-such-pool", "img")).unwrap_err();
    assert!(matches!(err, RbdError::NoPool { .. }), "{err:?}");
    assert!(err.to_string().contains("ferry-no-such-pool"), "{err}");
    assert_eq!(err.errno(), libc::ENOENT);

    let name = unique("missing");
    let err = RbdVolume::open(&spec(&conf, POOL_A, &name)).unwrap_err();
    assert!(matches!(err, RbdError::NoImage { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&name) && err.to_string().contains(POOL_A),
        "{err}"
    );
    let err = RbdMetaStore::open(&spec(&conf, POOL_A, &name)).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Through the engine's error type the message survives.
    let core: ferry_core::Error = err.into();
    assert!(core.to_string().contains(&name), "{core}");
    match core {
        ferry_core::Error::VolumeIo { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }

    let err =
        RbdVolume::create(&spec(&conf, "ferry-no-such-pool", "img"), 1 << 20, None).unwrap_err();
    assert!(matches!(err, RbdError::NoPool { .. }), "{err:?}");
}

#[test]
fn bad_specs_are_refused_before_connecting() {
    for s in [
        "",
        "ferry-a/img",
        "rbd:ferry-a",
        "rbd:/img",
        "rbd:ferry-a/",
        "rbd:ferry-a/img@",
        "rbd:ferry-a/img?conf",
        "rbd:ferry-a/img?colour=blue",
        "rbd:ferry-a/a/b",
    ] {
        let err = RbdSpec::parse(s).unwrap_err();
        assert!(matches!(err, RbdError::BadSpec { .. }), "{s}: {err:?}");
        assert!(err.to_string().starts_with("bad rbd spec"), "{err}");
        let core: ferry_core::Error = err.into();
        assert!(matches!(core, ferry_core::Error::BadSpec { .. }), "{s}");
    }
    // Creating at a snapshot makes no sense.
    let spec = RbdSpec::parse("rbd:ferry-a/img@snap?conf=/nonexistent.conf").unwrap();
    let err = RbdVolume::create(&spec, 1 << 20, None).unwrap_err();
    assert!(matches!(err, RbdError::BadSpec { .. }), "{err:?}");
}

#[test]
fn a_missing_conf_file_is_named() {
    let spec = RbdSpec::parse("rbd:ferry-a/img?conf=/nonexistent/ferry-test/ceph.conf").unwrap();
    let err = RbdVolume::open(&spec).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/ferry-test/ceph.conf"),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
}

#[test]
fn an_unreachable_cluster_fails_within_seconds() {
    // No cluster is needed: a conf whose monitor port nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again here
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nfsid = 00000000-0000-0000-0000-000000000001\n\
             mon host = 127.0.0.1:{port}\n\
             auth cluster required = none\nauth service required = none\n\
             auth client required = none\n"
        ),
    )
    .unwrap();
    let spec = RbdSpec::parse(&format!("rbd:ferry-a/img?conf={}", conf.display())).unwrap();
    let started = Instant::now();
    let err = RbdVolume::open(&spec).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RbdError::ConnectTimeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&conf.display().to_string()),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ETIMEDOUT);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn an_image_that_turns_the_cache_on_is_refused() {
    let conf = ceph();
    let cluster = connect(&conf);
    let name = unique("cache");
    let _cleanup = Cleanup::new(&cluster, POOL_A, &name);
    let spec = spec(&conf, POOL_A, &name);
    let v = RbdVolume::create(&spec, 1 << 20, None).unwrap();
    // What `rbd config image set <img> rbd_cache true` stores.
    v.image().metadata_set("conf_rbd_cache", "true").unwrap();
    drop(v);
    let err = RbdVolume::open(&spec).unwrap_err();
    assert!(err.to_string().contains("rbd_cache"), "{err}");
}
