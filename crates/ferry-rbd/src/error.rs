//! The backend's error type: every failure names the operation and what it
//! was done to (cluster conf, pool, image, object), so a message read by an
//! admin says what and where; librbd/librados failures keep their errno.
use std::io;

/// Result of RBD backend operations.
pub type Result<T, E = RbdError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to Ceph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RbdError {
    /// An `rbd:` spec could not be understood.
    #[error("bad rbd spec {spec:?}: {why}")]
    BadSpec { spec: String, why: String },
    /// No monitor answered within the connect timeout.
    #[error(
        "cannot connect to the Ceph cluster of {conf}: no monitor answered within {secs} s \
         (is the cluster up, and is `mon host` in the conf right?)"
    )]
    ConnectTimeout { conf: String, secs: u64 },
    /// The pool does not exist.
    #[error("pool {pool:?} does not exist in the Ceph cluster of {conf}")]
    NoPool { pool: String, conf: String },
    /// The image (or its snapshot) does not exist.
    #[error("image {image:?} does not exist in pool {pool:?}")]
    NoImage { pool: String, image: String },
    /// An image of that name is already there.
    #[error("image {image:?} already exists in pool {pool:?}")]
    ImageExists { pool: String, image: String },
    /// A librbd / librados call failed; `errno` is positive.
    #[error("{op} {what} failed: {}", io::Error::from_raw_os_error(*.errno))]
    Call {
        op: &'static str,
        what: String,
        errno: i32,
    },
    /// Ceph answered something ferry cannot use.
    #[error("{what}: {why}")]
    Unexpected { what: String, why: String },
    /// Another live client holds the image's exclusive lock: a process
    /// serving or migrating it elsewhere (another gateway, another run
    /// directory), which is the only one allowed to write it.
    #[error(
        "image {image} is held by {} (it holds the image's exclusive lock, so it serves or \
         migrates the image and is its only writer): run the command where it runs; \
         if it died, its lock is released once its watch on the image expires (30 s by \
         default) or when it is fenced by a failover",
        holders.join(", ")
    )]
    Locked { image: String, holders: Vec<String> },
    /// A migration cannot start: each entry is one failed check.
    #[error("migration prechecks failed: {}", .0.join("; "))]
    Precheck(Vec<String>),
}

impl RbdError {
    /// Wraps the negative return `r` of a librbd / librados call.
    pub(crate) fn call(op: &'static str, what: impl Into<String>, r: i64) -> Self {
        RbdError::Call {
            op,
            what: what.into(),
            errno: i32::try_from(-r).unwrap_or(libc::EIO),
        }
    }

    /// The closest errno, for front-ends that report errors as numbers.
    pub fn errno(&self) -> i32 {
        match self {
            RbdError::BadSpec { .. } => libc::EINVAL,
            RbdError::ConnectTimeout { .. } => libc::ETIMEDOUT,
            RbdError::NoPool { .. } | RbdError::NoImage { .. } => libc::ENOENT,
            RbdError::ImageExists { .. } => libc::EEXIST,
            RbdError::Call { errno, .. } => *errno,
            RbdError::Unexpected { .. } => libc::EIO,
            RbdError::Precheck(_) | RbdError::Locked { .. } => libc::EBUSY,
        }
    }

    /// Whether this says the named thing does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }
}

impl RbdError {
    /// What the error is about (pool/image, conf, object), for messages.
    pub fn subject(&self) -> String {
        match self {
            RbdError::BadSpec { spec, .. } => spec.clone(),
            RbdError::ConnectTimeout { conf, .. } => conf.clone(),
            RbdError::NoPool { pool, .. } => pool.clone(),
            RbdError::NoImage { pool, image } | RbdError::ImageExists { pool, image } => {
                format!("{pool}/{image}")
            }
            RbdError::Call { what, .. } | RbdError::Unexpected { what, .. } => what.clone(),
            RbdError::Precheck(_) => "migration".into(),
            RbdError::Locked { image, .. } => image.clone(),
        }
    }

    /// The engine's error for this failure during `op` on `volume`. The
    /// errno survives for I/O errors (front-ends turn it into sense data);
    /// other failures carry this error's message.
    pub fn into_core(self, op: &'static str, volume: &str) -> ferry_core::Error {
        let source = match &self {
            RbdError::Call { errno, .. } => io::Error::from_raw_os_error(*errno),
            RbdError::BadSpec { spec, why } => {
                return ferry_core::Error::BadSpec {
                    spec: spec.clone(),
                    why: why.clone(),
                }
            }
            RbdError::Locked { .. } => return ferry_core::Error::Busy(self.to_string()),
            other => io::Error::new(kind_of(other.errno()), other.to_string()),
        };
        ferry_core::Error::volume_io(op, volume, 0, source)
    }
}

fn kind_of(errno: i32) -> io::ErrorKind {
    match errno {
        libc::ENOENT => io::ErrorKind::NotFound,
        libc::EEXIST => io::ErrorKind::AlreadyExists,
        libc::ETIMEDOUT => io::ErrorKind::TimedOut,
        libc::EINVAL => io::ErrorKind::InvalidInput,
        libc::EBUSY => io::ErrorKind::ResourceBusy,
        _ => io::ErrorKind::Other,
    }
}

impl From<RbdError> for ferry_core::Error {
    fn from(e: RbdError) -> Self {
        match e {
            RbdError::Call { op, what, errno } => {
                ferry_core::Error::volume_io(op, &what, 0, io::Error::from_raw_os_error(errno))
            }
            other => {
                let subject = other.subject();
                other.into_core("rbd", &subject)
            }
        }
    }
}
