/* A stand-in library that claims another major version: the binding must
 * refuse to load it. */
#include <stdint.h>

int32_t attn_version(void);
int32_t attn_version(void) { return 10000; }
