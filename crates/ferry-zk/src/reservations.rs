//! Persistent reservations kept in the map: `<root>/reservations/<lun>`,
//! one [`ZkDocument`] a LUN, as [`ferry_pr`]'s store.
//!
//! The `ferry` command and the agent use these homes directly; the target
//! plugins reach them through the agent (`ferry_host::relay`), so the data
//! path links no ZooKeeper client.
use ferry_map::MapError;
use ferry_pr::{OpenMode, Pointer, PrError, ReservationHomes, ReservationStore};

use crate::{ZkConfig, ZkDocument};

/// Follows pointers into ZooKeeper maps.
pub struct ZkReservations;

/// One LUN's document.
struct ZkStore(ZkDocument);

fn pr_err(doc: &ZkDocument, e: MapError) -> PrError {
    match e {
        MapError::Conflict { .. } => PrError::Fenced {
            what: doc.describe(),
        },
        e => PrError::store(doc.describe(), e),
    }
}

impl ReservationStore for ZkStore {
    fn load(&self) -> Result<Option<Vec<u8>>, PrError> {
        self.0.load().map_err(|e| pr_err(&self.0, e))
    }
    fn save(&self, bytes: &[u8]) -> Result<(), PrError> {
        self.0.store(bytes).map_err(|e| pr_err(&self.0, e))
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Connects to the document `pointer` names.
pub fn connect(pointer: &Pointer) -> Result<ZkDocument, PrError> {
    let bad = |why: String| PrError::BadPointer {
        what: pointer.describe(),
        why,
    };
    let mut cfg = ZkConfig::parse(&pointer.kept_in).map_err(|e| bad(e.to_string()))?;
    if let Some(f) = &pointer.auth_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| bad(format!("reading the credentials {}: {e}", f.display())))?;
        cfg.auth = Some(text.trim().to_string());
    }
    if pointer.lun.is_empty() || pointer.lun.contains('/') {
        return Err(bad(format!("bad LUN name {:?}", pointer.lun)));
    }
    ZkDocument::open(cfg, &format!("reservations/{}", pointer.lun)).map_err(|e| bad(e.to_string()))
}

impl ReservationHomes for ZkReservations {
    fn open(&self, pointer: &Pointer, mode: OpenMode) -> Result<ferry_pr::OpenedHome, PrError> {
        let doc = connect(pointer)?;
        let bytes = match mode {
            OpenMode::Read => doc.load(),
            OpenMode::Claim => doc.claim(),
            OpenMode::Replace(b) => doc.overwrite(&b).map(|()| Some(b)),
        }
        .map_err(|e| pr_err(&doc, e))?;
        Ok((Box::new(ZkStore(doc)), bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn bad_pointers_are_clear_errors_without_connecting() {
        let e = connect(&Pointer::new("zk://nowhere", "db", None)).unwrap_err();
        assert!(e.to_string().contains("zk://nowhere"), "{e}");
        let e = connect(&Pointer::new("zk://127.0.0.1:1/ferry", "a/b", None)).unwrap_err();
        assert!(e.to_string().contains("bad LUN name"), "{e}");
        let e = connect(&Pointer::new(
            "zk://127.0.0.1:1/ferry",
            "db",
            Some(Path::new("/nonexistent/zk-auth")),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/zk-auth"), "{e}");
    }
}
