//! Sizes and rates as admins type them: `4096`, `4K`, `256M`, `1G`, `2T`
//! (binary multiples), and `unlimited` for rates.
use anyhow::{bail, Context, Result};

/// Parses a byte count with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("unknown size suffix {c:?} in {s:?}; use K, M, G or T"),
            };
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a size (examples: 4096, 4M, 1G)"))?;
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("{s:?} is too large"))
}

/// Parses a rate in bytes per second; `unlimited`/`0` gives `None`.
pub fn parse_rate(s: &str) -> Result<Option<u64>> {
    let t = s.trim().trim_end_matches("/s");
    if t.eq_ignore_ascii_case("unlimited") || t == "0" {
        return Ok(None);
    }
    Ok(Some(parse_size(t)?))
}

/// Formats bytes for people.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn rates_parse_with_unlimited() {
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert_eq!(parse_rate("100M/s").unwrap(), Some(100 << 20));
    }
}
