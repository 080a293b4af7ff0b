//! The real Ceph cluster the RBD tests run against.
//!
//! A test calls [`ceph`], which returns the cluster `CEPH_CONF` names (it
//! must have the pools `ferry-a` and `ferry-b`, as
//! `scripts/ceph-cluster.sh` makes them). Every such test is `#[ignore]`d,
//! so a plain test run reports it skipped; `scripts/test.sh` starts the
//! loopback clusters, exports `CEPH_CONF` and `CEPH_CONF_B`, runs them and
//! stops the clusters it started. Run without `CEPH_CONF`, they fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_rbd::{remove_image, Cluster, RbdSpec};

pub const POOL_A: &str = "ferry-a";
pub const POOL_B: &str = "ferry-b";

/// The conf of the cluster to test against (`CEPH_CONF`).
pub fn ceph() -> PathBuf {
    conf_from("CEPH_CONF", "a Ceph cluster")
}

/// The conf of a second cluster (`CEPH_CONF_B`), for cross-cluster tests.
pub fn ceph_b() -> PathBuf {
    conf_from("CEPH_CONF_B", "a second Ceph cluster")
}

fn conf_from(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var).filter(|c| !c.is_empty()) {
        Some(c) if Path::new(&c).exists() => PathBuf::from(c),
        Some(c) => panic!("{var}={} does not exist", Path::new(&c).display()),
        None => panic!(
            "this test needs {what} ({var}): run it through scripts/test.sh, which starts \
             the loopback clusters, or export {var} (scripts/ceph-cluster.sh start DIR)"
        ),
    }
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
