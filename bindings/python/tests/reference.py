"""Independent float64 references in plain numpy, written from the formulas
in include/attn.h (no code shared with libattn or the binding)."""
import math

import numpy as np


def softmax(x, scale=1.0, mask=None, bool_mask=None, log=False):
    z = np.asarray(x, np.float64) * scale
    if mask is not None:
        z = z + np.asarray(mask, np.float64)
    if bool_mask is not None:
        z = np.where(np.asarray(bool_mask).astype(bool), z, -np.inf)
    out = np.empty(np.broadcast(z, z).shape)
    rows = z.reshape(-1, z.shape[-1])
    res = out.reshape(-1, z.shape[-1])
    for r in range(rows.shape[0]):
        row = rows[r]
        m = row.max()
        if m == -np.inf:
            res[r] = -np.inf if log else 0.0
            continue
        e = np.exp(row - m)
        s = e.sum()
        res[r] = (row - m - math.log(s)) if log else e / s
    return out


def sinusoidal(length, dim, layout="interleaved", base=10000.0, offset=0.0, positions=None):
    pos = (np.arange(length, dtype=np.float64) + offset) if positions is None \
        else np.asarray(positions, np.float64)
    pe = np.zeros((length, dim))
    h = dim // 2
    for c in range(dim):
        if layout == "interleaved":
            i = c // 2
            w = base ** (-2.0 * i / dim)
            pe[:, c] = np.sin(pos * w) if c % 2 == 0 else np.cos(pos * w)
            continue
        if c >= 2 * h:  # odd D: the last column stays 0
            continue
        i = c % h
        denom = (h - 1) if layout == "concat-shifted" else h
        w = base ** (-float(i) / denom)
        first = c < h
        if layout == "cos-sin":
            pe[:, c] = np.cos(pos * w) if first else np.sin(pos * w)
        else:
            pe[:, c] = np.sin(pos * w) if first else np.cos(pos * w)
    return pe


def rope(x, style="half", rotary_dim=None, theta=10000.0, positions=None):
    """x [B, H, L, D]; positions [B, L] (default 0..L-1)."""
    x = np.asarray(x, np.float64)
    B, H, L, D = x.shape
    r = D if rotary_dim is None else rotary_dim
    if positions is None:
        positions = np.broadcast_to(np.arange(L), (B, L))
    y = x.copy()
    for b in range(B):
        for l in range(L):
            p = float(positions[b][l])
            for i in range(r // 2):
                t = p * theta ** (-2.0 * i / r)
                ia, ib = (i, i + r // 2) if style == "half" else (2 * i, 2 * i + 1)
                a, bb = x[b, :, l, ia], x[b, :, l, ib]
                y[b, :, l, ia] = a * math.cos(t) - bb * math.sin(t)
                y[b, :, l, ib] = a * math.sin(t) + bb * math.cos(t)
    return y


def alibi_slopes_press(n):
    """The slopes as the ALiBi authors' code computes them (max_bias 8)."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes_press(2 * closest)[0::2][:n - closest]


def alibi_slopes(n, max_bias=8.0):
    p = 2 ** math.floor(math.log2(n))
    m0 = 2.0 ** (-max_bias / p)
    m1 = 2.0 ** (-max_bias / (2 * p))
    return np.array([m0 ** (h + 1) if h < p else m1 ** (2 * (h - p) + 1) for h in range(n)])


def sdpa(q, k, v, scale=None, mask=None, bool_mask=None, causal=False, align="top-left",
         window=None, kv_lens=None, alibi=None, sinks=None, softcap=None, q_offsets=None):
    """q [B,Hq,Lq,D], k [B,Hkv,Lk,D], v [B,Hkv,Lk,Dv] -> (out, lse, weights)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    m = None if mask is None else np.broadcast_to(np.asarray(mask, np.float64), (B, Hq, Lq, Lk))
    bm = None if bool_mask is None else np.broadcast_to(np.asarray(bool_mask).astype(bool),
                                                        (B, Hq, Lq, Lk))
    out = np.zeros((B, Hq, Lq, Dv))
    lse = np.zeros((B, Hq, Lq))
    w = np.zeros((B, Hq, Lq, Lk))
    for b in range(B):
        for h in range(Hq):
            kk, vv = k[b, h // G], v[b, h // G]
            for i in range(Lq):
                # The query's position among the keys (attn.h, attn_sdpa_params).
                if q_offsets is not None:
                    ip = q_offsets[b] + i
                elif align == "bottom-right":
                    ip = i + (Lk if kv_lens is None else kv_lens[b]) - Lq
                else:
                    ip = i
                s = scale * (kk @ q[b, h, i])
                if softcap is not None:
                    s = softcap * np.tanh(s / softcap)
                j = np.arange(Lk)
                if alibi is not None:
                    s = s + alibi[h] * (j - ip)
                if m is not None:
                    s = s + m[b, h, i]
                vis = np.ones(Lk, bool)
                if causal:
                    vis &= j <= ip
                if window is not None:
                    left = math.inf if window[0] is None else window[0]
                    right = math.inf if window[1] is None else window[1]
                    vis &= (j >= ip - left) & (j <= ip + right)
                if kv_lens is not None:
                    vis &= j < kv_lens[b]
                if bm is not None:
                    vis &= bm[b, h, i]
                s = np.where(vis, s, -np.inf)
                terms = list(s[vis])
                if sinks is not None:
                    terms.append(sinks[h])
                if not terms or max(terms) == -np.inf:
                    lse[b, h, i] = -np.inf
                    continue
                mx = max(terms)
                denom = sum(math.exp(t - mx) for t in terms)
                lse[b, h, i] = mx + math.log(denom)
                p = np.where(vis, np.exp(s - mx), 0.0) / denom
                w[b, h, i] = p
                out[b, h, i] = p @ vv
    return out, lse, w
