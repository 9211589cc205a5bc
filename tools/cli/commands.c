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
  /* Set by common_option(): */
  const char *out;     /* -o/--output; "-" = standard output */
  int64_t threads;     /* --threads; 0 = the CPUs available */
  int positional_only; /* after "--" */
} cli;

static int usage_error(const cli *c, const char *fmt, const char *arg) {
  fprintf(stderr, "attn %s: ", c->cmd);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'attn %s --help'.\n", c->cmd);
  return ATTN_EXIT_USAGE;
}

/* Match option `name` at argv[*i] as "--name VALUE" or "--name=VALUE".
 * Returns 1 and sets *val on a match, 0 if argv[*i] is another option (or
 * comes after "--"), and -1 (after saying so on stderr) if the value is
 * missing. */
static int take(const cli *c, int argc, char **argv, int *i, const char *name,
                const char **val) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (c->positional_only || strncmp(a, name, n))
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

/* A logit scale: finite, and not 0 in float32 (0 means the default). */
static int parse_scale(const cli *c, const char *opt, const char *s, double *out) {
  if (parse_double(c, opt, s, out))
    return -1;
  float f = (float)*out;
  if (f == 0 || !isfinite(f)) {
    fprintf(stderr, "attn %s: %s = '%s' %s in float32\nTry 'attn %s --help'.\n", c->cmd, opt,
            s, f == 0 ? "rounds to 0 (0 would mean the default)" : "is out of range",
            c->cmd);
    return -1;
  }
  return 0;
}

/* A comma-separated list of numbers ("3,5,8") into a new array of doubles;
 * integer lists (want_int) must hold integers of at most 2^53 - 1 in
 * magnitude: a double holds those exactly, and strtod rounds any longer
 * integer to one at least 2^53 (position 9007199254740993 was read as
 * 9007199254740992), so none is changed silently. */
#define INT_LIST_MAX 9007199254740991.0 /* 2^53 - 1 */
static int parse_list(const cli *c, const char *opt, const char *s, int want_int,
                      double **out, size_t *n) {
  size_t count = 1;
  for (const char *p = s; *p; p++)
    count += *p == ',';
  double *v = malloc(count * sizeof *v);
  if (!v) {
    fprintf(stderr, "attn %s: out of memory for %s\n", c->cmd, opt);
    return -1;
  }
  const char *p = s;
  for (size_t k = 0; k < count; k++) {
    char *end;
    errno = 0;
    v[k] = strtod(p, &end);
    if (end == p || (*end && *end != ',') || errno == ERANGE || !isfinite(v[k]) ||
        (want_int && (v[k] != floor(v[k]) || fabs(v[k]) > INT_LIST_MAX))) {
      fprintf(stderr, "attn %s: %s = '%s': item %zu is not %s\nTry 'attn %s --help'.\n",
              c->cmd, opt, s, k + 1,
              want_int ? "an integer of at most 2^53 - 1 in magnitude" : "a finite number",
              c->cmd);
      free(v);
      return -1;
    }
    p = end + 1;
  }
  free(*out); /* the option given twice: the last one counts */
  *out = v;
  *n = count;
  return 0;
}

/* True for a "--flag" switch at arg (not after "--"). */
static int flag(const cli *c, const char *arg, const char *name) {
  return !c->positional_only && !strcmp(arg, name);
}

/* True if arg looks like an option ("-" alone is a file: standard input). */
static int is_option(const cli *c, const char *arg) {
  return !c->positional_only && arg[0] == '-' && arg[1];
}

enum { CLI_HELP = -2 };

/* The options every subcommand takes: -h/--help, -o/--output PATH ("-" =
 * standard output), --threads N and "--" (every later argument is a file).
 * Returns 1 if argv[*i] was one, 0 if not, -1 after a usage error, CLI_HELP
 * after printing the help. */
static int common_option(cli *c, int argc, char **argv, int *i) {
  const char *v = NULL;
  int m;
  if (c->positional_only)
    return 0;
  if (!strcmp(argv[*i], "--help") || !strcmp(argv[*i], "-h")) {
    fputs(c->usage, stdout);
    return CLI_HELP;
  }
  if (!strcmp(argv[*i], "--")) {
    c->positional_only = 1;
    return 1;
  }
  if ((m = take(c, argc, argv, i, "-o", &v)) || (m = take(c, argc, argv, i, "--output", &v))) {
    c->out = v;
    return m;
  }
  if ((m = take(c, argc, argv, i, "--threads", &v)))
    return m < 0 || parse_int(c, "--threads", v, 0, 1024, &c->threads) ? -1 : 1;
  return 0;
}

#define COMMON_HELP                                                                      \
  "  -o, --output PATH     where to write the result ('-': standard output)\n"           \
  "  --threads N           threads to use (default 0: the CPUs available)\n"             \
  "  --                    end of options: every later argument is a file\n"             \
  "Exit status: 0 success, 1 bad usage, 2 bad input.\n"

/* The names an option takes and the value each stands for. */
typedef struct {
  const char *const *names;
  const int *values;
  int n;
} cli_choices;

static int pick(const cli *c, const char *opt, const char *s, const cli_choices *ch, int *out) {
  for (int i = 0; i < ch->n; i++)
    if (!strcmp(s, ch->names[i])) {
      *out = ch->values[i];
      return 0;
    }
  fprintf(stderr, "attn %s: %s = '%s' is not one of:", c->cmd, opt, s);
  for (int i = 0; i < ch->n; i++)
    fprintf(stderr, " %s", ch->names[i]);
  fprintf(stderr, "\nTry 'attn %s --help'.\n", c->cmd);
  return -1;
}

/* What an option of a subcommand takes, and the type of its `dest`. */
typedef enum {
  OPT_FLAG,     /* int, set to 1; with `choices`, "--name=CHOICE" also sets *choice_dest */
  OPT_PATH,     /* const char *: the value as given */
  OPT_INT,      /* int64_t in lo..hi */
  OPT_DOUBLE,   /* double, finite */
  OPT_POSITIVE, /* double, finite and > 0 */
  OPT_SCALE,    /* double, a logit scale (parse_scale) */
  OPT_LIST,     /* double * (malloc'd, the caller frees) and *count: "1.5,2,3" */
  OPT_INT_LIST, /* the same, integers */
  OPT_CHOICE,   /* int: the value of one of `choices` */
} opt_kind;

typedef struct {
  const char *name; /* "--scale" */
  opt_kind kind;
  void *dest;
  int64_t lo, hi;             /* OPT_INT */
  size_t *count;              /* the lists */
  const cli_choices *choices; /* OPT_CHOICE, OPT_FLAG */
  int *choice_dest;           /* OPT_FLAG */
} cli_opt;

static int set_option(const cli *c, const cli_opt *o, const char *v) {
  switch (o->kind) {
  case OPT_FLAG:
    *(int *)o->dest = 1;
    return v ? pick(c, o->name, v, o->choices, o->choice_dest) : 0;
  case OPT_PATH:
    *(const char **)o->dest = v;
    return 0;
  case OPT_INT:
    return parse_int(c, o->name, v, o->lo, o->hi, o->dest);
  case OPT_DOUBLE:
    return parse_double(c, o->name, v, o->dest);
  case OPT_POSITIVE:
    if (parse_double(c, o->name, v, o->dest))
      return -1;
    if (*(double *)o->dest <= 0) {
      fprintf(stderr, "attn %s: %s = '%s' must be > 0\nTry 'attn %s --help'.\n", c->cmd,
              o->name, v, c->cmd);
      return -1;
    }
    return 0;
  case OPT_SCALE:
    return parse_scale(c, o->name, v, o->dest);
  case OPT_LIST:
  case OPT_INT_LIST:
    return parse_list(c, o->name, v, o->kind == OPT_INT_LIST, o->dest, o->count);
  case OPT_CHOICE:
    return pick(c, o->name, v, o->choices, o->dest);
  }
  return -1;
}

/* Parse argv[1..] of a subcommand: the common options, `opts`, and exactly
 * n_pos positional arguments into pos[] (`missing` is the message when there
 * are fewer); -o is required. Returns -1 to go on, or the exit code:
 * ATTN_EXIT_OK after printing --help, ATTN_EXIT_USAGE after a message. Lists
 * parsed before a failure are the caller's to free. */
static int parse_args(cli *c, int argc, char **argv, const cli_opt *opts, int n_opts,
                      const char **pos, int n_pos, const char *missing) {
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    int m = common_option(c, argc, argv, &i);
    if (m == CLI_HELP)
      return ATTN_EXIT_OK;
    if (m < 0)
      return ATTN_EXIT_USAGE;
    if (m)
      continue;
    const cli_opt *o = NULL;
    const char *v = NULL;
    for (int k = 0; k < n_opts && !o; k++) {
      size_t n = strlen(opts[k].name);
      if (opts[k].kind != OPT_FLAG) {
        if ((m = take(c, argc, argv, &i, opts[k].name, &v)) < 0)
          return ATTN_EXIT_USAGE;
        o = m ? &opts[k] : NULL;
      } else if (flag(c, argv[i], opts[k].name)) {
        o = &opts[k];
      } else if (opts[k].choices && !c->positional_only && !strncmp(argv[i], opts[k].name, n) &&
                 argv[i][n] == '=') {
        o = &opts[k];
        v = argv[i] + n + 1;
      }
    }
    if (o) {
      if (set_option(c, o, v))
        return ATTN_EXIT_USAGE;
    } else if (is_option(c, argv[i])) {
      return usage_error(c, "unknown option '%s'", argv[i]);
    } else if (npos < n_pos) {
      pos[npos++] = argv[i];
    } else {
      return usage_error(c, "unexpected argument '%s'", argv[i]);
    }
  }
  if (npos < n_pos)
    return usage_error(c, "%s", missing);
  if (!c->out)
    return usage_error(c, "%s", "missing -o OUT.npy");
  return -1;
}

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- libattn helpers ---- */

typedef struct {
  const cli *c;
  const char *files; /* the input files, for messages */
  attn_ctx *ctx;
} run;

static int open_ctx(run *r) {
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = (int32_t)r->c->threads;
  attn_status st = attn_ctx_create(&r->ctx, &o);
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
    "Softmax (or log-softmax) over the last axis of IN (1-4 dims; float16, float32\n"
    "or float64).\n"
    "OUT: float32, IN's shape.\n"
    "  --log                 log-softmax instead\n"
    "  --scale S             multiply IN by S first (1/temperature; default 1)\n"
    "  --mask M.npy          float: added after scaling (-inf removes an entry);\n"
    "                        bool/uint8: nonzero = keep. Broadcast to IN's shape.\n"
    COMMON_HELP;

static int cmd_softmax(int argc, char **argv) {
  cli c = {"softmax", softmax_usage, NULL, 0, 0};
  const char *in = NULL, *outp = NULL, *maskp = NULL;
  int log = 0;
  double scale = 1.0;
  const cli_opt opts[] = {
      {"--log", OPT_FLAG, .dest = &log},
      {"--scale", OPT_SCALE, .dest = &scale},
      {"--mask", OPT_PATH, .dest = &maskp},
  };
  int rc = parse_args(&c, argc, argv, opts, N_OPTS(opts), &in, 1, "missing IN.npy");
  if (rc >= 0)
    return rc;
  outp = c.out;

  rc = ATTN_EXIT_INPUT;
  npy_array x = {0}, mask = {0};
  float *y = NULL;
  char files[512];
  join_files(files, sizeof files, (const char *const[]){in, maskp}, 2);
  run r = {&c, files, NULL};
  if (read_input(&c, in, NPY_ACCEPT_FLOAT, &x) ||
      (maskp && read_input(&c, maskp, NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL | NPY_ADDITIVE_MASK, &mask)) ||
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
    COMMON_HELP;

static const cli_choices pe_layouts = {
    (const char *const[]){"interleaved", "concat", "concat-shifted", "cos-sin"},
    (const int[]){ATTN_PE_INTERLEAVED, ATTN_PE_SIN_COS, ATTN_PE_SIN_COS_SHIFTED, ATTN_PE_COS_SIN},
    4};

static int cmd_pe(int argc, char **argv) {
  cli c = {"pe", pe_usage, NULL, 0, 0};
  const char *outp = NULL;
  int64_t len = 0, dim = 0;
  int layout = ATTN_PE_INTERLEAVED;
  double base = 10000.0, offset = 0.0;
  const cli_opt opts[] = {
      {"--len", OPT_INT, .dest = &len, .lo = 1, .hi = (int64_t)1 << 31},
      {"--dim", OPT_INT, .dest = &dim, .lo = 1, .hi = (int64_t)1 << 31},
      {"--layout", OPT_CHOICE, .dest = &layout, .choices = &pe_layouts},
      {"--base", OPT_DOUBLE, .dest = &base},
      {"--offset", OPT_DOUBLE, .dest = &offset},
  };
  int rc = parse_args(&c, argc, argv, opts, N_OPTS(opts), NULL, 0, NULL);
  if (rc >= 0)
    return rc;
  if (!len || !dim)
    return usage_error(&c, "%s", "--len and --dim are required");
  outp = c.out;

  rc = ATTN_EXIT_INPUT;
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

static const cli_choices layouts = {(const char *const[]){"bhld", "blhd"}, (const int[]){0, 1},
                                    2};

/* ---- rope ---- */

static const char rope_usage[] =
    "usage: attn rope IN.npy -o OUT.npy [--style half|interleaved] [--theta T]\n"
    "                 [--rotary-dim R] [--offset P | --positions P,...]\n"
    "                 [--layout bhld|blhd]\n"
    "Rotary position embedding of IN: [B, H, L, D] (or [B, L, H, D] with\n"
    "--layout blhd; 3-D without the batch axis), float16, float32 or float64.\n"
    "  --style half         pairs (i, i + R/2): GPT-NeoX, LLaMA (default)\n"
    "  --style interleaved  pairs (2i, 2i + 1): GPT-J\n"
    "  --theta T            frequency base (default 10000)\n"
    "  --rotary-dim R       rotate the first R dims of each head (even; default D)\n"
    "  --offset P           token l has position P + l (default 0)\n"
    "  --positions P,...    the position of every token instead, B * L integers >= 0\n"
    "                       in [B, L] order\n"
    COMMON_HELP;

static int cmd_rope(int argc, char **argv) {
  cli c = {"rope", rope_usage, NULL, 0, 0};
  const char *in = NULL, *outp = NULL;
  int style = ATTN_ROPE_HALF_SPLIT, blhd = 0;
  double theta = 10000.0;
  int64_t rdim = 0, offset = 0;
  double *posl = NULL;
  size_t n_pos = 0;
  const cli_choices styles = {(const char *const[]){"half", "interleaved"},
                                     (const int[]){ATTN_ROPE_HALF_SPLIT, ATTN_ROPE_INTERLEAVED}, 2};
  const cli_opt opts[] = {
      {"--style", OPT_CHOICE, .dest = &style, .choices = &styles},
      {"--layout", OPT_CHOICE, .dest = &blhd, .choices = &layouts},
      {"--theta", OPT_DOUBLE, .dest = &theta},
      {"--rotary-dim", OPT_INT, .dest = &rdim, .lo = 1, .hi = INT32_MAX},
      {"--offset", OPT_INT, .dest = &offset, .lo = 0, .hi = INT64_MAX / 2},
      {"--positions", OPT_INT_LIST, .dest = &posl, .count = &n_pos},
  };
  int rc = parse_args(&c, argc, argv, opts, N_OPTS(opts), &in, 1, "missing IN.npy");
  if (rc >= 0) {
    free(posl);
    return rc;
  }
  outp = c.out;

  rc = ATTN_EXIT_INPUT;
  npy_array x = {0};
  int64_t *positions = NULL;
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
  if (posl) { /* libattn reads B * L of them */
    if (n_pos != (size_t)(dims[0] * dims[2])) {
      fprintf(stderr, "attn rope: %s: --positions has %zu values but B * L = %lld\n", in,
              n_pos, (long long)(dims[0] * dims[2]));
      goto done;
    }
    if (!(positions = malloc(n_pos * sizeof *positions)))
      goto done;
    for (size_t k = 0; k < n_pos; k++)
      positions[k] = (int64_t)posl[k];
    p.positions = positions;
  }
  attn_status st = wrap(&r, &x, dims, strides, 4, &t);
  if (st || (st = attn_rope(r.ctx, t, &p))) {
    rc = lib_error(&r, st);
    goto done;
  }
  rc = write_output(&c, outp, x.ndim, x.dims, x.data) ? ATTN_EXIT_INPUT : ATTN_EXIT_OK;
done:
  attn_ctx_destroy(r.ctx);
  npy_free(&x);
  free(positions);
  free(posl);
  return rc;
}

/* ---- sdpa ---- */

static const char sdpa_usage[] =
    "usage: attn sdpa Q.npy K.npy V.npy -o OUT.npy [--causal] [--align ALIGN]\n"
    "                 [--scale S] [--mask M.npy] [--kv-lens N,...] [--window L[,R]]\n"
    "                 [--alibi MAX_BIAS] [--softcap C] [--sinks S,...]\n"
    "                 [--lse LSE.npy] [--weights W.npy] [--layout bhld|blhd]\n"
    "Scaled dot-product attention softmax(S q k^T + mask) v.\n"
    "Q [B, Hq, Lq, D], K [B, Hkv, Lk, D], V [B, Hkv, Lk, Dv] (or [B, L, H, D] each\n"
    "with --layout blhd; 3-D without the batch axis), float16, 32 or 64; Hq a\n"
    "multiple of Hkv (grouped-query). OUT has Q's layout with Dv columns.\n"
    "  --causal          causal mask: query i sees keys j <= i' (i' below)\n"
    "  --align ALIGN     where query i sits among the keys, for --causal, --window\n"
    "                    and --alibi: top-left (default): i' = i (PyTorch);\n"
    "                    bottom-right: the last query sits at the last key (KV cache;\n"
    "                    with --kv-lens, at key kv_lens[b] - 1). --causal=ALIGN sets both\n"
    "  --scale S         logit scale (default 1/sqrt(D))\n"
    "  --kv-lens N,...   keys per batch entry (B integers): keys j >= N are ignored\n"
    "  --window L[,R]    sliding window: keys i' - L <= j <= i' + R (R default 0)\n"
    "  --alibi MAX_BIAS  ALiBi slopes for the Hq heads (attn_alibi_slopes; 8 is usual),\n"
    "                    adds slope * (j - i') to the logits (keys after i', seen\n"
    "                    without --causal, get a positive bias)\n"
    "  --softcap C       soft-cap the scaled logits: C * tanh(logit / C)\n"
    "  --sinks S,...     one sink logit per query head (Hq numbers)\n"
    "  --mask M.npy      float: additive; bool/uint8: nonzero = attend; broadcast to\n"
    "                    [B, Hq, Lq, Lk]\n"
    "  --lse LSE.npy     also write the log-sum-exp [B, Hq, Lq]\n"
    "  --weights W.npy   also write the attention weights [B, Hq, Lq, Lk]\n"
    COMMON_HELP;

static int cmd_sdpa(int argc, char **argv) {
  cli c = {"sdpa", sdpa_usage, NULL, 0, 0};
  const char *paths[3] = {NULL, NULL, NULL}, *outp = NULL, *maskp = NULL, *lsep = NULL,
             *wp = NULL;
  int causal = 0, align = ATTN_ALIGN_TOP_LEFT, blhd = 0;
  double scale = 0, softcap = 0, max_bias = -1;
  double *kv_lens = NULL, *sinks = NULL, *win = NULL;
  size_t n_kv_lens = 0, n_sinks = 0, n_win = 0;
  const cli_choices aligns = {(const char *const[]){"top-left", "bottom-right"},
                                     (const int[]){ATTN_ALIGN_TOP_LEFT, ATTN_ALIGN_BOTTOM_RIGHT},
                                     2};
  const cli_opt opts[] = {
      {"--causal", OPT_FLAG, .dest = &causal, .choices = &aligns, .choice_dest = &align},
      {"--align", OPT_CHOICE, .dest = &align, .choices = &aligns},
      {"--kv-lens", OPT_INT_LIST, .dest = &kv_lens, .count = &n_kv_lens},
      {"--window", OPT_INT_LIST, .dest = &win, .count = &n_win},
      {"--alibi", OPT_POSITIVE, .dest = &max_bias},
      {"--softcap", OPT_POSITIVE, .dest = &softcap},
      {"--sinks", OPT_LIST, .dest = &sinks, .count = &n_sinks},
      {"--layout", OPT_CHOICE, .dest = &blhd, .choices = &layouts},
      {"--scale", OPT_SCALE, .dest = &scale},
      {"--mask", OPT_PATH, .dest = &maskp},
      {"--lse", OPT_PATH, .dest = &lsep},
      {"--weights", OPT_PATH, .dest = &wp},
  };
  int rc = parse_args(&c, argc, argv, opts, N_OPTS(opts), paths, 3, "needs Q.npy K.npy V.npy");
  if (rc < 0 && win && (n_win > 2 || win[0] < 0 || (n_win == 2 && win[1] < 0)))
    rc = usage_error(&c, "%s", "--window must be LEFT or LEFT,RIGHT (integers >= 0)");
  outp = c.out;
  if (rc >= 0) {
    free(kv_lens);
    free(sinks);
    free(win);
    return rc;
  }
  int window = win != NULL;

  rc = ATTN_EXIT_INPUT;
  npy_array a[3] = {{0}}, mask = {0};
  float *out = NULL, *lse = NULL, *w = NULL, *slopes = NULL, *sinks32 = NULL;
  int64_t *lens = NULL;
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
  if (maskp && read_input(&c, maskp, NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL | NPY_ADDITIVE_MASK, &mask))
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
  /* The lists must match the shapes (libattn reads B or Hq values). */
  if ((kv_lens && n_kv_lens != (size_t)B) || (sinks && n_sinks != (size_t)Hq)) {
    fprintf(stderr, "attn sdpa: %s: --%s has %zu values but Q has %lld %s\n", files,
            kv_lens && n_kv_lens != (size_t)B ? "kv-lens" : "sinks",
            kv_lens && n_kv_lens != (size_t)B ? n_kv_lens : n_sinks,
            (long long)(kv_lens && n_kv_lens != (size_t)B ? B : Hq),
            kv_lens && n_kv_lens != (size_t)B ? "batch entries" : "heads");
    goto done;
  }
  if (open_ctx(&r))
    goto done;
  if (kv_lens) {
    if (!(lens = malloc(n_kv_lens * sizeof *lens)))
      goto done;
    for (size_t k = 0; k < n_kv_lens; k++)
      lens[k] = (int64_t)kv_lens[k];
  }
  if (sinks) {
    if (!(sinks32 = alloc_floats(&c, n_sinks)))
      goto done;
    for (size_t k = 0; k < n_sinks; k++)
      sinks32[k] = (float)sinks[k];
  }
  attn_status st;
  if (max_bias > 0) {
    if (!(slopes = alloc_floats(&c, (size_t)Hq)))
      goto done;
    if ((st = attn_alibi_slopes(r.ctx, (int32_t)Hq, max_bias, slopes))) {
      rc = lib_error(&r, st);
      goto done;
    }
  }
  oa.data = out;
  attn_tensor *tq, *tk, *tv, *to, *tm = NULL, *tl = NULL, *tw = NULL;
  int64_t ldims[3] = {B, Hq, Lq}, wdims[4] = {B, Hq, Lq, Lk};
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
  p.softcap = (float)softcap;
  p.window = window;
  p.window_left = window ? (int64_t)win[0] : 0;
  p.window_right = n_win == 2 ? (int64_t)win[1] : 0;
  p.kv_lens = lens;
  p.alibi_slopes = slopes;
  p.sinks = sinks32;
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
  free(slopes);
  free(sinks32);
  free(lens);
  for (int i = 0; i < 3; i++)
    npy_free(&a[i]);
  npy_free(&mask);
  free(kv_lens);
  free(sinks);
  free(win);
  return rc;
}

/* ---- pool ---- */

static const char pool_usage[] =
    "usage: attn pool X.npy -o OUT.npy [--mode sum|mean|max|weighted] [--scores S.npy]\n"
    "                 [--keep K.npy]\n"
    "Pool X [B, L, D] or [B, H, L, D] over its sequence axis L (attn_pool).\n"
    "OUT: float32, [B, D] or [B, H, D].\n"
    "  --mode M              sum (default), mean (over the kept tokens), max, or\n"
    "                        weighted: softmax of the scores over the kept tokens\n"
    "  --scores S.npy        float [B, L] or [B, H, L]; required by --mode weighted\n"
    "  --keep K.npy          bool/uint8 [B, L] or [B, H, L], nonzero = keep the token\n"
    "A sequence with no kept token gives zeros.\n"
    COMMON_HELP;

static int cmd_pool(int argc, char **argv) {
  cli c = {"pool", pool_usage, NULL, 0, 0};
  const char *in = NULL, *outp = NULL, *scores = NULL, *keep = NULL;
  int mode = ATTN_POOL_SUM;
  const cli_choices modes = {
      (const char *const[]){"sum", "mean", "max", "weighted"},
      (const int[]){ATTN_POOL_SUM, ATTN_POOL_MEAN, ATTN_POOL_MAX, ATTN_POOL_WEIGHTED}, 4};
  const cli_opt opts[] = {
      {"--mode", OPT_CHOICE, .dest = &mode, .choices = &modes},
      {"--scores", OPT_PATH, .dest = &scores},
      {"--keep", OPT_PATH, .dest = &keep},
  };
  int rc = parse_args(&c, argc, argv, opts, N_OPTS(opts), &in, 1, "missing X.npy");
  if (rc >= 0)
    return rc;
  outp = c.out;

  rc = ATTN_EXIT_INPUT;
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
  fprintf(f, "Inputs: .npy float16 (widened exactly), float32 or float64 (rounded; a value\n"
             "past float32's range is refused, but reads as -inf where it is a negative one in\n"
             "an additive mask); outputs float32.\n"
             "Each subcommand takes --help. Exit status: 0 success, 1 bad usage,\n"
             "2 bad input (unreadable or malformed file, arrays or values libattn refuses).\n"
             "Benchmarks: attn-bench (installed beside attn; attn-bench --help).\n");
}
