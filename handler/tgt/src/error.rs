//! The plugin's error type: why an LU is refused (`bs_init`, `bs_open`)
//! or the workers cannot start. tgtd answers tgtadm with an error code
//! only, so each message goes to tgtd's log and says what is wrong.
#![forbid(unsafe_code)]

/// The cause of an error in another crate (ferry-host, ferry-core),
/// carried as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the plugin refuses, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `--bsopts` carries an option bs_ferry does not take.
    #[error("unknown --bsopts option {key:?} (bs_ferry takes cache=<mode>, alua=active|standby, tpg=<id>)")]
    UnknownOption { key: String },
    /// A `--bsopts` option with a value it cannot take.
    #[error("--bsopts {key}: {why}")]
    BadOption { key: &'static str, why: String },
    /// `--bsopts cache=` names no cache mode.
    #[error("{0}")]
    CacheMode(String),
    /// The LUN could not be opened.
    #[error("cannot open {spec:?}: {source}")]
    Open {
        spec: String,
        #[source]
        source: Cause,
    },
    /// The LU's block size does not fit the volume.
    #[error(transparent)]
    Geometry(ferry_host::HostError),
    /// tgtd lacks a function the plugin calls, or the workers or their
    /// eventfd could not be set up.
    #[error(transparent)]
    Plugin(#[from] ferry_plugin::Error),
    /// As [`Error::Plugin`], found once and kept for the process.
    #[error(transparent)]
    Host(&'static ferry_plugin::Error),
    /// tgtd would not watch the completions' eventfd.
    #[error("tgt_event_add failed ({0})")]
    EventAdd(i32),
}
