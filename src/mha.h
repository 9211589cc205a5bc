/* The attention layer's internal interface (mha.c). */
#ifndef ATTN_MHA_H
#define ATTN_MHA_H

#include "internal.h"

/* Free every layer of a dying context. */
void attn__mha_destroy_all(attn_ctx *ctx);

#endif
