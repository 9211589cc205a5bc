/* How many threads a default context (num_threads = 0) starts: the CPUs in
 * the process's affinity mask, lowered to the CPU quota of its cgroup (a
 * container limited to 2 CPUs on a 64-core host gets 2, not 64). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_ALLOC */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read the small file dir/name into buf (NUL-terminated); false if it
 * cannot be read. */
static bool read_small(const char *dir, const char *name, char *buf, size_t size) {
  char path[4160];
  int n = snprintf(path, sizeof path, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof path)
    return false;
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  size_t got = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[got] = 0;
  return got > 0;
}

/* CPUs that `quota` microseconds per `period` allow, rounded up; 0: none. */
static int32_t quota_cpus(long long quota, long long period) {
  if (quota <= 0 || period <= 0)
    return 0;
  long long n = (quota + period - 1) / period;
  return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

/* The quota in one cgroup directory: cgroup v2's cpu.max ("max 100000" or
 * "200000 100000"), else v1's cpu.cfs_quota_us (-1: none) and
 * cpu.cfs_period_us. 0 when the directory sets none. */
static int32_t dir_cpus(const char *dir) {
  char buf[128];
  long long quota, period;
  if (read_small(dir, "cpu.max", buf, sizeof buf))
    return sscanf(buf, "%lld %lld", &quota, &period) == 2 ? quota_cpus(quota, period) : 0;
  if (!read_small(dir, "cpu.cfs_quota_us", buf, sizeof buf) || sscanf(buf, "%lld", &quota) != 1)
    return 0;
  if (!read_small(dir, "cpu.cfs_period_us", buf, sizeof buf) ||
      sscanf(buf, "%lld", &period) != 1)
    return 0;
  return quota_cpus(quota, period);
}

/* The smallest quota from `base + rel` up to `base` (a parent's quota
 * bounds its children); 0 if none. In a container the process's cgroup path
 * may name the host's hierarchy while `base` is already its own cgroup:
 * directories that do not exist are skipped on the way up. */
static int32_t walk_up(const char *base, const char *rel, int32_t best) {
  char dir[4096];
  int len = snprintf(dir, sizeof dir, "%s%s", base, rel);
  if (len < 0 || (size_t)len >= sizeof dir)
    return best;
  size_t base_len = strlen(base);
  for (;;) {
    int32_t n = dir_cpus(dir);
    if (n > 0 && (best == 0 || n < best))
      best = n;
    char *slash = strrchr(dir, '/');
    if (!slash || (size_t)(slash - dir) < base_len)
      break;
    *slash = 0;
  }
  return best;
}

int32_t attn__cgroup_cpus(const char *mount, const char *self_cgroup) {
  FILE *f = fopen(self_cgroup, "re");
  if (!f)
    return 0;
  int32_t best = 0;
  char line[4096], base[4096];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    /* "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1) */
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
      continue;
    *c2 = 0;
    const char *controllers = c1 + 1, *rel = c2 + 1;
    if (!strcmp(rel, "/"))
      rel = "";
    if (!*controllers) {
      best = walk_up(mount, rel, best);
      continue;
    }
    /* v1: the cpu controller, alone or with others ("cpu,cpuacct"). */
    char list[256];
    snprintf(list, sizeof list, ",%s,", controllers);
    if (!strstr(list, ",cpu,"))
      continue;
    int n = snprintf(base, sizeof base, "%s/%s", mount, controllers);
    if (n > 0 && (size_t)n < sizeof base)
      best = walk_up(base, rel, best);
    snprintf(base, sizeof base, "%s/cpu", mount); /* also mounted as cpu alone */
    best = walk_up(base, rel, best);
  }
  fclose(f);
  return best;
}

/* CPUs in the affinity mask, for any number of CPUs. */
static int32_t affinity_cpus(void) {
  for (int n = 1024; n <= (1 << 20); n *= 2) {
    cpu_set_t *set = CPU_ALLOC(n);
    if (!set)
      return 1;
    size_t size = CPU_ALLOC_SIZE(n);
    int rc = sched_getaffinity(0, size, set);
    int count = rc == 0 ? CPU_COUNT_S(size, set) : 0;
    CPU_FREE(set);
    if (rc == 0)
      return count > 0 ? count : 1;
    if (errno != EINVAL)
      return 1;
  }
  return 1;
}

int32_t attn__default_threads(int32_t max) {
  int32_t n = affinity_cpus();
  int32_t quota = attn__cgroup_cpus("/sys/fs/cgroup", "/proc/self/cgroup");
  if (quota > 0 && quota < n)
    n = quota;
  return n > max ? max : n;
}
