"""Greedy decoding with attn.DecoderLayer and a paged attn.KVCache.

A toy one-layer model (random embeddings tied to the output head, one
attention block with grouped-query heads and RoPE with Llama-3 scaling)
reads two prompts of different lengths in one
forward, then generates tokens one step at a time: each step runs only the
new token through the layer, which appends its key and value to the cache
and attends over everything before it. At the end the generated sequences
are run again in one forward through a fresh cache, and the step-by-step
outputs must match it (the cache made decoding exact, not approximate).

    python3 decode_loop.py          (needs numpy and libattn)
"""
import numpy as np

import attn

V, E, HQ, HKV, D = 64, 64, 8, 2, 8  # vocabulary, width, heads, head dim
rng = np.random.default_rng(0)
emb = (rng.standard_normal((V, E)) / np.sqrt(E)).astype(np.float32)
layer = attn.DecoderLayer(E, HQ, HKV, D, rope={"theta": 10000.0},
                          rope_scaling={"scaling": "llama3", "factor": 8,
                                        "original_max_position": 16})
layer.load_state_dict({
    "q_proj.weight": rng.standard_normal((HQ * D, E)) / np.sqrt(E),
    "k_proj.weight": rng.standard_normal((HKV * D, E)) / np.sqrt(E),
    "v_proj.weight": rng.standard_normal((HKV * D, E)) / np.sqrt(E),
    "o_proj.weight": rng.standard_normal((E, HQ * D)) / np.sqrt(HQ * D),
})


def logits(y):
    """The next-token scores from the layer's output (the tied embeddings)."""
    return y @ emb.T


prompts = [[5, 17, 42, 8, 23, 1], [9, 30, 2]]
B, steps = len(prompts), 10
cache = attn.KVCache(B, HKV, D, paged=True, block_size=4, num_blocks=16)

# The prompts, padded to one [B, L, E] batch; n_new says how many rows each has.
L = max(len(p) for p in prompts)
n = np.array([len(p) for p in prompts])
x = np.zeros((B, L, E), np.float32)
for b, p in enumerate(prompts):
    x[b, :len(p)] = emb[p]
y = layer(x, cache, n)
last = logits(y[np.arange(B), n - 1])
tokens = [list(p) for p in prompts]
outs = [list(y[b, :n[b]]) for b in range(B)]
print("prompt lengths", list(n), "-> cache lengths", list(cache.lengths))

for step in range(steps):
    nxt = last.argmax(-1)  # greedy
    xs = emb[nxt][:, None, :]  # [B, 1, E]: one new token per sequence
    ys = layer(xs, cache)
    for b in range(B):
        tokens[b].append(int(nxt[b]))
        outs[b].append(ys[b, 0])
    last = logits(ys[:, 0])
print("cache lengths after %d steps" % steps, list(cache.lengths))
for b in range(B):
    print("sequence %d:" % b, prompts[b], "->", tokens[b][len(prompts[b]):])

# Self-check: the whole sequences in one forward through a fresh cache.
fresh = attn.KVCache(B, HKV, D, capacity=L + steps)
T = max(len(t) for t in tokens)
xf = np.zeros((B, T, E), np.float32)
for b, t in enumerate(tokens):
    xf[b, :len(t)] = emb[t]
yf = layer(xf, fresh, np.array([len(t) for t in tokens]))
for b, t in enumerate(tokens):
    got = np.array(outs[b])  # every token went through the layer once
    err = np.abs(got - yf[b, :len(t)]).max()
    assert err < 1e-4, "sequence %d: step-by-step differs from one forward by %g" % (b, err)
print("step-by-step decoding equals one forward over the whole sequences")
