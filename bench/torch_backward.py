"""The SDPA backward of PyTorch's CPU path next to libattn's, same process,
same inputs, same threads (issue 14's comparison at L=4096).

PyTorch 1.13 has no public scaled_dot_product_attention; its CPU attention
(torch.nn.functional._scaled_dot_product_attention, or the explicit
softmax(QK^T)V when absent) materialises the [L, L] weights, and autograd
keeps them for the backward. The time measured for each side is the backward
alone: torch's out.backward(dout) on a retained graph, libattn's
attn.sdpa_backward() from the forward's out and lse. Median of repeats.

    OPENBLAS_NUM_THREADS=1 ATTN_LIBRARY=build/default/src/libattn.so.0 \\
      PYTHONPATH=bindings/python /usr/bin/python3 bench/torch_backward.py [--quick]

On a shared machine the figures are noisy: the script prints the machine's
load during each row (busy cores from /proc/stat, this process included)."""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import attn


def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def timed(fn, budget, min_reps=3):
    fn()  # warm
    times = []
    t_end = time.perf_counter() + budget
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def torch_forward(q, k, v, causal):
    if hasattr(F, "_scaled_dot_product_attention"):
        return F._scaled_dot_product_attention(q, k, v, None, 0.0, False, causal)[0]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, -1) @ v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="L=4096, D=64 only")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--budget", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    attn.set_num_threads(args.threads)
    print("torch %s (%d threads) | libattn %s | %s | %s" % (
        torch.__version__, torch.get_num_threads(), attn.version_string(), attn.cpu_info(),
        attn.blas_info()))
    print("%4s %5s %4s %5s | %10s %10s | %7s | %11s %11s" % (
        "H", "L", "D", "causal", "torch ms", "libattn ms", "speedup", "max |diff|",
        "machine load"))
    Ds = (64,) if args.quick else (64, 128)
    rng = np.random.default_rng(0)
    for D in Ds:
        for causal in (False, True):
            B, H, L = 1, 8, 4096
            q, k, v, g = (rng.uniform(-1, 1, (B, H, L, D)).astype(np.float32)
                          for _ in range(4))
            tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
            tg = torch.from_numpy(g)
            c0 = busy()
            t0 = time.perf_counter()
            out = torch_forward(tq, tk, tv, causal)

            def torch_bwd():
                for t in (tq, tk, tv):
                    t.grad = None
                out.backward(tg, retain_graph=True)

            t_torch, _ = timed(torch_bwd, args.budget)
            o, lse = attn.sdpa(q, k, v, causal=causal, return_lse=True)
            res = {}

            def attn_bwd():
                res["g"] = attn.sdpa_backward(q, k, v, o, lse, g, causal=causal)

            t_attn, _ = timed(attn_bwd, args.budget)
            wall = time.perf_counter() - t0
            load = (busy() - c0) / wall
            diff = max(float(np.abs(a - t.grad.numpy()).max())
                       for a, t in zip(res["g"], (tq, tk, tv)))
            print("%4d %5d %4d %5s | %10.1f %10.1f | %6.2fx | %11.3g %11.2f" % (
                H, L, D, "yes" if causal else "no", t_torch * 1e3, t_attn * 1e3,
                t_torch / t_attn, diff, load))
            del out
    return 0


if __name__ == "__main__":
    sys.exit(main())
