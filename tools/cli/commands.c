/* attn subcommands on .npy files: softmax, pe, rope, sdpa. Exit codes: 0
 * success, 1 bad usage (unknown option, missing or non-numeric value), 2 bad
 * input (a file that cannot be read or is malformed, arrays or values
 * libattn refuses, an output that cannot be written). Every message names
 * the file or option and the reason. */
#define _POSIX_C_SOURCE 200809L
#include "attn.h"
#include "commands.h"
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- command-line helpers ---- */

typedef struct {
  const char *cmd;   /* "softmax", for messages */
  const char *usage; /* the subcommand's help text */
} cli;

static int usage_error(const cli *c, const char *fmt, const char *arg) {
  fprintf(stderr, "attn %s: ", c->cmd);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'attn %s --help'.\n", c->cmd);
  return ATTN_EXIT_USAGE;
}

/* Match option `name` at argv[*i] as "--name VALUE" or "--name=VALUE".
 * Returns 1 and sets *val on a match, 0 if argv[*i] is another option, and
 * -1 (after saying so on stderr) if the value is missing. */
static int take(const cli *c, int argc, char **argv, int *i, const char *name,
                const char **val) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, n))
    return 0;
  if (a[n] == '=') {
    *val = a + n + 1;
    return 1;
  }
  if (a[n])
    return 0;
  if (*i + 1 >= argc) {
    usage_error(c, "%s needs a value", a);
    return -1;
  }
  *val = argv[++*i];
  return 1;
}

static int parse_double(const cli *c, const char *opt, const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno == ERANGE || !isfinite(v)) {
    fprintf(stderr, "attn %s: %s = '%s' is not a finite number\nTry 'attn %s --help'.\n",
            c->cmd, opt, s, c->cmd);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_int(const cli *c, const char *opt, const char *s, int64_t lo, int64_t hi,
                     int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno == ERANGE || v < lo || v > hi) {
    fprintf(stderr, "attn %s: %s = '%s' is not an integer in %lld..%lld\n"
                    "Try 'attn %s --help'.\n",
            c->cmd, opt, s, (long long)lo, (long long)hi, c->cmd);
    return -1;
  }
  *out = v;
  return 0;
}

static int pick(const cli *c, const char *opt, const char *s, const char *const *names,
                const int *values, int n, int *out) {
  for (int i = 0; i < n; i++)
    if (!strcmp(s, names[i])) {
      *out = values[i];
      return 0;
    }
  fprintf(stderr, "attn %s: %s = '%s' is not one of:", c->cmd, opt, s);
  for (int i = 0; i < n; i++)
    fprintf(stderr, " %s", names[i]);
  fprintf(stderr, "\nTry 'attn %s --help'.\n", c->cmd);
  return -1;
}

/* ---- libattn helpers ---- */

typedef struct {
  const cli *c;
  const char *files; /* the input files, for messages */
  attn_ctx *ctx;
} run;

static int open_ctx(run *r) {
  attn_status st = attn_ctx_create(&r->ctx, NULL);
  if (st != ATTN_OK) {
    fprintf(stderr, "attn %s: cannot create a libattn context (%s)\n", r->c->cmd,
            attn_status_string(st));
    return -1;
  }
  return 0;
}

/* Report a failed libattn call with the files it was about. */
static int lib_error(run *r, attn_status st) {
  const char *msg = attn_ctx_last_error(r->ctx);
  fprintf(stderr, "attn %s: %s: %s%s%s%s\n", r->c->cmd, r->files, msg, *msg ? " (" : "",
          attn_status_string(st), *msg ? ")" : "");
  return ATTN_EXIT_INPUT;
}

static attn_status wrap(run *r, const npy_array *a, const int64_t *dims, const int64_t *strides,
                        int ndim, attn_tensor **out) {
  size_t bytes = npy_count(a) * (a->dtype == NPY_U8 ? 1 : 4);
  return attn_tensor_wrap(r->ctx, a->dtype == NPY_U8 ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, ndim,
                          dims ? dims : a->dims, strides, a->data, bytes, out);
}

static int read_input(const cli *c, const char *path, int accept, npy_array *a) {
  char err[NPY_ERR_LEN + 64];
  if (npy_read(path, accept, a, err, sizeof err)) {
    fprintf(stderr, "attn %s: %s\n", c->cmd, err);
    return -1;
  }
  return 0;
}

static int write_output(const cli *c, const char *path, int ndim, const int64_t *dims,
                        const float *data) {
  char err[NPY_ERR_LEN + 64];
  if (npy_write(path, NPY_F32, ndim, dims, data, err, sizeof err)) {
    fprintf(stderr, "attn %s: %s\n", c->cmd, err);
    return -1;
  }
  return 0;
}

static float *alloc_floats(const cli *c, size_t n) {
  float *p = n <= SIZE_MAX / sizeof(float) ? malloc(n * sizeof(float)) : NULL;
  if (!p)
    fprintf(stderr, "attn %s: out of memory for %zu floats\n", c->cmd, n);
  return p;
}

/* Files named on the command line, joined for messages. */
static void join_files(char *buf, size_t size, const char *const *names, int n) {
  buf[0] = 0;
  for (int i = 0; i < n; i++)
    if (names[i]) {
      size_t used = strlen(buf);
      snprintf(buf + used, size - used, "%s%s", used ? ", " : "", names[i]);
    }
}

/* ---- softmax ---- */

static const char softmax_usage[] =
    "usage: attn softmax IN.npy -o OUT.npy [--log] [--scale S] [--mask M.npy]\n"
    "Softmax (or log-softmax) over the last axis of IN (1-4 dims, float32 or float64).\n"
    "  -o, --output OUT.npy  result, float32, IN's shape\n"
    "  --log                 log-softmax instead\n"
    "  --scale S             multiply IN by S first (1/temperature; default 1)\n"
    "  --mask M.npy          float: added after scaling (-inf removes an entry);\n"
    "                        bool/uint8: nonzero = keep. Broadcast to IN's shape.\n"
    "Exit status: 0 success, 1 bad usage, 2 bad input.\n";

static int cmd_softmax(int argc, char **argv) {
  cli c = {"softmax", softmax_usage};
  const char *in = NULL, *outp = NULL, *maskp = NULL, *v;
  int log = 0;
  double scale = 1.0;
  for (int i = 1; i < argc; i++) {
    int m;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(c.usage, stdout);
      return ATTN_EXIT_OK;
    } else if (!strcmp(argv[i], "--log")) {
      log = 1;
    } else if ((m = take(&c, argc, argv, &i, "-o", &v)) || (m = take(&c, argc, argv, &i, "--output", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      outp = v;
    } else if ((m = take(&c, argc, argv, &i, "--scale", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      if (parse_double(&c, "--scale", v, &scale))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--mask", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      maskp = v;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage_error(&c, "unknown option '%s'", argv[i]);
    } else if (!in) {
      in = argv[i];
    } else {
      return usage_error(&c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (!in)
    return usage_error(&c, "%s", "missing IN.npy");
  if (!outp)
    return usage_error(&c, "%s", "missing -o OUT.npy");
  if (scale == 0)
    return usage_error(&c, "%s", "--scale must not be 0");

  int rc = ATTN_EXIT_INPUT;
  npy_array x = {0}, mask = {0};
  float *y = NULL;
  char files[512];
  join_files(files, sizeof files, (const char *const[]){in, maskp}, 2);
  run r = {&c, files, NULL};
  if (read_input(&c, in, NPY_ACCEPT_FLOAT, &x) ||
      (maskp && read_input(&c, maskp, NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL, &mask)) ||
      !(y = alloc_floats(&c, npy_count(&x))) || open_ctx(&r))
    goto done;
  attn_tensor *tx, *ty, *tm = NULL;
  npy_array ya = x;
  ya.data = y;
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = (float)scale;
  attn_status st;
  if ((st = wrap(&r, &x, NULL, NULL, x.ndim, &tx)) || (st = wrap(&r, &ya, NULL, NULL, x.ndim, &ty)) ||
      (maskp && (st = wrap(&r, &mask, NULL, NULL, mask.ndim, &tm)))) {
    rc = lib_error(&r, st);
    goto done;
  }
  if (tm && mask.dtype == NPY_U8)
    p.bool_mask = tm;
  else
    p.mask = tm;
  st = log ? attn_log_softmax(r.ctx, tx, ty, &p) : attn_softmax(r.ctx, tx, ty, &p);
  if (st) {
    rc = lib_error(&r, st);
    goto done;
  }
  rc = write_output(&c, outp, x.ndim, x.dims, y) ? ATTN_EXIT_INPUT : ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  free(y);
  npy_free(&x);
  npy_free(&mask);
  return rc;
}

/* ---- pe ---- */

static const char pe_usage[] =
    "usage: attn pe --len L --dim D [--layout NAME] [--base B] [--offset O] -o OUT.npy\n"
    "Write the sinusoidal position table [L, D] (float32).\n"
    "  --layout NAME   interleaved (default; the paper: sin, cos pairs),\n"
    "                  concat (all sin then all cos), concat-shifted (fairseq,\n"
    "                  tensor2tensor), cos-sin (diffusion timestep embedding)\n"
    "  --base B        frequency base (default 10000)\n"
    "  --offset O      row l has position O + l (default 0; may be fractional)\n"
    "Exit status: 0 success, 1 bad usage, 2 bad input.\n";

static const char *const pe_names[] = {"interleaved", "concat", "concat-shifted", "cos-sin"};
static const int pe_values[] = {ATTN_PE_INTERLEAVED, ATTN_PE_SIN_COS, ATTN_PE_SIN_COS_SHIFTED,
                                ATTN_PE_COS_SIN};

static int cmd_pe(int argc, char **argv) {
  cli c = {"pe", pe_usage};
  const char *outp = NULL, *v;
  int64_t len = 0, dim = 0;
  int layout = ATTN_PE_INTERLEAVED;
  double base = 10000.0, offset = 0.0;
  for (int i = 1; i < argc; i++) {
    int m;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(c.usage, stdout);
      return ATTN_EXIT_OK;
    } else if ((m = take(&c, argc, argv, &i, "-o", &v)) || (m = take(&c, argc, argv, &i, "--output", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      outp = v;
    } else if ((m = take(&c, argc, argv, &i, "--len", &v))) {
      if (m < 0 || parse_int(&c, "--len", v, 1, (int64_t)1 << 31, &len))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--dim", &v))) {
      if (m < 0 || parse_int(&c, "--dim", v, 1, (int64_t)1 << 31, &dim))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--layout", &v))) {
      if (m < 0 || pick(&c, "--layout", v, pe_names, pe_values, 4, &layout))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--base", &v))) {
      if (m < 0 || parse_double(&c, "--base", v, &base))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--offset", &v))) {
      if (m < 0 || parse_double(&c, "--offset", v, &offset))
        return ATTN_EXIT_USAGE;
    } else {
      return usage_error(&c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (!len || !dim)
    return usage_error(&c, "%s", "--len and --dim are required");
  if (!outp)
    return usage_error(&c, "%s", "missing -o OUT.npy");

  int rc = ATTN_EXIT_INPUT;
  run r = {&c, "--len/--dim/--base/--offset", NULL};
  int64_t dims[2] = {len, dim};
  float *y = NULL;
  if ((uint64_t)len * (uint64_t)dim > ((uint64_t)1 << 40)) {
    fprintf(stderr, "attn pe: --len %lld x --dim %lld is too large\n", (long long)len,
            (long long)dim);
    goto done;
  }
  if (!(y = alloc_floats(&c, (size_t)(len * dim))) || open_ctx(&r))
    goto done;
  attn_tensor *t;
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = layout;
  p.base = base;
  p.offset = offset;
  attn_status st = attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 2, dims, NULL, y,
                                    (size_t)(len * dim) * sizeof(float), &t);
  if (st || (st = attn_sinusoidal(r.ctx, t, &p))) {
    rc = lib_error(&r, st);
    goto done;
  }
  rc = write_output(&c, outp, 2, dims, y) ? ATTN_EXIT_INPUT : ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  free(y);
  return rc;
}

/* ---- the [B, H, L, D] view of a 3-D or 4-D array ---- */

/* Fill dims/strides of the [B, H, L, D] view of `a` (C order) stored as
 * [B, H, L, D] (blhd = 0) or [B, L, H, D] (blhd = 1); 3-D arrays have no
 * batch axis. Returns 0, or -1 with a message for another rank. */
static int bhld_view(const cli *c, const char *path, const npy_array *a, int blhd,
                     int64_t *dims, int64_t *strides) {
  if (a->ndim != 3 && a->ndim != 4) {
    fprintf(stderr, "attn %s: %s: has %d dims but must have 4 (%s) or 3 (no batch axis)\n",
            c->cmd, path, a->ndim, blhd ? "[B, L, H, D]" : "[B, H, L, D]");
    return -1;
  }
  int64_t d[4] = {1, 0, 0, 0};
  memcpy(d + 4 - a->ndim, a->dims, (size_t)a->ndim * sizeof d[0]);
  int64_t s[4]; /* C-order strides of the stored array */
  s[3] = 1;
  for (int i = 2; i >= 0; i--)
    s[i] = s[i + 1] * d[i + 1];
  if (blhd) {
    int64_t t = d[1];
    d[1] = d[2], d[2] = t;
    t = s[1];
    s[1] = s[2], s[2] = t;
  }
  memcpy(dims, d, sizeof d);
  memcpy(strides, s, sizeof s);
  return 0;
}

static const char *const layout_names[] = {"bhld", "blhd"};
static const int layout_values[] = {0, 1};

/* ---- rope ---- */

static const char rope_usage[] =
    "usage: attn rope IN.npy -o OUT.npy [--style half|interleaved] [--theta T]\n"
    "                 [--rotary-dim R] [--offset P] [--layout bhld|blhd]\n"
    "Rotary position embedding of IN: [B, H, L, D] (or [B, L, H, D] with\n"
    "--layout blhd; 3-D without the batch axis), float32 or float64.\n"
    "  --style half         pairs (i, i + R/2): GPT-NeoX, LLaMA (default)\n"
    "  --style interleaved  pairs (2i, 2i + 1): GPT-J\n"
    "  --theta T            frequency base (default 10000)\n"
    "  --rotary-dim R       rotate the first R dims of each head (even; default D)\n"
    "  --offset P           token l has position P + l (default 0)\n"
    "Exit status: 0 success, 1 bad usage, 2 bad input.\n";

static int cmd_rope(int argc, char **argv) {
  cli c = {"rope", rope_usage};
  const char *in = NULL, *outp = NULL, *v;
  int style = ATTN_ROPE_HALF_SPLIT, blhd = 0;
  double theta = 10000.0;
  int64_t rdim = 0, offset = 0;
  static const char *const style_names[] = {"half", "interleaved"};
  static const int style_values[] = {ATTN_ROPE_HALF_SPLIT, ATTN_ROPE_INTERLEAVED};
  for (int i = 1; i < argc; i++) {
    int m;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(c.usage, stdout);
      return ATTN_EXIT_OK;
    } else if ((m = take(&c, argc, argv, &i, "-o", &v)) || (m = take(&c, argc, argv, &i, "--output", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      outp = v;
    } else if ((m = take(&c, argc, argv, &i, "--style", &v))) {
      if (m < 0 || pick(&c, "--style", v, style_names, style_values, 2, &style))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--layout", &v))) {
      if (m < 0 || pick(&c, "--layout", v, layout_names, layout_values, 2, &blhd))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--theta", &v))) {
      if (m < 0 || parse_double(&c, "--theta", v, &theta))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--rotary-dim", &v))) {
      if (m < 0 || parse_int(&c, "--rotary-dim", v, 1, INT32_MAX, &rdim))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--offset", &v))) {
      if (m < 0 || parse_int(&c, "--offset", v, 0, INT64_MAX / 2, &offset))
        return ATTN_EXIT_USAGE;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage_error(&c, "unknown option '%s'", argv[i]);
    } else if (!in) {
      in = argv[i];
    } else {
      return usage_error(&c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (!in)
    return usage_error(&c, "%s", "missing IN.npy");
  if (!outp)
    return usage_error(&c, "%s", "missing -o OUT.npy");

  int rc = ATTN_EXIT_INPUT;
  npy_array x = {0};
  run r = {&c, in, NULL};
  int64_t dims[4], strides[4];
  if (read_input(&c, in, NPY_ACCEPT_FLOAT, &x) || bhld_view(&c, in, &x, blhd, dims, strides) ||
      open_ctx(&r))
    goto done;
  attn_tensor *t;
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.style = style;
  p.theta = theta;
  p.rotary_dim = (int32_t)rdim;
  p.offset = offset;
  attn_status st = wrap(&r, &x, dims, strides, 4, &t);
  if (st || (st = attn_rope(r.ctx, t, &p))) {
    rc = lib_error(&r, st);
    goto done;
  }
  rc = write_output(&c, outp, x.ndim, x.dims, x.data) ? ATTN_EXIT_INPUT : ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  npy_free(&x);
  return rc;
}

/* ---- sdpa ---- */

static const char sdpa_usage[] =
    "usage: attn sdpa Q.npy K.npy V.npy -o OUT.npy [--causal top-left|bottom-right]\n"
    "                 [--scale S] [--mask M.npy] [--lse LSE.npy] [--weights W.npy]\n"
    "                 [--layout bhld|blhd]\n"
    "Scaled dot-product attention softmax(S q k^T + mask) v.\n"
    "Q [B, Hq, Lq, D], K [B, Hkv, Lk, D], V [B, Hkv, Lk, Dv] (or [B, L, H, D] each\n"
    "with --layout blhd; 3-D without the batch axis), float32 or float64; Hq a\n"
    "multiple of Hkv (grouped-query). OUT has Q's layout with Dv columns.\n"
    "  --causal ALIGN    causal mask; top-left: query i sees keys j <= i (PyTorch);\n"
    "                    bottom-right: the last query sees the last key (KV cache)\n"
    "  --scale S         logit scale (default 1/sqrt(D))\n"
    "  --mask M.npy      float: additive; bool/uint8: nonzero = attend; broadcast to\n"
    "                    [B, Hq, Lq, Lk]\n"
    "  --lse LSE.npy     also write the log-sum-exp [B, Hq, Lq]\n"
    "  --weights W.npy   also write the attention weights [B, Hq, Lq, Lk]\n"
    "Exit status: 0 success, 1 bad usage, 2 bad input.\n";

static int cmd_sdpa(int argc, char **argv) {
  cli c = {"sdpa", sdpa_usage};
  const char *paths[3] = {NULL, NULL, NULL}, *outp = NULL, *maskp = NULL, *lsep = NULL,
             *wp = NULL, *v;
  int npos = 0, causal = 0, align = ATTN_ALIGN_TOP_LEFT, blhd = 0;
  double scale = 0;
  static const char *const align_names[] = {"top-left", "bottom-right"};
  static const int align_values[] = {ATTN_ALIGN_TOP_LEFT, ATTN_ALIGN_BOTTOM_RIGHT};
  for (int i = 1; i < argc; i++) {
    int m;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(c.usage, stdout);
      return ATTN_EXIT_OK;
    } else if ((m = take(&c, argc, argv, &i, "-o", &v)) || (m = take(&c, argc, argv, &i, "--output", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      outp = v;
    } else if ((m = take(&c, argc, argv, &i, "--causal", &v))) {
      if (m < 0 || pick(&c, "--causal", v, align_names, align_values, 2, &align))
        return ATTN_EXIT_USAGE;
      causal = 1;
    } else if ((m = take(&c, argc, argv, &i, "--layout", &v))) {
      if (m < 0 || pick(&c, "--layout", v, layout_names, layout_values, 2, &blhd))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--scale", &v))) {
      if (m < 0 || parse_double(&c, "--scale", v, &scale))
        return ATTN_EXIT_USAGE;
      if (scale == 0)
        return usage_error(&c, "%s", "--scale must not be 0");
    } else if ((m = take(&c, argc, argv, &i, "--mask", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      maskp = v;
    } else if ((m = take(&c, argc, argv, &i, "--lse", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      lsep = v;
    } else if ((m = take(&c, argc, argv, &i, "--weights", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      wp = v;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage_error(&c, "unknown option '%s'", argv[i]);
    } else if (npos < 3) {
      paths[npos++] = argv[i];
    } else {
      return usage_error(&c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (npos < 3)
    return usage_error(&c, "%s", "needs Q.npy K.npy V.npy");
  if (!outp)
    return usage_error(&c, "%s", "missing -o OUT.npy");

  int rc = ATTN_EXIT_INPUT;
  npy_array a[3] = {{0}}, mask = {0};
  float *out = NULL, *lse = NULL, *w = NULL;
  char files[1024];
  join_files(files, sizeof files, (const char *const[]){paths[0], paths[1], paths[2], maskp},
             4);
  run r = {&c, files, NULL};
  int64_t dims[3][4], strides[3][4];
  for (int i = 0; i < 3; i++)
    if (read_input(&c, paths[i], NPY_ACCEPT_FLOAT, &a[i]) ||
        bhld_view(&c, paths[i], &a[i], blhd, dims[i], strides[i]))
      goto done;
  if (a[0].ndim != a[1].ndim || a[0].ndim != a[2].ndim) {
    fprintf(stderr, "attn sdpa: %s: Q, K, V have %d, %d, %d dims but must have the same\n",
            files, a[0].ndim, a[1].ndim, a[2].ndim);
    goto done;
  }
  if (maskp && read_input(&c, maskp, NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL, &mask))
    goto done;
  int64_t B = dims[0][0], Hq = dims[0][1], Lq = dims[0][2], Lk = dims[1][2],
          Dv = dims[2][3];
  /* OUT in Q's layout: [B, Hq, Lq, Dv] or [B, Lq, Hq, Dv]. */
  npy_array oa = {NPY_F32, a[0].ndim, {0}, NULL};
  memcpy(oa.dims, a[0].dims, sizeof oa.dims);
  oa.dims[a[0].ndim - 1] = Dv;
  int64_t odims[4], ostrides[4];
  bhld_view(&c, outp, &oa, blhd, odims, ostrides);
  size_t n_out = npy_count(&oa), n_lse = (size_t)(B * Hq * Lq);
  if (!(out = alloc_floats(&c, n_out)) || (lsep && !(lse = alloc_floats(&c, n_lse))))
    goto done;
  if (wp) {
    uint64_t n_w;
    if (__builtin_mul_overflow((uint64_t)n_lse, (uint64_t)Lk, &n_w) ||
        !(w = alloc_floats(&c, (size_t)n_w)))
      goto done;
  }
  if (open_ctx(&r))
    goto done;
  oa.data = out;
  attn_tensor *tq, *tk, *tv, *to, *tm = NULL, *tl = NULL, *tw = NULL;
  int64_t ldims[3] = {B, Hq, Lq}, wdims[4] = {B, Hq, Lq, Lk};
  attn_status st;
  if ((st = wrap(&r, &a[0], dims[0], strides[0], 4, &tq)) ||
      (st = wrap(&r, &a[1], dims[1], strides[1], 4, &tk)) ||
      (st = wrap(&r, &a[2], dims[2], strides[2], 4, &tv)) ||
      (st = wrap(&r, &oa, odims, ostrides, 4, &to)) ||
      (maskp && (st = wrap(&r, &mask, NULL, NULL, mask.ndim, &tm))) ||
      (lse && (st = attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, ldims, NULL, lse,
                                     n_lse * sizeof(float), &tl))) ||
      (w && (st = attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 4, wdims, NULL, w,
                                   n_lse * (size_t)Lk * sizeof(float), &tw)))) {
    rc = lib_error(&r, st);
    goto done;
  }
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = (float)scale;
  p.causal = causal;
  p.align = align;
  if (tm && mask.dtype == NPY_U8)
    p.bool_mask = tm;
  else
    p.mask = tm;
  p.lse = tl;
  p.weights = tw;
  if ((st = attn_sdpa(r.ctx, tq, tk, tv, to, &p))) {
    rc = lib_error(&r, st);
    goto done;
  }
  /* 3-D inputs give lse [Hq, Lq] and weights [Hq, Lq, Lk]. */
  int drop = a[0].ndim == 3;
  if (write_output(&c, outp, oa.ndim, oa.dims, out) ||
      (lse && write_output(&c, lsep, 3 - drop, ldims + drop, lse)) ||
      (w && write_output(&c, wp, 4 - drop, wdims + drop, w)))
    goto done;
  rc = ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  free(out);
  free(lse);
  free(w);
  for (int i = 0; i < 3; i++)
    npy_free(&a[i]);
  npy_free(&mask);
  return rc;
}

/* ---- pool ---- */

static const char pool_usage[] =
    "usage: attn pool X.npy -o OUT.npy [--mode sum|mean|max|weighted] [--scores S.npy]\n"
    "                 [--keep K.npy]\n"
    "Pool X [B, L, D] or [B, H, L, D] over its sequence axis L (attn_pool).\n"
    "  -o, --output OUT.npy  result, float32, [B, D] or [B, H, D]\n"
    "  --mode M              sum (default), mean (over the kept tokens), max, or\n"
    "                        weighted: softmax of the scores over the kept tokens\n"
    "  --scores S.npy        float [B, L] or [B, H, L]; required by --mode weighted\n"
    "  --keep K.npy          bool/uint8 [B, L] or [B, H, L], nonzero = keep the token\n"
    "A sequence with no kept token gives zeros.\n"
    "Exit status: 0 success, 1 bad usage, 2 bad input.\n";

static int cmd_pool(int argc, char **argv) {
  cli c = {"pool", pool_usage};
  const char *in = NULL, *outp = NULL, *scores = NULL, *keep = NULL, *v;
  int mode = ATTN_POOL_SUM;
  static const char *const mode_names[] = {"sum", "mean", "max", "weighted"};
  static const int mode_values[] = {ATTN_POOL_SUM, ATTN_POOL_MEAN, ATTN_POOL_MAX,
                                    ATTN_POOL_WEIGHTED};
  for (int i = 1; i < argc; i++) {
    int m;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(c.usage, stdout);
      return ATTN_EXIT_OK;
    } else if ((m = take(&c, argc, argv, &i, "-o", &v)) ||
               (m = take(&c, argc, argv, &i, "--output", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      outp = v;
    } else if ((m = take(&c, argc, argv, &i, "--mode", &v))) {
      if (m < 0 || pick(&c, "--mode", v, mode_names, mode_values, 4, &mode))
        return ATTN_EXIT_USAGE;
    } else if ((m = take(&c, argc, argv, &i, "--scores", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      scores = v;
    } else if ((m = take(&c, argc, argv, &i, "--keep", &v))) {
      if (m < 0)
        return ATTN_EXIT_USAGE;
      keep = v;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage_error(&c, "unknown option '%s'", argv[i]);
    } else if (!in) {
      in = argv[i];
    } else {
      return usage_error(&c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (!in)
    return usage_error(&c, "%s", "missing X.npy");
  if (!outp)
    return usage_error(&c, "%s", "missing -o OUT.npy");

  int rc = ATTN_EXIT_INPUT;
  npy_array x = {0}, s = {0}, k = {0};
  const char *names[3] = {in, scores, keep};
  char files[1024];
  join_files(files, sizeof files, names, 3);
  run r = {&c, files, NULL};
  float *out = NULL;
  if (read_input(&c, in, NPY_ACCEPT_FLOAT, &x) ||
      (scores && read_input(&c, scores, NPY_ACCEPT_FLOAT, &s)) ||
      (keep && read_input(&c, keep, NPY_ACCEPT_BOOL, &k)) || open_ctx(&r))
    goto done;
  if (x.ndim != 3 && x.ndim != 4) {
    fprintf(stderr, "attn pool: %s has %d dims but must be [B, L, D] or [B, H, L, D]\n", in,
            x.ndim);
    goto done;
  }
  int64_t odims[3] = {x.dims[0], x.ndim == 4 ? x.dims[1] : x.dims[2], x.dims[x.ndim - 1]};
  int ond = x.ndim - 1;
  size_t n = (size_t)odims[0] * (size_t)odims[1] * (ond == 3 ? (size_t)odims[2] : 1);
  if (!(out = alloc_floats(&c, n)))
    goto done;
  attn_tensor *tx, *to, *ts = NULL, *tk = NULL;
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = mode;
  attn_status st = wrap(&r, &x, NULL, NULL, x.ndim, &tx);
  if (!st)
    st = attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, ond, odims, NULL, out, n * sizeof(float), &to);
  if (!st && scores)
    st = wrap(&r, &s, NULL, NULL, s.ndim, &ts);
  if (!st && keep)
    st = wrap(&r, &k, NULL, NULL, k.ndim, &tk);
  p.scores = ts;
  p.keep = tk;
  if (st || (st = attn_pool(r.ctx, tx, to, &p))) {
    rc = lib_error(&r, st);
    goto done;
  }
  rc = write_output(&c, outp, ond, odims, out) ? ATTN_EXIT_INPUT : ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  free(out);
  npy_free(&x);
  npy_free(&s);
  npy_free(&k);
  return rc;
}

const attn_subcommand attn_npy_subcommands[] = {
    {"softmax", "softmax or log-softmax of an .npy array", cmd_softmax},
    {"pe", "sinusoidal position table to an .npy file", cmd_pe},
    {"rope", "rotary position embedding of an .npy array", cmd_rope},
    {"sdpa", "scaled dot-product attention of Q, K, V .npy arrays", cmd_sdpa},
    {"pool", "pool an .npy sequence over its tokens: sum, mean, max, weighted", cmd_pool},
    {NULL, NULL, NULL},
};

void attn_npy_usage(FILE *f) {
  for (const attn_subcommand *c = attn_npy_subcommands; c->name; c++)
    fprintf(f, "  attn %-8s %s\n", c->name, c->summary);
  fprintf(f, "Each subcommand takes --help. Exit status: 0 success, 1 bad usage,\n"
             "2 bad input (unreadable or malformed file, arrays or values libattn refuses).\n"
             "Benchmarks: attn-bench (installed beside attn; attn-bench --help).\n");
}
