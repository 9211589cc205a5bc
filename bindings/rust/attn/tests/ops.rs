//! The ops against float64 references (tests/common), and bad input giving
//! Err.
mod common;
use attn::*;
use common::*;

fn ctx() -> Context {
    Context::with_threads(2).expect("context")
}

#[test]
fn softmax_rows_with_masks_and_scale() {
    let c = ctx();
    let (rows, n) = (3, 7);
    let x = Rng::new(1).vec(rows * n);
    let keep: Vec<u8> = (0..n).map(|j| (j % 3 != 1) as u8).collect(); // [n], broadcast
    let mut y = vec![0f32; rows * n];
    let opts = SoftmaxOptions {
        scale: 0.5,
        bool_mask: Some(View::new(&keep, &[n]).unwrap()),
        ..Default::default()
    };
    c.softmax(
        &View::<f32>::new(&x, &[rows, n]).unwrap(),
        &mut ViewMut::<f32>::new(&mut y, &[rows, n]).unwrap(),
        &opts,
    )
    .unwrap();
    let mut want = Vec::new();
    for r in 0..rows {
        let z: Vec<f64> = (0..n)
            .map(|j| if keep[j] != 0 { 0.5 * x[r * n + j] as f64 } else { f64::NEG_INFINITY })
            .collect();
        want.extend(softmax_row(&z));
    }
    assert_close(&y, &want, 1e-6);
    for r in 0..rows {
        assert_eq!(y[r * n + 1], 0.0, "a masked entry is exactly 0");
    }
}

#[test]
fn log_softmax_over_the_first_axis_in_place() {
    let c = ctx();
    let (rows, n) = (4, 5);
    let x = Rng::new(2).vec(rows * n);
    let mut y = x.clone();
    c.log_softmax_inplace(
        &mut ViewMut::<f32>::new(&mut y, &[rows, n]).unwrap(),
        &SoftmaxOptions { axis: -2, ..Default::default() },
    )
    .unwrap();
    let mut want = vec![0.0; rows * n];
    for j in 0..n {
        let z: Vec<f64> = (0..rows).map(|r| x[r * n + j] as f64).collect();
        for (r, p) in softmax_row(&z).iter().enumerate() {
            want[r * n + j] = p.ln();
        }
    }
    assert_close(&y, &want, 1e-6);
}

#[test]
fn half_inputs_are_widened_exactly() {
    let c = ctx();
    let x = Rng::new(3).vec(16);
    let mut h = vec![0u16; 16];
    c.convert(&View::f32(&x, &[16]).unwrap(), &mut ViewMut::f16(&mut h, &[16]).unwrap()).unwrap();
    let mut y = vec![0f32; 16];
    c.softmax(
        &View::<F16>::new(&h, &[2, 8]).unwrap(),
        &mut ViewMut::<f32>::new(&mut y, &[2, 8]).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let mut want = Vec::new();
    for r in 0..2 {
        let z: Vec<f64> = h[r * 8..][..8].iter().map(|&b| f16_to_f64(b)).collect();
        assert!((z[0] - x[r * 8] as f64).abs() < 1e-3, "f16 rounding");
        want.extend(softmax_row(&z));
    }
    assert_close(&y, &want, 1e-6);
}

#[test]
fn sdpa_causal_grouped_query_with_lse() {
    let c = ctx();
    let (b, hq, hkv, lq, lk, d, dv) = (2, 4, 2, 5, 7, 8, 6);
    let mut r = Rng::new(4);
    let (q, k, v) = (r.vec(b * hq * lq * d), r.vec(b * hkv * lk * d), r.vec(b * hkv * lk * dv));
    let mut out = vec![0f32; b * hq * lq * dv];
    let mut lse = vec![0f32; b * hq * lq];
    c.sdpa_with(
        &View::<f32>::new(&q, &[b, hq, lq, d]).unwrap(),
        &View::<f32>::new(&k, &[b, hkv, lk, d]).unwrap(),
        &View::<f32>::new(&v, &[b, hkv, lk, dv]).unwrap(),
        &mut ViewMut::<f32>::new(&mut out, &[b, hq, lq, dv]).unwrap(),
        &SdpaOptions { causal: true, align: Align::BottomRight, ..Default::default() },
        SdpaOutputs {
            lse: Some(&mut ViewMut::new(&mut lse, &[b, hq, lq]).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_close(&out, &sdpa(&q, &k, &v, b, hq, hkv, lq, lk, d, dv, true), 1e-5);
    // lse of the last row of (0, 0): log sum exp over every key.
    let s: f64 = (0..lk)
        .map(|j| {
            ((0..d).map(|t| q[(lq - 1) * d + t] as f64 * k[j * d + t] as f64).sum::<f64>()
                / (d as f64).sqrt())
            .exp()
        })
        .sum();
    assert_close(&lse[lq - 1..lq], &[s.ln()], 1e-5);
}

#[test]
fn sdpa_on_a_blhd_buffer_through_strides() {
    let c = ctx();
    let (b, h, l, d) = (1, 3, 4, 8);
    let mut r = Rng::new(5);
    let (q, k, v) = (r.vec(b * l * h * d), r.vec(b * l * h * d), r.vec(b * l * h * d));
    let strides = [l * h * d, d, h * d, 1];
    let dims = [b, h, l, d];
    let mut out = vec![0f32; b * l * h * d];
    c.sdpa(
        &View::<f32>::strided(&q, &dims, &strides).unwrap(),
        &View::<f32>::strided(&k, &dims, &strides).unwrap(),
        &View::<f32>::strided(&v, &dims, &strides).unwrap(),
        &mut ViewMut::<f32>::strided(&mut out, &dims, &strides).unwrap(),
        &Default::default(),
    )
    .unwrap();
    // The reference on a [B, H, L, D] copy.
    let t = |a: &[f32]| -> Vec<f32> {
        let mut o = Vec::new();
        for hh in 0..h {
            for ll in 0..l {
                o.extend_from_slice(&a[(ll * h + hh) * d..][..d]);
            }
        }
        o
    };
    let want = sdpa(&t(&q), &t(&k), &t(&v), b, h, h, l, l, d, d, false);
    assert_close(&t(&out), &want, 1e-5);
}

#[test]
fn sdpa_varlen_attends_within_each_sequence() {
    let c = ctx();
    let (h, d) = (2, 4);
    let cu_q = [0i64, 3, 4];
    let cu_k = [0i64, 5, 9];
    let mut r = Rng::new(6);
    let (q, k, v) = (r.vec(4 * h * d), r.vec(9 * h * d), r.vec(9 * h * d));
    let mut out = vec![0f32; 4 * h * d];
    c.sdpa_varlen(
        &View::<f32>::new(&q, &[4, h, d]).unwrap(),
        &View::<f32>::new(&k, &[9, h, d]).unwrap(),
        &View::<f32>::new(&v, &[9, h, d]).unwrap(),
        &mut ViewMut::<f32>::new(&mut out, &[4, h, d]).unwrap(),
        &cu_q,
        &cu_k,
        &Default::default(),
        None,
    )
    .unwrap();
    let mut want = vec![0.0; 4 * h * d];
    for s in 0..2 {
        let (q0, q1, k0, k1) =
            (cu_q[s] as usize, cu_q[s + 1] as usize, cu_k[s] as usize, cu_k[s + 1] as usize);
        for hh in 0..h {
            let pick = |a: &[f32], t0: usize, t1: usize| -> Vec<f64> {
                (t0..t1)
                    .flat_map(|t| a[(t * h + hh) * d..][..d].iter().map(|&x| x as f64))
                    .collect()
            };
            let o = attend(
                &pick(&q, q0, q1),
                &pick(&k, k0, k1),
                &pick(&v, k0, k1),
                q1 - q0,
                k1 - k0,
                d,
                d,
                0.5,
                &|_, _| true,
            );
            for (i, t) in (q0..q1).enumerate() {
                want[(t * h + hh) * d..][..d].copy_from_slice(&o[i * d..][..d]);
            }
        }
    }
    assert_close(&out, &want, 1e-5);
}

#[test]
fn rope_both_styles_and_explicit_positions() {
    let c = ctx();
    let (b, h, l, d) = (2, 2, 3, 8);
    let x = Rng::new(7).vec(b * h * l * d);
    let positions: Vec<i64> = vec![5, 0, 9, 1, 2, 30];
    for &(style, inter) in &[(RopeStyle::HalfSplit, false), (RopeStyle::Interleaved, true)] {
        let mut y = x.clone();
        c.rope(
            &mut ViewMut::<f32>::new(&mut y, &[b, h, l, d]).unwrap(),
            &RopeOptions {
                style,
                theta: 500.0,
                positions: Some(&positions),
                rotary_dim: 6,
                ..Default::default()
            },
        )
        .unwrap();
        let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for bi in 0..b {
            for hh in 0..h {
                for ll in 0..l {
                    let row = &mut want[((bi * h + hh) * l + ll) * d..][..d];
                    rope_vec(&mut row[..6], positions[bi * l + ll] as f64, 500.0, inter);
                }
            }
        }
        assert_close(&y, &want, 1e-6);
    }
}

#[test]
fn rope_tables_then_rope_cached_equal_rope() {
    let c = ctx();
    let (p, r) = (16, 8);
    let mut cos = vec![0f32; p * r / 2];
    let mut sin = vec![0f32; p * r / 2];
    let factor = c
        .rope_cache_fill(
            &mut ViewMut::new(&mut cos, &[p, r / 2]).unwrap(),
            &mut ViewMut::new(&mut sin, &[p, r / 2]).unwrap(),
            &Default::default(),
        )
        .unwrap();
    assert_eq!(factor, 1.0);
    let want: Vec<f64> = (0..p)
        .flat_map(|pos| {
            (0..r / 2).map(move |i| (pos as f64 * 10000f64.powf(-2.0 * i as f64 / r as f64)).cos())
        })
        .collect();
    assert_close(&cos, &want, 1e-6);

    let (b, h, l) = (1, 2, 4);
    let x = Rng::new(8).vec(b * h * l * r);
    let ids: Vec<i64> = vec![3, 7, 0, 15];
    let mut y = vec![0f32; x.len()];
    c.rope_cached(
        &View::new(&x, &[b, h, l, r]).unwrap(),
        &mut ViewMut::new(&mut y, &[b, h, l, r]).unwrap(),
        &View::new(&cos, &[p, r / 2]).unwrap(),
        &View::new(&sin, &[p, r / 2]).unwrap(),
        &RopeCachedOptions { position_ids: Some(&ids), ..Default::default() },
    )
    .unwrap();
    let mut z = x.clone();
    c.rope(
        &mut ViewMut::<f32>::new(&mut z, &[b, h, l, r]).unwrap(),
        &RopeOptions { positions: Some(&ids), ..Default::default() },
    )
    .unwrap();
    let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    assert_close(&y, &z64, 1e-6);
}

#[test]
fn yarn_tables_carry_the_attention_factor() {
    let c = ctx();
    let (mut cos, mut sin) = (vec![0f32; 8 * 4], vec![0f32; 8 * 4]);
    let f = c
        .rope_cache_fill(
            &mut ViewMut::new(&mut cos, &[8, 4]).unwrap(),
            &mut ViewMut::new(&mut sin, &[8, 4]).unwrap(),
            &RopeCacheOptions {
                scaling: RopeScaling::Yarn,
                factor: 4.0,
                original_max_position: 4,
                ..Default::default()
            },
        )
        .unwrap();
    // m(s, 1) = 0.1 ln s + 1 (attn.h, ATTN_ROPE_SCALING_YARN).
    assert!((f - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12, "factor {}", f);
}

#[test]
fn sinusoidal_interleaved_table() {
    let c = ctx();
    let (l, d) = (5, 6);
    let mut t = vec![0f32; l * d];
    c.sinusoidal(
        &mut ViewMut::<f32>::new(&mut t, &[l, d]).unwrap(),
        &SinusoidalOptions { offset: 2.0, ..Default::default() },
    )
    .unwrap();
    let mut want = vec![0.0; l * d];
    for p in 0..l {
        for i in 0..d / 2 {
            let a = (p as f64 + 2.0) * 10000f64.powf(-2.0 * i as f64 / d as f64);
            want[p * d + 2 * i] = a.sin();
            want[p * d + 2 * i + 1] = a.cos();
        }
    }
    assert_close(&t, &want, 1e-6);
}

#[test]
fn pooling_modes_with_lengths() {
    let c = ctx();
    let (b, l, d) = (2, 5, 3);
    let x = Rng::new(9).vec(b * l * d);
    let lengths = [3i64, 5];
    for mode in [PoolMode::Sum, PoolMode::Mean, PoolMode::Max] {
        let mut out = vec![0f32; b * d];
        c.pool(
            &View::new(&x, &[b, l, d]).unwrap(),
            &mut ViewMut::new(&mut out, &[b, d]).unwrap(),
            &PoolOptions { mode, lengths: Some(&lengths), ..Default::default() },
        )
        .unwrap();
        let mut want = Vec::new();
        for bi in 0..b {
            for t in 0..d {
                let vals: Vec<f64> =
                    (0..lengths[bi] as usize).map(|ll| x[(bi * l + ll) * d + t] as f64).collect();
                want.push(match mode {
                    PoolMode::Sum => vals.iter().sum(),
                    PoolMode::Mean => vals.iter().sum::<f64>() / vals.len() as f64,
                    _ => vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                });
            }
        }
        assert_close(&out, &want, 1e-6);
    }
}

#[test]
fn pool_attention_is_softmax_weighted() {
    let c = ctx();
    let (b, l, d) = (2, 4, 3);
    let mut r = Rng::new(10);
    let (qv, x) = (r.vec(d), r.vec(b * l * d));
    let mut out = vec![0f32; b * d];
    let xv = View::<f32>::new(&x, &[b, 1, l, d]).unwrap();
    c.pool_attention(
        &View::<f32>::new(&qv, &[1, 1, d]).unwrap(),
        &xv,
        &xv,
        &mut ViewMut::<f32>::new(&mut out, &[b, 1, 1, d]).unwrap(),
        &Default::default(),
        Default::default(),
    )
    .unwrap();
    let q64: Vec<f64> = qv.iter().map(|&v| v as f64).collect();
    let mut want = Vec::new();
    for bi in 0..b {
        let xs: Vec<f64> = x[bi * l * d..][..l * d].iter().map(|&v| v as f64).collect();
        want.extend(attend(&q64, &xs, &xs, 1, l, d, d, 1.0 / (d as f64).sqrt(), &|_, _| true));
    }
    assert_close(&out, &want, 1e-6);
}

#[test]
fn alibi_slopes_of_eight_heads() {
    let s = ctx().alibi_slopes(8, 0.0).unwrap();
    let want: Vec<f64> = (1..=8).map(|h| 2f64.powi(-h)).collect();
    assert_close(&s, &want, 0.0);
}

// ---------------------------------------------------------------- bad input

#[test]
fn views_refuse_slices_their_shape_does_not_fit() {
    let x = [0f32; 10];
    assert!(matches!(View::<f32>::new(&x, &[3, 4]), Err(Error::Shape(_))));
    assert!(matches!(View::<f32>::new(&x, &[]), Err(Error::InvalidArg(_))));
    assert!(matches!(View::<f32>::new(&x, &[1, 1, 1, 1, 1]), Err(Error::InvalidArg(_))));
    assert!(matches!(View::<f32>::strided(&x, &[2, 5], &[5, 2]), Err(Error::InvalidArg(_))));
    assert!(matches!(View::<f32>::strided(&x, &[2, 5], &[6, 1]), Err(Error::Shape(_))));
    assert!(matches!(View::<f32>::strided(&x, &[2, 5], &[5]), Err(Error::Shape(_))));
    assert!(matches!(View::<f32>::new(&x, &[usize::MAX, 2]), Err(Error::Overflow(_))));
    assert!(View::<f32>::new(&x, &[0, 99]).is_ok(), "an empty tensor spans nothing");
    assert!(View::<f32>::strided(&x, &[3, 2], &[0, 1]).is_ok(), "broadcast");
}

#[test]
fn library_errors_carry_status_and_message() {
    let c = ctx();
    let (q, k) = (vec![0f32; 16], vec![0f32; 12]);
    let mut out = vec![0f32; 16];
    let e = c
        .sdpa(
            &View::<f32>::new(&q, &[1, 1, 4, 4]).unwrap(),
            &View::<f32>::new(&k, &[1, 1, 4, 3]).unwrap(),
            &View::<f32>::new(&q, &[1, 1, 4, 4]).unwrap(),
            &mut ViewMut::<f32>::new(&mut out, &[1, 1, 4, 4]).unwrap(),
            &Default::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{}", e);
    assert_eq!(e.status(), 3);
    assert_eq!(e.status_name(), "ATTN_ERR_SHAPE");
    assert!(e.message().contains("attn_sdpa"), "{}", e.message());
    assert!(out.iter().all(|&v| v == 0.0), "nothing written on failure");
    // A softmax mask of a shape that does not broadcast.
    let m = vec![0f32; 3];
    let mut y = vec![0f32; 8];
    let e = c
        .softmax(
            &View::<f32>::new(&q[..8], &[2, 4]).unwrap(),
            &mut ViewMut::<f32>::new(&mut y, &[2, 4]).unwrap(),
            &SoftmaxOptions { mask: Some(View::new(&m, &[3]).unwrap()), ..Default::default() },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{}", e);
    let e = Context::with_threads(0).unwrap_err();
    assert!(matches!(e, Error::InvalidArg(_)));
}

#[test]
fn arrays_of_the_wrong_length_are_refused_before_the_call() {
    let c = ctx();
    let (b, h, l, d) = (2, 2, 3, 4);
    let x = vec![0f32; b * h * l * d];
    let mut out = vec![0f32; b * h * l * d];
    let v = View::<f32>::new(&x, &[b, h, l, d]).unwrap();
    let mut o = ViewMut::<f32>::new(&mut out, &[b, h, l, d]).unwrap();
    let short = [3i64];
    for opts in [
        SdpaOptions { kv_lens: Some(&short), ..Default::default() },
        SdpaOptions { q_offsets: Some(&short), ..Default::default() },
        SdpaOptions { alibi_slopes: Some(&[0.5f32]), ..Default::default() },
        SdpaOptions { sinks: Some(&[0.5f32, 1.0, 2.0]), ..Default::default() },
    ] {
        let e = c.sdpa(&v, &v, &v, &mut o, &opts).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{}", e);
    }
    // q of the wrong rank with kv_lens: refused here, since the library
    // would size kv_lens by a dim that is not B.
    let q3 = View::<f32>::new(&x, &[b, h * l, d]).unwrap();
    assert!(matches!(
        c.sdpa(&q3, &v, &v, &mut o, &SdpaOptions { kv_lens: Some(&[1, 1]), ..Default::default() }),
        Err(Error::Shape(_))
    ));
    let mut rx = x.clone();
    assert!(matches!(
        c.rope(
            &mut ViewMut::<f32>::new(&mut rx, &[b, h, l, d]).unwrap(),
            &RopeOptions { positions: Some(&[1, 2, 3]), ..Default::default() }
        ),
        Err(Error::Shape(_))
    ));
    let mut t = vec![0f32; 12];
    assert!(matches!(
        c.sinusoidal(
            &mut ViewMut::<f32>::new(&mut t, &[3, 4]).unwrap(),
            &SinusoidalOptions { positions: Some(&[1.0, 2.0]), ..Default::default() }
        ),
        Err(Error::Shape(_))
    ));
    let q = View::<f32>::new(&x[..8], &[2, 1, 4]).unwrap();
    let mut o3 = vec![0f32; 8];
    for (cq, ck) in [(&[0i64, 2][..], &[0i64, 1, 2][..]), (&[][..], &[][..])] {
        assert!(matches!(
            c.sdpa_varlen(
                &q,
                &q,
                &q,
                &mut ViewMut::<f32>::new(&mut o3, &[2, 1, 4]).unwrap(),
                cq,
                ck,
                &Default::default(),
                None
            ),
            Err(Error::Shape(_))
        ));
    }
    let mut p = vec![0f32; b * h * d];
    assert!(matches!(
        c.pool(
            &View::new(&x[..b * l * d], &[b, l, d]).unwrap(),
            &mut ViewMut::new(&mut p[..b * d], &[b, d]).unwrap(),
            &PoolOptions { lengths: Some(&[1]), ..Default::default() }
        ),
        Err(Error::Shape(_))
    ));
    let (mut cs, mut sn) = (vec![0f32; 8], vec![0f32; 8]);
    assert!(matches!(
        c.rope_cache_fill(
            &mut ViewMut::new(&mut cs, &[4, 2]).unwrap(),
            &mut ViewMut::new(&mut sn, &[4, 2]).unwrap(),
            &RopeCacheOptions {
                scaling: RopeScaling::LongRope,
                original_max_position: 2,
                short_factors: Some(&[1.0]),
                long_factors: Some(&[1.0, 1.0]),
                ..Default::default()
            }
        ),
        Err(Error::Shape(_))
    ));
}

#[test]
fn a_context_moves_to_another_thread() {
    fn is_send<T: Send>() {}
    is_send::<Context>();
    let c = ctx();
    let s = std::thread::spawn(move || c.alibi_slopes(2, 0.0).unwrap()).join().unwrap();
    assert_eq!(s, vec![0.0625f32, 0.00390625]);
}

#[test]
fn version_and_info() {
    assert_eq!(version() / 10000, attn::sys::ATTN_VERSION_MAJOR);
    assert!(version_string().starts_with("0."));
    assert!(cpu_info().contains("kernels"));
    assert!(!blas_info().is_empty());
}

#[test]
fn sdpa_with_f32_queries_over_a_bf16_cache() {
    let c = ctx();
    let (b, h, lq, lk, d) = (1, 2, 3, 6, 8);
    let mut r = Rng::new(11);
    let (q, k, v) = (r.vec(b * h * lq * d), r.vec(b * h * lk * d), r.vec(b * h * lk * d));
    let to_bf16 = |x: &[f32]| -> Vec<u16> {
        let mut o = vec![0u16; x.len()];
        c.convert(
            &View::f32(x, &[x.len()]).unwrap(),
            &mut ViewMut::bf16(&mut o, &[x.len()]).unwrap(),
        )
        .unwrap();
        o
    };
    let (kb, vb) = (to_bf16(&k), to_bf16(&v));
    let mut out = vec![0f32; b * h * lq * d];
    c.sdpa(
        &View::<f32>::new(&q, &[b, h, lq, d]).unwrap(),
        &View::<Bf16>::new(&kb, &[b, h, lk, d]).unwrap(),
        &View::<Bf16>::new(&vb, &[b, h, lk, d]).unwrap(),
        &mut ViewMut::<f32>::new(&mut out, &[b, h, lq, d]).unwrap(),
        &SdpaOptions { causal: true, align: Align::BottomRight, ..Default::default() },
    )
    .unwrap();
    // bfloat16 is the upper half of a binary32: widening is exact.
    let widen =
        |x: &[u16]| -> Vec<f32> { x.iter().map(|&u| f32::from_bits((u as u32) << 16)).collect() };
    let (kw, vw) = (widen(&kb), widen(&vb));
    assert!((kw[0] - k[0]).abs() <= k[0].abs() / 128.0, "bf16 rounding");
    assert_close(&out, &sdpa(&q, &kw, &vw, b, h, h, lq, lk, d, d, true), 1e-5);
}
