//! `ferry map` against a real ZooKeeper: edits, validation, concurrent
//! conflicting edits, ACLs, and an unreachable server.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::check;
use common::zk::ZooKeeper;
use serde_json::Value;

const T1: &str = "iqn.2026-11.org.ferry:t1";
const H1: &str = "iqn.2026-11.org.ferry:h1";
const H2: &str = "iqn.2026-11.org.ferry:h2";

fn map(url: &str, auth: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.arg("map")
        .args(args)
        .env("FERRY_MAP", url)
        .env_remove("FERRY_ZK_AUTH_FILE");
    if let Some(a) = auth {
        c.env("FERRY_ZK_AUTH_FILE", a);
    }
    c.output().unwrap()
}

fn ok(url: &str, args: &[&str]) -> String {
    check(&map(url, None, args), &format!("ferry map {args:?}"))
}

/// Runs a command that must fail; returns its error message.
fn fails(url: &str, auth: Option<&Path>, args: &[&str]) -> String {
    let out = map(url, auth, args);
    assert!(
        !out.status.success(),
        "ferry map {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Eight admins run `ferry map <args(i)>` at once (`args` gives the
/// arguments as one line; none holds a space); their outputs once all
/// ended.
fn race(url: &str, args: impl Fn(usize) -> String) -> Vec<Output> {
    let racers: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .arg("map")
                .args(args(i).split_whitespace())
                .env("FERRY_MAP", url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn show(url: &str) -> Value {
    serde_json::from_str(&ok(url, &["show", "--json"])).unwrap()
}

fn base_map(url: &str) {
    ok(url, &["node", "add", "a", "--portal", "127.0.0.1:3260"]);
    ok(url, &["target", "add", T1]);
    ok(
        url,
        &[
            "lun", "add", "l1", "--target", T1, "--lun", "1", "--spec", "/srv/v1", "--nodes", "a",
        ],
    );
    ok(url, &["initiator", "add", H1, "--lun", "l1"]);
}

#[test]
fn map_edits_are_validated_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(dir.path());
    let url = zk.url("edits");
    base_map(&url);
    let s = show(&url);
    assert_eq!(s["version"], 4);
    assert_eq!(s["map"]["luns"]["l1"]["spec"], "file:/srv/v1");
    assert_eq!(s["map"]["initiators"][H1]["luns"][0], "l1");

    let cases: &[(&[&str], &str)] = &[
        (
            &["target", "add", "iqn.2026-11.Org.Ferry:x"],
            "invalid iSCSI name",
        ),
        (&["target", "add", "target1"], "invalid iSCSI name"),
        (&["target", "add", T1], "already exists"),
        (
            &[
                "lun", "add", "l1", "--target", T1, "--lun", "2", "--spec", "/srv/x",
            ],
            "LUN l1 already exists",
        ),
        (
            &[
                "lun", "add", "l2", "--target", T1, "--lun", "1", "--spec", "/srv/x",
            ],
            "is taken by l1",
        ),
        (
            &[
                "lun",
                "add",
                "l2",
                "--target",
                "iqn.2026-11.org.ferry:none",
                "--lun",
                "2",
                "--spec",
                "/srv/x",
            ],
            "unknown target",
        ),
        (
            &[
                "lun", "add", "l2", "--target", T1, "--lun", "2", "--spec", "/srv/x", "--nodes",
                "zz",
            ],
            "unknown node zz",
        ),
        (
            &[
                "lun", "add", "l2", "--target", T1, "--lun", "0", "--spec", "/srv/x",
            ],
            "out of range",
        ),
        (
            &[
                "lun", "add", "l/2", "--target", T1, "--lun", "2", "--spec", "/srv/x",
            ],
            "invalid LUN name",
        ),
        (
            &[
                "lun",
                "add",
                "l2",
                "--target",
                T1,
                "--lun",
                "2",
                "--spec",
                "/srv/x",
                "--cache-mode",
                "fast",
            ],
            "unknown cache mode",
        ),
        (&["lun", "remove", "nope"], "unknown LUN nope"),
        (&["initiator", "map", H1, "nope"], "unknown LUN nope"),
        (&["initiator", "map", H2, "l1"], "unknown initiator"),
        (
            &["node", "add", "b", "--portal", "nowhere"],
            "invalid portal",
        ),
        (&["target", "remove", T1], "still exports LUN l1"),
    ];
    for (args, want) in cases {
        let e = fails(&url, None, args);
        assert!(e.contains(want), "ferry map {args:?}: {e:?} lacks {want:?}");
    }
    // No failed edit changed anything.
    assert_eq!(show(&url)["version"], 4);

    // A LUN shared by two initiators refuses caching modes that would
    // show one host stale data, and names the safe ones.
    ok(&url, &["lun", "set", "l1", "--cache-mode", "writeback"]);
    ok(&url, &["initiator", "add", H2]);
    let e = fails(&url, None, &["initiator", "map", H2, "l1"]);
    assert!(e.contains("writethrough, none or directsync"), "{e}");
    ok(&url, &["lun", "set", "l1", "--cache-mode", "none"]);
    ok(&url, &["initiator", "map", H2, "l1"]);

    // Removing a LUN removes it from every initiator in the same commit.
    ok(&url, &["lun", "remove", "l1"]);
    let s = show(&url);
    assert!(s["map"]["initiators"][H1]["luns"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(s["map"]["initiators"][H2]["luns"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn concurrent_conflicting_edits_have_one_winner_and_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(dir.path());
    let url = zk.url("race");
    base_map(&url);

    // Compare-and-set on a document's version: the second writer holding
    // the same version loses with a conflict naming what moved.
    let v = show(&url)["version"].as_i64().unwrap();
    ok(
        &url,
        &[
            "lun",
            "set",
            "l1",
            "--spec",
            "/srv/v1b",
            "--expect-version",
            "0",
        ],
    );
    let e = fails(
        &url,
        None,
        &[
            "lun",
            "set",
            "l1",
            "--spec",
            "/srv/v1c",
            "--expect-version",
            "0",
        ],
    );
    assert!(
        e.contains("conflict") && e.contains("expected version 0, now 1"),
        "{e}"
    );
    assert_eq!(show(&url)["map"]["luns"]["l1"]["spec"], "file:/srv/v1b");
    assert_eq!(show(&url)["version"].as_i64().unwrap(), v + 1);

    // Eight admins add the same LUN at once with different volumes:
    // exactly one wins, the rest are told it exists.
    let outs = race(&url, |i| {
        format!("lun add same --target {T1} --lun 9 --spec /srv/same-{i}")
    });
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("LUN same already exists"), "{e}");
    }

    // Eight admins add different LUNs at once: none is lost, and every
    // commit bumped the version exactly once.
    let before = show(&url)["version"].as_i64().unwrap();
    let outs = race(&url, |i| {
        format!(
            "lun add m{i} --target {T1} --lun {} --spec /srv/m{i}",
            20 + i
        )
    });
    for o in &outs {
        check(o, "concurrent lun add");
    }
    let s = show(&url);
    assert_eq!(s["version"].as_i64().unwrap(), before + 8);
    for i in 0..8 {
        assert!(s["map"]["luns"][format!("m{i}")].is_object());
    }
}

#[test]
fn digest_acl_keeps_clients_without_credentials_out() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(dir.path());
    let url = zk.url("secure");
    let auth = dir.path().join("zk-auth");
    std::fs::write(&auth, "ferry-admin:s3cret-zk-pass\n").unwrap();
    let wrong = dir.path().join("zk-wrong");
    std::fs::write(&wrong, "ferry-admin:not-it\n").unwrap();
    let secret = dir.path().join("chap");
    std::fs::write(&secret, "chap-secret-0123\n").unwrap();
    check(
        &map(
            &url,
            Some(&auth),
            &[
                "target",
                "add",
                T1,
                "--chap-user",
                "u1",
                "--chap-secret-file",
                secret.to_str().unwrap(),
            ],
        ),
        "target add with CHAP",
    );
    let shown = check(&map(&url, Some(&auth), &["show", "--json"]), "show");
    assert!(
        shown.contains("u1") && !shown.contains("chap-secret-0123"),
        "{shown}"
    );

    for who in [None, Some(wrong.as_path())] {
        let e = fails(&url, who, &["show"]);
        assert!(e.contains("not authorized"), "{e}");
        let e = fails(&url, who, &["node", "add", "x", "--portal", "127.0.0.1:1"]);
        assert!(e.contains("not authorized"), "{e}");
    }
    let bad = dir.path().join("zk-bad");
    std::fs::write(&bad, "no-colon\n").unwrap();
    let e = fails(&url, Some(&bad), &["show"]);
    assert!(e.contains("expected one line user:password"), "{e}");
}

#[test]
fn unreachable_zookeeper_fails_with_a_timeout_not_a_hang() {
    // A port nothing listens on.
    let port = common::free_port();
    let url = format!("zk://127.0.0.1:{port}/ferry");
    let t = Instant::now();
    let e = fails(&url, None, &["--timeout", "2s", "show"]);
    assert!(e.contains("unreachable"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    for bad in ["zk://", "zk://host", "http://x", "zk://h:1/a b"] {
        let e = fails(bad, None, &["show"]);
        assert!(e.contains("invalid"), "{bad}: {e}");
    }
}

#[test]
fn embedded_file_map_takes_the_same_edits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().join("map").display());
    base_map(&url);
    let e = fails(
        &url,
        None,
        &[
            "lun", "add", "l1", "--target", T1, "--lun", "2", "--spec", "/srv/x",
        ],
    );
    assert!(e.contains("already exists"), "{e}");
    ok(
        &url,
        &["lun", "set", "l1", "--nodes", "a", "--expect-version", "0"],
    );
    let s = show(&url);
    assert_eq!(s["version"], 4, "a no-op change commits nothing");
    ok(
        &url,
        &[
            "lun",
            "set",
            "l1",
            "--spec",
            "/srv/v2",
            "--expect-version",
            "0",
        ],
    );
    let e = fails(
        &url,
        None,
        &[
            "lun",
            "set",
            "l1",
            "--spec",
            "/srv/v3",
            "--expect-version",
            "0",
        ],
    );
    assert!(e.contains("conflict"), "{e}");

    // Moves: each asks for the order again (order_seq), --to puts a
    // permitted node first; a node the LUN may not use is refused and
    // changes nothing.
    let order = |url: &str| {
        let l = show(url)["map"]["luns"]["l1"].clone();
        (l["nodes"].clone(), l["order_seq"].as_u64().unwrap_or(0))
    };
    let (nodes, seq) = order(&url);
    ok(&url, &["lun", "move", "l1"]);
    assert_eq!(order(&url), (nodes.clone(), seq + 1));
    let e = fails(&url, None, &["lun", "move", "l1", "--to", "nowhere"]);
    assert!(e.contains("nowhere"), "{e}");
    let e = fails(&url, None, &["lun", "move", "gone", "--to", "a"]);
    assert!(e.contains("gone"), "{e}");
    assert_eq!(order(&url), (nodes, seq + 1));
}

/// The document a gateway keeps a LUN's persistent reservations in: every
/// write is a compare-and-set on the version the writer last saw, so a
/// gateway that lost the LUN cannot overwrite what the new one saved.
/// A volume pointed at the map keeps only the pointer; opening it while
/// ZooKeeper is down is a clear error naming the document, not a hang.
#[test]
fn reservation_documents_fence_stale_writers_and_follow_the_pointer() {
    use ferry_host::ferry_pr::PrState;
    use ferry_host::ferry_pr::{Pointer, ReservationHomes};
    ferry_host::set_default_homes(std::sync::Arc::new(ferry_zk::ZkReservations));
    let homes: std::sync::Arc<dyn ReservationHomes> = std::sync::Arc::new(ferry_zk::ZkReservations);
    let keep_in_map =
        |spec: &str, p: &Pointer| ferry_agent::reservations::keep_in_map(spec, p, &homes);
    let pointer = Pointer::new;
    use ferry_zk::{ZkConfig, ZkDocument};

    let dir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let open = || ZkDocument::open(ZkConfig::parse(&url).unwrap(), "reservations/db").unwrap();
    let (old, new) = (open(), open());
    assert_eq!(old.load().unwrap(), None);
    old.store(b"one").unwrap();
    assert_eq!(new.load().unwrap().as_deref(), Some(&b"one"[..]));
    new.store(b"two").unwrap();
    // `old` has not seen "two": its write is refused and changes nothing.
    let e = old.store(b"stale").unwrap_err().to_string();
    assert!(
        e.contains("conflict") && e.contains("reservations/db"),
        "{e}"
    );
    assert_eq!(open().load().unwrap().as_deref(), Some(&b"two"[..]));
    // A gateway taking the LUN over claims the document when it opens it:
    // the one before, which has not written since, is fenced at once.
    let (before, taking_over) = (open(), open());
    before.load().unwrap();
    assert_eq!(taking_over.claim().unwrap().as_deref(), Some(&b"two"[..]));
    assert!(before.store(b"late").is_err());
    taking_over.store(b"three").unwrap();
    assert_eq!(open().load().unwrap().as_deref(), Some(&b"three"[..]));
    // Two first writers of an absent document: one wins.
    let (x, y) = (
        ZkDocument::open(ZkConfig::parse(&url).unwrap(), "reservations/web").unwrap(),
        ZkDocument::open(ZkConfig::parse(&url).unwrap(), "reservations/web").unwrap(),
    );
    x.load().unwrap();
    y.load().unwrap();
    x.store(b"x").unwrap();
    assert!(y.store(b"y").is_err());
    // Bad paths are refused before connecting.
    assert!(ZkDocument::open(ZkConfig::parse(&url).unwrap(), "../x").is_err());

    // A volume whose reservations are pointed at the map: what it held
    // moves there, and the volume keeps only the pointer.
    let volume = dir.path().join("v.img");
    std::fs::File::create(&volume)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let spec = format!("file:{}", volume.display());
    let sidecar = dir.path().join("v.img.ferry-pr");
    let held = PrState {
        generation: 7,
        ..Default::default()
    };
    std::fs::write(&sidecar, held.encode()).unwrap();
    let p = pointer(&url, "vol1", None);
    assert!(keep_in_map(&spec, &p).unwrap());
    assert!(
        !keep_in_map(&spec, &p).unwrap(),
        "pointing twice changes nothing"
    );
    assert_eq!(
        Pointer::decode(&std::fs::read(&sidecar).unwrap()),
        Some(p.clone())
    );
    let doc = ZkDocument::open(ZkConfig::parse(&url).unwrap(), "reservations/vol1").unwrap();
    let kept = PrState::decode(&doc.load().unwrap().unwrap()).unwrap();
    assert_eq!(kept.generation, 7);
    let lun = ferry_host::Lun::open_with(&spec, false).unwrap();
    assert_eq!(lun.reservations().state().generation, 7);
    assert!(lun
        .reservations_home()
        .ends_with("/ferry/reservations/vol1"));
    drop(lun);

    // `ferry pr show` says where they are.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["pr", "show", &spec])
        .env("FERRY_RUN_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    let shown = check(&out, "ferry pr show");
    assert!(
        shown.contains("reservations/vol1") && shown.contains("generation 7"),
        "{shown}"
    );

    // An admin moves them back to the volume and into the map again.
    let pr = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("pr")
            .args(args)
            .env("FERRY_RUN_DIR", dir.path().join("run"))
            .output()
            .unwrap()
    };
    let moved = check(&pr(&["move", &spec, "--to-volume"]), "pr move --to-volume");
    assert!(
        moved.contains("now kept in") && moved.contains("v.img"),
        "{moved}"
    );
    let back = PrState::decode(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(back.generation, 7);
    let moved = check(
        &pr(&["move", &spec, "--to-map", &url, "--lun", "vol1"]),
        "pr move --to-map",
    );
    assert!(moved.contains("reservations/vol1"), "{moved}");
    assert_eq!(
        Pointer::decode(&std::fs::read(&sidecar).unwrap()),
        Some(p.clone())
    );
    // An offline clear writes the cleared state where it is kept; the
    // pointer stays.
    let cleared = check(&pr(&["clear", &spec]), "pr clear");
    assert!(cleared.contains("reservations/vol1"), "{cleared}");
    let kept = PrState::decode(&doc.load().unwrap().unwrap()).unwrap();
    assert!(
        kept.generation > 7 && kept.registrations.is_empty(),
        "{kept:?}"
    );
    assert_eq!(
        Pointer::decode(&std::fs::read(&sidecar).unwrap()),
        Some(p.clone())
    );
    let out = pr(&["move", &spec]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to-volume"));

    // A pointer to a document that is gone (deleted by hand) is an error,
    // not "no reservations"; `ferry pr clear` starts it again, empty.
    let ghost_volume = dir.path().join("ghost.img");
    std::fs::File::create(&ghost_volume)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let ghost = format!("file:{}", ghost_volume.display());
    std::fs::write(
        dir.path().join("ghost.img.ferry-pr"),
        pointer(&url, "ghost", None).encode(),
    )
    .unwrap();
    let e = match ferry_host::Lun::open_with(&ghost, false) {
        Ok(_) => panic!("opened a LUN whose reservations document is gone"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("missing") && e.contains("reservations/ghost"),
        "{e}"
    );
    check(&pr(&["clear", &ghost]), "pr clear of a missing document");
    let lun = ferry_host::Lun::open_with(&ghost, false).unwrap();
    assert!(lun.reservations().state().registrations.is_empty());
    drop(lun);

    // ZooKeeper down: opening the LUN fails promptly and names the
    // document; the pointer stays.
    zk.kill9();
    let t = Instant::now();
    let e = match ferry_host::Lun::open_with(&spec, false) {
        Ok(_) => panic!("opened a LUN whose reservations are unreachable"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("reservations/vol1"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(Pointer::decode(&std::fs::read(&sidecar).unwrap()), Some(p));
}

/// A gateway's reservation document through a ZooKeeper outage: writes
/// fail promptly while it is down (a PR OUT then fails, nothing hangs),
/// and work again once it is back, on the same handle, whether its
/// session survived or a new one had to be made.
#[test]
fn reservation_document_writes_resume_after_a_zookeeper_outage() {
    use ferry_zk::{ZkConfig, ZkDocument};
    let dir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(&dir.path().join("zk"));
    let url = zk.url("ferry");
    let mut cfg = ZkConfig::parse(&url).unwrap();
    cfg.session_timeout = Duration::from_secs(4);
    let doc = ZkDocument::open(cfg, "reservations/outage").unwrap();
    assert_eq!(doc.load().unwrap(), None);
    doc.store(b"before").unwrap();

    zk.kill9();
    let t = Instant::now();
    let e = doc.store(b"during").unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    // Down longer than the session timeout: the session expires.
    std::thread::sleep(Duration::from_secs(5));
    zk.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match doc.store(b"after") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("still failing after ZooKeeper came back: {e}"),
        }
    }
    let check = ZkDocument::open(ZkConfig::parse(&url).unwrap(), "reservations/outage").unwrap();
    assert_eq!(check.load().unwrap().as_deref(), Some(&b"after"[..]));
}
