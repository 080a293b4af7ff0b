//! RbdVolume against a real cluster: data round trips (unaligned, across
//! objects, zero-length), zeroing, sparse extents, creating like a source,
//! identity, metadata copy, watchers and the migration prechecks.
mod common;

use common::*;
use ferry_core::pattern;
use ferry_core::{Error, Extent, Volume};
use ferry_rbd::{
    copy_metadata, create_image, precheck_migration, CreateOptions, RbdVolume, RECORD_KEY,
};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn round_trip_with_unaligned_and_zero_length_io() {
    let conf = ceph();
    let cluster = connect(&conf);
    let name = unique("rt");
    let _cleanup = Cleanup::new(&cluster, POOL_A, &name);
    let spec = spec(&conf, POOL_A, &name);
    let size = 16 * MIB;
    let v = RbdVolume::create(&spec, size, None).unwrap();
    assert_eq!(v.size(), size);
    assert_eq!(v.object_size(), 4 * MIB, "the cluster default order is 22");
    assert_eq!(v.name(), spec.to_string());
    // No client cache may acknowledge a write before the OSDs have it.
    let config = v.image().config().unwrap();
    assert!(
        config
            .iter()
            .any(|(k, val)| k == "rbd_cache" && val == "false"),
        "{config:?}"
    );

    let mut model = vec![0u8; size as usize];
    let put = |v: &RbdVolume, model: &mut Vec<u8>, off: u64, len: usize, seed: u64| {
        let data = pattern::bytes(seed, len);
        v.write_at(&data, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    };
    put(&v, &mut model, 1234, 10_000, 1); // unaligned inside one object
    put(&v, &mut model, 4 * MIB - 100, 300, 2); // across an object boundary
    put(&v, &mut model, 6 * MIB + 7, 5 * MIB as usize, 3); // several objects
    put(&v, &mut model, size - 1, 1, 4); // the last byte
    v.flush().unwrap();
    assert_same("after writes", &read_all(&v), &model);

    // Unaligned reads.
    let mut buf = vec![0u8; 777];
    v.read_at(&mut buf, 4 * MIB - 333).unwrap();
    assert_eq!(buf, model[(4 * MIB - 333) as usize..][..777]);

    // Zero-length I/O completes without touching librbd (which asserts).
    for off in [0, 5 * MIB + 3, size] {
        v.read_at(&mut [], off).unwrap();
        v.write_at(&[], off).unwrap();
        v.write_zeroes(off, 0).unwrap();
        v.discard(off, 0).unwrap();
        assert_eq!(v.allocated(off, 0).unwrap(), vec![]);
    }

    // Zeroing and discarding unaligned ranges read back as zeroes.
    v.write_zeroes(1000, 5000).unwrap();
    model[1000..6000].fill(0);
    v.discard(6 * MIB + 1001, 2 * MIB + 17).unwrap();
    model[(6 * MIB + 1001) as usize..(8 * MIB + 1018) as usize].fill(0);
    v.flush().unwrap();
    assert_same("after zeroing", &read_all(&v), &model);

    // Out of range is refused before librbd sees it.
    assert!(matches!(
        v.write_at(&[1u8; 512], size - 256),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        v.read_at(&mut [0u8; 1], size),
        Err(Error::OutOfRange { .. })
    ));

    // Another connection sees every acknowledged write (no client cache).
    let again = RbdVolume::open(&spec).unwrap();
    assert_same("through a second connection", &read_all(&again), &model);
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn allocated_reports_whole_objects_of_a_sparse_image() {
    let conf = ceph();
    let cluster = connect(&conf);
    let name = unique("sparse");
    let _cleanup = Cleanup::new(&cluster, POOL_A, &name);
    let size = 64 * MIB;
    let v = RbdVolume::create(&spec(&conf, POOL_A, &name), size, None).unwrap();
    assert_eq!(v.allocated(0, size).unwrap(), vec![]);
    assert_eq!(v.used_bytes().unwrap(), 0);

    v.write_at(&[7], 9 * MIB + 5).unwrap();
    let obj = |o: u64, l: u64| Extent { offset: o, len: l };
    assert_eq!(v.allocated(0, size).unwrap(), vec![obj(8 * MIB, 4 * MIB)]);
    assert_eq!(v.allocated(0, 8 * MIB).unwrap(), vec![]);
    // Clipped to the range asked for.
    assert_eq!(v.allocated(9 * MIB, MIB).unwrap(), vec![obj(9 * MIB, MIB)]);

    v.write_at(&[1; 4096], 40 * MIB).unwrap();
    v.write_at(&[1; 4096], 44 * MIB).unwrap(); // adjacent object: merged
    assert_eq!(
        v.allocated(0, size).unwrap(),
        vec![obj(8 * MIB, 4 * MIB), obj(40 * MIB, 8 * MIB)]
    );
    assert_eq!(v.used_bytes().unwrap(), 12 * MIB);

    // Zeroing a whole object deallocates it.
    v.write_zeroes(8 * MIB, 4 * MIB).unwrap();
    assert_eq!(v.allocated(0, size).unwrap(), vec![obj(40 * MIB, 8 * MIB)]);
    let mut b = [9u8; 1];
    v.read_at(&mut b, 9 * MIB + 5).unwrap();
    assert_eq!(b, [0]);
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn create_like_copies_layout_and_identity_names_the_image() {
    let conf = ceph();
    let cluster = connect(&conf);
    let (src_name, dst_name) = (unique("like-src"), unique("like-dst"));
    let _c1 = Cleanup::new(&cluster, POOL_A, &src_name);
    let _c2 = Cleanup::new(&cluster, POOL_B, &dst_name);
    let io = cluster.ioctx(POOL_A).unwrap();
    create_image(
        &io,
        &src_name,
        8 * MIB,
        &CreateOptions {
            order: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    let src = RbdVolume::open(&spec(&conf, POOL_A, &src_name)).unwrap();
    assert_eq!(src.object_size(), MIB);
    src.image().metadata_set("app.owner", "team-blue").unwrap();
    src.image().metadata_set(RECORD_KEY, "not copied").unwrap();

    let dst = RbdVolume::create(&spec(&conf, POOL_B, &dst_name), 8 * MIB, Some(&src)).unwrap();
    assert_eq!(dst.order(), 20);
    assert_eq!(dst.object_size(), MIB);
    assert_eq!(
        dst.image().features().unwrap(),
        src.image().features().unwrap()
    );
    assert_eq!(
        dst.image().striping().unwrap(),
        src.image().striping().unwrap()
    );

    // More keys than one page of rbd_metadata_list (64).
    for i in 0..70 {
        src.image()
            .metadata_set(&format!("app.k{i:02}"), &format!("v{i}"))
            .unwrap();
    }
    assert_eq!(copy_metadata(&src, &dst).unwrap(), 71);
    let listed = dst.image().metadata_list().unwrap();
    assert_eq!(listed.len(), 71, "{listed:?}");
    assert_eq!(listed[0], ("app.k00".to_string(), "v0".to_string()));
    assert_eq!(
        dst.image().metadata_get("app.owner").unwrap().as_deref(),
        Some("team-blue")
    );
    assert_eq!(dst.image().metadata_get(RECORD_KEY).unwrap(), None);

    let id = src.identity().unwrap();
    assert_eq!(id["backend"], "rbd");
    assert_eq!(id["pool"], POOL_A);
    assert_eq!(id["image"], src_name);
    assert_eq!(id["image_id"], src.image().id());
    assert_eq!(id["size"], (8 * MIB).to_string());
    assert_eq!(id["order"], "20");
    assert_eq!(id["fsid"], cluster.fsid());
    assert_eq!(id["fsid"].len(), 36, "a uuid");
    assert!(id["features"].parse::<u64>().unwrap() & 1 == 1, "layering");
    assert_ne!(
        src.identity().unwrap()["image_id"],
        dst.identity().unwrap()["image_id"]
    );

    // Creating over an existing name is refused.
    let err = RbdVolume::create(&spec(&conf, POOL_B, &dst_name), MIB, None).unwrap_err();
    assert!(
        matches!(err, ferry_rbd::RbdError::ImageExists { .. }),
        "{err}"
    );
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn prechecks_see_other_clients_space_and_name_clashes() {
    let conf = ceph();
    let cluster = connect(&conf);
    let (src_name, taken) = (unique("pre-src"), unique("pre-taken"));
    let _c1 = Cleanup::new(&cluster, POOL_A, &src_name);
    let _c2 = Cleanup::new(&cluster, POOL_B, &taken);
    let src = RbdVolume::create(&spec(&conf, POOL_A, &src_name), 32 * MIB, None).unwrap();
    src.write_at(&[5; 8192], 3 * MIB).unwrap();
    assert!(src.other_clients().unwrap().is_empty());

    let target = spec(&conf, POOL_B, &unique("pre-dst"));
    let ok = precheck_migration(&src, &target).unwrap();
    assert!(ok.problems().is_empty(), "{:?}", ok.problems());
    ok.ensure_ok().unwrap();
    assert_eq!(ok.source_used_bytes, 4 * MIB);
    assert!(ok.target_free_bytes >= ok.source_used_bytes);
    assert!(ok.target_pool_exists && !ok.target_exists);

    // A second client (another connection) opening the source shows up.
    let other = RbdVolume::open(&spec(&conf, POOL_A, &src_name)).unwrap();
    let seen = src.other_clients().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].id as u64, other.cluster().instance_id());
    let busy = precheck_migration(&src, &target).unwrap();
    let problems = busy.problems();
    assert!(
        problems[0].contains("open by other clients"),
        "{problems:?}"
    );
    assert!(busy.ensure_ok().is_err());
    drop(other);
    assert!(src.other_clients().unwrap().is_empty());

    // A taken target name and a missing pool.
    drop(RbdVolume::create(&spec(&conf, POOL_B, &taken), MIB, None).unwrap());
    let clash = precheck_migration(&src, &spec(&conf, POOL_B, &taken)).unwrap();
    assert!(clash.target_exists);
    assert!(
        clash.problems()[0].contains("already exists"),
        "{:?}",
        clash.problems()
    );
    let nopool = precheck_migration(&src, &spec(&conf, "ferry-no-such-pool", "x")).unwrap();
    assert!(!nopool.target_pool_exists);
    assert!(
        nopool.problems()[0].contains("does not exist"),
        "{:?}",
        nopool.problems()
    );
}
