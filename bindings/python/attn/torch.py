"""libattn as PyTorch autograd functions (imported only where torch is).

    import attn.torch as at
    out = at.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()          # q.grad, k.grad, v.grad from libattn

scaled_dot_product_attention() takes the arguments of PyTorch 2's
torch.nn.functional.scaled_dot_product_attention (query [..., L, E], key
[..., S, E], value [..., S, Ev], attn_mask boolean (True = attend) or
additive, broadcast to [..., L, S]; is_causal top-left; scale None =
1/sqrt(E)), so it can replace it; dropout_p other than 0 is refused
(libattn has no dropout). Leading axes: one (heads) or two (batch, heads);
key/value may have fewer heads than query (grouped-query attention).
Differences from PyTorch: a row that sees no key gives zeros (PyTorch:
NaN), and its gradients are zeros.

softmax(x, dim) and log_softmax(x, dim) are the libattn row kernels with
their backward passes; pool(x, mode, scores=None, lengths=None, keep=None)
is attn.pool (sum / mean / max / weighted over the sequence axis of
x [B, L, D] or [B, H, L, D]) with gradients for x and the scores;
pool_attention(queries, key, value=None, ...) is attn.pool_attention
(learned queries) with gradients for the queries, key and value.

CPU float32 tensors that are contiguous (where the library needs it) are
passed without any copy: numpy views share their memory. Other floating
tensors are converted (a copy) and the results converted back to the input's
dtype; integer tensors (masks included: bool or floating) are a TypeError.
Computation is float32 in any case."""
import numpy as np
import torch as _torch

from . import _api

__all__ = ["scaled_dot_product_attention", "softmax", "log_softmax", "pool", "pool_attention"]


def _tensor(t, fn, name, boolean=False):
    """t when it is a floating tensor (a bool one too for a mask): an integer
    tensor was converted to float32 and the result back, so softmax of an
    int64 tensor came out as zeros and an int64 1/0 attn_mask was added to
    the logits (masking nothing); a NumPy array failed with AttributeError."""
    if t is None:
        return t
    if not isinstance(t, _torch.Tensor):
        raise TypeError("attn.torch.%s: %s must be a torch tensor, not %s"
                        % (fn, name, type(t).__name__))
    if not (t.dtype.is_floating_point or (boolean and t.dtype == _torch.bool)):
        raise TypeError("attn.torch.%s: %s has dtype %s but must be floating%s"
                        % (fn, name, t.dtype, " or bool (True = attend)" if boolean else ""))
    return t


def _np(t):
    """A float32 numpy view of t (no copy when t is a contiguous CPU float32
    tensor), else of a float32 contiguous copy."""
    t = t.detach()
    if t.device.type != "cpu":
        raise ValueError("attn.torch: tensors must be on the CPU, not %s" % t.device)
    if t.dtype != _torch.float32 or not t.is_contiguous():
        t = t.to(_torch.float32).contiguous()
    return t.numpy()


def _back(a, like):
    """numpy result -> tensor of `like`'s dtype (zero-copy for float32)."""
    t = _torch.from_numpy(a)
    return t if like.dtype == _torch.float32 else t.to(like.dtype)


def _mask_args(mask):
    if mask is None:
        return {}
    if mask.dtype == _torch.bool:
        return {"bool_mask": _np_bool(mask)}
    return {"mask": _np(mask)}


def _np_bool(m):
    m = m.detach()
    if m.device.type != "cpu":
        raise ValueError("attn.torch: tensors must be on the CPU, not %s" % m.device)
    return m.contiguous().numpy()


class _SDPA(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale):
        kw = dict(causal=bool(is_causal), scale=scale, **_mask_args(mask))
        out, lse = _api.sdpa(_np(q), _np(k), _np(v), return_lse=True, **kw)
        ctx.kw = kw
        ctx.save_for_backward(q, k, v, mask, _torch.from_numpy(out), _torch.from_numpy(lse))
        return _back(out, q)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, lse = ctx.saved_tensors
        want_dmask = (mask is not None and mask.dtype != _torch.bool
                      and ctx.needs_input_grad[3])
        res = _api.sdpa_backward(_np(q), _np(k), _np(v), out.numpy(), lse.numpy(), _np(dout),
                                 return_dmask=want_dmask, **ctx.kw)
        dq, dk, dv = (_back(g, t) for g, t in zip(res[:3], (q, k, v)))
        dmask = None
        if want_dmask:
            full = _torch.from_numpy(res[3])  # [B, H, L, S] (or [H, L, S])
            # the mask was broadcast to that shape: its gradient sums those axes
            dmask = full.sum_to_size(mask.shape).to(mask.dtype)
        return dq, dk, dv, dmask, None, None


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None):
    """softmax(query key^T * scale + mask) value, with gradients (see the
    module docstring). Same arguments as PyTorch 2's function."""
    fn = "scaled_dot_product_attention"
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        _tensor(t, fn, name)
    _tensor(attn_mask, fn, "attn_mask", boolean=True)
    if dropout_p != 0.0:
        raise ValueError("attn.torch.scaled_dot_product_attention: dropout_p = %r but libattn "
                         "has no dropout; only dropout_p=0.0 is supported" % (dropout_p,))
    if attn_mask is not None and is_causal:
        raise ValueError("attn.torch.scaled_dot_product_attention: attn_mask and is_causal "
                         "cannot both be set (as in PyTorch)")
    if query.dim() not in (3, 4):
        raise ValueError("attn.torch.scaled_dot_product_attention: query has %d dims; libattn "
                         "takes [H, L, E] or [B, H, L, E]" % query.dim())
    return _SDPA.apply(query, key, value, attn_mask, is_causal, scale)


class _Softmax(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, log):
        xm = x.movedim(dim, -1)
        f = _api.log_softmax if log else _api.softmax
        y = _back(f(_np(xm)), x).movedim(-1, dim)
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        f = _api.log_softmax_backward if ctx.log else _api.softmax_backward
        dx = f(_np(y.movedim(ctx.dim, -1)), _np(dy.movedim(ctx.dim, -1)))
        return _back(dx, y).movedim(-1, ctx.dim), None, None


def _dim(x, dim, fn):
    """dim checked here: movedim raised torch's IndexError (out of range)
    or an unnamed TypeError (None)."""
    _tensor(x, fn, "x")
    d = _api._int64(dim, "attn.torch." + fn, "dim")
    n = max(x.dim(), 1)
    if not -n <= d < n:
        raise ValueError("attn.torch.%s: dim = %d is out of range for %d dims" % (fn, d, x.dim()))
    return d


def softmax(x, dim):
    """torch.softmax(x, dim) through libattn, with its backward."""
    return _Softmax.apply(x, _dim(x, dim, "softmax"), False)


def log_softmax(x, dim):
    """torch.log_softmax(x, dim) through libattn, with its backward."""
    return _Softmax.apply(x, _dim(x, dim, "log_softmax"), True)


class _Pool(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scores, mode, lengths, keep):
        kw = dict(scores=None if scores is None else _np(scores), lengths=lengths,
                  keep=None if keep is None else _np_bool(keep))
        ctx.kw, ctx.mode = kw, mode
        ctx.save_for_backward(x, scores)
        return _back(_api.pool(_np(x), mode, **kw), x)

    @staticmethod
    def backward(ctx, dout):
        x, scores = ctx.saved_tensors
        want_ds = scores is not None and ctx.needs_input_grad[1]
        res = _api.pool_backward(_np(x), _np(dout), ctx.mode, return_dscores=want_ds, **ctx.kw)
        if want_ds:
            return _back(res[0], x), _back(res[1], scores), None, None, None
        return _back(res, x), None, None, None, None


def pool(x, mode="sum", *, scores=None, lengths=None, keep=None):
    """attn.pool over x's sequence axis (see attn.Context.pool), with the
    gradients of x and, for mode "weighted", of scores. lengths: a list or
    array of ints; keep: a bool tensor, True = keep (no gradient)."""
    _tensor(x, "pool", "x")
    _tensor(scores, "pool", "scores")
    _tensor(keep, "pool", "keep", boolean=True)
    return _Pool.apply(x, scores, mode, lengths, keep)


class _PoolAttention(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, k, v, scale, lengths, keep):
        kw = dict(scale=scale, lengths=lengths, keep=None if keep is None else _np_bool(keep))
        out, lse = _api.pool_attention(_np(queries), _np(k), _np(v), return_lse=True, **kw)
        ctx.kw = kw
        ctx.save_for_backward(queries, k, v, _torch.from_numpy(out), _torch.from_numpy(lse))
        return _back(out, queries)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _api.pool_attention_backward(_np(q), _np(k), _np(v), out.numpy(),
                                                  lse.numpy(), _np(dout), **ctx.kw)
        return _back(dq, q), _back(dk, k), _back(dv, v), None, None, None


def pool_attention(queries, key, value=None, *, scale=None, lengths=None, keep=None):
    """attn.pool_attention (see attn.Context.pool_attention) with the
    gradients of queries, key and value (value None: key is both, and its
    gradient sums the two)."""
    for t, name in ((queries, "queries"), (key, "key"), (value, "value")):
        _tensor(t, "pool_attention", name)
    _tensor(keep, "pool_attention", "keep", boolean=True)
    return _PoolAttention.apply(queries, key, key if value is None else value, scale, lengths,
                                keep)
