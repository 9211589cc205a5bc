/* The context's worker threads and the one thread planner: created with the context, ended with it.
 * A job is a loop over items; the calling thread takes part as worker 0 and
 * items are handed out through one atomic counter, so uneven items balance.
 *
 * Hand-off: a worker that finishes a job, and the caller waiting for the
 * workers, first spin for at most SPIN_NS (with a pause instruction) on
 * an atomic flag before sleeping on a condition variable: back-to-back
 * jobs (a short op called in a loop) then pay no futex wake-up, which
 * takes tens of microseconds, as much as a whole job of a short sequence.
 * The bound keeps an idle application's cores idle.
 *
 * Placement (Linux): a worker woken by the caller can be queued on the
 * caller's CPU and stay there (seen in a KVM guest, where an idle vCPU may
 * look busy to the scheduler; two threads that run all the time count as
 * cache-hot, so balancing leaves them): each 2-thread call then ran on one
 * core, in up to half of the quiet runs on the Zen 5 VM. A worker that
 * starts a job on the caller's CPU moves itself off it (move_off).
 *
 * fork(): a child process has only the thread that called fork, so the
 * pool records the process that started its workers; a job in another
 * process (getpid() differs: one cheap call per job) first starts a new set
 * of workers, and destroy there joins none of the parent's. No atfork
 * handler and no global list of pools are needed. */
#define _GNU_SOURCE /* pid_t, getpid; sched_getcpu and the affinity calls of move_off */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The longest a thread spins waiting for a job or for the workers before
 * sleeping: above the gap between the jobs of back-to-back short calls
 * and one item's imbalance, well below a scheduler tick. */
#define SPIN_NS 50000

struct attn_threadpool {
  pthread_mutex_t mu;
  pthread_cond_t start_cv;
  pthread_cond_t done_cv;
  int32_t n_workers; /* running in process `pid` */
  int32_t n_wanted;  /* asked for at creation */
  pid_t pid;
  pthread_t *threads;
  struct worker_arg *args;
  /* The current job, guarded by mu (the atomics are not). */
  uint64_t generation;
  bool stop;
  attn_task_fn fn;
  void *arg;
  int64_t n_items;
  int32_t active;         /* threads in this job, the caller included */
  int caller_cpu;         /* the caller's CPU when it posted the job, or -1 */
  int32_t sleepers;       /* workers in pthread_cond_wait on start_cv */
  bool caller_asleep;     /* the caller in pthread_cond_wait on done_cv */
  atomic_ullong posted;   /* generation, stored after mu is released: what spinners watch */
  atomic_int pending;     /* workers of this job not yet finished */
  atomic_llong next;
};

typedef struct worker_arg {
  attn_threadpool *pool;
  int32_t id;
} worker_arg;

static void run_items(attn_threadpool *p, attn_task_fn fn, void *arg, int64_t n, int32_t id) {
  for (;;) {
    int64_t item = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (item >= n)
      return;
    fn(arg, item, id);
  }
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spin until done(p, ref) or SPIN_NS have passed; whether it became true. */
static bool spin_until(attn_threadpool *p, bool (*done)(attn_threadpool *, uint64_t),
                       uint64_t ref) {
  int64_t end = 0;
  for (uint32_t i = 0;; i++) {
    if (done(p, ref))
      return true;
    cpu_relax();
    if (i % 16 == 15) { /* the clock every 16 pauses: 0.1-2 us apart */
      int64_t t = now_ns();
      if (!end)
        end = t + SPIN_NS;
      else if (t > end)
        return false;
    }
  }
}

static bool job_posted(attn_threadpool *p, uint64_t seen) {
  return atomic_load_explicit(&p->posted, memory_order_acquire) != seen;
}

static bool workers_done(attn_threadpool *p, uint64_t unused) {
  (void)unused;
  return atomic_load_explicit(&p->pending, memory_order_acquire) == 0;
}

static int current_cpu(void) {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

/* Moves the calling worker off CPU `cpu`: its affinity without that CPU
 * (the kernel migrates it at once), then its own mask again, so it stays
 * free to go anywhere later. Nothing happens if `cpu` is its only CPU or a
 * call fails (a sandbox may refuse them). */
static void move_off(int cpu) {
#ifdef __linux__
  cpu_set_t mine, others;
  if (cpu < 0 || cpu >= CPU_SETSIZE ||
      pthread_getaffinity_np(pthread_self(), sizeof mine, &mine) != 0)
    return;
  others = mine;
  CPU_CLR(cpu, &others);
  if (CPU_COUNT(&others) > 0 &&
      pthread_setaffinity_np(pthread_self(), sizeof others, &others) == 0)
    pthread_setaffinity_np(pthread_self(), sizeof mine, &mine);
#else
  (void)cpu;
#endif
}

static void *worker_main(void *varg) {
  worker_arg *wa = varg;
  attn_threadpool *p = wa->pool;
  int32_t id = wa->id;
  uint64_t seen = 0;
  bool worked = false; /* in the last job: only then is another likely soon */
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (worked && !p->stop && p->generation == seen) {
      pthread_mutex_unlock(&p->mu);
      spin_until(p, job_posted, seen);
      pthread_mutex_lock(&p->mu);
    }
    while (!p->stop && p->generation == seen) {
      p->sleepers++;
      pthread_cond_wait(&p->start_cv, &p->mu);
      p->sleepers--;
    }
    if (p->stop)
      break;
    seen = p->generation;
    worked = id < p->active;
    if (!worked)
      continue;
    attn_task_fn fn = p->fn;
    void *arg = p->arg;
    int64_t n = p->n_items;
    int caller_cpu = p->caller_cpu;
    pthread_mutex_unlock(&p->mu);
    /* Sharing the caller's CPU, this worker would only run while the
     * caller waits (see the top). */
    if (caller_cpu >= 0 && current_cpu() == caller_cpu)
      move_off(caller_cpu);
    run_items(p, fn, arg, n, id);
    bool last = atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1;
    pthread_mutex_lock(&p->mu);
    /* The caller decides to sleep under mu, after looking at pending: it
     * either saw this decrement or sleeps now and gets the signal. */
    if (last && p->caller_asleep)
      pthread_cond_signal(&p->done_cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Initialise the job state and start the workers in this process. Returns
 * false if a thread could not be started; the pool then runs with the
 * n_workers that did start. */
static bool start_workers(attn_threadpool *p) {
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->start_cv, NULL);
  pthread_cond_init(&p->done_cv, NULL);
  p->generation = 0;
  p->stop = false;
  p->sleepers = 0;
  p->caller_asleep = false;
  atomic_init(&p->posted, 0);
  atomic_init(&p->pending, 0);
  atomic_init(&p->next, 0);
  p->pid = getpid();
  p->n_workers = 0;
  for (int32_t i = 0; i < p->n_wanted; i++) {
    p->args[i].pool = p;
    p->args[i].id = i + 1;
    if (pthread_create(&p->threads[i], NULL, worker_main, &p->args[i]) != 0)
      return false;
    p->n_workers = i + 1;
  }
  return true;
}

attn_status attn__threadpool_create(attn_ctx *ctx, int32_t workers, attn_threadpool **out) {
  attn_threadpool *p = attn__alloc(ctx, sizeof *p);
  if (!p)
    return ATTN_ERR_NO_MEMORY;
  memset(p, 0, sizeof *p);
  /* One block for the thread ids and their arguments. */
  size_t ids = (size_t)workers * sizeof(pthread_t);
  void *block = attn__alloc(ctx, ids + (size_t)workers * sizeof(worker_arg));
  if (!block) {
    attn__free(ctx, p);
    return ATTN_ERR_NO_MEMORY;
  }
  p->threads = block;
  p->args = (worker_arg *)((char *)block + ids);
  p->n_wanted = workers;
  if (!start_workers(p)) {
    /* pthread_create fails for want of resources (EAGAIN: the limit on
     * threads, or memory for a stack), not for a bad argument: the same
     * status as an allocator that returns NULL. */
    attn__threadpool_destroy(ctx, p);
    return ATTN_ERR_NO_MEMORY;
  }
  *out = p;
  return ATTN_OK;
}

void attn__threadpool_destroy(attn_ctx *ctx, attn_threadpool *p) {
  if (!p)
    return;
  /* In a forked child the workers (and whatever state the parent's threads
   * left the mutex in) belong to the parent: there is nothing to stop. */
  if (p->pid == getpid()) {
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_add_explicit(&p->posted, 1, memory_order_release); /* ends the spinning */
    for (int32_t i = 0; i < p->n_workers; i++)
      pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->start_cv);
    pthread_mutex_destroy(&p->mu);
  }
  attn__free(ctx, p->threads);
  attn__free(ctx, p);
}

void attn__parallel_for(attn_ctx *ctx, int32_t threads, int64_t n, attn_task_fn fn, void *arg) {
  attn_threadpool *p = ctx->pool;
  /* First job in a forked child: the parent's workers do not exist here.
   * The mutex and condition variables are set up afresh (a parent thread
   * may have held the mutex at the fork). If threads cannot be started, the
   * job runs on those that did (results do not depend on the count). */
  if (p && p->pid != getpid())
    start_workers(p);
  if (p && threads > p->n_workers + 1)
    threads = p->n_workers + 1;
  if (threads > n)
    threads = (int32_t)n;
  if (!p || threads <= 1) {
    for (int64_t i = 0; i < n; i++)
      fn(arg, i, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->n_items = n;
  p->active = threads;
  p->caller_cpu = current_cpu();
  atomic_store_explicit(&p->pending, threads - 1, memory_order_relaxed);
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  uint64_t gen = ++p->generation;
  if (p->sleepers > 0)
    pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  /* After the unlock: a spinning worker that sees it takes mu at once. */
  atomic_store_explicit(&p->posted, gen, memory_order_release);
  run_items(p, fn, arg, n, 0);
  if (spin_until(p, workers_done, 0))
    return;
  pthread_mutex_lock(&p->mu);
  p->caller_asleep = true;
  while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
    pthread_cond_wait(&p->done_cv, &p->mu);
  p->caller_asleep = false;
  pthread_mutex_unlock(&p->mu);
}

int32_t attn__threads_plan(const attn_ctx *ctx, double work, double min_per_thread, int64_t items) {
  double t = work / min_per_thread;
  int32_t threads = t < 1 ? 1 : t > ctx->num_threads ? ctx->num_threads : (int32_t)t;
  if (items > 0 && threads > items)
    threads = (int32_t)items;
  return threads;
}

int64_t attn__items_balanced(int64_t n, int64_t per, int32_t threads) {
  int64_t balanced = n / (4 * (int64_t)threads);
  if (threads > 1 && per > balanced)
    per = balanced;
  return per > 1 ? per : 1;
}
