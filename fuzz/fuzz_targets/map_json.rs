//! The cluster map's JSON: what `ferry map` edits, agents read from
//! ZooKeeper, and the embedded store keeps in `map.json`.
//!
//! Input: byte 0 (modulo 4) picks what the rest is (`ferry_fuzz::map_mode`):
//! a whole `ClusterMap`; a `map.json` read through `FileStore::snapshot`;
//! one document (byte 1 picks its kind); or a document agents write.
//! Everything parsed is validated and, where a snapshot results, planned
//! for each node as an agent would (`placement::plan`), valid or not: a
//! store may hold documents an older or newer writer left. Checks besides
//! "no panic": parsed documents serialize back to themselves, and a valid
//! map committed to an empty store creates one document per entity.
#![no_main]

use std::sync::OnceLock;

use ferry_fuzz::{map_mode, Input};
use ferry_map::placement::plan;
use ferry_map::store::diff_ops;
use ferry_map::{
    ClusterMap, FileStore, Initiator, LiveNode, Lun, MapStore, MigrationRequest, MigrationStatus,
    Node, NodeStatus, Op, Snapshot, Target,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The store of this process: a directory under `$TMPDIR`.
fn store() -> &'static (FileStore, std::path::PathBuf) {
    static STORE: OnceLock<(FileStore, std::path::PathBuf)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-map-{}", std::process::id()));
        let store = FileStore::open(&dir).expect("a store in the temporary directory");
        (store, dir.join("map.json"))
    })
}

/// Parses `bytes` as a `T`; a parsed one must serialize back to itself.
fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    let again = serde_json::to_vec(&value).expect("a parsed document serializes");
    let back: T = serde_json::from_slice(&again).expect("a serialized document parses");
    assert_eq!(back, value);
    Some(value)
}

/// What agents and `ferry map` do with a snapshot.
fn use_snapshot(mut snap: Snapshot) {
    let valid = snap.map.validate().is_ok();
    if valid {
        // Committing it to an empty store creates every document.
        let ops = diff_ops(&Snapshot::default(), &snap.map).expect("a valid map diffs");
        let m = &snap.map;
        assert_eq!(
            ops.len(),
            m.targets.len() + m.luns.len() + m.initiators.len() + m.nodes.len()
        );
        assert!(ops.iter().all(|op| matches!(op, Op::Create { .. })));
        assert!(diff_ops(&snap, &snap.map).expect("diffs").is_empty());
    }
    for lun in snap.map.luns.keys() {
        let _ = snap.map.sharers(lun);
    }
    for iqn in snap.map.targets.keys() {
        let _ = snap.map.initiators_of_target(iqn);
    }
    // Every node in the map live, the first LUN claimed by the first node.
    let names: Vec<String> = snap.map.nodes.keys().cloned().collect();
    for name in &names {
        snap.live.insert(
            name.clone(),
            LiveNode {
                portal: "127.0.0.1:3260".into(),
                pid: 1,
                since: 0,
                host: String::new(),
                pid_start: 0,
            },
        );
    }
    if let (Some(lun), Some(node)) = (snap.map.luns.keys().next(), names.first()) {
        snap.owners.insert(lun.clone(), node.clone());
    }
    for name in names
        .iter()
        .chain(std::iter::once(&"not-in-the-map".to_string()))
    {
        let p = plan(&snap, name);
        if valid {
            for lun in p.serve.iter().chain(p.claim.keys()) {
                assert!(snap.map.luns.contains_key(lun), "{lun}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        map_mode::CLUSTER_MAP => {
            if let Some(map) = round_trip::<ClusterMap>(input.rest()) {
                use_snapshot(Snapshot {
                    map,
                    ..Snapshot::default()
                });
            }
        }
        map_mode::MAP_FILE => {
            let (store, path) = store();
            std::fs::write(path, input.rest()).expect("writing map.json");
            if let Ok(snap) = store.snapshot() {
                use_snapshot(snap);
            }
        }
        map_mode::DOCUMENT => {
            let kind = input.u8() % 4;
            let doc = input.rest();
            let _ = match kind {
                0 => round_trip::<Target>(doc).map(|t| t.validate()),
                1 => round_trip::<Lun>(doc).map(|l| l.validate()),
                2 => round_trip::<Initiator>(doc).map(|i| i.validate()),
                _ => round_trip::<Node>(doc).map(|n| n.validate()),
            };
        }
        _ => {
            let kind = input.u8() % 4;
            let doc = input.rest();
            match kind {
                0 => {
                    round_trip::<LiveNode>(doc);
                }
                1 => {
                    round_trip::<NodeStatus>(doc);
                }
                2 => {
                    round_trip::<MigrationRequest>(doc);
                }
                _ => {
                    // Its progress is free JSON, whose floats need not
                    // print back to the same bits: parsed only.
                    let _ = serde_json::from_slice::<MigrationStatus>(doc);
                }
            }
        }
    }
});
