"""Context, array passing and the ops.

Array rule (the one place it is implemented is _Call.input/_Call.output):

* Inputs are passed zero-copy when they are float32 (masks: bool or uint8),
  aligned, with non-negative strides that are whole elements and an
  innermost axis that is contiguous (or of length 1). Transposed and sliced
  views, and np.broadcast_to views (stride 0), qualify.
* Any other input is converted with a copy: real numbers (float16/64,
  integers) become float32, a bool/uint8 mask is copied as uint8, and a
  layout libattn cannot address (negative strides, a strided innermost
  axis, misalignment) becomes C-contiguous. Other dtypes (complex, object,
  strings; integer or float arrays where a boolean mask is expected is fine
  for `mask`, which is additive) raise TypeError.
* Outputs the caller passes (``out=``, ``inplace=True``) are never copied:
  they must be writable float32 arrays that qualify as above, else
  ValueError, because a result written into a copy would be lost.
"""
import collections
import collections.abc
import ctypes
import math
import threading

import numpy as np

from . import _lib
from ._lib import AttnError

# What MultiheadAttention.load_state_dict did not use, as torch's
# load_state_dict returns it.
IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_LIB, LIBRARY_PATH = _lib.load()


def _fn(name):
    try:
        return getattr(_LIB, name)
    except AttributeError:
        raise AttnError("ATTN_ERR_UNSUPPORTED",
                        "%s has no %s() (libattn %s is older than this binding)"
                        % (LIBRARY_PATH, name, version_string())) from None


def version():
    """The loaded library's version as major*10000 + minor*100 + patch."""
    return int(_LIB.attn_version())


def version_string():
    """The loaded library's version as "major.minor.patch"."""
    return _LIB.attn_version_string().decode()


def cpu_info():
    """CPU features found and the kernel set chosen (attn_cpu_info())."""
    return _fn("attn_cpu_info")().decode()


def blas_info():
    """A line describing the linked BLAS (attn_blas_info())."""
    buf = ctypes.create_string_buffer(512)
    _fn("attn_blas_info")(buf, len(buf))
    return buf.value.decode()


def _status_name(st):
    return _lib.STATUS_NAMES.get(st) or _LIB.attn_status_string(st).decode()


_ADDITIVE_KINDS = "fiu"


def _byte_extent(a):
    """Bytes from a's first element to one past its last."""
    return sum((d - 1) * s for d, s in zip(a.shape, a.strides)) + a.itemsize


def _element_strides(a):
    """a's strides in elements when libattn can address a as it is, else None."""
    if not a.flags.aligned or a.ndim == 0:
        return None
    if a.size == 0:
        return [0] * (a.ndim - 1) + [1]  # nothing is addressed
    out = []
    for d, s in zip(a.shape, a.strides):
        if d == 1:
            out.append(0)  # never stepped; numpy may give any value
            continue
        if s < 0 or s % a.itemsize:
            return None
        out.append(s // a.itemsize)
    if a.shape[-1] > 1 and out[-1] != 1:
        return None
    return out


class _Call:
    """One op call: wraps arrays as tensors and frees the handles after.

    Holds a reference to every array it wrapped (converted copies included)
    so none is collected while libattn reads or writes it."""

    def __init__(self, ctx, fn):
        self.ctx = ctx
        self.fn = fn
        self.handles = []
        self.keep = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        free = _LIB.attn_tensor_free
        for h in self.handles:
            free(self.ctx._handle, h)
        self.handles.clear()
        self.keep.clear()
        return False

    def _wrap(self, a, dtype, strides, name):
        nd = a.ndim
        dims = (ctypes.c_int64 * max(nd, 1))(*a.shape)
        st = (ctypes.c_int64 * max(nd, 1))(*strides) if strides is not None else None
        h = ctypes.c_void_p()
        nbytes = _byte_extent(a) if a.size else 0
        code = _LIB.attn_tensor_wrap(self.ctx._handle, dtype, nd, dims, st,
                                     ctypes.c_void_p(a.ctypes.data), nbytes, ctypes.byref(h))
        if code:
            raise AttnError(_status_name(code), "%s: argument %s: %s"
                            % (self.fn, name, self.ctx.last_error()), code)
        self.handles.append(h)
        self.keep.append(a)
        return h

    def input(self, a, name, boolean=False, dtype=None, additive_mask=False):
        """Wrap an input array (copied only when the rule above says so).
        dtype (from _data_array) keeps a float16 / bfloat16 array as it is."""
        a = _as_numpy(a, self.fn, name)
        if dtype in (_lib.DTYPE_F16, _lib.DTYPE_BF16):
            pass
        elif boolean:
            if a.dtype == np.bool_:
                a = a.view(np.uint8)
            elif a.dtype != np.uint8:
                raise TypeError("%s: %s must be a bool or uint8 array (a boolean mask), "
                                "not %s" % (self.fn, name, a.dtype))
            dtype = _lib.DTYPE_U8
        else:
            if a.dtype.kind not in _ADDITIVE_KINDS:
                raise TypeError("%s: %s has dtype %s but must hold real numbers (it is "
                                "converted to float32)" % (self.fn, name, a.dtype))
            if a.dtype != np.float32:
                a = _to_float32(a, self.fn, name, additive_mask)
            dtype = _lib.DTYPE_F32
        strides = _element_strides(a) if a.ndim else None
        if strides is None and a.ndim:
            # A fresh copy: ascontiguousarray would keep an unaligned C-order array.
            a = np.array(a, order="C")
            strides = _element_strides(a)
        return self._wrap(a, dtype, strides, name)

    def output(self, a, name, half=False, bf16=False):
        """Wrap an output array in place; refuse one libattn cannot write.
        half: a float16 array is written as such (data outputs); bf16: a
        uint16 array is bfloat16 bits (a torch bfloat16 tensor's view)."""
        if not isinstance(a, np.ndarray):
            raise TypeError("%s: %s must be a numpy array, not %s"
                            % (self.fn, name, type(a).__name__))
        dtype = _lib.DTYPE_F32
        if half and a.dtype == np.float16:
            dtype = _lib.DTYPE_F16
        elif bf16 and a.dtype == np.uint16:
            dtype = _lib.DTYPE_BF16
        elif a.dtype != np.float32:
            raise ValueError("%s: %s has dtype %s but an output must be float32%s (it is "
                             "written in place, so it cannot be converted)"
                             % (self.fn, name, a.dtype, " or float16" if half else ""))
        if not a.flags.writeable:
            raise ValueError("%s: %s is read-only" % (self.fn, name))
        strides = _element_strides(a)
        if strides is None and a.ndim:
            raise ValueError(
                "%s: %s has strides %s (bytes) but an output needs non-negative strides, "
                "aligned data and a contiguous innermost axis (it cannot be copied: the "
                "result would not reach it)" % (self.fn, name, a.strides))
        return self._wrap(a, dtype, strides, name)

    def mask(self, m, name):
        """Wrap a mask: bool/uint8 -> boolean mask (nonzero = keep), numbers ->
        additive. Returns (additive_handle, bool_handle), one of them None."""
        m = _as_numpy(m, self.fn, name)
        if m.dtype == np.bool_ or m.dtype == np.uint8:
            return None, self.input(m, name, boolean=True)
        if m.dtype.kind in "iu":
            # A Hugging Face attention_mask is int64 1/0: adding it to the
            # logits would mask nothing.
            raise TypeError(
                "%s: %s has dtype %s; a mask is bool or uint8 (True/nonzero = keep) or "
                "floating (added to the logits). For a 1/0 keep-mask pass mask != 0 (or "
                "mask.astype(bool))" % (self.fn, name, m.dtype))
        return self.input(m, name, additive_mask=True), None

    def check(self, code):
        if code:
            raise AttnError(_status_name(code), self.ctx.last_error(), code)


def _to_float32(a, fn, name, additive_mask):
    """float32 copy of a numeric array. A value float32 cannot hold (past
    3.4e38) is refused rather than turned into inf, which would make NaN rows;
    an additive mask may overflow to -inf (that is masking)."""
    with np.errstate(over="ignore", invalid="ignore"):
        b = a.astype(np.float32)
    if a.dtype.kind == "f" and a.size:
        over = np.isinf(b) & np.isfinite(a)
        if additive_mask:
            over &= b > 0
        if over.any():
            raise ValueError("%s: %s (%s) holds %r, past float32's range (libattn computes "
                             "in float32)" % (fn, name, a.dtype, a[over].flat[0]))
    return b


def _int32(v, fn, name):
    """v for an int32 argument or field: ctypes would wrap a larger value
    silently (rotary_dim 2**32 + 2 became 2)."""
    return _lib.check_int(v, ctypes.c_int32, "%s: %s" % (fn, name))


def _int64(v, fn, name):
    """v for an int64 argument (struct fields check themselves: _lib)."""
    return _lib.check_int(v, ctypes.c_int64, "%s: %s" % (fn, name))


def _int64_array(a, name, fn, shape=None):
    a = _as_numpy(a, fn, name)
    if a.dtype.kind == "f":
        # Truncating 2.5 to 2 would silently change the answer.
        if not np.all(np.isfinite(a)) or np.any(a != np.trunc(a)):
            raise ValueError("%s: %s must hold integers; got %s" % (fn, name, a))
    elif a.dtype.kind not in "iu":
        raise ValueError("%s: %s must hold integers, not %s" % (fn, name, a.dtype))
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError("%s: %s has a value past int64" % (fn, name))
    if a.dtype.kind == "f" and a.size and np.any(np.abs(a) >= 2.0 ** 63):
        raise ValueError("%s: %s has a value past int64" % (fn, name))
    a = np.ascontiguousarray(a, dtype=np.int64)
    if shape is not None and a.shape != tuple(shape):
        raise ValueError("%s: %s has shape %s but must have shape %s"
                         % (fn, name, a.shape, tuple(shape)))
    return a


def _real_array(a, name, fn, dtype):
    """A contiguous float32 / float64 copy of a small array of real numbers
    (slopes, sinks, positions, factors): a cast alone would keep the real
    part of complex numbers, take bools as 0/1, turn float64 past float32's
    range into inf and raise numpy's unnamed errors for strings."""
    a = _as_numpy(a, fn, name)
    if a.dtype.kind not in _ADDITIVE_KINDS:
        raise TypeError("%s: %s has dtype %s but must hold real numbers" % (fn, name, a.dtype))
    if dtype == np.float32:
        a = _to_float32(a, fn, name, False)
    return np.ascontiguousarray(a, dtype=dtype)


def _float32_vector(a, name, fn, n):
    a = _real_array(a, name, fn, np.float32)
    if a.shape != (n,):
        raise ValueError("%s: %s has shape %s but must have shape (%d,)"
                         % (fn, name, a.shape, n))
    return a


_DTYPE_NAMES = {"float32": "float32", "f32": "float32", "float16": "float16", "f16": "float16",
                "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _dtype_name(dtype, fn):
    """"float32" / "float16" / "bfloat16" from a name, a NumPy dtype or a torch dtype."""
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPE_NAMES:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            pass
    if key not in _DTYPE_NAMES:
        raise ValueError("%s: dtype %r is not float32, float16 or bfloat16" % (fn, dtype))
    return _DTYPE_NAMES[key]


def _half_kind(a, src_dtype, fn):
    """The libattn type of a numpy array's elements: float32 and float16 from
    the array's dtype; bfloat16 only as uint16 with src_dtype="bfloat16"."""
    if src_dtype is not None:
        want = _dtype_name(src_dtype, fn)
        ok = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[want]
        if a.dtype != ok:
            raise TypeError("%s: src_dtype=%s needs a %s array, not %s"
                            % (fn, want, np.dtype(ok).name, a.dtype))
        return want
    if a.dtype == np.float32:
        return "float32"
    if a.dtype == np.float16:
        return "float16"
    if a.dtype == np.uint16:
        raise TypeError("%s: a uint16 array is ambiguous: pass src_dtype='bfloat16' "
                        "(or 'float16') to say what its bits are" % fn)
    raise TypeError("%s: a has dtype %s but must be float32 or float16 (bfloat16: a "
                    "uint16 array with src_dtype='bfloat16', or a torch tensor)"
                    % (fn, a.dtype))


def _data_array(a, fn, name):
    """A data input as (numpy array, libattn dtype): float16 arrays and torch
    float16 / bfloat16 tensors pass as they are (a bfloat16 tensor as its
    uint16 bits), anything else as float32 (converted later by input())."""
    if _is_torch(a):
        a, kind = _torch_view(a, fn)
        return a, {"float32": _lib.DTYPE_F32, "float16": _lib.DTYPE_F16,
                   "bfloat16": _lib.DTYPE_BF16}[kind]
    a = _asarray(a, fn, name)
    if a.dtype.kind == "f" and a.itemsize == 2 and a.dtype != np.float16:
        a = a.astype(np.float16)  # byte-swapped float16: a native copy, still half
    return a, _lib.DTYPE_F16 if a.dtype == np.float16 else _lib.DTYPE_F32


_DTYPE_CODES = {"float32": _lib.DTYPE_F32, "float16": _lib.DTYPE_F16,
                "bfloat16": _lib.DTYPE_BF16}


def _torch_src_dtype(kind, src_dtype, fn):
    """A torch tensor says its own type: a src_dtype that disagrees with it
    is refused, not ignored."""
    if src_dtype is not None and _dtype_name(src_dtype, fn) != kind:
        raise TypeError("%s: src_dtype=%s but the torch tensor is %s"
                        % (fn, _dtype_name(src_dtype, fn), kind))


def _kv_rows(a, src_dtype, fn, name):
    """Rows for KVCache.append as (array, libattn dtype): src_dtype names a
    numpy array's element type (bfloat16: uint16 bits), else as _data_array."""
    if _is_torch(a):
        a, dt = _data_array(a, fn, name)
        _torch_src_dtype({v: k for k, v in _DTYPE_CODES.items()}[dt], src_dtype, fn)
        return a, dt
    if src_dtype is None:
        return _data_array(a, fn, name)
    a = _asarray(a, fn, name)
    return a, _DTYPE_CODES[_half_kind(a, src_dtype, fn)]


def _result_dtype(dt):
    """The NumPy type of a result computed from a `dt` input: float16 for
    float16, else float32 (NumPy has no bfloat16)."""
    return np.float16 if dt == _lib.DTYPE_F16 else np.float32


def _check_no_grad(t, fn):
    """Writing a torch tensor in place goes around autograd (no version
    bump): refuse it for a tensor that requires grad, as torch refuses
    in-place ops on leaves, rather than give silently wrong gradients."""
    if t.requires_grad:
        raise ValueError("%s: inplace=True on a torch tensor that requires grad would bypass "
                         "autograd (use attn.torch, or pass x.detach() to write it anyway)"
                         % fn)


def _update_target(x, inplace, fn):
    """(array, is_bf16) for an op that updates x in place (rope,
    sinusoidal_add). inplace: x itself, a numpy array or a CPU torch tensor
    (float32, float16 or bfloat16, through a zero-copy view). Otherwise a new
    C-order array with x's values, typed as the other ops type their results:
    float16 stays float16 (arrays and torch tensors), the rest float32 (a
    torch bfloat16 tensor widened exactly; values past float32's range and
    non-numbers refused as the inputs of the other ops)."""
    if inplace:
        if _is_torch(x):
            _check_no_grad(x, fn)
            a, kind = _torch_view(x, fn)
            return a, kind == "bfloat16"
        if not isinstance(x, np.ndarray):
            raise TypeError("%s: inplace needs x to be a numpy array or a torch tensor, not %s"
                            % (fn, type(x).__name__))
        return x, False
    a, dt = _data_array(x, fn, "x")
    if dt == _lib.DTYPE_BF16:  # bfloat16 bits: float32 is the same bits shifted up
        return (a.astype(np.uint32, order="C") << 16).view(np.float32), False
    if dt == _lib.DTYPE_F16:
        return np.array(a, order="C"), False
    if a.dtype.kind not in _ADDITIVE_KINDS:
        raise TypeError("%s: x has dtype %s but must hold real numbers (it is converted to "
                        "float32)" % (fn, a.dtype))
    b = _to_float32(a, fn, "x", False)  # a new array already
    return (b if b.flags.c_contiguous else np.array(b, order="C")), False


def _asarray(a, fn, name):
    """np.asarray(a); numpy's error for what it cannot convert (a ragged
    list: "setting an array element with a sequence") names nothing."""
    try:
        return np.asarray(a)
    except ValueError as e:
        raise ValueError("%s: %s cannot be made an array: %s" % (fn, name, e)) from None


def _as_numpy(a, fn, name):
    """np.asarray(a), a CPU torch tensor read through a detached view:
    np.asarray raised torch's RuntimeError for one that requires grad (an
    nn.Parameter of sinks) and TypeError "unsupported ScalarType BFloat16",
    naming nothing; bfloat16 is widened exactly to float32."""
    if not _is_torch(a):
        return _asarray(a, fn, name)
    if a.device.type != "cpu":
        raise ValueError("%s: the torch tensor is on %s; libattn reads CPU memory" % (fn, a.device))
    a = a.detach()
    if str(a.dtype) == "torch.bfloat16":
        import torch
        return (a.view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16).view(
            np.float32)
    return a.numpy()


def _is_torch(a):
    t = type(a)
    return t.__module__.split(".")[0] == "torch" and t.__name__ in ("Tensor", "Parameter")


def _torch_view(t, fn):
    """A zero-copy numpy view of a CPU torch tensor and its element type."""
    import torch
    if t.device.type != "cpu":
        raise ValueError("%s: the torch tensor is on %s; libattn reads CPU memory" % (fn, t.device))
    t = t.detach()
    kinds = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    if t.dtype not in kinds:
        raise TypeError("%s: torch dtype %s is not float32, float16 or bfloat16" % (fn, t.dtype))
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    return t.numpy(), kinds[t.dtype]


def _set_axis(p, axis, ndim, fn):
    """NumPy's axis into the params' axis, which libattn counts from the end
    (0 and -1 = the last)."""
    nd = max(ndim, 1)
    a = _int64(axis, fn, "axis")
    if not -nd <= a < nd:
        raise ValueError("%s: axis = %d is out of range for %d dims" % (fn, a, ndim))
    neg = a - nd if a >= 0 else a
    if neg != -1:  # the last axis needs no field (older libraries lack it)
        p.axis = neg


def _real(v, fn, name):
    """v as a float for a real-number argument: float() would take "2" and
    True, keep the real part of a complex, and its errors name neither the
    call nor the argument."""
    if (isinstance(v, (str, bytes, bool, np.bool_, complex, np.complexfloating))
            or (isinstance(v, np.ndarray) and v.dtype.kind in "bc")
            or (_is_torch(v) and (v.is_complex() or str(v.dtype) == "torch.bool"))):
        raise TypeError("%s: %s = %r must be a real number, not a %s"
                        % (fn, name, v, type(v).__name__))
    if _is_torch(v) and v.numel() != 1:
        # Checked here: torch's own refusal is a C++ exception, which a
        # sanitizer runtime preloaded into Python cannot unwind.
        raise TypeError("%s: %s = %r must be a real number, not a torch tensor of %d elements"
                        % (fn, name, v, v.numel()))
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):  # torch raises RuntimeError too
        raise TypeError("%s: %s = %r must be a real number, not a %s"
                        % (fn, name, v, type(v).__name__)) from None


def _not_default(v, fn, name, real=True):
    """An argument whose None is the library's default: libattn reads 0 as
    "the default", so an explicit 0 (theta=0, base=0) would silently give
    the default instead of being refused."""
    v = _real(v, fn, name) if real else _int64(v, fn, name)
    if v == 0:
        raise ValueError("%s: %s = 0 is not allowed (libattn reads 0 as the default; pass None "
                         "for that)" % (fn, name))
    return v


def _float32_arg(v, fn, name):
    """_real for a float field of a struct: a finite value past float32's
    range would arrive as inf."""
    v = _real(v, fn, name)
    if math.isfinite(v) and abs(v) > float(np.finfo(np.float32).max):
        raise ValueError("%s: %s = %r is past float32's range" % (fn, name, v))
    return v


def _rope_params(rope, fn):
    """attn_rope_params from a rope dict (KVCache.append, DecoderLayer): a
    string or a misspelt key ("Theta") is refused, not ignored in favour of
    the defaults; an absent key is the default, an explicit 0 refused as
    rope()'s theta and rotary_dim are."""
    if not isinstance(rope, dict):
        raise TypeError("%s: rope must be None or a dict, not %s" % (fn, type(rope).__name__))
    unknown = sorted(set(rope) - {"style", "rotary_dim", "theta"}, key=str)
    if unknown:
        raise TypeError("%s: rope has no key %r (it takes style, rotary_dim, theta)"
                        % (fn, unknown[0]))
    rotary_dim = rope.get("rotary_dim")
    theta = rope.get("theta")
    return _lib.RopeParams(
        style=_choice(_lib.ROPE_STYLES, rope.get("style", "half-split"), fn, "style"),
        rotary_dim=0 if rotary_dim is None else _int32(
            _not_default(rotary_dim, fn, "rope rotary_dim", real=False), fn, "rope rotary_dim"),
        theta=0.0 if theta is None else _not_default(theta, fn, "rope theta"))


def _scale(scale, fn, name="scale"):
    if scale is None:
        return 0.0
    scale = _float32_arg(scale, fn, name)
    if scale == 0.0:
        # 0 selects the default in the C structs, so it cannot mean zero here.
        raise ValueError("%s: %s = 0 is not allowed (pass None for the default)" % (fn, name))
    if np.float32(scale) == 0.0:
        # The struct holds a float: 1e-50 would arrive as 0, the default.
        raise ValueError("%s: %s = %r rounds to 0 in float32 (0 means the default)"
                         % (fn, name, scale))
    return scale


def _rope_cache_params(fn, keep, half, *, scaling="none", theta=None, factor=None,
                       original_max_position=None, seq_len=None, beta_fast=None,
                       beta_slow=None, mscale=None, mscale_all_dim=None, attention_factor=None,
                       low_freq_factor=None, high_freq_factor=None, short_factors=None,
                       long_factors=None, truncate=True, apply_attention_factor=False,
                       **unknown):
    """attn_rope_cache_params from rope_cache()'s keyword arguments (None =
    the library's default); the factor arrays (half each) go to `keep`.
    unknown: keys of DecoderLayer's rope_scaling dict that are none of
    these (Python's own TypeError named this helper, not the argument)."""
    if unknown:
        raise TypeError("%s: rope_scaling has no key %r (it takes rope_cache()'s keyword "
                        "arguments)" % (fn, sorted(unknown)[0]))
    p = _lib.RopeCacheParams(scaling=_choice(_lib.ROPE_SCALINGS, scaling, fn, "scaling"),
                             apply_attention_factor=1 if apply_attention_factor else 0,
                             yarn_no_truncate=0 if truncate else 1)
    for name, value in (("theta", theta), ("factor", factor), ("beta_fast", beta_fast),
                        ("beta_slow", beta_slow), ("mscale", mscale),
                        ("mscale_all_dim", mscale_all_dim),
                        ("attention_factor", attention_factor),
                        ("low_freq_factor", low_freq_factor),
                        ("high_freq_factor", high_freq_factor)):
        if value is not None:
            setattr(p, name, _not_default(value, fn, name))
    if original_max_position is not None:
        p.original_max_position = _int64(original_max_position, fn, "original_max_position")
    if seq_len is not None:
        p.seq_len = _not_default(seq_len, fn, "seq_len", real=False)
    for name, value in (("short_factors", short_factors), ("long_factors", long_factors)):
        if value is not None:
            arr = _real_array(value, name, fn, np.float64)
            if arr.shape != (half,):
                raise ValueError("%s: %s has shape %s but must have shape (%d,)"
                                 % (fn, name, arr.shape, half))
            keep.append(arr)
            setattr(p, name, arr.ctypes.data_as(_lib._c_double_p))
    return p


def _choice(table, value, fn, name):
    if isinstance(value, str):
        key = value.lower().replace("_", "-")
        if key in table:
            return table[key]
    raise ValueError("%s: %s = %r but must be one of %s"
                     % (fn, name, value, ", ".join(sorted(set(table)))))


_LAYOUTS = ("bhld", "blhd")


def _layout(layout, fn):
    key = str(layout).lower()
    if key not in _LAYOUTS:
        raise ValueError("%s: layout = %r but must be 'bhld' or 'blhd'" % (fn, layout))
    return key


def _to_bhld(a, layout, batched):
    """A [B,H,L,D] view of a (zero-copy): blhd views are transposed, 3-D
    arrays get a batch axis of 1."""
    if not batched:
        a = a[None]
    if layout == "blhd":
        a = a.transpose(0, 2, 1, 3)
    return a


class _ClosedWhenCollected:
    """close() when garbage-collected (errors at interpreter shutdown, when
    the library may be gone, are ignored)."""

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Context(_ClosedWhenCollected):
    """A libattn context: thread count, scratch memory, last error.

    One context is used by one thread at a time (libattn's rule); using it
    from two threads at once raises RuntimeError instead of racing. The
    module-level functions use a per-thread default context.

    ``num_threads``: threads an op may use; 0 or None = the CPUs available
    to the process, 1 = no worker threads.
    """

    def __init__(self, num_threads=None):
        n = 0 if num_threads is None else _int32(num_threads, "Context", "num_threads")
        opts = _lib.CtxOptions(num_threads=n)
        h = ctypes.c_void_p()
        code = _LIB.attn_ctx_create(ctypes.byref(h), ctypes.byref(opts))
        if code:
            # No context exists to hold a message.
            name = _status_name(code)
            why = {"ATTN_ERR_INVALID_ARG": "num_threads = %d refused (0..1024)" % n,
                   "ATTN_ERR_NO_MEMORY": "out of memory, or a worker thread could not be "
                   "started (the system's limit on threads or on memory for their stacks)"}
            raise AttnError(name, "attn_ctx_create: " + why.get(name, "failed"), code)
        self._handle = h
        self._busy = threading.Lock()
        # (free function name, handle) of objects collected while a call ran
        # on this context: freed when that call ends (_Guarded).
        self._deferred = []

    def close(self):
        """Destroy the context (joins its worker threads). Idempotent. An op
        running on it in another thread finishes first (close waits for it)."""
        busy = getattr(self, "_busy", None)
        if busy is not None:
            busy.acquire()
        try:
            h, self._handle = getattr(self, "_handle", None), None
            if h and _LIB is not None:
                _LIB.attn_ctx_destroy(h)
        finally:
            if busy is not None:
                busy.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def num_threads(self):
        """The thread count an op on this context may use."""
        return int(_LIB.attn_ctx_num_threads(self._live("Context.num_threads")))

    def last_error(self):
        """The message of the last failed call on this context."""
        return _LIB.attn_ctx_last_error(self._handle).decode(errors="replace")

    def _live(self, fn):
        if not self._handle:
            raise ValueError("%s: the attn.Context is closed" % fn)
        return self._handle

    def _call(self, fn):
        self._live(fn)
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("%s: this attn.Context is in use by another thread; "
                               "use one context per thread" % fn)
        if not self._handle:  # closed meanwhile by another thread
            self._busy.release()
            self._live(fn)
        return _Guarded(self, fn)

    # ---- dtype conversion ----

    def convert(self, a, dtype, *, src_dtype=None):
        """Convert an array between float32, float16 and bfloat16 with the
        library's kernels (attn_tensor_copy): widening is exact, narrowing
        rounds to nearest even once, beyond-range values become +-inf, NaN
        stays NaN.

        a: a numpy array of float32 or float16 (read in place, no upcast), or
        of uint16 holding bfloat16 bit patterns with src_dtype="bfloat16"
        (NumPy has no bfloat16), or a torch tensor (float32, float16 or
        bfloat16; CPU), read through a zero-copy view.
        dtype: "float32", "float16" or "bfloat16" (NumPy dtypes work for the
        first two). Returns a new array: float32 / float16, and for bfloat16
        a uint16 array of bit patterns; a torch tensor when a was one."""
        fn = "convert"
        torch_in = _is_torch(a)
        if torch_in:
            a, src = _torch_view(a, fn)
            _torch_src_dtype(src, src_dtype, fn)
        else:
            a = _asarray(a, fn, "a")
            if not a.dtype.isnative:
                # ">f4" is float32 too: refusing it as "not float32" misled; a
                # native copy (the values, no rounding) is read instead.
                a = a.astype(a.dtype.newbyteorder("="))
            src = _half_kind(a, src_dtype, fn)
        dst = _dtype_name(dtype, fn)
        codes = {"float32": _lib.DTYPE_F32, "float16": _lib.DTYPE_F16,
                 "bfloat16": _lib.DTYPE_BF16}
        np_of = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
        a_scalar = a.ndim == 0
        if a_scalar:
            a = a.reshape(1)
        out = np.empty(a.shape, np_of[dst])
        if a.size:
            with self._call("attn_tensor_copy") as c:
                strides = _element_strides(a)
                if strides is None:
                    a = np.array(a, order="C")
                    strides = _element_strides(a)
                hs = c._wrap(a, codes[src], strides, "a")
                ho = c._wrap(out, codes[dst], _element_strides(out), "out")
                c.check(_fn("attn_tensor_copy")(self._handle, hs, ho))
        if a_scalar:
            out = out.reshape(())
        if torch_in:
            import torch
            t = torch.from_numpy(out.view(np.int16) if dst == "bfloat16" else out)
            return t.view(torch.bfloat16) if dst == "bfloat16" else t
        return out

    # ---- softmax family ----

    def softmax(self, x, *, scale=None, mask=None, bool_mask=None, out=None, axis=-1):
        """Softmax over an axis of x (1-4 dims; axis as NumPy's, default the
        last; other axes are read through strides, without a copy).

        scale multiplies x first (1/temperature; None = 1). mask: additive
        (numbers, -inf removes an entry) or boolean (bool/uint8, True =
        keep), broadcast to x's shape by NumPy rules; bool_mask adds a
        boolean mask next to an additive one. out: a float32 array of x's
        shape to write into (may be x itself). Returns the result."""
        return self._softmax("attn_softmax", x, scale, mask, bool_mask, out, axis)

    def log_softmax(self, x, *, scale=None, mask=None, bool_mask=None, out=None, axis=-1):
        """Log-softmax over an axis (default the last); arguments as
        softmax(). Masked entries are -inf."""
        return self._softmax("attn_log_softmax", x, scale, mask, bool_mask, out, axis)

    def _softmax(self, name, x, scale, mask, bool_mask, out, axis=-1):
        fn = name[5:]
        p = _lib.SoftmaxParams(scale=_scale(scale, fn))
        x, xdt = _data_array(x, fn, "x")
        _set_axis(p, axis, x.ndim, fn)
        with self._call(fn) as c:
            hx = c.input(x, "x", dtype=xdt)
            if out is None:
                out = np.empty(x.shape, _result_dtype(xdt))
            hy = c.output(out, "out", half=True)
            if mask is not None:
                add, boolean = c.mask(mask, "mask")
                p.mask, p.bool_mask = add, boolean
            if bool_mask is not None:
                if p.bool_mask:
                    raise ValueError("%s: mask is boolean and bool_mask is set too" % fn)
                p.bool_mask = c.input(bool_mask, "bool_mask", boolean=True)
            c.check(_fn(name)(self._handle, hx, hy, ctypes.byref(p)))
        return out

    def softmax_backward(self, y, dy, *, scale=None, out=None, return_dmask=False, axis=-1):
        """Gradient of softmax(): from its output y and the gradient dy of
        the loss w.r.t. y, the gradient w.r.t. x (dx = scale * y * (dy -
        sum(y * dy))). Entries with y == 0 (masked) get 0 whatever dy holds.
        scale, axis: the forward's. out: float32 array of y's shape (may be dy).
        return_dmask=True also returns the gradient of the logits (that of
        an additive mask, before summing its broadcast axes): (dx, dmask)."""
        return self._softmax_backward("attn_softmax_backward", y, dy, scale, out,
                                      return_dmask, axis)

    def log_softmax_backward(self, y, dy, *, scale=None, out=None, return_dmask=False, axis=-1):
        """Gradient of log_softmax() (dx = scale * (dy - exp(y) * sum(dy)),
        masked entries, y == -inf, get 0 and their dy is ignored);
        arguments as softmax_backward()."""
        return self._softmax_backward("attn_log_softmax_backward", y, dy, scale, out,
                                      return_dmask, axis)

    def _softmax_backward(self, name, y, dy, scale, out, return_dmask, axis):
        fn = name[5:]
        p = _lib.SoftmaxParams(scale=_scale(scale, fn))
        y = _as_numpy(y, fn, "y")
        _set_axis(p, axis, y.ndim, fn)
        with self._call(fn) as c:
            hy, hg = c.input(y, "y"), c.input(dy, "dy")
            if out is None:
                out = np.empty(y.shape, np.float32)
            hx = c.output(out, "out")
            dmask = np.empty(y.shape, np.float32) if return_dmask else None
            hm = c.output(dmask, "dmask") if return_dmask else None
            c.check(_fn(name)(self._handle, hy, hg, hx, hm, ctypes.byref(p)))
        return (out, dmask) if return_dmask else out

    # ---- positional encodings ----

    def _pe_params(self, fn, layout, base, offset, positions, length, c):
        p = _lib.SinusoidalParams(layout=_choice(_lib.PE_LAYOUTS, layout, fn, "layout"),
                                  base=0.0 if base is None else _not_default(base, fn, "base"),
                                  offset=_real(offset, fn, "offset"))
        if positions is not None:
            if p.offset != 0.0:  # libattn would ignore it: positions replace offset + l
                raise ValueError("%s: offset = %r and positions are both set; positions "
                                 "replace offset + l (add the offset to them)" % (fn, offset))
            pos = _real_array(positions, "positions", fn, np.float64)
            if pos.shape != (length,):
                raise ValueError("%s: positions has shape %s but must have shape (%d,)"
                                 % (fn, pos.shape, length))
            c.keep.append(pos)
            p.positions = pos.ctypes.data_as(_lib._c_double_p)
        return p

    def sinusoidal(self, length, dim, *, layout="interleaved", base=None, offset=0.0,
                   positions=None, out=None):
        """The sinusoidal table [length, dim] as float32.

        layout: "interleaved" (the paper), "concat" (sin | cos),
        "concat-shifted" (fairseq/tensor2tensor), "cos-sin" (diffusion
        timesteps). base: None = 10000. offset: row l has position
        offset + l; positions: explicit float positions, one per row,
        instead (not with an offset).
        out: a float32 or float16 array of shape (length, dim) to write into."""
        fn = "sinusoidal"
        length, dim = _int64(length, fn, "length"), _int64(dim, fn, "dim")
        if length < 0 or dim < 0:
            raise ValueError("%s: length = %d and dim = %d must be >= 0" % (fn, length, dim))
        if out is None:
            out = np.empty((length, dim), np.float32)
        elif isinstance(out, np.ndarray) and out.shape != (length, dim):
            # The table's size comes from length and dim: out cannot replace them.
            raise ValueError("%s: out has shape %s but length and dim say (%d, %d)"
                             % (fn, out.shape, length, dim))
        with self._call(fn) as c:
            p = self._pe_params(fn, layout, base, offset, positions, length, c)
            h = c.output(out, "out", half=True)
            c.check(_fn("attn_sinusoidal")(self._handle, h, ctypes.byref(p)))
        return out

    def sinusoidal_add(self, x, *, layout="interleaved", base=None, offset=0.0,
                       positions=None, inplace=False):
        """x + the sinusoidal table, for x [L, D] or [B, L, D] (every batch gets
        the same table). x: an array (float16 stays float16, the rest is
        converted to float32) or a torch float32 / float16 / bfloat16 tensor
        (bfloat16 gives a float32 result: NumPy has no bfloat16).
        inplace=True adds into x (a writable float32 or float16 array, or a
        CPU torch tensor) and returns it; otherwise x is left alone and a new
        array returned."""
        fn = "sinusoidal_add"
        y, bf16 = _update_target(x, inplace, fn)
        with self._call(fn) as c:
            length = y.shape[-2] if y.ndim >= 2 else 0
            p = self._pe_params(fn, layout, base, offset, positions, length, c)
            h = c.output(y, "x", half=True, bf16=bf16)
            c.check(_fn("attn_sinusoidal_add")(self._handle, h, ctypes.byref(p)))
        return x if inplace else y

    def rope_backward(self, dx, *, style="half", rotary_dim=None, theta=None, offset=0,
                      positions=None, layout="bhld", inplace=False):
        """Gradient of rope(): the inverse rotation of dx (the gradient w.r.t.
        the rotated x), giving the gradient w.r.t. x. Arguments as rope()."""
        return self._rope("rope_backward", dx, style, rotary_dim, theta, offset, positions,
                          layout, inplace)

    def rope(self, x, *, style="half", rotary_dim=None, theta=None, offset=0,
             positions=None, layout="bhld", inplace=False):
        """Rotary position embedding of x: [B, H, L, D] (layout "bhld") or
        [B, L, H, D] ("blhd"), or either without the batch axis.

        style: "half" (NeoX/LLaMA rotate_half) or "interleaved" (GPT-J).
        rotary_dim: leading dims rotated (even; None = D). theta: None =
        10000. offset: token l has position offset + l; positions: explicit
        int positions, [L] or [B, L], instead (not with an offset). x's types as sinusoidal_add's.
        inplace=True rotates x itself (a writable float32 or float16 array,
        or a CPU torch tensor); otherwise a rotated copy is returned."""
        return self._rope("rope", x, style, rotary_dim, theta, offset, positions, layout,
                          inplace)

    def _rope(self, fn, x, style, rotary_dim, theta, offset, positions, layout, inplace):
        layout = _layout(layout, fn)
        y, bf16 = _update_target(x, inplace, fn)
        if y.ndim not in (3, 4):
            raise ValueError("%s: x must have 3 or 4 dims (%s, batch axis optional), not %s"
                             % (fn, layout.upper(), np.shape(y)))
        v = _to_bhld(y, layout, y.ndim == 4)
        p = _lib.RopeParams(style=_choice(_lib.ROPE_STYLES, style, fn, "style"),
                            rotary_dim=0 if rotary_dim is None else _int32(
                                _not_default(rotary_dim, fn, "rotary_dim", False), fn,
                                "rotary_dim"),
                            theta=0.0 if theta is None else _not_default(theta, fn, "theta"),
                            offset=_int64(offset, fn, "offset"))
        with self._call(fn) as c:
            if positions is not None:
                if p.offset:  # libattn would ignore it: positions replace offset + l
                    raise ValueError("%s: offset = %r and positions are both set; positions "
                                     "replace offset + l (add the offset to them)" % (fn, offset))
                B, L = v.shape[0], v.shape[2]
                pos = _as_numpy(positions, fn, "positions")
                if pos.ndim == 1:
                    pos = np.broadcast_to(pos, (B, pos.shape[0]))
                pos = _int64_array(pos, "positions", fn, (B, L))
                c.keep.append(pos)
                p.positions = pos.ctypes.data_as(_lib._c_int64_p)
            h = c.output(v, "x", half=True, bf16=bf16)
            c.check(_fn("attn_" + fn)(self._handle, h, ctypes.byref(p)))
        return x if inplace else y

    def alibi_slopes(self, n_heads, max_bias=8.0):
        """ALiBi slopes for n_heads heads as a float32 array (any head count)."""
        n = _int32(n_heads, "alibi_slopes", "n_heads")
        max_bias = _not_default(max_bias, "alibi_slopes", "max_bias")
        # Never NULL: for n < 1 libattn then names n_heads, not "slopes is NULL".
        out = np.empty(max(n, 1), np.float32)
        with self._call("alibi_slopes") as c:
            c.check(_fn("attn_alibi_slopes")(self._handle, n, max_bias,
                                             out.ctypes.data_as(_lib._c_float_p)))
        return out

    def rope_cache(self, max_position, rotary_dim, *, scaling="none", theta=None, factor=None,
                   original_max_position=None, seq_len=None, beta_fast=None, beta_slow=None,
                   mscale=None, mscale_all_dim=None, attention_factor=None,
                   low_freq_factor=None, high_freq_factor=None, short_factors=None,
                   long_factors=None, truncate=True, apply_attention_factor=False):
        """Rotary cos/sin tables [max_position, rotary_dim/2] with a long-context
        scaling, named as transformers' rope_type: "none", "linear", "ntk",
        "dynamic", "yarn", "llama3", "longrope"; the keyword arguments are that
        config's fields (None = the library's default; attn.h documents each).

        Returns (cos, sin, attention_factor). With apply_attention_factor=True
        the tables are multiplied by the factor (as transformers does);
        otherwise the caller applies it (YaRN's mscale, LongRoPE's factor)."""
        fn = "rope_cache"
        P, r = _int64(max_position, fn, "max_position"), _int64(rotary_dim, fn, "rotary_dim")
        if P < 1 or r < 2 or r % 2:
            raise ValueError("%s: max_position = %d must be >= 1 and rotary_dim = %d even "
                             "and >= 2" % (fn, P, r))
        cos = np.empty((P, r // 2), np.float32)
        sin = np.empty((P, r // 2), np.float32)
        af = ctypes.c_double()
        with self._call(fn) as c:
            p = _rope_cache_params(fn, c.keep, r // 2, scaling=scaling, theta=theta,
                                   factor=factor, original_max_position=original_max_position,
                                   seq_len=seq_len, beta_fast=beta_fast, beta_slow=beta_slow,
                                   mscale=mscale, mscale_all_dim=mscale_all_dim,
                                   attention_factor=attention_factor,
                                   low_freq_factor=low_freq_factor,
                                   high_freq_factor=high_freq_factor,
                                   short_factors=short_factors, long_factors=long_factors,
                                   truncate=truncate,
                                   apply_attention_factor=apply_attention_factor)
            c.check(_fn("attn_rope_cache_fill")(self._handle, c.output(cos, "cos"),
                                                c.output(sin, "sin"), ctypes.byref(p),
                                                ctypes.byref(af)))
        return cos, sin, af.value

    def rope_cached(self, x, cos, sin, *, position_ids=None, style="half", num_heads=None,
                    inplace=False):
        """Rotary embedding from cos/sin tables, as ONNX RotaryEmbedding-23.

        x: [B, H, L, D], or [B, L, H*D] with num_heads = H. cos, sin: [P,
        r/2] tables indexed by position_ids ([B, L] ints; None: token l reads
        row l), or [B, L, r/2] / [1, L, r/2] per token. The tables are used
        as given (any values). The first r dims of each head are rotated,
        the rest copied. style: "half" or "interleaved". x: float32, float16
        (read as it is) or a torch float32 / float16 / bfloat16 tensor.
        Returns the result, float16 for a float16 x, else float32 (x itself
        when inplace=True: a float32 or float16 array, or a torch tensor)."""
        fn = "rope_cached"
        result = x
        if inplace and not (isinstance(x, np.ndarray) or _is_torch(x)):
            raise TypeError("%s: inplace needs x to be a numpy array or a torch tensor, not %s"
                            % (fn, type(x).__name__))
        if inplace and _is_torch(x):
            _check_no_grad(x, fn)
        x, xdt = _data_array(x, fn, "x")
        y = x if inplace else np.empty(x.shape, _result_dtype(xdt))
        with self._call(fn) as c:
            hx = (c.output(x, "x", half=True, bf16=xdt == _lib.DTYPE_BF16) if inplace
                  else c.input(x, "x", dtype=xdt))
            hy = hx if inplace else c.output(y, "out", half=True)
            p = _lib.RopeCachedParams(style=_choice(_lib.ROPE_STYLES, style, fn, "style"),
                                      num_heads=0 if num_heads is None
                                      else _int32(num_heads, fn, "num_heads"))
            if position_ids is not None:
                shape = np.shape(y)
                if len(shape) not in (3, 4):
                    # Else the shape wanted of position_ids came out as (B, 0).
                    raise ValueError("%s: x has %d dims but must be [B, H, L, D] or "
                                     "[B, L, H*D]" % (fn, len(shape)))
                L = shape[1] if len(shape) == 3 else shape[2]
                pos = _int64_array(position_ids, "position_ids", fn, (shape[0], L))
                c.keep.append(pos)
                p.position_ids = pos.ctypes.data_as(_lib._c_int64_p)
            c.check(_fn("attn_rope_cached")(self._handle, hx, hy, c.input(cos, "cos"),
                                            c.input(sin, "sin"), ctypes.byref(p)))
        return result if inplace else y

    # ---- pooling ----

    def pool(self, x, mode="sum", *, scores=None, lengths=None, keep=None, out=None):
        """Pool x [B, L, D] or [B, H, L, D] over its sequence axis L.

        mode: "sum", "mean" (divided by the kept count), "max", or
        "weighted" (softmax of `scores` [B, L] or [B, H, L] over the kept
        tokens, then the weighted sum). lengths: [B] ints, tokens past
        lengths[b] dropped; keep: bool [B, L] or [B, H, L], True = keep. A
        sequence with no kept token gives zeros. x and scores: float32,
        float16 (read as they are), or torch float32 / float16 / bfloat16
        tensors. Returns [B, D] or [B, H, D]: float16 for a float16 x, else
        float32; out: an array of that shape (float32 or float16) to write."""
        fn = "pool"
        x, xdt = _data_array(x, fn, "x")
        if x.ndim not in (3, 4):
            raise ValueError("%s: x must be [B, L, D] or [B, H, L, D], not %s" % (fn, x.shape))
        if out is None:
            out = np.empty(x.shape[:-2] + x.shape[-1:], _result_dtype(xdt))
        with self._call(fn) as c:
            hx, p, _ = self._pool_params(fn, c, x, xdt, mode, scores, lengths, keep)
            c.check(_fn("attn_pool")(self._handle, hx, c.output(out, "out", half=True),
                                     ctypes.byref(p)))
        return out

    def pool_backward(self, x, dout, mode="sum", *, scores=None, lengths=None, keep=None,
                      return_dscores=False):
        """Gradients of pool(): from its x and dout (the gradient w.r.t. its
        output) returns dx (x's shape; 0 at dropped tokens) and, with
        return_dscores (mode "weighted"), (dx, dscores) with dscores in
        scores' shape. max sends each feature's gradient to the earliest
        kept token holding the maximum. Pass exactly the forward's
        arguments. Types as pool(): dx (dscores) is float16 for a float16 x
        (scores), else float32."""
        fn = "pool_backward"
        x, xdt = _data_array(x, fn, "x")
        dout, gdt = _data_array(dout, fn, "dout")
        if x.ndim not in (3, 4):
            raise ValueError("%s: x must be [B, L, D] or [B, H, L, D], not %s" % (fn, x.shape))
        dx = np.empty(x.shape, _result_dtype(xdt))
        dscores = None
        if return_dscores and scores is None:
            raise ValueError("%s: return_dscores needs scores (mode 'weighted')" % fn)
        with self._call(fn) as c:
            hx, p, sdt = self._pool_params(fn, c, x, xdt, mode, scores, lengths, keep)
            hds = None
            if return_dscores:
                dscores = np.empty(np.shape(scores), _result_dtype(sdt))
                hds = c.output(dscores, "dscores", half=True)
            c.check(_fn("attn_pool_backward")(self._handle, hx, c.input(dout, "dout", dtype=gdt),
                                              c.output(dx, "dx", half=True), hds,
                                              ctypes.byref(p)))
        return (dx, dscores) if return_dscores else dx

    def _pool_params(self, fn, c, x, xdt, mode, scores, lengths, keep):
        p = _lib.PoolParams(mode=_choice(_lib.POOL_MODES, mode, fn, "mode"))
        hx = c.input(x, "x", dtype=xdt)
        sdt = _lib.DTYPE_F32
        if scores is not None:
            scores, sdt = _data_array(scores, fn, "scores")
            p.scores = c.input(scores, "scores", dtype=sdt)
        if keep is not None:
            p.keep = c.input(keep, "keep", boolean=True)
        if lengths is not None:
            ln = _int64_array(lengths, "lengths", fn, (x.shape[0],))
            c.keep.append(ln)
            p.lengths = ln.ctypes.data_as(_lib._c_int64_p)
        return hx, p, sdt

    def pool_attention(self, queries, k, v=None, *, scale=None, lengths=None, keep=None,
                       return_weights=False, return_lse=False):
        """Learned-query attention pooling (CLIP attention pool, Set
        Transformer PMA): queries [Hq, M, D] (or [M, D]) shared by every
        sequence attend over k [B, Hkv, L, D] (or [B, L, D]) and v (default
        k), each float32, float16 or a torch float32 / float16 / bfloat16
        tensor, read as it is. lengths: [B]; keep: bool [B, L]. Returns out
        [B, Hq, M, Dv] (or [B, M, Dv] for 2-D queries and 3-D k), float16
        for float16 queries, else float32, followed by the weights
        [B, Hq, M, L] with return_weights and the log-sum-exp [B, Hq, M]
        (for pool_attention_backward) with return_lse."""
        fn = "pool_attention"
        (queries, qdt), (k, kdt) = _data_array(queries, fn, "queries"), _data_array(k, fn, "k")
        v, vdt = (k, kdt) if v is None else _data_array(v, fn, "v")
        q3, k4, v4, squeeze = self._pool_attention_views(fn, queries, k, v)
        B, L = k4.shape[0], k4.shape[2]
        Hq, M = q3.shape[0], q3.shape[1]
        out = np.empty((B, Hq, M, v4.shape[3]), _result_dtype(qdt))
        weights = np.empty((B, Hq, M, L), np.float32) if return_weights else None
        lse = np.empty((B, Hq, M), np.float32) if return_lse else None
        with self._call(fn) as c:
            p = self._pool_attention_params(fn, c, B, scale, lengths, keep)
            if weights is not None:
                p.weights = c.output(weights, "weights")
            if lse is not None:
                p.lse = c.output(lse, "lse")
            c.check(_fn("attn_pool_attention")(
                self._handle, c.input(q3, "queries", dtype=qdt), c.input(k4, "k", dtype=kdt),
                c.input(v4, "v", dtype=vdt), c.output(out, "out", half=True), ctypes.byref(p)))
        if squeeze:
            out = out[:, 0]
            weights = weights[:, 0] if weights is not None else None
            lse = lse[:, 0] if lse is not None else None
        extra = tuple(a for a in (weights, lse) if a is not None)
        return (out,) + extra if extra else out

    def pool_attention_backward(self, queries, k, v, out, lse, dout, *, scale=None,
                                lengths=None, keep=None):
        """Gradients of pool_attention(): from its arguments, its out and lse
        (return_lse=True) and dout, returns (dqueries, dk, dv) in the
        inputs' shapes (dqueries summed over the batch). v=None means v is
        k, as in the forward: dk then holds the sum of both gradients."""
        fn = "pool_attention_backward"
        same_kv = v is None
        q3, k4, v4, squeeze = self._pool_attention_views(fn, queries, k, v)
        B = k4.shape[0]
        o4, g4, ls = (_as_numpy(a, fn, n) for a, n in ((out, "out"), (dout, "dout"),
                                                         (lse, "lse")))
        nd = 3 if squeeze else 4  # out and dout as pool_attention returned out; lse one less
        for a, name, want in ((o4, "out", nd), (g4, "dout", nd), (ls, "lse", nd - 1)):
            if a.ndim != want:
                raise ValueError("%s: %s has %d dims but must have %d (for these queries and k)"
                                 % (fn, name, a.ndim, want))
        if squeeze:
            o4, g4, ls = o4[:, None], g4[:, None], ls[:, None]
        dq = np.empty(q3.shape, np.float32)
        dk = np.empty(k4.shape, np.float32)
        dv = np.empty(v4.shape, np.float32)
        with self._call(fn) as c:
            p = self._pool_attention_params(fn, c, B, scale, lengths, keep)
            c.check(_fn("attn_pool_attention_backward")(
                self._handle, c.input(q3, "queries"), c.input(k4, "k"), c.input(v4, "v"),
                c.input(o4, "out"), c.input(ls, "lse"), c.input(g4, "dout"),
                c.output(dq, "dqueries"), c.output(dk, "dk"), c.output(dv, "dv"),
                ctypes.byref(p)))
        if same_kv:
            dk += dv
        shape_k = np.shape(k)
        dq = dq.reshape(np.shape(queries))
        dk = dk.reshape(shape_k)
        if same_kv:
            return dq, dk, None
        return dq, dk, dv.reshape(np.shape(v))

    @staticmethod
    def _pool_attention_views(fn, queries, k, v):
        q = _as_numpy(queries, fn, "queries")
        k = _as_numpy(k, fn, "k")
        v = k if v is None else _as_numpy(v, fn, "v")
        squeeze = q.ndim == 2 and k.ndim == 3
        q3 = q[None] if q.ndim == 2 else q
        k4 = k[:, None] if k.ndim == 3 else k
        v4 = v[:, None] if v.ndim == 3 else v
        if q3.ndim != 3 or k4.ndim != 4 or v4.ndim != 4:
            raise ValueError("%s: queries must be [Hq, M, D] or [M, D] and k, v [B, Hkv, L, D] "
                             "or [B, L, D]" % fn)
        return q3, k4, v4, squeeze

    def _pool_attention_params(self, fn, c, B, scale, lengths, keep):
        p = _lib.PoolAttentionParams(scale=_scale(scale, fn))
        if keep is not None:
            p.keep = c.input(keep, "keep", boolean=True)
        if lengths is not None:
            ln = _int64_array(lengths, "lengths", fn, (B,))
            c.keep.append(ln)
            p.lengths = ln.ctypes.data_as(_lib._c_int64_p)
        return p

    # ---- attention ----

    def _sdpa_params(self, fn, c, *, causal, align, scale, window, softcap, alibi_slopes,
                     sinks, Hq):
        p = _lib.SdpaParams(scale=_scale(scale, fn))
        if isinstance(causal, str):
            align = causal
            causal = True
        p.causal = 1 if causal else 0
        p.align = _choice(_lib.ALIGNS, align, fn, "align")
        if window is not None:
            try:
                if isinstance(window, (str, bytes, dict)):
                    raise TypeError
                left, right = window
            except (TypeError, ValueError):  # unpacking's own errors name nothing
                raise TypeError("%s: window = %r but must be a pair (left, right) of key "
                                "counts, None for unbounded" % (fn, window)) from None
            big = 1 << 62  # libattn clamps extents to Lq + Lk
            p.window = 1
            p.window_left = big if left is None else _int64(left, fn, "window[0]")
            p.window_right = big if right is None else _int64(right, fn, "window[1]")
        if softcap is not None:
            p.softcap = _float32_arg(softcap, fn, "softcap")
            if p.softcap == 0.0:
                raise ValueError("%s: softcap = 0 is not allowed (pass None for no cap)" % fn)
        for field, value in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
            if value is not None:
                arr = _float32_vector(value, field, fn, Hq)
                c.keep.append(arr)
                setattr(p, field, arr.ctypes.data_as(_lib._c_float_p))
        return p

    def _dense_params(self, fn, c, B, Hq, mask, bool_mask, kv_lens, q_offsets, **common):
        """_sdpa_params plus what only the [B, H, L, D] entry points take."""
        p = self._sdpa_params(fn, c, Hq=Hq, **common)
        if mask is not None:
            p.mask, p.bool_mask = c.mask(mask, "mask")
        if bool_mask is not None:
            if p.bool_mask:
                raise ValueError("%s: mask is boolean and bool_mask is set too" % fn)
            p.bool_mask = c.input(bool_mask, "bool_mask", boolean=True)
        for field, value in (("kv_lens", kv_lens), ("q_offsets", q_offsets)):
            if value is not None:
                arr = _int64_array(value, field, fn, (B,))
                c.keep.append(arr)
                setattr(p, field, arr.ctypes.data_as(_lib._c_int64_p))
        return p

    def sdpa(self, q, k, v, *, mask=None, bool_mask=None, causal=False, align="top-left",
             scale=None, window=None, kv_lens=None, alibi_slopes=None, sinks=None,
             softcap=None, return_lse=False, return_weights=False, layout="bhld", out=None,
             q_offsets=None, return_logits=None):
        """Scaled dot-product attention softmax(scale * q k^T + bias) v.

        q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] (layout
        "bhld"), or [B, L, H, D] each with layout="blhd" (passed as strided
        views, no copy); the batch axis may be left out. Hq must be a
        multiple of Hkv (grouped-query attention).

        mask: additive (numbers) or boolean (bool/uint8, True = attend),
        broadcast to [B, Hq, Lq, Lk]; bool_mask adds a boolean one.
        causal: False, True (aligned by `align`), "top-left" or
        "bottom-right" (the last query sees the last key: KV-cache
        decoding). align also places window and ALiBi when Lq != Lk.
        scale: None = 1/sqrt(D). window: (left, right) key extents around
        the diagonal, None for unbounded. kv_lens: [B] ints, keys past
        kv_lens[b] ignored; with align "bottom-right" the last query of
        batch b sits at key kv_lens[b] - 1. q_offsets: [B] ints, the key
        position of each batch's first query row (row i at q_offsets[b] +
        i, may be negative); it replaces align, which must stay
        "top-left". alibi_slopes, sinks: [Hq] floats. softcap:
        cap * tanh(logit / cap) before the masks.

        Returns out [B, Hq, Lq, Dv] (in q's layout), or a tuple (out, lse)
        / (out, weights) / (out, lse, weights) when return_lse /
        return_weights ask for lse [B, Hq, Lq] (natural log of the softmax
        denominator) or weights [B, Hq, Lq, Lk]. return_logits = "scaled",
        "softcapped" or "masked" (ONNX qk_matmul_output_mode 0, 1, 2) appends
        the logits [B, Hq, Lq, Lk] at that stage, last."""
        fn = "sdpa"
        layout = _layout(layout, fn)
        (q, qdt), (k, kdt), (v, vdt) = (_data_array(a, fn, n) for a, n in ((q, "q"), (k, "k"),
                                                                            (v, "v")))
        if not (q.ndim == k.ndim == v.ndim and q.ndim in (3, 4)):
            raise ValueError("%s: q, k, v have %d, %d, %d dims but must all have 4 (%s) or 3 "
                             "(no batch axis)" % (fn, q.ndim, k.ndim, v.ndim, layout.upper()))
        batched = q.ndim == 4
        q4, k4, v4 = (_to_bhld(a, layout, batched) for a in (q, k, v))
        B, Hq, Lq, _ = q4.shape
        Lk, Dv = k4.shape[2], v4.shape[3]
        if out is None:
            shape = (B, Hq, Lq, Dv) if layout == "bhld" else (B, Lq, Hq, Dv)
            out = np.empty(shape if batched else shape[1:], _result_dtype(qdt))
        elif not isinstance(out, np.ndarray) or out.ndim != q.ndim:
            raise ValueError("%s: out must be a NumPy array with %d dims" % (fn, q.ndim))
        out4 = _to_bhld(out, layout, batched)
        lse = np.empty((B, Hq, Lq), np.float32) if return_lse else None
        weights = np.empty((B, Hq, Lq, Lk), np.float32) if return_weights else None
        logits = np.empty((B, Hq, Lq, Lk), np.float32) if return_logits is not None else None
        with self._call(fn) as c:
            if logits is not None:
                p_stage = _choice(_lib.LOGITS_STAGES, return_logits, fn, "return_logits")
            hq, hk, hv = (c.input(q4, "q", dtype=qdt), c.input(k4, "k", dtype=kdt),
                          c.input(v4, "v", dtype=vdt))
            ho = c.output(out4, "out", half=True)
            p = self._dense_params(fn, c, B, Hq, mask, bool_mask, kv_lens, q_offsets,
                                   causal=causal, align=align, scale=scale, window=window,
                                   softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
            if lse is not None:
                p.lse = c.output(lse, "lse")
            if weights is not None:
                p.weights = c.output(weights, "weights")
            if logits is not None:
                p.logits = c.output(logits, "logits")
                p.logits_stage = p_stage
            c.check(_fn("attn_sdpa")(self._handle, hq, hk, hv, ho, ctypes.byref(p)))
        if not batched:
            lse = None if lse is None else lse[0]
            weights = None if weights is None else weights[0]
            logits = None if logits is None else logits[0]
        extra = tuple(a for a in (lse, weights, logits) if a is not None)
        return (out,) + extra if extra else out

    def sdpa_backward(self, q, k, v, out, lse, dout, *, mask=None, bool_mask=None,
                      causal=False, align="top-left", scale=None, window=None, kv_lens=None,
                      alibi_slopes=None, sinks=None, softcap=None, q_offsets=None,
                      layout="bhld", return_dmask=False, return_dsinks=False):
        """Gradients of sdpa(): from q, k, v, the forward's out and lse
        (sdpa(..., return_lse=True)) and dout, the gradient w.r.t. out,
        returns (dq, dk, dv) in the inputs' layout, followed by dmask [B, Hq,
        Lq, Lk] (the gradient of each logit: that of an additive mask before
        summing its broadcast axes) when return_dmask, and dsinks [Hq] when
        return_dsinks (needs sinks). Pass exactly the forward's arguments.
        Memory O(tile): nothing of size Lq x Lk unless dmask is asked for."""
        fn = "sdpa_backward"
        layout = _layout(layout, fn)
        arrs = [_as_numpy(a, fn, n) for a, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"),
                                                 (dout, "dout"))]
        nd = arrs[0].ndim
        if nd not in (3, 4) or any(a.ndim != nd for a in arrs):
            raise ValueError("%s: q, k, v, out, dout must all have 4 dims (%s) or all 3"
                             % (fn, layout.upper()))
        batched = nd == 4
        q4, k4, v4, o4, g4 = (_to_bhld(a, layout, batched) for a in arrs)
        B, Hq, Lq, _ = q4.shape
        lse = _as_numpy(lse, fn, "lse")
        lse3 = lse if batched else lse[None]
        grads = [np.empty(a.shape, np.float32) for a in arrs[:3]]
        g4s = [_to_bhld(a, layout, batched) for a in grads]
        dmask = np.empty((B, Hq, Lq, k4.shape[2]), np.float32) if return_dmask else None
        dsinks = np.empty(Hq, np.float32) if return_dsinks else None
        with self._call(fn) as c:
            hs = [c.input(a, n) for a, n in ((q4, "q"), (k4, "k"), (v4, "v"), (o4, "out"),
                                             (lse3, "lse"), (g4, "dout"))]
            hd = [c.output(a, n) for a, n in zip(g4s, ("dq", "dk", "dv"))]
            p = self._dense_params(fn, c, B, Hq, mask, bool_mask, kv_lens, q_offsets,
                                   causal=causal, align=align, scale=scale, window=window,
                                   softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
            bp = _lib.SdpaBackwardParams()
            if dmask is not None:
                bp.dmask = c.output(dmask, "dmask")
            if dsinks is not None:
                bp.dsinks = dsinks.ctypes.data_as(_lib._c_float_p)
            c.check(_fn("attn_sdpa_backward")(self._handle, *hs, *hd, ctypes.byref(p),
                                              ctypes.byref(bp)))
        if dmask is not None and not batched:
            dmask = dmask[0]
        extra = tuple(a for a in (dmask, dsinks) if a is not None)
        return tuple(grads) + extra

    def sdpa_varlen_backward(self, q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k=None,
                             *, causal=False, align="top-left", scale=None, window=None,
                             alibi_slopes=None, sinks=None, softcap=None, q_offsets=None,
                             return_dsinks=False):
        """Gradients of sdpa_varlen(): (dq, dk, dv) for packed q [Tq, Hq, D],
        k [Tk, Hkv, D], v [Tk, Hkv, Dv], from its out, lse [Hq, Tq] and dout;
        (dq, dk, dv, dsinks) with return_dsinks. Pass the forward's arguments."""
        fn = "sdpa_varlen_backward"
        arrs = [_as_numpy(a, fn, n) for a, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"),
                                                 (lse, "lse"), (dout, "dout"))]
        cu_q = _int64_array(cu_seqlens_q, "cu_seqlens_q", fn)
        cu_k = cu_q if cu_seqlens_k is None else _int64_array(cu_seqlens_k, "cu_seqlens_k", fn)
        if cu_q.ndim != 1 or cu_q.shape[0] < 1 or cu_k.shape != cu_q.shape:
            raise ValueError("%s: cu_seqlens_q and cu_seqlens_k must be 1-D, of the same "
                             "length batch + 1 >= 1" % fn)
        if arrs[0].ndim != 3:  # else sinks were checked against Hq = 0
            raise ValueError("%s: q has %d dims but must have 3 [T, H, D]" % (fn, arrs[0].ndim))
        Hq = arrs[0].shape[1]
        grads = [np.empty(a.shape, np.float32) for a in arrs[:3]]
        dsinks = np.empty(Hq, np.float32) if return_dsinks else None
        with self._call(fn) as c:
            hs = [c.input(a, n) for a, n in zip(arrs, ("q", "k", "v", "out", "lse", "dout"))]
            hd = [c.output(a, n) for a, n in zip(grads, ("dq", "dk", "dv"))]
            p = self._sdpa_params(fn, c, causal=causal, align=align, scale=scale,
                                  window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                  sinks=sinks, Hq=Hq)
            if q_offsets is not None:
                offs = _int64_array(q_offsets, "q_offsets", fn, (cu_q.shape[0] - 1,))
                c.keep.append(offs)
                p.q_offsets = offs.ctypes.data_as(_lib._c_int64_p)
            bp = _lib.SdpaBackwardParams()
            if dsinks is not None:
                bp.dsinks = dsinks.ctypes.data_as(_lib._c_float_p)
            c.keep += [cu_q, cu_k]
            c.check(_fn("attn_sdpa_varlen_backward")(
                self._handle, *hs, *hd, cu_q.shape[0] - 1, cu_q.ctypes.data_as(_lib._c_int64_p),
                cu_k.ctypes.data_as(_lib._c_int64_p), ctypes.byref(p), ctypes.byref(bp)))
        return tuple(grads) + ((dsinks,) if dsinks is not None else ())

    def sdpa_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k=None, *, causal=False,
                    align="top-left", scale=None, window=None, alibi_slopes=None, sinks=None,
                    softcap=None, return_lse=False, out=None, q_offsets=None):
        """Attention over packed sequences: q [Tq, Hq, D], k [Tk, Hkv, D],
        v [Tk, Hkv, Dv]; sequence b holds query tokens cu_seqlens_q[b] ..
        cu_seqlens_q[b+1]-1 and key tokens likewise from cu_seqlens_k
        (default: cu_seqlens_q). q_offsets: one per sequence [batch]. Other
        arguments as sdpa(). Returns out
        [Tq, Hq, Dv], or (out, lse) with lse [Hq, Tq]."""
        fn = "sdpa_varlen"
        (q, qdt), (k, kdt), (v, vdt) = (_data_array(a, fn, n) for a, n in ((q, "q"), (k, "k"),
                                                                            (v, "v")))
        cu_q = _int64_array(cu_seqlens_q, "cu_seqlens_q", fn)
        cu_k = cu_q if cu_seqlens_k is None else _int64_array(cu_seqlens_k, "cu_seqlens_k", fn)
        if cu_q.ndim != 1 or cu_q.shape[0] < 1 or cu_k.shape != cu_q.shape:
            raise ValueError("%s: cu_seqlens_q and cu_seqlens_k must be 1-D, of the same "
                             "length batch + 1 >= 1; got shapes %s and %s"
                             % (fn, cu_q.shape, cu_k.shape))
        if q.ndim != 3 or v.ndim != 3:
            raise ValueError("%s: q and v must have 3 dims [T, H, D], not %d and %d"
                             % (fn, q.ndim, v.ndim))
        Tq, Hq = q.shape[0], q.shape[1]
        if out is None:
            out = np.empty((Tq, Hq, v.shape[2]), _result_dtype(qdt))
        lse = np.empty((Hq, Tq), np.float32) if return_lse else None
        with self._call(fn) as c:
            hq, hk, hv = (c.input(q, "q", dtype=qdt), c.input(k, "k", dtype=kdt),
                          c.input(v, "v", dtype=vdt))
            ho = c.output(out, "out", half=True)
            p = self._sdpa_params(fn, c, causal=causal, align=align, scale=scale,
                                  window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                  sinks=sinks, Hq=Hq)
            if lse is not None:
                p.lse = c.output(lse, "lse")
            if q_offsets is not None:
                offs = _int64_array(q_offsets, "q_offsets", fn, (cu_q.shape[0] - 1,))
                c.keep.append(offs)
                p.q_offsets = offs.ctypes.data_as(_lib._c_int64_p)
            c.keep += [cu_q, cu_k]
            c.check(_fn("attn_sdpa_varlen")(
                self._handle, hq, hk, hv, ho, cu_q.shape[0] - 1,
                cu_q.ctypes.data_as(_lib._c_int64_p), cu_k.ctypes.data_as(_lib._c_int64_p),
                ctypes.byref(p)))
        return (out, lse) if return_lse else out


def _mapping_arg(state, fn):
    """A state dict: a list of pairs was searched as a list (every weight
    "missing", KeyError) and None raised "argument of type 'NoneType' is not
    iterable"."""
    if not isinstance(state, collections.abc.Mapping):
        raise TypeError("%s: the state dict must be a mapping of names to arrays, not %s"
                        % (fn, type(state).__name__))


def _context_arg(context, fn):
    """The context= of an object: an attn.Context, or None for this thread's
    default (a wrong one failed later with an AttributeError)."""
    if context is None:
        return default_context()
    if not isinstance(context, Context):
        raise TypeError("%s: context must be an attn.Context or None, not %s"
                        % (fn, type(context).__name__))
    return context


class _ContextObject(_ClosedWhenCollected):
    """An object the library allocates in a context (a cache, a layer):
    freed by close(), when collected, or with its context. Subclasses set
    _FREE, the name of the library function that frees one."""

    _FREE = None

    def _call(self, fn):
        # A closed object's handle is NULL: say so, not libattn's NULL_ARG.
        if not getattr(self, "_handle", None):
            raise ValueError("%s: this attn.%s is closed" % (fn, type(self).__name__))
        return self._ctx._call(fn)

    def close(self):
        """Free it now (it is freed with its context otherwise). Idempotent.
        A call running on its context in another thread (which may be using
        it) finishes first: close waits for it, as Context.close does."""
        self._release(wait=True)

    def __del__(self):
        # Collection may happen in any thread, also in the middle of a call
        # on the context (even this thread's: waiting would deadlock): then
        # the handle is left to the context, which frees it when that call
        # ends (_Guarded) or when the context closes.
        try:
            self._release(wait=False)
        except Exception:
            pass

    def _release(self, wait):
        h, ctx = getattr(self, "_handle", None), getattr(self, "_ctx", None)
        if not h or ctx is None or _LIB is None:
            self._handle = None
            return
        busy = ctx._busy
        if not busy.acquire(blocking=wait):
            self._handle = None
            ctx._deferred.append((self._FREE, h))
            return
        try:
            if ctx._handle:
                code = getattr(_LIB, self._FREE)(ctx._handle, h)
                if code:  # the handle stays: nothing was freed
                    raise AttnError(_status_name(code), ctx.last_error(), code)
            self._handle = None
        finally:
            busy.release()


class KVCache(_ContextObject):
    """A KV cache for incremental decoding (attn_kv_cache_create).

    KVCache(batch, kv_heads, head_dim, capacity=None, *, value_dim=None,
    paged=False, block_size=16, num_blocks=None, dtype="float32", context=None)

    dtype: what the cache stores, "float32", "float16" or "bfloat16" (a
    NumPy or torch dtype works too). A half cache takes half the memory and
    a decode step reads half the bytes; appended rows are rounded once to
    it, attention widens them to float32 inside the kernel.

    Contiguous (default): `capacity` tokens per sequence, reserved up front.
    paged=True: `num_blocks` blocks of `block_size` tokens shared by all
    sequences (vLLM's PagedAttention); `capacity` then caps one sequence
    (None = the whole pool). num_blocks and block_size are refused without
    paged=True, and sizes of 0 (None is the default). copy() shares blocks, copying one only when an
    append would change it. Every method checks its input before it changes
    anything: an AttnError leaves the cache as it was.

    The cache lives in `context` (default: this thread's default context)
    and must be used from that context's thread."""

    _FREE = "attn_kv_cache_free"

    def __init__(self, batch, kv_heads, head_dim, capacity=None, *, value_dim=None,
                 paged=False, block_size=16, num_blocks=None, dtype="float32",
                 context=None):
        fn = "KVCache"
        self.dtype = _dtype_name(dtype, fn)
        self._ctx = _context_arg(context, fn)
        if paged and num_blocks is None:
            raise ValueError("%s: paged=True needs num_blocks" % fn)
        if not paged and capacity is None:
            raise ValueError("%s: a contiguous cache needs capacity" % fn)
        if not paged and (num_blocks is not None or block_size != 16):
            # A contiguous cache has no blocks: they were silently ignored.
            raise ValueError("%s: num_blocks and block_size are for a paged cache (paged=True)"
                             % fn)
        batch, kv_heads, head_dim = (_int64(a, fn, name) for a, name in (
            (batch, "batch"), (kv_heads, "kv_heads"), (head_dim, "head_dim")))
        # libattn reads 0 as the default (head_dim; paged: the whole pool, 16).
        value_dim = 0 if value_dim is None else _not_default(value_dim, fn, "value_dim", False)
        if paged:
            capacity = 0 if capacity is None else _not_default(capacity, fn, "capacity", False)
            block_size = _not_default(block_size, fn, "block_size", False)
        p = _lib.KvCacheParams(layout=1 if paged else 0, batch=batch, kv_heads=kv_heads,
                               head_dim=head_dim, value_dim=value_dim,
                               capacity=_int64(capacity, fn, "capacity"),
                               block_size=block_size if paged else 0,
                               num_blocks=_int64(num_blocks or 0, fn, "num_blocks"),
                               dtype=_DTYPE_CODES[self.dtype])
        h = ctypes.c_void_p()
        with self._ctx._call(fn) as c:
            c.check(_LIB.attn_kv_cache_create(self._ctx._handle, ctypes.byref(p),
                                              ctypes.byref(h)))
        self._handle = h
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.value_dim = value_dim or head_dim

    def _info(self):
        info = _lib.KvCacheInfo()
        lens = np.zeros(self.batch, np.int64)
        with self._call("KVCache.info") as c:
            c.check(_LIB.attn_kv_cache_info_get(self._ctx._handle, self._handle,
                                                ctypes.byref(info),
                                                lens.ctypes.data_as(_lib._c_int64_p)))
        return info, lens

    @property
    def lengths(self):
        """Tokens held per sequence (int64 array [batch])."""
        return self._info()[1]

    @property
    def free_blocks(self):
        """Paged: blocks no sequence holds (0 for a contiguous cache)."""
        return int(self._info()[0].free_blocks)

    def _counts(self, n_new, L, fn, c):
        if n_new is None:
            return None
        arr = _int64_array(n_new, "n_new", fn, (self.batch,))
        c.keep.append(arr)
        return arr.ctypes.data_as(_lib._c_int64_p)

    def append(self, k, v, n_new=None, *, rope=None, src_dtype=None):
        """Append k [B, Hkv, L, D] and v [B, Hkv, L, Dv]: rows 0..n_new[b]-1
        of sequence b go after its end (n_new None = all L). rope: None, or a
        dict with style ("half-split" / "interleaved"), rotary_dim, theta,
        applied to the new keys at their absolute positions (in float32,
        then rounded once into a half cache). float16 arrays and torch
        float16 / bfloat16 tensors are read as they are; uint16 arrays of
        bfloat16 bits with src_dtype="bfloat16"."""
        fn = "KVCache.append"
        with self._call(fn) as c:
            (k, kdt), (v, vdt) = (_kv_rows(a, src_dtype, fn, n) for a, n in ((k, "k"), (v, "v")))
            hk, hv = c.input(k, "k", dtype=kdt), c.input(v, "v", dtype=vdt)
            ap = _lib.KvAppendParams()
            if rope is not None:
                rp = _rope_params(rope, fn)
                c.keep.append(rp)
                ap.rope = ctypes.pointer(rp)
            c.check(_LIB.attn_kv_append(self._ctx._handle, self._handle, hk, hv,
                                        self._counts(n_new, k.shape[-2], fn, c),
                                        ctypes.byref(ap)))

    def attend(self, q, n_new=None, *, causal=True, scale=None, window=None, softcap=None,
               alibi_slopes=None, sinks=None):
        """Attention of q [B, Hq, Lq, D] over the cache: row i of sequence b
        sits at position length[b] - n_new[b] + i (n_new None = Lq for all),
        so call it after append() with the same counts. Rows past n_new[b]
        are zeros. Returns out [B, Hq, Lq, Dv], float16 for a float16 q,
        else float32."""
        fn = "KVCache.attend"
        if isinstance(causal, str):
            # sdpa's causal="top-left" sets the alignment, which libattn
            # ignores here (rows sit at their cache positions): refuse it.
            raise TypeError("%s: causal = %r but must be True or False (each row sits at its "
                            "position in the cache; there is no alignment to choose)"
                            % (fn, causal))
        q, qdt = _data_array(q, fn, "q")
        if q.ndim != 4:
            raise ValueError("%s: q must be [B, Hq, Lq, D]" % fn)
        out = np.empty(q.shape[:3] + (self.value_dim,), _result_dtype(qdt))
        with self._call(fn) as c:
            hq, ho = c.input(q, "q", dtype=qdt), c.output(out, "out", half=True)
            p = self._ctx._sdpa_params(fn, c, causal=causal, align="top-left", scale=scale,
                                       window=window, softcap=softcap,
                                       alibi_slopes=alibi_slopes, sinks=sinks, Hq=q.shape[1])
            c.check(_LIB.attn_kv_attend(self._ctx._handle, self._handle, hq, ho,
                                        self._counts(n_new, q.shape[2], fn, c),
                                        ctypes.byref(p)))
        return out

    def _simple(self, fn, call, *args):
        with self._call(fn) as c:
            c.check(call(self._ctx._handle, self._handle, *args))

    def truncate(self, seq, length):
        """Keep the first `length` tokens of sequence `seq`."""
        fn = "KVCache.truncate"
        self._simple(fn, _LIB.attn_kv_truncate, _int64(seq, fn, "seq"),
                     _int64(length, fn, "length"))

    def reset(self, seq=None):
        """Empty sequence `seq`, or every sequence (None)."""
        fn = "KVCache.reset"
        self._simple(fn, _LIB.attn_kv_reset, -1 if seq is None else _int64(seq, fn, "seq"))

    def copy(self, dst, src):
        """Make sequence dst a copy of sequence src."""
        fn = "KVCache.copy"
        self._simple(fn, _LIB.attn_kv_copy, _int64(dst, fn, "dst"), _int64(src, fn, "src"))

    def read(self, seq, start=0, n=None, dtype="float32"):
        """Keys [Hkv, n, D] and values [Hkv, n, Dv] of sequence `seq` from
        position `start` (n None = to its end), as dtype: "float32" (exact
        from any cache), "float16", or "bfloat16" (uint16 arrays of the
        bits)."""
        fn = "KVCache.read"
        kind = _dtype_name(dtype, fn)
        npt = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[kind]
        seq, start = _int64(seq, fn, "seq"), _int64(start, fn, "start")
        if n is None:  # to the end; a bad seq or start is the library's to report
            lens = self.lengths
            n = max(int(lens[seq]) - start, 0) if 0 <= seq < lens.shape[0] else 0
        n = _int64(n, fn, "n")
        if n < 0:
            raise ValueError("%s: n = %d but must be >= 0" % (fn, n))
        lens = self.lengths
        if 0 <= seq < lens.shape[0] and n > lens[seq]:
            # Before allocating n rows: read(0, 0, 2**40) raised MemoryError
            # (16 TiB) before libattn could refuse it.
            raise AttnError("ATTN_ERR_INVALID_ARG", "%s: n = %d tokens but sequence %d holds %d"
                            % (fn, n, seq, lens[seq]), 2)
        k = np.empty((self.kv_heads, n, self.head_dim), npt)
        v = np.empty((self.kv_heads, n, self.value_dim), npt)
        with self._call(fn) as c:
            if kind == "bfloat16":  # written in place as bits: no conversion
                hk = c._wrap(k, _lib.DTYPE_BF16, _element_strides(k), "k")
                hv = c._wrap(v, _lib.DTYPE_BF16, _element_strides(v), "v")
            else:
                hk, hv = c.output(k, "k", half=True), c.output(v, "v", half=True)
            c.check(_LIB.attn_kv_read(self._ctx._handle, self._handle, seq, start, hk, hv))
        return k, v


class MultiheadAttention(_ContextObject):
    """torch.nn.MultiheadAttention's forward on libattn (attn_mha_create_torch).

    MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True,
    add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
    batch_first=False, device=None, dtype=None, *, context=None)

    The constructor and forward take torch's arguments; this is inference
    (torch's eval mode): dropout is accepted and never applied, and
    add_bias_kv / add_zero_attn raise AttnError (ATTN_ERR_UNSUPPORTED).
    Weights start at zero: load them with load_state_dict(), for example
    from a torch module:

        m = attn.MultiheadAttention(E, H, batch_first=True)
        m.load_state_dict({k: v.numpy() for k, v in torch_mha.state_dict().items()})
        out, weights = m(query, key, value, key_padding_mask=pad)

    Boolean masks follow torch: True (nonzero) = NOT allowed to attend; a
    float mask is added to the logits. A query row that sees no key gives
    zeros where torch gives NaN. The layer lives in `context` (default: this
    thread's default context) and must be used from that context's thread."""

    _FREE = "attn_mha_free"

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None, *, context=None):
        fn = "MultiheadAttention"
        # torch.device("cpu") (and "cpu:0") is the CPU too: it was refused.
        if device is not None and str(device).split(":")[0] != "cpu":
            raise ValueError("%s: device = %r but libattn runs on the CPU" % (fn, device))
        if dtype is not None and str(dtype) not in ("float32", "torch.float32",
                                                    str(np.float32), str(np.dtype(np.float32))):
            raise ValueError("%s: dtype = %r but the layer is float32" % (fn, dtype))
        self._ctx = _context_arg(context, fn)
        self.embed_dim, self.num_heads = _int64(embed_dim, fn, "embed_dim"), \
            _int64(num_heads, fn, "num_heads")
        # libattn reads kdim = 0 as embed_dim, where the weights' shapes here
        # (and torch's) would have 0 columns: refused.
        self.kdim = _not_default(kdim, fn, "kdim", False) if kdim is not None else self.embed_dim
        self.vdim = _not_default(vdim, fn, "vdim", False) if vdim is not None else self.embed_dim
        self.batch_first, self.dropout = bool(batch_first), _real(dropout, fn, "dropout")
        if not 0.0 <= self.dropout <= 1.0:  # torch's rule (it is never applied here)
            raise ValueError("%s: dropout = %r but must be in [0, 1]" % (fn, dropout))
        self.head_dim = self.embed_dim // max(self.num_heads, 1)
        self._bias = bool(bias)
        p = _lib.MhaTorchParams(embed_dim=self.embed_dim, num_heads=self.num_heads,
                                kdim=self.kdim, vdim=self.vdim, no_bias=int(not bias),
                                batch_first=int(self.batch_first),
                                add_bias_kv=int(bool(add_bias_kv)),
                                add_zero_attn=int(bool(add_zero_attn)))
        h = ctypes.c_void_p()
        with self._ctx._call(fn) as c:
            c.check(_LIB.attn_mha_create_torch(self._ctx._handle, ctypes.byref(p),
                                               ctypes.byref(h)))
        self._handle = h

    def _weight_shapes(self):
        E = self.embed_dim
        if self.kdim == E and self.vdim == E:
            shapes = {"in_proj_weight": (3 * E, E)}
        else:
            shapes = {"q_proj_weight": (E, E), "k_proj_weight": (E, self.kdim),
                      "v_proj_weight": (E, self.vdim)}
        if self._bias:
            shapes["in_proj_bias"] = (3 * E,)
        shapes["out_proj.weight"] = (E, E)
        if self._bias:
            shapes["out_proj.bias"] = (E,)
        return shapes

    def load_state_dict(self, state_dict, strict=True):
        """Copy the weights from a dict of arrays named as torch's state_dict
        (in_proj_weight or q/k/v_proj_weight, in_proj_bias, out_proj.weight,
        out_proj.bias), e.g. {k: v.numpy() for k, v in
        module.state_dict().items()}. strict: every weight present and no
        other key (KeyError otherwise); nothing is changed on an error.
        Returns (missing_keys, unexpected_keys) as torch's does: the weights
        left as they were and the keys not read (both empty when strict)."""
        fn = "MultiheadAttention.load_state_dict"
        _mapping_arg(state_dict, fn)
        shapes = self._weight_shapes()
        missing = sorted(set(shapes) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(shapes))
        if strict and (missing or unexpected):
            raise KeyError("%s: missing keys %s, unexpected keys %s"
                           % (fn, missing, unexpected))
        arrays = {}
        for name, shape in shapes.items():
            if name in state_dict:
                a = _data_array(state_dict[name], fn, name)
                if a[0].shape != shape:
                    raise ValueError("%s: %s has shape %s but must be %s"
                                     % (fn, name, a[0].shape, shape))
                arrays[name] = a
        with self._call(fn) as c:
            # Every array converted and wrapped (which may raise) before any is set.
            handles = [(name, c.input(a[0], name, dtype=a[1])) for name, a in arrays.items()]
            for name, h in handles:
                c.check(_LIB.attn_mha_set_weight(self._ctx._handle, self._handle,
                                                 _lib.MHA_TORCH_WEIGHTS[name], h))
        return IncompatibleKeys(missing, unexpected)

    def state_dict(self):
        """The weights as float32 arrays under torch's state_dict names."""
        out = {}
        with self._call("MultiheadAttention.state_dict") as c:
            for name, shape in self._weight_shapes().items():
                a = np.empty(shape, np.float32)
                c.check(_LIB.attn_mha_get_weight(self._ctx._handle, self._handle,
                                                 _lib.MHA_TORCH_WEIGHTS[name],
                                                 c.output(a, name)))
                out[name] = a
        return out

    def _mask(self, c, m, name):
        m = _as_numpy(m, "MultiheadAttention", name)
        if m.dtype == np.bool_ or m.dtype == np.uint8:
            return c.input(m, name, boolean=True)
        if m.dtype.kind != "f":
            raise TypeError("MultiheadAttention: %s has dtype %s; it must be bool (True = "
                            "not allowed) or floating (added)" % (name, m.dtype))
        return c.input(m, name, additive_mask=True)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """torch's forward: query [L, B, E] ([B, L, E] with batch_first, or
        [L, E] unbatched), key [S, B, kdim], value [S, B, vdim],
        key_padding_mask [B, S], attn_mask [L, S] or [B * num_heads, L, S].
        is_causal hides key j from query i when j > i, on top of the masks.
        Returns (out, weights): weights [B, L, S] (averaged over heads) or
        [B, num_heads, L, S], or None when need_weights is False."""
        fn = "MultiheadAttention"
        same_k, same_v = key is query, value is key
        (query, qdt), (key, kdt), (value, vdt) = (
            _data_array(a, fn, n) for a, n in ((query, "query"), (key, "key"), (value, "value")))
        if same_k:
            key = query
        if same_v:
            value = key
        if not query.ndim == key.ndim == value.ndim:
            # Checked before S = key.shape[...] below (a 0-d key: IndexError).
            raise ValueError("%s: query, key and value have %d, %d and %d dims but must all "
                             "have 3 (batched) or 2 (unbatched)"
                             % (fn, query.ndim, key.ndim, value.ndim))
        batched = query.ndim == 3
        if not batched:
            if query.ndim != 2:
                raise ValueError("%s: query must be 3-D (batched) or 2-D (unbatched), not "
                                 "%d-D" % (fn, query.ndim))
            axis = 0 if self.batch_first else 1
            query, key, value = (np.expand_dims(a, axis) for a in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = _as_numpy(key_padding_mask, fn, "key_padding_mask")
                if key_padding_mask.ndim != 1:
                    # Else libattn named the 3-D mask the binding made of it.
                    raise ValueError("%s: key_padding_mask has %d dims but an unbatched query "
                                     "takes a 1-D one [S]" % (fn, key_padding_mask.ndim))
                key_padding_mask = key_padding_mask[None]
        B = query.shape[0] if self.batch_first else query.shape[1]
        L = query.shape[1] if self.batch_first else query.shape[0]
        S = key.shape[1] if self.batch_first else key.shape[0]
        out = np.empty(query.shape[:2] + (self.embed_dim,), _result_dtype(qdt))
        weights = None
        if need_weights:
            weights = np.empty((B, L, S) if average_attn_weights
                               else (B, self.num_heads, L, S), np.float32)
        with self._call(fn) as c:
            hq = c.input(query, "query", dtype=qdt)
            hk = hq if key is query else c.input(key, "key", dtype=kdt)
            hv = hk if value is key else c.input(value, "value", dtype=vdt)
            hkpm = None if key_padding_mask is None else self._mask(c, key_padding_mask,
                                                                    "key_padding_mask")
            ham = None if attn_mask is None else self._mask(c, attn_mask, "attn_mask")
            p = _lib.MhaTorchForwardParams(need_weights=int(bool(need_weights)),
                                           per_head_weights=int(not average_attn_weights),
                                           is_causal=int(bool(is_causal)))
            ho = c.output(out, "out", half=True)
            hw = None if weights is None else c.output(weights, "weights")
            c.check(_LIB.attn_mha_torch_forward(self._ctx._handle, self._handle, hq, hk, hv,
                                                hkpm, ham, ctypes.byref(p), ho, hw))
        if not batched:
            out = out[0] if self.batch_first else out[:, 0]
            if weights is not None:
                weights = weights[0]
        return out, weights

    __call__ = forward


class DecoderLayer(_ContextObject):
    """The attention block of a decoder model (attn_mha_create_decoder):
    q/k/v projections, RoPE at each token's position in the cache, append to
    a KVCache, causal (grouped-query) attention over it, output projection.

    DecoderLayer(embed_dim, num_heads, num_kv_heads=None, head_dim=None, *,
    qkv_bias=False, out_bias=False, rope=None, rope_scaling=None, scale=None,
    softcap=None, window=None, context=None)

    rope: None, or a dict with style ("half-split" / "interleaved"),
    rotary_dim (0 = head_dim) and theta. rope_scaling: None, or a dict of
    rope_cache()'s keyword arguments (scaling="yarn", factor=..., ...;
    apply_attention_factor=True multiplies q and k by the attention factor,
    as transformers does; dynamic and longrope need seq_len). window: keys
    at most `window` positions back (None = all).

    Weights start at zero; set them with load_state_dict() or set_weight()
    in nn.Linear layout ([out_features, in_features]), named as a
    transformers attention block names them: q_proj.weight [Hq*D, E],
    k_proj.weight and v_proj.weight [Hkv*D, E], o_proj.weight [E, Hq*D], and
    the .bias of each (with qkv_bias / out_bias). They are copied."""

    _FREE = "attn_mha_free"

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, head_dim=None, *,
                 qkv_bias=False, out_bias=False, rope=None, rope_scaling=None, scale=None,
                 softcap=None, window=None, context=None):
        fn = "DecoderLayer"
        self._ctx = _context_arg(context, fn)
        embed_dim, num_heads = _int64(embed_dim, fn, "embed_dim"), \
            _int64(num_heads, fn, "num_heads")
        # None is the default; libattn reads 0 as it too, so 0 is refused.
        num_kv_heads = 0 if num_kv_heads is None else _not_default(num_kv_heads, fn,
                                                                    "num_kv_heads", False)
        head_dim = 0 if head_dim is None else _not_default(head_dim, fn, "head_dim", False)
        scale = _scale(scale, fn)
        softcap = None if softcap is None else _float32_arg(softcap, fn, "softcap")
        p = _lib.MhaDecoderParams(embed_dim=embed_dim, num_heads=num_heads,
                                  num_kv_heads=num_kv_heads,
                                  head_dim=head_dim, qkv_bias=1 if qkv_bias else 0,
                                  out_bias=1 if out_bias else 0,
                                  scale=float(scale or 0), softcap=float(softcap or 0),
                                  window=0 if window is None else 1,
                                  window_left=_int64(window or 0, fn, "window"))
        if rope_scaling is not None and not isinstance(rope_scaling, dict):
            raise TypeError("%s: rope_scaling must be None or a dict, not %s"
                            % (fn, type(rope_scaling).__name__))
        h = ctypes.c_void_p()
        with self._ctx._call(fn) as c:
            if rope is not None:
                rp = _rope_params(rope, fn)
                c.keep.append(rp)
                p.rope = ctypes.pointer(rp)
            if rope_scaling is not None:
                D = int(head_dim or int(embed_dim) // max(int(num_heads), 1))
                r = int((rope or {}).get("rotary_dim", 0)) or D
                sp = _rope_cache_params(fn, c.keep, r // 2, **rope_scaling)
                c.keep.append(sp)
                p.rope_scaling = ctypes.pointer(sp)
            c.check(_LIB.attn_mha_create_decoder(self._ctx._handle, ctypes.byref(p),
                                                 ctypes.byref(h)))
        self._handle = h
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.num_kv_heads = int(num_kv_heads or num_heads)
        self.head_dim = int(head_dim or int(embed_dim) // int(num_heads))
        self.qkv_bias, self.out_bias = bool(qkv_bias), bool(out_bias)

    def _shape(self, name):
        hq, hkv, E = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.embed_dim
        return {"q_proj.weight": (hq, E), "k_proj.weight": (hkv, E), "v_proj.weight": (hkv, E),
                "o_proj.weight": (E, hq), "q_proj.bias": (hq,), "k_proj.bias": (hkv,),
                "v_proj.bias": (hkv,), "o_proj.bias": (E,)}[name]

    def _which(self, name, fn):
        if name not in _lib.MHA_WEIGHTS:
            raise KeyError("%s: %r is not a weight name (%s)"
                           % (fn, name, ", ".join(_lib.MHA_WEIGHTS)))
        return _lib.MHA_WEIGHTS[name]

    def set_weight(self, name, w):
        """Copy weight `name` (e.g. "q_proj.weight") from w (float16 arrays
        and torch float16 / bfloat16 tensors are read as they are; the layer
        keeps float32)."""
        fn = "DecoderLayer.set_weight"
        which = self._which(name, fn)
        w, wdt = _data_array(w, fn, name)
        with self._call(fn) as c:
            c.check(_LIB.attn_mha_set_weight(self._ctx._handle, self._handle, which,
                                             c.input(w, name, dtype=wdt)))

    def get_weight(self, name):
        """A copy of weight `name` (float32)."""
        fn = "DecoderLayer.get_weight"
        which = self._which(name, fn)
        out = np.empty(self._shape(name), np.float32)
        with self._call(fn) as c:
            c.check(_LIB.attn_mha_get_weight(self._ctx._handle, self._handle, which,
                                             c.output(out, name)))
        return out

    def load_state_dict(self, state, prefix=""):
        """Set every weight the layer has from state[prefix + name] (arrays or
        anything np.asarray takes); names the layer lacks are not read. A
        missing weight (KeyError) or one of the wrong shape or type (ValueError,
        TypeError) is found before anything is set."""
        fn = "DecoderLayer.load_state_dict"
        _mapping_arg(state, fn)
        names = [n for n in _lib.MHA_WEIGHTS
                 if n.endswith(".weight") or (self.out_bias if n == "o_proj.bias"
                                              else self.qkv_bias)]
        missing = [prefix + n for n in names if prefix + n not in state]
        if missing:
            raise KeyError("%s: missing %s" % (fn, ", ".join(missing)))
        arrays = {}
        for n in names:
            a = _data_array(state[prefix + n], fn, prefix + n)
            if a[0].shape != self._shape(n):
                raise ValueError("%s: %s has shape %s but must be %s"
                                 % (fn, prefix + n, a[0].shape, self._shape(n)))
            arrays[n] = a
        with self._call(fn) as c:
            # Every array converted and wrapped (which may raise) before any is set.
            handles = [(n, c.input(w, n, dtype=wdt)) for n, (w, wdt) in arrays.items()]
            for n, h in handles:
                c.check(_LIB.attn_mha_set_weight(self._ctx._handle, self._handle,
                                                 self._which(n, fn), h))

    def forward(self, x, cache, n_new=None):
        """Run new tokens x [B, L, E] through the layer: their keys and values
        are appended to `cache` (a KVCache with B sequences, num_kv_heads
        heads, head_dim = value_dim), each sequence's tokens sit after what it
        holds. n_new: per-sequence counts 0..L (None = L); rows past n_new[b]
        are zeros. Returns y [B, L, E]: float16 for a float16 x (x may also be
        a torch float16 / bfloat16 tensor), else float32."""
        fn = "DecoderLayer.forward"
        x, xdt = _data_array(x, fn, "x")
        if x.ndim != 3:
            raise ValueError("%s: x must be [B, L, E]" % fn)
        y = np.empty(x.shape[:2] + (self.embed_dim,), _result_dtype(xdt))
        if not isinstance(cache, KVCache):
            raise TypeError("%s: cache must be an attn.KVCache, not %s"
                            % (fn, type(cache).__name__))
        if cache._ctx is not self._ctx:
            raise ValueError("%s: the cache belongs to another context" % fn)
        with self._call(fn) as c:
            counts = cache._counts(n_new, x.shape[1], fn, c)
            c.check(_LIB.attn_mha_forward(self._ctx._handle, self._handle, cache._handle,
                                          c.input(x, "x", dtype=xdt), c.output(y, "y", half=True),
                                          counts))
        return y

    __call__ = forward


class _Guarded(_Call):
    """A _Call that also holds the context's busy lock."""

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            ctx = self.ctx
            try:
                while ctx._deferred and ctx._handle:
                    name, h = ctx._deferred.pop()
                    getattr(_LIB, name)(ctx._handle, h)  # a live handle: ATTN_OK
            finally:
                ctx._busy.release()


# ---- per-thread default contexts ----

_tls = threading.local()
_defaults = {"threads": 0, "generation": 0}
_defaults_lock = threading.Lock()


def default_context():
    """This thread's default Context (created on first use). Contexts are
    single-thread, so each Python thread gets its own."""
    gen = _defaults["generation"]
    ctx = getattr(_tls, "ctx", None)
    if ctx is None or getattr(_tls, "generation", None) != gen:
        # The previous one is dropped, not closed: it closes when collected,
        # so a KVCache or layer made on it (which holds it) keeps working.
        ctx = Context(_defaults["threads"])
        _tls.ctx, _tls.generation = ctx, gen
    return ctx


def set_num_threads(n):
    """Thread count of the default contexts (0 = CPUs available). Each
    thread's default context is recreated with it at its next use; objects
    made on the previous one (KVCache, DecoderLayer, ...) keep it."""
    n = _int32(n, "set_num_threads", "n")
    if not 0 <= n <= 1024:
        raise ValueError("set_num_threads: n = %d but must be 0..1024" % n)
    with _defaults_lock:
        _defaults["threads"] = n
        _defaults["generation"] += 1


def get_num_threads():
    """The thread count of this thread's default context."""
    return default_context().num_threads


def _module_level(name):
    method = getattr(Context, name)

    def call(*args, **kwargs):
        return method(default_context(), *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


softmax = _module_level("softmax")
log_softmax = _module_level("log_softmax")
sinusoidal = _module_level("sinusoidal")
sinusoidal_add = _module_level("sinusoidal_add")
rope = _module_level("rope")
alibi_slopes = _module_level("alibi_slopes")
sdpa = _module_level("sdpa")
sdpa_varlen = _module_level("sdpa_varlen")
convert = _module_level("convert")
rope_cache = _module_level("rope_cache")
rope_cached = _module_level("rope_cached")
pool = _module_level("pool")
pool_backward = _module_level("pool_backward")
pool_attention = _module_level("pool_attention")
pool_attention_backward = _module_level("pool_attention_backward")
softmax_backward = _module_level("softmax_backward")
log_softmax_backward = _module_level("log_softmax_backward")
rope_backward = _module_level("rope_backward")
sdpa_backward = _module_level("sdpa_backward")
sdpa_varlen_backward = _module_level("sdpa_varlen_backward")
