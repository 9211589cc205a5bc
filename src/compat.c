/* Symbols kept for programs linked against an earlier 0.x release.
 *
 * A parameter struct that grows gets a new version of its _init function.
 * A program linked against 0.1 calls attn_sdpa_params_init@ATTN_0 on a
 * variable of 0.1's size: that version fills only 0.1's struct (which ends
 * where the first appended field begins) and tags it with that size, so the
 * library reads only that prefix (struct_size). Filling today's struct
 * would write past the end of the caller's variable. Programs linked since
 * get the default version, attn_..._init@@ATTN_0.2 (attn.map), which fills
 * today's struct. Static builds have no symbol versions and need none: the
 * program and the library come from one header. */
#include "internal.h"

#include <stddef.h>
#include <string.h>

#ifdef ATTN_SYMBOL_VERSIONS

/* Default visibility so that the versioned aliases are exported; attn.map
 * keeps these names themselves local. */
#define COMPAT_EXPORT __attribute__((visibility("default")))

COMPAT_EXPORT void compat_softmax_params_init_0_1(attn_softmax_params *p);
COMPAT_EXPORT void compat_sdpa_params_init_0_1(attn_sdpa_params *p);

__asm__(".symver compat_softmax_params_init_0_1, attn_softmax_params_init@ATTN_0");
__asm__(".symver compat_sdpa_params_init_0_1, attn_sdpa_params_init@ATTN_0");

void compat_softmax_params_init_0_1(attn_softmax_params *p) {
  if (!p)
    return;
  memset(p, 0, offsetof(attn_softmax_params, axis));
  p->struct_size = offsetof(attn_softmax_params, axis);
  p->scale = 1.0f;
}

void compat_sdpa_params_init_0_1(attn_sdpa_params *p) {
  if (!p)
    return;
  memset(p, 0, offsetof(attn_sdpa_params, q_offsets));
  p->struct_size = offsetof(attn_sdpa_params, q_offsets);
}

#endif
