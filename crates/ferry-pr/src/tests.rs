//! The state machine, driven by literal CDBs and parameter lists.
use std::cell::RefCell;

use super::*;
use crate::out::attention;
use ferry_scsi::sense::asc;

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_IGNORE: u8 = 6;
const REGISTER_AND_MOVE: u8 = 7;

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const TUR: [u8; 6] = [0; 6];

fn nexus(name: &str) -> Nexus {
    Nexus::new(
        format!("iqn.2026-11.test:{name},i,0x000000000001"),
        "iqn.t,t,0x0001",
    )
}

fn cdb_out(action: u8, kind: u8) -> [u8; 10] {
    [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0]
}

fn params(res_key: u64, sa_key: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&res_key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

/// A LUN's reservations with a store that records every save.
struct Lun {
    pr: Reservations,
    saved: RefCell<Vec<PrState>>,
    fail_saves: RefCell<bool>,
}

impl Lun {
    fn new() -> Self {
        Lun {
            pr: Reservations::default(),
            saved: RefCell::new(Vec::new()),
            fail_saves: RefCell::new(false),
        }
    }

    fn persist(&self) -> impl Fn(&[u8]) -> Result<(), PrError> + '_ {
        |bytes| {
            if *self.fail_saves.borrow() {
                return Err(PrError::store("a test disk", "disk on fire"));
            }
            self.saved.borrow_mut().push(PrState::decode(bytes)?);
            Ok(())
        }
    }

    fn out(
        &self,
        who: &Nexus,
        action: u8,
        kind: u8,
        res_key: u64,
        sa_key: u64,
    ) -> Result<(), Refusal> {
        self.pr.serve_out(
            who,
            &cdb_out(action, kind),
            &params(res_key, sa_key, 0),
            &self.persist(),
        )
    }

    fn check(&self, who: &Nexus, cdb: &[u8]) -> Result<(), Refusal> {
        self.pr.check(who, cdb)
    }

    fn read(&self, who: &Nexus, action: u8) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let cdb = [0x5e, action, 0, 0, 0, 0, 0, 4, 0, 0];
        let n = self.pr.serve_in(who, &cdb, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn keys(&self, who: &Nexus) -> Vec<u64> {
        self.read(who, 0)[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Reports and clears every unit attention owed to `who`.
    fn attentions(&self, who: &Nexus) -> Vec<u16> {
        let mut got = Vec::new();
        while let Err(Refusal::Check(s)) = self.check(who, &TUR) {
            assert_eq!(s.key, key::UNIT_ATTENTION);
            got.push(s.asc);
        }
        got
    }
}

fn conflict() -> Result<(), Refusal> {
    Err(Refusal::Conflict)
}

#[test]
fn register_needs_the_right_key_and_bumps_the_generation() {
    let lun = Lun::new();
    let a = nexus("a");
    // Unregistered with a nonzero reservation key: conflict.
    assert_eq!(lun.out(&a, REGISTER, 0, 5, 0x10), conflict());
    // Key zero to key zero: nothing happens, nothing saved.
    lun.out(&a, REGISTER, 0, 0, 0).unwrap();
    assert!(lun.saved.borrow().is_empty());
    lun.out(&a, REGISTER, 0, 0, 0x10).unwrap();
    assert_eq!(lun.keys(&a), vec![0x10]);
    // Registered: must give its current key.
    assert_eq!(lun.out(&a, REGISTER, 0, 0, 0x11), conflict());
    lun.out(&a, REGISTER, 0, 0x10, 0x11).unwrap();
    assert_eq!(lun.keys(&a), vec![0x11]);
    let generation = u32::from_be_bytes(lun.read(&a, 0)[0..4].try_into().unwrap());
    assert_eq!(generation, 2);
    // Register-and-ignore replaces whatever the key was.
    lun.out(&a, REGISTER_IGNORE, 0, 0xdead, 0x12).unwrap();
    assert_eq!(lun.keys(&a), vec![0x12]);
    // And unregisters with key zero.
    lun.out(&a, REGISTER_IGNORE, 0, 0, 0).unwrap();
    assert!(lun.keys(&a).is_empty());
    assert_eq!(lun.saved.borrow().len(), 4);
}

#[test]
fn reserve_release_and_holder_rules() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 0xa).unwrap();
    lun.out(&b, REGISTER, 0, 0, 0xb).unwrap();
    // Unregistered or wrong key: conflict.
    assert_eq!(lun.out(&nexus("c"), RESERVE, WE, 0, 0), conflict());
    assert_eq!(lun.out(&a, RESERVE, WE, 0xb, 0), conflict());
    // Bad type or scope: ILLEGAL REQUEST, INVALID FIELD IN CDB.
    for bad in [0u8, 2, 4, 9] {
        assert_eq!(
            lun.out(&a, RESERVE, bad, 0xa, 0),
            Err(Refusal::Check(Sense::invalid_field()))
        );
    }
    assert_eq!(
        lun.out(&a, RESERVE, 0x10 | WE, 0xa, 0),
        Err(Refusal::Check(Sense::invalid_field()))
    );
    lun.out(&a, RESERVE, WE, 0xa, 0).unwrap();
    // Again by the holder with the same type: fine; another type or
    // another nexus: conflict.
    lun.out(&a, RESERVE, WE, 0xa, 0).unwrap();
    assert_eq!(lun.out(&a, RESERVE, EA, 0xa, 0), conflict());
    assert_eq!(lun.out(&b, RESERVE, WE, 0xb, 0), conflict());
    let res = lun.read(&b, 1);
    assert_eq!(u32::from_be_bytes(res[4..8].try_into().unwrap()), 16);
    assert_eq!(u64::from_be_bytes(res[8..16].try_into().unwrap()), 0xa);
    assert_eq!(res[21], WE);
    // A non-holder's release does nothing; the holder's with the wrong
    // type is an invalid release.
    lun.out(&b, RELEASE, WE, 0xb, 0).unwrap();
    assert_eq!(lun.read(&b, 1).len(), 24);
    assert_eq!(
        lun.out(&a, RELEASE, EA, 0xa, 0),
        Err(Refusal::Check(Sense::new(key::ILLEGAL_REQUEST, 0x2604)))
    );
    lun.out(&a, RELEASE, WE, 0xa, 0).unwrap();
    assert_eq!(lun.read(&b, 1).len(), 8);
    // Write Exclusive released: no unit attention (only RO/AR types).
    assert!(lun.attentions(&b).is_empty());
}

#[test]
fn access_follows_the_type_for_holders_registrants_and_strangers() {
    // (type, registrant read, registrant write, stranger read, stranger write)
    let table = [
        (WE, true, false, true, false),
        (EA, false, false, false, false),
        (WE_RO, true, true, true, false),
        (EA_RO, true, true, false, false),
        (WE_AR, true, true, true, false),
        (EA_AR, true, true, false, false),
    ];
    for (kind, reg_read, reg_write, other_read, other_write) in table {
        let lun = Lun::new();
        let (holder, reg, other) = (nexus("h"), nexus("r"), nexus("o"));
        lun.out(&holder, REGISTER, 0, 0, 1).unwrap();
        lun.out(&reg, REGISTER, 0, 0, 2).unwrap();
        lun.out(&holder, RESERVE, kind, 1, 0).unwrap();
        let ok = |who: &Nexus, cdb: &[u8]| lun.check(who, cdb).is_ok();
        assert!(ok(&holder, &READ10) && ok(&holder, &WRITE10), "type {kind}");
        assert_eq!(ok(&reg, &READ10), reg_read, "type {kind} registrant read");
        assert_eq!(
            ok(&reg, &WRITE10),
            reg_write,
            "type {kind} registrant write"
        );
        assert_eq!(ok(&other, &READ10), other_read, "type {kind} stranger read");
        assert_eq!(
            ok(&other, &WRITE10),
            other_write,
            "type {kind} stranger write"
        );
        assert!(
            ok(&other, &TUR) && ok(&other, &[0x12, 0, 0, 0, 36, 0]),
            "type {kind}"
        );
        // A refused command changes nothing.
        assert_eq!(lun.check(&other, &[0x35; 10]), conflict());
    }
}

#[test]
fn all_registrants_reservation_lasts_until_the_last_registrant_leaves() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&a, RESERVE, EA_AR, 1, 0).unwrap();
    // Every registrant holds it; the reported key is zero.
    lun.out(&b, RESERVE, EA_AR, 2, 0).unwrap();
    assert_eq!(
        u64::from_be_bytes(lun.read(&a, 1)[8..16].try_into().unwrap()),
        0
    );
    lun.out(&a, REGISTER, 0, 1, 0).unwrap();
    assert!(lun.pr.state().reservation.is_some());
    assert_eq!(lun.check(&a, &WRITE10), conflict());
    lun.out(&b, REGISTER, 0, 2, 0).unwrap();
    assert!(lun.pr.state().reservation.is_none());
}

#[test]
fn holder_unregistering_releases_and_tells_registrants_only_types() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&a, RESERVE, WE_RO, 1, 0).unwrap();
    lun.out(&a, REGISTER, 0, 1, 0).unwrap();
    assert!(lun.pr.state().reservation.is_none());
    assert_eq!(lun.attentions(&b), vec![attention::RESERVATIONS_RELEASED]);
    assert!(lun.attentions(&a).is_empty());
}

#[test]
fn spc2_reserve_and_release_conflict_while_anyone_is_registered() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release10 = [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(lun.check(&b, &reserve6).is_ok());
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    for who in [&a, &b] {
        assert_eq!(lun.check(who, &reserve6), conflict());
        assert_eq!(lun.check(who, &release10), conflict());
    }
    lun.out(&a, REGISTER, 0, 1, 0).unwrap();
    assert!(lun.check(&b, &release10).is_ok());
}

#[test]
fn clear_drops_everything_and_tells_the_others() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&a, RESERVE, EA, 1, 0).unwrap();
    assert_eq!(lun.out(&b, CLEAR, 0, 1, 0), conflict());
    lun.out(&b, CLEAR, 0, 2, 0).unwrap();
    let s = lun.pr.state();
    assert!(s.registrations.is_empty() && s.reservation.is_none());
    assert_eq!(s.generation, 3);
    assert_eq!(lun.attentions(&a), vec![attention::RESERVATIONS_PREEMPTED]);
    assert!(lun.attentions(&b).is_empty());
    assert!(lun.check(&a, &WRITE10).is_ok());
}

#[test]
fn preempt_takes_the_reservation_from_the_holder() {
    for action in [PREEMPT, PREEMPT_AND_ABORT] {
        let lun = Lun::new();
        let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
        lun.out(&a, REGISTER, 0, 0, 1).unwrap();
        lun.out(&b, REGISTER, 0, 0, 2).unwrap();
        lun.out(&c, REGISTER, 0, 0, 3).unwrap();
        lun.out(&a, RESERVE, WE, 1, 0).unwrap();
        // Preempting a key nobody has: conflict; key zero: invalid.
        assert_eq!(lun.out(&b, action, EA, 2, 9), conflict());
        assert_eq!(
            lun.out(&b, action, EA, 2, 0),
            Err(Refusal::Check(Sense::new(
                key::ILLEGAL_REQUEST,
                asc::INVALID_FIELD_IN_PARAMETER_LIST
            )))
        );
        lun.out(&b, action, EA, 2, 1).unwrap();
        let s = lun.pr.state();
        assert_eq!(s.reservation.as_ref().unwrap().holder.as_ref(), Some(&b));
        assert_eq!(
            s.reservation.as_ref().unwrap().kind,
            PrType::ExclusiveAccess
        );
        assert!(!s.is_registered(&a));
        assert_eq!(lun.attentions(&a), vec![attention::REGISTRATIONS_PREEMPTED]);
        // c kept its registration and hears that the type changed.
        assert_eq!(lun.attentions(&c), vec![attention::RESERVATIONS_RELEASED]);
        assert_eq!(lun.check(&a, &READ10), conflict());
        assert_eq!(lun.check(&c, &READ10), conflict());
    }
}

#[test]
fn preempt_without_a_reservation_removes_registrations_only() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&a, PREEMPT, WE, 1, 2).unwrap();
    assert_eq!(lun.keys(&a), vec![1]);
    assert!(lun.pr.state().reservation.is_none());
    assert_eq!(lun.attentions(&b), vec![attention::REGISTRATIONS_PREEMPTED]);
    // b is a stranger now: its old key is refused.
    assert_eq!(lun.out(&b, REGISTER, 0, 2, 5), conflict());
}

#[test]
fn preempt_of_an_all_registrants_reservation_with_key_zero_takes_it() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&a, RESERVE, WE_AR, 1, 0).unwrap();
    lun.out(&b, PREEMPT, WE, 2, 0).unwrap();
    let s = lun.pr.state();
    assert_eq!(s.registrations.len(), 1);
    assert_eq!(s.reservation.unwrap().holder, Some(b.clone()));
    assert_eq!(
        lun.check(&a, &WRITE10),
        Err(Refusal::Check(Sense::new(key::UNIT_ATTENTION, 0x2a05)))
    );
    assert_eq!(lun.check(&a, &WRITE10), conflict());
}

#[test]
fn bad_parameter_lists_are_refused_without_change() {
    let lun = Lun::new();
    let a = nexus("a");
    let p = params(0, 1, 0);
    let length_error = Err(Refusal::Check(Sense::new(
        key::ILLEGAL_REQUEST,
        asc::PARAMETER_LIST_LENGTH,
    )));
    let mut cdb = cdb_out(REGISTER, 0);
    cdb[8] = 23;
    assert_eq!(lun.pr.serve_out(&a, &cdb, &p, &lun.persist()), length_error);
    // Declared 24 but fewer bytes arrived.
    assert_eq!(
        lun.pr
            .serve_out(&a, &cdb_out(REGISTER, 0), &p[..20], &lun.persist()),
        length_error
    );
    // SPEC_I_PT: REGISTER needs its TransportID list; the other actions
    // may not set it.
    assert_eq!(
        lun.pr.serve_out(
            &a,
            &cdb_out(REGISTER, 0),
            &params(0, 1, 0x08),
            &lun.persist()
        ),
        length_error
    );
    assert_eq!(
        lun.pr.serve_out(
            &a,
            &cdb_out(RESERVE, WE),
            &params(0, 1, 0x08),
            &lun.persist()
        ),
        Err(Refusal::Check(Sense::new(
            key::ILLEGAL_REQUEST,
            asc::INVALID_FIELD_IN_PARAMETER_LIST
        )))
    );
    // Unknown service actions; short CDBs.
    for sa in [8u8, 0x1f] {
        assert_eq!(
            lun.pr.serve_out(&a, &cdb_out(sa, 0), &p, &lun.persist()),
            Err(Refusal::Check(Sense::invalid_field()))
        );
    }
    assert!(lun
        .pr
        .serve_out(&a, &[0x5f, 0], &p, &lun.persist())
        .is_err());
    let mut buf = [0u8; 64];
    assert!(lun
        .pr
        .serve_in(&a, &[0x5e, 4, 0, 0, 0, 0, 0, 0, 64, 0], &mut buf)
        .is_err());
    assert!(lun.pr.serve_in(&a, &[0x5e], &mut buf).is_err());
    assert_eq!(lun.pr.state(), PrState::default());
    assert!(lun.saved.borrow().is_empty());
}

#[test]
fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let lun = Lun::new();
    let a = nexus("a");
    *lun.fail_saves.borrow_mut() = true;
    assert_eq!(
        lun.out(&a, REGISTER, 0, 0, 1),
        Err(Refusal::Check(Sense::internal_failure()))
    );
    assert!(lun.pr.state().registrations.is_empty());
    *lun.fail_saves.borrow_mut() = false;
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    assert_eq!(lun.saved.borrow().last().unwrap(), &lun.pr.state());
}

#[test]
fn saved_state_reloads_into_the_same_enforcement() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&a, RESERVE, EA, 1, 0).unwrap();
    let saved = lun.saved.borrow().last().unwrap().encode();
    let again = Reservations::load(Some(&saved)).unwrap();
    assert_eq!(again.check(&b, &READ10), conflict());
    assert!(again.check(&a, &WRITE10).is_ok());
    assert!(Reservations::load(Some(b"garbage")).is_err());
    assert!(Reservations::load(None)
        .unwrap()
        .state()
        .registrations
        .is_empty());
}

#[test]
fn reports_capabilities_and_full_status() {
    let lun = Lun::new();
    let a = nexus("a");
    let caps = lun.read(&a, 2);
    assert_eq!(caps.len(), 8);
    assert_eq!(u16::from_be_bytes([caps[0], caps[1]]), 8);
    assert_eq!(caps[2], 0x0d, "SIP_C, ATP_C and PTPL_C");
    assert_eq!(caps[3] & 0x80, 0x80, "TMV");
    assert_eq!(u16::from_be_bytes([caps[4], caps[5]]), 0xea01);
    lun.pr
        .serve_out(
            &a,
            &cdb_out(REGISTER, 0),
            &params(0, 7, 0x01),
            &lun.persist(),
        )
        .unwrap();
    assert_eq!(lun.read(&a, 2)[3] & 1, 1, "PTPL_A follows APTPL");
    lun.out(&a, RESERVE, WE_RO, 7, 0).unwrap();
    let full = lun.read(&a, 3);
    let len = u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize;
    assert_eq!(full.len(), 8 + len);
    let d = &full[8..];
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 7);
    assert_eq!(d[12], 1, "R_HOLDER");
    assert_eq!(d[13], WE_RO);
    let tid_len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
    let tid = &d[24..24 + tid_len];
    assert_eq!(tid[0], 0x45, "iSCSI, name with ISID");
    assert_eq!(tid_len % 4, 0);
    assert!(tid[4..].starts_with(a.initiator.as_bytes()));
    // A registration made with ALL_TG_PT says so; the bit is ignored by
    // the other actions (here RELEASE).
    let b = nexus("b");
    let with_all_tg_pt = |who: &Nexus, action: u8, kind: u8, key: u64, sa_key: u64| {
        lun.pr.serve_out(
            who,
            &cdb_out(action, kind),
            &params(key, sa_key, 0x04),
            &lun.persist(),
        )
    };
    with_all_tg_pt(&b, REGISTER, 0, 0, 9).unwrap();
    let full = lun.read(&a, 3);
    let second = &full[8 + 24 + tid_len..];
    assert_eq!(u64::from_be_bytes(second[0..8].try_into().unwrap()), 9);
    assert_eq!(second[12], 0x02, "ALL_TG_PT, not R_HOLDER");
    assert_eq!(full[8 + 12], 0x01, "a: R_HOLDER only");
    with_all_tg_pt(&a, RELEASE, WE_RO, 7, 0).unwrap();
    assert_eq!(lun.read(&a, 3)[8 + 12], 0, "a released");
    assert!(lun.pr.state().registrations[1].all_target_ports);
    // Allocation length truncates.
    let mut buf = [0u8; 64];
    let cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0, 4, 0];
    assert_eq!(lun.pr.serve_in(&a, &cdb, &mut buf), Ok(4));
}

#[test]
fn commands_are_checked_while_a_change_is_being_saved() {
    // The save runs with the state free: a command checked meanwhile
    // (here from inside the save; with the lock held this would
    // deadlock) sees the state before the change, and a unit attention it
    // takes is not handed out again once the change lands.
    let lun = Lun::new();
    let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
    lun.out(&a, REGISTER, 0, 0, 1).unwrap();
    lun.out(&b, REGISTER, 0, 0, 2).unwrap();
    lun.out(&c, REGISTER, 0, 0, 3).unwrap();
    lun.out(&a, RESERVE, WE_RO, 1, 0).unwrap();
    lun.out(&a, RELEASE, WE_RO, 1, 0).unwrap(); // b and c owed 2A/04
    assert_eq!(lun.attentions(&b), vec![attention::RESERVATIONS_RELEASED]);
    let seen = RefCell::new(Vec::new());
    let persist = |bytes: &[u8]| {
        seen.borrow_mut().push(lun.pr.check(&c, &WRITE10));
        PrState::decode(bytes).map(|_| ())
    };
    // b preempts a's registration (no reservation exists).
    lun.pr
        .serve_out(&b, &cdb_out(PREEMPT, WE), &params(2, 1, 0), &persist)
        .unwrap();
    assert_eq!(
        seen.into_inner(),
        vec![Err(Refusal::Check(Sense::new(
            key::UNIT_ATTENTION,
            attention::RESERVATIONS_RELEASED
        )))],
        "c's pending unit attention was reported during the save"
    );
    assert!(lun.attentions(&c).is_empty(), "reported twice");
    assert_eq!(lun.attentions(&a), vec![attention::REGISTRATIONS_PREEMPTED]);
    assert_eq!(lun.keys(&b), vec![2, 3]);
}

/// REGISTER AND MOVE's parameter list: keys, UNREG, relative target port
/// 1, and `tid` as the TransportID.
fn move_params(res_key: u64, sa_key: u64, unreg: bool, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&res_key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[17] = if unreg { 0x02 } else { 0 };
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

fn move_cdb(len: usize) -> [u8; 10] {
    let [_, _, hi, lo] = (len as u32).to_be_bytes();
    [0x5f, REGISTER_AND_MOVE, 0, 0, 0, 0, 0, hi, lo, 0]
}

#[test]
fn register_and_move_hands_the_reservation_to_another_port() {
    let lun = Lun::new();
    let (a, b) = (nexus("a"), nexus("b"));
    let b_tid = crate::prin::transport_id(&b);
    lun.out(&a, REGISTER, 0, 0, 0xa).unwrap();
    lun.out(&a, RESERVE, WE_RO, 0xa, 0).unwrap();
    let generation = lun.pr.state().generation;
    let go = |who: &Nexus, p: &[u8]| lun.pr.serve_out(who, &move_cdb(p.len()), p, &lun.persist());
    // b is not registered: it may not move anything.
    assert_eq!(go(&b, &move_params(0, 0xb, false, &b_tid)), conflict());
    // Refused and changing nothing: a wrong key; key zero; the holder's
    // own port; a name without an ISID; another target port; a list
    // whose length is not the TransportID's.
    assert_eq!(go(&a, &move_params(0x9, 0xb, false, &b_tid)), conflict());
    let invalid = Err(Refusal::Check(Sense::new(
        key::ILLEGAL_REQUEST,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    )));
    assert_eq!(go(&a, &move_params(0xa, 0, false, &b_tid)), invalid);
    let a_tid = crate::prin::transport_id(&a);
    assert_eq!(go(&a, &move_params(0xa, 0xb, false, &a_tid)), invalid);
    let name_only = crate::prin::transport_id(&Nexus::new("iqn.2026-11.test:b", "iqn.t,t,0x0001"));
    assert_eq!(go(&a, &move_params(0xa, 0xb, false, &name_only)), invalid);
    let mut other_port = move_params(0xa, 0xb, false, &b_tid);
    other_port[19] = 2;
    assert_eq!(go(&a, &other_port), invalid);
    let mut short = move_params(0xa, 0xb, false, &b_tid);
    short[23] += 4;
    assert_eq!(go(&a, &short), invalid);
    assert_eq!(lun.pr.state().generation, generation);

    // a moves its reservation to b, keeping its own registration.
    go(&a, &move_params(0xa, 0xb, false, &b_tid)).unwrap();
    let state = lun.pr.state();
    assert_eq!(state.generation, generation + 1);
    assert!(state.is_holder(&b) && !state.is_holder(&a));
    assert_eq!(lun.keys(&a), vec![0xa, 0xb]);
    assert_eq!(lun.check(&b, &WRITE10), Ok(()));
    assert_eq!(lun.check(&a, &WRITE10), Ok(()), "a registrant of WE-RO");
    // a, no longer the holder, cannot move it again.
    assert_eq!(go(&a, &move_params(0xa, 0xc, false, &b_tid)), conflict());
    // b moves it back with UNREG: b is gone, a holds it (type kept).
    let back = move_params(0xb, 0xa1, true, &crate::prin::transport_id(&a));
    go(&b, &back).unwrap();
    let state = lun.pr.state();
    assert!(state.is_holder(&a));
    assert_eq!(state.reservation.unwrap().kind.code(), WE_RO);
    assert_eq!(lun.keys(&a), vec![0xa1]);
    assert_eq!(lun.check(&b, &WRITE10), conflict());
    // No reservation: INVALID FIELD IN CDB. All-registrants: conflict.
    lun.out(&a, RELEASE, WE_RO, 0xa1, 0).unwrap();
    assert_eq!(
        go(&a, &move_params(0xa1, 0xb, false, &b_tid)),
        Err(Refusal::Check(Sense::invalid_field()))
    );
    lun.out(&a, RESERVE, WE_AR, 0xa1, 0).unwrap();
    assert_eq!(go(&a, &move_params(0xa1, 0xb, false, &b_tid)), conflict());
}

/// REGISTER with SPEC_I_PT and the TransportIDs of `ports`.
fn spec_i_pt_params(sa_key: u64, ports: &[&Nexus]) -> Vec<u8> {
    let tids: Vec<u8> = ports
        .iter()
        .flat_map(|n| crate::prin::transport_id(n))
        .collect();
    let mut p = params(0, sa_key, 0x08).to_vec();
    p.extend_from_slice(&(tids.len() as u32).to_be_bytes());
    p.extend_from_slice(&tids);
    p
}

#[test]
fn spec_i_pt_registers_the_named_ports_too_or_none() {
    let lun = Lun::new();
    let (a, b, c, d) = (nexus("a"), nexus("b"), nexus("c"), nexus("d"));
    let register = |who: &Nexus, p: &[u8]| {
        let [_, _, hi, lo] = (p.len() as u32).to_be_bytes();
        lun.pr.serve_out(
            who,
            &[0x5f, REGISTER, 0, 0, 0, 0, 0, hi, lo, 0],
            p,
            &lun.persist(),
        )
    };
    register(&a, &spec_i_pt_params(0x5, &[&b, &c])).unwrap();
    assert_eq!(lun.keys(&a), vec![5, 5, 5]);
    let state = lun.pr.state();
    for n in [&a, &b, &c] {
        assert!(state.is_registered(n), "{n}");
    }
    // b registered that way holds a reservation with the key.
    lun.out(&b, RESERVE, WE, 5, 0).unwrap();
    assert!(lun.pr.state().is_holder(&b));
    let generation = lun.pr.state().generation;
    let invalid = Err(Refusal::Check(Sense::new(
        key::ILLEGAL_REQUEST,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    )));
    // All or nothing: c is registered already, so d is not registered
    // either; a registered sender may not use SPEC_I_PT.
    assert_eq!(register(&d, &spec_i_pt_params(0x7, &[&c])), invalid);
    assert_eq!(register(&a, &spec_i_pt_params(0x7, &[&d])), invalid);
    // A name without an ISID, and a list longer than its TransportIDs.
    let device = Nexus::new("iqn.2026-11.test:e", "iqn.t,t,0x0001");
    assert_eq!(register(&d, &spec_i_pt_params(0x7, &[&device])), invalid);
    let mut long = spec_i_pt_params(0x7, &[&c]);
    long.extend_from_slice(&[0; 4]);
    assert_eq!(
        register(&d, &long),
        Err(Refusal::Check(Sense::new(
            key::ILLEGAL_REQUEST,
            asc::PARAMETER_LIST_LENGTH
        )))
    );
    let state = lun.pr.state();
    assert_eq!(state.generation, generation);
    assert!(!state.is_registered(&d));
}
