/* The attn command: library information and a demo of its main job. */
#include "attn.h"
#include "attn_cmds.h"

#include <stdio.h>
#include <string.h>

static int cmd_info(void) {
  attn_ctx *ctx = NULL;
  if (attn_ctx_create(&ctx, NULL) != ATTN_OK) {
    fprintf(stderr, "attn: cannot create a context\n");
    return 1;
  }
  printf("libattn %s (header %s)\n", attn_version_string(), ATTN_VERSION_STRING);
  printf("context threads: %d\n", (int)attn_ctx_num_threads(ctx));
  attn_ctx_destroy(ctx);
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: attn info | attn demo\n");
  attn_npy_usage(f);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 1;
  }
  if (!strcmp(argv[1], "info"))
    return cmd_info();
  for (const attn_subcommand *c = attn_npy_subcommands; c->name; c++)
    if (!strcmp(argv[1], c->name))
      return c->run(argc - 1, argv + 1);
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(stdout);
    return 0;
  }
  usage(stderr);
  return 1;
}
