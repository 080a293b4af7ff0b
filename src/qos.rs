//! `ferry volume qos`: a served LUN's IOPS and bandwidth limits, read and
//! write apart, shown or changed live (see `ferry_host::qos`). The same
//! limits as a map LUN's `--qos` list, which the agents apply.
use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_host::control::{call, find_host, Request};
use ferry_host::qos::QosLimits;
use ferry_host::VolumeSpec;

use crate::units::parse_size;

#[derive(Args)]
pub struct QosArgs {
    /// The served LUN's spec.
    pub spec: String,
    /// Read commands per second (`unlimited` for none).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub read_iops: Option<String>,
    /// Write commands per second (writes, flushes, unmaps, WRITE SAME).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub write_iops: Option<String>,
    /// Read bytes per second, e.g. 100M (`unlimited` for none).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub read_bps: Option<String>,
    /// Written bytes per second, e.g. 50M.
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub write_bps: Option<String>,
    /// Remove every limit (before applying any given with it).
    #[arg(long)]
    pub clear: bool,
    #[arg(long)]
    pub json: bool,
}

/// One limit as typed: a positive count (`bytes`: with a K/M/G suffix),
/// or `unlimited`. Zero and negative numbers are refused: a limit of zero
/// would stop the LUN.
pub fn parse_limit(what: &str, s: &str, bytes: bool) -> Result<Option<u64>> {
    let t = s.trim().trim_end_matches("/s");
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if t.starts_with('-') {
        bail!("{what} {s:?}: a limit is a positive number (or `unlimited`)");
    }
    let n = if bytes {
        parse_size(t)?
    } else {
        t.parse::<u64>()
            .with_context(|| format!("{what} {s:?} is not a number of commands per second"))?
    };
    if n == 0 {
        bail!("{what} 0 would stop the LUN: a limit is a positive number (or `unlimited`)");
    }
    Ok(Some(n))
}

/// `read-iops=500,write-bps=20M` (the map's `--qos`): the fields named
/// are set, the others unlimited; `unlimited` alone is no limit at all.
pub fn parse_list(s: &str) -> Result<QosLimits> {
    let mut limits = QosLimits::default();
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("unlimited") {
        return Ok(limits);
    }
    for part in s.split(',') {
        let (k, v) = part.split_once('=').with_context(|| {
            format!(
                "QoS {part:?}: expected FIELD=VALUE (read-iops, write-iops, read-bps, write-bps)"
            )
        })?;
        let k = k.trim();
        let slot = match k {
            "read-iops" => &mut limits.read_iops,
            "write-iops" => &mut limits.write_iops,
            "read-bps" => &mut limits.read_bps,
            "write-bps" => &mut limits.write_bps,
            _ => bail!("unknown QoS field {k:?} (read-iops, write-iops, read-bps, write-bps)"),
        };
        *slot = parse_limit(k, v, k.ends_with("bps"))?;
    }
    Ok(limits)
}

pub fn run(a: &QosArgs) -> Result<()> {
    let spec = VolumeSpec::parse(&a.spec)?.to_string();
    let sock = find_host(&spec).with_context(|| {
        format!("no process serves {spec} (QoS limits belong to a served LUN; for a map LUN use `ferry map lun set --qos`)")
    })?;
    let ask = |limits: Option<QosLimits>| -> Result<QosLimits> {
        let r = call(
            &sock,
            &Request::Qos {
                volume: spec.clone(),
                limits,
            },
        )?;
        if !r.ok {
            bail!("{}", r.error.unwrap_or_default());
        }
        r.qos
            .context("the serving process did not report QoS limits")
    };
    let mut limits = if a.clear {
        QosLimits::default()
    } else {
        ask(None)?
    };
    let changes = [
        (&a.read_iops, "--read-iops", false, &mut limits.read_iops),
        (&a.write_iops, "--write-iops", false, &mut limits.write_iops),
        (&a.read_bps, "--read-bps", true, &mut limits.read_bps),
        (&a.write_bps, "--write-bps", true, &mut limits.write_bps),
    ];
    let mut changed = a.clear;
    for (given, name, bytes, slot) in changes {
        if let Some(v) = given {
            *slot = parse_limit(name, v, bytes)?;
            changed = true;
        }
    }
    let now = if changed { ask(Some(limits))? } else { limits };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&now)?);
    } else {
        println!("{spec}: QoS {now}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_limits() {
        let l = parse_list("read-iops=500, write-bps=20M").unwrap();
        assert_eq!(l.read_iops, Some(500));
        assert_eq!(l.write_bps, Some(20 << 20));
        assert_eq!(l.write_iops, None);
        assert!(parse_list("unlimited").unwrap().is_unlimited());
        for bad in [
            "read-iops=0",
            "write-bps=-5",
            "read-ipos=5",
            "read-iops",
            "read-iops=x",
        ] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_limit("x", "unlimited", true).unwrap(), None);
    }
}
