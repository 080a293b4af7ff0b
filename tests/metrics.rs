//! Metrics end to end: a gateway node (real tgtd with bs_ferry, its
//! agent on the embedded file map) serves a LUN that a real initiator
//! (libiscsi) reads and writes while the LUN migrates; a real Prometheus
//! server scrapes the agent's endpoint, and the series are read back
//! through Prometheus' HTTP query API. The page itself passes
//! `promtool check metrics`, and `ferry serve --metrics` serves one too.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{check, free_port, require};
use serde_json::Value;

/// GETs `url` with curl; the body.
fn get(url: &str, query: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-G", url]);
    if let Some(q) = query {
        cmd.args(["--data-urlencode", &format!("query={q}")]);
    }
    check(&cmd.output().unwrap(), &format!("curl {url} {query:?}"))
}

/// Checks a page with promtool: no error and no lint finding.
fn promtool_ok(page: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n--- page ---\n{page}"
    );
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, scrape: &str) -> (Prometheus, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: ferry\n    static_configs:\n      - targets: ['{scrape}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while Command::new("curl")
        .args(["-sf", &format!("{api}/-/ready")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus did not get ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (Prometheus(child), api)
}

/// The values of an instant query's vector result.
fn query(api: &str, q: &str) -> Vec<(Value, f64)> {
    let body = get(&format!("{api}/api/v1/query"), Some(q));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
    assert_eq!(v["status"], "success", "{q}: {body}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let x: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (r["metric"].clone(), x)
        })
        .collect()
}

/// Polls `q` until it has a sample for which `ok` holds (Prometheus needs
/// a few scrapes for a rate); returns it.
fn wait_query(api: &str, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    loop {
        let r = query(api, q);
        if let Some((_, x)) = r.iter().find(|(_, x)| ok(*x)) {
            return *x;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{q}: no plausible sample within 40 s: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs tgtd, libiscsi and prometheus (scripts/test.sh)"]
fn prometheus_scrapes_a_node_during_a_migration() {
    for tool in ["tgtd", "prometheus", "promtool", "curl"] {
        require(tool);
    }
    common::install_plugin();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().join("map").display());
    let mut a = Node::add("a", dir.path(), &url);
    a.metrics = format!("127.0.0.1:{}", free_port());
    a.start_agent(&url);
    // 128 MiB with data in its first half: the copy takes a while at the
    // rate set below.
    let spec = common::file_volume(dir.path(), 128 << 20);
    ferry(&url, &["map", "target", "add", TARGET]);
    add_lun_served_by_a(&url, "db", &spec, &[]);
    let fill = iscsi(&[
        "write-pattern",
        &a.url(1),
        "--blocks",
        "131072",
        "--seed",
        "3",
    ]);
    check(&fill, "filling the LUN");

    let (_prom, api) = start_prometheus(dir.path(), &a.metrics);
    let load = Command::new(common::bin("ferry-iscsi"))
        .args([
            "load",
            &a.url(1),
            "--qd",
            "4",
            "--read-pct",
            "70",
            "--random",
        ])
        .args(["--seconds", "40", "--seed", "5", "--blocks", "262144"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target = format!("file:{}", dir.path().join("dst.img").display());
    ferry(
        &url,
        &[
            "map", "migrate", "start", "db", "--to", &target, "--rate", "4M",
        ],
    );

    // The page as Prometheus gets it is well formed.
    let page = get(&format!("http://{}/metrics", a.metrics), None);
    promtool_ok(&page);
    assert!(
        page.contains("ferry_node_map_connected{node=\"a\"} 1"),
        "{page}"
    );
    eprintln!(
        "{}",
        page.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Prometheus scraped it and the series say what happens.
    let up = wait_query(&api, "up{job=\"ferry\"}", |x| x == 1.0);
    assert_eq!(up, 1.0);
    let sel = format!("volume=\"{spec}\"");
    let copy_rate = wait_query(
        &api,
        &format!("max_over_time(ferry_migration_copy_rate_bytes{{{sel}}}[30s])"),
        |x| x > 0.0,
    );
    // The copier is held to 4 MiB/s (its measured rate may overshoot
    // briefly, never by orders of magnitude).
    assert!(copy_rate <= 16.0 * 1048576.0, "copy rate {copy_rate}");
    let copied = wait_query(
        &api,
        &format!("ferry_migration_copied_bytes{{{sel}}}"),
        |x| x > 0.0,
    );
    assert!(copied <= (128 << 20) as f64);
    let reads = wait_query(
        &api,
        &format!("rate(ferry_lun_commands_total{{{sel},kind=\"read\"}}[5s])"),
        |x| x > 0.0,
    );
    let writes = wait_query(
        &api,
        &format!("rate(ferry_lun_commands_total{{{sel},kind=\"write\"}}[5s])"),
        |x| x > 0.0,
    );
    // 70 % reads: the read rate is the larger one (loosely: a 5 s window).
    assert!(reads > writes, "reads {reads}/s, writes {writes}/s");
    let p50 = wait_query(
        &api,
        &format!(
            "histogram_quantile(0.5, sum by (le) (rate(ferry_lun_command_duration_seconds_bucket{{{sel},kind=\"read\"}}[10s])))"
        ),
        |x| x.is_finite() && x > 0.0,
    );
    assert!(p50 < 1.0, "median read latency {p50} s");
    // Reads went to both legs while copying; writes to uncopied regions
    // to both legs.
    for leg in ["source", "target"] {
        wait_query(
            &api,
            &format!("ferry_migration_reads_total{{{sel},leg=\"{leg}\"}}"),
            |x| x > 0.0,
        );
    }
    wait_query(
        &api,
        &format!("ferry_migration_index_writes_total{{{sel}}}"),
        |x| x > 0.0,
    );
    wait_query(
        &api,
        &format!("ferry_migration_state{{{sel},state=\"copying\"}}"),
        |x| x == 1.0,
    );
    wait_query(&api, "ferry_node_luns_serving{node=\"a\"}", |x| x == 1.0);
    wait_query(
        &api,
        &format!("ferry_port_access_state{{{sel},state=\"active_optimized\"}}"),
        |x| x == 1.0,
    );
    let out = load.wait_with_output().unwrap();
    check(&out, "the load");
    eprintln!(
        "prometheus saw: copy rate up to {copy_rate:.0} B/s, reads {reads:.0}/s, writes {writes:.0}/s, median read {:.3} ms",
        p50 * 1e3
    );
}

#[test]
fn serve_metrics_page_passes_promtool_and_a_taken_address_is_refused() {
    if Command::new("promtool").arg("--version").output().is_err() {
        panic!("promtool missing: scripts/setup.sh installs the prometheus package");
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = common::file_volume(dir.path(), 64 << 20);
    let addr = format!("127.0.0.1:{}", free_port());
    let run = dir.path().join("run");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", &spec, "--metrics", &addr])
        .env("FERRY_RUN_DIR", &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut serve);
    let started = Instant::now();
    let page = loop {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{addr}/metrics")])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ferry serve did not serve metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    promtool_ok(&page);
    assert!(
        page.contains(&format!(
            "ferry_lun_capacity_bytes{{volume=\"{spec}\"}} 67108864"
        )),
        "{page}"
    );
    // A migration's series appear once one runs.
    let target = format!("file:{}", dir.path().join("t.img").display());
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["migrate", "start", &spec, &target, "--paused"])
        .env("FERRY_RUN_DIR", &run)
        .output()
        .unwrap();
    check(&out, "migrate start");
    let page = get(&format!("http://{addr}/metrics"), None);
    promtool_ok(&page);
    assert!(page.contains("ferry_migration_paused{"), "{page}");
    assert!(page.contains("state=\"copying\"} 1"), "{page}");

    // A second process asked for the same address says so and exits.
    let other = dir.path().join("w.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            &format!("file:{}", other.display()),
            "--metrics",
            &addr,
        ])
        .env("FERRY_RUN_DIR", &run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second server on {addr} started");
    assert!(
        err.contains(&addr) && err.contains("already in use"),
        "{err}"
    );
}
