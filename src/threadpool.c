/* The context's worker threads and the one thread planner: created with the context, ended with it.
 * A job is a loop over items; the calling thread takes part as worker 0 and
 * items are handed out through one atomic counter, so uneven items balance.
 *
 * fork(): a child process has only the thread that called fork, so the
 * pool records the process that started its workers; a job in another
 * process (getpid() differs: one cheap call per job) first starts a new set
 * of workers, and destroy there joins none of the parent's. No atfork
 * handler and no global list of pools are needed. */
#define _POSIX_C_SOURCE 200809L /* pid_t, getpid */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

struct attn_threadpool {
  pthread_mutex_t mu;
  pthread_cond_t start_cv;
  pthread_cond_t done_cv;
  int32_t n_workers; /* running in process `pid` */
  int32_t n_wanted;  /* asked for at creation */
  pid_t pid;
  pthread_t *threads;
  struct worker_arg *args;
  /* The current job, guarded by mu (next is atomic). */
  uint64_t generation;
  bool stop;
  attn_task_fn fn;
  void *arg;
  int64_t n_items;
  int32_t active;  /* threads in this job, the caller included */
  int32_t pending; /* workers of this job not yet finished */
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

static void *worker_main(void *varg) {
  worker_arg *wa = varg;
  attn_threadpool *p = wa->pool;
  int32_t id = wa->id;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->generation == seen)
      pthread_cond_wait(&p->start_cv, &p->mu);
    if (p->stop)
      break;
    seen = p->generation;
    if (id >= p->active)
      continue;
    attn_task_fn fn = p->fn;
    void *arg = p->arg;
    int64_t n = p->n_items;
    pthread_mutex_unlock(&p->mu);
    run_items(p, fn, arg, n, id);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0)
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
  p->pending = threads - 1;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  p->generation++;
  pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  run_items(p, fn, arg, n, 0);
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0)
    pthread_cond_wait(&p->done_cv, &p->mu);
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
