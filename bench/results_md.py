#!/usr/bin/env python3
"""Markdown tables from `attn-bench --json` output (stdin or a file), for
bench/RESULTS.md:  attn-bench --json | bench/results_md.py"""
import json
import sys


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    rows = [json.loads(line) for line in src if line.startswith("{")]
    for r in rows:
        if r["op"] == "info":
            print(f"libattn {r['libattn']} | {r['cpu']} | {r['blas']}\n")
    print("| op | dtype | B | Hq | Hkv | L | D | causal | threads | ms | GFLOP/s | sgemm GFLOP/s "
          "| ratio_sgemm | naive ms | speedup_naive | extra MiB | other load |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["op"] not in ("sdpa", "sdpa_long", "sdpa_decode", "sdpa_backward", "mha_forward"):
            continue
        length = r["Lq"] if r["Lq"] == r["Lk"] else f"{r['Lq']}x{r['Lk']}"
        extra = None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] / 2**20
        print(f"| {r['op']} | {r.get('dtype', 'f32')} | {r['B']} | {r['Hq']} | {r['Hkv']} | {length} | {r['D']} "
              f"| {'yes' if r['causal'] else 'no'} | {r['threads']} "
              f"| {fmt(r['seconds'] and r['seconds'] * 1e3, '.2f')} | {fmt(r['gflops'], '.1f')} "
              f"| {fmt(r['sgemm_gflops'], '.1f')} | {fmt(r['ratio_sgemm'], '.3f')} "
              f"| {fmt(r['naive_seconds'] and r['naive_seconds'] * 1e3, '.2f')} "
              f"| {fmt(r['speedup_naive'], '.2f')} | {fmt(extra, '.2f')} "
              f"| {fmt(r.get('other_load'), '.2f')} |")
    dec = [r for r in rows if r["op"] in ("sdpa_decode", "kv_decode", "paged_decode")]
    if dec:
        print("\n| decode | shape | K/V dtype | threads | ms | K/V read GB/s | memcpy GB/s "
              "| ratio_memcpy | read-only GB/s | ratio_read | read-only on its pages | ratio_pages "
              "| other load |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in dec:
            keys = f"Lk={r['Lk']}" if r["op"] != "paged_decode" else f"Lk<={r['Lk']}"
            print(f"| {r['op']} | B={r['B']} Lq={r['Lq']} {keys} Hq={r['Hq']} Hkv={r['Hkv']} D={r['D']} "
                  f"| {r.get('dtype', 'f32')} | {r['threads']} "
                  f"| {fmt(r['seconds'] and r['seconds'] * 1e3, '.2f')} | {fmt(r['kv_gbps'], '.1f')} "
                  f"| {fmt(r['memcpy_gbps'], '.1f')} | {fmt(r['ratio_memcpy'], '.2f')} "
                  f"| {fmt(r.get('read_gbps'), '.1f')} | {fmt(r.get('ratio_read'), '.2f')} "
                  f"| {fmt(r.get('read_pages_gbps'), '.1f')} | {fmt(r.get('ratio_read_pages'), '.2f')} "
                  f"| {fmt(r.get('other_load'), '.2f')} |")
    vl = [r for r in rows if r["op"] == "sdpa_varlen"]
    if vl:
        print("\n| varlen (non-causal) | threads | ms | GFLOP/s | sgemm GFLOP/s | ratio_sgemm "
              "| same products via BLAS | ratio_products | tile kernel | ratio_tile | other load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in vl:
            print(f"| {r['sequences']} sequences of {r['L_min']}..{r['L_max']} tokens, "
                  f"H={r['H']} D={r['D']} | {r['threads']} "
                  f"| {fmt(r['seconds'] and r['seconds'] * 1e3, '.2f')} | {fmt(r['gflops'], '.1f')} "
                  f"| {fmt(r['sgemm_gflops'], '.1f')} | {fmt(r['ratio_sgemm'], '.3f')} "
                  f"| {fmt(r.get('products_gflops'), '.1f')} | {fmt(r.get('ratio_products'), '.3f')} "
                  f"| {fmt(r.get('tile_gflops'), '.1f')} | {fmt(r.get('ratio_tile'), '.3f')} "
                  f"| {fmt(r.get('other_load'), '.2f')} |")
    st = [r for r in rows if r["op"] in ("softmax", "rope", "sinusoidal")]
    if st:
        print("\n| streaming op | threads | ms | GB/s (read + write) | memcpy GB/s | ratio_memcpy "
              "| fastest repeats: GB/s / memcpy GB/s | ratio_best | other load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in st:
            if r["op"] == "softmax":
                what = f"softmax [{r['rows']}, {r['cols']}]"
                if r.get("mask", "none") != "none":
                    what += f", {r['mask']} mask [{r['cols']}]"
            elif r["op"] == "rope":
                what = f"rope [{r['B']}, {r['H']}, {r['L']}, {r['D']}]"
            else:
                what = f"sinusoidal_add [{r['B']}, {r['L']}, {r['D']}]"
            print(f"| {what} | {r['threads']} "
                  f"| {fmt(r['seconds'] and r['seconds'] * 1e3, '.2f')} | {fmt(r['gbps'], '.1f')} "
                  f"| {fmt(r.get('memcpy_gbps'), '.1f')} | {fmt(r.get('ratio_memcpy'), '.2f')} "
                  f"| {fmt(r.get('gbps_best'), '.1f')} / {fmt(r.get('memcpy_best_gbps'), '.1f')} "
                  f"| {fmt(r.get('ratio_best'), '.2f')} "
                  f"| {fmt(r.get('other_load'), '.2f')} |")

if __name__ == "__main__":
    main()
