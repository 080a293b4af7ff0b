//! Raw librbd and librados bindings, generated at build time by bindgen from
//! the installed `<rbd/librbd.h>` and `<rados/librados.h>` (Ceph 16.2).
//!
//! Everything sits behind the `link` feature: without it this crate is empty
//! and links nothing, so the workspace builds on machines without Ceph's
//! development packages. The only user is `ferry-rbd`, whose safe wrapper is
//! the one place these functions are called. C naming is kept as is, so the
//! naming lints are allowed here and nowhere else.
#![cfg_attr(
    feature = "link",
    allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        clippy::all,
        clippy::undocumented_unsafe_blocks
    )
)]

#[cfg(feature = "link")]
include!(concat!(env!("OUT_DIR"), "/rbd.rs"));

/// The C layout of the structs ferry-rbd reads, pinned to the values gcc
/// reports for the Ceph 16.2 headers on x86_64 Linux: a header that moved a
/// field would make ferry-rbd read garbage, so it must fail here instead.
#[cfg(all(test, feature = "link", target_arch = "x86_64", target_os = "linux"))]
mod layout {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn rbd_image_info_t_layout() {
        assert_eq!(size_of::<rbd_image_info_t>(), 160);
        assert_eq!(align_of::<rbd_image_info_t>(), 8);
        assert_eq!(offset_of!(rbd_image_info_t, size), 0);
        assert_eq!(offset_of!(rbd_image_info_t, obj_size), 8);
        assert_eq!(offset_of!(rbd_image_info_t, num_objs), 16);
        assert_eq!(offset_of!(rbd_image_info_t, order), 24);
        assert_eq!(offset_of!(rbd_image_info_t, block_name_prefix), 28);
        assert_eq!(offset_of!(rbd_image_info_t, parent_pool), 56);
        assert_eq!(offset_of!(rbd_image_info_t, parent_name), 64);
    }

    #[test]
    fn rbd_image_watcher_t_layout() {
        assert_eq!(size_of::<rbd_image_watcher_t>(), 24);
        assert_eq!(offset_of!(rbd_image_watcher_t, addr), 0);
        assert_eq!(offset_of!(rbd_image_watcher_t, id), 8);
        assert_eq!(offset_of!(rbd_image_watcher_t, cookie), 16);
    }

    #[test]
    fn rados_stat_layouts() {
        assert_eq!(size_of::<rados_pool_stat_t>(), 128);
        assert_eq!(offset_of!(rados_pool_stat_t, num_bytes), 0);
        assert_eq!(offset_of!(rados_pool_stat_t, num_objects), 16);
        assert_eq!(offset_of!(rados_pool_stat_t, compressed_bytes_alloc), 120);
        assert_eq!(size_of::<rados_cluster_stat_t>(), 32);
        assert_eq!(offset_of!(rados_cluster_stat_t, kb), 0);
        assert_eq!(offset_of!(rados_cluster_stat_t, kb_avail), 16);
        assert_eq!(offset_of!(rados_cluster_stat_t, num_objects), 24);
    }

    #[test]
    fn constants_ferry_relies_on() {
        assert_eq!(RBD_FEATURE_LAYERING, 1);
        assert_eq!(RBD_FEATURE_EXCLUSIVE_LOCK, 1 << 2);
        assert_eq!(RBD_FEATURE_FAST_DIFF, 1 << 4);
        assert_eq!(RBD_IMAGE_OPTION_ORDER, 2);
        assert_eq!(RBD_IMAGE_OPTION_FEATURES, 1);
        assert_eq!(RBD_IMAGE_OPTION_STRIPE_UNIT, 3);
        assert_eq!(RBD_IMAGE_OPTION_STRIPE_COUNT, 4);
    }
}
