/* Placeholder until the positional encodings land. */
#include "internal.h"
