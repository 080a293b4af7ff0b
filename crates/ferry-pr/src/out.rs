//! PERSISTENT RESERVE OUT (SPC-4 6.16, 5.12): parsing and the state
//! changes each service action makes.
use ferry_scsi::sense::{asc, key, Sense};

use crate::state::{Nexus, PrState, PrType, Registration, Reservation};
use crate::Refusal;

/// PERSISTENT RESERVE OUT opcode.
pub const OPCODE: u8 = 0x5f;

/// Unit attentions the service actions raise (SPC-4 table 29).
pub mod attention {
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: u16 = 0x2a03;
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: u16 = 0x2a04;
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: u16 = 0x2a05;
}

/// INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: u16 = 0x2604;

/// PR OUT service actions (SPC-4 table 174).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
    RegisterAndIgnoreExistingKey,
    RegisterAndMove,
}

/// Where REGISTER AND MOVE moves the reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTo {
    /// The initiator port (`name,i,0x<isid>`), through this target port.
    pub initiator: String,
    /// UNREG: the sender's registration goes too.
    pub unregister: bool,
}

/// A parsed PERSISTENT RESERVE OUT command with its parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProutRequest {
    pub action: Action,
    /// The TYPE field, checked only by the actions that use it.
    pub type_code: u8,
    pub scope: u8,
    pub reservation_key: u64,
    pub service_action_key: u64,
    pub aptpl: bool,
    /// ALL_TG_PT, which only the register actions use.
    pub all_target_ports: bool,
    /// REGISTER AND MOVE's destination.
    pub move_to: Option<MoveTo>,
    /// REGISTER with SPEC_I_PT: the other initiator ports to register
    /// with the same key, through this target port.
    pub specified: Vec<String>,
}

/// Length of the basic parameter list (SPC-4 6.16.3).
pub const PARAMETER_LIST_LEN: usize = 24;

fn invalid_cdb() -> Refusal {
    Refusal::Check(Sense::invalid_field())
}

fn invalid_parameter() -> Refusal {
    Refusal::Check(Sense::new(
        key::ILLEGAL_REQUEST,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    ))
}

impl ProutRequest {
    /// Parses the CDB and the parameter list the initiator sent.
    ///
    /// ALL_TG_PT is taken by the register actions and ignored by the
    /// others; SPEC_I_PT by REGISTER only (SPC-4 6.16.3). REGISTER AND
    /// MOVE has its own parameter list (SPC-4 6.16.4). Every TransportID
    /// must name an iSCSI initiator port (format 01b, with the ISID): a
    /// name alone names a device, whose ports ferry cannot know.
    pub fn parse(cdb: &[u8], params: &[u8]) -> Result<Self, Refusal> {
        if cdb.len() < 10 || cdb[0] != OPCODE {
            return Err(invalid_cdb());
        }
        let action = match cdb[1] & 0x1f {
            0 => Action::Register,
            1 => Action::Reserve,
            2 => Action::Release,
            3 => Action::Clear,
            4 => Action::Preempt,
            5 => Action::PreemptAndAbort,
            6 => Action::RegisterAndIgnoreExistingKey,
            7 => Action::RegisterAndMove,
            _ => return Err(invalid_cdb()),
        };
        let declared = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) as usize;
        let length_error =
            || Refusal::Check(Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH));
        // REGISTER AND MOVE, and REGISTER with SPEC_I_PT, carry
        // TransportIDs after the basic list; the others are exactly it.
        if declared < PARAMETER_LIST_LEN || params.len() < declared {
            return Err(length_error());
        }
        let spec_i_pt = action != Action::RegisterAndMove && params[20] & 0x08 != 0;
        if action != Action::RegisterAndMove && !spec_i_pt && declared != PARAMETER_LIST_LEN {
            return Err(length_error());
        }
        let key_at =
            |at: usize| u64::from_be_bytes(params[at..at + 8].try_into().expect("8 bytes"));
        // A TRANSPORTID PARAMETER DATA LENGTH.
        let length_at = |at: usize| {
            u32::from_be_bytes(params[at..at + 4].try_into().expect("4 bytes")) as usize
        };
        let mut req = ProutRequest {
            action,
            type_code: cdb[2] & 0x0f,
            scope: cdb[2] >> 4,
            reservation_key: key_at(0),
            service_action_key: key_at(8),
            aptpl: false,
            all_target_ports: false,
            move_to: None,
            specified: Vec::new(),
        };
        if action == Action::RegisterAndMove {
            // RESERVATION KEY, SERVICE ACTION RESERVATION KEY, a reserved
            // byte, UNREG and APTPL, the RELATIVE TARGET PORT IDENTIFIER,
            // the TRANSPORTID PARAMETER DATA LENGTH, then the TransportID,
            // which must fill the rest of the list.
            let flags = params[17];
            let port = u16::from_be_bytes([params[18], params[19]]);
            if PARAMETER_LIST_LEN.checked_add(length_at(20)) != Some(declared)
                || port != crate::prin::RELATIVE_TARGET_PORT
            {
                return Err(invalid_parameter());
            }
            let tid = &params[PARAMETER_LIST_LEN..declared];
            let (initiator, _) =
                crate::prin::parse_transport_id(tid).ok_or_else(invalid_parameter)?;
            req.aptpl = flags & 0x01 != 0;
            req.move_to = Some(MoveTo {
                initiator,
                unregister: flags & 0x02 != 0,
            });
            return Ok(req);
        }
        let flags = params[20];
        req.aptpl = flags & 0x01 != 0;
        req.all_target_ports = flags & 0x04 != 0;
        if spec_i_pt {
            // Only REGISTER names other initiator ports (SPC-4 6.16.3):
            // a TRANSPORTID PARAMETER DATA LENGTH, then TransportIDs
            // filling the rest of the list.
            if action != Action::Register {
                return Err(invalid_parameter());
            }
            if declared < 28 || length_at(24).checked_add(28) != Some(declared) {
                return Err(length_error());
            }
            let mut at = 28;
            while at < declared {
                let (initiator, len) = crate::prin::parse_transport_id(&params[at..declared])
                    .ok_or_else(invalid_parameter)?;
                req.specified.push(initiator);
                at += len;
            }
        }
        Ok(req)
    }

    /// The reservation type and scope, for the actions that create one.
    fn reservation_type(&self) -> Result<PrType, Refusal> {
        if self.scope != 0 {
            return Err(invalid_cdb());
        }
        PrType::from_code(self.type_code).ok_or_else(invalid_cdb)
    }
}

/// Whether a command changed the state (and must be saved before it is
/// acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Changed,
}

impl PrState {
    /// Carries out `req` from `nexus`. On `Err` the state is unchanged.
    pub fn apply(&mut self, nexus: &Nexus, req: &ProutRequest) -> Result<Change, Refusal> {
        let mut next = self.clone();
        let change = next.apply_in_place(nexus, req)?;
        *self = next;
        Ok(change)
    }

    fn apply_in_place(&mut self, nexus: &Nexus, req: &ProutRequest) -> Result<Change, Refusal> {
        match req.action {
            Action::Register => self.register(nexus, req, false),
            Action::RegisterAndIgnoreExistingKey => self.register(nexus, req, true),
            Action::Reserve => {
                self.check_key(nexus, req)?;
                let kind = req.reservation_type()?;
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: (!kind.all_registrants()).then(|| nexus.clone()),
                            kind,
                        });
                        Ok(Change::Changed)
                    }
                    Some(r) if r.kind == kind && self.is_holder(nexus) => Ok(Change::None),
                    Some(_) => Err(Refusal::Conflict),
                }
            }
            Action::Release => {
                self.check_key(nexus, req)?;
                let Some(r) = self.reservation.clone() else {
                    return Ok(Change::None);
                };
                if !self.is_holder(nexus) {
                    return Ok(Change::None);
                }
                if req.scope != 0 || req.type_code != r.kind.code() {
                    return Err(Refusal::Check(Sense::new(
                        key::ILLEGAL_REQUEST,
                        INVALID_RELEASE,
                    )));
                }
                self.reservation = None;
                if r.kind.registrants_allowed() {
                    self.attention_to_registrants(nexus, attention::RESERVATIONS_RELEASED);
                }
                Ok(Change::Changed)
            }
            Action::Clear => {
                self.check_key(nexus, req)?;
                self.attention_to_registrants(nexus, attention::RESERVATIONS_PREEMPTED);
                self.registrations.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
                Ok(Change::Changed)
            }
            Action::Preempt | Action::PreemptAndAbort => self.preempt(nexus, req),
            Action::RegisterAndMove => self.register_and_move(nexus, req),
        }
    }

    /// REGISTER AND MOVE (SPC-4 5.12.8): the holder hands its reservation,
    /// same type, to another initiator port, registered with the service
    /// action key; with UNREG the holder's registration goes as well. The
    /// CDB's TYPE and SCOPE are ignored.
    fn register_and_move(&mut self, nexus: &Nexus, req: &ProutRequest) -> Result<Change, Refusal> {
        self.check_key(nexus, req)?;
        let Some(to) = &req.move_to else {
            return Err(invalid_parameter());
        };
        // A key of zero cannot be registered, and the reservation cannot
        // move to the port that holds it.
        if req.service_action_key == 0 || to.initiator == nexus.initiator {
            return Err(invalid_parameter());
        }
        let Some(held) = self.reservation.clone() else {
            return Err(invalid_cdb());
        };
        if held.kind.all_registrants() || !self.is_holder(nexus) {
            return Err(Refusal::Conflict);
        }
        let dest = Nexus::new(to.initiator.clone(), nexus.target.clone());
        match self.registrations.iter_mut().find(|r| r.nexus == dest) {
            Some(r) => r.key = req.service_action_key,
            None => self.registrations.push(Registration {
                nexus: dest.clone(),
                key: req.service_action_key,
                all_target_ports: false,
            }),
        }
        self.reservation = Some(Reservation {
            holder: Some(dest),
            kind: held.kind,
        });
        if to.unregister {
            // No longer the holder, so nothing else goes with it.
            self.unregister(nexus);
        }
        self.aptpl = req.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(Change::Changed)
    }

    /// The nexus must be registered, with the key it gives.
    fn check_key(&self, nexus: &Nexus, req: &ProutRequest) -> Result<(), Refusal> {
        match self.registration(nexus) {
            Some(r) if r.key == req.reservation_key => Ok(()),
            _ => Err(Refusal::Conflict),
        }
    }

    fn register(
        &mut self,
        nexus: &Nexus,
        req: &ProutRequest,
        ignore: bool,
    ) -> Result<Change, Refusal> {
        let current = self.registration(nexus).map(|r| r.key);
        if !req.specified.is_empty() {
            return self.register_specified(nexus, req, current);
        }
        if !ignore {
            // Unregistered nexuses must give key zero, registered ones
            // their current key (SPC-4 table 53).
            if req.reservation_key != current.unwrap_or(0) {
                return Err(Refusal::Conflict);
            }
        }
        match (current, req.service_action_key) {
            (None, 0) => return Ok(Change::None),
            (None, key) => self.registrations.push(Registration {
                nexus: nexus.clone(),
                key,
                all_target_ports: req.all_target_ports,
            }),
            (Some(_), 0) => self.unregister(nexus),
            (Some(_), key) => {
                for r in self.registrations.iter_mut().filter(|r| &r.nexus == nexus) {
                    r.key = key;
                    r.all_target_ports = req.all_target_ports;
                }
            }
        }
        self.aptpl = req.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(Change::Changed)
    }

    /// REGISTER with SPEC_I_PT (SPC-4 5.12.7): an unregistered nexus
    /// registers itself and the initiator ports it names, all with the
    /// service action key, or nothing at all.
    fn register_specified(
        &mut self,
        nexus: &Nexus,
        req: &ProutRequest,
        current: Option<u64>,
    ) -> Result<Change, Refusal> {
        if current.is_some() {
            return Err(invalid_parameter());
        }
        if req.reservation_key != 0 {
            return Err(Refusal::Conflict);
        }
        if req.service_action_key == 0 {
            return Ok(Change::None);
        }
        let mut ports = vec![nexus.clone()];
        for initiator in &req.specified {
            let port = Nexus::new(initiator.clone(), nexus.target.clone());
            if self.registration(&port).is_some() {
                return Err(invalid_parameter());
            }
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        for port in ports {
            self.registrations.push(Registration {
                nexus: port,
                key: req.service_action_key,
                all_target_ports: req.all_target_ports,
            });
        }
        self.aptpl = req.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(Change::Changed)
    }

    /// Removes `nexus`'s registration and, with it, a reservation it held
    /// alone (SPC-4 5.12.11.2.2).
    fn unregister(&mut self, nexus: &Nexus) {
        let held = self.is_holder(nexus);
        self.registrations.retain(|r| &r.nexus != nexus);
        self.attentions.retain(|a| &a.nexus != nexus);
        let Some(r) = self.reservation.clone() else {
            return;
        };
        if r.kind.all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if held {
            self.reservation = None;
            if r.kind.registrants_allowed() {
                self.attention_to_registrants(nexus, attention::RESERVATIONS_RELEASED);
            }
        }
    }

    /// Removes the registrations holding `key` (every one, for key zero)
    /// except the preemptor's own, owing each REGISTRATIONS PREEMPTED.
    /// Returns how many.
    fn remove_keyed(&mut self, preemptor: &Nexus, key: u64) -> usize {
        let gone: Vec<Nexus> = self
            .registrations
            .iter()
            .filter(|r| &r.nexus != preemptor && (key == 0 || r.key == key))
            .map(|r| r.nexus.clone())
            .collect();
        self.registrations.retain(|r| !gone.contains(&r.nexus));
        self.attentions.retain(|a| !gone.contains(&a.nexus));
        for nexus in &gone {
            self.attention(nexus.clone(), attention::REGISTRATIONS_PREEMPTED);
        }
        gone.len()
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.12.11.4). The abort half is
    /// the host's: `ferry_host::Lun` runs every PR OUT exclusive of the
    /// LUN's commands, each of which is checked inside that exclusion, so
    /// a preempted nexus's commands accepted before finish first and none
    /// runs after.
    fn preempt(&mut self, nexus: &Nexus, req: &ProutRequest) -> Result<Change, Refusal> {
        self.check_key(nexus, req)?;
        let sa_key = req.service_action_key;
        // The type of the reservation the preemptor takes over, if it
        // does: naming the holder's key, or key zero for the
        // all-registrants types (every other registration goes then).
        let taken = match &self.reservation {
            None => None,
            Some(r) if r.kind.all_registrants() => (sa_key == 0).then_some(r.kind),
            Some(r) => (sa_key == self.reservation_key()).then_some(r.kind),
        };
        match taken {
            Some(old) => {
                let kind = req.reservation_type()?;
                self.remove_keyed(nexus, sa_key);
                if kind != old {
                    // The preempted are no longer registrants: they hear
                    // REGISTRATIONS PREEMPTED, the others the release.
                    self.attention_to_registrants(nexus, attention::RESERVATIONS_RELEASED);
                }
                self.reservation = Some(Reservation {
                    holder: (!kind.all_registrants()).then(|| nexus.clone()),
                    kind,
                });
            }
            None => {
                if sa_key == 0 {
                    return Err(invalid_parameter());
                }
                if self.remove_keyed(nexus, sa_key) == 0 {
                    return Err(Refusal::Conflict);
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(Change::Changed)
    }
}
