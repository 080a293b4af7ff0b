/*
 * Prints the sizes and offsets of the tcmu-runner ABI that handler_ferry
 * declares in src/ffi.rs, one "name value" pair per line. Compiled by
 * tests/layout.rs against a tcmu-runner source tree (TCMU_SRC), whose
 * headers are not shipped in this repository.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/uio.h>
#include "libtcmu.h"
#include "tcmu-runner.h"

#define SIZE(t) printf("sizeof(%s) %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof(%s, %s) %zu\n", #t, #f, offsetof(t, f))

int main(void)
{
	SIZE(struct tcmur_handler);
	OFF(struct tcmur_handler, name);
	OFF(struct tcmur_handler, subtype);
	OFF(struct tcmur_handler, cfg_desc);
	OFF(struct tcmur_handler, opaque);
	OFF(struct tcmur_handler, check_config);
	OFF(struct tcmur_handler, reconfig);
	OFF(struct tcmur_handler, open);
	OFF(struct tcmur_handler, close);
	OFF(struct tcmur_handler, nr_threads);
	OFF(struct tcmur_handler, handle_cmd);
	OFF(struct tcmur_handler, read);
	OFF(struct tcmur_handler, write);
	OFF(struct tcmur_handler, flush);
	OFF(struct tcmur_handler, unmap);
	OFF(struct tcmur_handler, writesame);
	OFF(struct tcmur_handler, caw);
	OFF(struct tcmur_handler, report_event);
	OFF(struct tcmur_handler, lock);
	OFF(struct tcmur_handler, unlock);
	OFF(struct tcmur_handler, get_lock_tag);
	OFF(struct tcmur_handler, get_lock_state);
	OFF(struct tcmur_handler, _is_dbus_handler);
	OFF(struct tcmur_handler, update_logdir);
	OFF(struct tcmur_handler, init);
	OFF(struct tcmur_handler, destroy);

	SIZE(struct tcmur_cmd);
	OFF(struct tcmur_cmd, lib_cmd);
	OFF(struct tcmur_cmd, iovec);
	OFF(struct tcmur_cmd, iov_cnt);
	OFF(struct tcmur_cmd, iov_base_copy);
	OFF(struct tcmur_cmd, cmd_state);
	OFF(struct tcmur_cmd, requested);
	OFF(struct tcmur_cmd, cmds_list_entry);
	OFF(struct tcmur_cmd, start_time);
	OFF(struct tcmur_cmd, timed_out);
	OFF(struct tcmur_cmd, done);

	SIZE(struct tcmulib_cmd);
	OFF(struct tcmulib_cmd, cmd_id);
	OFF(struct tcmulib_cmd, cdb);
	OFF(struct tcmulib_cmd, iovec);
	OFF(struct tcmulib_cmd, iov_cnt);
	OFF(struct tcmulib_cmd, sense_buf);
	OFF(struct tcmulib_cmd, hm_private);

	SIZE(struct tcmulib_cfg_info);
	OFF(struct tcmulib_cfg_info, type);
	OFF(struct tcmulib_cfg_info, data);

	printf("TCMULIB_CFG_DEV_CFGSTR %d\n", TCMULIB_CFG_DEV_CFGSTR);
	printf("TCMULIB_CFG_DEV_SIZE %d\n", TCMULIB_CFG_DEV_SIZE);
	printf("TCMULIB_CFG_WRITE_CACHE %d\n", TCMULIB_CFG_WRITE_CACHE);
	printf("TCMU_STS_ASYNC_HANDLED %d\n", TCMU_STS_ASYNC_HANDLED);
	printf("TCMU_STS_NOT_HANDLED %d\n", TCMU_STS_NOT_HANDLED);
	printf("TCMU_STS_OK %d\n", TCMU_STS_OK);
	printf("TCMU_STS_NO_RESOURCE %d\n", TCMU_STS_NO_RESOURCE);
	printf("TCMU_STS_PASSTHROUGH_ERR %d\n", TCMU_STS_PASSTHROUGH_ERR);
	printf("TCMU_STS_WR_ERR %d\n", TCMU_STS_WR_ERR);
	printf("TCMU_STS_RD_ERR %d\n", TCMU_STS_RD_ERR);
	printf("TCMU_STS_MISCOMPARE %d\n", TCMU_STS_MISCOMPARE);
	printf("TCMU_STS_INVALID_CMD %d\n", TCMU_STS_INVALID_CMD);
	printf("TCMU_STS_INVALID_CDB %d\n", TCMU_STS_INVALID_CDB);
	printf("TCMU_STS_INVALID_PARAM_LIST %d\n", TCMU_STS_INVALID_PARAM_LIST);
	printf("TCMU_STS_INVALID_PARAM_LIST_LEN %d\n", TCMU_STS_INVALID_PARAM_LIST_LEN);
	printf("TCMU_STS_HW_ERR %d\n", TCMU_STS_HW_ERR);
	printf("TCMU_STS_RANGE %d\n", TCMU_STS_RANGE);
	printf("SENSE_BUFFERSIZE %d\n", SENSE_BUFFERSIZE);
	return 0;
}
