//! Generates the librbd / librados bindings from the installed headers.
//!
//! Only with the `link` feature: without it nothing is generated or linked,
//! so the workspace builds where librbd is absent. With it, the headers come
//! from Debian's `librbd-dev` and `librados-dev` (Ceph 16.2 on Debian 12;
//! `scripts/ceph-cluster.sh` installs them); nothing of Ceph is vendored.
//! Only the `rbd_*` / `rados_*` API and the `RBD_*` / `LIBRADOS_*`
//! constants are bound.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "link")]
    generate::run();
}

#[cfg(feature = "link")]
mod generate {
    use std::env;
    use std::path::PathBuf;

    pub fn run() {
        println!("cargo:rerun-if-changed=wrapper.h");
        println!("cargo:rustc-link-lib=rbd");
        println!("cargo:rustc-link-lib=rados");

        let bindings = bindgen::Builder::default()
            .header("wrapper.h")
            .allowlist_function("rbd_.*")
            .allowlist_function("rados_.*")
            .allowlist_type("rbd_.*")
            .allowlist_type("rados_.*")
            .allowlist_var("RBD_.*")
            .allowlist_var("LIBRADOS_.*")
            .prepend_enum_name(false)
            .derive_default(true)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "bindgen over <rbd/librbd.h> and <rados/librados.h> failed \
                     (are librbd-dev and librados-dev installed?): {e}"
                )
            });

        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings
            .write_to_file(out.join("rbd.rs"))
            .expect("writing the librbd bindings");
    }
}
