//! A file volume's resize cut at its one durable step
//! (`faults::RESIZE`): refused there, the LUN keeps serving at the old
//! size and reopens at it with every byte; let through, it reopens at
//! the new size. The step is ftruncate then fsync, one metadata update:
//! a crash (process or power) after it leaves the new length, before it
//! the old one, so these two cases are all there is.
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_core::{faults, Volume};
use ferry_host::Lun;

/// Records each step; refuses the ones named in `refuse`.
struct Steps {
    seen: Mutex<Vec<&'static str>>,
    refuse: Mutex<Vec<&'static str>>,
}

impl ferry_file::steps::StepHook for Steps {
    fn before(&self, point: &'static str, _: &Path) -> io::Result<()> {
        self.seen.lock().unwrap().push(point);
        if self.refuse.lock().unwrap().contains(&point) {
            return Err(io::Error::other(format!("crashed at {point}")));
        }
        Ok(())
    }
}

fn data() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_resize_cut_at_its_step_keeps_the_old_size_and_one_let_through_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.img");
    ferry_file::FileVolume::create(&path, 1 << 20).unwrap();
    let spec = format!("file:{}", path.display());
    let steps = Arc::new(Steps {
        seen: Mutex::new(Vec::new()),
        refuse: Mutex::new(vec![faults::VOLUME_RESIZE]),
    });
    let _hook = ferry_file::steps::install(dir.path(), steps.clone());
    let lun = Lun::open(&spec).unwrap();
    lun.write_at(&data(), 0).unwrap();
    lun.flush().unwrap();

    let err = lun.set_size(2 << 20, false).unwrap_err().to_string();
    assert!(err.contains("crashed at volume.resize"), "{err}");
    assert_eq!(lun.size(), 1 << 20);
    assert_eq!(lun.capacity_blocks(), 2048);
    assert_eq!(lun.capacity_changes(), 0);
    let mut back = vec![0u8; 1 << 20];
    lun.read_at(&mut back, 0).unwrap();
    assert_eq!(back, data());
    drop(lun);
    let lun = Lun::open(&spec).unwrap();
    assert_eq!(lun.size(), 1 << 20);

    steps.refuse.lock().unwrap().clear();
    assert_eq!(lun.set_size(2 << 20, false).unwrap(), 1 << 20);
    assert_eq!(
        (lun.size(), lun.capacity_blocks(), lun.capacity_changes()),
        (2 << 20, 4096, 1)
    );
    lun.write_at(&[7u8; 4096], (2 << 20) - 4096).unwrap();
    drop(lun);
    let lun = Lun::open(&spec).unwrap();
    assert_eq!(lun.size(), 2 << 20);
    let mut back = vec![0u8; 2 << 20];
    lun.read_at(&mut back, 0).unwrap();
    assert_eq!(&back[..1 << 20], &data()[..]);
    assert!(back[1 << 20..(2 << 20) - 4096].iter().all(|&b| b == 0));
    assert!(back[(2 << 20) - 4096..].iter().all(|&b| b == 7));

    // Every step seen is in the list, and the list was covered.
    let seen = steps.seen.lock().unwrap().clone();
    for p in faults::RESIZE {
        assert!(seen.contains(p), "{p} never reached");
    }
    for p in seen.iter().filter(|p| **p != faults::VOLUME_OPEN_SYNC_DIR) {
        assert!(faults::RESIZE.contains(p), "{p} is not in faults::RESIZE");
    }
}
