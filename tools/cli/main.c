/* The attn command: what libattn is linked and how it runs here (attn info),
 * and its main job on a built-in example (attn demo). Each subcommand is one
 * function with its own help text, listed in the table `commands`; the .npy
 * subcommands (softmax, pe, rope, sdpa) live in commands.c. */
#include "attn.h"
#include "commands.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Exit codes (commands.h), shared by every subcommand and documented in
 * the main help: 0 success, 1 bad usage, 2 bad input or a step libattn refused. */
enum { EXIT_OK = ATTN_EXIT_OK, EXIT_USAGE = ATTN_EXIT_USAGE, EXIT_INPUT = ATTN_EXIT_INPUT };

typedef struct command {
  const char *name;
  const char *summary; /* one line, for the main help */
  const char *help;    /* the full help of the subcommand */
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand's name */
} command;

static int cmd_info(int argc, char **argv);
static int cmd_demo(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const command commands[] = {
    {"info", "library and header versions, BLAS, CPU kernels, threads",
     "usage: attn info\n"
     "\n"
     "Print the version of the loaded libattn and of the header it was built\n"
     "with, the BLAS it calls (name, core, thread count), the CPU features and\n"
     "the kernels chosen at run time, and the thread count of a default context\n"
     "(the CPUs available to this process).\n"
     "Exit status: 0 success, 1 bad usage.\n",
     cmd_info},
    {"demo", "softmax, positional encodings and attention on a built-in example",
     "usage: attn demo\n"
     "\n"
     "Run libattn's main job on a built-in six-token sentence with made-up\n"
     "8-dimensional embeddings, and print each step:\n"
     "  1. sinusoidal positional encodings (attn_sinusoidal, attn_sinusoidal_add);\n"
     "  2. softmax of [1, 2, 3, 4, 5], then of the same row scaled by 0.5 with its\n"
     "     last two entries masked (attn_softmax);\n"
     "  3. causal self-attention over the encoded tokens (attn_sdpa): the\n"
     "     attention weights as a grid, then the output rows;\n"
     "  4. the seed article's pipeline end to end: feature weights by softmax\n"
     "     (attn_softmax), the weighted sequence, the positional encoding added\n"
     "     (attn_sinusoidal_add), and the aggregation y = aggregate(x) as sum,\n"
     "     mean, max and softmax-weighted average (attn_pool);\n"
     "  5. decoding: a decoder layer (attn_mha_forward) reads the sentence into a\n"
     "     KV cache (attn_kv_cache_create), then generates four tokens greedily,\n"
     "     one step each, with the cache length shown.\n"
     "Exit status: 0 success, 1 bad usage, 2 if libattn refuses a step (its\n"
     "message is printed).\n",
     cmd_demo},
    {"help", "help on a subcommand: attn help SUBCOMMAND",
     "usage: attn help [SUBCOMMAND]\n", cmd_help},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static void main_help(FILE *f) {
  fprintf(f, "usage: attn SUBCOMMAND [OPTIONS]\n"
             "       attn SUBCOMMAND --help\n"
             "       attn --version\n"
             "\n"
             "libattn %s: attention on the CPU.\n"
             "\n"
             "Subcommands:\n",
          ATTN_VERSION_STRING);
  for (int i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  attn %-8s %s\n", commands[i].name, commands[i].summary);
  attn_npy_usage(f); /* the .npy subcommands, and the exit status line */
}

static const command *find_command(const char *name) {
  for (int i = 0; i < N_COMMANDS; i++)
    if (!strcmp(commands[i].name, name))
      return &commands[i];
  return NULL;
}

static int is_help_flag(const char *arg) { return !strcmp(arg, "--help") || !strcmp(arg, "-h"); }

/* For subcommands without options: accept only --help. Returns -1 to go on,
 * or the exit code. */
static int no_options(const command *c, int argc, char **argv) {
  if (argc == 2 && is_help_flag(argv[1])) {
    fputs(c->help, stdout);
    return EXIT_OK;
  }
  if (argc > 1) {
    fprintf(stderr, "attn %s: unexpected argument '%s'\n%s", c->name, argv[1], c->help);
    return EXIT_USAGE;
  }
  return -1;
}

static int cmd_help(int argc, char **argv) {
  if (argc < 2 || is_help_flag(argv[1])) {
    main_help(stdout);
    return EXIT_OK;
  }
  const command *c = find_command(argv[1]);
  if (c) {
    fputs(c->help, stdout);
    return EXIT_OK;
  }
  for (const attn_subcommand *n = attn_npy_subcommands; n->name; n++)
    if (!strcmp(argv[1], n->name)) {
      char *help_argv[] = {argv[1], "--help", NULL};
      return n->run(2, help_argv);
    }
  fprintf(stderr, "attn help: unknown subcommand '%s'\n", argv[1]);
  return EXIT_USAGE;
}

/* ---- attn info ---- */

static int cmd_info(int argc, char **argv) {
  int rc = no_options(find_command("info"), argc, argv);
  if (rc >= 0)
    return rc;

  printf("libattn  %s (header %s)\n", attn_version_string(), ATTN_VERSION_STRING);
  if (attn_version() != ATTN_VERSION)
    printf("warning: the loaded library is not the version this program was built with\n");
  char blas[256];
  if (attn_blas_info(blas, sizeof blas) == ATTN_OK)
    printf("blas     %s\n", blas);
  printf("cpu      %s\n", attn_cpu_info());

  attn_ctx *ctx = NULL;
  attn_status st = attn_ctx_create(&ctx, NULL);
  if (st != ATTN_OK) {
    fprintf(stderr, "attn info: attn_ctx_create: %s\n", attn_status_string(st));
    return EXIT_INPUT;
  }
  printf("threads  %d (default context: the CPUs available to this process)\n",
         (int)attn_ctx_num_threads(ctx));
  attn_ctx_destroy(ctx);
  return EXIT_OK;
}

/* ---- attn demo ---- */

enum { L = 6, D = 8 };
static const char *const tokens[L] = {"the", "cat", "sat", "on", "the", "mat"};

/* Report a failed call with the context's message. */
static int failed(attn_ctx *ctx, const char *call, attn_status st) {
  fprintf(stderr, "attn demo: %s failed: %s: %s\n", call, attn_status_string(st),
          attn_ctx_last_error(ctx));
  return EXIT_INPUT;
}

static void print_row(const char *label, const float *x, int n, const char *fmt) {
  printf("  %-6s", label);
  for (int i = 0; i < n; i++)
    printf(fmt, x[i]);
  printf("\n");
}

/* Rows of an [L, D] table labelled with position and token. */
static void print_table(const char *title, const float *x) {
  printf("\n  %s\n  %-6s", title, "");
  for (int d = 0; d < D; d++) {
    char col[8];
    snprintf(col, sizeof col, "d%d", d);
    printf(" %7s", col);
  }
  printf("\n");
  for (int l = 0; l < L; l++) {
    char label[16];
    snprintf(label, sizeof label, "%d %s", l, tokens[l]);
    print_row(label, x + l * D, D, " %7.3f");
  }
}

/* Made-up embeddings: a fixed vector per distinct word, so the two "the"
 * tokens are identical until the positional encoding tells them apart. */
static void embed(float x[L][D]) {
  for (int l = 0; l < L; l++) {
    unsigned h = 5381;
    for (const char *c = tokens[l]; *c; c++)
      h = h * 33u + (unsigned char)*c;
    for (int d = 0; d < D; d++)
      x[l][d] = 0.5f * sinf((float)(h % 1000u) * 0.01f + 1.3f * (float)d);
  }
}

static int demo_encodings(attn_ctx *ctx, float x[L][D]) {
  static float pe[L][D];
  int64_t dims[2] = {L, D};
  attn_tensor *tpe, *tx;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, pe, sizeof pe, &tpe);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, x, sizeof(float) * L * D, &tx);
  if (st != ATTN_OK)
    return failed(ctx, "attn_tensor_wrap", st);

  printf("1. Positional encodings\n"
         "\n"
         "  Attention by itself ignores word order, so each token's embedding gets\n"
         "  a sinusoidal encoding of its position added: PE[p, 2i] = sin(p w_i),\n"
         "  PE[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/D) (attn_sinusoidal,\n"
         "  interleaved layout as in the paper).\n");
  embed(x);
  print_table("token embeddings (made up; both \"the\" rows are equal):", &x[0][0]);
  if ((st = attn_sinusoidal(ctx, tpe, NULL)) != ATTN_OK)
    return failed(ctx, "attn_sinusoidal", st);
  print_table("positional encoding PE:", &pe[0][0]);
  if ((st = attn_sinusoidal_add(ctx, tx, NULL)) != ATTN_OK)
    return failed(ctx, "attn_sinusoidal_add", st);
  print_table("embedding + PE (attn_sinusoidal_add, in place):", &x[0][0]);
  return EXIT_OK;
}

static int demo_softmax(attn_ctx *ctx) {
  enum { N = 5 };
  float row[N] = {1, 2, 3, 4, 5}, y[N], y2[N];
  uint8_t keep[N] = {1, 1, 1, 0, 0};
  int64_t dims[1] = {N};
  attn_tensor *tx, *ty, *ty2, *tkeep;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, dims, NULL, row, sizeof row, &tx);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, dims, NULL, y, sizeof y, &ty);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, dims, NULL, y2, sizeof y2, &ty2);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 1, dims, NULL, keep, sizeof keep, &tkeep);
  if (st != ATTN_OK)
    return failed(ctx, "attn_tensor_wrap", st);

  printf("\n2. Softmax\n"
         "\n"
         "  softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x): positive\n"
         "  weights that sum to 1, the largest logit getting the most.\n\n");
  if ((st = attn_softmax(ctx, tx, ty, NULL)) != ATTN_OK)
    return failed(ctx, "attn_softmax", st);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = 0.5f; /* temperature 2: a flatter distribution */
  p.bool_mask = tkeep;
  if ((st = attn_softmax(ctx, tx, ty2, &p)) != ATTN_OK)
    return failed(ctx, "attn_softmax", st);

  float s1 = 0, s2 = 0;
  for (int i = 0; i < N; i++) {
    s1 += y[i];
    s2 += y2[i];
  }
  printf("  %-34s", "x");
  for (int i = 0; i < N; i++)
    printf(" %7.0f", row[i]);
  printf("\n  %-34s", "softmax(x)");
  for (int i = 0; i < N; i++)
    printf(" %7.5f", y[i]);
  printf("   sum %.6f\n  %-34s", s1, "scale 0.5, last two masked");
  for (int i = 0; i < N; i++)
    printf(" %7.5f", y2[i]);
  printf("   sum %.6f\n", s2);
  return EXIT_OK;
}

static int demo_attention(attn_ctx *ctx, float x[L][D]) {
  static float out[L][D], weights[L][L];
  int64_t xdims[4] = {1, 1, L, D}, wdims[4] = {1, 1, L, L};
  attn_tensor *tx, *to, *tw;
  attn_status st =
      attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, xdims, NULL, x, sizeof(float) * L * D, &tx);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, xdims, NULL, out, sizeof out, &to);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, wdims, NULL, weights, sizeof weights, &tw);
  if (st != ATTN_OK)
    return failed(ctx, "attn_tensor_wrap", st);

  printf("\n3. Attention\n"
         "\n"
         "  out = softmax(Q K^T / sqrt(D)) V, here self-attention with Q = K = V =\n"
         "  the encoded tokens (a real layer first multiplies them by learned\n"
         "  matrices), one head, causal: token i attends to tokens 0..i only.\n");
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.weights = tw;
  st = attn_sdpa(ctx, tx, tx, tx, to, &p);
  if (st != ATTN_OK) {
    printf("\n  attn_sdpa returned %s: %s\n", attn_status_string(st), attn_ctx_last_error(ctx));
    return EXIT_INPUT;
  }

  printf("\n  attention weights (row: query token, column: key token; - = masked)\n  %-6s",
         "");
  for (int j = 0; j < L; j++)
    printf(" %6s", tokens[j]);
  printf("\n");
  for (int i = 0; i < L; i++) {
    printf("  %-6s", tokens[i]);
    for (int j = 0; j < L; j++) {
      if (j > i && weights[i][j] == 0.0f)
        printf(" %6s", "-");
      else
        printf(" %6.3f", weights[i][j]);
    }
    printf("\n");
  }
  print_table("output rows (each a weighted mean of the value rows it sees):",
              &out[0][0]);
  return EXIT_OK;
}

/* The article's steps: w = softmax(f) over the tokens for a feature f,
 * x_weighted = w * x, x_encoded = x_weighted + PE, y = aggregate(x_encoded).
 * Its TensorFlow code ends with reduce_sum of the attention weights (a row
 * of ones, not an aggregate of the sequence); this aggregates the values. */
static int demo_pipeline(attn_ctx *ctx) {
  static float x[L][D], f[L], w[L], y[4][D];
  embed(x);
  for (int l = 0; l < L; l++) { /* a stand-in feature extractor: the row mean */
    f[l] = 0;
    for (int d = 0; d < D; d++)
      f[l] += x[l][d] / (float)D;
  }
  int64_t ld[1] = {L}, xd[3] = {1, L, D}, sd[2] = {1, L}, yd[2] = {1, D};
  attn_tensor *tf, *tw, *tx, *ts, *ty[4];
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, ld, NULL, f, sizeof f, &tf);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, ld, NULL, w, sizeof w, &tw);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, NULL, x, sizeof x, &tx);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, sd, NULL, f, sizeof f, &ts);
  for (int m = 0; m < 4 && st == ATTN_OK; m++)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, yd, NULL, y[m], sizeof y[m], &ty[m]);
  if (st != ATTN_OK)
    return failed(ctx, "attn_tensor_wrap", st);

  printf("\n4. The article's pipeline: weights, weighted sequence, encoding, aggregate\n"
         "\n"
         "  A feature per token (here the mean of its embedding) gives weights\n"
         "  w = softmax(f) over the tokens; each token is scaled by its weight, the\n"
         "  positional encoding is added, and y = aggregate(x_encoded) reduces the\n"
         "  sequence to one vector.\n\n");
  if ((st = attn_softmax(ctx, tf, tw, NULL)) != ATTN_OK)
    return failed(ctx, "attn_softmax", st);
  printf("  %-6s", "token");
  for (int l = 0; l < L; l++)
    printf(" %7s", tokens[l]);
  printf("\n");
  print_row("f", f, L, " %7.3f");
  print_row("w", w, L, " %7.3f");
  for (int l = 0; l < L; l++)
    for (int d = 0; d < D; d++)
      x[l][d] *= w[l];
  print_table("x_weighted = w * x (attn_softmax weights per token):", &x[0][0]);
  if ((st = attn_sinusoidal_add(ctx, tx, NULL)) != ATTN_OK)
    return failed(ctx, "attn_sinusoidal_add", st);
  print_table("x_encoded = x_weighted + PE (attn_sinusoidal_add):", &x[0][0]);
  static const char *const names[4] = {"sum", "mean", "max", "wavg"};
  static const int32_t modes[4] = {ATTN_POOL_SUM, ATTN_POOL_MEAN, ATTN_POOL_MAX,
                                   ATTN_POOL_WEIGHTED};
  printf("\n  y = aggregate(x_encoded) over the %d tokens (attn_pool; wavg: the average\n"
         "  weighted by softmax(f), the article's \"weighted average\")\n", L);
  for (int m = 0; m < 4; m++) {
    attn_pool_params p;
    attn_pool_params_init(&p);
    p.mode = modes[m];
    p.scores = modes[m] == ATTN_POOL_WEIGHTED ? ts : NULL;
    if ((st = attn_pool(ctx, tx, ty[m], &p)) != ATTN_OK)
      return failed(ctx, "attn_pool", st);
    print_row(names[m], y[m], D, " %7.3f");
  }
  return EXIT_OK;
}

/* One decoder layer (2 query heads and 1 key/value head of 4, RoPE) reads
 * the sentence into a KV cache, then generates greedily: the next token is
 * the vocabulary word whose embedding best matches the last output (a
 * stand-in for a model's remaining layers and its output head). */
static int demo_decoding(attn_ctx *ctx) {
  static float x[L][D], y[L][D], w[4][D * D];
  embed(x);
  attn_rope_params rope;
  attn_rope_params_init(&rope);
  attn_mha_decoder_params lp;
  attn_mha_decoder_params_init(&lp);
  lp.embed_dim = D, lp.num_heads = 2, lp.num_kv_heads = 1;
  lp.rope = &rope;
  attn_mha *layer = NULL;
  attn_kv_cache *kv = NULL;
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = 1, cp.kv_heads = 1, cp.head_dim = D / 2, cp.capacity = 16;
  attn_status st = attn_mha_create_decoder(ctx, &lp, &layer);
  if (st == ATTN_OK)
    st = attn_kv_cache_create(ctx, &cp, &kv);
  if (st != ATTN_OK)
    return failed(ctx, "attn_mha_create_decoder / attn_kv_cache_create", st);
  /* Made-up weights: Wq, Wk, Wv and Wo near the identity. */
  const int64_t rows[4] = {D, D / 2, D / 2, D};
  for (int32_t i = 0; i < 4 && st == ATTN_OK; i++) {
    for (int r = 0; r < rows[i]; r++)
      for (int c = 0; c < D; c++)
        w[i][r * D + c] = (r == c ? 1.0f : 0.0f) + 0.1f * sinf((float)(3 * i + 7 * r + c));
    int64_t dims[2] = {rows[i], D};
    attn_tensor *t = NULL;
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, w[i], sizeof w[i], &t);
    if (st == ATTN_OK)
      st = attn_mha_set_weight(ctx, layer, i, t);
  }
  int64_t xd[3] = {1, L, D}, sd[3] = {1, 1, D};
  attn_tensor *tx = NULL, *ty = NULL, *tn = NULL, *to = NULL;
  static float next[D], out[D];
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, NULL, x, sizeof x, &tx);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, NULL, y, sizeof y, &ty);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, sd, NULL, next, sizeof next, &tn);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, sd, NULL, out, sizeof out, &to);
  if (st != ATTN_OK)
    return failed(ctx, "attn_mha_set_weight / attn_tensor_wrap", st);

  printf("\n5. Decoding through a KV cache\n"
         "\n"
         "  One decoder layer (q/k/v/o projections, 2 query heads sharing 1 key/value\n"
         "  head, RoPE) reads the sentence into a KV cache in one call, then generates\n"
         "  greedily: each step runs only the new token, whose keys and values join\n"
         "  the cache; the next token is the word whose embedding best matches the\n"
         "  output (a real model has more layers and an output head).\n\n");
  if ((st = attn_mha_forward(ctx, layer, kv, tx, ty, NULL)) != ATTN_OK)
    return failed(ctx, "attn_mha_forward", st);
  memcpy(out, y[L - 1], sizeof out);
  for (int step = 0; step < 4; step++) {
    int best = 0;
    float best_score = -INFINITY;
    for (int l = 0; l < L; l++) {
      float s = 0;
      for (int d = 0; d < D; d++)
        s += out[d] * x[l][d];
      if (s > best_score)
        best_score = s, best = l;
    }
    int64_t len = 0;
    attn_kv_cache_info info = {.struct_size = sizeof info};
    if ((st = attn_kv_cache_info_get(ctx, kv, &info, &len)) != ATTN_OK)
      return failed(ctx, "attn_kv_cache_info_get", st);
    printf("  cache holds %2lld tokens -> next token \"%s\" (score %.3f)\n", (long long)len,
           tokens[best], (double)best_score);
    memcpy(next, x[best], sizeof next);
    if ((st = attn_mha_forward(ctx, layer, kv, tn, to, NULL)) != ATTN_OK)
      return failed(ctx, "attn_mha_forward", st);
  }
  return EXIT_OK;
}

static int cmd_demo(int argc, char **argv) {
  int rc = no_options(find_command("demo"), argc, argv);
  if (rc >= 0)
    return rc;

  attn_ctx *ctx = NULL;
  attn_status st = attn_ctx_create(&ctx, NULL);
  if (st != ATTN_OK) {
    fprintf(stderr, "attn demo: attn_ctx_create: %s\n", attn_status_string(st));
    return EXIT_INPUT;
  }
  static float x[L][D];
  printf("libattn %s demo: the sentence \"the cat sat on the mat\", %d tokens, D = %d\n\n",
         attn_version_string(), L, D);
  rc = demo_encodings(ctx, x);
  if (rc == EXIT_OK)
    rc = demo_softmax(ctx);
  if (rc == EXIT_OK)
    rc = demo_attention(ctx, x);
  if (rc == EXIT_OK)
    rc = demo_pipeline(ctx);
  if (rc == EXIT_OK)
    rc = demo_decoding(ctx);
  attn_ctx_destroy(ctx);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    main_help(stderr);
    return EXIT_USAGE;
  }
  if (is_help_flag(argv[1])) {
    main_help(stdout);
    return EXIT_OK;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("attn %s (libattn %s)\n", ATTN_VERSION_STRING, attn_version_string());
    return EXIT_OK;
  }
  const command *c = find_command(argv[1]);
  if (c)
    return c->run(argc - 1, argv + 1);
  for (const attn_subcommand *n = attn_npy_subcommands; n->name; n++)
    if (!strcmp(argv[1], n->name))
      return n->run(argc - 1, argv + 1);
  fprintf(stderr, "attn: unknown subcommand '%s' (see attn --help)\n", argv[1]);
  return EXIT_USAGE;
}
