/* The librbd and librados API ferry-rbd binds to (see build.rs). Debian's
 * librbd-dev and librados-dev provide these headers. */
#include <rados/librados.h>
#include <rbd/librbd.h>
