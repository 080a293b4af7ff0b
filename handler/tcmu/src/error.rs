//! The handler's error type: why a cfgstring, an open or a reconfig is
//! refused. The messages reach the administrator (targetcli shows
//! `check_config`'s reason; the rest go to tcmu-runner's log), so each
//! says what is wrong and, where there is one, what to do instead.
#![forbid(unsafe_code)]

/// The cause of an error in another crate (ferry-host, ferry-core),
/// carried as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the handler refuses, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// tcmu-runner passed no cfgstring at all.
    #[error("no cfgstring")]
    NoCfgString,
    /// The cfgstring carries an option neither ferry nor tcmu-runner takes.
    #[error("unknown option {key:?} in cfgstring {cfgstring:?} (ferry takes alua= and tpg=)")]
    UnknownOption { key: String, cfgstring: String },
    /// A handler option (`alua=`, `tpg=`) with a value it cannot take.
    #[error("cfgstring option {option:?}: {why}")]
    BadOption { option: String, why: String },
    /// A device whose port is not active cannot do what was asked.
    #[error("{spec}: {why}")]
    Standby { spec: String, why: String },
    /// The cfgstring names no volume.
    #[error(
        "cfgstring {cfgstring:?} names no volume; expected an absolute path such as /srv/vol0.img"
    )]
    NoVolume { cfgstring: String },
    /// A file volume named by a relative path.
    #[error(
        "volume path {path:?} is relative; give an absolute path (tcmu-runner's working \
         directory is not yours)"
    )]
    RelativePath { path: String },
    /// The volume spec does not parse.
    #[error("{source}")]
    Spec {
        #[source]
        source: Cause,
    },
    /// Whether the volume exists (or is a migration's source) could not
    /// be found out.
    #[error("cannot check {spec}: {source}")]
    Check {
        spec: String,
        #[source]
        source: Cause,
    },
    /// The volume does not exist.
    #[error(
        "{spec} does not exist; create it first with `ferry volume create {spec} --size <bytes>`"
    )]
    NoSuchVolume { spec: String },
    /// Another backstore of this tcmu-runner serves the volume.
    #[error("{spec} is already served by another backstore of this tcmu-runner")]
    AlreadyServed { spec: String },
    /// The backstore's block size or size does not fit the volume.
    #[error("the backstore does not fit its volume: {0}")]
    Geometry(ferry_host::HostError),
    /// The LUN could not be opened.
    #[error("cannot open {spec}: {source}")]
    Open {
        spec: String,
        #[source]
        source: Cause,
    },
    /// A new size that is not a whole number of blocks.
    #[error("{spec}: new size {bytes} is not a multiple of the {block}-byte block")]
    PartialBlock {
        spec: String,
        bytes: u64,
        block: u64,
    },
    /// A resize the volume cannot serve.
    #[error("{spec}: {source}")]
    Resize {
        spec: String,
        #[source]
        source: Box<Error>,
    },
    /// A new cfgstring naming another volume.
    #[error("{from}: cannot switch to {to}; move the data with `ferry migrate start {from} {to}`")]
    SwitchVolume { from: String, to: String },
}
