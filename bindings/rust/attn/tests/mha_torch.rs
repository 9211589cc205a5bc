//! The PyTorch-form layer against torch 1.13's own outputs (the golden cases
//! of tests/data/mha_torch, written by tests/reference/gen_mha_torch.py) and
//! against a float64 forward written here from the header's formulas.
#![allow(clippy::needless_range_loop)]
mod common;
use attn::*;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

// ------------------------------------------------------------ golden files

enum Array {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

struct Named {
    dims: Vec<usize>,
    data: Array,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/mha_torch")
}

// The format gen_mha_torch.py writes: b"ATTNMHA1", int32 count, then per
// array a 32-byte name, int32 dtype (0 f32, 1 u8, 2 i64), int32 ndim,
// int64 dims, the elements (little-endian, C order).
fn read_case(name: &str) -> BTreeMap<String, Named> {
    let path = data_dir().join(format!("{}.bin", name));
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {}", path.display(), e));
    assert_eq!(&b[..8], b"ATTNMHA1", "{}", path.display());
    let mut at = 8;
    let mut take = |n: usize| {
        let s = &b[at..at + n];
        at += n;
        s
    };
    let i32_at = |s: &[u8]| i32::from_le_bytes(s.try_into().unwrap());
    let count = i32_at(take(4));
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let raw = take(32);
        let name =
            String::from_utf8(raw.iter().take_while(|&&c| c != 0).cloned().collect()).unwrap();
        let (dtype, ndim) = (i32_at(take(4)), i32_at(take(4)) as usize);
        let dims: Vec<usize> =
            (0..ndim).map(|_| i64::from_le_bytes(take(8).try_into().unwrap()) as usize).collect();
        let n: usize = dims.iter().product();
        let data = match dtype {
            0 => Array::F32(
                take(4 * n).chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            ),
            1 => Array::U8(take(n).to_vec()),
            2 => Array::I64(
                take(8 * n).chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            ),
            d => panic!("{}: dtype {}", name, d),
        };
        out.insert(name, Named { dims, data });
    }
    out
}

fn f32s<'a>(case: &'a BTreeMap<String, Named>, name: &str) -> (&'a [f32], &'a [usize]) {
    match &case[name] {
        Named { dims, data: Array::F32(v) } => (v, dims),
        _ => panic!("{} is not f32", name),
    }
}

fn view<'a>(case: &'a BTreeMap<String, Named>, name: &str) -> View<'a, f32> {
    let (v, d) = f32s(case, name);
    View::f32(v, d).unwrap()
}

fn mask<'a>(case: &'a BTreeMap<String, Named>, name: &str) -> Option<Mask<'a>> {
    case.get(name).map(|m| match &m.data {
        Array::U8(v) => Mask::Bool(View::u8(v, &m.dims).unwrap()),
        Array::F32(v) => Mask::Float(View::f32(v, &m.dims).unwrap()),
        Array::I64(_) => panic!("{}: int64 mask", name),
    })
}

const WEIGHT_NAMES: [&str; 7] = [
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "out_proj.weight",
    "out_proj.bias",
];

#[test]
fn torch_golden_cases() {
    let index = std::fs::read_to_string(data_dir().join("index.txt")).unwrap();
    let names: Vec<&str> = index.lines().filter(|l| !l.is_empty()).collect();
    assert!(names.len() >= 12, "only {} cases", names.len());
    let ctx = Context::with_threads(2).unwrap();
    for name in names {
        let case = read_case(name);
        let cfgv = match &case["config"].data {
            Array::I64(v) => v.clone(),
            _ => panic!("config"),
        };
        let (e, h, kdim, vdim) = (cfgv[0] as usize, cfgv[1] as usize, cfgv[2], cfgv[3]);
        let cfg = MhaConfig {
            embed_dim: e,
            num_heads: h,
            kdim: Some(kdim as usize),
            vdim: Some(vdim as usize),
            bias: cfgv[4] != 0,
            batch_first: cfgv[5] != 0,
            ..Default::default()
        };
        let (need, average, causal) = (cfgv[6] != 0, cfgv[7] != 0, cfgv[8] != 0);
        let mut mha = MultiheadAttention::new(&ctx, &cfg).unwrap();
        let weights: Vec<(&str, View<'_, f32>)> = WEIGHT_NAMES
            .iter()
            .filter(|n| case.contains_key(**n))
            .map(|n| (*n, view(&case, n)))
            .collect();
        mha.load_state_dict(&weights, true).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let opts = MhaForwardOptions {
            key_padding_mask: mask(&case, "key_padding_mask"),
            attn_mask: mask(&case, "attn_mask"),
            average_attn_weights: average,
            is_causal: causal,
        };
        let (q, k, v) = (view(&case, "query"), view(&case, "key"), view(&case, "value"));
        let (out, w) = mha.forward_owned(&q, &k, &v, &opts, need).unwrap();
        let wide = |x: &[f32]| x.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        assert_close(&out, &wide(f32s(&case, "out").0), 2e-5);
        assert_eq!(w.is_some(), need, "{}", name);
        if let Some(w) = w {
            assert_close(&w, &wide(f32s(&case, "out_weights").0), 2e-5);
        }
        // The weights read back are the ones loaded.
        for (n, shape, data) in mha.state_dict().unwrap() {
            let (want, dims) = f32s(&case, n);
            assert_eq!((data.as_slice(), shape.as_slice()), (want, dims), "{} {}", name, n);
        }
    }
}

// ------------------------------------------------------- float64 reference

struct Case {
    e: usize,
    h: usize,
    kdim: usize,
    vdim: usize,
    b: usize,
    l: usize,
    s: usize,
    batch_first: bool,
    causal: bool,
}

// x @ w^T + bias for x [n, fin], w [fout, fin].
fn linear(x: &[f64], w: &[f32], bias: &[f32], n: usize, fin: usize, fout: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * fout];
    for i in 0..n {
        for o in 0..fout {
            let dot: f64 = (0..fin).map(|t| x[i * fin + t] * w[o * fin + t] as f64).sum();
            y[i * fout + o] = dot + bias.get(o).map_or(0.0, |&b| b as f64);
        }
    }
    y
}

// Rows of sequence b of a [L, B, F] ([B, L, F] batch_first) tensor as [L, F].
fn rows(x: &[f32], b: usize, n: usize, nb: usize, f: usize, bf: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(n * f);
    for l in 0..n {
        let r = if bf { b * n + l } else { l * nb + b };
        out.extend(x[r * f..][..f].iter().map(|&x| x as f64));
    }
    out
}

/// torch's forward with a bool key_padding_mask [B, S] (nonzero = padding)
/// and a float attn_mask [B*H, L, S]; returns out in the layer's layout
/// and per-head weights [B, H, L, S].
#[allow(clippy::type_complexity)]
fn reference(
    c: &Case,
    w: &BTreeMap<&str, Vec<f32>>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kpm: &[u8],
    am: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let (e, h, d) = (c.e, c.h, c.e / c.h);
    let mut out = vec![0.0; c.b * c.l * e];
    let mut weights = vec![0.0; c.b * h * c.l * c.s];
    for b in 0..c.b {
        let qp = linear(
            &rows(q, b, c.l, c.b, e, c.batch_first),
            &w["q_proj_weight"],
            &w["in_proj_bias"][..e],
            c.l,
            e,
            e,
        );
        let kp = linear(
            &rows(k, b, c.s, c.b, c.kdim, c.batch_first),
            &w["k_proj_weight"],
            &w["in_proj_bias"][e..2 * e],
            c.s,
            c.kdim,
            e,
        );
        let vp = linear(
            &rows(v, b, c.s, c.b, c.vdim, c.batch_first),
            &w["v_proj_weight"],
            &w["in_proj_bias"][2 * e..],
            c.s,
            c.vdim,
            e,
        );
        let mut concat = vec![0.0; c.l * e];
        for hh in 0..h {
            for i in 0..c.l {
                let z: Vec<f64> = (0..c.s)
                    .map(|j| {
                        if kpm[b * c.s + j] != 0 || (c.causal && j > i) {
                            return f64::NEG_INFINITY;
                        }
                        let dot: f64 =
                            (0..d).map(|t| qp[i * e + hh * d + t] * kp[j * e + hh * d + t]).sum();
                        dot / (d as f64).sqrt() + am[((b * h + hh) * c.l + i) * c.s + j] as f64
                    })
                    .collect();
                let p = softmax_row(&z);
                for j in 0..c.s {
                    weights[((b * h + hh) * c.l + i) * c.s + j] = p[j];
                    for t in 0..d {
                        concat[i * e + hh * d + t] += p[j] * vp[j * e + hh * d + t];
                    }
                }
            }
        }
        let y = linear(&concat, &w["out_proj.weight"], &w["out_proj.bias"], c.l, e, e);
        for l in 0..c.l {
            let r = if c.batch_first { b * c.l + l } else { l * c.b + b };
            out[r * e..][..e].copy_from_slice(&y[l * e..][..e]);
        }
    }
    (out, weights)
}

#[test]
fn matches_float64_reference() {
    let ctx = Context::with_threads(2).unwrap();
    for (seed, batch_first, causal) in [(1u64, false, false), (2, true, true), (3, false, true)] {
        let c = Case { e: 12, h: 3, kdim: 7, vdim: 5, b: 2, l: 5, s: 6, batch_first, causal };
        let mut r = Rng::new(seed);
        let mut w = BTreeMap::new();
        for (n, len) in [
            ("q_proj_weight", c.e * c.e),
            ("k_proj_weight", c.e * c.kdim),
            ("v_proj_weight", c.e * c.vdim),
            ("in_proj_bias", 3 * c.e),
            ("out_proj.weight", c.e * c.e),
            ("out_proj.bias", c.e),
        ] {
            w.insert(n, r.vec(len));
        }
        let q = r.vec(c.b * c.l * c.e);
        let k = r.vec(c.b * c.s * c.kdim);
        let v = r.vec(c.b * c.s * c.vdim);
        // Key 0 is never padding, so no row is fully masked.
        let kpm: Vec<u8> = (0..c.b * c.s).map(|i| (i % c.s != 0 && r.next() > 0.4) as u8).collect();
        let am = r.vec(c.b * c.h * c.l * c.s);
        let seq = |n: usize, f: usize| if batch_first { [c.b, n, f] } else { [n, c.b, f] };

        let cfg = MhaConfig {
            embed_dim: c.e,
            num_heads: c.h,
            kdim: Some(c.kdim),
            vdim: Some(c.vdim),
            batch_first,
            ..Default::default()
        };
        let mut mha = MultiheadAttention::new(&ctx, &cfg).unwrap();
        let shapes = mha.weight_shapes();
        let entries: Vec<(&str, View<'_, f32>)> =
            shapes.iter().map(|(n, s)| (*n, View::f32(&w[n], s).unwrap())).collect();
        mha.load_state_dict(&entries, true).unwrap();
        let opts = MhaForwardOptions {
            key_padding_mask: Some(Mask::Bool(View::u8(&kpm, &[c.b, c.s]).unwrap())),
            attn_mask: Some(Mask::Float(View::f32(&am, &[c.b * c.h, c.l, c.s]).unwrap())),
            average_attn_weights: false,
            is_causal: causal,
        };
        let (qv, kv, vv) = (
            View::f32(&q, &seq(c.l, c.e)).unwrap(),
            View::f32(&k, &seq(c.s, c.kdim)).unwrap(),
            View::f32(&v, &seq(c.s, c.vdim)).unwrap(),
        );
        let (want_out, want_w) = reference(&c, &w, &q, &k, &v, &kpm, &am);
        let (out, wts) = mha.forward_owned(&qv, &kv, &vv, &opts, true).unwrap();
        assert_close(&out, &want_out, 1e-5);
        assert_close(&wts.unwrap(), &want_w, 1e-5);

        // Averaged over heads, written into caller buffers.
        let avg_opts = MhaForwardOptions { average_attn_weights: true, ..opts };
        let mut out2 = vec![f32::NAN; out.len()];
        let mut avg = vec![f32::NAN; c.b * c.l * c.s];
        mha.forward(
            &qv,
            &kv,
            &vv,
            &avg_opts,
            &mut ViewMut::f32(&mut out2, &seq(c.l, c.e)).unwrap(),
            Some(&mut ViewMut::f32(&mut avg, &[c.b, c.l, c.s]).unwrap()),
        )
        .unwrap();
        assert_eq!(out, out2);
        let mut want_avg = vec![0.0; c.b * c.l * c.s];
        for b in 0..c.b {
            for hh in 0..c.h {
                for i in 0..c.l * c.s {
                    want_avg[b * c.l * c.s + i] +=
                        want_w[(b * c.h + hh) * c.l * c.s + i] / c.h as f64;
                }
            }
        }
        assert_close(&avg, &want_avg, 1e-5);
    }
}

// ------------------------------------------------------------- bad input

fn layer<'c>(ctx: &'c Context) -> MultiheadAttention<'c> {
    let cfg = MhaConfig { embed_dim: 4, num_heads: 2, ..Default::default() };
    MultiheadAttention::new(ctx, &cfg).unwrap()
}

#[test]
fn bad_config_is_err() {
    let ctx = Context::with_threads(1).unwrap();
    let bad = |cfg: MhaConfig| MultiheadAttention::new(&ctx, &cfg).err().unwrap();
    let base = MhaConfig { embed_dim: 4, num_heads: 2, ..Default::default() };
    assert!(matches!(bad(MhaConfig { num_heads: 3, ..base }), Error::InvalidArg(_)));
    assert!(matches!(bad(MhaConfig { embed_dim: 0, ..base }), Error::InvalidArg(_)));
    assert!(matches!(bad(MhaConfig { add_bias_kv: true, ..base }), Error::Unsupported(_)));
    assert!(matches!(bad(MhaConfig { add_zero_attn: true, ..base }), Error::Unsupported(_)));
    let e = bad(MhaConfig { embed_dim: usize::MAX, ..base });
    assert!(matches!(&e, Error::InvalidArg(m) if m.contains("embed_dim")), "{}", e);
}

#[test]
fn bad_weights_are_err_and_change_nothing() {
    let ctx = Context::with_threads(1).unwrap();
    let mut mha = layer(&ctx);
    let ones = vec![1f32; 48];
    let w_in = View::f32(&ones, &[12, 4]).unwrap();
    // The separate projections do not exist when kdim = vdim = E.
    let e = mha.set_weight("q_proj_weight", &View::f32(&ones, &[4, 4]).unwrap()).unwrap_err();
    assert!(matches!(&e, Error::InvalidArg(m) if m.contains("in_proj_weight")), "{}", e);
    assert!(matches!(mha.set_weight("nope", &w_in), Err(Error::InvalidArg(_))));
    // A wrong shape, a missing or an unknown key: Err, nothing set.
    let short = View::f32(&ones, &[11, 4]).unwrap();
    assert!(matches!(
        mha.load_state_dict(&[("in_proj_weight", short)], false),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        mha.load_state_dict(&[("in_proj_weight", w_in)], true),
        Err(Error::InvalidArg(_))
    ));
    let extra = [("in_proj_weight", w_in), ("bias_k", w_in)];
    mha.load_state_dict(&extra, false).unwrap(); // non-strict: bias_k is ignored
    let mut back = vec![0f32; 48];
    mha.get_weight("in_proj_weight", &mut ViewMut::f32(&mut back, &[12, 4]).unwrap()).unwrap();
    assert_eq!(back, ones, "the non-strict load set in_proj_weight");
    let zeros = vec![0f32; 48];
    let bad = [("in_proj_weight", View::f32(&zeros, &[12, 4]).unwrap()), ("bias_k", w_in)];
    assert!(mha.load_state_dict(&bad, true).is_err());
    mha.get_weight("in_proj_weight", &mut ViewMut::f32(&mut back, &[12, 4]).unwrap()).unwrap();
    assert_eq!(back, ones, "a refused load changed a weight");
    // The library refuses a wrong shape through set_weight too.
    assert!(matches!(mha.set_weight("in_proj_weight", &short), Err(Error::Shape(_))));
}

#[test]
fn bad_forward_is_err_and_writes_nothing() {
    let ctx = Context::with_threads(1).unwrap();
    let mut mha = layer(&ctx);
    let x = vec![0.5f32; 2 * 3 * 4];
    let xv = View::f32(&x, &[3, 2, 4]).unwrap(); // [L, B, E]
    let mut out = vec![7f32; 24];
    let mut w = vec![7f32; 2 * 3 * 3];
    let opts = MhaForwardOptions::default();
    let mut run = |q: &View<'_, f32>, opts: &MhaForwardOptions<'_>, wdims: &[usize]| {
        let mut ov = ViewMut::f32(&mut out, &[3, 2, 4]).unwrap();
        let mut wv = ViewMut::f32(&mut w, wdims).unwrap();
        mha.forward(q, &xv, &xv, opts, &mut ov, Some(&mut wv))
    };
    // A query of the wrong width.
    let narrow = View::f32(&x, &[3, 2, 3]).unwrap();
    assert!(matches!(run(&narrow, &opts, &[2, 3, 3]), Err(Error::Shape(_))));
    // Weights of the wrong shape.
    assert!(matches!(run(&xv, &opts, &[2, 3, 2]), Err(Error::Shape(_))));
    // A key_padding_mask of the wrong shape.
    let m = [0u8; 6];
    let bad_kpm = MhaForwardOptions {
        key_padding_mask: Some(Mask::Bool(View::u8(&m, &[3, 2]).unwrap())),
        ..opts
    };
    assert!(matches!(run(&xv, &bad_kpm, &[2, 3, 3]), Err(Error::Shape(_))));
    assert!(out.iter().chain(&w).all(|&x| x == 7.0), "a failed forward wrote its outputs");
    // 2-D (unbatched) input is refused by forward_owned before the call.
    let flat = View::f32(&x, &[6, 4]).unwrap();
    assert!(matches!(mha.forward_owned(&flat, &flat, &flat, &opts, false), Err(Error::Shape(_))));
    // And the layer still works.
    let (o, _) = mha.forward_owned(&xv, &xv, &xv, &opts, false).unwrap();
    assert_eq!(o, vec![0f32; 24]); // zero weights, zero biases
}
