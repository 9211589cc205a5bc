//! KV caches and the decoder layer: incremental decoding equals the float64
//! reference over the whole sequence.
#![allow(clippy::needless_range_loop)]
mod common;
use attn::*;
use common::*;

const B: usize = 2;
const HKV: usize = 2;
const HQ: usize = 4;
const D: usize = 4;

// Appends T tokens one step at a time (sequence 1 skips every third step)
// and checks each step's attention against the reference over the keys
// appended so far.
fn decode_matches_reference(cache: &mut KvCache<'_>, ctx: &Context) {
    let steps = 6;
    let mut r = Rng::new(20);
    let mut keys: Vec<Vec<Vec<f32>>> = vec![vec![Vec::new(); HKV]; B]; // [b][h] -> rows
    let mut vals = keys.clone();
    for step in 0..steps {
        let (kn, vn, q) = (r.vec(B * HKV * D), r.vec(B * HKV * D), r.vec(B * HQ * D));
        let n_new = [1i64, (step % 3 != 2) as i64];
        cache
            .append(
                &View::new(&kn, &[B, HKV, 1, D]).unwrap(),
                &View::new(&vn, &[B, HKV, 1, D]).unwrap(),
                Some(&n_new),
                None,
            )
            .unwrap();
        for b in 0..B {
            if n_new[b] == 1 {
                for h in 0..HKV {
                    keys[b][h].extend_from_slice(&kn[(b * HKV + h) * D..][..D]);
                    vals[b][h].extend_from_slice(&vn[(b * HKV + h) * D..][..D]);
                }
            }
        }
        let mut out = vec![0f32; B * HQ * D];
        cache
            .attend(
                &View::new(&q, &[B, HQ, 1, D]).unwrap(),
                &mut ViewMut::new(&mut out, &[B, HQ, 1, D]).unwrap(),
                Some(&n_new),
                &SdpaOptions { causal: true, ..Default::default() },
                None,
            )
            .unwrap();
        let mut want = Vec::new();
        for b in 0..B {
            for h in 0..HQ {
                if n_new[b] == 0 {
                    want.extend(vec![0.0; D]); // rows past n_new are zeros
                    continue;
                }
                let g = h / (HQ / HKV);
                let f = |a: &[f32]| a.iter().map(|&x| x as f64).collect::<Vec<f64>>();
                let n = keys[b][g].len() / D;
                want.extend(attend(
                    &f(&q[(b * HQ + h) * D..][..D]),
                    &f(&keys[b][g]),
                    &f(&vals[b][g]),
                    1,
                    n,
                    D,
                    D,
                    0.5,
                    &|_, _| true,
                ));
            }
        }
        assert_close(&out, &want, 1e-5);
    }
    assert_eq!(cache.lens().unwrap(), vec![6, 4]);
    // Read back what sequence 1 holds.
    let mut k = vec![0f32; HKV * 4 * D];
    cache.read(1, 0, Some(&mut ViewMut::new(&mut k, &[HKV, 4, D]).unwrap()), None).unwrap();
    let want: Vec<f64> = (0..HKV).flat_map(|h| keys[1][h].iter().map(|&x| x as f64)).collect();
    assert_close(&k, &want, 0.0);
    let _ = ctx;
}

// Appends n zero tokens to every sequence.
fn append_zeros(c: &mut KvCache<'_>, n: usize) -> Result<()> {
    let z = vec![0f32; B * HKV * n * D];
    let t = View::new(&z, &[B, HKV, n, D])?;
    c.append(&t, &t, None, None)
}

#[test]
fn contiguous_cache_decode() {
    let ctx = Context::with_threads(1).unwrap();
    let mut c = KvCache::contiguous(&ctx, B, HKV, D, 0, 8).unwrap();
    decode_matches_reference(&mut c, &ctx);
    let info = c.info().unwrap();
    assert!(!info.paged && info.capacity == 8 && info.value_dim == D);
    // Past the capacity: refused, nothing appended.
    let e = append_zeros(&mut c, 3).unwrap_err();
    assert!(matches!(e, Error::InvalidArg(_)), "{}", e);
    assert_eq!(c.lens().unwrap(), vec![6, 4]);
    c.truncate(0, 2).unwrap();
    c.reset(Some(1)).unwrap();
    assert_eq!(c.lens().unwrap(), vec![2, 0]);
}

#[test]
fn paged_cache_decode_and_pool_exhaustion() {
    let ctx = Context::with_threads(2).unwrap();
    let mut c = KvCache::paged(&ctx, B, HKV, D, 0, 2, 6).unwrap();
    decode_matches_reference(&mut c, &ctx);
    let info = c.info().unwrap();
    assert!(info.paged && info.block_size == 2 && info.num_blocks == 6);
    assert_eq!(info.free_blocks, 1); // 3 + 2 blocks held
    c.copy_seq(1, 0).unwrap();
    assert_eq!(c.lens().unwrap(), vec![6, 6]);
    let e = append_zeros(&mut c, 4).unwrap_err();
    assert!(matches!(e, Error::NoMemory(_)), "{}", e);
    assert_eq!(c.lens().unwrap(), vec![6, 6]);
}

#[test]
fn wrapped_cache_writes_the_caller_memory() {
    let ctx = Context::with_threads(1).unwrap();
    let (cap, dv) = (3, 2);
    let mut km = vec![0f32; B * HKV * cap * D];
    let mut vm = vec![0f32; B * HKV * cap * dv];
    let kn = Rng::new(21).vec(B * HKV * D);
    let vn = Rng::new(22).vec(B * HKV * dv);
    {
        let mut c = KvCache::wrap(
            &ctx,
            ViewMut::new(&mut km, &[B, HKV, cap, D]).unwrap(),
            ViewMut::new(&mut vm, &[B, HKV, cap, dv]).unwrap(),
            Some(&[1, 0]),
        )
        .unwrap();
        c.append(
            &View::new(&kn, &[B, HKV, 1, D]).unwrap(),
            &View::new(&vn, &[B, HKV, 1, dv]).unwrap(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.lens().unwrap(), vec![2, 1]);
    }
    // Sequence 0 got the token at position 1, sequence 1 at position 0.
    assert_eq!(&km[D..2 * D], &kn[..D]);
    assert_eq!(&km[(HKV * cap) * D..][..D], &kn[HKV * D..][..D]);
    assert!(matches!(
        KvCache::wrap(
            &ctx,
            ViewMut::new(&mut km, &[B, HKV, cap, D]).unwrap(),
            ViewMut::new(&mut vm, &[B, HKV, cap, dv]).unwrap(),
            Some(&[1])
        ),
        Err(Error::Shape(_))
    ));
}

#[test]
fn cache_arrays_of_the_wrong_length() {
    let ctx = Context::with_threads(1).unwrap();
    let mut c = KvCache::contiguous(&ctx, B, HKV, D, 0, 4).unwrap();
    let z = vec![0f32; B * HKV * D];
    let v = View::new(&z, &[B, HKV, 1, D]).unwrap();
    assert!(matches!(c.append(&v, &v, Some(&[1]), None), Err(Error::Shape(_))));
    let mut out = vec![0f32; B * HKV * D];
    assert!(matches!(
        c.attend(
            &v,
            &mut ViewMut::new(&mut out, &[B, HKV, 1, D]).unwrap(),
            Some(&[1, 1, 1]),
            &Default::default(),
            None
        ),
        Err(Error::Shape(_))
    ));
    assert!(matches!(c.truncate(5, 0), Err(Error::InvalidArg(_))));
}

// The decoder layer's float64 reference: every token of sequence b at
// position p: q, k, v projections, half-split RoPE, causal grouped-query
// attention, output projection.
struct Weights {
    e: usize,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
}

fn layer_reference(w: &Weights, x: &[f32], l: usize) -> Vec<f64> {
    let e = w.e;
    let mut y = Vec::new();
    for b in 0..B {
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..l {
            let xt: Vec<f64> = x[(b * l + p) * e..][..e].iter().map(|&v| v as f64).collect();
            let mut q = linear(&w.wq, Some(&w.bq), &xt, HQ * D, e);
            let mut k = linear(&w.wk, Some(&w.bk), &xt, HKV * D, e);
            for h in 0..HQ {
                rope_vec(&mut q[h * D..][..D], p as f64, 10000.0, false);
            }
            for h in 0..HKV {
                rope_vec(&mut k[h * D..][..D], p as f64, 10000.0, false);
            }
            qs.push(q);
            ks.push(k);
            vs.push(linear(&w.wv, Some(&w.bv), &xt, HKV * D, e));
        }
        for p in 0..l {
            let mut a = Vec::new();
            for h in 0..HQ {
                let g = h / (HQ / HKV);
                let kk: Vec<f64> = (0..=p).flat_map(|j| ks[j][g * D..][..D].to_vec()).collect();
                let vv: Vec<f64> = (0..=p).flat_map(|j| vs[j][g * D..][..D].to_vec()).collect();
                a.extend(attend(&qs[p][h * D..][..D], &kk, &vv, 1, p + 1, D, D, 0.5, &|_, _| true));
            }
            y.extend(linear(&w.wo, None, &a, e, HQ * D));
        }
    }
    y
}

#[test]
fn decoder_layer_prefill_plus_decode_equals_the_reference() {
    let e = 12;
    let mut r = Rng::new(30);
    let w = Weights {
        e,
        wq: r.vec(HQ * D * e),
        wk: r.vec(HKV * D * e),
        wv: r.vec(HKV * D * e),
        wo: r.vec(e * HQ * D),
        bq: r.vec(HQ * D),
        bk: r.vec(HKV * D),
        bv: r.vec(HKV * D),
    };
    let (prompt, steps) = (5, 3);
    let l = prompt + steps;
    let x = r.vec(B * l * e);
    let want = layer_reference(&w, &x, l);
    let ctx = Context::with_threads(2).unwrap();
    let cfg = DecoderConfig {
        embed_dim: e,
        num_heads: HQ,
        num_kv_heads: HKV,
        head_dim: D,
        qkv_bias: true,
        rope: Some(RopeOptions::default()),
        ..Default::default()
    };
    for paged in [false, true] {
        let mut layer = DecoderLayer::new(&ctx, &cfg).unwrap();
        layer.set_weight(Weight::Q, &View::new(&w.wq, &[HQ * D, e]).unwrap()).unwrap();
        layer.set_weight(Weight::K, &View::new(&w.wk, &[HKV * D, e]).unwrap()).unwrap();
        layer.wrap_weight(Weight::V, View::new(&w.wv, &[HKV * D, e]).unwrap()).unwrap();
        layer.set_weight(Weight::O, &View::new(&w.wo, &[e, HQ * D]).unwrap()).unwrap();
        layer.set_weight(Weight::QBias, &View::new(&w.bq, &[HQ * D]).unwrap()).unwrap();
        layer.set_weight(Weight::KBias, &View::new(&w.bk, &[HKV * D]).unwrap()).unwrap();
        layer.set_weight(Weight::VBias, &View::new(&w.bv, &[HKV * D]).unwrap()).unwrap();
        let mut back = vec![0f32; HQ * D];
        layer.get_weight(Weight::QBias, &mut ViewMut::new(&mut back, &[HQ * D]).unwrap()).unwrap();
        assert_eq!(back, w.bq);
        let mut cache = if paged {
            KvCache::paged(&ctx, B, HKV, D, 0, 3, 8).unwrap()
        } else {
            KvCache::contiguous(&ctx, B, HKV, D, 0, l).unwrap()
        };
        let mut y = vec![0f32; B * l * e];
        // Prefill: the prompt of both sequences at once (a [B, prompt, E]
        // view of the [B, l, E] buffers).
        let s = [l * e, e, 1];
        layer
            .forward(
                &mut cache,
                &View::strided(&x, &[B, prompt, e], &s).unwrap(),
                &mut ViewMut::strided(&mut y, &[B, prompt, e], &s).unwrap(),
                None,
            )
            .unwrap();
        for t in prompt..l {
            let xt: Vec<f32> = (0..B).flat_map(|b| x[(b * l + t) * e..][..e].to_vec()).collect();
            let mut yt = vec![0f32; B * e];
            layer
                .forward(
                    &mut cache,
                    &View::new(&xt, &[B, 1, e]).unwrap(),
                    &mut ViewMut::new(&mut yt, &[B, 1, e]).unwrap(),
                    None,
                )
                .unwrap();
            for b in 0..B {
                y[(b * l + t) * e..][..e].copy_from_slice(&yt[b * e..][..e]);
            }
        }
        assert_close(&y, &want, 2e-5);
        assert_eq!(cache.lens().unwrap(), vec![l as i64; B]);
    }
}

#[test]
fn decoder_layer_refuses_a_cache_of_another_context_and_bad_counts() {
    let (c1, c2) = (Context::with_threads(1).unwrap(), Context::with_threads(1).unwrap());
    let cfg = DecoderConfig { embed_dim: 8, num_heads: 2, ..Default::default() };
    let mut layer = DecoderLayer::new(&c1, &cfg).unwrap();
    let mut other = KvCache::contiguous(&c2, 1, 2, 4, 0, 4).unwrap();
    let mut mine = KvCache::contiguous(&c1, 1, 2, 4, 0, 4).unwrap();
    let x = vec![0f32; 8];
    let mut y = vec![0f32; 8];
    let xv = View::new(&x, &[1, 1, 8]).unwrap();
    let e = layer
        .forward(&mut other, &xv, &mut ViewMut::new(&mut y, &[1, 1, 8]).unwrap(), None)
        .unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{}", e);
    let e = layer
        .forward(&mut mine, &xv, &mut ViewMut::new(&mut y, &[1, 1, 8]).unwrap(), Some(&[1, 1]))
        .unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{}", e);
    // Wrong embedding width: the library's message.
    let x2 = vec![0f32; 6];
    let mut y2 = vec![0f32; 6];
    let e = layer
        .forward(
            &mut mine,
            &View::new(&x2, &[1, 1, 6]).unwrap(),
            &mut ViewMut::new(&mut y2, &[1, 1, 6]).unwrap(),
            None,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && e.message().contains("attn_mha_forward"), "{}", e);
    assert!(matches!(
        DecoderLayer::new(&c1, &DecoderConfig { embed_dim: 8, num_heads: 3, ..Default::default() }),
        Err(Error::InvalidArg(_))
    ));
}
