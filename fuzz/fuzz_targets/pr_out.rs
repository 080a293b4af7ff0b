//! Persistent reservations: PR OUT parameter lists and CDBs through
//! `Reservations::serve_out`, interleaved with PR IN, reservation checks of
//! other commands and administrators' clears, from four initiator ports,
//! starting from an empty state or from a saved document.
//!
//! Input: byte 0 bit 0 set: a u16-prefixed saved document follows
//! (`Reservations::load`, as a gateway reads shared storage), then records
//! as `ferry_fuzz::put_pr_step` writes them. Checks besides "no panic":
//! every saved form decodes to the state it came from, PR IN fills no more
//! than its buffer, and READ FULL STATUS gives TransportIDs that parse
//! back to the registered ports.
#![no_main]

use ferry_fuzz::{pr_step, Input, INITIATORS, TARGET_PORT};
use ferry_pr::prin::{parse_transport_id, Report};
use ferry_pr::{Nexus, PrState, Refusal, Reservations};
use libfuzzer_sys::fuzz_target;

/// Most records one input runs.
const MAX_STEPS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let head = input.u8();
    let loaded = head & 1 != 0;
    let res = if loaded {
        match Reservations::load(Some(input.field())) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        Reservations::default()
    };
    let nexuses: Vec<Nexus> = INITIATORS
        .iter()
        .map(|i| Nexus::new(*i, TARGET_PORT))
        .collect();
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let who = input.u8();
        let nexus = &nexuses[usize::from(who & 0x03)];
        let fail_save = who & 0x80 != 0;
        let step = input.u8() % 4;
        let cdb_len = usize::from(input.u8() % 33);
        let mut cdb = input.take(cdb_len).to_vec();
        let params = input.field();
        let persist = |bytes: &[u8]| -> Result<(), ferry_pr::PrError> {
            let saved = PrState::decode(bytes).expect("a saved state decodes");
            assert_eq!(saved.encode(), bytes, "the saved form is stable");
            if fail_save {
                Err(ferry_pr::PrError::store("the fuzzer's store", "refused"))
            } else {
                Ok(())
            }
        };
        let before = res.state();
        match step {
            pr_step::OUT => {
                if let Some(op) = cdb.first_mut() {
                    *op = ferry_pr::out::OPCODE;
                }
                let r = res.serve_out(nexus, &cdb, params, &persist);
                if fail_save && r.is_err() {
                    // A failed save leaves the enforced registrations and
                    // reservation as they were.
                    let after = res.state();
                    assert_eq!(after.registrations, before.registrations);
                    assert_eq!(after.reservation, before.reservation);
                    assert_eq!(after.generation, before.generation);
                }
            }
            pr_step::IN => {
                if let Some(op) = cdb.first_mut() {
                    *op = ferry_pr::prin::OPCODE;
                }
                let mut buf = vec![0u8; params.len()];
                if let Ok(n) = res.serve_in(nexus, &cdb, &mut buf) {
                    assert!(n <= buf.len());
                }
            }
            pr_step::CHECK => match res.check(nexus, &cdb) {
                Ok(()) | Err(Refusal::Conflict) | Err(Refusal::Check(_)) => {}
            },
            _ => {
                let _ = res.replace_with(PrState::cleared, &persist);
            }
        }
        let state = res.state();
        assert_eq!(res.is_quiet(), state.is_quiet(), "{state:?}");
        // Every report builds; READ FULL STATUS names each registered port
        // by a TransportID that parses back to it.
        for report in [
            Report::ReadKeys,
            Report::ReadReservation,
            Report::ReportCapabilities,
        ] {
            let _ = state.report(report);
        }
        let full = state.report(Report::ReadFullStatus);
        let mut at = 8;
        for r in &state.registrations {
            let tid_len =
                u32::from_be_bytes(full[at + 20..at + 24].try_into().expect("4 bytes")) as usize; // ≤ u16::MAX + 4
            let tid = &full[at + 24..at + 24 + tid_len];
            // Ports named by this input (not by a loaded document, which
            // may hold any name) are ours or came from a TransportID.
            if !loaded {
                let parsed = parse_transport_id(tid).map(|(name, _)| name);
                assert_eq!(parsed.as_ref(), Some(&r.nexus.initiator), "{tid:?}");
            }
            at += 24 + tid_len;
        }
        assert_eq!(at, full.len());
    }
});
