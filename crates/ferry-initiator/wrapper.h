/* The libiscsi API ferry-initiator binds to (see build.rs). */
#include <stdint.h>
#include <stddef.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
