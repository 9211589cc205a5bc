"""libattn from Python: attention on the CPU over numpy arrays.

    import numpy as np, attn
    q = np.random.rand(1, 8, 128, 64).astype(np.float32)
    out = attn.sdpa(q, q, q, causal=True)

The package loads libattn.so.0 through ctypes: the file named by the
ATTN_LIBRARY environment variable when it is set (and only that one), else
the dynamic loader's search (LD_LIBRARY_PATH, the ld.so cache, /usr/lib),
then <prefix>/lib for sys.prefix, /usr/local and ~/.local. Its major
version must match the binding's.

numpy arrays are passed without copying when they are float32 (bool/uint8
for boolean masks) with non-negative strides and a contiguous innermost
axis, so transposed, sliced and broadcast views work as they are. Other
inputs are converted to float32 / C order with a copy; arrays the library
writes into (out=, inplace=True) must already qualify, else ValueError.
Errors of the library raise AttnError(status, message).

attn.convert(a, dtype) converts between float32, float16 and bfloat16 with
the library's round-to-nearest-even kernels: float16 arrays are read in
place, bfloat16 comes as uint16 bit patterns (src_dtype="bfloat16") or as
torch tensors.
"""
from ._lib import ABI_MAJOR, AttnError, LibraryNotFound
from ._api import (LIBRARY_PATH, Context, DecoderLayer, KVCache, MultiheadAttention,
                   alibi_slopes, blas_info, convert, cpu_info, default_context,
                   get_num_threads, log_softmax, log_softmax_backward, pool, pool_attention,
                   pool_attention_backward, pool_backward, rope, rope_backward, rope_cache,
                   rope_cached, sdpa, sdpa_backward, sdpa_varlen, sdpa_varlen_backward,
                   set_num_threads, sinusoidal, sinusoidal_add, softmax, softmax_backward,
                   version, version_string)

__version__ = "0.2.6"

__all__ = [
    "ABI_MAJOR", "AttnError", "Context", "DecoderLayer", "KVCache", "LIBRARY_PATH",
    "LibraryNotFound", "MultiheadAttention", "alibi_slopes", "blas_info", "convert", "cpu_info",
    "default_context", "get_num_threads", "log_softmax",
    "pool", "pool_attention", "rope", "rope_cache", "rope_cached",
    "sdpa", "sdpa_varlen", "set_num_threads", "sinusoidal", "sinusoidal_add", "softmax",
    "version", "version_string", "softmax_backward", "log_softmax_backward",
    "rope_backward", "sdpa_backward", "sdpa_varlen_backward", "pool_backward",
    "pool_attention_backward",
]

# attn.torch (autograd functions) is imported on demand, only where torch is:
#     import attn.torch
