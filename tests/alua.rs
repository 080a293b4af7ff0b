//! Implicit ALUA through real tgtds, agents and ZooKeeper, seen by a real
//! initiator (libiscsi): two gateway nodes export one LUN, each through
//! its own target port group. Checked from both portals: the TPGS bits
//! and the VPD 83h port designators, one device identity, REPORT TARGET
//! PORT GROUPS agreeing on every path, the standby port refusing media
//! access with TARGET PORT IN STANDBY STATE while answering inquiries,
//! and the standby node not holding the volume. Then the owner is
//! killed (the other node's group turns active and serves the data), it
//! rejoins as standby without taking the LUN back, and a change of the
//! map's node order moves the LUN back in a planned hand-over.
mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::zk::ZooKeeper;
use ferry_initiator::{ScsiOutcome, ScsiStatus, Session};

/// (state code, group id, preferred) per descriptor of an RTPG reply.
type Groups = Vec<(u8, u16, bool)>;

/// Sends `cdb`, first taking the ASYMMETRIC ACCESS STATE CHANGED unit
/// attentions a port owes a session after each change of its groups (as
/// an initiator does: it then reads RTPG again).
fn send(s: &mut Session, cdb: &[u8], data_out: Option<&[u8]>, len: usize) -> ScsiOutcome {
    let mut told = 0;
    loop {
        let r = s.raw_cdb(cdb, data_out, len).unwrap();
        let changed = r
            .sense
            .is_some_and(|s| (s.key, s.asc, s.ascq) == (0x06, 0x2a, 0x06));
        if !changed {
            return r;
        }
        told += 1;
        assert!(told < 4, "unit attention again and again");
    }
}

fn rtpg(s: &mut Session) -> Groups {
    let r = send(s, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], None, 1024);
    assert!(r.is_good(), "RTPG: {:?} {:?}", r.status, r.sense);
    let len = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]) as usize;
    let mut out = Vec::new();
    let mut at = 4;
    while at + 8 <= 4 + len {
        let d = &r.data[at..];
        out.push((
            d[0] & 0x0f,
            u16::from_be_bytes([d[2], d[3]]),
            d[0] & 0x80 != 0,
        ));
        at += 8 + 4 * usize::from(d[7]);
    }
    out
}

/// Logs in through `n`'s portal whatever its port's state.
fn try_connect(n: &Node) -> ferry_initiator::Result<Session> {
    let opts = ferry_initiator::ConnectOptions {
        any_path_state: true,
        ..Default::default()
    };
    Session::connect_with(&n.url(1), &opts)
}

fn connect(n: &Node) -> Session {
    try_connect(n).unwrap()
}

/// The port group of node `name` as the map gives it.
fn group_of(url: &str, name: &str) -> u16 {
    let s = show(url);
    let g = &s["map"]["nodes"][name]["port_group"];
    if let Some(g) = g.as_u64() {
        return g as u16;
    }
    // The default: the same hash the map uses.
    let node = ferry_map::Node {
        name: name.into(),
        portal: "127.0.0.1:1".into(),
        frontend: ferry_map::Frontend::Tgt,
        port_group: None,
    };
    node.port_group()
}

/// Waits until RTPG through `n` reports `want`; returns how long it took.
fn wait_rtpg(n: &Node, want: &Groups, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = try_connect(n).map(|mut s| rtpg(&mut s));
        let got = got.map_err(|e| e.to_string());
        if got.as_ref() == Ok(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "RTPG through {}: {got:?}, not {want:?} within {limit:?}\n{}",
            n.name,
            n.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether tgtd `pid` has file `path` open.
fn holds(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
}

fn sense_of(s: &mut Session, cdb: &[u8], len: usize) -> (ScsiStatus, Option<(u8, u8, u8)>) {
    let r = send(s, cdb, None, len);
    (r.status, r.sense.map(|s| (s.key, s.asc, s.ascq)))
}

const AO: u8 = 0x0;
const STANDBY: u8 = 0x2;
const UNAVAILABLE: u8 = 0x3;
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];
const STANDBY_SENSE: Option<(u8, u8, u8)> = Some((0x02, 0x04, 0x0b));

/// ZooKeeper, gateways a and b with their agents, and LUN v1 on a file
/// volume of `size`, permitted on a then b and served by a.
struct Setup {
    zk: ZooKeeper,
    url: String,
    path: std::path::PathBuf,
    nodes: std::collections::BTreeMap<String, Node>,
    _dir: tempfile::TempDir,
}

fn setup(size: &str) -> Setup {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let vols = dir.path().join("vols");
    std::fs::create_dir_all(&vols).unwrap();
    let path = vols.join("v1");
    let spec = format!("file:{}", path.display());
    ferry(&url, &["volume", "create", &spec, "--size", size]);
    let nodes = two_nodes(dir.path(), &url);
    add_shared_lun(&url, "v1", &spec);
    Setup {
        zk,
        url,
        path,
        nodes,
        _dir: dir,
    }
}

#[test]
fn both_gateways_export_the_lun_and_the_standby_takes_over_without_the_initiator_reconfiguring() {
    let Setup {
        zk: _zk,
        url,
        path,
        mut nodes,
        _dir,
    } = setup("64M");
    let (ga, gb) = (group_of(&url, "a"), group_of(&url, "b"));
    assert_ne!(ga, gb);

    // Both portals export the LUN: a active/optimized (and preferred),
    // b standby, the same on every path.
    let before: Groups = vec![(AO, ga, true), (STANDBY, gb, false)];
    wait_rtpg(&nodes["b"], &before, Duration::from_secs(20));
    let (mut on_a, mut on_b) = (connect(&nodes["a"]), connect(&nodes["b"]));
    assert_eq!(rtpg(&mut on_a), before);
    assert_eq!(rtpg(&mut on_b), before);

    // INQUIRY: implicit ALUA; VPD 83h: one device, two target ports.
    for s in [&mut on_a, &mut on_b] {
        let r = s.raw_cdb(&[0x12, 0, 0, 0, 96, 0], None, 96).unwrap();
        assert!(r.is_good());
        assert_eq!(r.data[5] & 0x30, 0x10, "TPGS implicit");
    }
    let (ida, idb) = (
        on_a.inquiry_device_id().unwrap(),
        on_b.inquiry_device_id().unwrap(),
    );
    let lu = |id: &ferry_initiator::DeviceId| {
        id.designators
            .iter()
            .filter(|d| d.association == 0 && d.designator_type != 3)
            .map(|d| d.value.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(lu(&ida), lu(&idb), "one logical unit through both ports");
    assert!(!lu(&ida).is_empty());
    let port = |id: &ferry_initiator::DeviceId, kind: u8| {
        id.designators
            .iter()
            .find(|d| d.association == 1 && d.designator_type == kind)
            .map(|d| u16::from_be_bytes([d.value[2], d.value[3]]))
    };
    assert_eq!(port(&ida, 5), Some(ga), "a's target port group");
    assert_eq!(port(&idb, 5), Some(gb), "b's target port group");
    assert_eq!(port(&ida, 4), Some(ga), "a's relative target port");
    assert_eq!(port(&idb, 4), Some(gb));

    // The standby path: inquiries and capacity answered, media access
    // refused with the standby sense; the volume is not open there.
    assert_eq!(
        sense_of(&mut on_b, &READ10, 4096),
        (ScsiStatus::CheckCondition, STANDBY_SENSE)
    );
    assert_eq!(
        sense_of(&mut on_b, &TUR, 0),
        (ScsiStatus::CheckCondition, STANDBY_SENSE)
    );
    let write = send(
        &mut on_b,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        Some(&[7u8; 512]),
        0,
    );
    assert_eq!(write.sense.map(|s| (s.key, s.asc, s.ascq)), STANDBY_SENSE);
    assert_eq!(on_b.read_capacity().unwrap(), on_a.read_capacity().unwrap());
    assert!(on_b
        .raw_cdb(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], None, 256)
        .unwrap()
        .is_good());
    assert!(
        !holds(nodes["b"].tgtd.pid(), &path),
        "standby b holds the volume"
    );
    assert!(holds(nodes["a"].tgtd.pid(), &path));

    // Data through the active path.
    let data: Vec<u8> = (0..64 * 512).map(|i| (i * 7 % 251) as u8).collect();
    on_a.write(100, &data).unwrap();
    assert_eq!(sense_of(&mut on_a, &TUR, 0), (ScsiStatus::Good, None));
    drop(on_a);

    // The owner dies. The initiator keeps its session to b and changes
    // nothing: b's group turns active within the session timeout.
    let killed = Instant::now();
    nodes.get_mut("a").unwrap().kill9();
    // The preferred flag stays only with an owner: Linux's prio alua
    // would rank a preferred standby path above the active one.
    let after: Groups = vec![(UNAVAILABLE, ga, false), (AO, gb, false)];
    let t = Instant::now();
    loop {
        let got = rtpg(&mut on_b);
        if got == after {
            break;
        }
        assert!(
            t.elapsed() < SESSION + Duration::from_secs(15),
            "b did not take over: {got:?}\n{}",
            nodes["b"].log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let takeover = killed.elapsed();
    eprintln!("failover: b active {takeover:?} after a was killed");
    assert_eq!(
        on_b.read(100, 64).unwrap(),
        data,
        "b serves what a acknowledged"
    );
    assert_eq!(sense_of(&mut on_b, &TUR, 0), (ScsiStatus::Good, None));
    assert!(holds(nodes["b"].tgtd.pid(), &path));

    // a rejoins: standby, the LUN stays on b (no failback), and both
    // paths agree.
    {
        let a = nodes.get_mut("a").unwrap();
        a.tgtd.restart();
        a.start_agent(&url);
    }
    let rejoined: Groups = vec![(STANDBY, ga, false), (AO, gb, false)];
    wait_rtpg(&nodes["a"], &rejoined, Duration::from_secs(20));
    assert_eq!(rtpg(&mut on_b), rejoined);
    let mut on_a = connect(&nodes["a"]);
    assert_eq!(
        sense_of(&mut on_a, &READ10, 4096),
        (ScsiStatus::CheckCondition, STANDBY_SENSE)
    );
    assert!(!holds(nodes["a"].tgtd.pid(), &path));
    assert_eq!(owner(&show(&url), "v1").as_deref(), Some("b"));

    // A planned move: the map asks for its order (a first) again: b
    // hands the LUN to a, closing the volume first.
    let moved = Instant::now();
    ferry(&url, &["map", "lun", "move", "v1", "--to", "a"]);
    let planned: Groups = vec![(AO, ga, true), (STANDBY, gb, false)];
    wait_rtpg(&nodes["a"], &planned, Duration::from_secs(20));
    eprintln!(
        "planned move: a active {:?} after the map edit",
        moved.elapsed()
    );
    // b learns of a's claim with its next pass: both paths agree soon.
    let lag = wait_rtpg(&nodes["b"], &planned, Duration::from_secs(5));
    eprintln!("planned move: b's RTPG agreed {lag:?} later");
    assert_eq!(rtpg(&mut on_b), planned);
    // a's session from before the move is told its port's state changed,
    // once.
    let told = on_a.raw_cdb(&TUR, None, 0).unwrap();
    assert_eq!(
        told.sense.map(|s| (s.key, s.asc, s.ascq)),
        Some((0x06, 0x2a, 0x06)),
        "ASYMMETRIC ACCESS STATE CHANGED"
    );
    assert_eq!(sense_of(&mut on_a, &TUR, 0), (ScsiStatus::Good, None));
    assert_eq!(on_a.read(100, 64).unwrap(), data);
    assert_eq!(
        sense_of(&mut on_b, &READ10, 4096),
        (ScsiStatus::CheckCondition, STANDBY_SENSE)
    );
    assert!(!holds(nodes["b"].tgtd.pid(), &path));
    for n in nodes.values() {
        assert!(
            !n.log_text().contains("panicked"),
            "agent {} panicked",
            n.name
        );
    }
}

/// A node cut off from ZooKeeper turns its ports unavailable (the volume
/// closed, media access refused with 04h/0Ch, only its own group
/// reported) before its session can expire and another node take over;
/// when the map comes back within the session, it serves again.
#[test]
fn a_gateway_that_loses_the_map_turns_its_ports_unavailable() {
    let Setup {
        mut zk,
        url,
        path,
        nodes,
        _dir,
    } = setup("16M");
    let (ga, gb) = (group_of(&url, "a"), group_of(&url, "b"));
    let serving: Groups = vec![(AO, ga, true), (STANDBY, gb, false)];
    wait_rtpg(&nodes["b"], &serving, Duration::from_secs(20));
    let mut on_a = connect(&nodes["a"]);
    assert_eq!(sense_of(&mut on_a, &TUR, 0), (ScsiStatus::Good, None));

    let cut = Instant::now();
    zk.kill9();
    let fenced: Groups = vec![(UNAVAILABLE, ga, false)];
    let t = wait_rtpg(&nodes["a"], &fenced, SESSION);
    eprintln!(
        "a unavailable {:?} after ZooKeeper went away (session timeout {SESSION:?})",
        cut.elapsed()
    );
    assert!(t <= SESSION);
    assert_eq!(
        sense_of(&mut on_a, &READ10, 4096),
        (ScsiStatus::CheckCondition, Some((0x02, 0x04, 0x0c)))
    );
    // The state changes first; the volume closes once the commands
    // running then have finished and the flush is done.
    let closing = Instant::now();
    while holds(nodes["a"].tgtd.pid(), &path) {
        assert!(
            closing.elapsed() < SESSION,
            "a still holds the volume {:?} after turning unavailable",
            closing.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // ZooKeeper back within the session: a's claim held, a serves again.
    zk.restart();
    wait_rtpg(&nodes["a"], &serving, Duration::from_secs(30));
    assert_eq!(sense_of(&mut on_a, &TUR, 0), (ScsiStatus::Good, None));
    assert_eq!(owner(&show(&url), "v1").as_deref(), Some("a"));
}
