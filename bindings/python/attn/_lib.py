"""Loading libattn.so and describing its C interface to ctypes.

Everything here mirrors include/attn.h. The parameter structs are
ctypes.Structure copies of the C structs: ctypes zero-fills a new structure,
and a zero-filled struct with struct_size set means "all defaults" in
libattn, so only the fields a caller sets need touching.
"""
import ctypes
import ctypes.util
import numbers
import os
import sys

# The major version this binding was written for. libattn's SONAME follows
# the major (libattn.so.0), and a different major may change the structs.
ABI_MAJOR = 0
SONAME = "libattn.so.%d" % ABI_MAJOR

STATUS_NAMES = {
    0: "ATTN_OK",
    1: "ATTN_ERR_NULL_ARG",
    2: "ATTN_ERR_INVALID_ARG",
    3: "ATTN_ERR_SHAPE",
    4: "ATTN_ERR_OVERFLOW",
    5: "ATTN_ERR_NO_MEMORY",
    6: "ATTN_ERR_UNSUPPORTED",
    7: "ATTN_ERR_BAD_HANDLE",
    8: "ATTN_ERR_ALIASING",
    9: "ATTN_ERR_BUSY",
}

DTYPE_F32 = 0
DTYPE_U8 = 1
DTYPE_F16 = 2
DTYPE_BF16 = 3
MAX_DIMS = 4

PE_LAYOUTS = {
    "interleaved": 0,
    "concat": 1,
    "sin-cos": 1,
    "concat-shifted": 2,
    "sin-cos-shifted": 2,
    "cos-sin": 3,
}
ROPE_STYLES = {"half": 0, "half-split": 0, "neox": 0, "interleaved": 1, "gptj": 1}
ALIGNS = {"top-left": 0, "bottom-right": 1}
LOGITS_STAGES = {"scaled": 0, "softcapped": 1, "masked": 2}
POOL_MODES = {"sum": 0, "mean": 1, "max": 2, "weighted": 3}
ROPE_SCALINGS = {"none": 0, "default": 0, "linear": 1, "ntk": 2, "dynamic": 3,
                 "dynamic-ntk": 3, "yarn": 4, "llama3": 5, "longrope": 6}


class AttnError(Exception):
    """A libattn call failed.

    Attributes: ``status`` (the status name, e.g. "ATTN_ERR_SHAPE"), ``code``
    (its number) and ``message`` (the context's attn_ctx_last_error() text,
    which names the function, the argument, the value and the rule).
    """

    def __init__(self, status, message, code=None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.code = code

    def __str__(self):
        return "%s: %s" % (self.status, self.message)


class LibraryNotFound(ImportError):
    """libattn.so could not be loaded, or its major version does not match."""


_c_int64_p = ctypes.POINTER(ctypes.c_int64)
_c_float_p = ctypes.POINTER(ctypes.c_float)
_c_double_p = ctypes.POINTER(ctypes.c_double)

ALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


_INT_NAMES = {ctypes.c_int32: "int32", ctypes.c_int64: "int64", ctypes.c_size_t: "size_t"}


def int_range(ctype):
    """[lo, hi) of a ctypes integer type, None for other types."""
    if ctype not in _INT_NAMES:
        return None
    bits = 8 * ctypes.sizeof(ctype)
    return (0, 2 ** bits) if ctype is ctypes.c_size_t else (-2 ** (bits - 1), 2 ** (bits - 1))


def check_int(value, ctype, what):
    """value as an int for a ctypes integer `ctype`: ctypes keeps an integer
    modulo 2^bits, so a value out of range would silently be another
    (capacity 2**64 + 16 became 16, truncate(0, 2**64) emptied a sequence)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        # int(True) is 1: Context(True) made a 1-thread context.
        raise TypeError("%s = %r is a bool, not an integer" % (what, value))
    try:
        n = int(value)
    except (OverflowError, ValueError):  # inf, NaN, a non-numeric string
        raise ValueError("%s = %r is not an integer" % (what, value)) from None
    except TypeError:  # None, a list: int()'s message names neither call nor argument
        raise TypeError("%s = %r is not an integer (a %s)"
                        % (what, value, type(value).__name__)) from None
    if n != value:  # int() would cut 2.9 to 2: truncate(0, 2.9) kept 2 tokens
        raise ValueError("%s = %r is not an integer" % (what, value))
    lo, hi = int_range(ctype)
    if not lo <= n < hi:
        raise ValueError("%s = %d does not fit an %s" % (what, n, _INT_NAMES[ctype]))
    return n


_INT_FIELDS = {}  # struct class -> {integer field: (lo, hi, ctype)}


def _int_fields(cls):
    f = _INT_FIELDS.get(cls)
    if f is None:
        f = _INT_FIELDS[cls] = {name: int_range(t) + (t,) for name, t, *_ in cls._fields_
                                if int_range(t)}
    return f


class _SizedStruct(ctypes.Structure):
    """A size-tagged parameter struct: struct_size is set on creation;
    integer fields refuse values out of their type's range."""

    def __init__(self, **fields):
        super().__init__()
        self.struct_size = ctypes.sizeof(self)
        for name, value in fields.items():
            setattr(self, name, value)

    def __setattr__(self, name, value):
        f = _int_fields(type(self)).get(name)
        if f is not None and (type(value) is int or isinstance(value, numbers.Integral)):
            if not f[0] <= value < f[1]:
                check_int(value, f[2], name)  # raises
        super().__setattr__(name, value)


class CtxOptions(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_threads", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
        ("alloc", ALLOC_FN),
        ("free", FREE_FN),
        ("alloc_user", ctypes.c_void_p),
    ]


class SoftmaxParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("reserved_", ctypes.c_int32),
        ("mask", ctypes.c_void_p),
        ("bool_mask", ctypes.c_void_p),
        ("axis", ctypes.c_int32),
        ("reserved2_", ctypes.c_int32),
    ]


class SinusoidalParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("layout", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
        ("base", ctypes.c_double),
        ("offset", ctypes.c_double),
        ("positions", _c_double_p),
    ]


class RopeParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("style", ctypes.c_int32),
        ("rotary_dim", ctypes.c_int32),
        ("theta", ctypes.c_double),
        ("offset", ctypes.c_int64),
        ("positions", _c_int64_p),
    ]


class SdpaParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("align", ctypes.c_int32),
        ("window", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("mask", ctypes.c_void_p),
        ("bool_mask", ctypes.c_void_p),
        ("kv_lens", _c_int64_p),
        ("alibi_slopes", _c_float_p),
        ("sinks", _c_float_p),
        ("lse", ctypes.c_void_p),
        ("weights", ctypes.c_void_p),
        ("q_offsets", _c_int64_p),  # 0.2
        ("logits", ctypes.c_void_p),  # 0.2
        ("logits_stage", ctypes.c_int32),
        ("reserved2_", ctypes.c_int32),
    ]


class RopeCacheParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scaling", ctypes.c_int32),
        ("apply_attention_factor", ctypes.c_int32),
        ("theta", ctypes.c_double),
        ("factor", ctypes.c_double),
        ("original_max_position", ctypes.c_int64),
        ("seq_len", ctypes.c_int64),
        ("beta_fast", ctypes.c_double),
        ("beta_slow", ctypes.c_double),
        ("mscale", ctypes.c_double),
        ("mscale_all_dim", ctypes.c_double),
        ("attention_factor", ctypes.c_double),
        ("low_freq_factor", ctypes.c_double),
        ("high_freq_factor", ctypes.c_double),
        ("short_factors", _c_double_p),
        ("long_factors", _c_double_p),
        ("yarn_no_truncate", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
    ]


class RopeCachedParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("style", ctypes.c_int32),
        ("num_heads", ctypes.c_int32),
        ("position_ids", _c_int64_p),
    ]


class PoolParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("mode", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
        ("lengths", _c_int64_p),
        ("keep", ctypes.c_void_p),
        ("scores", ctypes.c_void_p),
    ]


class PoolAttentionParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("reserved_", ctypes.c_int32),
        ("lengths", _c_int64_p),
        ("keep", ctypes.c_void_p),
        ("weights", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
    ]


class SdpaBackwardParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("dmask", ctypes.c_void_p),
        ("dsinks", _c_float_p),
    ]


class KvCacheParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("layout", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("value_dim", ctypes.c_int64),
        ("capacity", ctypes.c_int64),
        ("block_size", ctypes.c_int64),
        ("num_blocks", ctypes.c_int64),
    ]


class KvCacheInfo(_SizedStruct):
    # attn_kv_cache_info is attn_kv_cache_params's fields, then free_blocks.
    _fields_ = KvCacheParams._fields_ + [("free_blocks", ctypes.c_int64)]


class KvAppendParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("rope", ctypes.POINTER(RopeParams)),
    ]


class MhaTorchParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("embed_dim", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("kdim", ctypes.c_int64),
        ("vdim", ctypes.c_int64),
        ("no_bias", ctypes.c_int32),
        ("batch_first", ctypes.c_int32),
        ("add_bias_kv", ctypes.c_int32),
        ("add_zero_attn", ctypes.c_int32),
    ]


class MhaTorchForwardParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("need_weights", ctypes.c_int32),
        ("per_head_weights", ctypes.c_int32),
        ("is_causal", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
    ]


class MhaDecoderParams(_SizedStruct):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("embed_dim", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("qkv_bias", ctypes.c_int32),
        ("out_bias", ctypes.c_int32),
        ("rope", ctypes.POINTER(RopeParams)),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("window", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
        ("window_left", ctypes.c_int64),
        ("rope_scaling", ctypes.POINTER(RopeCacheParams)),
    ]


# The decoder form's weights (attn_mha_weight), named as a transformers
# attention block's state_dict names them.
MHA_WEIGHTS = {"q_proj.weight": 0, "k_proj.weight": 1, "v_proj.weight": 2,
               "o_proj.weight": 3, "q_proj.bias": 4, "k_proj.bias": 5, "v_proj.bias": 6,
               "o_proj.bias": 7}


# attn_mha_weight values of the PyTorch form, by state_dict name.
MHA_TORCH_WEIGHTS = {
    "in_proj_weight": 8, "q_proj_weight": 0, "k_proj_weight": 1, "v_proj_weight": 2,
    "in_proj_bias": 9, "out_proj.weight": 3, "out_proj.bias": 7,
}


# name -> (restype, argtypes). Handles are opaque: c_void_p.
_P = ctypes.c_void_p
_PROTOTYPES = {
    "attn_version": (ctypes.c_int32, []),
    "attn_version_string": (ctypes.c_char_p, []),
    "attn_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "attn_ctx_options_init": (None, [ctypes.POINTER(CtxOptions)]),
    "attn_ctx_create": (ctypes.c_int, [ctypes.POINTER(_P), ctypes.POINTER(CtxOptions)]),
    "attn_ctx_destroy": (None, [_P]),
    "attn_ctx_last_error": (ctypes.c_char_p, [_P]),
    "attn_ctx_num_threads": (ctypes.c_int32, [_P]),
    "attn_tensor_wrap": (ctypes.c_int, [_P, ctypes.c_int32, ctypes.c_int32, _c_int64_p,
                                        _c_int64_p, _P, ctypes.c_size_t, ctypes.POINTER(_P)]),
    "attn_tensor_free": (ctypes.c_int, [_P, _P]),
    "attn_tensor_copy": (ctypes.c_int, [_P, _P, _P]),
    "attn_softmax_params_init": (None, [ctypes.POINTER(SoftmaxParams)]),
    "attn_softmax": (ctypes.c_int, [_P, _P, _P, ctypes.POINTER(SoftmaxParams)]),
    "attn_log_softmax": (ctypes.c_int, [_P, _P, _P, ctypes.POINTER(SoftmaxParams)]),
    "attn_sinusoidal_params_init": (None, [ctypes.POINTER(SinusoidalParams)]),
    "attn_sinusoidal": (ctypes.c_int, [_P, _P, ctypes.POINTER(SinusoidalParams)]),
    "attn_sinusoidal_add": (ctypes.c_int, [_P, _P, ctypes.POINTER(SinusoidalParams)]),
    "attn_rope_params_init": (None, [ctypes.POINTER(RopeParams)]),
    "attn_rope": (ctypes.c_int, [_P, _P, ctypes.POINTER(RopeParams)]),
    "attn_alibi_slopes": (ctypes.c_int, [_P, ctypes.c_int32, ctypes.c_double, _c_float_p]),
    "attn_sdpa_params_init": (None, [ctypes.POINTER(SdpaParams)]),
    "attn_sdpa": (ctypes.c_int, [_P, _P, _P, _P, _P, ctypes.POINTER(SdpaParams)]),
    "attn_sdpa_varlen": (ctypes.c_int, [_P, _P, _P, _P, _P, ctypes.c_int32, _c_int64_p,
                                        _c_int64_p, ctypes.POINTER(SdpaParams)]),
    "attn_rope_cache_fill": (ctypes.c_int, [_P, _P, _P, ctypes.POINTER(RopeCacheParams),
                                            _c_double_p]),
    "attn_rope_cached": (ctypes.c_int, [_P, _P, _P, _P, _P, ctypes.POINTER(RopeCachedParams)]),
    "attn_pool": (ctypes.c_int, [_P, _P, _P, ctypes.POINTER(PoolParams)]),
    "attn_pool_backward": (ctypes.c_int, [_P, _P, _P, _P, _P, ctypes.POINTER(PoolParams)]),
    "attn_pool_attention": (ctypes.c_int, [_P, _P, _P, _P, _P,
                                           ctypes.POINTER(PoolAttentionParams)]),
    "attn_pool_attention_backward": (ctypes.c_int, [_P] * 10 + [
        ctypes.POINTER(PoolAttentionParams)]),
    "attn_kv_cache_create": (ctypes.c_int, [_P, ctypes.POINTER(KvCacheParams),
                                            ctypes.POINTER(_P)]),
    "attn_kv_cache_free": (ctypes.c_int, [_P, _P]),
    "attn_kv_cache_info_get": (ctypes.c_int, [_P, _P, ctypes.POINTER(KvCacheInfo),
                                              _c_int64_p]),
    "attn_kv_append": (ctypes.c_int, [_P, _P, _P, _P, _c_int64_p,
                                      ctypes.POINTER(KvAppendParams)]),
    "attn_kv_truncate": (ctypes.c_int, [_P, _P, ctypes.c_int64, ctypes.c_int64]),
    "attn_kv_reset": (ctypes.c_int, [_P, _P, ctypes.c_int64]),
    "attn_kv_copy": (ctypes.c_int, [_P, _P, ctypes.c_int64, ctypes.c_int64]),
    "attn_kv_read": (ctypes.c_int, [_P, _P, ctypes.c_int64, ctypes.c_int64, _P, _P]),
    "attn_kv_attend": (ctypes.c_int, [_P, _P, _P, _P, _c_int64_p, ctypes.POINTER(SdpaParams)]),
    "attn_softmax_backward": (ctypes.c_int, [_P, _P, _P, _P, _P,
                                             ctypes.POINTER(SoftmaxParams)]),
    "attn_log_softmax_backward": (ctypes.c_int, [_P, _P, _P, _P, _P,
                                                 ctypes.POINTER(SoftmaxParams)]),
    "attn_rope_backward": (ctypes.c_int, [_P, _P, ctypes.POINTER(RopeParams)]),
    "attn_sdpa_backward_params_init": (None, [ctypes.POINTER(SdpaBackwardParams)]),
    "attn_sdpa_backward": (ctypes.c_int, [_P] + [_P] * 9 + [ctypes.POINTER(SdpaParams),
                                                           ctypes.POINTER(SdpaBackwardParams)]),
    "attn_sdpa_varlen_backward": (ctypes.c_int, [_P] + [_P] * 9 + [
        ctypes.c_int32, _c_int64_p, _c_int64_p, ctypes.POINTER(SdpaParams),
        ctypes.POINTER(SdpaBackwardParams)]),
    "attn_mha_create_torch": (ctypes.c_int, [_P, ctypes.POINTER(MhaTorchParams),
                                             ctypes.POINTER(_P)]),
    "attn_mha_free": (ctypes.c_int, [_P, _P]),
    "attn_mha_decoder_params_init": (None, [ctypes.POINTER(MhaDecoderParams)]),
    "attn_mha_create_decoder": (ctypes.c_int, [_P, ctypes.POINTER(MhaDecoderParams),
                                               ctypes.POINTER(_P)]),
    "attn_mha_forward": (ctypes.c_int, [_P, _P, _P, _P, _P, _c_int64_p]),
    "attn_mha_set_weight": (ctypes.c_int, [_P, _P, ctypes.c_int32, _P]),
    "attn_mha_get_weight": (ctypes.c_int, [_P, _P, ctypes.c_int32, _P]),
    "attn_mha_torch_forward": (ctypes.c_int, [_P, _P, _P, _P, _P, _P, _P,
                                              ctypes.POINTER(MhaTorchForwardParams), _P, _P]),
    "attn_cpu_info": (ctypes.c_char_p, []),
    "attn_blas_info": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t]),
}


def _candidates():
    """Paths to try, in order. ATTN_LIBRARY (a file path) comes first and,
    when set, is the only candidate: a mistake in it should not be hidden by
    a different library found elsewhere."""
    env = os.environ.get("ATTN_LIBRARY")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    found = [
        # dlopen's own search: LD_LIBRARY_PATH, the ld.so cache, /lib, /usr/lib.
        SONAME,
        # A copy shipped next to the package.
        os.path.join(here, SONAME),
    ]
    # Install prefixes whose lib directory the ld.so cache may not know yet
    # (no ldconfig after `cmake --install`).
    multiarch = getattr(sys.implementation, "_multiarch", None)
    for prefix in (sys.prefix, "/usr/local", os.path.expanduser("~/.local")):
        for libdir in ("lib", "lib64") + (("lib/" + multiarch,) if multiarch else ()):
            found.append(os.path.join(prefix, libdir, SONAME))
    name = ctypes.util.find_library("attn")
    if name:
        found.append(name)
    return found


def _bind(lib):
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            # An older library lacks the function; calling it reports that.
            continue
        fn.restype = restype
        fn.argtypes = argtypes


def load():
    """Load libattn and check its major version. Returns (CDLL, path)."""
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append("%s: %s" % (path, e))
            continue
        try:
            version = lib.attn_version
        except AttributeError:
            errors.append("%s: has no attn_version(), not libattn" % path)
            continue
        version.restype = ctypes.c_int32
        version.argtypes = []
        v = version()
        if v // 10000 != ABI_MAJOR:
            raise LibraryNotFound(
                "%s is libattn %d.%d.%d but this binding needs major version %d"
                % (path, v // 10000, v // 100 % 100, v % 100, ABI_MAJOR))
        _bind(lib)
        return lib, path
    how = ("ATTN_LIBRARY=%s" % os.environ["ATTN_LIBRARY"]) if os.environ.get(
        "ATTN_LIBRARY") else "the usual search"
    raise LibraryNotFound(
        "cannot load %s through %s; install libattn (cmake --install) or set "
        "ATTN_LIBRARY to the library's path. Tried:\n  %s"
        % (SONAME, how, "\n  ".join(errors)))
