/* A masked softmax in libattn and in ONNX Runtime, the same work on both
 * sides (bench/peers_softmax.sh --masks runs it): ONNX's Softmax-13 has no
 * mask input, so ONNX Runtime runs the graphs of softmax_mask_models.py,
 * Add(X, M) -> Softmax for an additive mask and Where(K, X, -inf) ->
 * Softmax for a bool one; libattn runs attn_softmax with params.mask /
 * params.bool_mask.
 *
 *   peers_softmax_mask softmax R N threads --impl IMPL [--budget S]
 *     IMPL: libattn-add, libattn-bool, ort-add, ort-bool, each optionally
 *     with -full: a mask of [R, N] rather than one row of [N] broadcast
 *     over the rows (the key mask attn-bench uses: every 7th column hidden,
 *     0.5 added to the others).
 *
 * Models from $ORT_MASK_MODELS. Timing and the JSON line are
 * ../shared/peers/peer_common.h's (the line's impl is IMPL); before timing,
 * three rows of the output are checked against a float64 softmax written
 * here (the line's note: the largest error; a miss above 1e-5 exits 1). */
#include "attn.h"
#include "onnxruntime_c_api.h"
#include "peer_common.h"

static const OrtApi *api;

static void ort_check(OrtStatus *st, const char *what) {
  if (st) {
    fprintf(stderr, "peers_softmax_mask: %s: %s\n", what, api->GetErrorMessage(st));
    exit(3);
  }
}
#define ORT(x) ort_check((x), #x)

typedef struct {
  /* ONNX Runtime */
  OrtSession *sess;
  const char *in_names[2];
  OrtValue *in[2], *out;
  /* libattn */
  attn_ctx *ctx;
  attn_tensor *x, *y;
  attn_softmax_params p;
} run_t;

static int ort_once(void *arg) {
  run_t *r = arg;
  const char *out_name = "Y";
  OrtStatus *st = api->Run(r->sess, NULL, r->in_names, (const OrtValue *const *)r->in, 2,
                           &out_name, 1, &r->out);
  if (st) {
    fprintf(stderr, "peers_softmax_mask: Run: %s\n", api->GetErrorMessage(st));
    return 1;
  }
  return 0;
}

static int attn_once(void *arg) {
  run_t *r = arg;
  if (attn_softmax(r->ctx, r->x, r->y, &r->p) != ATTN_OK) {
    fprintf(stderr, "attn_softmax: %s\n", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static OrtValue *ort_tensor(OrtMemoryInfo *mi, void *data, size_t bytes, const int64_t *shape,
                            ONNXTensorElementDataType t) {
  OrtValue *v = NULL;
  ORT(api->CreateTensorWithDataAsOrtValue(mi, data, bytes, shape, 2, t, &v));
  return v;
}

static attn_tensor *wrap(attn_ctx *ctx, int32_t dt, const int64_t *dims, void *data, size_t bytes) {
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, dt, 2, dims, NULL, data, bytes, &t) != ATTN_OK) {
    fprintf(stderr, "attn_tensor_wrap: %s\n", attn_ctx_last_error(ctx));
    exit(2);
  }
  return t;
}

/* Logit i of a row (x + mask, or x where kept and -inf elsewhere). */
static double masked_logit(const float *x, const float *m, const uint8_t *keep, long i) {
  return m ? (double)x[i] + m[i] : keep[i] ? x[i] : -INFINITY;
}

/* The largest |y - softmax(x + mask)| over three rows, in float64. */
static double row_error(const float *x, const float *y, const float *m, const uint8_t *keep,
                        long R, long N, long mr) {
  double worst = 0;
  long rows[3] = {0, R / 2, R - 1};
  for (int k = 0; k < 3; k++) {
    long r = rows[k];
    const float *xr = x + r * N, *yr = y + r * N;
    long o = (mr == 1 ? 0 : r) * N;
    const float *mrow = m ? m + o : NULL;
    const uint8_t *krow = m ? NULL : keep + o;
    double mx = -INFINITY, sum = 0;
    for (long i = 0; i < N; i++)
      mx = fmax(mx, masked_logit(xr, mrow, krow, i));
    for (long i = 0; i < N; i++)
      sum += exp(masked_logit(xr, mrow, krow, i) - mx);
    for (long i = 0; i < N; i++) {
      double e = fabs(exp(masked_logit(xr, mrow, krow, i) - mx) / sum - yr[i]);
      worst = e > worst || e != e ? e : worst;
    }
  }
  return worst;
}

int main(int argc, char **argv) {
  peer_args a = peer_parse(argc, argv);
  const char *impl = a.impl ? a.impl : "";
  int ort = !strncmp(impl, "ort-", 4), add = strstr(impl, "-add") != NULL;
  int full = strstr(impl, "-full") != NULL;
  if (strcmp(a.op, "softmax") || (!ort && strncmp(impl, "libattn-", 8)) ||
      (!add && !strstr(impl, "-bool"))) {
    fprintf(stderr, "peers_softmax_mask: softmax R N threads --impl "
                    "{libattn,ort}-{add,bool}[-full]\n");
    return 2;
  }
  long R = a.R, N = a.N, mr = full ? R : 1;
  size_t n = (size_t)R * (size_t)N, nm = (size_t)mr * (size_t)N;
  float *x = peer_alloc(n * 4), *y = peer_alloc(n * 4), *m = peer_alloc(nm * 4);
  uint8_t *keep = peer_alloc(nm);
  peer_fill(x, n, 21);
  for (size_t i = 0; i < n; i++) /* logits in [-8, 8), as the peers' check uses */
    x[i] *= 8.0f;
  memset(y, 0, n * 4);
  for (size_t i = 0; i < nm; i++) {
    long j = (long)(i % (size_t)N);
    m[i] = j % 7 == 0 ? -INFINITY : 0.5f;
    keep[i] = j % 7 != 0;
  }
  int64_t xs[2] = {R, N}, ms[2] = {mr, N};
  run_t r;
  memset(&r, 0, sizeof r);
  peer_fn fn;
  char what[160];
  if (ort) {
    api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (!api) {
      fprintf(stderr, "peers_softmax_mask: the runtime does not offer ORT API %d\n",
              ORT_API_VERSION);
      return 3;
    }
    OrtEnv *env;
    OrtSessionOptions *so;
    OrtMemoryInfo *mi;
    ORT(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "peers_softmax_mask", &env));
    ORT(api->CreateSessionOptions(&so));
    ORT(api->SetIntraOpNumThreads(so, a.threads));
    ORT(api->SetInterOpNumThreads(so, 1));
    ORT(api->SetSessionExecutionMode(so, ORT_SEQUENTIAL));
    ORT(api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL));
    ORT(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mi));
    const char *dir = getenv("ORT_MASK_MODELS");
    char model[4096];
    snprintf(model, sizeof model, "%s/%s", dir ? dir : ".",
             add ? "softmax_add.onnx" : "softmax_where.onnx");
    ORT(api->CreateSession(env, model, so, &r.sess));
    r.in_names[0] = add ? "X" : "K";
    r.in_names[1] = add ? "M" : "X";
    OrtValue *xv = ort_tensor(mi, x, n * 4, xs, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    OrtValue *mv = add ? ort_tensor(mi, m, nm * 4, ms, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
                       : ort_tensor(mi, keep, nm, ms, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL);
    r.in[0] = add ? xv : mv;
    r.in[1] = add ? mv : xv;
    r.out = ort_tensor(mi, y, n * 4, xs, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    fn = ort_once;
    snprintf(what, sizeof what, "ORT %s %s -> Softmax-13", OrtGetApiBase()->GetVersionString(),
             add ? "Add" : "Where");
  } else {
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = a.threads;
    if (attn_ctx_create(&r.ctx, &o) != ATTN_OK) {
      fprintf(stderr, "attn_ctx_create failed\n");
      return 2;
    }
    r.x = wrap(r.ctx, ATTN_DTYPE_F32, xs, x, n * 4);
    r.y = wrap(r.ctx, ATTN_DTYPE_F32, xs, y, n * 4);
    attn_softmax_params_init(&r.p);
    if (add)
      r.p.mask = wrap(r.ctx, ATTN_DTYPE_F32, ms, m, nm * 4);
    else
      r.p.bool_mask = wrap(r.ctx, ATTN_DTYPE_U8, ms, keep, nm);
    fn = attn_once;
    snprintf(what, sizeof what, "libattn %s, params.%s", attn_version_string(),
             add ? "mask" : "bool_mask");
  }
  if (fn(&r))
    return 1;
  double err = row_error(x, y, add ? m : NULL, keep, R, N, mr);
  char note[256];
  snprintf(note, sizeof note, "%s; mask [%ld, %ld]; max error %.1e (3 rows, float64)", what, mr,
           N, err);
  if (!(err <= 1e-5)) {
    fprintf(stderr, "peers_softmax_mask: %s: %s\n", impl, note);
    return 1;
  }
  peer_report(impl, &a, peer_time(fn, &r, a.budget), note);
  return 0;
}
