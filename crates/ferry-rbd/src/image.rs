//! A safe handle on an open RBD image: data path through librbd's aio
//! calls, plus metadata, extents, watchers, creation and removal.
//!
//! Data calls (read, write, write-zeroes, flush) are submitted with
//! `rbd_aio_*` and a completion that is always waited for before the call
//! returns, so the caller's buffer outlives librbd's use of it. Large I/O
//! is split into chunks that are all in flight at once. Zero-length I/O
//! returns at once: librbd asserts on a length of 0.
//!
//! Management calls (stat, metadata, diff iterate, watchers, create,
//! remove) use librbd's synchronous API: they are rare, not on the I/O path,
//! and librbd offers no aio form for most of them.
use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use ferry_core::Extent;
use ferry_rbd_sys as sys;

use crate::error::{RbdError, Result};
use crate::rados::{c_buf_to_string, c_str, cstring, IoCtx};

/// Largest byte count handed to one librbd aio call: librbd reports
/// results as `ssize_t` but clips some paths to `int`.
const MAX_IO: usize = 1 << 30;

/// One librbd aio completion, released on drop.
struct Completion(sys::rbd_completion_t);

impl Completion {
    fn new(what: &str) -> Result<Self> {
        let mut c: sys::rbd_completion_t = ptr::null_mut();
        // SAFETY: no callback and no argument: we only ever wait on it; c is
        // a valid out-pointer.
        let r = unsafe { sys::rbd_aio_create_completion(ptr::null_mut(), None, &mut c) };
        if r < 0 {
            return Err(RbdError::call("rbd_aio_create_completion", what, r.into()));
        }
        Ok(Completion(c))
    }

    /// Waits for the operation and returns its result (bytes or -errno).
    fn wait(&self) -> i64 {
        // SAFETY: the completion is live and was handed to a submitted
        // operation, which will complete it.
        unsafe {
            sys::rbd_aio_wait_for_complete(self.0);
            sys::rbd_aio_get_return_value(self.0) as i64
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // SAFETY: released once; every submitted completion was waited for
        // first (see `Image::aio`), so librbd no longer uses it.
        unsafe { sys::rbd_aio_release(self.0) };
    }
}

/// A client that has an image open (its header object is watched by every
/// open handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// The client's address, `ip:port/nonce`.
    pub addr: String,
    /// The client's global id (`client.<id>`).
    pub id: i64,
    pub cookie: u64,
}

/// Creation settings of an image; `None` takes the cluster's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Object size as a power of two (22 = 4 MiB).
    pub order: Option<u32>,
    pub features: Option<u64>,
    pub stripe_unit: Option<u64>,
    pub stripe_count: Option<u64>,
}

/// `rbd_image_options_t`, destroyed on drop.
struct ImageOptions(sys::rbd_image_options_t);

impl ImageOptions {
    fn new() -> Self {
        let mut o: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: valid out-pointer; the call cannot fail.
        unsafe { sys::rbd_image_options_create(&mut o) };
        ImageOptions(o)
    }

    fn set(&mut self, name: &str, opt: u32, value: u64) -> Result<()> {
        // SAFETY: live options object; opt is one of librbd's option ids.
        let r = unsafe { sys::rbd_image_options_set_uint64(self.0, opt as c_int, value) };
        if r < 0 {
            return Err(RbdError::call(
                "setting image option",
                format!("{name}={value}"),
                r.into(),
            ));
        }
        Ok(())
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { sys::rbd_image_options_destroy(self.0) };
    }
}

/// Creates an image of `size` bytes.
pub fn create_image(io: &IoCtx, name: &str, size: u64, opts: &CreateOptions) -> Result<()> {
    let n = cstring("image name", name)?;
    let mut o = ImageOptions::new();
    if let Some(order) = opts.order {
        o.set("order", sys::RBD_IMAGE_OPTION_ORDER, order.into())?;
    }
    if let Some(features) = opts.features {
        o.set("features", sys::RBD_IMAGE_OPTION_FEATURES, features)?;
    }
    if let Some(unit) = opts.stripe_unit {
        o.set("stripe_unit", sys::RBD_IMAGE_OPTION_STRIPE_UNIT, unit)?;
    }
    if let Some(count) = opts.stripe_count {
        o.set("stripe_count", sys::RBD_IMAGE_OPTION_STRIPE_COUNT, count)?;
    }
    // SAFETY: live ioctx, NUL-terminated name, live options object.
    let r = unsafe { sys::rbd_create4(io.raw(), n.as_ptr(), size, o.0) };
    match r {
        0.. => Ok(()),
        r if r == -libc::EEXIST => Err(RbdError::ImageExists {
            pool: io.pool().into(),
            image: name.into(),
        }),
        r => Err(RbdError::call(
            "rbd_create4",
            format!("image {}/{name}", io.pool()),
            r.into(),
        )),
    }
}

/// Removes an image. Fails with EBUSY while any client has it open.
pub fn remove_image(io: &IoCtx, name: &str) -> Result<()> {
    let n = cstring("image name", name)?;
    // SAFETY: live ioctx, NUL-terminated name.
    let r = unsafe { sys::rbd_remove(io.raw(), n.as_ptr()) };
    match r {
        0.. => Ok(()),
        r if r == -libc::ENOENT => Err(RbdError::NoImage {
            pool: io.pool().into(),
            image: name.into(),
        }),
        r => Err(RbdError::call(
            "rbd_remove",
            format!("image {}/{name} (still open somewhere?)", io.pool()),
            r.into(),
        )),
    }
}

/// Whether an image of that name exists in the pool.
pub fn image_exists(io: &IoCtx, name: &str) -> Result<bool> {
    // Opening read-only is the one existence check librbd offers by name;
    // it registers no watch and takes no lock.
    match Image::open(io, name, None, true) {
        Ok(_) => Ok(true),
        Err(RbdError::NoImage { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What `rbd_stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStat {
    pub size: u64,
    pub object_size: u64,
    pub order: u32,
}

/// An open image. Thread-safe: librbd serialises internally, and ferry
/// never changes the handle's state (snapshot, namespace) after opening.
pub struct Image {
    handle: sys::rbd_image_t,
    io: IoCtx,
    name: String,
    snap: Option<String>,
    id: String,
    read_only: bool,
    /// The cookie of ferry's advisory lock while this handle holds it
    /// (released at close; see [`Image::hold_exclusive`]).
    advisory: parking_lot::Mutex<Option<String>>,
}

// SAFETY: librbd image handles may be used from any thread.
unsafe impl Send for Image {}
// SAFETY: concurrent calls on one rbd_image_t are supported by librbd (it
// locks its ImageCtx); we never mutate handle state after opening.
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(cookie) = self.advisory.get_mut().take() {
            if let Ok(c) = std::ffi::CString::new(cookie) {
                // SAFETY: open image; c is NUL-terminated.
                let r = unsafe { sys::rbd_unlock(self.handle, c.as_ptr()) };
                if r < 0 && r != -libc::ENOENT {
                    log::warn!("unlocking image {}: errno {}", self.describe(), -r);
                }
            }
        }
        // SAFETY: opened by rbd_open*, closed once; every aio on it was
        // waited for. Closing also drops the header watch and any
        // exclusive lock we held.
        let r = unsafe { sys::rbd_close(self.handle) };
        if r < 0 {
            log::warn!(
                "closing image {}: {}",
                self.describe(),
                std::io::Error::from_raw_os_error(-r)
            );
        }
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("pool", &self.io.pool())
            .field("name", &self.name)
            .field("snap", &self.snap)
            .field("id", &self.id)
            .finish()
    }
}

/// What one aio call does.
enum Op<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    WriteZeroes(u64),
    Flush,
}

impl Image {
    /// Opens `name` in `io`, at snapshot `snap` if given (always read-only).
    pub fn open(io: &IoCtx, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let n = cstring("image name", name)?;
        let s = snap.map(|s| cstring("snapshot name", s)).transpose()?;
        let sp = s.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let mut handle: sys::rbd_image_t = ptr::null_mut();
        let read_only = read_only || snap.is_some();
        // SAFETY: live ioctx, NUL-terminated names (snap may be null), valid
        // out-pointer. librbd duplicates the ioctx; we keep ours alive too.
        let r = unsafe {
            if read_only {
                sys::rbd_open_read_only(io.raw(), n.as_ptr(), &mut handle, sp)
            } else {
                sys::rbd_open(io.raw(), n.as_ptr(), &mut handle, sp)
            }
        };
        if r == -libc::ENOENT {
            return Err(RbdError::NoImage {
                pool: io.pool().into(),
                image: match snap {
                    Some(s) => format!("{name}@{s}"),
                    None => name.into(),
                },
            });
        }
        if r < 0 {
            return Err(RbdError::call(
                "rbd_open",
                format!("image {}/{name}", io.pool()),
                r.into(),
            ));
        }
        let mut image = Image {
            handle,
            io: io.clone(),
            name: name.into(),
            snap: snap.map(str::to_string),
            id: String::new(),
            read_only,
            advisory: parking_lot::Mutex::new(None),
        };
        image.id = image.read_id()?;
        Ok(image)
    }

    /// `pool/name[@snap]`, for messages.
    pub fn describe(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}/{}@{s}", self.io.pool(), self.name),
            None => format!("{}/{}", self.io.pool(), self.name),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn snap(&self) -> Option<&str> {
        self.snap.as_deref()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The image's id: stable for its life, never reused.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pool's I/O context the image was opened in.
    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    fn err(&self, op: &'static str, r: i64) -> RbdError {
        RbdError::call(op, format!("image {}", self.describe()), r)
    }

    fn read_id(&self) -> Result<String> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: open image; buf is writable for its length.
            let r = unsafe {
                sys::rbd_get_id(self.handle, buf.as_mut_ptr().cast::<c_char>(), buf.len())
            };
            if r == -libc::ERANGE && buf.len() < 4096 {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_get_id", r.into()));
            }
            return Ok(c_buf_to_string(&buf));
        }
    }

    /// Size and object size.
    pub fn stat(&self) -> Result<ImageStat> {
        let mut info = sys::rbd_image_info_t::default();
        // SAFETY: open image; info is a valid out-struct of the C type
        // (layout pinned by ferry-rbd-sys's tests).
        let r = unsafe {
            sys::rbd_stat(
                self.handle,
                &mut info,
                std::mem::size_of::<sys::rbd_image_info_t>(),
            )
        };
        if r < 0 {
            return Err(self.err("rbd_stat", r.into()));
        }
        Ok(ImageStat {
            size: info.size,
            object_size: info.obj_size,
            order: u32::try_from(info.order).unwrap_or(22),
        })
    }

    /// Changes the image's size (librbd updates the header object, one
    /// RADOS write: the old size or the new one after a crash).
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: open image handle, owned by self.
        let r = unsafe { sys::rbd_resize(self.handle, size) };
        if r < 0 {
            return Err(self.err("rbd_resize", r.into()));
        }
        Ok(())
    }

    /// Feature bits (`RBD_FEATURE_*`).
    pub fn features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { sys::rbd_get_features(self.handle, &mut f) };
        if r < 0 {
            return Err(self.err("rbd_get_features", r.into()));
        }
        Ok(f)
    }

    /// Stripe unit and count.
    pub fn striping(&self) -> Result<(u64, u64)> {
        let (mut unit, mut count) = (0u64, 0u64);
        // SAFETY: open image, valid out-pointers.
        let r = unsafe { sys::rbd_get_stripe_unit(self.handle, &mut unit) };
        if r < 0 {
            return Err(self.err("rbd_get_stripe_unit", r.into()));
        }
        // SAFETY: as above.
        let r = unsafe { sys::rbd_get_stripe_count(self.handle, &mut count) };
        if r < 0 {
            return Err(self.err("rbd_get_stripe_count", r.into()));
        }
        Ok((unit, count))
    }

    /// Submits `op` at `offset` and waits for it.
    fn aio(&self, op: Op<'_>, offset: u64) -> Result<()> {
        let what = self.describe();
        let (name, total): (&'static str, u64) = match &op {
            Op::Read(b) => ("rbd_aio_read", b.len() as u64),
            Op::Write(b) => ("rbd_aio_write", b.len() as u64),
            Op::WriteZeroes(n) => ("rbd_aio_write_zeroes", *n),
            Op::Flush => ("rbd_aio_flush", 0),
        };
        // Chunks are all submitted before any is waited for. Once the first
        // is submitted nothing may return early: every submitted completion
        // is waited for below, so no buffer goes away while librbd uses it.
        let mut inflight: Vec<(Completion, usize)> = Vec::new();
        let mut first_err: Option<i64> = None;
        let mut submit = |len: usize, go: &mut dyn FnMut(sys::rbd_completion_t) -> c_int| {
            if first_err.is_some() {
                return;
            }
            match Completion::new(&what) {
                Err(RbdError::Call { errno, .. }) => first_err = Some(-i64::from(errno)),
                Err(_) => first_err = Some(-i64::from(libc::ENOMEM)),
                Ok(c) => {
                    let r = go(c.0);
                    if r < 0 {
                        first_err = Some(r.into());
                    } else {
                        inflight.push((c, len));
                    }
                }
            }
        };
        match op {
            Op::Flush => submit(0, &mut |c| {
                // SAFETY: open image; c is a live completion waited for
                // below.
                unsafe { sys::rbd_aio_flush(self.handle, c) }
            }),
            Op::Read(buf) => {
                for (i, chunk) in buf.chunks_mut(MAX_IO).enumerate() {
                    let at = offset + (i * MAX_IO) as u64;
                    let len = chunk.len();
                    let ptr = chunk.as_mut_ptr().cast::<c_char>();
                    submit(len, &mut |c| {
                        // SAFETY: open image; `ptr` addresses `len` writable
                        // bytes of the caller's buffer, which outlives the
                        // completion (waited for before we return).
                        unsafe { sys::rbd_aio_read(self.handle, at, len, ptr, c) }
                    });
                }
            }
            Op::Write(buf) => {
                for (i, chunk) in buf.chunks(MAX_IO).enumerate() {
                    let at = offset + (i * MAX_IO) as u64;
                    let len = chunk.len();
                    let ptr = chunk.as_ptr().cast::<c_char>();
                    submit(len, &mut |c| {
                        // SAFETY: open image; `ptr` addresses `len` readable
                        // bytes that outlive the completion (waited for
                        // before we return).
                        unsafe { sys::rbd_aio_write(self.handle, at, len, ptr, c) }
                    });
                }
            }
            Op::WriteZeroes(len) => {
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(MAX_IO as u64) as usize; // ≤ MAX_IO
                    let at = offset + done;
                    submit(n, &mut |c| {
                        // SAFETY: open image; c is a live completion waited
                        // for below; no buffer is involved.
                        unsafe { sys::rbd_aio_write_zeroes(self.handle, at, n, c, 0, 0) }
                    });
                    done += n as u64;
                }
            }
        }
        for (c, expect) in &inflight {
            let r = c.wait();
            if r < 0 {
                first_err.get_or_insert(r);
            } else if name == "rbd_aio_read" && r as u64 != *expect as u64 {
                // A short read means the image shrank under us.
                first_err.get_or_insert(-i64::from(libc::EIO));
            }
        }
        drop(inflight);
        match first_err {
            None => Ok(()),
            Some(r) => Err(RbdError::call(
                name,
                format!("of {total} bytes at offset {offset} on image {what}"),
                r,
            )),
        }
    }

    /// Fills `buf` from `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(()); // librbd asserts on zero-length I/O
        }
        self.aio(Op::Read(buf), offset)
    }

    /// Writes `buf` at `offset`; acknowledged by the OSDs when it returns.
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.aio(Op::Write(buf), offset)
    }

    /// Zeroes `[offset, offset+len)`, deallocating whole objects. Unlike
    /// `rbd_discard` (which skips partial objects under the default
    /// `rbd_skip_partial_discard`), the range always reads back as zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.aio(Op::WriteZeroes(len), offset)
    }

    /// Waits for every write issued before it.
    pub fn flush(&self) -> Result<()> {
        self.aio(Op::Flush, 0)
    }

    /// Extents that may hold data in `[offset, offset+len)`, clipped to the
    /// range and merged. With `whole_object`, extents are whole objects
    /// and come from the object map when fast-diff is on (no OSD round
    /// trip per object); without it librbd lists each object's extents.
    pub fn allocated(&self, offset: u64, len: u64, whole_object: bool) -> Result<Vec<Extent>> {
        if len == 0 {
            return Ok(vec![]);
        }
        struct Acc {
            start: u64,
            end: u64,
            out: Vec<Extent>,
        }
        unsafe extern "C" fn cb(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: arg is the &mut Acc passed below, alive and not
            // aliased for the duration of rbd_diff_iterate2, which calls us
            // on its own thread one extent at a time.
            let acc = unsafe { &mut *arg.cast::<Acc>() };
            if exists == 0 {
                return 0;
            }
            let s = off.max(acc.start);
            let e = off.saturating_add(len as u64).min(acc.end);
            if s >= e {
                return 0;
            }
            match acc.out.last_mut() {
                Some(last) if last.end() >= s => {
                    let end = last.end().max(e);
                    last.len = end - last.offset;
                }
                _ => acc.out.push(Extent {
                    offset: s,
                    len: e - s,
                }),
            }
            0
        }
        let mut acc = Acc {
            start: offset,
            end: offset + len,
            out: Vec::new(),
        };
        // SAFETY: open image; no from-snapshot (null: everything allocated
        // since creation); the callback only touches `acc`, which outlives
        // this synchronous call.
        let r = unsafe {
            sys::rbd_diff_iterate2(
                self.handle,
                ptr::null(),
                offset,
                len,
                1,
                u8::from(whole_object),
                Some(cb),
                (&mut acc as *mut Acc).cast::<c_void>(),
            )
        };
        if r < 0 {
            return Err(self.err("rbd_diff_iterate2", r.into()));
        }
        // librbd reports in order, but merge defensively.
        acc.out.sort_by_key(|e| e.offset);
        let mut out: Vec<Extent> = Vec::with_capacity(acc.out.len());
        for e in acc.out {
            match out.last_mut() {
                Some(last) if last.end() >= e.offset => {
                    let end = last.end().max(e.end());
                    last.len = end - last.offset;
                }
                _ => out.push(e),
            }
        }
        Ok(out)
    }

    /// One image metadata value, or `None`.
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        let k = cstring("metadata key", key)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let mut len = buf.len();
            // SAFETY: open image, NUL-terminated key; buf is writable for
            // len bytes; len is a valid in/out pointer.
            let r = unsafe {
                sys::rbd_metadata_get(
                    self.handle,
                    k.as_ptr(),
                    buf.as_mut_ptr().cast::<c_char>(),
                    &mut len,
                )
            };
            match r {
                0.. => return Ok(Some(c_buf_to_string(&buf))),
                r if r == -libc::ENOENT => return Ok(None),
                r if r == -libc::ERANGE && len > buf.len() => buf.resize(len, 0),
                r => {
                    return Err(RbdError::call(
                        "rbd_metadata_get",
                        format!("key {key} of image {}", self.describe()),
                        r.into(),
                    ))
                }
            }
        }
    }

    /// Sets one metadata value. librbd's C API takes values as C strings,
    /// so a value must not contain NUL bytes. Durable when it returns (an
    /// omap update of the image header object).
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let k = cstring("metadata key", key)?;
        let v = CStringValue::new(key, value, self)?;
        // SAFETY: open image, NUL-terminated key and value.
        let r = unsafe { sys::rbd_metadata_set(self.handle, k.as_ptr(), v.0.as_ptr()) };
        if r < 0 {
            return Err(RbdError::call(
                "rbd_metadata_set",
                format!("key {key} of image {}", self.describe()),
                r.into(),
            ));
        }
        Ok(())
    }

    /// Removes one metadata key; returns whether it existed.
    pub fn metadata_remove(&self, key: &str) -> Result<bool> {
        let k = cstring("metadata key", key)?;
        // SAFETY: open image, NUL-terminated key.
        let r = unsafe { sys::rbd_metadata_remove(self.handle, k.as_ptr()) };
        match r {
            0.. => Ok(true),
            r if r == -libc::ENOENT => Ok(false),
            r => Err(RbdError::call(
                "rbd_metadata_remove",
                format!("key {key} of image {}", self.describe()),
                r.into(),
            )),
        }
    }

    /// Every metadata key and value, in key order.
    pub fn metadata_list(&self) -> Result<Vec<(String, String)>> {
        const PAGE: u64 = 64;
        let mut out = Vec::new();
        let mut start = String::new();
        let (mut keys, mut vals) = (vec![0u8; 4096], vec![0u8; 16384]);
        loop {
            let s = cstring("metadata key", &start)?;
            let (mut klen, mut vlen) = (keys.len(), vals.len());
            // SAFETY: open image; `start` is NUL-terminated ("" = from the
            // first key, else after it); both buffers are writable for the
            // lengths passed, which are valid in/out pointers.
            let r = unsafe {
                sys::rbd_metadata_list(
                    self.handle,
                    s.as_ptr(),
                    PAGE,
                    keys.as_mut_ptr().cast::<c_char>(),
                    &mut klen,
                    vals.as_mut_ptr().cast::<c_char>(),
                    &mut vlen,
                )
            };
            if r == -libc::ERANGE {
                keys.resize(klen.max(keys.len()), 0);
                vals.resize(vlen.max(vals.len()), 0);
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_metadata_list", r.into()));
            }
            // Keys and values come as NUL-terminated strings back to back.
            let ks: Vec<String> = split_nul(&keys[..klen.min(keys.len())]);
            let vs: Vec<String> = split_nul(&vals[..vlen.min(vals.len())]);
            let n = ks.len();
            let before = out.len();
            out.extend(
                ks.into_iter()
                    .zip(vs.into_iter().chain(std::iter::repeat(String::new())))
                    // Pages start after `start`; never take a key twice.
                    .filter(|(k, _)| start.is_empty() || *k > start),
            );
            if (n as u64) < PAGE || out.len() == before {
                return Ok(out);
            }
            start = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
        }
    }

    /// The image's effective librbd settings (`rbd_*` options after pool
    /// and image overrides), as name/value pairs.
    pub fn config(&self) -> Result<Vec<(String, String)>> {
        let mut cap: c_int = 256;
        loop {
            let mut list: Vec<sys::rbd_config_option_t> = (0..cap)
                .map(|_| sys::rbd_config_option_t::default())
                .collect();
            let mut n = cap;
            // SAFETY: open image; list has room for n entries; n is a valid
            // in/out pointer.
            let r = unsafe { sys::rbd_config_image_list(self.handle, list.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE && n > cap {
                cap = n;
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_config_image_list", r.into()));
            }
            let n = n.clamp(0, cap);
            let out = list[..n as usize]
                .iter()
                // SAFETY: librbd filled name and value with NUL-terminated
                // strings it owns until the cleanup below.
                .map(|o| unsafe { (c_str(o.name), c_str(o.value)) })
                .collect();
            // SAFETY: frees the n entries librbd filled, once.
            unsafe { sys::rbd_config_image_list_cleanup(list.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// The clients watching the image's header: every open handle,
    /// ours included.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let mut cap = 8usize;
        loop {
            let mut list: Vec<sys::rbd_image_watcher_t> = (0..cap)
                .map(|_| sys::rbd_image_watcher_t::default())
                .collect();
            let mut n = cap;
            // SAFETY: open image; list has room for n entries; n is a valid
            // in/out pointer.
            let r = unsafe { sys::rbd_watchers_list(self.handle, list.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE && n > cap {
                cap = n;
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_watchers_list", r.into()));
            }
            let n = n.min(cap);
            let out = list[..n]
                .iter()
                .map(|w| Watcher {
                    // SAFETY: librbd filled addr with a NUL-terminated
                    // string it owns until the cleanup below.
                    addr: unsafe { c_str(w.addr) },
                    id: w.id,
                    cookie: w.cookie,
                })
                .collect();
            // SAFETY: frees the n entries librbd filled, once.
            unsafe { sys::rbd_watchers_list_cleanup(list.as_mut_ptr(), n) };
            return Ok(out);
        }
    }
}

/// A client holding a lock on an image's header object (what `rbd lock
/// ls` shows): librbd's managed exclusive lock (cookie `auto <n>`) or an
/// advisory lock such as ferry's own on images without the exclusive-lock
/// feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// `client.<global id>`.
    pub client: String,
    pub cookie: String,
    /// The client's address, `ip:port/nonce`.
    pub addr: String,
}

impl std::fmt::Display for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.client, self.addr)
    }
}

/// An entity address without its `v1:`/`v2:`/`any:` type prefix, so the
/// address a locker records and the one its watch shows compare equal.
pub(crate) fn bare_addr(addr: &str) -> &str {
    addr.split_once(':')
        .filter(|(kind, _)| matches!(*kind, "v1" | "v2" | "any"))
        .map_or(addr, |(_, rest)| rest)
}

/// The cookie of ferry's advisory lock, for images without the
/// exclusive-lock feature; one per connection, so a second handle of the
/// same process does not count as the holder.
fn advisory_cookie(io: &IoCtx) -> String {
    format!("ferry {}", io.cluster().instance_id())
}

impl Image {
    /// Makes this handle the image's only writer for as long as it is open:
    /// takes librbd's exclusive lock in the mode that is never handed to a
    /// client asking for it (`rbd_lock_acquire`; other clients' writes then
    /// fail with `EROFS`), or, on an image without the exclusive-lock
    /// feature, an exclusive advisory lock of ferry's own that every ferry
    /// opener checks. A holder that died is dealt with the way librbd does
    /// it: once its watch on the header has expired, its lock is broken
    /// (after blocklisting it, for the advisory lock). A holder still
    /// watching is refused with [`RbdError::Locked`], naming it.
    pub fn hold_exclusive(&self) -> Result<()> {
        if self.read_only {
            return Err(RbdError::Unexpected {
                what: format!("image {}", self.describe()),
                why: "a read-only handle cannot hold the exclusive lock".into(),
            });
        }
        if self.features()? & u64::from(sys::RBD_FEATURE_EXCLUSIVE_LOCK) == 0 {
            return self.hold_advisory();
        }
        // SAFETY: open, writable image handle.
        let r = unsafe { sys::rbd_lock_acquire(self.handle, sys::RBD_LOCK_MODE_EXCLUSIVE) };
        match r {
            0.. => Ok(()),
            r if [libc::EROFS, libc::EBUSY, libc::EAGAIN].contains(&-r) => Err(self.locked_error()),
            r => Err(self.err("rbd_lock_acquire", r.into())),
        }
    }

    /// Whether this handle holds the exclusive lock (managed or ferry's
    /// advisory one).
    pub fn holds_exclusive(&self) -> Result<bool> {
        if self.advisory.lock().is_some() {
            return Ok(true);
        }
        let mut owner: c_int = 0;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { sys::rbd_is_exclusive_lock_owner(self.handle, &mut owner) };
        if r < 0 {
            return Err(self.err("rbd_is_exclusive_lock_owner", r.into()));
        }
        Ok(owner != 0)
    }

    fn locked_error(&self) -> RbdError {
        let holders = match self.lockers() {
            Ok(l) if !l.is_empty() => l.iter().map(Locker::to_string).collect(),
            Ok(_) => vec!["another client (it released the lock meanwhile: retry)".into()],
            Err(e) => vec![format!("another client (listing lockers failed: {e})")],
        };
        RbdError::Locked {
            image: self.describe(),
            holders,
        }
    }

    fn hold_advisory(&self) -> Result<()> {
        let cookie = advisory_cookie(&self.io);
        let c = cstring("lock cookie", &cookie)?;
        let mut broke = false;
        loop {
            // SAFETY: open image; c is NUL-terminated.
            let r = unsafe { sys::rbd_lock_exclusive(self.handle, c.as_ptr()) };
            match r {
                // EEXIST: this connection holds it already.
                r if r >= 0 || r == -libc::EEXIST => {
                    *self.advisory.lock() = Some(cookie);
                    return Ok(());
                }
                r if r == -libc::EBUSY && !broke => {
                    // Break the locks of holders whose watch is gone (they
                    // died); a live holder keeps its lock.
                    let watching: Vec<String> = self
                        .watchers()?
                        .into_iter()
                        .map(|w| bare_addr(&w.addr).to_string())
                        .collect();
                    let lockers = self.lockers()?;
                    let (alive, dead): (Vec<Locker>, Vec<Locker>) = lockers
                        .into_iter()
                        .partition(|l| watching.iter().any(|w| w == bare_addr(&l.addr)));
                    if !alive.is_empty() {
                        return Err(RbdError::Locked {
                            image: self.describe(),
                            holders: alive.iter().map(Locker::to_string).collect(),
                        });
                    }
                    for l in dead {
                        crate::fence::blocklist(self.io.cluster(), &l.addr)?;
                        self.break_advisory(&l)?;
                        log::warn!(
                            "{}: broke the lock of {l}, which no longer watches it",
                            self.describe()
                        );
                    }
                    broke = true;
                }
                r if r == -libc::EBUSY => return Err(self.locked_error()),
                r => return Err(self.err("rbd_lock_exclusive", r.into())),
            }
        }
    }

    /// Breaks an advisory lock another client holds.
    pub(crate) fn break_advisory(&self, l: &Locker) -> Result<()> {
        let client = cstring("lock client", &l.client)?;
        let cookie = cstring("lock cookie", &l.cookie)?;
        // SAFETY: open image; both strings NUL-terminated.
        let r = unsafe { sys::rbd_break_lock(self.handle, client.as_ptr(), cookie.as_ptr()) };
        if r < 0 && r != -libc::ENOENT {
            return Err(self.err("rbd_break_lock", r.into()));
        }
        Ok(())
    }

    /// Every lock on the image's header (`rbd_list_lockers`): the managed
    /// exclusive lock's owner and advisory lockers.
    pub fn lockers(&self) -> Result<Vec<Locker>> {
        let mut lens = [256usize; 4];
        loop {
            let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0u8; n]).collect();
            let mut got = lens;
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs[..] else {
                unreachable!("four buffers")
            };
            let [tag_len, clients_len, cookies_len, addrs_len] = &mut got;
            // SAFETY: open image; each buffer is writable for the length
            // passed with it, and every length is a valid in/out pointer.
            let r = unsafe {
                sys::rbd_list_lockers(
                    self.handle,
                    &mut exclusive,
                    tag.as_mut_ptr().cast::<c_char>(),
                    tag_len,
                    clients.as_mut_ptr().cast::<c_char>(),
                    clients_len,
                    cookies.as_mut_ptr().cast::<c_char>(),
                    cookies_len,
                    addrs.as_mut_ptr().cast::<c_char>(),
                    addrs_len,
                )
            };
            if r == -(libc::ERANGE as isize) {
                let grown: Vec<usize> = got.iter().zip(lens).map(|(&g, l)| g.max(l)).collect();
                if grown == lens || lens[0] > 1 << 20 {
                    return Err(self.err("rbd_list_lockers", (-libc::ERANGE).into()));
                }
                lens.copy_from_slice(&grown);
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_list_lockers", r as i64));
            }
            let take = |b: &[u8], n: usize| split_nul(&b[..n.min(b.len())]);
            let clients = take(clients, *clients_len);
            let cookies = take(cookies, *cookies_len);
            let addrs = take(addrs, *addrs_len);
            return Ok(clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((client, cookie), addr)| Locker {
                    client,
                    cookie,
                    addr,
                })
                .collect());
        }
    }

    /// The clients holding the image's lock (empty when it is free).
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        let mut cap = 4usize;
        loop {
            let mut list: Vec<*mut std::os::raw::c_char> = vec![std::ptr::null_mut(); cap];
            let mut n = cap;
            let mut mode: sys::rbd_lock_mode_t = 0;
            // SAFETY: open image; list has room for n pointers; mode and n
            // are valid out-pointers.
            let r = unsafe {
                sys::rbd_lock_get_owners(self.handle, &mut mode, list.as_mut_ptr(), &mut n)
            };
            // ENOENT: nobody holds it; EINVAL: the image has no
            // exclusive-lock feature, so there is no managed lock.
            if r == -libc::ENOENT || r == -libc::EINVAL {
                return Ok(Vec::new());
            }
            if r == -libc::ERANGE && n > cap {
                cap = n;
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_lock_get_owners", r.into()));
            }
            let n = n.min(cap);
            let out = list[..n]
                .iter()
                // SAFETY: librbd filled n NUL-terminated strings it owns
                // until the cleanup below.
                .map(|p| unsafe { c_str(*p) })
                .collect();
            // SAFETY: frees the n entries librbd filled, once.
            unsafe { sys::rbd_lock_get_owners_cleanup(list.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// Breaks another client's exclusive lock; librbd blocklists that
    /// client first (`rbd_blocklist_on_break_lock`, on by default), so it
    /// can write no more even if it is alive.
    pub fn break_lock(&self, owner: &str) -> Result<()> {
        let c = std::ffi::CString::new(owner).map_err(|_| RbdError::Unexpected {
            what: format!("lock owner of {}", self.describe()),
            why: "owner name holds a NUL byte".into(),
        })?;
        // SAFETY: open image; c is a valid NUL-terminated string.
        let r =
            unsafe { sys::rbd_lock_break(self.handle, sys::RBD_LOCK_MODE_EXCLUSIVE, c.as_ptr()) };
        if r < 0 && r != -libc::ENOENT {
            return Err(self.err("rbd_lock_break", r.into()));
        }
        Ok(())
    }
}

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    pub name: String,
    pub size: u64,
}

impl Image {
    fn snap_call(
        &self,
        op: &'static str,
        name: &str,
        f: unsafe extern "C" fn(
            sys::rbd_image_t,
            *const std::os::raw::c_char,
        ) -> std::os::raw::c_int,
    ) -> Result<()> {
        let n = crate::rados::cstring("snapshot name", name)?;
        // SAFETY: open image handle; n is a NUL-terminated name; `f` is one
        // of librbd's (image, snapshot name) calls.
        let r = unsafe { f(self.handle, n.as_ptr()) };
        if r < 0 {
            return Err(self.err(op, r.into()));
        }
        Ok(())
    }

    /// Takes a snapshot and protects it (so it can be cloned).
    pub fn snap_create_protected(&self, name: &str) -> Result<()> {
        self.snap_call("rbd_snap_create", name, sys::rbd_snap_create)?;
        self.snap_call("rbd_snap_protect", name, sys::rbd_snap_protect)
    }

    /// Unprotects (fails while clones depend on it) and removes a snapshot.
    pub fn snap_remove_protected(&self, name: &str) -> Result<()> {
        match self.snap_call("rbd_snap_unprotect", name, sys::rbd_snap_unprotect) {
            Ok(()) => {}
            // Not protected (taken by other tools): remove it all the same.
            Err(e) if e.errno() == libc::EINVAL => {}
            Err(e) => return Err(e),
        }
        self.snap_call("rbd_snap_remove", name, sys::rbd_snap_remove)
    }

    /// The image's snapshots, oldest first.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        let mut cap: std::os::raw::c_int = 16;
        loop {
            let n_alloc = usize::try_from(cap).unwrap_or(16) + 1;
            let mut list: Vec<sys::rbd_snap_info_t> = (0..n_alloc)
                .map(|_| sys::rbd_snap_info_t {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                })
                .collect();
            let mut max = cap;
            // SAFETY: open image; list has room for max entries (plus the
            // terminator librbd writes); max is a valid in/out pointer.
            let r = unsafe { sys::rbd_snap_list(self.handle, list.as_mut_ptr(), &mut max) };
            if r == -libc::ERANGE {
                cap = max.max(cap * 2);
                continue;
            }
            if r < 0 {
                return Err(self.err("rbd_snap_list", r.into()));
            }
            let n = usize::try_from(r).unwrap_or(0).min(n_alloc);
            let mut out: Vec<SnapInfo> = list[..n]
                .iter()
                .map(|s| SnapInfo {
                    id: s.id,
                    size: s.size,
                    // SAFETY: librbd filled name with a NUL-terminated
                    // string it owns until rbd_snap_list_end.
                    name: unsafe { c_str(s.name) },
                })
                .collect();
            // SAFETY: frees what rbd_snap_list filled, once.
            unsafe { sys::rbd_snap_list_end(list.as_mut_ptr()) };
            out.sort_by_key(|s| s.id);
            return Ok(out);
        }
    }
}

/// Clones `parent@snap` (protected) as `child` in `child_io`, with the
/// parent's features and layout: redirect-on-write, instant.
pub fn clone_image(parent: &Image, snap: &str, child_io: &IoCtx, child: &str) -> Result<()> {
    let pn = crate::rados::cstring("image name", parent.name())?;
    let sn = crate::rados::cstring("snapshot name", snap)?;
    let cn = crate::rados::cstring("image name", child)?;
    let features = parent.features()?;
    let (unit, count) = parent.striping()?;
    let mut order: std::os::raw::c_int = 0; // 0: the parent's object size
                                            // SAFETY: live ioctxs; NUL-terminated names; order is a valid
                                            // in/out pointer.
    let r = unsafe {
        sys::rbd_clone2(
            parent.ioctx().raw(),
            pn.as_ptr(),
            sn.as_ptr(),
            child_io.raw(),
            cn.as_ptr(),
            features,
            &mut order,
            unit,
            std::os::raw::c_int::try_from(count).unwrap_or(1),
        )
    };
    if r < 0 {
        return Err(RbdError::call(
            "rbd_clone2",
            format!(
                "{}@{snap} -> {}/{child}",
                parent.describe(),
                child_io.pool()
            ),
            r.into(),
        ));
    }
    Ok(())
}

/// A metadata value as a C string, refusing NUL bytes with a clear error.
struct CStringValue(std::ffi::CString);

impl CStringValue {
    fn new(key: &str, value: &str, image: &Image) -> Result<Self> {
        std::ffi::CString::new(value)
            .map(CStringValue)
            .map_err(|_| RbdError::Unexpected {
                what: format!("key {key} of image {}", image.describe()),
                why: "RBD image metadata values cannot hold NUL bytes".into(),
            })
    }
}

fn split_nul(buf: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = buf
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    // The buffer ends with a NUL, which leaves one empty piece.
    if v.last().is_some_and(|s| s.is_empty()) {
        v.pop();
    }
    v
}
