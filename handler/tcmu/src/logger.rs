//! Routes the `log` crate (ferry's engine and this handler) into
//! tcmu-runner's own log (`/var/log/tcmu-runner.log` and syslog), so
//! ferry's messages sit beside tcmu-runner's.
#![forbid(unsafe_code)]

use crate::ffi::Tcmu;

struct TcmuLogger(&'static Tcmu);

impl log::Log for TcmuLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0
                .log(record.level(), &format!("ferry: {}", record.args()));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls are ignored).
pub fn install(tcmu: &'static Tcmu) {
    let logger: &'static TcmuLogger = Box::leak(Box::new(TcmuLogger(tcmu)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
