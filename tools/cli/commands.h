/* Subcommands of the attn command defined outside main.c. */
#ifndef ATTN_TOOLS_CMDS_H
#define ATTN_TOOLS_CMDS_H

#include <stdio.h>

/* Exit codes of every subcommand. */
enum { ATTN_EXIT_OK = 0, ATTN_EXIT_USAGE = 1, ATTN_EXIT_INPUT = 2 };

typedef struct attn_subcommand {
  const char *name;
  const char *summary;
  /* argv[0] is the subcommand's name; returns an exit code. */
  int (*run)(int argc, char **argv);
} attn_subcommand;

/* The .npy subcommands (softmax, pe, rope, sdpa) and bench; ends with a
 * {NULL} entry. */
extern const attn_subcommand attn_npy_subcommands[];

/* The lines `attn --help` shows for them, and the exit codes. */
void attn_npy_usage(FILE *f);

#endif
