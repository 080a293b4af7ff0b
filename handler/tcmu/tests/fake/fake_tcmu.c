/*
 * A stand-in for tcmu-runner 1.5.4 and libtcmu in one shared object, for
 * tests/fake_runner.rs: it defines the functions handler_ferry resolves
 * with dlsym(RTLD_DEFAULT) when loaded (the test dlopens this file with
 * RTLD_GLOBAL first), over a fake device, and records completions so the
 * test can wait for them. Written for these tests from the signatures in
 * the handler's own declarations (src/ffi.rs); it mirrors no runner code.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fake_dev {
	char cfgstring[4096];
	char name[16];
	uint32_t block_size;
	uint64_t num_lbas;
	bool write_cache;
	uint32_t unmap_gran;
	bool split_unmaps;
	uint32_t unmap_align;
	void *hm_private;
};

#define MAX_DONE 4096

static void *registered;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct {
	void *cmd;
	int status;
	int taken;
} done[MAX_DONE];
static int ndone;

/* --- what tcmu-runner exports ------------------------------------------ */

int tcmur_register_handler(void *handler)
{
	registered = handler;
	return 0;
}

void tcmur_cmd_complete(struct fake_dev *dev, void *cmd, int rc)
{
	(void)dev;
	pthread_mutex_lock(&mu);
	if (ndone < MAX_DONE) {
		done[ndone].cmd = cmd;
		done[ndone].status = rc;
		done[ndone].taken = 0;
		ndone++;
	}
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

void tcmur_dev_set_private(struct fake_dev *dev, void *p) { dev->hm_private = p; }
void *tcmur_dev_get_private(struct fake_dev *dev) { return dev->hm_private; }

/* --- what libtcmu exports ---------------------------------------------- */

char *tcmu_dev_get_cfgstring(struct fake_dev *dev) { return dev->cfgstring; }
const char *tcmu_dev_get_uio_name(struct fake_dev *dev) { return dev->name; }
uint32_t tcmu_dev_get_block_size(struct fake_dev *dev) { return dev->block_size; }
uint64_t tcmu_dev_get_num_lbas(struct fake_dev *dev) { return dev->num_lbas; }
void tcmu_dev_set_write_cache_enabled(struct fake_dev *dev, bool on) { dev->write_cache = on; }
bool tcmu_dev_get_write_cache_enabled(struct fake_dev *dev) { return dev->write_cache; }

void tcmu_dev_set_opt_unmap_gran(struct fake_dev *dev, uint32_t len, bool split)
{
	dev->unmap_gran = len;
	dev->split_unmaps = split;
}

void tcmu_dev_set_unmap_gran_align(struct fake_dev *dev, uint32_t len) { dev->unmap_align = len; }

static void vlog(const char *level, const char *fmt, va_list ap)
{
	fprintf(stderr, "fake-tcmu %s: ", level);
	vfprintf(stderr, fmt, ap);
}

#define LOGFN(name, level)                                                      \
	void name(void *dev, const char *func, int line, const char *fmt, ...) \
	{                                                                       \
		va_list ap;                                                     \
		(void)dev;                                                      \
		(void)func;                                                     \
		(void)line;                                                     \
		va_start(ap, fmt);                                              \
		vlog(level, fmt, ap);                                           \
		va_end(ap);                                                     \
	}
LOGFN(tcmu_err_message, "error")
LOGFN(tcmu_warn_message, "warn")
LOGFN(tcmu_info_message, "info")
LOGFN(tcmu_dbg_message, "debug")

/* --- for the test -------------------------------------------------------- */

void *fake_handler(void) { return registered; }

struct fake_dev *fake_dev_new(const char *cfgstring, uint32_t block_size, uint64_t num_lbas)
{
	struct fake_dev *dev = calloc(1, sizeof(*dev));
	snprintf(dev->cfgstring, sizeof(dev->cfgstring), "%s", cfgstring);
	snprintf(dev->name, sizeof(dev->name), "uio%d", rand() % 100);
	dev->block_size = block_size;
	dev->num_lbas = num_lbas;
	return dev;
}

void fake_dev_set_num_lbas(struct fake_dev *dev, uint64_t n) { dev->num_lbas = n; }
bool fake_dev_write_cache(struct fake_dev *dev) { return dev->write_cache; }
uint32_t fake_dev_unmap_gran(struct fake_dev *dev) { return dev->unmap_gran; }
uint32_t fake_dev_unmap_align(struct fake_dev *dev) { return dev->unmap_align; }
bool fake_dev_split_unmaps(struct fake_dev *dev) { return dev->split_unmaps; }
void *fake_dev_private(struct fake_dev *dev) { return dev->hm_private; }

/*
 * Waits up to timeout_ms for the completion of cmd; returns its status,
 * or -1000 on timeout. Each completion is returned once.
 */
int fake_wait(void *cmd, int timeout_ms)
{
	struct timespec deadline;
	int i, status = -1000;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&mu);
	for (;;) {
		for (i = 0; i < ndone; i++) {
			if (done[i].cmd == cmd && !done[i].taken) {
				done[i].taken = 1;
				status = done[i].status;
				goto out;
			}
		}
		if (pthread_cond_timedwait(&cv, &mu, &deadline))
			break;
	}
out:
	pthread_mutex_unlock(&mu);
	return status;
}

/* How many completions were recorded for cmd (to catch double completion). */
int fake_completions(void *cmd)
{
	int i, n = 0;

	pthread_mutex_lock(&mu);
	for (i = 0; i < ndone; i++)
		n += done[i].cmd == cmd;
	pthread_mutex_unlock(&mu);
	return n;
}

/*
 * Forgets the completions recorded for cmd, once the test has counted
 * them: a later command may be allocated at the same address.
 */
void fake_forget(void *cmd)
{
	int i;

	pthread_mutex_lock(&mu);
	for (i = 0; i < ndone; i++)
		if (done[i].cmd == cmd)
			done[i].cmd = NULL;
	pthread_mutex_unlock(&mu);
}
