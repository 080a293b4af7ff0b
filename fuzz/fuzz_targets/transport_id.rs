//! TransportIDs: `ferry_pr::prin::parse_transport_id` on any bytes, and
//! the same bytes as the TransportIDs of a REGISTER with SPEC_I_PT and of
//! a REGISTER AND MOVE parameter list (`ferry_pr::out::ProutRequest::parse`),
//! the two ways an initiator sends them.
//!
//! Input: byte 0 is the PR OUT flags byte of the REGISTER list, the rest
//! the TransportID bytes. Checks besides "no panic": a parsed TransportID
//! lies within its input, and the TransportID ferry writes for the port it
//! names (READ FULL STATUS) parses back to the same port and length.
#![no_main]

use ferry_fuzz::{prout_cdb, prout_params, Input};
use ferry_pr::out::{Action, ProutRequest, PARAMETER_LIST_LEN};
use ferry_pr::prin::{parse_transport_id, transport_id};
use ferry_pr::Nexus;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let tids = input.rest();

    if let Some((port, len)) = parse_transport_id(tids) {
        assert!((4..=tids.len()).contains(&len), "{len} of {}", tids.len());
        let ours = transport_id(&Nexus::new(port.clone(), "iqn.2026-11.org.example:t,t,0x1"));
        assert_eq!(parse_transport_id(&ours), Some((port, ours.len())));
    }

    // REGISTER with SPEC_I_PT: the basic list, the TRANSPORTID PARAMETER
    // DATA LENGTH, then the TransportIDs.
    let mut params = prout_params(0, 0x1234, flags | 0x08);
    params.extend_from_slice(&(tids.len() as u32).to_be_bytes()); // input ≤ u32::MAX
    params.extend_from_slice(tids);
    let cdb = prout_cdb(0, 0, params.len() as u32); // ≤ u32::MAX
    if let Ok(req) = ProutRequest::parse(&cdb, &params) {
        assert_eq!(req.action, Action::Register);
        for port in &req.specified {
            assert!(port.contains(",i,0x"), "{port:?}");
        }
    }

    // REGISTER AND MOVE: reserved byte, UNREG/APTPL, the relative target
    // port, the TransportID length, then the TransportID.
    let mut params = prout_params(1, 2, 0);
    params[17] = flags & 0x03;
    params[18..20].copy_from_slice(&1u16.to_be_bytes());
    params[20..24].copy_from_slice(&(tids.len() as u32).to_be_bytes()); // as above
    params.extend_from_slice(tids);
    let cdb = prout_cdb(7, 1, (PARAMETER_LIST_LEN + tids.len()) as u32); // as above
    if let Ok(req) = ProutRequest::parse(&cdb, &params) {
        let to = req.move_to.expect("REGISTER AND MOVE names a port");
        assert_eq!(parse_transport_id(tids).map(|(p, _)| p), Some(to.initiator));
    }
});
