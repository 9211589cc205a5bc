/* The CPU feature probe and the choice of row kernels: the library's only
 * global state, written once under pthread_once and read-only afterwards.
 *
 * A set is chosen only if the CPU has its instructions AND the OS saves the
 * registers they use: CPUID alone is not enough (a kernel or hypervisor can
 * leave the YMM/ZMM state disabled), so XCR0 is read with XGETBV as well.
 * ATTN_KERNELS=sse2|avx2|avx512|avx512bf16, read once here, forces a set for tests and
 * benchmarks; a set this CPU cannot run is refused (the best one is used,
 * and attn_cpu_info() says so). */
#include "internal.h"
#include "simd/kernels.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(ATTN_HAVE_X86_KERNELS)
#include <cpuid.h>
#endif

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static const attn_kernels *chosen;
static char info[256];

#if defined(ATTN_HAVE_X86_KERNELS)

typedef struct {
  bool sse2, avx2, fma, f16c, avx512f, avx512bf16; /* usable: CPU and OS */
} x86_features;

static uint64_t read_xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static x86_features probe_x86(void) {
  x86_features f = {false, false, false, false, false, false};
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d))
    return f;
  f.sse2 = (d >> 26) & 1;
  bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1,
       f16c = (c >> 29) & 1;
  uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  bool ymm_state = (xcr0 & 0x6) == 0x6;    /* XMM and YMM */
  bool zmm_state = (xcr0 & 0xe6) == 0xe6;  /* and opmask, ZMM0-15 high, ZMM16-31 */
  unsigned b7 = 0;
  if (__get_cpuid_count(7, 0, &a, &b7, &c, &d) == 0)
    b7 = 0;
  f.fma = avx && fma && ymm_state;
  f.f16c = avx && f16c && ymm_state;
  f.avx2 = avx && ((b7 >> 5) & 1) && ymm_state;
  f.avx512f = ((b7 >> 16) & 1) && zmm_state;
  unsigned a71 = 0; /* leaf 7 subleaf 1: EAX bit 5 is AVX512_BF16 */
  if (__get_cpuid_count(7, 1, &a71, &b, &c, &d) == 0)
    a71 = 0;
  f.avx512bf16 = f.avx512f && ((a71 >> 5) & 1);
  return f;
}

static void probe(void) {
  x86_features f = probe_x86();
  /* x86-64 always has SSE2; the baseline is also the fallback. */
  const attn_kernels *best = &attn__kernels_sse2;
  bool avx2_set = f.avx2 && f.fma && f.f16c; /* every AVX2 CPU has F16C */
  if (avx2_set)
    best = &attn__kernels_avx2;
  if (f.avx512f)
    best = &attn__kernels_avx512;
  if (f.avx512bf16)
    best = &attn__kernels_avx512bf16;
  chosen = best;

  const char *want = getenv("ATTN_KERNELS");
  char note[128] = "";
  if (want && *want) {
    const attn_kernels *forced = NULL;
    bool known = true, runs = false;
    if (!strcmp(want, "sse2")) {
      forced = &attn__kernels_sse2;
      runs = true;
    } else if (!strcmp(want, "avx2")) {
      forced = &attn__kernels_avx2;
      runs = avx2_set;
    } else if (!strcmp(want, "avx512")) {
      forced = &attn__kernels_avx512;
      runs = f.avx512f;
    } else if (!strcmp(want, "avx512bf16")) {
      forced = &attn__kernels_avx512bf16;
      runs = f.avx512bf16;
    } else {
      known = false;
    }
    if (runs)
      chosen = forced;
    else
      snprintf(note, sizeof note, " (ATTN_KERNELS=%.24s refused: %s)", want,
               known ? "this CPU lacks it" : "not sse2, avx2, avx512 or avx512bf16");
  }
  snprintf(info, sizeof info, "cpu:%s%s%s%s%s%s; kernels: %s%s", f.sse2 ? " sse2" : "",
           f.avx2 ? " avx2" : "", f.fma ? " fma" : "", f.f16c ? " f16c" : "",
           f.avx512f ? " avx512f" : "", f.avx512bf16 ? " avx512_bf16" : "", chosen->name, note);
}

#else /* not x86: portable loops */

static void probe(void) {
  chosen = &attn__kernels_scalar;
  const char *want = getenv("ATTN_KERNELS");
  snprintf(info, sizeof info, "cpu: no x86 features; kernels: scalar%s",
           want && *want ? " (ATTN_KERNELS ignored: no x86 kernels in this build)" : "");
}

#endif

const attn_kernels *attn__kernels(void) {
  pthread_once(&probe_once, probe);
  return chosen;
}

const char *attn_cpu_info(void) {
  pthread_once(&probe_once, probe);
  return info;
}
