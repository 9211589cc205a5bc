//! Test helpers: a seeded generator and float64 references written here,
//! independently of the library (formulas from include/attn.h).
#![allow(dead_code, clippy::too_many_arguments)]

/// xorshift64*: deterministic test data without dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Max |got - want| <= tol * (1 + |want|), with the worst index in the panic.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g as f64 == w
        } else {
            (g as f64 - w).abs() <= tol * (1.0 + w.abs())
        };
        assert!(ok, "element {}: got {} want {} (tol {})", i, g, w, tol);
    }
}

pub fn softmax_row(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; z.len()];
    }
    let e: Vec<f64> = z.iter().map(|&x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Attention of one head: q [Lq, D], k [Lk, D], v [Lk, Dv], row i sees key
/// j when visible(i, j); logits scaled by `scale`.
pub fn attend(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    visible: &dyn Fn(usize, usize) -> bool,
) -> Vec<f64> {
    let mut out = vec![0.0; lq * dv];
    for i in 0..lq {
        let z: Vec<f64> = (0..lk)
            .map(|j| {
                if visible(i, j) {
                    scale * (0..d).map(|t| q[i * d + t] * k[j * d + t]).sum::<f64>()
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        let w = softmax_row(&z);
        for j in 0..lk {
            for t in 0..dv {
                out[i * dv + t] += w[j] * v[j * dv + t];
            }
        }
    }
    out
}

/// SDPA over [B, H, L, D] contiguous tensors, causal bottom-right (row i at
/// i + Lk - Lq) or none; grouped-query heads.
pub fn sdpa(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    causal: bool,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = Vec::with_capacity(b * hq * lq * dv);
    for bi in 0..b {
        for h in 0..hq {
            let g = h / (hq / hkv);
            let qs: Vec<f64> =
                q[((bi * hq + h) * lq * d)..][..lq * d].iter().map(|&x| x as f64).collect();
            let ks: Vec<f64> =
                k[((bi * hkv + g) * lk * d)..][..lk * d].iter().map(|&x| x as f64).collect();
            let vs: Vec<f64> =
                v[((bi * hkv + g) * lk * dv)..][..lk * dv].iter().map(|&x| x as f64).collect();
            let vis = |i: usize, j: usize| !causal || j + lq <= i + lk;
            out.extend(attend(&qs, &ks, &vs, lq, lk, d, dv, scale, &vis));
        }
    }
    out
}

/// Half-split rotary embedding of one head vector at position p (r = x.len()).
pub fn rope_vec(x: &mut [f64], p: f64, theta: f64, interleaved: bool) {
    let r = x.len();
    for i in 0..r / 2 {
        let t = p * theta.powf(-2.0 * i as f64 / r as f64);
        let (ia, ib) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + r / 2) };
        let (a, b) = (x[ia], x[ib]);
        x[ia] = a * t.cos() - b * t.sin();
        x[ib] = a * t.sin() + b * t.cos();
    }
}

/// IEEE binary16 bits to f64.
pub fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((h >> 10) & 0x1f) as i32;
    let f = (h & 0x3ff) as f64;
    sign * match e {
        0 => f * 2f64.powi(-24),
        31 => {
            if f == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => (1.0 + f / 1024.0) * 2f64.powi(e - 15),
    }
}

/// y = W x + b for W [n, m] row-major.
pub fn linear(w: &[f32], bias: Option<&[f32]>, x: &[f64], n: usize, m: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            (0..m).map(|j| w[i * m + j] as f64 * x[j]).sum::<f64>()
                + bias.map_or(0.0, |b| b[i] as f64)
        })
        .collect()
}
