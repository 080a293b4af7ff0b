//! tgtd's management protocol, spoken directly for the requests that
//! carry a CHAP secret: `tgtadm --op new --mode account --password S`
//! would put the secret in a process's arguments, readable by anyone on
//! the node through `/proc/<pid>/cmdline` while it runs. Here it goes
//! over tgtd's root-only Unix socket and nowhere else.
//!
//! The protocol (tgt's `usr/tgtadm.h`, unchanged since 2015; 1.0.85 is
//! what Debian ships): connect to `/var/run/tgtd/socket.<control port>`
//! (or `$TGT_IPC_SOCKET.<port>`), send a fixed 120-byte request header
//! and a NUL-terminated `key=value,...` text, read an 8-byte response
//! header (error code, total length) and any text after it. The header
//! is written field by field at the offsets x86_64's C layout gives the
//! struct (see [`REQ_LEN`] and the layout test below), no `unsafe`.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The size of `struct tgtadm_req`, whose fields lie at (byte offset):
///
/// ```text
/// mode u32 @0, op u32 @4, lld char[64] @8, len u32 @72, tid i32 @76,
/// sid u64 @80, lun u64 @88, cid u32 @96, host_no u32 @100,
/// device_type u32 @104, ac_dir u32 @108, pack u32 @112, force u32 @116
/// ```
///
/// 120 bytes in all (8-byte aligned).
pub const REQ_LEN: usize = 120;
const LLD_AT: usize = 8;
const LLD_LEN: usize = 64;
const _: () = assert!(LLD_AT + LLD_LEN <= LEN_AT);
const LEN_AT: usize = 72;
const TID_AT: usize = 76;
const AC_DIR_AT: usize = 108;

/// `enum tgtadm_mode`: MODE_ACCOUNT.
pub const MODE_ACCOUNT: u32 = 7;

/// `enum tgtadm_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    New = 0,
    Delete = 1,
    Bind = 3,
    Unbind = 4,
}

/// `enum tgtadm_account_dir`: whose credentials an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Initiators authenticate with it.
    Incoming = 0,
    /// The target authenticates with it (mutual CHAP).
    Outgoing = 1,
}

/// Why tgtd refused, by its `tgtadm_errno` (the ones account requests
/// get; others by number).
fn error_name(code: u32) -> String {
    match code {
        1 => "unknown error".into(),
        2 => "out of memory".into(),
        4 => "can't find the target".into(),
        14 => "this account already exists".into(),
        15 => "can't find the account".into(),
        16 => "too many accounts".into(),
        17 => "invalid request".into(),
        18 => "this target already has an outgoing account".into(),
        n => format!("tgtd error {n}"),
    }
}

/// The request header for `op` on the iscsi driver.
pub fn header(op: Op, tid: i32, dir: Direction, body_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; REQ_LEN];
    h[0..4].copy_from_slice(&MODE_ACCOUNT.to_ne_bytes());
    h[4..8].copy_from_slice(&(op as u32).to_ne_bytes());
    h[LLD_AT..LLD_AT + 5].copy_from_slice(b"iscsi");
    let len = u32::try_from(REQ_LEN + body_len).unwrap_or(u32::MAX);
    h[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_ne_bytes());
    h[TID_AT..TID_AT + 4].copy_from_slice(&tid.to_ne_bytes());
    h[AC_DIR_AT..AC_DIR_AT + 4].copy_from_slice(&(dir as u32).to_ne_bytes());
    h
}

/// The socket of tgtd's management channel `control` (its `-C`).
pub fn socket_path(control: Option<u16>) -> PathBuf {
    let base = std::env::var("TGT_IPC_SOCKET").unwrap_or_else(|_| "/var/run/tgtd/socket".into());
    PathBuf::from(format!("{base}.{}", control.unwrap_or(0)))
}

/// Sends one account request; `params` never appears in an error.
pub fn account(
    control: Option<u16>,
    op: Op,
    tid: i32,
    dir: Direction,
    params: &str,
) -> Result<(), String> {
    let path = socket_path(control);
    let mut s = UnixStream::connect(&path)
        .map_err(|e| format!("connecting to tgtd at {}: {e}", path.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut body = params.as_bytes().to_vec();
    body.push(0);
    let mut msg = header(op, tid, dir, body.len());
    msg.extend_from_slice(&body);
    s.write_all(&msg)
        .map_err(|e| format!("sending to tgtd: {e}"))?;
    let mut rsp = [0u8; 8];
    s.read_exact(&mut rsp)
        .map_err(|e| format!("reading tgtd's answer: {e}"))?;
    let err = u32::from_ne_bytes(rsp[0..4].try_into().expect("4 bytes"));
    if err != 0 {
        return Err(error_name(err));
    }
    Ok(())
}

/// `user=<user>,password=<secret>` as tgtd parses it: the user ends at
/// the first comma, so a user with a comma is refused.
pub fn credentials(user: &str, password: &str) -> Result<String, String> {
    if user.contains(',') || user.is_empty() {
        return Err(format!("CHAP user {user:?}: empty or with a comma"));
    }
    if password.contains('\0') {
        return Err("a CHAP secret cannot hold a NUL byte".into());
    }
    Ok(format!("user={user},password={password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of `struct tgtadm_req` as a C compiler lays it out on
    /// x86_64: natural alignment, the u64 `sid` at the first multiple of
    /// 8 after `tid`.
    #[test]
    fn the_header_matches_the_c_layout() {
        let field_ends = [
            ("mode", 0, 4),
            ("op", 4, 4),
            ("lld", 8, 64),
            ("len", 72, 4),
            ("tid", 76, 4),
            ("sid", 80, 8),
            ("lun", 88, 8),
            ("cid", 96, 4),
            ("host_no", 100, 4),
            ("device_type", 104, 4),
            ("ac_dir", 108, 4),
            ("pack", 112, 4),
            ("force", 116, 4),
        ];
        let mut at: usize = 0;
        for (name, off, size) in field_ends {
            let align = if size == 8 { 8 } else { 4 };
            at = at.div_ceil(align) * align;
            assert_eq!(at, off, "{name}");
            at += size;
        }
        assert_eq!(at.div_ceil(8) * 8, REQ_LEN);
        let h = header(Op::Bind, 3, Direction::Outgoing, 10);
        assert_eq!(&h[0..4], &7u32.to_ne_bytes());
        assert_eq!(&h[4..8], &3u32.to_ne_bytes());
        assert_eq!(&h[8..14], b"iscsi\0");
        assert_eq!(&h[72..76], &130u32.to_ne_bytes());
        assert_eq!(&h[76..80], &3i32.to_ne_bytes());
        assert_eq!(&h[108..112], &1u32.to_ne_bytes());
    }

    #[test]
    fn credentials_refuse_what_tgtd_would_misparse() {
        assert_eq!(credentials("u", "p,q").unwrap(), "user=u,password=p,q");
        assert!(credentials("a,b", "p").is_err());
        assert!(credentials("", "p").is_err());
    }
}
