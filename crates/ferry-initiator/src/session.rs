//! [`Session`]: one logged-in libiscsi connection to one LUN, and the only
//! place in the crate that touches C.
//!
//! Two ways to issue commands:
//!
//! - **sync** methods ([`Session::read`], [`Session::write`], ...,
//!   [`Session::raw_cdb`]) wrap libiscsi's `*_sync` calls and return typed
//!   results;
//! - **async**: [`Session::submit_read`] / [`Session::submit_write`] queue
//!   READ(16)/WRITE(16) with a callback, [`Session::service`] runs one
//!   `poll()` + `iscsi_service()` round, and [`Session::take_completions`]
//!   hands back what finished. The load generator keeps its queue depth
//!   this way on one thread.
//!
//! Things about libiscsi 1.19 this wrapper is built around:
//!
//! - It never hangs: every PDU gets `iscsi_set_timeout`, TCP SYN retries
//!   are capped, and automatic reconnect is off (`iscsi_set_noautoreconnect`)
//!   so a dropped connection fails the commands in flight (CANCELLED)
//!   instead of retrying forever inside a sync call.
//! - A `*_sync` call whose internal event loop fails (e.g. its `poll()` is
//!   interrupted by a signal handler) returns NULL while its PDU may still
//!   be queued with a callback pointing into the finished call's stack
//!   frame. Destroying or servicing the context after that would run that
//!   callback, so such a session is *poisoned*: it refuses further
//!   commands and its context is closed but deliberately leaked on drop.
//! - After a connection failure (CANCELLED / transport error) the session
//!   is *failed*: it refuses further commands, because a command queued on
//!   a dead, non-reconnecting context can only fail in that same way.
//! - Async commands own their data-out buffer and a heap record passed as
//!   the callback's private data; libiscsi calls the callback exactly once
//!   per accepted command (completion, timeout, or cancel, including when
//!   the context is destroyed), and that call frees both.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::scsi::{Designator, DeviceId, ScsiOutcome, ScsiStatus, Sense};
use crate::sys;

/// The initiator name ferry's tools log in with unless told otherwise.
pub const DEFAULT_INITIATOR: &str = "iqn.2026-11.org.ferry:initiator";

/// Largest data transfer one sync or async command may carry (libiscsi
/// takes lengths as `uint32_t`; keep well below that).
pub const MAX_TRANSFER: usize = 64 << 20;

/// How to log in.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The iSCSI name this initiator presents (tgt ACLs may check it).
    pub initiator_name: String,
    /// Bound on login and on every command: a PDU with no answer within it
    /// fails with [`ScsiStatus::Timeout`]. libiscsi counts whole seconds
    /// (rounded up here, at least one).
    pub timeout: Duration,
    /// A fixed ISID (its 24 random-format bits): the initiator port is
    /// `name,i,0x<ISID>`, so an initiator that logs in again with the same
    /// ISID is the same I_T nexus to persistent reservations, as with
    /// open-iscsi's per-interface ISID. `None`: libiscsi picks one.
    pub isid: Option<u32>,
    /// Log in even through a path that refuses media access (an ALUA
    /// standby or unavailable port): libiscsi's full connect fails on any
    /// TEST UNIT READY but GOOD, so the login is made without it and the
    /// unit attentions of a fresh login are taken with TEST UNIT READY
    /// whose other answers are left to the caller.
    pub any_path_state: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            initiator_name: DEFAULT_INITIATOR.to_string(),
            timeout: Duration::from_secs(10),
            isid: None,
            any_path_state: false,
        }
    }
}

/// One finished async command.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// For a read: the data read. For a write: the data-out buffer, handed
    /// back for reuse.
    pub result: Result<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Health {
    Ok,
    /// The connection failed; commands would only fail again.
    Failed(String),
    /// A sync call lost track of its PDU; see the module docs.
    Poisoned(String),
}

/// What async callbacks write into. Lives on the heap at a fixed address
/// for as long as the context can run callbacks.
#[derive(Default)]
struct AsyncState {
    done: Vec<Completion>,
    in_flight: usize,
    /// First connection-level failure seen by a callback.
    failure: Option<String>,
}

/// One accepted async command: the callback's private data.
struct InFlight {
    state: *mut AsyncState,
    tag: u64,
    op: &'static str,
    /// Expected data-in length (0 for writes).
    read_len: usize,
    /// The data-out buffer libiscsi sends from; must live until the
    /// callback.
    buf: Vec<u8>,
}

/// A libiscsi task returned to us, freed on drop.
struct Task(NonNull<sys::scsi_task>);

impl Task {
    fn ptr(&self) -> *mut sys::scsi_task {
        self.0.as_ptr()
    }

    fn get(&self) -> &sys::scsi_task {
        // SAFETY: the task is a live allocation owned by this wrapper until
        // drop; libiscsi no longer writes it once the command finished.
        unsafe { self.0.as_ref() }
    }

    fn status(&self) -> ScsiStatus {
        ScsiStatus::from_raw(self.get().status as u32)
    }

    fn datain(&self) -> Vec<u8> {
        // SAFETY: as in `get`; `datain` describes a buffer the task owns.
        unsafe { datain_of(self.ptr()) }
    }

    /// Decodes the data-in of INQUIRY/READ CAPACITY... into libiscsi's
    /// structure for the command; the result lives as long as the task.
    fn unmarshall<T>(&self) -> Option<&T> {
        // SAFETY: the task is live and its CDB tells libiscsi which
        // structure to build; the memory is owned by the task and freed with
        // it, which the returned borrow of `self` outlives no longer than.
        unsafe { sys::scsi_datain_unmarshall(self.ptr()).cast::<T>().as_ref() }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: we own the task and the command has finished (or was never
        // queued), so libiscsi holds no reference to it.
        unsafe { sys::scsi_free_scsi_task(self.ptr()) }
    }
}

/// Copies a task's data-in.
///
/// # Safety
/// `task` must point to a live `scsi_task`.
unsafe fn datain_of(task: *const sys::scsi_task) -> Vec<u8> {
    // SAFETY: the caller guarantees `task` is live.
    let d = unsafe { &(*task).datain };
    if d.data.is_null() || d.size <= 0 {
        return Vec::new();
    }
    // SAFETY: libiscsi sets `data`/`size` to a buffer of that many bytes
    // owned by the task.
    unsafe { std::slice::from_raw_parts(d.data, d.size as usize) }.to_vec()
}

/// Decodes libiscsi's sense fields (`ascq` holds ASC << 8 | ASCQ).
///
/// # Safety
/// `task` must point to a live `scsi_task`.
unsafe fn sense_of(task: *const sys::scsi_task) -> Sense {
    // SAFETY: the caller guarantees `task` is live.
    let s = unsafe { &(*task).sense };
    Sense {
        key: s.key as u8,
        asc: ((s.ascq >> 8) & 0xff) as u8,
        ascq: (s.ascq & 0xff) as u8,
    }
}

/// libiscsi's description of the context's last error.
///
/// # Safety
/// `ctx` must point to a live `iscsi_context`.
unsafe fn error_of(ctx: *mut sys::iscsi_context) -> String {
    // SAFETY: the caller guarantees `ctx` is live; libiscsi returns a
    // pointer to a NUL-terminated buffer inside the context (or NULL).
    let p = unsafe { sys::iscsi_get_error(ctx) };
    if p.is_null() {
        return String::from("(no libiscsi error message)");
    }
    // SAFETY: non-NULL and NUL-terminated, valid until the next libiscsi
    // call on this context; copied out at once.
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim_end()
        .to_string()
}

/// Turns a fixed-size C string field into a `CString`.
fn c_field(field: &[c_char]) -> CString {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    CString::new(bytes).expect("no interior NUL before the first NUL")
}

/// Destroys a context unless disarmed: cleanup for a failed connect.
struct ContextGuard(Option<NonNull<sys::iscsi_context>>);

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            // SAFETY: the context was created by us, no command of ours is
            // queued on it (a failed full_connect_sync cancels its own PDUs
            // without callbacks), and nothing else refers to it.
            unsafe { sys::iscsi_destroy_context(ctx.as_ptr()) };
        }
    }
}

/// One logged-in session to one LUN. See the module docs.
pub struct Session {
    ctx: NonNull<sys::iscsi_context>,
    lun: c_int,
    url: String,
    block_size: u32,
    num_blocks: u64,
    health: Health,
    state: NonNull<AsyncState>,
}

// SAFETY: the context and the async state are reached only through
// `&mut self` (the session is not `Sync`), libiscsi keeps no thread-local
// or thread-affine state, and callbacks run only inside libiscsi calls made
// by this session's methods, i.e. on whichever thread owns it then.
unsafe impl Send for Session {}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.url)
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks)
            .field("health", &self.health)
            .finish()
    }
}

impl Session {
    /// Logs in to `url` (`iscsi://host[:port]/target-iqn/lun`) with the
    /// default options.
    pub fn connect(url: &str) -> Result<Session> {
        Session::connect_with(url, &ConnectOptions::default())
    }

    /// Logs in to `url`, checks the LUN is there (libiscsi's full connect
    /// does TEST UNIT READY) and reads its capacity.
    pub fn connect_with(url: &str, opts: &ConnectOptions) -> Result<Session> {
        let invalid_url = |message: String| Error::Url {
            url: url.to_string(),
            message,
        };
        let c_url = CString::new(url).map_err(|_| invalid_url("contains a NUL byte".into()))?;
        let c_initiator = CString::new(opts.initiator_name.as_str())
            .map_err(|_| Error::Invalid("initiator name contains a NUL byte".into()))?;
        let timeout_s = opts.timeout.as_secs_f64().ceil().clamp(1.0, 3600.0) as c_int;

        // SAFETY: `c_initiator` is a valid C string for the duration of the
        // call; libiscsi copies it.
        let raw = unsafe { sys::iscsi_create_context(c_initiator.as_ptr()) };
        let ctx = NonNull::new(raw).ok_or_else(|| Error::Connect {
            url: url.to_string(),
            message: "iscsi_create_context failed".into(),
        })?;
        let mut guard = ContextGuard(Some(ctx));
        let c = ctx.as_ptr();

        // SAFETY: `c` is the live context created above; these setters only
        // store values in it. Set before parsing so URL arguments
        // (`?header_digest=...`) can still override the digest.
        unsafe {
            sys::iscsi_set_session_type(c, sys::ISCSI_SESSION_NORMAL);
            sys::iscsi_set_header_digest(c, sys::ISCSI_HEADER_DIGEST_NONE);
            sys::iscsi_set_timeout(c, timeout_s);
            sys::iscsi_set_noautoreconnect(c, 1);
            sys::iscsi_set_tcp_syncnt(c, syn_retries(timeout_s));
            sys::iscsi_set_tcp_user_timeout(c, timeout_s.saturating_mul(1000));
            if let Some(isid) = opts.isid {
                sys::iscsi_set_isid_random(c, isid & 0x00ff_ffff, 0);
            }
        }

        // SAFETY: `c` is live and `c_url` a valid C string; the returned
        // structure is ours to free with iscsi_destroy_url.
        let parsed = unsafe { sys::iscsi_parse_full_url(c, c_url.as_ptr()) };
        if parsed.is_null() {
            // SAFETY: `c` is live.
            return Err(invalid_url(unsafe { error_of(c) }));
        }
        let (portal, target, lun) = {
            // SAFETY: non-NULL, freshly allocated by libiscsi, not shared.
            let u = unsafe { &*parsed };
            (c_field(&u.portal), c_field(&u.target), u.lun)
        };
        // SAFETY: `parsed` came from iscsi_parse_full_url and is freed once.
        unsafe { sys::iscsi_destroy_url(parsed) };

        // SAFETY: `c` is live and `target` a valid C string (copied by
        // libiscsi). The connect call runs libiscsi's own event loop until
        // login + TEST UNIT READY finish, fail or time out; on failure it
        // cancels its PDUs itself.
        let rc = unsafe {
            sys::iscsi_set_targetname(c, target.as_ptr());
            if opts.any_path_state {
                match sys::iscsi_connect_sync(c, portal.as_ptr()) {
                    0 => sys::iscsi_login_sync(c),
                    rc => rc,
                }
            } else {
                sys::iscsi_full_connect_sync(c, portal.as_ptr(), lun)
            }
        };
        if rc != 0 {
            // SAFETY: `c` is live.
            let message = unsafe { error_of(c) };
            return Err(Error::Connect {
                url: url.to_string(),
                message: explain_connect_failure(&portal, message),
            });
        }

        guard.0 = None;
        let state = NonNull::from(Box::leak(Box::<AsyncState>::default()));
        let mut session = Session {
            ctx,
            lun,
            url: url.to_string(),
            block_size: 0,
            num_blocks: 0,
            health: Health::Ok,
            state,
        };
        if opts.any_path_state {
            for _ in 0..4 {
                let tur = session.raw_cdb(&[0; 6], None, 0)?;
                if tur.sense.is_none_or(|s| s.key != 0x06) {
                    break;
                }
            }
        }
        session.read_capacity().map_err(|e| Error::Connect {
            url: url.to_string(),
            message: format!("reading the capacity: {e}"),
        })?;
        Ok(session)
    }

    /// The URL this session logged in to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The LUN's logical block size, from the last READ CAPACITY.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The LUN's size in blocks, from the last READ CAPACITY.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn ctx(&self) -> *mut sys::iscsi_context {
        self.ctx.as_ptr()
    }

    fn state(&mut self) -> &mut AsyncState {
        // SAFETY: the state is a live leaked Box owned by this session.
        // Callbacks write it only from inside libiscsi calls, and those are
        // made through `&mut self`, which this borrow excludes for its
        // lifetime.
        unsafe { self.state.as_mut() }
    }

    fn last_error(&self) -> String {
        // SAFETY: the context is live for the session's lifetime.
        unsafe { error_of(self.ctx()) }
    }

    /// Refuses commands on a failed or poisoned session.
    fn usable(&mut self, op: &'static str) -> Result<()> {
        if let Some(msg) = self.state().failure.take() {
            if matches!(self.health, Health::Ok) {
                self.health = Health::Failed(msg);
            }
        }
        match &self.health {
            Health::Ok => Ok(()),
            Health::Failed(msg) => Err(Error::Iscsi {
                op,
                message: format!("the session failed earlier: {msg}"),
            }),
            Health::Poisoned(msg) => Err(Error::Iscsi {
                op,
                message: format!("the session is unusable after: {msg}"),
            }),
        }
    }

    /// Runs one sync command built by `call` and checks its status.
    /// Runs a synchronous libiscsi call. A UNIT ATTENTION is taken and
    /// the command sent again, a few times, as an operating system's SCSI
    /// layer does: it reports an event (a LUN added to the target, a
    /// reset), not a failure of the command.
    fn run(
        &mut self,
        op: &'static str,
        call: impl Fn(*mut sys::iscsi_context, c_int) -> *mut sys::scsi_task,
    ) -> Result<Task> {
        const UA_RETRIES: usize = 4;
        let mut attempt = 0;
        loop {
            self.usable(op)?;
            let raw = call(self.ctx(), self.lun);
            let Some(task) = NonNull::new(raw) else {
                let message = self.last_error();
                self.health = Health::Poisoned(format!("{op}: {message}"));
                return Err(Error::Iscsi { op, message });
            };
            let task = Task(task);
            match self.check(op, task.status(), task.ptr()) {
                Err(Error::CheckCondition { sense, .. })
                    if sense.key == crate::scsi::sense_key::UNIT_ATTENTION
                        && attempt < UA_RETRIES =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(task),
            }
        }
    }

    /// Maps a finished command's status to `Ok` or an error, and notes
    /// connection failures.
    fn check(
        &mut self,
        op: &'static str,
        status: ScsiStatus,
        task: *const sys::scsi_task,
    ) -> Result<()> {
        match status {
            ScsiStatus::Good | ScsiStatus::ConditionMet => Ok(()),
            ScsiStatus::CheckCondition => Err(Error::CheckCondition {
                op,
                // SAFETY: `task` is the live task of the finished command.
                sense: unsafe { sense_of(task) },
                message: self.last_error(),
            }),
            status => {
                let message = self.last_error();
                if matches!(status, ScsiStatus::Cancelled | ScsiStatus::TransportError) {
                    self.health = Health::Failed(format!("{op}: {status}: {message}"));
                }
                Err(Error::Status {
                    op,
                    status,
                    message,
                })
            }
        }
    }

    fn transfer_len(&self, op: &'static str, blocks: u64) -> Result<u32> {
        let bytes = blocks
            .checked_mul(u64::from(self.block_size))
            .filter(|&b| b > 0 && b <= MAX_TRANSFER as u64)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{op}: {blocks} blocks of {} bytes is not a transfer of 1..={MAX_TRANSFER} bytes",
                    self.block_size
                ))
            })?;
        Ok(bytes as u32)
    }

    fn whole_blocks(&self, op: &'static str, data: &[u8]) -> Result<u32> {
        if data.len() % self.block_size as usize != 0 {
            return Err(Error::Invalid(format!(
                "{op}: {} bytes is not a whole number of {}-byte blocks",
                data.len(),
                self.block_size
            )));
        }
        self.transfer_len(op, (data.len() / self.block_size as usize) as u64)
    }

    /// READ CAPACITY(16): `(block_size, num_blocks)`. Also refreshes
    /// [`Session::block_size`] and [`Session::num_blocks`].
    pub fn read_capacity(&mut self) -> Result<(u32, u64)> {
        const OP: &str = "READ CAPACITY(16)";
        // SAFETY: `ctx` is the session's live context.
        let task = self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_readcapacity16_sync(ctx, lun)
        })?;
        let rc = task
            .unmarshall::<sys::scsi_readcapacity16>()
            .ok_or_else(|| Error::Protocol {
                op: OP,
                message: "could not decode the parameter data".into(),
            })?;
        let (bs, n) = (rc.block_length, rc.returned_lba.wrapping_add(1));
        if bs == 0 {
            return Err(Error::Protocol {
                op: OP,
                message: "block length 0".into(),
            });
        }
        self.block_size = bs;
        self.num_blocks = n;
        Ok((bs, n))
    }

    /// READ(16) of `blocks` blocks at `lba`.
    pub fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        const OP: &str = "READ(16)";
        let len = self.transfer_len(OP, u64::from(blocks))?;
        let bs = self.block_size as c_int;
        // SAFETY: `ctx` is live; libiscsi allocates the data-in buffer in
        // the task.
        let task = self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_read16_sync(ctx, lun, lba, len, bs, 0, 0, 0, 0, 0)
        })?;
        let data = task.datain();
        if data.len() != len as usize {
            return Err(Error::Protocol {
                op: OP,
                message: format!("got {} bytes of {len}", data.len()),
            });
        }
        Ok(data)
    }

    /// WRITE(16) of `data` (whole blocks) at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.write16(lba, data, false)
    }

    /// WRITE(16) with FUA: acknowledged only once on stable storage.
    pub fn write_fua(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.write16(lba, data, true)
    }

    fn write16(&mut self, lba: u64, data: &[u8], fua: bool) -> Result<()> {
        const OP: &str = "WRITE(16)";
        let len = self.whole_blocks(OP, data)?;
        let bs = self.block_size as c_int;
        let ptr = data.as_ptr().cast_mut();
        // SAFETY: `ctx` is live; libiscsi only reads `len` bytes from `ptr`
        // (the data-out buffer), and only until the sync call returns,
        // while `data` is borrowed.
        self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_write16_sync(ctx, lun, lba, ptr, len, bs, 0, 0, c_int::from(fua), 0, 0)
        })
        .map(drop)
    }

    /// SYNCHRONIZE CACHE(16) of the whole LUN (SYNCHRONIZE CACHE(10) if the
    /// target doesn't know the 16-byte form).
    pub fn synchronize_cache(&mut self) -> Result<()> {
        // SAFETY: `ctx` is live. LBA 0 and 0 blocks mean the whole LUN.
        let r = self.run("SYNCHRONIZE CACHE(16)", |ctx, lun| unsafe {
            sys::iscsi_synchronizecache16_sync(ctx, lun, 0, 0, 0, 0)
        });
        match r {
            Err(e) if is_invalid_opcode(&e) => {
                // SAFETY: as above.
                self.run("SYNCHRONIZE CACHE(10)", |ctx, lun| unsafe {
                    sys::iscsi_synchronizecache10_sync(ctx, lun, 0, 0, 0, 0)
                })
                .map(drop)
            }
            r => r.map(drop),
        }
    }

    /// UNMAP of `blocks` blocks at `lba` (one descriptor per 2^32-1 blocks).
    pub fn unmap(&mut self, lba: u64, blocks: u64) -> Result<()> {
        const OP: &str = "UNMAP";
        if blocks == 0 {
            return Err(Error::Invalid(format!("{OP}: 0 blocks")));
        }
        let mut list = Vec::new();
        let (mut at, mut left) = (lba, blocks);
        while left > 0 {
            let n = left.min(u64::from(u32::MAX));
            list.push(sys::unmap_list {
                lba: at,
                num: n as u32,
            });
            at += n;
            left -= n;
        }
        let count = c_int::try_from(list.len())
            .map_err(|_| Error::Invalid(format!("{OP}: too many blocks")))?;
        let ptr = list.as_mut_ptr();
        // SAFETY: `ctx` is live; libiscsi reads `count` descriptors from
        // `ptr` to build the parameter list before the call returns.
        self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_unmap_sync(ctx, lun, 0, 0, ptr, count)
        })
        .map(drop)
    }

    /// WRITE SAME(16): `block` (exactly one block) to `blocks` blocks at
    /// `lba`; with `unmap`, the target may deallocate them instead (the
    /// block should then be zeros).
    pub fn write_same(&mut self, lba: u64, blocks: u32, block: &[u8], unmap: bool) -> Result<()> {
        const OP: &str = "WRITE SAME(16)";
        if block.len() != self.block_size as usize {
            return Err(Error::Invalid(format!(
                "{OP}: the data must be one {}-byte block, not {} bytes",
                self.block_size,
                block.len()
            )));
        }
        if blocks == 0 {
            // 0 would mean "to the end of the LUN" in SBC.
            return Err(Error::Invalid(format!("{OP}: 0 blocks")));
        }
        let (ptr, len) = (block.as_ptr().cast_mut(), block.len() as u32);
        // SAFETY: `ctx` is live; libiscsi only reads the one block from
        // `ptr` while the sync call runs.
        self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_writesame16_sync(
                ctx,
                lun,
                lba,
                ptr,
                len,
                blocks,
                0,
                c_int::from(unmap),
                0,
                0,
            )
        })
        .map(drop)
    }

    /// COMPARE AND WRITE at `lba`: `data` is the compare blocks followed by
    /// as many write blocks. A mismatch is an error whose
    /// [`Error::is_miscompare`] is true.
    pub fn compare_and_write(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        const OP: &str = "COMPARE AND WRITE";
        let bs = self.block_size as usize;
        if data.is_empty() || data.len() % (2 * bs) != 0 || data.len() / (2 * bs) > 255 {
            return Err(Error::Invalid(format!(
                "{OP}: data must be 2 x N blocks (N in 1..=255) of {bs} bytes, not {} bytes",
                data.len()
            )));
        }
        let (ptr, len) = (data.as_ptr().cast_mut(), data.len() as u32);
        // SAFETY: `ctx` is live; libiscsi only reads `len` bytes from `ptr`
        // while the sync call runs.
        self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_compareandwrite_sync(ctx, lun, lba, ptr, len, bs as c_int, 0, 0, 0, 0, 0)
        })
        .map(drop)
    }

    /// INQUIRY, Unit Serial Number VPD page (0x80).
    pub fn inquiry_serial(&mut self) -> Result<String> {
        const OP: &str = "INQUIRY VPD 0x80";
        // SAFETY: `ctx` is live.
        let task = self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_inquiry_sync(ctx, lun, 1, 0x80, 255)
        })?;
        let page = task
            .unmarshall::<sys::scsi_inquiry_unit_serial_number>()
            .ok_or_else(|| Error::Protocol {
                op: OP,
                message: "could not decode the page".into(),
            })?;
        if page.usn.is_null() {
            return Ok(String::new());
        }
        // SAFETY: libiscsi NUL-terminates the serial it copied into the
        // task's memory, which lives while `task` does.
        let usn = unsafe { CStr::from_ptr(page.usn) };
        Ok(usn.to_string_lossy().trim().to_string())
    }

    /// INQUIRY, Device Identification VPD page (0x83), every designator.
    pub fn inquiry_device_id(&mut self) -> Result<DeviceId> {
        const OP: &str = "INQUIRY VPD 0x83";
        // SAFETY: `ctx` is live.
        let task = self.run(OP, |ctx, lun| unsafe {
            sys::iscsi_inquiry_sync(ctx, lun, 1, 0x83, 4096)
        })?;
        let page = task
            .unmarshall::<sys::scsi_inquiry_device_identification>()
            .ok_or_else(|| Error::Protocol {
                op: OP,
                message: "could not decode the page".into(),
            })?;
        let mut id = DeviceId::default();
        let mut d = page.designators;
        // SAFETY: libiscsi builds a NULL-terminated list in the task's
        // memory; each node's `designator` holds `designator_length` bytes.
        // Everything is copied out while `task` is alive.
        while let Some(node) = unsafe { d.as_ref() } {
            let value = if node.designator.is_null() || node.designator_length <= 0 {
                Vec::new()
            } else {
                // SAFETY: see the loop comment.
                unsafe {
                    std::slice::from_raw_parts(
                        node.designator.cast::<u8>(),
                        node.designator_length as usize,
                    )
                }
                .to_vec()
            };
            id.designators.push(Designator {
                code_set: node.code_set as u8,
                association: node.association as u8,
                designator_type: node.designator_type as u8,
                protocol: (node.piv != 0).then_some(node.protocol_identifier as u8),
                value,
            });
            d = node.next;
        }
        Ok(id)
    }

    /// Sends any CDB (6 to 16 bytes) with at most one data phase and
    /// returns its status, sense and data-in. Only transport failures (no
    /// SCSI status at all) are errors.
    pub fn raw_cdb(
        &mut self,
        cdb: &[u8],
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<ScsiOutcome> {
        const OP: &str = "raw CDB";
        if !(6..=sys::SCSI_CDB_MAX_SIZE as usize).contains(&cdb.len()) {
            return Err(Error::Invalid(format!(
                "{OP}: a CDB is 6 to 16 bytes, not {}",
                cdb.len()
            )));
        }
        let (dir, len) = match (data_out, data_in_len) {
            (Some(_), n) if n > 0 => {
                return Err(Error::Invalid(format!(
                    "{OP}: bidirectional commands are not supported"
                )))
            }
            (Some(out), _) => (sys::SCSI_XFER_WRITE, out.len()),
            (None, 0) => (sys::SCSI_XFER_NONE, 0),
            (None, n) => (sys::SCSI_XFER_READ, n),
        };
        if len > MAX_TRANSFER {
            return Err(Error::Invalid(format!("{OP}: {len} bytes is too much")));
        }
        self.usable(OP)?;
        // SAFETY: libiscsi copies the CDB bytes into a new task it
        // allocates; the pointer is only read.
        let raw = unsafe {
            sys::scsi_create_task(
                cdb.len() as c_int,
                cdb.as_ptr().cast_mut(),
                dir as c_int,
                len as c_int,
            )
        };
        let task = Task(NonNull::new(raw).ok_or_else(|| Error::Iscsi {
            op: OP,
            message: "scsi_create_task failed".into(),
        })?);
        let mut out = data_out.map(|d| sys::iscsi_data {
            size: d.len(),
            data: d.as_ptr().cast_mut(),
        });
        let out_ptr = out
            .as_mut()
            .map_or(std::ptr::null_mut(), |d| d as *mut sys::iscsi_data);
        // SAFETY: `ctx` and `task` are live; `out_ptr` is NULL or points to
        // an `iscsi_data` describing `data_out`, which stays borrowed (and
        // is only read) until this sync call returns.
        let back =
            unsafe { sys::iscsi_scsi_command_sync(self.ctx(), self.lun, task.ptr(), out_ptr) };
        if back.is_null() {
            let message = self.last_error();
            self.health = Health::Poisoned(format!("{OP}: {message}"));
            // The PDU may still reference the task: never free it.
            std::mem::forget(task);
            return Err(Error::Iscsi { op: OP, message });
        }
        debug_assert_eq!(back, task.ptr());
        let status = task.status();
        let sense = match self.check(OP, status, task.ptr()) {
            Ok(()) => None,
            Err(Error::CheckCondition { sense, .. }) => Some(sense),
            Err(e @ Error::Status { status, .. }) if status.is_transport_failure() => {
                return Err(e)
            }
            Err(_) => None,
        };
        let data = if matches!(status, ScsiStatus::Good | ScsiStatus::ConditionMet) {
            let mut d = task.datain();
            d.truncate(len);
            d
        } else {
            Vec::new()
        };
        Ok(ScsiOutcome {
            status,
            sense,
            data,
        })
    }

    /// Queues READ(16) of `blocks` at `lba`; its [`Completion`] carries
    /// `tag`.
    pub fn submit_read(&mut self, tag: u64, lba: u64, blocks: u32) -> Result<()> {
        const OP: &str = "READ(16)";
        let len = self.transfer_len(OP, u64::from(blocks))?;
        self.submit(OP, tag, lba, len as usize, Vec::new(), false)
    }

    /// Queues WRITE(16) of `data` at `lba`; the session keeps `data` until
    /// the command finishes and hands it back in the [`Completion`].
    pub fn submit_write(&mut self, tag: u64, lba: u64, data: Vec<u8>, fua: bool) -> Result<()> {
        const OP: &str = "WRITE(16)";
        self.whole_blocks(OP, &data)?;
        self.submit(OP, tag, lba, 0, data, fua)
    }

    fn submit(
        &mut self,
        op: &'static str,
        tag: u64,
        lba: u64,
        read_len: usize,
        buf: Vec<u8>,
        fua: bool,
    ) -> Result<()> {
        self.usable(op)?;
        let bs = self.block_size as c_int;
        let (ctx, lun) = (self.ctx(), self.lun);
        let cmd = Box::new(InFlight {
            state: self.state.as_ptr(),
            tag,
            op,
            read_len,
            buf,
        });
        let (out_ptr, out_len) = (cmd.buf.as_ptr().cast_mut(), cmd.buf.len() as u32);
        let private = Box::into_raw(cmd).cast::<c_void>();
        let task = if read_len > 0 {
            // SAFETY: `ctx` is live; `private` stays valid until the
            // callback, which takes it back exactly once.
            unsafe {
                sys::iscsi_read16_task(
                    ctx,
                    lun,
                    lba,
                    read_len as u32,
                    bs,
                    0,
                    0,
                    0,
                    0,
                    0,
                    Some(on_command_done),
                    private,
                )
            }
        } else {
            // SAFETY: as above; `out_ptr` is the heap buffer of the boxed
            // command's Vec, which does not move and lives until the
            // callback, and libiscsi only reads it.
            unsafe {
                sys::iscsi_write16_task(
                    ctx,
                    lun,
                    lba,
                    out_ptr,
                    out_len,
                    bs,
                    0,
                    0,
                    c_int::from(fua),
                    0,
                    0,
                    Some(on_command_done),
                    private,
                )
            }
        };
        if task.is_null() {
            // SAFETY: libiscsi refused the command, so it kept no copy of
            // `private`; we still own the box.
            drop(unsafe { Box::from_raw(private.cast::<InFlight>()) });
            return Err(Error::Iscsi {
                op,
                message: self.last_error(),
            });
        }
        self.state().in_flight += 1;
        Ok(())
    }

    /// Async commands queued and not yet completed.
    pub fn in_flight(&self) -> usize {
        // SAFETY: see `state`; a shared read between libiscsi calls.
        unsafe { self.state.as_ref() }.in_flight
    }

    /// Waits up to `timeout` for the connection to be ready, then lets
    /// libiscsi send, receive and expire timeouts. Finished async commands
    /// land in [`Session::take_completions`]. Call this at least once a
    /// second while commands are in flight so their timeouts are noticed.
    pub fn service(&mut self, timeout: Duration) -> Result<()> {
        const OP: &str = "iscsi_service";
        self.usable(OP)?;
        let ctx = self.ctx();
        // SAFETY: `ctx` is live; these only read the context.
        let (fd, events) = unsafe { (sys::iscsi_get_fd(ctx), sys::iscsi_which_events(ctx)) };
        if fd < 0 {
            self.health = Health::Failed("not connected".into());
            return Err(Error::Iscsi {
                op: OP,
                message: "not connected".into(),
            });
        }
        let revents = if events == 0 {
            // libiscsi asks to be left alone for a while (>= 100 ms).
            std::thread::sleep(timeout.min(Duration::from_millis(100)));
            0
        } else {
            let mut pfd = libc::pollfd {
                fd,
                events: events as libc::c_short,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as c_int;
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    return Ok(());
                }
                return Err(Error::Iscsi {
                    op: "poll",
                    message: err.to_string(),
                });
            }
            if n == 0 {
                0
            } else {
                c_int::from(pfd.revents)
            }
        };
        // SAFETY: `ctx` is live; callbacks it runs reach only the async
        // state and their own boxed commands.
        let rc = unsafe { sys::iscsi_service(ctx, revents) };
        if rc < 0 {
            let message = self.last_error();
            self.health = Health::Failed(message.clone());
            return Err(Error::Iscsi { op: OP, message });
        }
        Ok(())
    }

    /// Takes the async commands finished so far, in completion order.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.state().done)
    }
}

fn is_invalid_opcode(e: &Error) -> bool {
    e.sense().is_some_and(|s| {
        s.key == crate::scsi::sense_key::ILLEGAL_REQUEST
            && s.asc == crate::scsi::asc::INVALID_COMMAND_OPERATION_CODE
    })
}

/// libiscsi overwrites a refused TCP connect's error with "Can not
/// reconnect right now"; when its message says nothing about the socket,
/// ask the OS what connecting to the portal does.
fn explain_connect_failure(portal: &CStr, message: String) -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    if !message.contains("reconnect") {
        return message;
    }
    let portal = portal.to_string_lossy();
    let probe = portal
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
    match probe {
        Some(Err(e)) => format!("TCP connect to {portal}: {e} ({message})"),
        _ => message,
    }
}

/// TCP SYN retries so that a connect to a silent address gives up within
/// about `timeout_s` (retry n waits 2^n s).
fn syn_retries(timeout_s: c_int) -> c_int {
    match timeout_s {
        ..=3 => 1,
        4..=7 => 2,
        8..=15 => 3,
        _ => 4,
    }
}

/// libiscsi's completion callback for async commands.
unsafe extern "C" fn on_command_done(
    ctx: *mut sys::iscsi_context,
    status: c_int,
    command_data: *mut c_void,
    private: *mut c_void,
) {
    // SAFETY: `private` is the box leaked by `Session::submit`; libiscsi
    // calls this once per accepted command, so ownership returns here once.
    let cmd = unsafe { Box::from_raw(private.cast::<InFlight>()) };
    let InFlight {
        state,
        tag,
        op,
        read_len,
        buf,
    } = *cmd;
    let task = command_data.cast::<sys::scsi_task>();
    let status = ScsiStatus::from_raw(status as u32);
    // SAFETY: `ctx` is the live context running this callback.
    let message = || unsafe { error_of(ctx) };
    let result = match status {
        ScsiStatus::Good if read_len > 0 && !task.is_null() => {
            // SAFETY: libiscsi passes the command's live task.
            let data = unsafe { datain_of(task) };
            if data.len() == read_len {
                Ok(data)
            } else {
                Err(Error::Protocol {
                    op,
                    message: format!("got {} bytes of {read_len}", data.len()),
                })
            }
        }
        ScsiStatus::Good => Ok(buf),
        ScsiStatus::CheckCondition if !task.is_null() => Err(Error::CheckCondition {
            op,
            // SAFETY: libiscsi passes the command's live task.
            sense: unsafe { sense_of(task) },
            message: message(),
        }),
        status => Err(Error::Status {
            op,
            status,
            message: message(),
        }),
    };
    if !task.is_null() {
        // SAFETY: async tasks belong to the caller once their callback
        // runs; libiscsi does not touch it after we return.
        unsafe { sys::scsi_free_scsi_task(task) };
    }
    // SAFETY: the async state outlives every command: the session frees it
    // only after destroying the context (which runs pending callbacks
    // first), and leaks it when the context is leaked.
    let state = unsafe { &mut *state };
    state.in_flight = state.in_flight.saturating_sub(1);
    if matches!(status, ScsiStatus::Cancelled | ScsiStatus::TransportError) {
        state
            .failure
            .get_or_insert_with(|| format!("{op}: {status}: {}", message()));
    }
    state.done.push(Completion { tag, result });
}

impl Drop for Session {
    fn drop(&mut self) {
        let ctx = self.ctx();
        if let Health::Poisoned(_) = self.health {
            // Close the socket but never destroy the context: a stale
            // callback may still be queued on it (module docs).
            // SAFETY: `ctx` is live; disconnect only closes the fd.
            unsafe { sys::iscsi_disconnect(ctx) };
            return;
        }
        // SAFETY: the context is ours; destroying it closes the connection
        // and runs the callbacks of commands still in flight (CANCELLED),
        // which free their boxes and write the async state, still alive.
        unsafe { sys::iscsi_destroy_context(ctx) };
        // SAFETY: the state was leaked from a Box in `connect_with`; no
        // context refers to it any more.
        drop(unsafe { Box::from_raw(self.state.as_ptr()) });
    }
}
