//! `rbd:` volume specs: `rbd:<pool>/<image>[@<snap>][?conf=PATH&id=NAME&keyring=PATH]`.
//!
//! A spec names everything needed to reach an image, so a migration record
//! can reopen its source from the spec alone. Names are checked here, before
//! any cluster is contacted, so a typo is a clear spec error rather than a
//! confusing ENOENT: pool, image and snapshot names must be non-empty and
//! hold none of `/ @ ? & =`, whitespace or control characters; the query
//! keys are `conf`, `id` and `keyring`, each at most once, with a non-empty
//! value (so paths cannot hold `&`).
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{RbdError, Result};
use crate::rados::ConnectOptions;

/// The scheme prefix of RBD specs.
pub const SCHEME: &str = "rbd:";

/// A parsed `rbd:` spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    /// A snapshot: the volume is then read-only.
    pub snap: Option<String>,
    /// ceph.conf to use; `None` is librados' default search.
    pub conf: Option<PathBuf>,
    /// Client id without `client.`; `None` is `admin`.
    pub id: Option<String>,
    pub keyring: Option<PathBuf>,
}

fn check_name(spec: &str, what: &str, name: &str) -> Result<()> {
    let bad = |why: String| RbdError::BadSpec {
        spec: spec.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(bad(format!("the {what} name is empty")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '@' | '?' | '&' | '=') || c.is_whitespace() || c.is_control())
    {
        return Err(bad(format!("the {what} name {name:?} contains {c:?}")));
    }
    Ok(())
}

impl RbdSpec {
    /// Whether `s` is meant as an RBD spec (starts with `rbd:`).
    pub fn is_rbd(s: &str) -> bool {
        s.starts_with(SCHEME)
    }

    /// Parses a spec; see the module docs for the grammar.
    pub fn parse(s: &str) -> Result<RbdSpec> {
        let bad = |why: &str| RbdError::BadSpec {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("an RBD spec starts with `rbd:` (rbd:<pool>/<image>[@<snap>])"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (pool, image) = path
            .split_once('/')
            .ok_or_else(|| bad("expected <pool>/<image> after `rbd:`"))?;
        if image.contains('/') {
            return Err(bad(
                "expected exactly one `/` between pool and image (namespaces are not supported)",
            ));
        }
        let (image, snap) = match image.split_once('@') {
            Some((i, sn)) => (i, Some(sn)),
            None => (image, None),
        };
        check_name(s, "pool", pool)?;
        check_name(s, "image", image)?;
        if let Some(sn) = snap {
            check_name(s, "snapshot", sn)?;
        }
        let mut spec = RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap: snap.map(str::to_string),
            conf: None,
            id: None,
            keyring: None,
        };
        if let Some(q) = query {
            if q.is_empty() {
                return Err(bad("empty option list after `?`"));
            }
            for pair in q.split('&') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("option {pair:?} is not key=value")))?;
                if v.is_empty() {
                    return Err(bad(&format!("option {k:?} has an empty value")));
                }
                let dup = match k {
                    "conf" => spec.conf.replace(PathBuf::from(v)).is_some(),
                    "id" => {
                        let id = v.strip_prefix("client.").unwrap_or(v);
                        check_name(s, "client id", id)?;
                        spec.id.replace(id.to_string()).is_some()
                    }
                    "keyring" => spec.keyring.replace(PathBuf::from(v)).is_some(),
                    other => {
                        return Err(bad(&format!(
                            "unknown option {other:?} (known: conf, id, keyring)"
                        )))
                    }
                };
                if dup {
                    return Err(bad(&format!("option {k:?} given twice")));
                }
            }
        }
        Ok(spec)
    }

    /// How to connect for this spec, with the default timeouts.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            conf: self.conf.clone(),
            id: self.id.clone(),
            keyring: self.keyring.clone(),
            ..ConnectOptions::default()
        }
    }

    /// The same cluster and options, another image (no snapshot).
    pub fn with_image(&self, pool: &str, image: &str) -> RbdSpec {
        RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap: None,
            ..self.clone()
        }
    }

    /// `pool/image[@snap]`, the short name used in messages.
    pub fn short(&self) -> String {
        match &self.snap {
            Some(sn) => format!("{}/{}@{sn}", self.pool, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

impl fmt::Display for RbdSpec {
    /// The canonical spec, which [`RbdSpec::parse`] reads back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.short())?;
        let mut sep = '?';
        if let Some(c) = &self.conf {
            write!(f, "{sep}conf={}", c.display())?;
            sep = '&';
        }
        if let Some(id) = &self.id {
            write!(f, "{sep}id={id}")?;
            sep = '&';
        }
        if let Some(k) = &self.keyring {
            write!(f, "{sep}keyring={}", k.display())?;
        }
        Ok(())
    }
}

impl FromStr for RbdSpec {
    type Err = RbdError;
    fn from_str(s: &str) -> Result<Self> {
        RbdSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_full_form_and_prints_it_back() {
        let s = "rbd:ferry-a/vol1@snap1?conf=/etc/ceph/x.conf&id=admin&keyring=/k";
        let spec = RbdSpec::parse(s).unwrap();
        assert_eq!(spec.pool, "ferry-a");
        assert_eq!(spec.image, "vol1");
        assert_eq!(spec.snap.as_deref(), Some("snap1"));
        assert_eq!(spec.conf, Some(PathBuf::from("/etc/ceph/x.conf")));
        assert_eq!(spec.id.as_deref(), Some("admin"));
        assert_eq!(spec.keyring, Some(PathBuf::from("/k")));
        assert_eq!(spec.to_string(), s);
        assert_eq!(RbdSpec::parse(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn parses_the_short_form() {
        let spec: RbdSpec = "rbd:p/i".parse().unwrap();
        assert_eq!((spec.pool.as_str(), spec.image.as_str()), ("p", "i"));
        assert_eq!(spec.snap, None);
        assert_eq!(spec.conf, None);
        assert_eq!(spec.to_string(), "rbd:p/i");
        assert_eq!(
            RbdSpec::parse("rbd:p/i?id=client.foo")
                .unwrap()
                .id
                .as_deref(),
            Some("foo")
        );
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (s, why) in [
            ("p/i", "starts with `rbd:`"),
            ("file:/x", "starts with `rbd:`"),
            ("rbd:", "<pool>/<image>"),
            ("rbd:pool", "<pool>/<image>"),
            ("rbd:/img", "pool name is empty"),
            ("rbd:pool/", "image name is empty"),
            ("rbd:a/b/c", "exactly one `/`"),
            ("rbd:p/i@", "snapshot name is empty"),
            ("rbd:p/i@s@t", "contains '@'"),
            ("rbd:p o/i", "contains ' '"),
            ("rbd:p/i?", "empty option list"),
            ("rbd:p/i?conf", "not key=value"),
            ("rbd:p/i?conf=", "empty value"),
            ("rbd:p/i?foo=bar", "unknown option"),
            ("rbd:p/i?id=a&id=b", "given twice"),
            ("rbd:p/i?conf=/a&&id=x", "not key=value"),
        ] {
            match RbdSpec::parse(s) {
                Err(RbdError::BadSpec { why: w, spec }) => {
                    assert_eq!(spec, s);
                    assert!(w.contains(why), "{s}: {w:?} lacks {why:?}");
                }
                other => panic!("{s}: expected a spec error, got {other:?}"),
            }
        }
    }
}
