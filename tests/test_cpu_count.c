/* The default thread count's cgroup quota parser (src/cpu_count.c, compiled
 * into this test) on cgroup trees written to a temporary directory:
 * v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us, nested limits, a
 * container whose /proc/self/cgroup names the host's path, and bad files. */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

#include "internal.h"

static char g_root[256];

/* Write root/rel (creating its directories). */
static void put(const char *rel, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_root, rel);
  for (char *p = path + strlen(g_root) + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      mkdir(path, 0755);
      *p = '/';
    }
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int32_t cpus(void) {
  char mount[512], self[512];
  snprintf(mount, sizeof mount, "%s/fs", g_root);
  snprintf(self, sizeof self, "%s/self", g_root);
  return attn__cgroup_cpus(mount, self);
}

static int setup(void **state) {
  (void)state;
  snprintf(g_root, sizeof g_root, "/tmp/attn-cgroup-XXXXXX");
  return mkdtemp(g_root) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
  return system(cmd) == 0 ? 0 : -1;
}

static void v2_quota(void **state) {
  (void)state;
  put("self", "0::/app.slice/job\n");
  put("fs/app.slice/job/cpu.max", "max 100000\n");
  assert_int_equal(cpus(), 0); /* no limit anywhere */
  put("fs/app.slice/job/cpu.max", "250000 100000\n");
  assert_int_equal(cpus(), 3); /* 2.5 CPUs: rounded up */
  put("fs/app.slice/cpu.max", "100000 100000\n");
  assert_int_equal(cpus(), 1); /* the parent's limit is lower */
  put("fs/app.slice/job/cpu.max", "50000 100000\n");
  put("fs/app.slice/cpu.max", "max 100000\n");
  assert_int_equal(cpus(), 1); /* half a CPU: still one thread */
}

static void v2_container_root(void **state) {
  (void)state;
  /* A cgroup namespace: the process sits at "/", the limit on the mount. */
  put("self", "0::/\n");
  put("fs/cpu.max", "400000 100000\n");
  assert_int_equal(cpus(), 4);
}

static void v1_quota(void **state) {
  (void)state;
  /* Docker on cgroup v1: /proc/self/cgroup names the host's path, which
   * does not exist in the container; its own cgroup is the mount. */
  put("self", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n");
  put("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  put("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  assert_int_equal(cpus(), 0);
  put("fs/cpu,cpuacct/cpu.cfs_quota_us", "300000\n");
  assert_int_equal(cpus(), 3);
  /* Found through the path when it exists, and the lower of the two. */
  put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n");
  put("fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  assert_int_equal(cpus(), 2);
}

static void v1_cpu_alone(void **state) {
  (void)state;
  put("self", "3:cpu:/\n");
  put("fs/cpu/cpu.cfs_quota_us", "200000\n");
  put("fs/cpu/cpu.cfs_period_us", "100000\n");
  assert_int_equal(cpus(), 2);
  put("self", "3:cpuacct:/\n"); /* not the cpu controller */
  assert_int_equal(cpus(), 0);
}

static void bad_or_missing_files(void **state) {
  (void)state;
  put("self", "0::/x\n");
  put("fs/x/cpu.max", "garbage\n");
  assert_int_equal(cpus(), 0);
  put("fs/x/cpu.max", "0 100000\n");
  assert_int_equal(cpus(), 0);
  put("fs/x/cpu.max", "100000 0\n");
  assert_int_equal(cpus(), 0);
  put("self", "no colons here\n");
  assert_int_equal(cpus(), 0);
  assert_int_equal(attn__cgroup_cpus("/nonexistent", "/nonexistent/self"), 0);
}

static void default_context_uses_it(void **state) {
  (void)state;
  int32_t n = attn__default_threads(1024);
  assert_true(n >= 1);
  assert_true(n <= sysconf(_SC_NPROCESSORS_ONLN));
  assert_int_equal(attn__default_threads(1), 1);
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, NULL));
  assert_int_equal(attn_ctx_num_threads(ctx), n);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(v2_quota, setup, teardown),
      cmocka_unit_test_setup_teardown(v2_container_root, setup, teardown),
      cmocka_unit_test_setup_teardown(v1_quota, setup, teardown),
      cmocka_unit_test_setup_teardown(v1_cpu_alone, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_or_missing_files, setup, teardown),
      cmocka_unit_test(default_context_uses_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
