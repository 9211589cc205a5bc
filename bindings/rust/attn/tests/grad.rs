//! The gradients against float64 references (formulas from attn.h).
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]
mod common;
use attn::*;
use common::*;

#[test]
fn softmax_and_log_softmax_gradients() {
    let c = Context::with_threads(1).unwrap();
    let (rows, n) = (3, 6);
    let mut r = Rng::new(40);
    let (x, dy) = (r.vec(rows * n), r.vec(rows * n));
    let opts = SoftmaxOptions { scale: 2.0, ..Default::default() };
    for log in [false, true] {
        let mut y = vec![0f32; rows * n];
        let mut dx = vec![0f32; rows * n];
        let xv = View::<f32>::new(&x, &[rows, n]).unwrap();
        let mut yv = ViewMut::<f32>::new(&mut y, &[rows, n]).unwrap();
        if log {
            c.log_softmax(&xv, &mut yv, &opts).unwrap();
        } else {
            c.softmax(&xv, &mut yv, &opts).unwrap();
        }
        let (yr, dyr) = (View::new(&y, &[rows, n]).unwrap(), View::new(&dy, &[rows, n]).unwrap());
        let mut dxv = ViewMut::new(&mut dx, &[rows, n]).unwrap();
        if log {
            c.log_softmax_backward(&yr, &dyr, &mut dxv, None, &opts).unwrap();
        } else {
            c.softmax_backward(&yr, &dyr, &mut dxv, None, &opts).unwrap();
        }
        let mut want = Vec::new();
        for i in 0..rows {
            let p = softmax_row(&(0..n).map(|j| 2.0 * x[i * n + j] as f64).collect::<Vec<_>>());
            let g: Vec<f64> = dy[i * n..][..n].iter().map(|&v| v as f64).collect();
            if log {
                let s: f64 = g.iter().sum();
                want.extend((0..n).map(|j| 2.0 * (g[j] - p[j] * s)));
            } else {
                let s: f64 = (0..n).map(|j| p[j] * g[j]).sum();
                want.extend((0..n).map(|j| 2.0 * p[j] * (g[j] - s)));
            }
        }
        assert_close(&dx, &want, 1e-5);
    }
    // Gradients over another axis are refused, not computed over the last.
    let mut dx = vec![0f32; rows * n];
    let v = View::<f32>::new(&x, &[rows, n]).unwrap();
    let e = c
        .softmax_backward(
            &v,
            &v,
            &mut ViewMut::new(&mut dx, &[rows, n]).unwrap(),
            None,
            &SoftmaxOptions { axis: -2, ..Default::default() },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{}", e);
}

#[test]
fn rope_gradient_is_the_inverse_rotation() {
    let c = Context::with_threads(1).unwrap();
    let (b, h, l, d) = (1, 2, 3, 6);
    let g = Rng::new(41).vec(b * h * l * d);
    let mut dx = g.clone();
    let opts = RopeOptions { offset: 4, ..Default::default() };
    c.rope_backward(&mut ViewMut::new(&mut dx, &[b, h, l, d]).unwrap(), &opts).unwrap();
    let mut want: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    for hh in 0..h {
        for ll in 0..l {
            rope_vec(&mut want[(hh * l + ll) * d..][..d], -((4 + ll) as f64), 10000.0, false);
        }
    }
    assert_close(&dx, &want, 1e-6);
}

// dq, dk, dv of causal (bottom-right) grouped-query attention in float64:
// P = softmax(S), dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO * O)),
// dQ = scale dS K, dK = scale dS^T Q.
#[allow(clippy::type_complexity)]
fn sdpa_grad_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for h in 0..hq {
        let g = h / (hq / hkv);
        let qh = |i: usize, t: usize| q[(h * lq + i) * d + t] as f64;
        let kh = |j: usize, t: usize| k[(g * lk + j) * d + t] as f64;
        let vh = |j: usize, t: usize| v[(g * lk + j) * d + t] as f64;
        let doh = |i: usize, t: usize| dout[(h * lq + i) * d + t] as f64;
        for i in 0..lq {
            let z: Vec<f64> = (0..lk)
                .map(|j| {
                    if j + lq <= i + lk {
                        scale * (0..d).map(|t| qh(i, t) * kh(j, t)).sum::<f64>()
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            let p = softmax_row(&z);
            let o: Vec<f64> = (0..d).map(|t| (0..lk).map(|j| p[j] * vh(j, t)).sum()).collect();
            let di: f64 = (0..d).map(|t| doh(i, t) * o[t]).sum();
            for j in 0..lk {
                let dp: f64 = (0..d).map(|t| doh(i, t) * vh(j, t)).sum();
                let ds = p[j] * (dp - di);
                for t in 0..d {
                    dq[(h * lq + i) * d + t] += scale * ds * kh(j, t);
                    dk[(g * lk + j) * d + t] += scale * ds * qh(i, t);
                    dv[(g * lk + j) * d + t] += p[j] * doh(i, t);
                }
            }
        }
    }
    (dq, dk, dv)
}

#[test]
fn sdpa_gradients_causal_grouped_query() {
    let c = Context::with_threads(2).unwrap();
    let (hq, hkv, lq, lk, d) = (4, 2, 3, 5, 4);
    let mut r = Rng::new(42);
    let (q, k, v) = (r.vec(hq * lq * d), r.vec(hkv * lk * d), r.vec(hkv * lk * d));
    let dout = r.vec(hq * lq * d);
    let opts = SdpaOptions { causal: true, align: Align::BottomRight, ..Default::default() };
    let (qd, kd) = ([1, hq, lq, d], [1, hkv, lk, d]);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; hq * lq];
    c.sdpa_with(
        &View::<f32>::new(&q, &qd).unwrap(),
        &View::<f32>::new(&k, &kd).unwrap(),
        &View::<f32>::new(&v, &kd).unwrap(),
        &mut ViewMut::<f32>::new(&mut out, &qd).unwrap(),
        &opts,
        SdpaOutputs {
            lse: Some(&mut ViewMut::new(&mut lse, &[1, hq, lq]).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    let backward = |dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], extra: SdpaGradOutputs| {
        c.sdpa_backward(
            &View::new(&q, &qd).unwrap(),
            &View::new(&k, &kd).unwrap(),
            &View::new(&v, &kd).unwrap(),
            &View::new(&out, &qd).unwrap(),
            &View::new(&lse, &[1, hq, lq]).unwrap(),
            &View::new(&dout, &qd).unwrap(),
            &mut ViewMut::new(dq, &qd).unwrap(),
            &mut ViewMut::new(dk, &kd).unwrap(),
            &mut ViewMut::new(dv, &kd).unwrap(),
            &opts,
            extra,
        )
    };
    backward(&mut dq, &mut dk, &mut dv, Default::default()).unwrap();
    let (wq, wk, wv) = sdpa_grad_reference(&q, &k, &v, &dout, hq, hkv, lq, lk, d);
    assert_close(&dq, &wq, 1e-5);
    assert_close(&dk, &wk, 1e-5);
    assert_close(&dv, &wv, 1e-5);
    // dsinks without sinks: refused; a dsinks slice of the wrong length: refused here.
    let mut ds = vec![0f32; 3];
    let extra = SdpaGradOutputs { dsinks: Some(&mut ds), ..Default::default() };
    let e = backward(&mut dq, &mut dk, &mut dv, extra).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{}", e);
}

#[test]
fn sdpa_varlen_gradients_per_sequence() {
    let c = Context::with_threads(2).unwrap();
    let (hq, hkv, d) = (2, 1, 4);
    let (cu_q, cu_k) = ([0i64, 2, 5], [0i64, 4, 7]);
    let (tq, tk) = (5, 7);
    let mut r = Rng::new(43);
    let (q, k, v, dout) =
        (r.vec(tq * hq * d), r.vec(tk * hkv * d), r.vec(tk * hkv * d), r.vec(tq * hq * d));
    let opts = SdpaOptions { causal: true, align: Align::BottomRight, ..Default::default() };
    let (qd, kd) = ([tq, hq, d], [tk, hkv, d]);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; hq * tq];
    c.sdpa_varlen(
        &View::<f32>::new(&q, &qd).unwrap(),
        &View::<f32>::new(&k, &kd).unwrap(),
        &View::<f32>::new(&v, &kd).unwrap(),
        &mut ViewMut::<f32>::new(&mut out, &qd).unwrap(),
        &cu_q,
        &cu_k,
        &opts,
        Some(&mut ViewMut::new(&mut lse, &[hq, tq]).unwrap()),
    )
    .unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    c.sdpa_varlen_backward(
        &View::new(&q, &qd).unwrap(),
        &View::new(&k, &kd).unwrap(),
        &View::new(&v, &kd).unwrap(),
        &View::new(&out, &qd).unwrap(),
        &View::new(&lse, &[hq, tq]).unwrap(),
        &View::new(&dout, &qd).unwrap(),
        &mut ViewMut::new(&mut dq, &qd).unwrap(),
        &mut ViewMut::new(&mut dk, &kd).unwrap(),
        &mut ViewMut::new(&mut dv, &kd).unwrap(),
        &cu_q,
        &cu_k,
        &opts,
        Default::default(),
    )
    .unwrap();
    // Each sequence as [H, L, D] through the reference, scattered back.
    let (mut wq, mut wk, mut wv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let gather = |a: &[f32], h: usize, t0: usize, t1: usize| -> Vec<f32> {
        (0..h)
            .flat_map(|hh| (t0..t1).flat_map(move |t| a[(t * h + hh) * d..][..d].to_vec()))
            .collect()
    };
    let scatter = |dst: &mut [f64], src: &[f64], h: usize, t0: usize, t1: usize| {
        for hh in 0..h {
            for (i, t) in (t0..t1).enumerate() {
                dst[(t * h + hh) * d..][..d].copy_from_slice(&src[(hh * (t1 - t0) + i) * d..][..d]);
            }
        }
    };
    for s in 0..2 {
        let (q0, q1, k0, k1) =
            (cu_q[s] as usize, cu_q[s + 1] as usize, cu_k[s] as usize, cu_k[s + 1] as usize);
        let (gq, gk, gv) = sdpa_grad_reference(
            &gather(&q, hq, q0, q1),
            &gather(&k, hkv, k0, k1),
            &gather(&v, hkv, k0, k1),
            &gather(&dout, hq, q0, q1),
            hq,
            hkv,
            q1 - q0,
            k1 - k0,
            d,
        );
        scatter(&mut wq, &gq, hq, q0, q1);
        scatter(&mut wk, &gk, hkv, k0, k1);
        scatter(&mut wv, &gv, hkv, k0, k1);
    }
    assert_close(&dq, &wq, 1e-5);
    assert_close(&dk, &wk, 1e-5);
    assert_close(&dv, &wv, 1e-5);
}

#[test]
fn pool_gradients_every_mode() {
    let c = Context::with_threads(2).unwrap();
    let (b, l, d) = (2, 4, 3);
    let mut r = Rng::new(44);
    let (x, dout, scores) = (r.vec(b * l * d), r.vec(b * d), r.vec(b * l));
    let lengths = [2i64, 4];
    for mode in [PoolMode::Sum, PoolMode::Mean, PoolMode::Max, PoolMode::Weighted] {
        let weighted = mode == PoolMode::Weighted;
        let opts = PoolOptions {
            mode,
            lengths: Some(&lengths),
            scores: if weighted { Some(View::new(&scores, &[b, l]).unwrap()) } else { None },
            ..Default::default()
        };
        let mut dx = vec![f32::NAN; b * l * d];
        let mut ds = vec![f32::NAN; b * l];
        let mut dsv = ViewMut::new(&mut ds, &[b, l]).unwrap();
        c.pool_backward(
            &View::new(&x, &[b, l, d]).unwrap(),
            &View::new(&dout, &[b, d]).unwrap(),
            &mut ViewMut::new(&mut dx, &[b, l, d]).unwrap(),
            if weighted { Some(&mut dsv) } else { None },
            &opts,
        )
        .unwrap();
        let (mut want, mut want_ds) = (vec![0.0; b * l * d], vec![0.0; b * l]);
        for bi in 0..b {
            let n = lengths[bi] as usize;
            let xs = |ll: usize, t: usize| x[(bi * l + ll) * d + t] as f64;
            let g = |t: usize| dout[bi * d + t] as f64;
            let w = softmax_row(&(0..n).map(|ll| scores[bi * l + ll] as f64).collect::<Vec<_>>());
            let y: Vec<f64> = (0..d).map(|t| (0..n).map(|ll| w[ll] * xs(ll, t)).sum()).collect();
            for t in 0..d {
                let arg = (0..n).fold(0, |a, ll| if xs(ll, t) > xs(a, t) { ll } else { a });
                for ll in 0..n {
                    want[(bi * l + ll) * d + t] = match mode {
                        PoolMode::Sum => g(t),
                        PoolMode::Mean => g(t) / n as f64,
                        PoolMode::Max => {
                            if ll == arg {
                                g(t)
                            } else {
                                0.0
                            }
                        }
                        PoolMode::Weighted => w[ll] * g(t),
                    };
                }
            }
            for ll in 0..n {
                let gx: f64 = (0..d).map(|t| g(t) * xs(ll, t)).sum();
                let gy: f64 = (0..d).map(|t| g(t) * y[t]).sum();
                want_ds[bi * l + ll] = w[ll] * (gx - gy);
            }
        }
        assert_close(&dx, &want, 1e-6);
        if weighted {
            assert_close(&ds, &want_ds, 1e-6);
        }
    }
}

#[test]
fn pool_attention_gradients() {
    let c = Context::with_threads(2).unwrap();
    let (b, hq, l, d) = (2, 2, 4, 4);
    let mut r = Rng::new(45);
    let (qs, k, v, dout) = (r.vec(hq * d), r.vec(b * l * d), r.vec(b * l * d), r.vec(b * hq * d));
    let mut out = vec![0f32; b * hq * d];
    let mut lse = vec![0f32; b * hq];
    let (qv, kv, vv) = (
        View::<f32>::new(&qs, &[hq, 1, d]).unwrap(),
        View::<f32>::new(&k, &[b, 1, l, d]).unwrap(),
        View::<f32>::new(&v, &[b, 1, l, d]).unwrap(),
    );
    c.pool_attention(
        &qv,
        &kv,
        &vv,
        &mut ViewMut::<f32>::new(&mut out, &[b, hq, 1, d]).unwrap(),
        &Default::default(),
        PoolAttentionOutputs {
            lse: Some(&mut ViewMut::new(&mut lse, &[b, hq, 1]).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0f32; qs.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    c.pool_attention_backward(
        &qv,
        &kv,
        &vv,
        &View::new(&out, &[b, hq, 1, d]).unwrap(),
        &View::new(&lse, &[b, hq, 1]).unwrap(),
        &View::new(&dout, &[b, hq, 1, d]).unwrap(),
        &mut ViewMut::new(&mut dq, &[hq, 1, d]).unwrap(),
        &mut ViewMut::new(&mut dk, &[b, 1, l, d]).unwrap(),
        &mut ViewMut::new(&mut dv, &[b, 1, l, d]).unwrap(),
        &Default::default(),
    )
    .unwrap();
    // Per batch: SDPA of one query row per head over all keys (the
    // reference's bottom-right causal mask hides nothing for Lq = 1).
    let (mut wq, mut wk, mut wv) = (vec![0.0; qs.len()], Vec::new(), Vec::new());
    for bi in 0..b {
        let (gq, gk, gv) = sdpa_grad_reference(
            &qs,
            &k[bi * l * d..][..l * d],
            &v[bi * l * d..][..l * d],
            &dout[bi * hq * d..][..hq * d],
            hq,
            1,
            1,
            l,
            d,
        );
        wq.iter_mut().zip(&gq).for_each(|(a, g)| *a += g);
        wk.extend(gk);
        wv.extend(gv);
    }
    assert_close(&dq, &wq, 1e-5);
    assert_close(&dk, &wk, 1e-5);
    assert_close(&dv, &wv, 1e-5);
}
