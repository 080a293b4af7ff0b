//! What a LUN's persistent reservations are: registrations, the
//! reservation, the generation counter and the unit attentions owed to
//! initiators. Plain data, saved as one JSON document.
use serde::{Deserialize, Serialize};

/// An I_T nexus, named so that it means the same thing on every gateway
/// node: the initiator port name (for iSCSI `iqn...,i,0x<ISID>`, SPC-4
/// 7.6.4.6) and the target port name (`iqn...,t,0x<TPGT>`).
///
/// Two sessions of one initiator with different ISIDs are different
/// nexuses, as SPC-4 requires (multipath registers each path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nexus {
    pub initiator: String,
    pub target: String,
}

impl Nexus {
    pub fn new(initiator: impl Into<String>, target: impl Into<String>) -> Self {
        Nexus {
            initiator: initiator.into(),
            target: target.into(),
        }
    }
}

impl std::fmt::Display for Nexus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.initiator, self.target)
    }
}

/// Persistent reservation types (SPC-4 table 172).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        PrType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// All-registrants types: every registered nexus is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only and all-registrants types: registered nexuses may
    /// use the LUN as if they held the reservation.
    pub fn registrants_allowed(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Exclusive-access types: non-holders may not read either.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(flatten)]
    pub nexus: Nexus,
    pub key: u64,
    /// Registered with ALL_TG_PT: for the initiator port through every
    /// target port. A ferry LUN has one target port (its target's name is
    /// the same on every gateway, and a volume is exported once), so this
    /// is the same registration; it is kept for READ FULL STATUS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_target_ports: bool,
}

/// The persistent reservation, if one is held. Only LU scope exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The holder; `None` for the all-registrants types, which every
    /// registered nexus holds.
    pub holder: Option<Nexus>,
    #[serde(rename = "type")]
    pub kind: PrType,
}

/// A unit attention owed to a nexus, reported on its next command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAttention {
    #[serde(flatten)]
    pub nexus: Nexus,
    /// `asc << 8 | ascq`.
    pub asc: u16,
}

/// The whole persistent-reservation state of one LUN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRgeneration: bumped by every PR OUT that changes registrations.
    pub generation: u32,
    /// The APTPL bit of the last registration (reported as PTPL_A). The
    /// state is kept in shared storage whatever it says, because a gateway
    /// failover is not a power loss of the LUN.
    pub aptpl: bool,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    #[serde(default)]
    pub attentions: Vec<PendingAttention>,
}

/// Version tag of the saved document.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Document {
    format: u32,
    #[serde(flatten)]
    state: PrState,
}

impl PrState {
    /// The saved form: a JSON document with a format number.
    pub fn encode(&self) -> Vec<u8> {
        let doc = Document {
            format: FORMAT,
            state: self.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).expect("PR state serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses [`PrState::encode`] output.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::PrError> {
        let unreadable = |why: String| crate::PrError::Unreadable { why };
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|e| unreadable(format!("not a PR state document: {e}")))?;
        if doc.format != FORMAT {
            return Err(unreadable(format!(
                "PR state format {} is not the supported {FORMAT}",
                doc.format
            )));
        }
        Ok(doc.state)
    }

    pub fn registration(&self, nexus: &Nexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| &r.nexus == nexus)
    }

    pub fn is_registered(&self, nexus: &Nexus) -> bool {
        self.registration(nexus).is_some()
    }

    /// Whether `nexus` holds the reservation (any registrant does, for the
    /// all-registrants types).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.kind.all_registrants() => self.is_registered(nexus),
            Some(r) => r.holder.as_ref() == Some(nexus),
        }
    }

    /// The RESERVATION KEY READ RESERVATION reports: the holder's key, or
    /// zero for the all-registrants types.
    pub fn reservation_key(&self) -> u64 {
        match &self.reservation {
            Some(Reservation {
                holder: Some(h), ..
            }) => self.registration(h).map_or(0, |r| r.key),
            _ => 0,
        }
    }

    /// Queues `asc` for every registered nexus except `except`.
    pub(crate) fn attention_to_registrants(&mut self, except: &Nexus, asc: u16) {
        let to: Vec<Nexus> = self
            .registrations
            .iter()
            .filter(|r| &r.nexus != except)
            .map(|r| r.nexus.clone())
            .collect();
        for nexus in to {
            self.attention(nexus, asc);
        }
    }

    pub(crate) fn attention(&mut self, nexus: Nexus, asc: u16) {
        let pending = PendingAttention { nexus, asc };
        if !self.attentions.contains(&pending) {
            self.attentions.push(pending);
        }
    }

    /// Removes and returns the oldest unit attention owed to `nexus`.
    pub fn take_attention(&mut self, nexus: &Nexus) -> Option<u16> {
        let at = self.attentions.iter().position(|a| &a.nexus == nexus)?;
        Some(self.attentions.remove(at).asc)
    }

    /// What an administrator's forced clear leaves: no registrations and
    /// no reservation, as after PR OUT CLEAR, with RESERVATIONS PREEMPTED
    /// owed to every nexus that was registered.
    pub fn cleared(&self) -> PrState {
        let mut next = PrState {
            generation: self.generation.wrapping_add(1),
            aptpl: self.aptpl,
            ..PrState::default()
        };
        for r in &self.registrations {
            next.attention(
                r.nexus.clone(),
                crate::out::attention::RESERVATIONS_PREEMPTED,
            );
        }
        next
    }

    /// Nothing to check: no registration (which SPC-2 RESERVE and RELEASE
    /// must respect), no reservation and no unit attention pending.
    pub fn is_quiet(&self) -> bool {
        self.registrations.is_empty() && self.reservation.is_none() && self.attentions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_codes_round_trip_and_reject_the_rest() {
        for t in PrType::ALL {
            assert_eq!(PrType::from_code(t.code()), Some(t));
        }
        for bad in [0u8, 2, 4, 9, 15] {
            assert_eq!(PrType::from_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn document_round_trips_and_checks_its_format() {
        let a = Nexus::new("iqn.a,i,0x000000000001", "iqn.t,t,0x0001");
        let state = PrState {
            generation: 7,
            aptpl: true,
            registrations: vec![Registration {
                nexus: a.clone(),
                key: u64::MAX,
                all_target_ports: true,
            }],
            reservation: Some(Reservation {
                holder: Some(a.clone()),
                kind: PrType::ExclusiveAccessRegistrantsOnly,
            }),
            attentions: vec![PendingAttention {
                nexus: a,
                asc: 0x2a03,
            }],
        };
        let bytes = state.encode();
        assert_eq!(PrState::decode(&bytes).unwrap(), state);
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\": 1", "\"format\": 9");
        assert!(PrState::decode(text.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("format 9"));
        assert!(PrState::decode(b"{").is_err());
    }
}
