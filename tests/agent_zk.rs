//! Node agents against a real ZooKeeper and real tgtds: three gateway
//! nodes on one machine (each its own tgtd on its own loopback port),
//! convergence after map changes, a node killed with SIGKILL while a
//! migration runs on its LUN, ZooKeeper restarted under the agents, and
//! the dead node coming back without taking its LUNs back.
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::check;
use common::cluster::*;
use common::zk::ZooKeeper;

#[test]
fn agents_converge_fail_over_and_rejoin_without_flapping() {
    common::require("tgtd");
    common::require("tgtadm");
    let dir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let vols = dir.path().join("vols");
    std::fs::create_dir_all(&vols).unwrap();
    let vol = |n: &str| format!("file:{}", vols.join(n).display());

    // Three nodes; the map names them before their agents start.
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let names = ["a", "b", "c"];
    for n in names {
        nodes.insert(n.to_string(), Node::add(n, dir.path(), &url));
    }
    for n in nodes.values_mut() {
        n.start_agent(&url);
    }
    ferry(&url, &["map", "target", "add", TARGET]);
    ferry(&url, &["volume", "create", &vol("v1"), "--size", "64M"]);
    ferry(
        &url,
        &[
            "map",
            "lun",
            "add",
            "v1",
            "--target",
            TARGET,
            "--lun",
            "1",
            "--spec",
            &vol("v1"),
            "--nodes",
            "a,b,c",
        ],
    );
    ferry(&url, &["map", "initiator", "add", INITIATOR, "--lun", "v1"]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(&url, Duration::from_secs(15), "v1 served by a", |s| {
        serves(s, "a", "v1", v)
    });
    let a_url = nodes["a"].url(1);
    check(
        &iscsi(&["write-pattern", &a_url, "--seed", "7"]),
        "write-pattern via a",
    );

    // Convergence: from a committed change to the serving node's report
    // that its tgtd reflects it.
    let mut times = Vec::new();
    for i in 2..=6u32 {
        let name = format!("v{i}");
        ferry(&url, &["volume", "create", &vol(&name), "--size", "16M"]);
        ferry(
            &url,
            &[
                "map",
                "lun",
                "add",
                &name,
                "--target",
                TARGET,
                "--lun",
                &i.to_string(),
                "--spec",
                &vol(&name),
                "--nodes",
                "a,b",
            ],
        );
        let t = Instant::now();
        let v = show(&url)["version"].as_i64().unwrap();
        ferry(&url, &["map", "initiator", "map", INITIATOR, &name]);
        wait_map(&url, Duration::from_secs(10), "new LUN served", |s| {
            serves(s, "a", &name, v + 1)
        });
        times.push(t.elapsed());
        // What the status claims, tgtd does: the LUN answers on a's portal.
        check(&iscsi(&["info", &nodes["a"].url(i)]), "info on a new LUN");
    }
    // Initiator ACLs: a second host may use the LUN once the map allows
    // it, and only then (tgt's ACLs are per target).
    let other = "iqn.2026-11.org.ferry:other-host";
    let as_other = |url: &str| iscsi(&["--initiator", other, "info", url]);
    assert!(
        !as_other(&nodes["a"].url(1)).status.success(),
        "an unmapped initiator got in"
    );
    ferry(&url, &["map", "initiator", "add", other, "--lun", "v1"]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(
        &url,
        Duration::from_secs(10),
        "second initiator applied",
        |s| serves(s, "a", "v1", v),
    );
    check_on(
        &nodes["a"],
        &as_other(&nodes["a"].url(1)),
        "the mapped second initiator",
    );
    check(
        &iscsi(&["info", &nodes["a"].url(1)]),
        "the first initiator still",
    );
    ferry(&url, &["map", "initiator", "remove", other]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(
        &url,
        Duration::from_secs(10),
        "second initiator removed",
        |s| serves(s, "a", "v1", v),
    );
    assert!(
        !as_other(&nodes["a"].url(1)).status.success(),
        "a removed initiator got in"
    );

    times.sort();
    eprintln!(
        "convergence (commit -> node reports applied): median {:?}, max {:?} over {} changes",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );

    // A migration requested through the map runs on the serving node;
    // rate-limited so it is still copying when that node dies.
    ferry(
        &url,
        &[
            "map",
            "migrate",
            "start",
            "v1",
            "--to",
            &vol("v1-new"),
            "--rate",
            "4M",
        ],
    );
    wait_map(
        &url,
        Duration::from_secs(15),
        "migration copying on a",
        |s| {
            let p = &s["migration_status"]["v1"]["progress"];
            p["state"] == "copying" && p["bytes_done"].as_u64().unwrap_or(0) > 0
        },
    );

    // Node a dies. Its LUNs must be served by another node within the
    // session timeout + 5 s, with every byte written before intact.
    let killed = Instant::now();
    nodes.get_mut("a").unwrap().kill9();
    let took = wait_map(&url, SESSION + Duration::from_secs(5), "v1 re-homed", |s| {
        owner(s, "v1").is_some_and(|o| o != "a" && serves(s, &o, "v1", 0))
    });
    let new_owner = owner(&show(&url), "v1").unwrap();
    eprintln!(
        "node a killed: v1 served by {new_owner} after {:?} (session timeout {SESSION:?})",
        killed.elapsed()
    );
    assert!(took <= SESSION + Duration::from_secs(5));
    let b_url = nodes[&new_owner].url(1);
    check_on(
        &nodes[&new_owner],
        &iscsi(&["verify-pattern", &b_url, "--seed", "7"]),
        "data written through a, read through the new owner",
    );
    // The LUNs restricted to a and b went to b.
    for i in 2..=6u32 {
        let s = show(&url);
        assert_eq!(owner(&s, &format!("v{i}")).as_deref(), Some("b"), "{s:#}");
    }

    // The migration resumed on the new owner from its persistent index;
    // finish it through the map and commit.
    ferry(&url, &["map", "migrate", "rate", "v1", "unlimited"]);
    wait_map(
        &url,
        Duration::from_secs(60),
        "migration copied on the new owner",
        |s| s["migration_status"]["v1"]["state"] == "copied",
    );
    let s = show(&url);
    assert_eq!(s["migration_status"]["v1"]["node"], new_owner.as_str());
    ferry(&url, &["map", "migrate", "commit", "v1"]);
    ferry(
        &url,
        &[
            "map",
            "migrate",
            "status",
            "v1",
            "--wait",
            "--until",
            "committed",
            "--wait-timeout",
            "60s",
        ],
    );
    check(
        &iscsi(&["verify-pattern", &b_url, "--seed", "7"]),
        "pattern after commit",
    );

    // ZooKeeper restarts under the agents: the next change still
    // converges, and the LUNs are served again. (An agent that heard
    // nothing from the map for half its session timeout, as a slow
    // restart on a loaded machine can make it, has fenced its ports
    // meanwhile, see tests/alua.rs; it serves again once the map is back.
    // A CI rehearsal read v1 in that window.)
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    zk.restart();
    // Each client reconnects on its own back-off, so one agent may be
    // back seconds before another. A LUN added before its most preferred
    // node is back goes, by design, to the next one after a claim step
    // (claims are sticky), which is not what this part checks (a CI run
    // saw b take v9 that way): wait until b and c have each run a pass
    // against the restarted ZooKeeper.
    let back = wait_map(
        &url,
        Duration::from_secs(15),
        "b and c reporting after the ZooKeeper restart",
        |s| {
            ["b", "c"]
                .iter()
                .all(|n| s["status"][n]["at_ms"].as_i64().unwrap_or(0) > restarted_ms)
        },
    );
    eprintln!("ZooKeeper restarted: b and c reported again {back:?} after it answered");
    ferry(&url, &["volume", "create", &vol("v9"), "--size", "16M"]);
    ferry(
        &url,
        &[
            "map",
            "lun",
            "add",
            "v9",
            "--target",
            TARGET,
            "--lun",
            "9",
            "--spec",
            &vol("v9"),
            "--nodes",
            "c,b",
        ],
    );
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(
        &url,
        Duration::from_secs(15),
        "v9 served by c after a ZooKeeper restart",
        |s| serves(s, "c", "v9", v),
    );
    assert_eq!(
        owner(&show(&url), "v1").as_deref(),
        Some(new_owner.as_str())
    );
    wait_map(
        &url,
        Duration::from_secs(15),
        "v1 served again after a ZooKeeper restart",
        |s| serves(s, &new_owner, "v1", v),
    );
    check(
        &iscsi(&["verify-pattern", &b_url, "--seed", "7"]),
        "pattern after ZooKeeper restart",
    );

    // Node a comes back: it registers, and takes nothing back (claims are
    // sticky, so a flapping node cannot make LUNs flap).
    {
        let a = nodes.get_mut("a").unwrap();
        a.tgtd.restart();
        a.start_agent(&url);
    }
    wait_map(&url, Duration::from_secs(15), "a live again", |s| {
        s["live"]["a"].is_object()
            && s["status"]["a"]["applied_version"].as_i64().unwrap_or(-1) >= v
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = show(&url);
    assert_eq!(
        owner(&s, "v1").as_deref(),
        Some(new_owner.as_str()),
        "{s:#}"
    );
    assert!(
        s["status"]["a"]["serving"].as_array().unwrap().is_empty(),
        "{s:#}"
    );
    // a exports the LUN again, in standby: media access is refused
    // there (ALUA; see tests/alua.rs).
    let opts = ferry_initiator::ConnectOptions {
        any_path_state: true,
        ..Default::default()
    };
    let mut on_a = ferry_initiator::Session::connect_with(&nodes["a"].url(1), &opts).unwrap();
    let read = on_a
        .raw_cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], None, 512)
        .unwrap();
    assert_eq!(
        read.sense.map(|s| (s.key, s.asc, s.ascq)),
        Some((0x02, 0x04, 0x0b)),
        "a serves v1 in standby"
    );

    // The serving node's agent alone crashes and restarts at once (its
    // tgtd keeps serving): the new agent takes over its predecessor's
    // registration and claims, so nothing moves when the old session
    // expires.
    {
        let b = nodes.get_mut("b").unwrap();
        if let Some(mut a) = b.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        b.start_agent(&url);
    }
    std::thread::sleep(SESSION + Duration::from_secs(2));
    let s = show(&url);
    assert_eq!(
        owner(&s, "v1").as_deref(),
        Some(new_owner.as_str()),
        "{s:#}"
    );
    for i in 2..=6u32 {
        assert_eq!(owner(&s, &format!("v{i}")).as_deref(), Some("b"), "{s:#}");
    }
    assert!(nodes["b"].log_text().contains("took over the registration"));
    check(
        &iscsi(&["verify-pattern", &b_url, "--seed", "7"]),
        "pattern after b's agent restart",
    );

    // Cache modes reach the serving process: v2 started in the map's
    // default (writethrough) and follows a change.
    let mode_of = |n: &Node, spec: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["volume", "cache-mode", spec])
            .env("FERRY_RUN_DIR", &n.tgtd.run_dir)
            .output()
            .unwrap();
        check(&out, "volume cache-mode")
    };
    assert!(mode_of(&nodes["b"], &vol("v2")).contains("writethrough"));
    ferry(&url, &["map", "lun", "set", "v2", "--cache-mode", "none"]);
    let t = Instant::now();
    while !mode_of(&nodes["b"], &vol("v2")).contains("cache mode none") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "cache mode not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // An admin moves a LUN by changing where it may run: the owner takes
    // it off its tgtd, then releases it, and the allowed node claims it.
    ferry(&url, &["map", "lun", "set", "v2", "--nodes", "a"]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(&url, Duration::from_secs(10), "v2 moved to a", |s| {
        serves(s, "a", "v2", v)
    });
    check(&iscsi(&["info", &nodes["a"].url(2)]), "v2 answers on a");
    let out = iscsi(&["info", &nodes["b"].url(2)]);
    assert!(!out.status.success(), "v2 still answers on b");

    // Removing a LUN from the map takes it off its node.
    ferry(&url, &["map", "lun", "remove", "v9"]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(&url, Duration::from_secs(10), "v9 removed", |s| {
        s["status"]["c"]["applied_version"].as_i64().unwrap_or(-1) >= v && owner(s, "v9").is_none()
    });
    let out = iscsi(&["info", &nodes["c"].url(9)]);
    assert!(!out.status.success(), "v9 still answers on c");

    for n in nodes.values() {
        let log = n.log_text();
        assert!(
            !log.contains("panicked"),
            "agent {} panicked:\n{log}",
            n.name
        );
    }
}

/// Through `portal_url`: host A registers key 0xa and takes Write
/// Exclusive; host B registers 0xb and may no longer write.
fn a_reserves_b_registers(portal_url: &str) {
    use common::pr::{connect_to, prout, write_status, HOST_A, HOST_B};
    use ferry_initiator::ScsiStatus;
    let mut a = connect_to(portal_url, HOST_A, 1);
    let mut b = connect_to(portal_url, HOST_B, 2);
    assert_eq!(prout(&mut a, 0, 0, 0, 0xa), ScsiStatus::Good);
    assert_eq!(prout(&mut b, 0, 0, 0, 0xb), ScsiStatus::Good);
    assert_eq!(prout(&mut a, 1, 1, 0xa, 0), ScsiStatus::Good);
    assert_eq!(write_status(&mut b), ScsiStatus::ReservationConflict);
}

/// The persistent reservations the map keeps for `lun`.
fn kept_in_map(url: &str, lun: &str) -> ferry_host::ferry_pr::PrState {
    let doc = ferry_zk::ZkDocument::open(
        ferry_zk::ZkConfig::parse(url).unwrap(),
        &format!("reservations/{lun}"),
    )
    .unwrap();
    let bytes = doc.load().unwrap().expect("no reservations in the map");
    ferry_host::ferry_pr::PrState::decode(&bytes).unwrap()
}

/// An RBD LUN moves when its node dies, and the dead node's client is
/// fenced first: blocklisted in the OSD map and its exclusive lock
/// broken, so it could not write even if it were only partitioned. The
/// persistent reservation two hosts made through the dead node (kept in
/// the map) holds through the new one.
#[cfg(feature = "rbd")]
#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn rbd_lun_fails_over_after_fencing_the_dead_nodes_client() {
    use common::pr::{connect_to, prout, read_reservation, write_status, HOST_A, HOST_B};
    use ferry_initiator::ScsiStatus;
    common::require("tgtd");
    let conf = common::ceph_conf();
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let mut nodes = two_nodes(dir.path(), &url);
    let image = format!("agent-{}-{}", std::process::id(), common::free_port());
    let spec = format!("rbd:ferry-a/{image}?conf={conf}");
    ferry(&url, &["volume", "create", &spec, "--size", "64M"]);
    add_shared_lun(&url, "r1", &spec);
    check(
        &iscsi(&["write-pattern", &nodes["a"].url(1), "--seed", "7"]),
        "write-pattern via a",
    );
    // Host A holds Write Exclusive through node a; host B is registered.
    a_reserves_b_registers(&nodes["a"].url(1));

    // Node a's agent dies, its tgtd keeps serving: b takes the LUN over.
    nodes.get_mut("a").unwrap().kill_agent();
    wait_map(
        &url,
        SESSION + Duration::from_secs(5),
        "r1 re-homed to b",
        |s| serves(s, "b", "r1", 0),
    );
    let b = &nodes["b"];
    let log = b.log_text();
    assert!(
        log.contains("blocklisted"),
        "b did not fence a's client:\n{log}"
    );
    // Data written through a reads back through b, and b can write (it
    // holds the lock now; a's client could not).
    check(
        &iscsi(&["verify-pattern", &b.url(1), "--seed", "7"]),
        "pattern via b",
    );
    // The reservation made through a is enforced by b: the hosts log in
    // to b's portal as the same initiator ports.
    let mut host_a = connect_to(&b.url(1), HOST_A, 1);
    let mut host_b = connect_to(&b.url(1), HOST_B, 2);
    assert_eq!(read_reservation(&mut host_b), Some((0xa, 1)));
    assert_eq!(write_status(&mut host_b), ScsiStatus::ReservationConflict);
    assert_eq!(write_status(&mut host_a), ScsiStatus::Good);
    // The state is the map's, not the image's.
    let kept = kept_in_map(&url, "r1");
    assert_eq!(kept.registrations.len(), 2, "{kept:?}");
    // a's tgtd still answers, but b claimed the state when it opened the
    // LUN: a change through a is refused and changes nothing.
    {
        let mut stale = connect_to(&nodes["a"].url(1), HOST_B, 2);
        assert_ne!(prout(&mut stale, 4, 1, 0xb, 0xa), ScsiStatus::Good);
    }
    assert_eq!(kept_in_map(&url, "r1"), kept);
    // Nor does a's data path get through: host A, which holds the
    // reservation a still knows of, writes through a, and the fenced
    // client's write is refused, not acknowledged.
    {
        let mut stale = connect_to(&nodes["a"].url(1), HOST_A, 1);
        assert_ne!(
            write_status(&mut stale),
            ScsiStatus::Good,
            "a write through the fenced gateway was acknowledged"
        );
    }
    // A lets go (CLEAR), so the unregistered test initiator may write.
    assert_eq!(prout(&mut host_a, 3, 0, 0xa, 0), ScsiStatus::Good);
    drop((host_a, host_b));
    check(
        &iscsi(&["write-pattern", &b.url(1), "--seed", "8"]),
        "write-pattern via b",
    );
    check(
        &iscsi(&["verify-pattern", &b.url(1), "--seed", "8"]),
        "new pattern via b",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["map", "lun", "remove", "r1"])
        .env("FERRY_MAP", &url)
        .output()
        .unwrap();
    check(&out, "lun remove");
}

/// A LUN served by the map's agents keeps its persistent reservations in
/// the map (`<root>/reservations/<lun>`) and its volume only a pointer to
/// them: made through one node, they stay put through a migration commit
/// (the new volume gets the pointer) and are enforced, and changed, by
/// the node that takes over when the first dies.
#[test]
fn reservations_live_in_the_map_through_migration_and_failover() {
    use common::pr::{connect_to, prout, read_reservation, write_status, HOST_A, HOST_B};
    use ferry_host::ferry_pr::Pointer;
    use ferry_initiator::ScsiStatus;
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let vols = dir.path().join("vols");
    std::fs::create_dir_all(&vols).unwrap();
    let vol = |n: &str| format!("file:{}", vols.join(n).display());
    let mut nodes = two_nodes(dir.path(), &url);
    ferry(&url, &["volume", "create", &vol("p1"), "--size", "32M"]);
    add_shared_lun(&url, "p1", &vol("p1"));
    let kept = || kept_in_map(&url, "p1");
    let pointer_in = |volume: &str| {
        let slot = vols.join(format!("{volume}.ferry-pr"));
        Pointer::decode(&std::fs::read(&slot).unwrap())
            .unwrap_or_else(|| panic!("{} holds no pointer", slot.display()))
    };

    // Host A holds Write Exclusive through node a; host B is registered.
    a_reserves_b_registers(&nodes["a"].url(1));
    let state = kept();
    assert_eq!(state.registrations.len(), 2, "{state:?}");
    assert!(state.reservation.is_some(), "{state:?}");
    assert_eq!(pointer_in("p1").lun, "p1");

    // A migration committed through the map: the state stays in the map,
    // the new volume points to it.
    ferry(
        &url,
        &["map", "migrate", "start", "p1", "--to", &vol("p1-new")],
    );
    wait_map(&url, Duration::from_secs(60), "p1 copied", |s| {
        s["migration_status"]["p1"]["state"] == "copied"
    });
    ferry(&url, &["map", "migrate", "commit", "p1"]);
    ferry(
        &url,
        &[
            "map",
            "migrate",
            "status",
            "p1",
            "--wait",
            "--until",
            "committed",
            "--wait-timeout",
            "60s",
        ],
    );
    assert_eq!(pointer_in("p1-new").lun, "p1");
    assert_eq!(kept().generation, state.generation);

    // Node a dies; node b serves p1 and enforces what was made through a.
    nodes.get_mut("a").unwrap().kill9();
    wait_map(
        &url,
        SESSION + Duration::from_secs(5),
        "p1 re-homed to b",
        |s| serves(s, "b", "p1", 0),
    );
    let b_url = nodes["b"].url(1);
    let mut host_a = connect_to(&b_url, HOST_A, 1);
    let mut host_b = connect_to(&b_url, HOST_B, 2);
    assert_eq!(read_reservation(&mut host_b), Some((0xa, 1)));
    assert_eq!(write_status(&mut host_b), ScsiStatus::ReservationConflict);
    assert_eq!(write_status(&mut host_a), ScsiStatus::Good);
    // B preempts A through b: saved in the map by b.
    assert_eq!(prout(&mut host_b, 4, 1, 0xb, 0xa), ScsiStatus::Good);
    assert_eq!(write_status(&mut host_b), ScsiStatus::Good);
    let after = kept();
    assert_eq!(after.registrations.len(), 1, "{after:?}");
    assert!(after.generation > state.generation, "{after:?}");
}

/// A target with CHAP in the map: the agent creates the account and binds
/// it; initiators without the secret cannot log in, with it they can, and
/// the secret appears in no log or listing.
#[test]
fn chap_from_the_map_gates_logins_and_stays_secret() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let mut node = Node::add("a", dir.path(), &url);
    node.start_agent(&url);
    let secret = "chap-secret-4242";
    let secret_file = dir.path().join("chap");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    ferry(
        &url,
        &[
            "map",
            "target",
            "add",
            TARGET,
            "--chap-user",
            "host1",
            "--chap-secret-file",
            secret_file.to_str().unwrap(),
        ],
    );
    let vol = format!("file:{}", dir.path().join("c1.img").display());
    ferry(&url, &["volume", "create", &vol, "--size", "16M"]);
    ferry(
        &url,
        &[
            "map", "lun", "add", "c1", "--target", TARGET, "--lun", "1", "--spec", &vol,
        ],
    );
    ferry(&url, &["map", "initiator", "add", INITIATOR, "--lun", "c1"]);
    let v = show(&url)["version"].as_i64().unwrap();
    wait_map(&url, Duration::from_secs(15), "c1 served", |s| {
        serves(s, "a", "c1", v)
    });

    let plain = node.url(1);
    let out = iscsi(&["info", &plain]);
    assert!(!out.status.success(), "a login without CHAP got in");
    let with = plain.replacen("iscsi://", &format!("iscsi://host1%{secret}@"), 1);
    check_on(
        &node,
        &iscsi(&["info", &with]),
        "login with the CHAP secret",
    );
    let wrong = plain.replacen("iscsi://", "iscsi://host1%not-the-secret@", 1);
    assert!(
        !iscsi(&["info", &wrong]).status.success(),
        "a wrong secret got in"
    );

    let shown = ferry(&url, &["map", "show", "--json"]);
    assert!(!shown.contains(secret), "map show leaks the secret");
    assert!(
        !node.log_text().contains(secret),
        "the agent log leaks the secret"
    );
    assert!(
        !node.tgtd.log_text().contains(secret),
        "the tgtd log leaks the secret"
    );
}
