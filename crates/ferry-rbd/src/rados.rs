//! Safe handles on librados: a cluster connection and a pool's I/O context,
//! plus the few object calls the metadata store needs.
//!
//! Why a wrapper of our own: the raw handles must be shut down exactly once
//! and after everything opened from them, and every call must name what it
//! did when it fails. A [`Cluster`] is shared (`Arc`) by the [`IoCtx`]s made
//! from it, and an `IoCtx` by the images opened in it, so drop order is
//! always right whatever the caller does.
//!
//! Connecting is bounded: `client_mount_timeout` and `rados_mon_op_timeout`
//! make an unreachable cluster an error after [`ConnectOptions::timeout`]
//! instead of a hang, and `rados_osd_op_timeout` bounds each OSD operation.
//! The librbd cache is switched off on every connection: ferry's `Volume`
//! contract says a returned write is visible to any later reader, even in
//! another process, and the engine relies on RADOS writes being durable
//! when acknowledged (its `MetaStore::epoch` is `None` for RBD). A
//! writeback or write-around cache would acknowledge writes that a process
//! crash could still lose.
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use ferry_rbd_sys as sys;

use crate::error::{RbdError, Result};

/// How to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The ceph.conf to read; `None` searches librados' defaults
    /// (`$CEPH_CONF`, `/etc/ceph/ceph.conf`, `~/.ceph/config`, `./ceph.conf`).
    pub conf: Option<PathBuf>,
    /// Client id without the `client.` prefix; `None` is `admin`.
    pub id: Option<String>,
    /// Keyring file; `None` uses the conf's.
    pub keyring: Option<PathBuf>,
    /// Longest wait for the monitors, when connecting and per command.
    pub timeout: Duration,
    /// Longest wait for one OSD operation (`rados_osd_op_timeout`); `None`
    /// waits for ever, as qemu does. A timed-out write may still land later,
    /// like any write whose transport timed out.
    pub op_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            conf: None,
            id: None,
            keyring: None,
            timeout: Duration::from_secs(10),
            // Longer than an OSD failover (heartbeat grace 20 s + peering).
            op_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl ConnectOptions {
    /// The conf path for messages.
    pub fn conf_name(&self) -> String {
        self.conf
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the default ceph.conf".into())
    }
}

pub(crate) fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RbdError::BadSpec {
        spec: s.to_string(),
        why: format!("the {what} contains a NUL byte"),
    })
}

fn path_cstring(what: &str, p: &Path) -> Result<CString> {
    cstring(what, &p.display().to_string())
}

struct ClusterInner {
    handle: sys::rados_t,
    conf: String,
    fsid: String,
}

// SAFETY: a connected rados_t is documented thread-safe; librados serialises
// internally and we never reconfigure it after connecting.
unsafe impl Send for ClusterInner {}
// SAFETY: as above; every method takes &self and librados locks internally.
unsafe impl Sync for ClusterInner {}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create and is shut down once,
        // here, after every IoCtx (each holds an Arc to us) is gone.
        // rados_shutdown also frees a handle that never connected.
        unsafe { sys::rados_shutdown(self.handle) };
    }
}

/// A connection to a Ceph cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("conf", &self.inner.conf)
            .field("fsid", &self.inner.fsid)
            .finish()
    }
}

fn set_conf(handle: sys::rados_t, conf: &str, key: &str, value: &str) -> Result<()> {
    let k = cstring("option name", key)?;
    let v = cstring("option value", value)?;
    // SAFETY: handle is a live rados_t from rados_create; both strings are
    // NUL-terminated and outlive the call, which copies them.
    let r = unsafe { sys::rados_conf_set(handle, k.as_ptr(), v.as_ptr()) };
    if r < 0 {
        return Err(RbdError::call(
            "rados_conf_set",
            format!("{key}={value} for {conf}"),
            r.into(),
        ));
    }
    Ok(())
}

impl Cluster {
    /// Connects, failing after `opts.timeout` if no monitor answers.
    pub fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        let conf = opts.conf_name();
        let id = opts
            .id
            .as_deref()
            .map(|i| cstring("client id", i))
            .transpose()?;
        let mut handle: sys::rados_t = ptr::null_mut();
        // SAFETY: handle is a valid out-pointer; id is NUL-terminated or null
        // (null means "admin").
        let r = unsafe {
            sys::rados_create(&mut handle, id.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        };
        if r < 0 {
            return Err(RbdError::call("rados_create", conf, r.into()));
        }
        // From here on the handle is owned (and shut down on error) by inner.
        let mut inner = ClusterInner {
            handle,
            conf: conf.clone(),
            fsid: String::new(),
        };
        let path = opts
            .conf
            .as_deref()
            .map(|p| path_cstring("conf path", p))
            .transpose()?;
        // SAFETY: live handle; path is NUL-terminated or null (search the
        // default locations).
        let r = unsafe {
            sys::rados_conf_read_file(handle, path.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        };
        if r < 0 {
            return Err(RbdError::call("reading ceph.conf", conf, r.into()));
        }
        if let Some(keyring) = &opts.keyring {
            set_conf(handle, &conf, "keyring", &keyring.display().to_string())?;
        }
        let secs = opts.timeout.as_secs().max(1);
        set_conf(handle, &conf, "client_mount_timeout", &secs.to_string())?;
        set_conf(handle, &conf, "rados_mon_op_timeout", &secs.to_string())?;
        let op_secs = opts.op_timeout.map_or(0, |d| d.as_secs().max(1));
        set_conf(handle, &conf, "rados_osd_op_timeout", &op_secs.to_string())?;
        // See the module docs: no cache may acknowledge a write early.
        set_conf(handle, &conf, "rbd_cache", "false")?;
        // SAFETY: live, configured, not yet connected handle.
        let r = unsafe { sys::rados_connect(handle) };
        if r == -libc::ETIMEDOUT {
            return Err(RbdError::ConnectTimeout { conf, secs });
        }
        if r < 0 {
            return Err(RbdError::call(
                "connecting to the cluster of",
                conf,
                r.into(),
            ));
        }
        let mut buf = [0u8; 64];
        // SAFETY: connected handle; buf is writable for its length.
        let r = unsafe {
            sys::rados_cluster_fsid(handle, buf.as_mut_ptr().cast::<c_char>(), buf.len())
        };
        if r < 0 {
            return Err(RbdError::call("reading the fsid of", conf, r.into()));
        }
        inner.fsid = c_buf_to_string(&buf);
        Ok(Cluster {
            inner: Arc::new(inner),
        })
    }

    /// The conf this connection was made from, for messages.
    pub fn conf(&self) -> &str {
        &self.inner.conf
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> &str {
        &self.inner.fsid
    }

    /// This client's global id (`client.<id>`), as watchers report it.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle.
        unsafe { sys::rados_get_instance_id(self.inner.handle) }
    }

    /// Opens an I/O context on `pool`.
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let name = cstring("pool name", pool)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, NUL-terminated name, valid out-pointer.
        let r = unsafe { sys::rados_ioctx_create(self.inner.handle, name.as_ptr(), &mut io) };
        if r == -libc::ENOENT {
            return Err(RbdError::NoPool {
                pool: pool.to_string(),
                conf: self.inner.conf.clone(),
            });
        }
        if r < 0 {
            return Err(RbdError::call("opening pool", pool, r.into()));
        }
        Ok(IoCtx {
            inner: Arc::new(IoCtxInner {
                handle: io,
                pool: pool.to_string(),
                cluster: self.clone(),
            }),
        })
    }

    /// Whether `pool` exists.
    pub fn pool_exists(&self, pool: &str) -> Result<bool> {
        let name = cstring("pool name", pool)?;
        // SAFETY: connected handle, NUL-terminated name.
        let r = unsafe { sys::rados_pool_lookup(self.inner.handle, name.as_ptr()) };
        match r {
            r if r >= 0 => Ok(true),
            r if r == -i64::from(libc::ENOENT) => Ok(false),
            r => Err(RbdError::call("looking up pool", pool, r)),
        }
    }

    /// Cluster-wide raw usage.
    pub fn stat(&self) -> Result<ClusterStat> {
        let mut st = sys::rados_cluster_stat_t::default();
        // SAFETY: connected handle; st is a valid out-struct of the C type.
        let r = unsafe { sys::rados_cluster_stat(self.inner.handle, &mut st) };
        if r < 0 {
            return Err(RbdError::call("rados_cluster_stat", self.conf(), r.into()));
        }
        Ok(ClusterStat {
            total_bytes: st.kb.saturating_mul(1024),
            used_bytes: st.kb_used.saturating_mul(1024),
            avail_bytes: st.kb_avail.saturating_mul(1024),
            objects: st.num_objects,
        })
    }

    /// Sends one JSON command to the monitors; returns its output.
    pub fn mon_command(&self, json: &str) -> Result<String> {
        let cmd = cstring("monitor command", json)?;
        let mut cmds = [cmd.as_ptr()];
        let mut out: *mut c_char = ptr::null_mut();
        let mut out_len = 0usize;
        let mut status: *mut c_char = ptr::null_mut();
        let mut status_len = 0usize;
        // SAFETY: connected handle; one NUL-terminated command; no input
        // buffer; the out-pointers are valid. librados allocates out and
        // status, which we free below with rados_buffer_free.
        let r = unsafe {
            sys::rados_mon_command(
                self.inner.handle,
                cmds.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        // SAFETY: out/status are null or buffers of the stated lengths that
        // librados allocated for us.
        let (text, status_text) =
            unsafe { (take_buffer(out, out_len), take_buffer(status, status_len)) };
        if r < 0 {
            return Err(RbdError::call(
                "monitor command",
                format!("{json} ({})", status_text.trim()),
                r.into(),
            ));
        }
        Ok(text)
    }
}

/// Copies and frees a buffer librados allocated.
///
/// # Safety
/// `buf` is null or a librados-allocated buffer of at least `len` bytes not
/// freed before.
unsafe fn take_buffer(buf: *mut c_char, len: usize) -> String {
    if buf.is_null() {
        return String::new();
    }
    // SAFETY: the caller promises `len` readable bytes at `buf`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    let s = String::from_utf8_lossy(bytes).into_owned();
    // SAFETY: the buffer came from librados and is freed exactly once.
    unsafe { sys::rados_buffer_free(buf) };
    s
}

/// The text before the first NUL of a C string buffer.
pub(crate) fn c_buf_to_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads a C string librados/librbd owns.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string valid for the call.
pub(crate) unsafe fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Cluster-wide usage (raw bytes, before replication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStat {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub avail_bytes: u64,
    pub objects: u64,
}

/// A pool's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStat {
    pub bytes: u64,
    pub objects: u64,
}

struct IoCtxInner {
    handle: sys::rados_ioctx_t,
    pool: String,
    cluster: Cluster,
}

// SAFETY: an ioctx may be used from many threads as long as its state
// (snapshot context, namespace, locator) is not changed, which we never do.
unsafe impl Send for IoCtxInner {}
// SAFETY: as above.
unsafe impl Sync for IoCtxInner {}

impl Drop for IoCtxInner {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed once, before the
        // cluster (we hold an Arc to it) and after every image opened in it
        // (each holds an IoCtx clone).
        unsafe { sys::rados_ioctx_destroy(self.handle) };
    }
}

/// An I/O context on one pool. Cheap to clone.
#[derive(Clone)]
pub struct IoCtx {
    inner: Arc<IoCtxInner>,
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.inner.pool)
            .finish()
    }
}

/// Largest single RADOS read or write we issue; well under the OSD's
/// `osd_max_write_size` (90 MiB by default).
const OBJECT_CHUNK: usize = 16 << 20;

impl IoCtx {
    pub(crate) fn raw(&self) -> sys::rados_ioctx_t {
        self.inner.handle
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// The cluster this pool lives in.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The pool's id.
    pub fn pool_id(&self) -> i64 {
        // SAFETY: live ioctx.
        unsafe { sys::rados_ioctx_get_id(self.inner.handle) }
    }

    fn what(&self, oid: &str) -> String {
        format!("object {}/{oid}", self.inner.pool)
    }

    /// The pool's usage.
    pub fn stat(&self) -> Result<PoolStat> {
        let mut st = sys::rados_pool_stat_t::default();
        // SAFETY: live ioctx; st is a valid out-struct of the C type.
        let r = unsafe { sys::rados_ioctx_pool_stat(self.inner.handle, &mut st) };
        if r < 0 {
            return Err(RbdError::call(
                "rados_ioctx_pool_stat",
                self.pool(),
                r.into(),
            ));
        }
        Ok(PoolStat {
            bytes: st.num_bytes,
            objects: st.num_objects,
        })
    }

    /// An object's size, or `None` if it does not exist.
    pub fn object_size(&self, oid: &str) -> Result<Option<u64>> {
        let o = cstring("object name", oid)?;
        let mut size = 0u64;
        let mut mtime: libc::time_t = 0;
        // SAFETY: live ioctx, NUL-terminated name, valid out-pointers.
        let r = unsafe { sys::rados_stat(self.inner.handle, o.as_ptr(), &mut size, &mut mtime) };
        match r {
            0.. => Ok(Some(size)),
            r if r == -libc::ENOENT => Ok(None),
            r => Err(RbdError::call("rados_stat", self.what(oid), r.into())),
        }
    }

    /// A whole object, or `None` if it does not exist.
    pub fn read_object(&self, oid: &str) -> Result<Option<Vec<u8>>> {
        let Some(size) = self.object_size(oid)? else {
            return Ok(None);
        };
        let o = cstring("object name", oid)?;
        let size = usize::try_from(size).map_err(|_| RbdError::Unexpected {
            what: self.what(oid),
            why: format!("{size} bytes do not fit in memory"),
        })?;
        let mut buf = vec![0u8; size];
        let mut done = 0usize;
        while done < size {
            let n = OBJECT_CHUNK.min(size - done);
            // SAFETY: live ioctx, NUL-terminated name; buf[done..done+n] is
            // writable and stays alive for this synchronous call.
            let r = unsafe {
                sys::rados_read(
                    self.inner.handle,
                    o.as_ptr(),
                    buf[done..].as_mut_ptr().cast::<c_char>(),
                    n,
                    done as u64,
                )
            };
            if r == -libc::ENOENT && done == 0 {
                return Ok(None); // removed between stat and read
            }
            if r < 0 {
                return Err(RbdError::call("rados_read", self.what(oid), r.into()));
            }
            if r == 0 {
                break; // shrank since the stat
            }
            done += r as usize; // 0 < r ≤ n
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    /// Writes `bytes` at `offset` of an object (creating it if needed).
    /// RADOS acknowledges a write only once it is durable on every replica,
    /// so this is durable when it returns.
    pub fn write_object(&self, oid: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let o = cstring("object name", oid)?;
        for (i, chunk) in bytes.chunks(OBJECT_CHUNK).enumerate() {
            let at = offset + (i * OBJECT_CHUNK) as u64;
            // SAFETY: live ioctx, NUL-terminated name; chunk is readable for
            // its length during this synchronous call.
            let r = unsafe {
                sys::rados_write(
                    self.inner.handle,
                    o.as_ptr(),
                    chunk.as_ptr().cast::<c_char>(),
                    chunk.len(),
                    at,
                )
            };
            if r < 0 {
                return Err(RbdError::call("rados_write", self.what(oid), r.into()));
            }
        }
        Ok(())
    }

    /// Replaces an object's content with `bytes`, atomically when it fits
    /// one RADOS write (16 MiB; a region index of 16 MiB covers 256 TiB at
    /// 4 MiB regions). Durable when it returns.
    pub fn write_object_full(&self, oid: &str, bytes: &[u8]) -> Result<()> {
        let o = cstring("object name", oid)?;
        let first = &bytes[..bytes.len().min(OBJECT_CHUNK)];
        // SAFETY: live ioctx, NUL-terminated name; `first` is readable for
        // its length during this synchronous call.
        let r = unsafe {
            sys::rados_write_full(
                self.inner.handle,
                o.as_ptr(),
                first.as_ptr().cast::<c_char>(),
                first.len(),
            )
        };
        if r < 0 {
            return Err(RbdError::call("rados_write_full", self.what(oid), r.into()));
        }
        if bytes.len() > first.len() {
            self.write_object(oid, first.len() as u64, &bytes[first.len()..])?;
        }
        Ok(())
    }

    /// Removes an object; returns whether it existed.
    pub fn remove_object(&self, oid: &str) -> Result<bool> {
        let o = cstring("object name", oid)?;
        // SAFETY: live ioctx, NUL-terminated name.
        let r = unsafe { sys::rados_remove(self.inner.handle, o.as_ptr()) };
        match r {
            0.. => Ok(true),
            r if r == -libc::ENOENT => Ok(false),
            r => Err(RbdError::call("rados_remove", self.what(oid), r.into())),
        }
    }
}
