//! RbdMetaStore against a real cluster: record, index and marker round
//! trips, what a second connection sees, and destroying the volume.
mod common;

use common::*;
use ferry_core::{MetaStore, SourceMarker, Volume};
use ferry_rbd::{RbdError, RbdVolume, INDEX_PREFIX, MARKER_KEY, RECORD_KEY};

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn record_index_and_marker_round_trip() {
    let conf = ceph();
    let cluster = connect(&conf);
    let name = unique("meta");
    let _cleanup = Cleanup::new(&cluster, POOL_B, &name);
    let spec = spec(&conf, POOL_B, &name);
    let vol = RbdVolume::create(&spec, 1 << 20, None).unwrap();
    let store = vol.meta_store();
    assert!(store.describe().contains(&name), "{}", store.describe());
    assert_eq!(
        store.epoch(),
        None,
        "RADOS writes are durable when acknowledged"
    );

    // Record: absent, stored, replaced.
    assert_eq!(store.load_record().unwrap(), None);
    store.store_record(b"{\"a\":1}\ncrc32=1").unwrap();
    assert_eq!(store.load_record().unwrap().unwrap(), b"{\"a\":1}\ncrc32=1");
    // Larger than librbd's first buffer: the ERANGE retry path.
    let big: Vec<u8> = (0..20_000).map(|i| b'a' + (i % 26) as u8).collect();
    store.store_record(&big).unwrap();
    assert_eq!(store.load_record().unwrap().unwrap(), big);
    store.store_record(b"second").unwrap();
    assert_eq!(store.load_record().unwrap().unwrap(), b"second");
    assert_eq!(
        vol.image().metadata_get(RECORD_KEY).unwrap().as_deref(),
        Some("second")
    );

    // Index: a RADOS object named after the image id.
    assert_eq!(
        store.index_object(),
        format!("{INDEX_PREFIX}{}", vol.image().id())
    );
    assert_eq!(store.read_index().unwrap(), None);
    let mut index: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    store.create_index(&index).unwrap();
    assert_eq!(store.read_index().unwrap().unwrap(), index);
    store.write_index(8, &[0xAB; 8]).unwrap();
    store.write_index(992, &[0xCD; 8]).unwrap();
    store.sync_index().unwrap();
    index[8..16].fill(0xAB);
    index[992..1000].fill(0xCD);
    assert_eq!(store.read_index().unwrap().unwrap(), index);
    // create_index replaces the whole object, shorter or not.
    store.create_index(&[1, 2, 3]).unwrap();
    assert_eq!(store.read_index().unwrap().unwrap(), vec![1, 2, 3]);
    store.create_index(&index).unwrap();
    let pool = cluster.ioctx(POOL_B).unwrap();
    assert_eq!(pool.object_size(store.index_object()).unwrap(), Some(1000));

    // Marker: migrating, then committed.
    assert_eq!(store.load_source_marker().unwrap(), None);
    let m = SourceMarker::migrating("rbd:ferry-b/elsewhere");
    store.store_source_marker(&m).unwrap();
    assert_eq!(store.load_source_marker().unwrap(), Some(m));
    let c = SourceMarker::committed("rbd:ferry-b/elsewhere");
    store.store_source_marker(&c).unwrap();
    assert_eq!(store.load_source_marker().unwrap(), Some(c.clone()));

    // A second process (connection) sees all of it.
    {
        let other = RbdVolume::open(&spec).unwrap();
        let s2 = other.meta_store();
        assert_eq!(s2.load_record().unwrap().unwrap(), b"second");
        assert_eq!(s2.read_index().unwrap().unwrap(), index);
        assert_eq!(s2.load_source_marker().unwrap(), Some(c));
    }

    // A garbled marker is reported as corrupt, never guessed at.
    vol.image().metadata_set(MARKER_KEY, "sideways x").unwrap();
    assert!(matches!(
        store.load_source_marker(),
        Err(ferry_core::Error::Corrupt { .. })
    ));

    // Removals; removing what is missing is fine.
    for _ in 0..2 {
        store.remove_source_marker().unwrap();
        store.remove_index().unwrap();
        store.remove_record().unwrap();
    }
    assert_eq!(store.load_source_marker().unwrap(), None);
    assert_eq!(store.read_index().unwrap(), None);
    assert_eq!(store.load_record().unwrap(), None);
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn destroy_volume_removes_the_image_and_its_index() {
    let conf = ceph();
    let cluster = connect(&conf);
    let name = unique("destroy");
    let _cleanup = Cleanup::new(&cluster, POOL_B, &name);
    let spec = spec(&conf, POOL_B, &name);
    let vol = RbdVolume::create(&spec, 4 << 20, None).unwrap();
    vol.write_at(&[3; 4096], 0).unwrap();
    let store = vol.meta_store();
    store.create_index(&[0; 128]).unwrap();
    store.store_record(b"aborted").unwrap();
    let oid = store.index_object().to_string();

    // While another client has the image open, librbd refuses to remove it.
    let other = RbdVolume::open(&spec).unwrap();
    drop(vol);
    let err = store.destroy_volume().unwrap_err();
    assert!(err.to_string().contains("remove image"), "{err}");
    drop(other);

    // Retried once the image is closed everywhere: done.
    store.destroy_volume().unwrap();
    let pool = cluster.ioctx(POOL_B).unwrap();
    assert_eq!(pool.object_size(&oid).unwrap(), None);
    assert!(matches!(
        RbdVolume::open(&spec),
        Err(RbdError::NoImage { .. })
    ));
    // The store says so instead of crashing.
    assert!(store.load_record().is_err());
    store.destroy_volume().unwrap();
}
