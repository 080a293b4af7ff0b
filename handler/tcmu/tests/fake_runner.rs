//! The handler in-process, driven the way tcmu-runner 1.5.4 drives it: a
//! fake runner (`tests/fake/fake_tcmu.c`, compiled here and loaded with
//! `RTLD_GLOBAL`) provides the functions the handler resolves at load, so
//! `handler_init`, the registered callouts, asynchronous completion
//! through `tcmur_cmd_complete`, sense, reconfig and the control socket
//! run for real against file volumes, without LIO. Commands are placed at
//! misaligned addresses, as tcmu-runner places its `tcmur_cmd`.
//!
//! Needs a C compiler (`cc`; `scripts/setup.sh` installs it); fails without one.
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use handler_ferry::ffi::{
    iovec, sts, CfgData, ListNode, TcmuDevice, TcmulibCfgInfo, TcmulibCmd, TcmurCmd, TcmurHandler,
    SENSE_BUFFERSIZE,
};

type DevNewFn = unsafe extern "C" fn(*const c_char, u32, u64) -> *mut TcmuDevice;
type WaitFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type CountFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type ForgetFn = unsafe extern "C" fn(*mut c_void);
type DevBoolFn = unsafe extern "C" fn(*mut TcmuDevice) -> bool;
type DevU32Fn = unsafe extern "C" fn(*mut TcmuDevice) -> u32;
type DevPtrFn = unsafe extern "C" fn(*mut TcmuDevice) -> *mut c_void;
type HandlerFn = unsafe extern "C" fn() -> *mut TcmurHandler;

struct Fake {
    handler: &'static TcmurHandler,
    dev_new: DevNewFn,
    wait: WaitFn,
    completions: CountFn,
    forget: ForgetFn,
    write_cache: DevBoolFn,
    unmap_gran: DevU32Fn,
    unmap_align: DevU32Fn,
    split_unmaps: DevBoolFn,
    private: DevPtrFn,
    run_dir: PathBuf,
}

// SAFETY: function addresses and the leaked, immutable handler struct.
unsafe impl Sync for Fake {}
// SAFETY: as above.
unsafe impl Send for Fake {}

fn compile_fake(dir: &Path) -> PathBuf {
    let so = dir.join("fake_tcmu.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake/fake_tcmu.c");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-lpthread")
        .status();
    match status {
        Ok(s) if s.success() => so,
        Ok(s) => panic!("compiling the fake tcmu-runner failed: {s}"),
        Err(e) => panic!("no C compiler ({e}): run scripts/setup.sh (it installs one)"),
    }
}

fn sym<T: Copy>(lib: *mut c_void, name: &CStr) -> T {
    // SAFETY: dlsym on a handle we opened; the symbol is checked non-null
    // and has the signature T (see fake_tcmu.c).
    unsafe {
        let p = libc::dlsym(lib, name.as_ptr());
        assert!(!p.is_null(), "fake lacks {name:?}");
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        std::mem::transmute_copy::<*mut c_void, T>(&p)
    }
}

/// Loads the fake runner and the handler once per process.
fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let so = compile_fake(&dir);
        let run_dir = dir.join("run");
        std::env::set_var("FERRY_RUN_DIR", &run_dir);
        let path = CString::new(so.to_str().unwrap()).unwrap();
        // SAFETY: loading our own test library; never closed.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(!lib.is_null(), "dlopen of the fake failed");
        assert_eq!(handler_ferry::shim::handler_init(), 0);
        let handler: HandlerFn = sym(lib, c"fake_handler");
        // SAFETY: the handler registered by handler_init, leaked by it.
        let handler = unsafe { &*handler() };
        Fake {
            handler,
            dev_new: sym(lib, c"fake_dev_new"),
            wait: sym(lib, c"fake_wait"),
            completions: sym(lib, c"fake_completions"),
            forget: sym(lib, c"fake_forget"),
            write_cache: sym(lib, c"fake_dev_write_cache"),
            unmap_gran: sym(lib, c"fake_dev_unmap_gran"),
            unmap_align: sym(lib, c"fake_dev_unmap_align"),
            split_unmaps: sym(lib, c"fake_dev_split_unmaps"),
            private: sym(lib, c"fake_dev_private"),
            run_dir,
        }
    })
}

/// A command as tcmu-runner hands it over: a `tcmulib_cmd` with its CDB
/// and iovec, wrapped by a `tcmur_cmd` at a misaligned address.
struct Cmd {
    buf: Vec<u8>,
    at: usize,
    lib: Box<TcmulibCmd>,
    _cdb: Vec<u8>,
    iov: Vec<iovec>,
    segs: Vec<Vec<u8>>,
}

impl Cmd {
    fn new(cdb: &[u8], segs: Vec<Vec<u8>>) -> Box<Cmd> {
        let mut cdb = cdb.to_vec();
        let mut segs = segs;
        let mut iov: Vec<iovec> = segs
            .iter_mut()
            .map(|s| iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut lib = Box::new(TcmulibCmd {
            cmd_id: 1,
            cdb: cdb.as_mut_ptr(),
            iovec: iov.as_mut_ptr(),
            iov_cnt: iov.len(),
            sense_buf: [0; SENSE_BUFFERSIZE],
            hm_private: std::ptr::null_mut(),
        });
        let size = std::mem::size_of::<TcmurCmd>();
        let mut buf = vec![0u8; size + 16];
        // An address that is 8-aligned plus 2, like after a 10-byte CDB.
        let at = (8 - (buf.as_ptr() as usize % 8)) % 8 + 2;
        let tcmur = TcmurCmd {
            lib_cmd: &mut *lib,
            iovec: iov.as_mut_ptr(),
            iov_cnt: iov.len(),
            iov_base_copy: std::ptr::null_mut(),
            cmd_state: std::ptr::null_mut(),
            requested: 0,
            cmds_list_entry: ListNode {
                next: std::ptr::null_mut(),
                prev: std::ptr::null_mut(),
            },
            // SAFETY: plain integers.
            start_time: unsafe { std::mem::zeroed() },
            timed_out: false,
            done: None,
        };
        // SAFETY: `at + size` is within `buf`; the write is unaligned.
        unsafe {
            std::ptr::write_unaligned(buf.as_mut_ptr().add(at).cast::<TcmurCmd>(), tcmur);
        }
        Box::new(Cmd {
            buf,
            at,
            lib,
            _cdb: cdb,
            iov,
            segs,
        })
    }

    fn ptr(&mut self) -> *mut TcmurCmd {
        // SAFETY: within `buf`.
        unsafe { self.buf.as_mut_ptr().add(self.at).cast() }
    }

    fn iov(&mut self) -> (*mut iovec, usize) {
        (self.iov.as_mut_ptr(), self.iov.len())
    }

    fn len(&self) -> usize {
        self.segs.iter().map(Vec::len).sum()
    }

    fn data(&self) -> Vec<u8> {
        self.segs.concat()
    }

    fn sense(&self) -> &[u8] {
        &self.lib.sense_buf
    }
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

struct Dev {
    f: &'static Fake,
    dev: *mut TcmuDevice,
    path: PathBuf,
    /// The device's logical block size, as tcmu-runner reports it.
    block: u64,
    _dir: tempfile::TempDir,
}

impl Dev {
    /// A volume of `size` bytes and a device of `lun_size` bytes on it,
    /// in 512-byte blocks.
    fn new(f: &'static Fake, size: u64, lun_size: u64) -> Dev {
        Dev::with_blocks(f, size, lun_size, 512)
    }

    /// As [`Dev::new`], with logical blocks of `block` bytes (tcmu-runner
    /// takes it from the backstore's `hw_block_size`).
    fn with_blocks(f: &'static Fake, size: u64, lun_size: u64, block: u32) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        ferry_host::VolumeSpec::parse(path.to_str().unwrap())
            .unwrap()
            .create(size, None)
            .unwrap();
        let cfg = CString::new(format!("ferry/{}", path.display())).unwrap();
        // SAFETY: the fake copies the string.
        let dev = unsafe { (f.dev_new)(cfg.as_ptr(), block, lun_size / u64::from(block)) };
        Dev {
            f,
            dev,
            path,
            block: u64::from(block),
            _dir: dir,
        }
    }

    fn open(&self) -> c_int {
        // SAFETY: a fake device, as tcmu-runner would pass it.
        unsafe { (self.f.handler.open.unwrap())(self.dev, false) }
    }

    fn close(&self) {
        // SAFETY: as above.
        unsafe { (self.f.handler.close.unwrap())(self.dev) }
    }

    /// Waits for `cmd`'s completion (after a callout returned OK).
    fn wait(&self, cmd: &mut Cmd) -> c_int {
        let p = cmd.ptr().cast();
        // SAFETY: fake functions over a pointer they only compare.
        let status = unsafe { (self.f.wait)(p, 10_000) };
        assert_ne!(status, -1000, "no completion within 10 s");
        status
    }

    /// Runs an async callout: it must queue (OK), then complete once.
    fn run(
        &self,
        cmd: &mut Cmd,
        call: impl FnOnce(*mut TcmuDevice, *mut TcmurCmd) -> c_int,
    ) -> c_int {
        let queued = call(self.dev, cmd.ptr());
        assert_eq!(queued, sts::OK, "the callout did not queue");
        let status = self.wait(cmd);
        std::thread::sleep(std::time::Duration::from_millis(5));
        // SAFETY: as in wait.
        assert_eq!(unsafe { (self.f.completions)(cmd.ptr().cast()) }, 1);
        // Counted: a later command allocated at the same address (this
        // one's is freed when the test drops it) starts from none.
        // SAFETY: as in wait.
        unsafe { (self.f.forget)(cmd.ptr().cast()) };
        status
    }

    /// WRITE(10) of `data` at byte `off` through the write callout (the
    /// callout gets the byte offset; the CDB carries LBA and blocks).
    fn write(&self, off: u64, data: Vec<Vec<u8>>) -> c_int {
        let blocks = data.iter().map(Vec::len).sum::<usize>() as u64 / self.block;
        // Narrowing: the tests' LUNs are far below 2^32 blocks.
        let mut cmd = Cmd::new(&cdb10(0x2a, (off / self.block) as u32, blocks as u16), data);
        let (iov, cnt) = cmd.iov();
        let len = cmd.len();
        let w = self.f.handler.write.unwrap();
        // SAFETY: the callout's arguments, as tcmu-runner passes them.
        self.run(&mut cmd, |d, c| unsafe {
            w(d, c, iov, cnt, len, off as i64)
        })
    }

    fn read(&self, off: u64, segs: &[usize]) -> (c_int, Vec<u8>) {
        let total: usize = segs.iter().sum();
        // Narrowing: as in write.
        let mut cmd = Cmd::new(
            &cdb10(
                0x28,
                (off / self.block) as u32,
                (total as u64 / self.block) as u16,
            ),
            segs.iter().map(|&n| vec![0xee; n]).collect(),
        );
        let (iov, cnt) = cmd.iov();
        let r = self.f.handler.read.unwrap();
        // SAFETY: as above.
        let status = self.run(&mut cmd, |d, c| unsafe {
            r(d, c, iov, cnt, total, off as i64)
        });
        (status, cmd.data())
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[test]
fn reads_and_writes_complete_asynchronously() {
    let f = fake();
    let d = Dev::new(f, 1 << 20, 1 << 20);
    assert_eq!(d.open(), 0);
    // SAFETY: fake getters over the fake device.
    unsafe {
        assert!((f.write_cache)(d.dev), "write cache on");
        assert_eq!((f.unmap_gran)(d.dev), 8);
        assert_eq!((f.unmap_align)(d.dev), 8);
        assert!(!(f.split_unmaps)(d.dev));
    }
    assert_eq!(d.write(4096, vec![vec![1; 512], vec![2; 1536]]), sts::OK);
    let file = d.file();
    assert!(file[4096..4608].iter().all(|&b| b == 1));
    assert!(file[4608..6144].iter().all(|&b| b == 2));
    let (status, data) = d.read(4096, &[1000, 24, 1024]);
    assert_eq!(status, sts::OK);
    assert_eq!(&data[..], &file[4096..6144]);
    // Past the end: LBA OUT OF RANGE, as a status libtcmu turns into sense.
    let (status, _) = d.read((1 << 20) - 512, &[1024]);
    assert_eq!(status, sts::RANGE);

    let mut cmd = Cmd::new(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![]);
    let flush = f.handler.flush.unwrap();
    // SAFETY: as above.
    assert_eq!(d.run(&mut cmd, |dv, c| unsafe { flush(dv, c) }), sts::OK);

    let mut cmd = Cmd::new(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], vec![]);
    let unmap = f.handler.unmap.unwrap();
    // SAFETY: as above.
    let status = d.run(&mut cmd, |dv, c| unsafe { unmap(dv, c, 4096, 1024) });
    assert_eq!(status, sts::OK);
    assert!(d.file()[4096..5120].iter().all(|&b| b == 0));
    d.close();
}

#[test]
fn write_same_and_compare_and_write_use_the_cdb() {
    let f = fake();
    let d = Dev::new(f, 1 << 20, 1 << 20);
    assert_eq!(d.open(), 0);
    // WRITE SAME(10) with LBDATA over LBAs 8..12.
    let mut cmd = Cmd::new(&[0x41, 0x02, 0, 0, 0, 8, 0, 0, 4, 0], vec![vec![0xab; 512]]);
    let (iov, cnt) = cmd.iov();
    let ws = f.handler.writesame.unwrap();
    // SAFETY: as tcmu-runner calls it.
    let status = d.run(&mut cmd, |dv, c| unsafe {
        ws(dv, c, 8 * 512, 4 * 512, iov, cnt)
    });
    assert_eq!(status, sts::OK);
    let file = d.file();
    for lba in 8u32..12 {
        let b = &file[lba as usize * 512..][..512];
        assert_eq!(&b[..4], &lba.to_be_bytes());
        assert!(b[4..].iter().all(|&x| x == 0xab));
    }

    let mut caw_cdb = vec![0u8; 16];
    caw_cdb[0] = 0x89;
    caw_cdb[9] = 8;
    caw_cdb[13] = 1;
    let mut compare = file[8 * 512..9 * 512].to_vec();
    let caw = f.handler.caw.unwrap();
    let mut cmd = Cmd::new(&caw_cdb, vec![compare.clone(), vec![0x5a; 512]]);
    let (iov, cnt) = cmd.iov();
    // SAFETY: as above.
    let status = d.run(&mut cmd, |dv, c| unsafe {
        caw(dv, c, 8 * 512, 512, iov, cnt)
    });
    assert_eq!(status, sts::OK);
    assert!(d.file()[8 * 512..9 * 512].iter().all(|&b| b == 0x5a));
    // A stale compare half: MISCOMPARE with the offset of the first
    // difference, as sense the handler fills in.
    compare[0] = 0x5a;
    let mut cmd = Cmd::new(&caw_cdb, vec![compare, vec![0x11; 512]]);
    let (iov, cnt) = cmd.iov();
    // SAFETY: as above.
    let status = d.run(&mut cmd, |dv, c| unsafe {
        caw(dv, c, 8 * 512, 512, iov, cnt)
    });
    assert_eq!(status, sts::PASSTHROUGH_ERR);
    let s = cmd.sense();
    assert_eq!((s[0], s[2], s[12], s[13]), (0xf0, 0x0e, 0x1d, 0x00));
    assert_eq!(&s[3..7], &1u32.to_be_bytes());
    assert!(d.file()[8 * 512..9 * 512].iter().all(|&b| b == 0x5a));
    d.close();
}

/// A backstore with `hw_block_size=4096`: tcmu-runner reports 4096-byte
/// blocks, and every path of the handler counts in them. The data is
/// placed at byte LBA * 4096 of the volume (not LBA * 512), and the
/// commands the handler range-checks itself refuse one block past the
/// end of a LUN of 2048 blocks, where blocks of 512 bytes would still be
/// within it.
#[test]
fn a_lun_of_4096_byte_blocks_places_data_by_4096_and_refuses_past_the_end() {
    const BLOCK: usize = 4096;
    // 8 MiB: 2048 blocks of 4096 bytes.
    const BLOCKS: u64 = 2048;
    let f = fake();
    let size = BLOCKS * BLOCK as u64;
    let d = Dev::with_blocks(f, size, size, 4096);
    assert_eq!(d.open(), 0);
    // SAFETY: fake getters over the fake device.
    unsafe {
        // The 4 KiB unmap granularity is one block now.
        assert_eq!((f.unmap_gran)(d.dev), 1);
        assert_eq!((f.unmap_align)(d.dev), 1);
    }
    let at = |lba: u64| (lba * BLOCK as u64) as usize;

    // WRITE of LBAs 5 and 6 in segments that do not follow the blocks.
    let data: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 251) as u8).collect();
    let segs = vec![data[..1000].to_vec(), data[1000..].to_vec()];
    assert_eq!(d.write(5 * 4096, segs), sts::OK);
    let file = d.file();
    assert_eq!(&file[at(5)..at(7)], &data[..], "at byte LBA * 4096");
    assert!(
        file[..at(5)].iter().all(|&b| b == 0),
        "nothing before LBA 5"
    );
    assert!(file[at(7)..].iter().all(|&b| b == 0), "nothing after LBA 6");
    let (status, got) = d.read(5 * 4096, &[4000, 96, 4096]);
    assert_eq!(status, sts::OK);
    assert_eq!(got, data);

    // The last block, written and read back; one block past it and a read
    // across the end are refused, and the file does not grow.
    let last = vec![0x6c; BLOCK];
    assert_eq!(d.write((BLOCKS - 1) * 4096, vec![last.clone()]), sts::OK);
    assert_eq!(&d.file()[at(BLOCKS - 1)..], &last[..]);
    let (status, got) = d.read((BLOCKS - 1) * 4096, &[BLOCK]);
    assert_eq!((status, got), (sts::OK, last));
    assert_eq!(d.read(BLOCKS * 4096, &[BLOCK]).0, sts::RANGE);
    assert_eq!(d.read((BLOCKS - 1) * 4096, &[2 * BLOCK]).0, sts::RANGE);
    assert_eq!(d.write(BLOCKS * 4096, vec![vec![0x77; BLOCK]]), sts::RANGE);
    assert_eq!(d.file().len() as u64, size, "the file did not grow");

    // Commands the handler range-checks from the CDB, in 4096-byte blocks:
    // the last block is in range, one more is not.
    let hc = f.handler.handle_cmd.unwrap();
    let call = |cdb: &[u8], segs: Vec<Vec<u8>>| {
        let mut cmd = Cmd::new(cdb, segs);
        // SAFETY: as tcmu-runner calls it; handle_cmd is synchronous.
        let status = unsafe { hc(d.dev, cmd.ptr()) };
        (status, cmd.sense().to_vec())
    };
    let last_lba = (BLOCKS - 1) as u32;
    assert_eq!(call(&cdb10(0x34, last_lba, 1), vec![]).0, sts::OK); // PRE-FETCH
    assert_eq!(call(&cdb10(0x34, last_lba, 2), vec![]).0, sts::RANGE);
    assert_eq!(call(&cdb10(0x34, last_lba + 1, 1), vec![]).0, sts::RANGE);
    // VERIFY with BYTCHK compares 4096-byte blocks; the MISCOMPARE offset
    // counts bytes.
    let mut verify = cdb10(0x2f, 5, 2);
    verify[1] = 0x02;
    assert_eq!(call(&verify, vec![data.clone()]).0, sts::OK);
    let mut other = data.clone();
    other[BLOCK + 7] ^= 0xff;
    let (status, sense) = call(&verify, vec![other]);
    assert_eq!(status, sts::PASSTHROUGH_ERR);
    assert_eq!((sense[2] & 0x0f, sense[12]), (0x0e, 0x1d));
    assert_eq!(&sense[3..7], &(BLOCK as u32 + 7).to_be_bytes());
    let mut verify = cdb10(0x2f, last_lba, 2);
    verify[1] = 0x02;
    assert_eq!(call(&verify, vec![vec![0; 2 * BLOCK]]).0, sts::RANGE);

    // WRITE SAME(10) with LBDATA over the last 4 blocks: one 4096-byte
    // block of data-out, each block stamped with its LBA at LBA * 4096.
    let ws = f.handler.writesame.unwrap();
    let same = |lba: u32, n: u16| {
        let mut cdb = cdb10(0x41, lba, n);
        cdb[1] = 0x02;
        let mut cmd = Cmd::new(&cdb, vec![vec![0xab; BLOCK]]);
        let (iov, cnt) = cmd.iov();
        let (off, len) = (u64::from(lba) * 4096, u64::from(n) * 4096);
        // SAFETY: as tcmu-runner calls it.
        d.run(&mut cmd, |dv, c| unsafe { ws(dv, c, off, len, iov, cnt) })
    };
    assert_eq!(same(last_lba - 3, 4), sts::OK);
    let file = d.file();
    for lba in BLOCKS - 4..BLOCKS {
        let b = &file[at(lba)..at(lba + 1)];
        // Narrowing: LBAs of this LUN fit in 32 bits.
        assert_eq!(&b[..4], &(lba as u32).to_be_bytes(), "LBA {lba}");
        assert!(b[4..].iter().all(|&x| x == 0xab), "LBA {lba}");
    }
    assert_eq!(same(last_lba - 2, 4), sts::RANGE);
    assert_eq!(d.file(), file, "a refused WRITE SAME writes nothing");

    // COMPARE AND WRITE of the last block: 8192 bytes of data-out.
    let mut caw_cdb = vec![0u8; 16];
    caw_cdb[0] = 0x89;
    caw_cdb[2..10].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    caw_cdb[13] = 1;
    let caw = f.handler.caw.unwrap();
    let caw_with = |compare: Vec<u8>, write: Vec<u8>| {
        let mut cmd = Cmd::new(&caw_cdb, vec![compare, write]);
        let (iov, cnt) = cmd.iov();
        let off = (BLOCKS - 1) * 4096;
        // SAFETY: as tcmu-runner calls it.
        let status = d.run(&mut cmd, |dv, c| unsafe { caw(dv, c, off, 4096, iov, cnt) });
        (status, cmd.sense().to_vec())
    };
    let current = file[at(BLOCKS - 1)..].to_vec();
    assert_eq!(caw_with(current.clone(), vec![0x5a; BLOCK]).0, sts::OK);
    assert!(d.file()[at(BLOCKS - 1)..].iter().all(|&b| b == 0x5a));
    // Stale now: MISCOMPARE at byte 0 of the block, nothing written.
    let (status, sense) = caw_with(current, vec![0x11; BLOCK]);
    assert_eq!(status, sts::PASSTHROUGH_ERR);
    assert_eq!((sense[2] & 0x0f, sense[12]), (0x0e, 0x1d));
    assert_eq!(&sense[3..7], &0u32.to_be_bytes());
    assert!(d.file()[at(BLOCKS - 1)..].iter().all(|&b| b == 0x5a));

    // UNMAP of LBA 5 (tcmu-runner passes bytes: LBA * 4096, one block):
    // LBA 5 reads back zeroes, LBA 6 keeps its data.
    let mut cmd = Cmd::new(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], vec![]);
    let unmap = f.handler.unmap.unwrap();
    // SAFETY: as above.
    let status = d.run(&mut cmd, |dv, c| unsafe { unmap(dv, c, 5 * 4096, 4096) });
    assert_eq!(status, sts::OK);
    let file = d.file();
    assert!(file[at(5)..at(6)].iter().all(|&b| b == 0));
    assert_eq!(&file[at(6)..at(7)], &data[BLOCK..]);
    d.close();
}

#[test]
fn handle_cmd_takes_only_what_tcmu_runner_lacks() {
    let f = fake();
    let d = Dev::new(f, 1 << 20, 1 << 20);
    assert_eq!(d.open(), 0);
    assert_eq!(d.write(0, vec![vec![7; 512]]), sts::OK);
    let hc = f.handler.handle_cmd.unwrap();
    let call = |cdb: &[u8], segs: Vec<Vec<u8>>| {
        let mut cmd = Cmd::new(cdb, segs);
        // SAFETY: as tcmu-runner calls it; handle_cmd is synchronous.
        let status = unsafe { hc(d.dev, cmd.ptr()) };
        (status, cmd.sense().to_vec())
    };
    assert_eq!(
        call(&cdb10(0x28, 0, 1), vec![vec![0; 512]]).0,
        sts::NOT_HANDLED
    );
    assert_eq!(call(&cdb10(0x34, 0, 8), vec![]).0, sts::OK); // PRE-FETCH
    assert_eq!(call(&cdb10(0x34, 2047, 8), vec![]).0, sts::RANGE);
    let mut verify = cdb10(0x2f, 0, 1);
    verify[1] = 0x02; // BYTCHK
    assert_eq!(call(&verify, vec![vec![7; 512]]).0, sts::OK);
    let (status, sense) = call(&verify, vec![vec![8; 512]]);
    assert_eq!(status, sts::PASSTHROUGH_ERR);
    assert_eq!((sense[2], sense[12]), (0x0e, 0x1d));
    d.close();
}

#[test]
fn open_close_reconfig_and_check_config() {
    let f = fake();
    let h = f.handler;
    // The LUN may not be larger than the volume.
    let big = Dev::new(f, 1 << 20, 2 << 20);
    assert_eq!(big.open(), -libc::EINVAL);

    let d = Dev::new(f, 1 << 20, 1 << 20);
    let cfg = CString::new(format!("ferry/{}", d.path.display())).unwrap();
    let check = |cfg: &CStr| -> Result<(), String> {
        let mut reason: *mut c_char = std::ptr::null_mut();
        // SAFETY: as tcmu-runner calls it; the reason is malloc'd.
        let ok = unsafe { (h.check_config.unwrap())(cfg.as_ptr(), &mut reason) };
        if ok {
            return Ok(());
        }
        assert!(!reason.is_null(), "a refusal comes with a reason");
        // SAFETY: a C string we own, freed as tcmu-runner frees it.
        let msg = unsafe { CStr::from_ptr(reason).to_string_lossy().into_owned() };
        // SAFETY: as above.
        unsafe { libc::free(reason.cast()) };
        Err(msg)
    };
    check(&cfg).unwrap();
    assert!(check(c"ferry/rel.img").unwrap_err().contains("relative"));
    assert!(check(c"ferry//nonexistent/v.img")
        .unwrap_err()
        .contains("does not exist"));

    assert_eq!(d.open(), 0);
    assert!(check(&cfg).unwrap_err().contains("already served"));
    let reconfig = h.reconfig.unwrap();
    let req = |type_: c_int, data: CfgData| {
        let mut info = TcmulibCfgInfo { type_, data };
        // SAFETY: as libtcmu calls it.
        unsafe { reconfig(d.dev, &mut info) }
    };
    assert_eq!(req(1, CfgData { dev_size: 2 << 20 }), -libc::EINVAL);
    assert_eq!(
        req(
            1,
            CfgData {
                dev_size: 512 << 10
            }
        ),
        0
    );
    assert_eq!(req(2, CfgData { write_cache: false }), 0);
    // SAFETY: fake getter.
    assert!(!unsafe { (f.write_cache)(d.dev) });
    let other = CString::new("ferry//elsewhere.img").unwrap();
    assert_eq!(
        req(
            0,
            CfgData {
                dev_cfgstring: other.as_ptr().cast_mut()
            }
        ),
        -libc::EINVAL
    );
    assert_eq!(
        req(
            0,
            CfgData {
                dev_cfgstring: cfg.as_ptr().cast_mut()
            }
        ),
        0
    );
    // With the write cache off every write is flushed; it still completes.
    assert_eq!(d.write(0, vec![vec![3; 512]]), sts::OK);

    d.close();
    // SAFETY: fake getter.
    let private = unsafe { (f.private)(d.dev) };
    assert!(private.is_null(), "close reclaims the state");
    check(&cfg).unwrap();
    // Closed: the volume's lock is released, and it opens again; an open
    // without a close first closes what the device had.
    assert_eq!(d.open(), 0);
    assert_eq!(d.open(), 0);
    d.close();
}

#[test]
fn null_pointers_are_refused_not_dereferenced() {
    let f = fake();
    let h = f.handler;
    let null_dev = std::ptr::null_mut();
    let null_cmd = std::ptr::null_mut();
    // SAFETY: every callout checks its pointers first.
    unsafe {
        assert!(!(h.check_config.unwrap())(
            std::ptr::null(),
            std::ptr::null_mut()
        ));
        assert_eq!((h.open.unwrap())(null_dev, false), -libc::EINVAL);
        (h.close.unwrap())(null_dev);
        assert_eq!(
            (h.read.unwrap())(null_dev, null_cmd, std::ptr::null_mut(), 0, 0, 0),
            sts::HW_ERR
        );
        assert_eq!((h.flush.unwrap())(null_dev, null_cmd), sts::HW_ERR);
        assert_eq!(
            (h.handle_cmd.unwrap())(null_dev, null_cmd),
            sts::NOT_HANDLED
        );
        assert_eq!(
            (h.reconfig.unwrap())(null_dev, std::ptr::null_mut()),
            -libc::EINVAL
        );
    }
}

#[test]
fn the_control_socket_migrates_a_served_device() {
    use ferry_host::control::{call, Request};
    let f = fake();
    let d = Dev::new(f, 8 << 20, 8 << 20);
    assert_eq!(d.open(), 0);
    assert_eq!(d.write(0, vec![vec![0x42; 4096]]), sts::OK);
    let sock = std::fs::read_dir(&f.run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("a control socket");
    let spec = d.path.display().to_string();
    let target = d.path.with_extension("new").display().to_string();
    let resp = call(
        &sock,
        &Request::Start {
            volume: spec.clone(),
            target: target.clone(),
            options: Default::default(),
        },
    )
    .unwrap();
    assert!(resp.ok, "{resp:?}");
    // Writes keep completing while the copier runs.
    assert_eq!(d.write(8192, vec![vec![0x43; 4096]]), sts::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let resp = call(
            &sock,
            &Request::Status {
                volume: spec.clone(),
            },
        )
        .unwrap();
        let state = resp.progress.map(|p| p.state);
        if state == Some(ferry_core::MigrationState::Copied) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not copied: {state:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let resp = call(
        &sock,
        &Request::Commit {
            volume: spec,
            remove_source: false,
        },
    )
    .unwrap();
    assert!(resp.ok, "{resp:?}");
    let (status, data) = d.read(0, &[12288]);
    assert_eq!(status, sts::OK);
    assert!(data[..4096].iter().all(|&b| b == 0x42));
    assert!(data[8192..].iter().all(|&b| b == 0x43));
    let t = std::fs::read(&target).unwrap();
    assert_eq!(&t[..12288], &data[..]);
    d.close();
}
