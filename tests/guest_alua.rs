//! Gateway failover the initiator does not notice, end to end in the QEMU
//! test guest: two tgtd gateway nodes with their agents on one file map
//! export one LUN, open-iscsi logs in to both portals and dm-multipath
//! (scsi_dh_alua, the README's multipath.conf device section) makes one
//! device of them; fio writes and verifies on it while the owner node is
//! SIGKILLed, while it rejoins, and across a planned move. The checks run
//! inside the guest (`scripts/guest/alua-multipath.sh`, whose header lists
//! them); the measured pauses are printed with the guest's log.
//!
//! `#[ignore]`d like the other guest test (see `common::guest`);
//! `scripts/test.sh` runs it. A run takes about two minutes.
mod common;

use std::path::Path;

use common::guest;

#[test]
#[ignore = "boots a QEMU guest for about 2 minutes (root, QEMU, debootstrap): scripts/test.sh runs it"]
fn dm_multipath_rides_through_a_gateway_kill_and_a_planned_move() {
    let plugin = common::target_dir().join("libbs_ferry.so");
    assert!(
        plugin.exists(),
        "{} is not built: run `cargo build --workspace`",
        plugin.display()
    );
    let log = guest::run(
        "alua-multipath.sh",
        &[
            (plugin, "libbs_ferry.so"),
            (
                Path::new(env!("CARGO_BIN_EXE_ferry")).to_path_buf(),
                "ferry",
            ),
        ],
        400,
        &[
            "agent-a.log",
            "agent-b.log",
            "multipathd.log",
            "fio.out",
            "tgtd-b.log",
        ],
    );
    assert!(log.contains("longest I/O"), "{log}");
}
