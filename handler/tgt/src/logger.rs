//! Routes the `log` crate into tgtd's own log (syslog, or stderr when
//! tgtd runs with `-f`), so ferry's messages sit beside tgtd's.
use std::ffi::CString;

use crate::ffi::Tgtd;

struct TgtdLogger(&'static Tgtd);

impl log::Log for TgtdLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("bs_ferry: {}", record.args()).replace('\0', " ");
        let Ok(msg) = CString::new(text) else { return };
        let f = match record.level() {
            log::Level::Error => self.0.log_error,
            _ => self.0.log_warning,
        };
        // SAFETY: tgtd's printf-like logger with a constant "%s\n" format
        // and one valid C string argument; safe from any thread.
        unsafe { f(c"%s\n".as_ptr(), msg.as_ptr()) };
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls are ignored).
pub fn install(tgtd: &'static Tgtd) {
    let logger: &'static TgtdLogger = Box::leak(Box::new(TgtdLogger(tgtd)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
