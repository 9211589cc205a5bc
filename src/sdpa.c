/* Placeholder until scaled dot-product attention lands. */
#include "internal.h"
