//! End to end through the Linux kernel's target (LIO) and tcmu-runner, in
//! a QEMU guest: `handler_ferry.so` serves a ferry volume as a
//! `user:ferry` backstore configured with targetcli, open-iscsi logs in
//! over loopback, and the volume is migrated live under a verifying fio
//! load, with tcmu-runner killed and restarted mid-migration and after the
//! commit; a second backstore of 4096-byte logical blocks
//! (`control=hw_block_size=4096`) checks placement at LBA * 4096 and
//! refusal past its end. The checks run inside the guest
//! (`scripts/guest/tcmu-migrate.sh`, whose header lists them); this test
//! builds or reuses the guest image, stages the freshly built handler and
//! `ferry` binary into the share, boots the guest and reports its log.
//!
//! The test is `#[ignore]`d, as it takes minutes: a plain test run reports
//! it skipped, `scripts/test.sh` runs it (`common::guest` says what it
//! needs). A cold image build takes about a minute or two, a run 170-220 s
//! (25 s of it the 4096-byte LUN).
mod common;

use std::path::Path;

use common::guest;

#[test]
#[ignore = "boots a QEMU guest for about 3 minutes (root, QEMU, debootstrap): scripts/test.sh runs it"]
fn tcmu_runner_serves_a_live_migration_in_a_guest() {
    guest::run(
        "tcmu-migrate.sh",
        &[
            (guest::handler_so(), "libhandler_ferry.so"),
            (
                Path::new(env!("CARGO_BIN_EXE_ferry")).to_path_buf(),
                "ferry",
            ),
            (
                common::target_dir().join("libbs_ferry.so"),
                "libbs_ferry.so",
            ),
        ],
        500,
        &["tcmu-runner.log", "agent.log", "agent-t.log"],
    );
}
