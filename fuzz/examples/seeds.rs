//! Writes the seed corpora, `corpus/<target>/seed-<name>`, from literal
//! bytes: valid CDBs of every opcode family, PR OUT parameter lists of
//! every service action, TransportIDs, UNMAP lists, volume specs,
//! cfgstrings and map documents. libFuzzer starts from these and grows its
//! own corpus beside them (ignored by git).
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferry_scsi::CacheMode;
use ferry_fuzz::*;
use ferry_map::{ClusterMap, Frontend, Initiator, LiveNode, Lun, Node, Target};
use ferry_pr::{Nexus, PrState, PrType, Registration, Reservation};

/// Named inputs of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// A 10-byte CDB with the usual LBA (bytes 2-5) and length (7-8) fields.
fn cdb10(op: u8, byte1: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = byte1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A 12-byte CDB: LBA in bytes 2-5, length in 6-9.
fn cdb12(op: u8, byte1: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[1] = byte1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A 16-byte CDB: LBA in bytes 2-9, length in 10-13.
fn cdb16(op: u8, byte1: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = byte1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A `cdb_exec` input: a 64-block LUN of 512-byte blocks, then commands
/// (fail, cdb, data-in length, data-out).
fn exec(setup: [u8; 2], cmds: &[(bool, Vec<u8>, u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = setup.to_vec();
    for (fail, cdb, din, dout) in cmds {
        put_command(&mut out, *fail, cdb, *din, dout);
    }
    out
}

fn cdb_exec_seeds() -> Seeds {
    let lun = lun_512(64);
    let block = |b: u8, n: usize| vec![b; 512 * n];
    let mut caw = block(0, 1);
    caw.extend(block(7, 1));
    let mut lba_status = vec![0x9e, 0x12];
    lba_status.extend_from_slice(&[0; 8]);
    lba_status.extend_from_slice(&4096u32.to_be_bytes());
    lba_status.extend_from_slice(&[0, 0]);
    let mut rsoc = vec![0xa3, 0x0c, 0x01, 0x28, 0, 0];
    rsoc.extend_from_slice(&512u32.to_be_bytes());
    rsoc.extend_from_slice(&[0, 0]);
    // 4096-byte blocks, writethrough (index 0), WCE off, 8 blocks.
    let lun_4k = [0x01, 8];
    vec![
        (
            "read-6-10-12-16",
            exec(
                lun,
                &[
                    (false, vec![0x08, 0, 0, 1, 2, 0], 1024, vec![]),
                    (false, cdb10(0x28, 0x08, 3, 4), 2048, vec![]),
                    (false, cdb12(0xa8, 0, 5, 2), 1024, vec![]),
                    (false, cdb16(0x88, 0, 62, 2), 1024, vec![]),
                ],
            ),
        ),
        (
            "write-then-read",
            exec(
                lun,
                &[
                    (false, vec![0x0a, 0, 0, 1, 1, 0], 0, block(0x11, 1)),
                    (false, cdb10(0x2a, 0x08, 2, 2), 0, block(0x22, 2)),
                    (false, cdb12(0xaa, 0, 4, 1), 0, block(0x33, 1)),
                    (false, cdb16(0x8a, 0x08, 5, 1), 0, block(0x44, 1)),
                    (false, cdb10(0x28, 0, 0, 8), 4096, vec![]),
                ],
            ),
        ),
        (
            "write-verify-and-verify",
            exec(
                lun,
                &[
                    (false, cdb10(0x2e, 0x02, 1, 1), 0, block(5, 1)),
                    (false, cdb12(0xae, 0x02, 2, 1), 0, block(6, 1)),
                    (false, cdb16(0x8e, 0x00, 3, 1), 0, block(7, 1)),
                    (false, cdb10(0x2f, 0x02, 1, 1), 0, block(5, 1)),
                    (false, cdb12(0xaf, 0x00, 0, 64), 0, vec![]),
                    (false, cdb16(0x8f, 0x02, 2, 1), 0, block(9, 1)),
                ],
            ),
        ),
        (
            "write-same",
            exec(
                lun,
                &[
                    (false, cdb10(0x41, 0x02, 10, 3), 0, block(0xab, 1)),
                    (false, cdb10(0x41, 0x04, 20, 2), 0, block(0xcd, 1)),
                    (false, cdb10(0x41, 0x08, 10, 3), 0, block(0, 1)),
                    (false, cdb16(0x93, 0x09, 30, 4), 0, vec![]),
                    (false, cdb16(0x93, 0x00, 60, 0), 0, block(7, 1)),
                    (false, cdb10(0x41, 0x00, 40, 4), 0, block(0, 1)),
                ],
            ),
        ),
        (
            "unmap",
            exec(
                lun,
                &[
                    (false, cdb10(0x2a, 0, 0, 8), 0, block(9, 8)),
                    (
                        false,
                        cdb10(0x42, 0, 0, 40),
                        0,
                        unmap_list(&[(1, 1), (6, 2)]),
                    ),
                    (false, cdb10(0x28, 0, 0, 8), 4096, vec![]),
                ],
            ),
        ),
        (
            "compare-and-write-orwrite",
            exec(
                lun,
                &[
                    (
                        false,
                        cdb16(0x89, 0x08, 2, 0).tap(|c| c[13] = 1),
                        0,
                        caw.clone(),
                    ),
                    (false, cdb16(0x89, 0x00, 2, 0).tap(|c| c[13] = 1), 0, caw),
                    (false, cdb16(0x8b, 0x00, 2, 1), 0, block(0xf0, 1)),
                ],
            ),
        ),
        (
            "sync-prefetch-lba-status",
            exec(
                lun,
                &[
                    (false, cdb10(0x35, 0, 0, 0), 0, vec![]),
                    (false, cdb16(0x91, 0, 8, 8), 0, vec![]),
                    (false, cdb10(0x34, 0, 4, 4), 0, vec![]),
                    (false, cdb16(0x90, 0, 63, 1), 0, vec![]),
                    (false, cdb10(0x2a, 0, 8, 8), 0, block(1, 8)),
                    (false, lba_status, 4096, vec![]),
                ],
            ),
        ),
        (
            "not-block-commands",
            exec(
                lun,
                &[
                    (false, vec![0x12, 0, 0, 0, 36, 0], 36, vec![]),
                    (false, rsoc, 512, vec![]),
                    (false, vec![0xc0, 0, 0, 0, 0, 0], 0, vec![]),
                ],
            ),
        ),
        (
            "errors-and-faults",
            exec(
                lun,
                &[
                    (true, cdb10(0x2a, 0, 0, 1), 0, block(1, 1)),
                    (true, cdb10(0x28, 0, 0, 1), 512, vec![]),
                    (true, cdb10(0x35, 0, 0, 0), 0, vec![]),
                    (false, cdb10(0x28, 0, 63, 2), 1024, vec![]),
                    (false, cdb10(0x28, 0x20, 0, 1), 512, vec![]),
                ],
            ),
        ),
        (
            "4k-blocks",
            exec(
                lun_4k,
                &[
                    (false, cdb10(0x2a, 0, 1, 2), 0, vec![3; 8192]),
                    (false, cdb16(0x93, 0x02, 4, 2), 0, vec![4; 4096]),
                    (false, cdb10(0x28, 0, 0, 8), 0xffff, vec![]),
                ],
            ),
        ),
    ]
}

/// `tap` for building a value and changing one field.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn pr_out_seeds() -> Seeds {
    let out = |action: u8, type_code: u8, params: &[u8]| {
        prout_cdb(action, type_code, params.len() as u32).to_vec() // a short list
    };
    let step = |v: &mut Vec<u8>, nexus: u8, action: u8, type_code: u8, params: Vec<u8>| {
        put_pr_step(
            v,
            nexus,
            pr_step::OUT,
            &out(action, type_code, &params),
            &params,
        );
    };
    let prin = |v: &mut Vec<u8>, nexus: u8, action: u8| {
        let mut c = [0u8; 10];
        c[0] = 0x5e;
        c[1] = action;
        c[7..9].copy_from_slice(&512u16.to_be_bytes());
        put_pr_step(v, nexus, pr_step::IN, &c, &[0; 512]);
    };
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let (a, b) = (0xaaaa_u64, 0xbbbb_u64);

    let mut reserve = vec![0u8];
    step(&mut reserve, 0, 0, 0, prout_params(0, a, 0));
    step(&mut reserve, 0, 1, 1, prout_params(a, 0, 0));
    prin(&mut reserve, 0, 0);
    prin(&mut reserve, 2, 1);
    put_pr_step(&mut reserve, 2, pr_step::CHECK, &write10, &[]);
    step(&mut reserve, 0, 2, 1, prout_params(a, 0, 0));

    let mut preempt = vec![0u8];
    step(&mut preempt, 0, 0, 0, prout_params(0, a, 0x01));
    step(&mut preempt, 2, 6, 0, prout_params(0, b, 0x04));
    step(&mut preempt, 0, 1, 6, prout_params(a, 0, 0));
    step(&mut preempt, 2, 4, 6, prout_params(b, a, 0));
    prin(&mut preempt, 2, 3);
    put_pr_step(&mut preempt, 0, pr_step::CHECK, &write10, &[]);
    step(&mut preempt, 2, 5, 7, prout_params(b, 0, 0));
    step(&mut preempt, 2, 3, 0, prout_params(b, 0, 0));

    let mut spec_i_pt = vec![0u8];
    let mut tids = iscsi_transport_id(INITIATORS[2]);
    tids.extend(iscsi_transport_id(INITIATORS[3]));
    let mut p = prout_params(0, a, 0x08);
    p.extend_from_slice(&(tids.len() as u32).to_be_bytes()); // short
    p.extend(tids);
    step(&mut spec_i_pt, 0, 0, 0, p);
    prin(&mut spec_i_pt, 3, 3);
    put_pr_step(&mut spec_i_pt, 3, pr_step::CLEAR, &[], &[]);
    prin(&mut spec_i_pt, 3, 0);

    let mut moved = vec![0u8];
    step(&mut moved, 0, 0, 0, prout_params(0, a, 0));
    step(&mut moved, 0, 1, 3, prout_params(a, 0, 0));
    let tid = iscsi_transport_id(INITIATORS[3]);
    let mut p = prout_params(a, b, 0);
    p[17] = 0x02; // UNREG
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes()); // short
    p.extend(tid);
    step(&mut moved, 0, 7, 3, p);
    prin(&mut moved, 3, 3);
    put_pr_step(&mut moved, 0x80 | 3, pr_step::OUT, &out(2, 3, &[0; 24]), &{
        let mut p = prout_params(b, 0, 0);
        p.truncate(24);
        p
    });

    // A saved document: A holds a registrants-only reservation, B owes a
    // unit attention.
    let na = Nexus::new(INITIATORS[0], TARGET_PORT);
    let nb = Nexus::new(INITIATORS[2], TARGET_PORT);
    let state = PrState {
        generation: 9,
        aptpl: true,
        registrations: vec![
            Registration {
                nexus: na.clone(),
                key: a,
                all_target_ports: false,
            },
            Registration {
                nexus: nb.clone(),
                key: b,
                all_target_ports: true,
            },
        ],
        reservation: Some(Reservation {
            holder: Some(na),
            kind: PrType::WriteExclusiveRegistrantsOnly,
        }),
        attentions: vec![ferry_pr::state::PendingAttention {
            nexus: nb,
            asc: 0x2a05,
        }],
    };
    let mut loaded = vec![1u8];
    put_field(&mut loaded, &state.encode());
    put_pr_step(&mut loaded, 2, pr_step::CHECK, &write10, &[]);
    step(&mut loaded, 2, 4, 5, prout_params(b, a, 0));
    prin(&mut loaded, 0, 3);

    vec![
        ("register-reserve-release", reserve),
        ("preempt-and-abort-clear", preempt),
        ("spec-i-pt-admin-clear", spec_i_pt),
        ("register-and-move", moved),
        ("saved-document", loaded),
    ]
}

fn transport_id_seeds() -> Seeds {
    let one = [vec![0u8], iscsi_transport_id(INITIATORS[1])].concat();
    let two = [
        vec![0x01],
        iscsi_transport_id(INITIATORS[2]),
        iscsi_transport_id("iqn.1994-05.com.redhat:5b3c9a1f,i,0x23D000000ABC"),
    ]
    .concat();
    // Format 00b: a name without an ISID (an initiator device).
    let mut device = vec![0u8, 0x05, 0, 0, 0x20];
    device.extend_from_slice(b"iqn.1994-05.com.redhat:5b3c9a1f\0");
    vec![("one", one), ("two", two), ("format-00b", device)]
}

fn unmap_seeds() -> Seeds {
    let with = |setup: [u8; 2], byte1: u8, list: Vec<u8>| {
        let mut v = setup.to_vec();
        v.push(byte1);
        v.extend_from_slice(&(list.len() as u16).to_be_bytes()); // short
        v.extend(list);
        v
    };
    vec![
        ("two", with(lun_512(64), 0, unmap_list(&[(1, 1), (6, 2)]))),
        (
            "zero-length-past-end",
            with(lun_512(64), 0, unmap_list(&[(64, 0), (63, 1)])),
        ),
        (
            "one-out-of-range",
            with(lun_512(64), 0, unmap_list(&[(0, 1), (63, 2)])),
        ),
        ("4k", with([0x01, 8], 0, unmap_list(&[(2, 3)]))),
    ]
}

fn text_seeds(items: &[(&'static str, &str)]) -> Seeds {
    items
        .iter()
        .map(|(n, s)| (*n, s.as_bytes().to_vec()))
        .collect()
}

fn map() -> ClusterMap {
    let iqn = "iqn.2026-11.org.example:lun0".to_string();
    let mut m = ClusterMap::default();
    m.targets.insert(
        iqn.clone(),
        Target {
            iqn: iqn.clone(),
            portals: vec!["192.0.2.10:3260".into()],
            chap: Some(ferry_map::ChapCredential {
                user: "ferry".into(),
                password: "a-secret-of-16-b".into(),
            }),
        },
    );
    for (name, portal) in [("gw-a", "127.0.0.1:3260"), ("gw-b", "[::1]:3261")] {
        m.nodes.insert(
            name.into(),
            Node {
                name: name.into(),
                portal: portal.into(),
                frontend: if name == "gw-a" {
                    Frontend::Tgt
                } else {
                    Frontend::Lio
                },
                port_group: None,
            },
        );
    }
    for (i, name) in ["vol0", "vol1"].into_iter().enumerate() {
        m.luns.insert(
            name.into(),
            Lun {
                name: name.into(),
                target: iqn.clone(),
                lun: i as u32 + 1, // two LUNs
                spec: format!("file:/srv/{name}.img"),
                cache_mode: if i == 0 {
                    CacheMode::Writethrough
                } else {
                    CacheMode::Writeback
                },
                nodes: if i == 0 {
                    vec!["gw-b".into(), "gw-a".into()]
                } else {
                    vec![]
                },
            },
        );
    }
    let host = "iqn.1994-05.com.redhat:5b3c9a1f".to_string();
    m.initiators.insert(
        host.clone(),
        Initiator {
            iqn: host,
            luns: BTreeSet::from(["vol0".to_string(), "vol1".to_string()]),
        },
    );
    m
}

fn map_json_seeds() -> Seeds {
    let m = map();
    let json = |v: &dyn erased::Json| v.bytes();
    let mut docs = BTreeMap::new();
    for (k, t) in &m.targets {
        docs.insert(format!("targets/{k}"), serde_json::to_value(t).unwrap());
    }
    for (k, l) in &m.luns {
        docs.insert(format!("luns/{k}"), serde_json::to_value(l).unwrap());
    }
    for (k, i) in &m.initiators {
        docs.insert(format!("initiators/{k}"), serde_json::to_value(i).unwrap());
    }
    for (k, n) in &m.nodes {
        docs.insert(format!("nodes/{k}"), serde_json::to_value(n).unwrap());
    }
    let docs: BTreeMap<_, _> = docs
        .into_iter()
        .enumerate()
        .map(|(i, (k, doc))| (k, serde_json::json!({"version": i, "doc": doc})))
        .collect();
    let file = serde_json::json!({
        "version": 7,
        "docs": docs,
        "migrations": {
            "vol0": {"version": 1, "doc": {"seq": 3, "action": "start", "target": "file:/fast/vol0.img", "rate": 1000000}},
            "vol1": {"version": 0, "doc": {"seq": 1, "action": "commit", "remove_source": true}},
        },
    });
    let with = |mode: u8, kind: Option<u8>, body: Vec<u8>| {
        let mut v = vec![mode];
        v.extend(kind);
        v.extend(body);
        v
    };
    let live = LiveNode {
        portal: "127.0.0.1:3260".into(),
        pid: 4242,
        since: 1_790_000_000,
        host: "gw-a".into(),
        pid_start: 123_456,
    };
    vec![
        ("cluster-map", with(map_mode::CLUSTER_MAP, None, json(&m))),
        (
            "map-file",
            with(map_mode::MAP_FILE, None, serde_json::to_vec_pretty(&file).unwrap()),
        ),
        (
            "target",
            with(map_mode::DOCUMENT, Some(0), json(&m.targets.values().next().unwrap().clone())),
        ),
        (
            "lun",
            with(map_mode::DOCUMENT, Some(1), json(&m.luns.values().next().unwrap().clone())),
        ),
        (
            "initiator",
            with(map_mode::DOCUMENT, Some(2), json(&m.initiators.values().next().unwrap().clone())),
        ),
        (
            "node",
            with(map_mode::DOCUMENT, Some(3), json(&m.nodes.values().next().unwrap().clone())),
        ),
        ("live-node", with(map_mode::STATE, Some(0), json(&live))),
        (
            "node-status",
            with(
                map_mode::STATE,
                Some(1),
                br#"{"applied_version":7,"serving":["vol0"],"errors":{"vol1":"no such file"},"at_ms":1790000000000}"#.to_vec(),
            ),
        ),
        (
            "migration-request",
            with(
                map_mode::STATE,
                Some(2),
                br#"{"seq":4,"action":"rate","rate":null}"#.to_vec(),
            ),
        ),
        (
            "migration-status",
            with(
                map_mode::STATE,
                Some(3),
                br#"{"done_seq":3,"node":"gw-a","state":"copying","progress":{"done":1.5e3,"regions":[1,2]},"at_ms":1}"#.to_vec(),
            ),
        ),
    ]
}

/// Serializing any of the map's types without naming each.
mod erased {
    pub trait Json {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).expect("serializes")
        }
    }
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: Vec<(&str, Seeds)> = vec![
        ("cdb_exec", cdb_exec_seeds()),
        ("pr_out", pr_out_seeds()),
        ("transport_id", transport_id_seeds()),
        ("unmap", unmap_seeds()),
        (
            "volume_spec",
            text_seeds(&[
                ("file", "file:/srv/vol0.img"),
                ("plain", "/srv/vol0.img"),
                ("relative", "vols/../vol0.img"),
                ("dots", " file:/a/./b/../c "),
                (
                    "rbd",
                    "rbd:pool/image@snap?conf=/etc/ceph/ceph.conf&id=client.admin&keyring=/etc/ceph/k",
                ),
                ("unknown", "nbd:host/export"),
            ]),
        ),
        (
            "tcmu_cfgstring",
            text_seeds(&[
                ("path", "ferry//srv/vol0.img"),
                ("runner-option", "ferry//srv/vol0.img;tcmur_cmd_time_out=30"),
                ("rbd-slash", "ferry/rbd/pool/image@snap"),
                ("file-scheme", "ferry/file:/srv/vol0.img"),
                ("bare", "/srv/a/../vol0.img"),
                ("relative", "ferry/vol0.img"),
            ]),
        ),
        ("map_json", map_json_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}
