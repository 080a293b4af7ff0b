//! Whole ferry migrations between RBD images in two pools of a real
//! cluster, driven through the engine (`MigratingVolume` + `CopyCursor`)
//! with foreground writes racing the copier: one committed, one aborted.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_core::copier::{CopyCursor, Step};
use ferry_core::{
    pattern, CopierConfig, MetaStore, MigratingVolume, MigrationPlan, MigrationState, SourceMarker,
    Volume,
};
use ferry_rbd::{
    copy_metadata, create_image, CreateOptions, RbdError, RbdSpec, RbdVolume, INDEX_PREFIX,
};

const MIB: u64 = 1 << 20;
/// 24 regions of one 1 MiB object each.
const SIZE: u64 = 24 * MIB;

/// A source image of 1 MiB objects with data in some regions (one of them
/// partly), holes elsewhere; returns it with its content.
fn make_source(conf: &std::path::Path, name: &str) -> (RbdVolume, Vec<u8>) {
    let cluster = connect(conf);
    create_image(
        &cluster.ioctx(POOL_A).unwrap(),
        name,
        SIZE,
        &CreateOptions {
            order: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    let src = RbdVolume::open(&spec(conf, POOL_A, name)).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    for (i, (off, len)) in [
        (0, 3 * MIB),
        (7 * MIB + 12_345, 100_000),
        (12 * MIB, MIB),
        (20 * MIB - 1, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern::bytes(100 + i as u64, len as usize);
        src.write_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    src.flush().unwrap();
    (src, model)
}

/// One foreground write, write-zeroes or discard at a random unaligned
/// place, applied to the volume and the model.
fn random_write(v: &dyn Volume, model: &mut [u8], rng: &mut Rng, seed: u64) {
    let max = if rng.below(4) == 0 { 3 * MIB } else { 64 << 10 };
    let len = 1 + rng.below(max);
    let off = rng.below(SIZE - len + 1);
    let (o, l) = (off as usize, len as usize);
    match rng.below(8) {
        0 => {
            v.write_zeroes(off, len).unwrap();
            model[o..o + l].fill(0);
        }
        1 => {
            v.discard(off, len).unwrap();
            model[o..o + l].fill(0);
        }
        _ => {
            let data = pattern::bytes(seed, l);
            v.write_at(&data, off).unwrap();
            model[o..o + l].copy_from_slice(&data);
        }
    }
}

fn plan(src: &RbdVolume, target: &RbdSpec) -> MigrationPlan {
    MigrationPlan {
        source_spec: src.spec().to_string(),
        target_spec: target.to_string(),
        source_info: src.identity().unwrap(),
        region_size: src.object_size(),
        rate_limit: None,
        adaptive: false,
        impact_percent: None,
        floor_rate: None,
        priority: None,
        paused: false,
    }
}

fn cursor() -> CopyCursor {
    CopyCursor::new(CopierConfig {
        batch_bytes: 4 * MIB,
        batch_age: Duration::from_millis(200),
        // Two objects in flight: the copier's parallel path, yet slow enough
        // that the tests see the migration half done.
        parallel: 2,
        ..CopierConfig::default()
    })
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn rbd_to_rbd_migration_with_writes_during_the_copy_then_commit() {
    let conf = ceph();
    migrate_and_commit(&conf, &conf);
}

/// The same between two clusters: `CEPH_CONF_B` names the second one
/// (`CEPH_PORT=6890 scripts/ceph-cluster.sh start DIR`, as
/// `scripts/test.sh` does).
#[test]
#[ignore = "needs two Ceph clusters (CEPH_CONF, CEPH_CONF_B): scripts/test.sh starts them"]
fn rbd_to_rbd_migration_across_clusters_then_commit() {
    migrate_and_commit(&ceph(), &ceph_b());
}

/// Migrates a fresh image from pool A of `conf` to pool B of `conf_dst`
/// with foreground writes during the copy, commits, and checks every byte.
fn migrate_and_commit(conf: &std::path::Path, conf_dst: &std::path::Path) {
    let cluster = connect(conf);
    let cluster_dst = connect(conf_dst);
    assert_eq!(conf == conf_dst, cluster.fsid() == cluster_dst.fsid());
    let (src_name, dst_name) = (unique("mig-src"), unique("mig-dst"));
    let _c1 = Cleanup::new(&cluster, POOL_A, &src_name);
    let _c2 = Cleanup::new(&cluster_dst, POOL_B, &dst_name);
    let (src, original) = make_source(conf, &src_name);
    src.image().metadata_set("app.tier", "gold").unwrap();
    let tspec = spec(conf_dst, POOL_B, &dst_name);
    ferry_rbd::precheck_migration(&src, &tspec)
        .unwrap()
        .ensure_ok()
        .unwrap();
    let dst = RbdVolume::create(&tspec, SIZE, Some(&src)).unwrap();
    assert_eq!(dst.object_size(), MIB);
    copy_metadata(&src, &dst).unwrap();
    let plan = plan(&src, &tspec);
    let (src_store, dst_store) = (Arc::new(src.meta_store()), Arc::new(dst.meta_store()));
    let index_oid = dst_store.index_object().to_string();
    assert_eq!(index_oid, format!("{INDEX_PREFIX}{}", dst.image().id()));
    let mv = MigratingVolume::start(
        Arc::new(src),
        src_store.clone(),
        Arc::new(dst),
        dst_store.clone(),
        plan,
    )
    .unwrap();
    assert_eq!(
        src_store.load_source_marker().unwrap(),
        Some(SourceMarker::migrating(&tspec.to_string()))
    );

    // Interleaved: a copier step, then a foreground write, until a third
    // of the regions are across.
    let mut model = original.clone();
    let mut rng = Rng::new(7);
    let mut cur = cursor();
    let mut seed = 1000;
    while mv.index().migrated_count() < mv.index().regions() / 3 {
        assert!(matches!(cur.step(&mv).unwrap(), Step::Worked { .. }));
        random_write(mv.as_ref(), &mut model, &mut rng, seed);
        seed += 1;
    }
    assert_same(
        "mid-copy, through the migrating volume",
        &read_all(mv.as_ref()),
        &model,
    );

    // Then concurrently: the copier on one thread, a writer on another.
    let writer_model = std::thread::scope(|s| {
        let copier = s.spawn(|| {
            let mut steps = 0;
            while cur.step(&mv).unwrap() != Step::Finished {
                steps += 1;
            }
            steps
        });
        let writer = s.spawn(|| {
            let mut m = model.clone();
            let mut rng = Rng::new(99);
            for i in 0..60 {
                random_write(mv.as_ref(), &mut m, &mut rng, 5000 + i);
            }
            mv.flush().unwrap();
            m
        });
        assert!(copier.join().unwrap() > 0);
        writer.join().unwrap()
    });
    let model = writer_model;
    assert_eq!(mv.state(), MigrationState::Copied);
    assert_same(
        "copied, through the migrating volume",
        &read_all(mv.as_ref()),
        &model,
    );

    mv.commit().unwrap();
    assert_eq!(mv.state(), MigrationState::Committed);
    let rec = MigratingVolume::load_record(dst_store.as_ref())
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, MigrationState::Committed);
    assert_eq!(rec.source_info["image"], src_name);
    assert_eq!(
        src_store.load_source_marker().unwrap(),
        Some(SourceMarker::committed(&tspec.to_string()))
    );
    assert_eq!(
        dst_store.read_index().unwrap(),
        None,
        "the index goes at commit"
    );
    drop(mv);
    drop((src_store, dst_store));

    // A fresh connection sees the target alone holding every write and
    // the copied metadata. (The source is not compared: writes to
    // regions not yet copied reached it too, so it is neither the start
    // image nor the final one.)
    let target = RbdVolume::open(&tspec).unwrap();
    assert_same("target after commit", &read_all(&target), &model);
    assert_eq!(
        target.image().metadata_get("app.tier").unwrap().as_deref(),
        Some("gold")
    );
    assert_eq!(
        cluster_dst
            .ioctx(POOL_B)
            .unwrap()
            .object_size(&index_oid)
            .unwrap(),
        None
    );
    assert_eq!(target.identity().unwrap()["fsid"], cluster_dst.fsid());
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn abort_copies_writes_back_and_leaves_the_source_whole() {
    let conf = ceph();
    let cluster = connect(&conf);
    let (src_name, dst_name) = (unique("abort-src"), unique("abort-dst"));
    let _c1 = Cleanup::new(&cluster, POOL_A, &src_name);
    let _c2 = Cleanup::new(&cluster, POOL_B, &dst_name);
    let (src, original) = make_source(&conf, &src_name);
    let tspec = spec(&conf, POOL_B, &dst_name);
    let dst = RbdVolume::create(&tspec, SIZE, Some(&src)).unwrap();
    let plan = plan(&src, &tspec);
    let (src_store, dst_store) = (Arc::new(src.meta_store()), Arc::new(dst.meta_store()));
    let index_oid = dst_store.index_object().to_string();
    // The engine gets the only handles on the target, so that discarding
    // it at the end of the abort can remove the image.
    let mv = MigratingVolume::start(
        Arc::new(src),
        src_store.clone(),
        Arc::new(dst),
        dst_store.clone(),
        plan,
    )
    .unwrap();

    let mut model = original.clone();
    let mut rng = Rng::new(3);
    let mut cur = cursor();
    for i in 0..5 {
        cur.step(&mv).unwrap();
        random_write(mv.as_ref(), &mut model, &mut rng, 200 + i);
    }
    let migrated = mv.index().migrated_count();
    assert!(
        migrated > 0 && migrated < mv.index().regions(),
        "{migrated}"
    );
    assert!(mv.index().written_count() > 0);

    mv.abort().unwrap();
    assert_eq!(mv.state(), MigrationState::Aborting);
    // Writes keep working while the abort copies back.
    for i in 0..6 {
        cur.step(&mv).unwrap();
        random_write(mv.as_ref(), &mut model, &mut rng, 300 + i);
    }
    while cur.step(&mv).unwrap() != Step::Finished {}
    assert_eq!(mv.state(), MigrationState::Aborted);
    assert_same(
        "aborted, through the volume",
        &read_all(mv.as_ref()),
        &model,
    );
    drop(mv);

    // The source alone holds every write; the target and its index are gone.
    assert_eq!(src_store.load_source_marker().unwrap(), None);
    drop((src_store, dst_store));
    let source = RbdVolume::open(&spec(&conf, POOL_A, &src_name)).unwrap();
    assert_same("source after abort", &read_all(&source), &model);
    assert!(matches!(
        RbdVolume::open(&tspec),
        Err(RbdError::NoImage { .. })
    ));
    assert_eq!(
        cluster
            .ioctx(POOL_B)
            .unwrap()
            .object_size(&index_oid)
            .unwrap(),
        None
    );
}
