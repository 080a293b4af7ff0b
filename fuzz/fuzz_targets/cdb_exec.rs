//! CDB parsing and execution: `ferry_scsi::parse` then `ferry_scsi::execute`
//! on an in-memory volume, with the data-out buffer and data-in allocation
//! the initiator chose, up to eight commands on one volume.
//!
//! Input: the LUN (`LunSetup`, two bytes), then commands as
//! `ferry_fuzz::put_command` writes them. Checks besides "no panic": the
//! executor fills no more than the data-in buffer, sense data round-trips
//! through its fixed format, and the front-ends' helpers for REPORT
//! SUPPORTED OPERATION CODES and sense field pointers take any bytes.
#![no_main]

use ferry_core::Volume;
use ferry_fuzz::{Input, LunSetup, MAX_COMMANDS};
use ferry_scsi::cdb::{
    is_get_lba_status, is_report_supported_opcodes, report_opcodes_refused_field,
};
use ferry_scsi::sense::{key_and_asc, point_at_cdb_field};
use ferry_scsi::{execute, parse};
use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = LunSetup::read(&mut input);
    let (vol, faults) = setup.volume();
    let caw = Mutex::new(());
    let lun = setup.context(vol.as_ref(), &caw);
    for _ in 0..MAX_COMMANDS {
        if input.is_empty() {
            break;
        }
        let flags = input.u8();
        let cdb_len = usize::from(input.u8() % 33);
        let cdb = input.take(cdb_len);
        let in_len = usize::from(input.u16());
        let data_out = input.field();
        if flags & 1 != 0 {
            faults.arm(0);
        } else {
            faults.disarm();
        }

        // What the front-ends ask of any CDB before routing it.
        let _ = is_get_lba_status(cdb);
        let rsoc = is_report_supported_opcodes(cdb);
        let has_actions = match flags >> 6 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        let field = report_opcodes_refused_field(cdb, in_len as u32, has_actions); // u16 widened

        let mut data_in = vec![0u8; in_len];
        let sense = match parse(cdb) {
            Ok(Some(cmd)) => match execute(&lun, &cmd, data_out, &mut data_in) {
                Ok(n) => {
                    assert!(n <= data_in.len(), "{cmd:?} filled {n} of {in_len} bytes");
                    None
                }
                Err(s) => Some(s),
            },
            Ok(None) => None,
            Err(s) => Some(s),
        };
        if let Some(s) = sense {
            let fixed = s.fixed();
            assert_eq!(
                key_and_asc(&fixed, fixed.len()),
                Some((s.key & 0x0f, s.asc)),
                "{s:?}"
            );
            let mut buf = [0u8; 252];
            buf[..fixed.len()].copy_from_slice(&fixed);
            let n = point_at_cdb_field(&mut buf, fixed.len(), field);
            assert!(n <= buf.len());
            if rsoc {
                assert_eq!(key_and_asc(&buf, n), Some((s.key & 0x0f, s.asc)));
            }
        }
        // Sense data as a SCSI core hands it over: any bytes, any length.
        let mut raw = data_out.to_vec();
        let len = in_len % (raw.len() + 1);
        let _ = key_and_asc(&raw, len);
        let n = point_at_cdb_field(&mut raw, len, field);
        assert!(n <= raw.len().max(len));
    }
    faults.disarm();
    assert_eq!(vol.contents().len() as u64, vol.size());
});
