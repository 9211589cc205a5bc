/* Placeholder until the softmax kernels land. */
#include "internal.h"
