//! The `log` facade (ferry's engine, hosting code and the plugin itself)
//! forwarded into the host's own log, so ferry's messages sit beside the
//! host's: tgtd's syslog (or stderr with `-f`), tcmu-runner's log file
//! and syslog.
//!
//! The plugin supplies the call into its host's printf-like logger (in
//! its `ffi.rs`, where `unsafe` is allowed); this module makes each
//! record one line, `<prefix>: <message>`, as a C string.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fmt;

/// The most verbose level forwarded: debug records (per command, in
/// places) would flood the host's log under load.
pub const MAX_LEVEL: log::LevelFilter = log::LevelFilter::Info;

struct HostLogger<W> {
    prefix: &'static str,
    write: W,
}

impl<W> log::Log for HostLogger<W>
where
    W: Fn(log::Level, &CStr) + Send + Sync,
{
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= MAX_LEVEL
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            (self.write)(record.level(), &line(self.prefix, record.args()));
        }
    }

    fn flush(&self) {}
}

/// `<prefix>: <message>` as a C string, any NUL in the message made a
/// space (a C string cannot hold one).
pub fn line(prefix: &str, message: &fmt::Arguments<'_>) -> CString {
    let text = format!("{prefix}: {message}").replace('\0', " ");
    CString::new(text).unwrap_or_default()
}

/// Installs the logger for the process, forwarding records up to
/// [`MAX_LEVEL`] to `write` (which must be callable from any thread):
/// once, from the plugin's entry point. Later calls, and a call in a
/// process that has a logger already (a test binary), are ignored.
pub fn install<W>(prefix: &'static str, write: W)
where
    W: Fn(log::Level, &CStr) + Send + Sync + 'static,
{
    let logger: &'static HostLogger<W> = Box::leak(Box::new(HostLogger { prefix, write }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(MAX_LEVEL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_line_is_prefixed_and_free_of_nuls() {
        assert_eq!(
            line("bs_ferry", &format_args!("a\0b {}", 1)).as_bytes(),
            b"bs_ferry: a b 1"
        );
    }

    #[test]
    fn records_up_to_info_reach_the_host() {
        static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());
        install("ferry", |level, line| {
            LINES
                .lock()
                .unwrap()
                .push((level, line.to_string_lossy().into_owned()));
        });
        log::error!("e");
        log::info!("i");
        log::debug!("d");
        assert_eq!(
            *LINES.lock().unwrap(),
            [
                (log::Level::Error, "ferry: e".to_string()),
                (log::Level::Info, "ferry: i".to_string())
            ]
        );
    }
}
