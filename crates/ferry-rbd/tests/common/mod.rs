//! The real Ceph cluster the RBD tests run against.
//!
//! A test calls [`ceph`]: with `CEPH_CONF` set, that cluster is used (it
//! must have the pools `ferry-a` and `ferry-b`, as `scripts/ceph-cluster.sh`
//! makes them). Otherwise the test starts (or reuses) the shared cluster in
//! `/var/tmp/ferry-ceph` with that script, under a lock file so parallel
//! test processes start it once. When `CEPH_CONF` is unset and Ceph is not
//! installed, the test prints "skipping: ..." and returns, except under
//! `CI=true`, where that is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_rbd::{remove_image, Cluster, RbdSpec};

/// Where tests start their own cluster when `CEPH_CONF` is unset.
pub const SHARED_DIR: &str = "/var/tmp/ferry-ceph";
pub const POOL_A: &str = "ferry-a";
pub const POOL_B: &str = "ferry-b";

/// The conf of the cluster to test against, or `None` to skip.
pub fn ceph() -> Option<PathBuf> {
    if let Some(conf) = std::env::var_os("CEPH_CONF").filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(conf));
    }
    let installed = Command::new("ceph-mon")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let why = "CEPH_CONF is unset and Ceph is not installed \
                   (scripts/ceph-cluster.sh start DIR installs and starts one)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {why}");
        }
        println!("skipping: {why}");
        return None;
    }
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    Some(SHARED.get_or_init(start_shared).clone())
}

fn start_shared() -> PathBuf {
    // One starter at a time across test processes: flock(1) holds the lock
    // file while the script runs (the script also locks its directory, but
    // only once it runs; this also orders the package install).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph-cluster.sh");
    let out = Command::new("flock")
        .arg("--close") // the lock stays with flock, not with the daemons
        .arg(format!("{SHARED_DIR}.lock"))
        .arg("bash")
        .arg(&script)
        .arg("start")
        .arg(SHARED_DIR)
        .output()
        .expect("running flock and scripts/ceph-cluster.sh");
    assert!(
        out.status.success(),
        "scripts/ceph-cluster.sh start {SHARED_DIR} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Path::new(SHARED_DIR).join("ceph.conf")
}

/// A fresh image name for this test.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A spec for `pool/image` in the test cluster.
pub fn spec(conf: &Path, pool: &str, image: &str) -> RbdSpec {
    RbdSpec::parse(&format!("rbd:{pool}/{image}?conf={}", conf.display())).expect("test spec")
}

pub fn connect(conf: &Path) -> Cluster {
    let spec = spec(conf, POOL_A, "x");
    Cluster::connect(&spec.connect_options()).expect("connecting to the test cluster")
}

/// Removes the image when dropped (best effort), so failed tests do not
/// leave images behind. Declare it before anything holding the image open.
pub struct Cleanup {
    pub cluster: Cluster,
    pub pool: String,
    pub image: String,
}

impl Cleanup {
    pub fn new(cluster: &Cluster, pool: &str, image: &str) -> Self {
        Cleanup {
            cluster: cluster.clone(),
            pool: pool.into(),
            image: image.into(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(io) = self.cluster.ioctx(&self.pool) {
            let _ = remove_image(&io, &self.image);
        }
    }
}

/// A small deterministic generator for test offsets and lengths.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Reads the whole volume.
pub fn read_all(v: &dyn ferry_core::Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    for (i, chunk) in buf.chunks_mut(4 << 20).enumerate() {
        v.read_at(chunk, (i as u64) * (4 << 20))
            .expect("reading back");
    }
    buf
}

/// Asserts two images are equal, naming the first differing byte.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (region of 1 MiB #{}): got {} want {}",
            i >> 20,
            got[i],
            want[i]
        );
    }
}
