/* Context lifecycle, options, errors, version, parameter structs. */
#define _POSIX_C_SOURCE 200809L
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

/* Sanitizers reserve address space of their own: an RLIMIT_AS breaks them. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define SANITIZED 1
#endif
#endif

static void version_matches_header(void **state) {
  (void)state;
  assert_int_equal(attn_version(), ATTN_VERSION);
  assert_string_equal(attn_version_string(), ATTN_VERSION_STRING);
  char buf[32];
  snprintf(buf, sizeof buf, "%d.%d.%d", ATTN_VERSION_MAJOR, ATTN_VERSION_MINOR,
           ATTN_VERSION_PATCH);
  assert_string_equal(buf, attn_version_string());
#ifdef ATTN_CMAKE_VERSION
  assert_string_equal(ATTN_CMAKE_VERSION, attn_version_string()); /* CMake agrees */
#endif
}

static void status_strings(void **state) {
  (void)state;
  assert_string_equal(attn_status_string(ATTN_OK), "ATTN_OK");
  assert_string_equal(attn_status_string(ATTN_ERR_SHAPE), "ATTN_ERR_SHAPE");
  assert_string_equal(attn_status_string(ATTN_ERR_ALIASING), "ATTN_ERR_ALIASING");
  assert_string_equal(attn_status_string((attn_status)999), "unknown status");
  assert_string_equal(attn_status_string((attn_status)-1), "unknown status");
  /* Pinned values: never renumbered. */
  assert_int_equal(ATTN_ERR_NULL_ARG, 1);
  assert_int_equal(ATTN_ERR_NO_MEMORY, 5);
  assert_int_equal(ATTN_ERR_ALIASING, 8);
  assert_int_equal(ATTN_ERR_BUSY, 9);
  assert_string_equal(attn_status_string(ATTN_ERR_BUSY), "ATTN_ERR_BUSY");
}

static void create_defaults(void **state) {
  (void)state;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, NULL));
  assert_non_null(ctx);
  assert_true(attn_ctx_num_threads(ctx) >= 1);
  assert_string_equal(attn_ctx_last_error(ctx), "");
  attn_ctx_destroy(ctx);
  attn_ctx_destroy(NULL); /* no-op */
  assert_int_equal(attn_ctx_num_threads(NULL), 0);
  assert_non_null(attn_ctx_last_error(NULL));
}

/* The address space the process maps now, in bytes (VmSize), or 0. */
static size_t mapped_bytes(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
      break;
  if (f)
    fclose(f);
  return (size_t)kb * 1024;
}

enum { CHILD_NO_MEMORY = 0, CHILD_CREATED = 1, CHILD_OTHER = 2, CHILD_NO_LIMIT = 3 };

/* A worker thread the system cannot start is a resource failure
 * (ATTN_ERR_NO_MEMORY), and nothing is created. Provoked in a child process
 * whose address space is capped a little above what it maps: the context's
 * small allocations fit, but 63 worker stacks (8 MiB each by default) do
 * not, so pthread_create fails after starting none or a few (which must be
 * joined). Skipped where the cap cannot be set or does not bite (sanitizers,
 * valgrind). */
static void thread_start_failure_is_no_memory(void **state) {
  (void)state;
#ifdef SANITIZED
  skip();
#endif
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    size_t now = mapped_bytes();
    struct rlimit rl;
    if (!now || getrlimit(RLIMIT_AS, &rl))
      _exit(CHILD_NO_LIMIT);
    rl.rlim_cur = now + ((size_t)4 << 20);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
      _exit(CHILD_NO_LIMIT);
    if (setrlimit(RLIMIT_AS, &rl))
      _exit(CHILD_NO_LIMIT);
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = 64;
    attn_ctx *ctx = (attn_ctx *)0x1;
    attn_status st = attn_ctx_create(&ctx, &o);
    if (st == ATTN_OK) {
      attn_ctx_destroy(ctx);
      _exit(CHILD_CREATED);
    }
    _exit(st == ATTN_ERR_NO_MEMORY && ctx == (attn_ctx *)0x1 ? CHILD_NO_MEMORY : CHILD_OTHER);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) == CHILD_CREATED || WEXITSTATUS(status) == CHILD_NO_LIMIT)
    skip(); /* the cap did not bite here */
  if (WEXITSTATUS(status) != CHILD_NO_MEMORY)
    fail_msg("attn_ctx_create without room for its worker threads did not return "
             "ATTN_ERR_NO_MEMORY (or wrote *out)");
}

static void create_bad_options(void **state) {
  (void)state;
  attn_ctx *ctx = (attn_ctx *)0x1;
  attn_ctx_options o;
  assert_status(attn_ctx_create(NULL, NULL), ATTN_ERR_NULL_ARG);
  attn_ctx_options_init(&o);
  o.num_threads = -1;
  assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_INVALID_ARG);
  o.num_threads = 5000;
  assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_INVALID_ARG);
  attn_ctx_options_init(&o);
  o.alloc = tu_alloc; /* without free */
  assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_INVALID_ARG);
  attn_ctx_options_init(&o);
  o.struct_size = 0;
  assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_INVALID_ARG);
  assert_ptr_equal(ctx, (attn_ctx *)0x1); /* out untouched on failure */
}

static void custom_allocator_counts_and_fails(void **state) {
  (void)state;
  tu_counter c = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 3;
  o.alloc = tu_alloc;
  o.free = tu_free;
  o.alloc_user = &c;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  assert_int_equal(attn_ctx_num_threads(ctx), 3);
  int64_t dims[2] = {3, 7};
  attn_tensor *t;
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, dims, &t));
  assert_true(c.allocs >= 3);
  attn_ctx_destroy(ctx); /* frees the tensor too */
  assert_int_equal(c.allocs, c.frees);

  /* Every allocation of ctx creation failing in turn: no leak, clear status. */
  long total = c.allocs - 2; /* tensor block + handle */
  for (long k = 1; k <= total; k++) {
    tu_counter f = {0, 0, k};
    o.alloc_user = &f;
    ctx = NULL;
    assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_NO_MEMORY);
    assert_null(ctx);
    assert_int_equal(f.allocs, f.frees);
  }
}

static void params_size_rules(void **state) {
  (void)state;
  /* A newer caller's struct, larger, with a non-zero unknown field. */
  struct {
    attn_ctx_options known;
    int64_t future_field;
  } newer;
  memset(&newer, 0, sizeof newer);
  newer.known.struct_size = sizeof newer;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &newer.known)); /* unknown tail zero: fine */
  attn_ctx_destroy(ctx);
  newer.future_field = 1;
  assert_status(attn_ctx_create(&ctx, &newer.known), ATTN_ERR_UNSUPPORTED);
  /* An older caller's struct that ends after num_threads: the rest defaults. */
  struct {
    size_t struct_size;
    int32_t num_threads;
  } older;
  memset(&older, 0, sizeof older); /* padding too */
  older.struct_size = sizeof older;
  older.num_threads = 2;
  assert_ok(attn_ctx_create(&ctx, (const attn_ctx_options *)&older));
  assert_int_equal(attn_ctx_num_threads(ctx), 2);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(version_matches_header),
      cmocka_unit_test(status_strings),
      cmocka_unit_test(create_defaults),
      cmocka_unit_test(create_bad_options),
      cmocka_unit_test(thread_start_failure_is_no_memory),
      cmocka_unit_test(custom_allocator_counts_and_fails),
      cmocka_unit_test(params_size_rules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
