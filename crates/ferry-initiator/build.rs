//! Generates the libiscsi FFI bindings from the system headers.
//!
//! The headers come from Debian's `libiscsi-dev` (see scripts/setup.sh);
//! nothing of libiscsi is vendored. Only the `iscsi_*` / `scsi_*` API and
//! its constants are bound, so the output stays small and stable.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=iscsi");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("iscsi_.*")
        .allowlist_function("scsi_.*")
        .allowlist_type("iscsi_.*")
        .allowlist_type("scsi_.*")
        .allowlist_type("unmap_list")
        .allowlist_var("SCSI_.*")
        .allowlist_var("ISCSI_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            panic!("bindgen over <iscsi/iscsi.h> failed (is libiscsi-dev installed?): {e}")
        });

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("libiscsi.rs"))
        .expect("writing the libiscsi bindings");
}
