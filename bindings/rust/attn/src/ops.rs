//! The ops, as methods of Context. Arrays the library reads by a count it
//! takes from a tensor (kv_lens, positions, ...) are checked against that
//! count here first: a short slice is an Err, never a read past its end.
use crate::tensor::Handles;
use crate::{sys, Context, Element, Error, Float, Result, View, ViewMut};
use std::ptr;

/// Err(Shape) unless `array` has `want` entries; `want` is None when the
/// tensor it comes from has the wrong rank (the library would refuse it, but
/// only after the array is read, so the array is refused here).
pub(crate) fn check_len<T>(
    func: &str,
    name: &str,
    array: Option<&[T]>,
    want: Option<i64>,
    rule: &str,
) -> Result<()> {
    let array = match array {
        Some(a) => a,
        None => return Ok(()),
    };
    match want {
        Some(w) if w >= 0 && array.len() as u64 == w as u64 => Ok(()),
        Some(w) => Err(Error::Shape(format!(
            "{}: {} has {} entries but {} = {}",
            func,
            name,
            array.len(),
            rule,
            w
        ))),
        None => Err(Error::Shape(format!("{}: {} given but {} does not exist", func, name, rule))),
    }
}

/// dims[i] of a tensor of rank `ndim`, or None for another rank.
pub(crate) fn dim(dims: &[i64], ndim: usize, i: usize) -> Option<i64> {
    if dims.len() == ndim {
        Some(dims[i])
    } else {
        None
    }
}

fn opt_ptr<T>(a: Option<&[T]>) -> *const T {
    a.map_or(ptr::null(), |a| a.as_ptr())
}

// ---------------------------------------------------------------- softmax

/// Options of softmax and log-softmax (every field's default is the library's).
#[derive(Clone, Copy, Default)]
pub struct SoftmaxOptions<'a> {
    /// Multiplies x before the mask; 0 = 1.
    pub scale: f32,
    /// Additive mask broadcast to x (-inf masks an entry).
    pub mask: Option<View<'a, f32>>,
    /// Boolean mask broadcast to x, nonzero = keep.
    pub bool_mask: Option<View<'a, u8>>,
    /// The axis normalised, counted from the end: -1 (or 0) = the last.
    pub axis: i32,
}

// attn_softmax / attn_log_softmax and their gradients.
type SoftmaxFn = unsafe extern "C" fn(
    *mut sys::attn_ctx,
    *const sys::attn_tensor,
    *mut sys::attn_tensor,
    *const sys::attn_softmax_params,
) -> sys::attn_status;
type SoftmaxGradFn = unsafe extern "C" fn(
    *mut sys::attn_ctx,
    *const sys::attn_tensor,
    *const sys::attn_tensor,
    *mut sys::attn_tensor,
    *mut sys::attn_tensor,
    *const sys::attn_softmax_params,
) -> sys::attn_status;

// Softmax and log-softmax have the same entry points (out of place, in
// place, gradient) over different library functions.
macro_rules! softmax_family {
    ($($fwd:ident($sys_fwd:ident), $inplace:ident, $grad:ident($sys_grad:ident), $what:literal,
       $doc:literal;)*) => {
        impl Context {$(
            #[doc = $doc]
            pub fn $fwd<X: Float, Y: Float>(
                &self,
                x: &View<'_, X>,
                y: &mut ViewMut<'_, Y>,
                opts: &SoftmaxOptions<'_>,
            ) -> Result<()> {
                self.softmax_raw(sys::$sys_fwd, Some(x), y, opts)
            }

            #[doc = concat!("[`Context::", stringify!($fwd), "`] in place.")]
            pub fn $inplace<X: Float>(
                &self,
                x: &mut ViewMut<'_, X>,
                opts: &SoftmaxOptions<'_>,
            ) -> Result<()> {
                self.softmax_raw(sys::$sys_fwd, None::<&View<'_, X>>, x, opts)
            }

            #[doc = concat!("The gradient of ", $what, ": dx from its output y and dy (and dz, \
                the logits' gradient, into `dmask`); `opts` are the forward's (scale is read; \
                the last axis only).")]
            pub fn $grad(
                &self,
                y: &View<'_, f32>,
                dy: &View<'_, f32>,
                dx: &mut ViewMut<'_, f32>,
                dmask: Option<&mut ViewMut<'_, f32>>,
                opts: &SoftmaxOptions<'_>,
            ) -> Result<()> {
                let f = concat!("Context::", stringify!($grad));
                self.softmax_grad(f, sys::$sys_grad, y, dy, dx, dmask, opts)
            }
        )*}
    };
}

softmax_family! {
    softmax(attn_softmax), softmax_inplace, softmax_backward(attn_softmax_backward), "softmax",
        "y = softmax(scale * x + mask) over `axis` (default the last).";
    log_softmax(attn_log_softmax), log_softmax_inplace,
        log_softmax_backward(attn_log_softmax_backward), "log-softmax",
        "y = log_softmax(scale * x + mask) (masked entries -inf).";
}

impl Context {
    fn softmax_raw(
        &self,
        f: SoftmaxFn,
        x: Option<&View<'_, impl Float>>,
        y: &mut ViewMut<'_, impl Float>,
        o: &SoftmaxOptions<'_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let yt = h.output(y)?;
        let xt = match x {
            Some(x) => h.input(x)?,
            None => yt as *const _, // in place
        };
        let p = sys::attn_softmax_params {
            scale: o.scale,
            mask: h.opt_input(o.mask.as_ref())?,
            bool_mask: h.opt_input(o.bool_mask.as_ref())?,
            axis: o.axis,
            ..Default::default()
        };
        // SAFETY: handles and params are valid for the call.
        self.check(unsafe { f(self.as_ptr(), xt, yt, &p) })
    }

    /// Converts `src` into `dst` (same dims): between f32, F16 and Bf16
    /// (rounding to nearest even once), or u8 to u8 (attn_tensor_copy).
    pub fn convert<S: Element, D: Element>(
        &self,
        src: &View<'_, S>,
        dst: &mut ViewMut<'_, D>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let (s, d) = (h.input(src)?, h.output(dst)?);
        // SAFETY: valid handles.
        self.check(unsafe { sys::attn_tensor_copy(self.as_ptr(), s, d) })
    }
}

// ---------------------------------------------------------------- encodings

c_enum! {
    /// Column layouts of a sinusoidal table (attn_pe_layout).
    #[derive(Default)]
    pub enum PeLayout {
        #[default]
        /// sin/cos interleaved (the paper).
        Interleaved = ATTN_PE_INTERLEAVED,
        /// sin half then cos half.
        SinCos = ATTN_PE_SIN_COS,
        /// As SinCos with frequencies base^(-i/(h-1)) (fairseq, tensor2tensor).
        SinCosShifted = ATTN_PE_SIN_COS_SHIFTED,
        /// cos half then sin half (diffusion timesteps).
        CosSin = ATTN_PE_COS_SIN,
    }
}

/// Options of the sinusoidal table.
#[derive(Clone, Copy, Default)]
pub struct SinusoidalOptions<'a> {
    pub layout: PeLayout,
    /// 0 = 10000.
    pub base: f64,
    /// Row l has position offset + l.
    pub offset: f64,
    /// One position per row (L entries), instead of offset + l.
    pub positions: Option<&'a [f64]>,
}

impl SinusoidalOptions<'_> {
    fn raw(&self) -> sys::attn_sinusoidal_params {
        sys::attn_sinusoidal_params {
            layout: self.layout as i32,
            base: self.base,
            offset: self.offset,
            positions: opt_ptr(self.positions),
            ..Default::default()
        }
    }
}

c_enum! {
    /// Pairs rotary embedding rotates (attn_rope_style).
    #[derive(Default)]
    pub enum RopeStyle {
        #[default]
        /// (x[i], x[i + r/2]): GPT-NeoX, LLaMA.
        HalfSplit = ATTN_ROPE_HALF_SPLIT,
        /// (x[2i], x[2i+1]): GPT-J.
        Interleaved = ATTN_ROPE_INTERLEAVED,
    }
}

/// Options of rotary embedding (also the RoPE of KV-cache appends and the
/// decoder layer, where offset must be 0 and positions None).
#[derive(Clone, Copy, Default)]
pub struct RopeOptions<'a> {
    pub style: RopeStyle,
    /// Leading dims rotated (even); 0 = the head dim.
    pub rotary_dim: u32,
    /// 0 = 10000.
    pub theta: f64,
    /// Token l has position offset + l.
    pub offset: i64,
    /// [B, L] positions, instead of offset + l.
    pub positions: Option<&'a [i64]>,
}

impl RopeOptions<'_> {
    pub(crate) fn raw(&self) -> Result<sys::attn_rope_params> {
        Ok(sys::attn_rope_params {
            style: self.style as i32,
            rotary_dim: i32::try_from(self.rotary_dim).map_err(|_| {
                Error::InvalidArg(format!("RopeOptions: rotary_dim = {}", self.rotary_dim))
            })?,
            theta: self.theta,
            offset: self.offset,
            positions: opt_ptr(self.positions),
            ..Default::default()
        })
    }
}

c_enum! {
    /// Long-context frequency scalings (attn_rope_scaling, transformers' rope_type).
    #[derive(Default)]
    pub enum RopeScaling {
        #[default]
        None = ATTN_ROPE_SCALING_NONE,
        Linear = ATTN_ROPE_SCALING_LINEAR,
        Ntk = ATTN_ROPE_SCALING_NTK,
        DynamicNtk = ATTN_ROPE_SCALING_DYNAMIC_NTK,
        Yarn = ATTN_ROPE_SCALING_YARN,
        Llama3 = ATTN_ROPE_SCALING_LLAMA3,
        LongRope = ATTN_ROPE_SCALING_LONGROPE,
    }
}

/// Options of the rotary tables (attn_rope_cache_params; 0 = default, and
/// the fields a scaling does not use must stay 0).
#[derive(Clone, Copy, Default)]
pub struct RopeCacheOptions<'a> {
    pub scaling: RopeScaling,
    /// Multiply cos and sin by the attention factor.
    pub apply_attention_factor: bool,
    pub theta: f64,
    pub factor: f64,
    pub original_max_position: i64,
    pub seq_len: i64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
    pub attention_factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    /// LongRoPE: r/2 factors each.
    pub short_factors: Option<&'a [f64]>,
    pub long_factors: Option<&'a [f64]>,
    pub yarn_no_truncate: bool,
}

/// Options of rotary embedding from tables.
#[derive(Clone, Copy, Default)]
pub struct RopeCachedOptions<'a> {
    pub style: RopeStyle,
    /// For 3-D x [B, L, H*D]: H. 0 for 4-D x.
    pub num_heads: u32,
    /// [B, L] row indices into 2-D tables; None: token l reads row l.
    pub position_ids: Option<&'a [i64]>,
}

impl Context {
    /// Writes the sinusoidal table into `out` [L, D].
    pub fn sinusoidal<Y: Float>(
        &self,
        out: &mut ViewMut<'_, Y>,
        opts: &SinusoidalOptions<'_>,
    ) -> Result<()> {
        check_len(
            "Context::sinusoidal",
            "positions",
            opts.positions,
            dim(out.dims(), 2, 0),
            "out.shape[0] (L)",
        )?;
        let p = opts.raw();
        let mut h = Handles::new(self);
        let t = h.output(out)?;
        // SAFETY: valid handle; positions holds L entries.
        self.check(unsafe { sys::attn_sinusoidal(self.as_ptr(), t, &p) })
    }

    /// Adds the sinusoidal table to x [L, D] or [B, L, D] in place.
    pub fn sinusoidal_add<X: Float>(
        &self,
        x: &mut ViewMut<'_, X>,
        opts: &SinusoidalOptions<'_>,
    ) -> Result<()> {
        let n = x.dims().len();
        let l = if n == 2 || n == 3 { Some(x.dims()[n - 2]) } else { None };
        check_len("Context::sinusoidal_add", "positions", opts.positions, l, "x.shape[-2] (L)")?;
        let p = opts.raw();
        let mut h = Handles::new(self);
        let t = h.output(x)?;
        // SAFETY: valid handle; positions holds L entries.
        self.check(unsafe { sys::attn_sinusoidal_add(self.as_ptr(), t, &p) })
    }

    /// Rotary embedding in place on x [B, H, L, D].
    pub fn rope<X: Float>(&self, x: &mut ViewMut<'_, X>, opts: &RopeOptions<'_>) -> Result<()> {
        self.rope_raw("Context::rope", sys::attn_rope, x, "x.shape[0] * x.shape[2]", opts)
    }

    // attn_rope / attn_rope_backward in place on x [B, H, L, D], whose
    // positions are B * L.
    fn rope_raw<X: Float>(
        &self,
        func: &str,
        f: unsafe extern "C" fn(
            *mut sys::attn_ctx,
            *mut sys::attn_tensor,
            *const sys::attn_rope_params,
        ) -> sys::attn_status,
        x: &mut ViewMut<'_, X>,
        rule: &str,
        opts: &RopeOptions<'_>,
    ) -> Result<()> {
        let bl = match x.dims() {
            &[b, _, l, _] => b.checked_mul(l),
            _ => None,
        };
        check_len(func, "positions", opts.positions, bl, rule)?;
        let p = opts.raw()?;
        let mut h = Handles::new(self);
        let t = h.output(x)?;
        // SAFETY: valid handle; positions holds B * L entries.
        self.check(unsafe { f(self.as_ptr(), t, &p) })
    }

    /// Fills rotary tables cos and sin [P, r/2] with a scaling; returns the
    /// attention factor.
    pub fn rope_cache_fill(
        &self,
        cos: &mut ViewMut<'_, f32>,
        sin: &mut ViewMut<'_, f32>,
        opts: &RopeCacheOptions<'_>,
    ) -> Result<f64> {
        let half = dim(cos.dims(), 2, 1);
        for (name, f) in
            [("short_factors", opts.short_factors), ("long_factors", opts.long_factors)]
        {
            check_len("Context::rope_cache_fill", name, f, half, "cos.shape[1] (r/2)")?;
        }
        let p = sys::attn_rope_cache_params {
            scaling: opts.scaling as i32,
            apply_attention_factor: opts.apply_attention_factor as i32,
            theta: opts.theta,
            factor: opts.factor,
            original_max_position: opts.original_max_position,
            seq_len: opts.seq_len,
            beta_fast: opts.beta_fast,
            beta_slow: opts.beta_slow,
            mscale: opts.mscale,
            mscale_all_dim: opts.mscale_all_dim,
            attention_factor: opts.attention_factor,
            low_freq_factor: opts.low_freq_factor,
            high_freq_factor: opts.high_freq_factor,
            short_factors: opt_ptr(opts.short_factors),
            long_factors: opt_ptr(opts.long_factors),
            yarn_no_truncate: opts.yarn_no_truncate as i32,
            ..Default::default()
        };
        let mut h = Handles::new(self);
        let (c, s) = (h.output(cos)?, h.output(sin)?);
        let mut factor = 0.0;
        // SAFETY: valid handles; the factor arrays hold r/2 entries.
        self.check(unsafe { sys::attn_rope_cache_fill(self.as_ptr(), c, s, &p, &mut factor) })?;
        Ok(factor)
    }

    fn rope_cached_raw(
        &self,
        x: Option<&View<'_, f32>>,
        y: &mut ViewMut<'_, f32>,
        cos: &View<'_, f32>,
        sin: &View<'_, f32>,
        opts: &RopeCachedOptions<'_>,
    ) -> Result<()> {
        let d = x.map_or_else(|| y.dims().to_vec(), |x| x.dims().to_vec());
        let bl = match d.as_slice() {
            &[b, _, l, _] | &[b, l, _] => b.checked_mul(l),
            _ => None,
        };
        check_len("Context::rope_cached", "position_ids", opts.position_ids, bl, "x's B * L")?;
        let p = sys::attn_rope_cached_params {
            style: opts.style as i32,
            num_heads: i32::try_from(opts.num_heads).unwrap_or(-1),
            position_ids: opt_ptr(opts.position_ids),
            ..Default::default()
        };
        let mut h = Handles::new(self);
        let yt = h.output(y)?;
        let xt = match x {
            Some(x) => h.input(x)?,
            None => yt as *const _,
        };
        let (c, s) = (h.input(cos)?, h.input(sin)?);
        // SAFETY: valid handles; position_ids holds B * L entries.
        self.check(unsafe { sys::attn_rope_cached(self.as_ptr(), xt, yt, c, s, &p) })
    }

    /// Rotary embedding from caller tables (ONNX RotaryEmbedding): x [B, H,
    /// L, D] or [B, L, H*D] (num_heads = H), cos and sin [P, r/2] or [B|1, L, r/2].
    pub fn rope_cached(
        &self,
        x: &View<'_, f32>,
        y: &mut ViewMut<'_, f32>,
        cos: &View<'_, f32>,
        sin: &View<'_, f32>,
        opts: &RopeCachedOptions<'_>,
    ) -> Result<()> {
        self.rope_cached_raw(Some(x), y, cos, sin, opts)
    }

    /// [`Context::rope_cached`] in place.
    pub fn rope_cached_inplace(
        &self,
        x: &mut ViewMut<'_, f32>,
        cos: &View<'_, f32>,
        sin: &View<'_, f32>,
        opts: &RopeCachedOptions<'_>,
    ) -> Result<()> {
        self.rope_cached_raw(None, x, cos, sin, opts)
    }

    /// ALiBi slopes of `n_heads` heads (max_bias 0 = 8).
    pub fn alibi_slopes(&self, n_heads: usize, max_bias: f64) -> Result<Vec<f32>> {
        // attn.h's bound, checked first so a huge count allocates nothing.
        if n_heads > 1 << 20 {
            return Err(Error::InvalidArg(format!(
                "Context::alibi_slopes: n_heads = {} but must be 1 .. 1<<20",
                n_heads
            )));
        }
        let n = n_heads as i32;
        let mut out = vec![0.0f32; n_heads];
        // SAFETY: out holds n_heads floats (the library writes n_heads when
        // it accepts the count).
        self.check(unsafe {
            sys::attn_alibi_slopes(self.as_ptr(), n, max_bias, out.as_mut_ptr())
        })?;
        Ok(out)
    }
}

// ---------------------------------------------------------------- attention

c_enum! {
    /// Where query row i sits among the keys when Lq != Lk (attn_align).
    #[derive(Default)]
    pub enum Align {
        #[default]
        /// i' = i (PyTorch is_causal).
        TopLeft = ATTN_ALIGN_TOP_LEFT,
        /// The last query sees the last (valid) key (KV-cache decoding).
        BottomRight = ATTN_ALIGN_BOTTOM_RIGHT,
    }
}

c_enum! {
    /// Which logits SdpaOutputs::logits receives (attn_logits_stage).
    #[derive(Default)]
    pub enum LogitsStage {
        #[default]
        Scaled = ATTN_LOGITS_SCALED,
        Softcapped = ATTN_LOGITS_SOFTCAPPED,
        Masked = ATTN_LOGITS_MASKED,
    }
}

/// Inputs and options of scaled dot-product attention (attn_sdpa_params).
#[derive(Clone, Copy, Default)]
pub struct SdpaOptions<'a> {
    /// 0 = 1/sqrt(D).
    pub scale: f32,
    /// 0 = off.
    pub softcap: f32,
    pub causal: bool,
    pub align: Align,
    /// Sliding window (left, right): keys i' - left ..= i' + right.
    pub window: Option<(u64, u64)>,
    /// F32 additive mask broadcast to [B, Hq, Lq, Lk].
    pub mask: Option<View<'a, f32>>,
    /// U8 mask broadcast likewise, nonzero = attend.
    pub bool_mask: Option<View<'a, u8>>,
    /// [B] valid keys per sequence.
    pub kv_lens: Option<&'a [i64]>,
    /// [Hq] ALiBi slopes.
    pub alibi_slopes: Option<&'a [f32]>,
    /// [Hq] sink logits.
    pub sinks: Option<&'a [f32]>,
    /// [B] position of each sequence's first query row among the keys.
    pub q_offsets: Option<&'a [i64]>,
}

/// Optional outputs of attention.
#[derive(Default)]
pub struct SdpaOutputs<'a, 'b> {
    /// [B, Hq, Lq] (varlen: [Hq, Tq]) log-sum-exp.
    pub lse: Option<&'a mut ViewMut<'b, f32>>,
    /// [B, Hq, Lq, Lk] attention weights.
    pub weights: Option<&'a mut ViewMut<'b, f32>>,
    /// [B, Hq, Lq, Lk] logits at `logits_stage`.
    pub logits: Option<&'a mut ViewMut<'b, f32>>,
    pub logits_stage: LogitsStage,
}

impl SdpaOptions<'_> {
    // The raw params after checking the arrays against B and Hq (None when
    // q has the wrong rank), with the masks wrapped into `h`.
    pub(crate) fn raw(
        &self,
        func: &str,
        h: &mut Handles<'_>,
        b: Option<i64>,
        hq: Option<i64>,
    ) -> Result<sys::attn_sdpa_params> {
        check_len(func, "kv_lens", self.kv_lens, b, "q.shape[0] (B)")?;
        check_len(func, "q_offsets", self.q_offsets, b, "the batch (B)")?;
        check_len(func, "alibi_slopes", self.alibi_slopes, hq, "q's head count (Hq)")?;
        check_len(func, "sinks", self.sinks, hq, "q's head count (Hq)")?;
        let (wl, wr) = self.window.unwrap_or((0, 0));
        let ext = |x: u64| {
            i64::try_from(x)
                .map_err(|_| Error::InvalidArg(format!("{}: window extent {}", func, x)))
        };
        Ok(sys::attn_sdpa_params {
            scale: self.scale,
            softcap: self.softcap,
            causal: self.causal as i32,
            align: self.align as i32,
            window: self.window.is_some() as i32,
            window_left: ext(wl)?,
            window_right: ext(wr)?,
            mask: h.opt_input(self.mask.as_ref())?,
            bool_mask: h.opt_input(self.bool_mask.as_ref())?,
            kv_lens: opt_ptr(self.kv_lens),
            alibi_slopes: opt_ptr(self.alibi_slopes),
            sinks: opt_ptr(self.sinks),
            q_offsets: opt_ptr(self.q_offsets),
            ..Default::default()
        })
    }
}

impl Context {
    /// out = softmax(S) V for q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv,
    /// Lk, Dv], out [B, Hq, Lq, Dv] (a [B, L, H, D] buffer is the view with
    /// strides [L*H*D, D, H*D, 1]).
    pub fn sdpa<Q: Float, K: Float, V: Float, O: Float>(
        &self,
        q: &View<'_, Q>,
        k: &View<'_, K>,
        v: &View<'_, V>,
        out: &mut ViewMut<'_, O>,
        opts: &SdpaOptions<'_>,
    ) -> Result<()> {
        self.sdpa_with(q, k, v, out, opts, SdpaOutputs::default())
    }

    /// [`Context::sdpa`] with the optional outputs (lse, weights, logits).
    pub fn sdpa_with<Q: Float, K: Float, V: Float, O: Float>(
        &self,
        q: &View<'_, Q>,
        k: &View<'_, K>,
        v: &View<'_, V>,
        out: &mut ViewMut<'_, O>,
        opts: &SdpaOptions<'_>,
        extra: SdpaOutputs<'_, '_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let mut p = opts.raw("Context::sdpa", &mut h, dim(q.dims(), 4, 0), dim(q.dims(), 4, 1))?;
        p.lse = h.opt_output(extra.lse)?;
        p.weights = h.opt_output(extra.weights)?;
        p.logits = h.opt_output(extra.logits)?;
        p.logits_stage = extra.logits_stage as i32;
        let (qt, kt, vt) = (h.input(q)?, h.input(k)?, h.input(v)?);
        let ot = h.output(out)?;
        // SAFETY: valid handles; every array holds the count checked above.
        self.check(unsafe { sys::attn_sdpa(self.as_ptr(), qt, kt, vt, ot, &p) })
    }

    /// Attention over packed sequences: q [Tq, Hq, D], k [Tk, Hkv, D], v
    /// [Tk, Hkv, Dv], out [Tq, Hq, Dv]; sequence b holds query tokens
    /// cu_seqlens_q[b]..cu_seqlens_q[b+1] and keys likewise. `lse`: [Hq, Tq].
    #[allow(clippy::too_many_arguments)]
    pub fn sdpa_varlen<Q: Float, K: Float, V: Float, O: Float>(
        &self,
        q: &View<'_, Q>,
        k: &View<'_, K>,
        v: &View<'_, V>,
        out: &mut ViewMut<'_, O>,
        cu_seqlens_q: &[i64],
        cu_seqlens_k: &[i64],
        opts: &SdpaOptions<'_>,
        lse: Option<&mut ViewMut<'_, f32>>,
    ) -> Result<()> {
        const F: &str = "Context::sdpa_varlen";
        let batch = varlen_batch(F, cu_seqlens_q, cu_seqlens_k)?;
        let mut h = Handles::new(self);
        let mut p = opts.raw(F, &mut h, Some(batch as i64), dim(q.dims(), 3, 1))?;
        p.lse = h.opt_output(lse)?;
        let (qt, kt, vt) = (h.input(q)?, h.input(k)?, h.input(v)?);
        let ot = h.output(out)?;
        // SAFETY: valid handles; cu_seqlens hold batch + 1 entries, the other
        // arrays the counts checked above.
        self.check(unsafe {
            sys::attn_sdpa_varlen(
                self.as_ptr(),
                qt,
                kt,
                vt,
                ot,
                batch,
                cu_seqlens_q.as_ptr(),
                cu_seqlens_k.as_ptr(),
                &p,
            )
        })
    }
}

// ---------------------------------------------------------------- pooling

c_enum! {
    /// How pooling aggregates a sequence's kept tokens (attn_pool_mode).
    #[derive(Default)]
    pub enum PoolMode {
        #[default]
        Sum = ATTN_POOL_SUM,
        Mean = ATTN_POOL_MEAN,
        Max = ATTN_POOL_MAX,
        /// Softmax of `scores` as weights.
        Weighted = ATTN_POOL_WEIGHTED,
    }
}

/// Options of pooling.
#[derive(Clone, Copy, Default)]
pub struct PoolOptions<'a> {
    pub mode: PoolMode,
    /// [B]: tokens l >= lengths[b] dropped.
    pub lengths: Option<&'a [i64]>,
    /// U8 per-token keep mask ([B, L], or [B, H, L] for 4-D x).
    pub keep: Option<View<'a, u8>>,
    /// F32 per-token scores, for Weighted only.
    pub scores: Option<View<'a, f32>>,
}

/// Options of learned-query attention pooling.
#[derive(Clone, Copy, Default)]
pub struct PoolAttentionOptions<'a> {
    /// 0 = 1/sqrt(D).
    pub scale: f32,
    /// [B]: keys l >= lengths[b] ignored.
    pub lengths: Option<&'a [i64]>,
    /// U8 [B, L], nonzero = attend.
    pub keep: Option<View<'a, u8>>,
}

impl Context {
    /// Pools x [B, L, D] or [B, H, L, D] over L into out [B, D] or [B, H, D].
    pub fn pool(
        &self,
        x: &View<'_, f32>,
        out: &mut ViewMut<'_, f32>,
        opts: &PoolOptions<'_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let p = opts.raw("Context::pool", &mut h, x)?;
        let (xt, ot) = (h.input(x)?, h.output(out)?);
        // SAFETY: valid handles; lengths holds B entries.
        self.check(unsafe { sys::attn_pool(self.as_ptr(), xt, ot, &p) })
    }

    /// Learned-query pooling: queries [Hq, M, D] attend over k [B, Hkv, L, D]
    /// and v [B, Hkv, L, Dv] into out [B, Hq, M, Dv]; optional outputs
    /// weights [B, Hq, M, L] and lse [B, Hq, M].
    pub fn pool_attention<Q: Float, K: Float, V: Float, O: Float>(
        &self,
        queries: &View<'_, Q>,
        k: &View<'_, K>,
        v: &View<'_, V>,
        out: &mut ViewMut<'_, O>,
        opts: &PoolAttentionOptions<'_>,
        extra: PoolAttentionOutputs<'_, '_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let mut p = opts.raw("Context::pool_attention", &mut h, k)?;
        p.weights = h.opt_output(extra.weights)?;
        p.lse = h.opt_output(extra.lse)?;
        let (qt, kt, vt) = (h.input(queries)?, h.input(k)?, h.input(v)?);
        let ot = h.output(out)?;
        // SAFETY: valid handles; lengths holds B entries.
        self.check(unsafe { sys::attn_pool_attention(self.as_ptr(), qt, kt, vt, ot, &p) })
    }
}

/// Optional outputs of learned-query pooling.
#[derive(Default)]
pub struct PoolAttentionOutputs<'a, 'b> {
    /// [B, Hq, M, L] attention weights.
    pub weights: Option<&'a mut ViewMut<'b, f32>>,
    /// [B, Hq, M] log-sum-exp, for the gradient.
    pub lse: Option<&'a mut ViewMut<'b, f32>>,
}

impl PoolOptions<'_> {
    // lengths is [B] of x [B, L, D] or [B, H, L, D].
    fn raw(
        &self,
        func: &str,
        h: &mut Handles<'_>,
        x: &View<'_, f32>,
    ) -> Result<sys::attn_pool_params> {
        let b = if x.dims().len() >= 3 { Some(x.dims()[0]) } else { None };
        check_len(func, "lengths", self.lengths, b, "x.shape[0] (B)")?;
        Ok(sys::attn_pool_params {
            mode: self.mode as i32,
            lengths: opt_ptr(self.lengths),
            keep: h.opt_input(self.keep.as_ref())?,
            scores: h.opt_input(self.scores.as_ref())?,
            ..Default::default()
        })
    }
}

impl PoolAttentionOptions<'_> {
    // lengths is [B] of k [B, Hkv, L, D].
    fn raw<K: Element>(
        &self,
        func: &str,
        h: &mut Handles<'_>,
        k: &View<'_, K>,
    ) -> Result<sys::attn_pool_attention_params> {
        check_len(func, "lengths", self.lengths, dim(k.dims(), 4, 0), "k.shape[0] (B)")?;
        Ok(sys::attn_pool_attention_params {
            scale: self.scale,
            lengths: opt_ptr(self.lengths),
            keep: h.opt_input(self.keep.as_ref())?,
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------- gradients

// batch + 1 offsets each: the count attn_sdpa_varlen* reads.
fn varlen_batch(func: &str, cu_q: &[i64], cu_k: &[i64]) -> Result<i32> {
    if cu_q.is_empty() || cu_q.len() != cu_k.len() {
        return Err(Error::Shape(format!(
            "{}: cu_seqlens_q has {} entries and cu_seqlens_k {} (both batch + 1 >= 1)",
            func,
            cu_q.len(),
            cu_k.len()
        )));
    }
    i32::try_from(cu_q.len() - 1)
        .map_err(|_| Error::InvalidArg(format!("{}: batch = {} too large", func, cu_q.len() - 1)))
}

/// Optional outputs of the SDPA gradients.
#[derive(Default)]
pub struct SdpaGradOutputs<'a, 'b> {
    /// [B, Hq, Lq, Lk]: dS, the gradient of an additive mask (not summed
    /// over its broadcast axes).
    pub dmask: Option<&'a mut ViewMut<'b, f32>>,
    /// [Hq]: the gradient of SdpaOptions::sinks.
    pub dsinks: Option<&'a mut [f32]>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    fn softmax_grad(
        &self,
        func: &str,
        f: SoftmaxGradFn,
        y: &View<'_, f32>,
        dy: &View<'_, f32>,
        dx: &mut ViewMut<'_, f32>,
        dmask: Option<&mut ViewMut<'_, f32>>,
        opts: &SoftmaxOptions<'_>,
    ) -> Result<()> {
        if opts.axis != 0 && opts.axis != -1 {
            // The library's gradients run over the last axis and read only scale.
            return Err(Error::Unsupported(format!(
                "{}: axis = {} (gradients are over the last axis)",
                func, opts.axis
            )));
        }
        let p = sys::attn_softmax_params { scale: opts.scale, ..Default::default() };
        let mut h = Handles::new(self);
        let (yt, dyt) = (h.input(y)?, h.input(dy)?);
        let (dxt, dmt) = (h.output(dx)?, h.opt_output(dmask)?);
        // SAFETY: valid handles.
        self.check(unsafe { f(self.as_ptr(), yt, dyt, dxt, dmt, &p) })
    }

    /// The gradient of rope, in place on dx [B, H, L, D] (the inverse
    /// rotation); `opts` are the forward's.
    pub fn rope_backward(&self, dx: &mut ViewMut<'_, f32>, opts: &RopeOptions<'_>) -> Result<()> {
        let rule = "dx.shape[0] * dx.shape[2]";
        self.rope_raw("Context::rope_backward", sys::attn_rope_backward, dx, rule, opts)
    }

    /// The gradients dq, dk, dv of sdpa from q, k, v, its output `out` and
    /// log-sum-exp `lse` [B, Hq, Lq], and dout; `opts` are the forward's.
    #[allow(clippy::too_many_arguments)]
    pub fn sdpa_backward(
        &self,
        q: &View<'_, f32>,
        k: &View<'_, f32>,
        v: &View<'_, f32>,
        out: &View<'_, f32>,
        lse: &View<'_, f32>,
        dout: &View<'_, f32>,
        dq: &mut ViewMut<'_, f32>,
        dk: &mut ViewMut<'_, f32>,
        dv: &mut ViewMut<'_, f32>,
        opts: &SdpaOptions<'_>,
        extra: SdpaGradOutputs<'_, '_>,
    ) -> Result<()> {
        const F: &str = "Context::sdpa_backward";
        let hq = dim(q.dims(), 4, 1);
        let mut h = Handles::new(self);
        let p = opts.raw(F, &mut h, dim(q.dims(), 4, 0), hq)?;
        let bp = self.grad_outputs(F, &mut h, extra, hq)?;
        let [qt, kt, vt, ot, lt, dot] = h.inputs([q, k, v, out, lse, dout])?;
        let (dqt, dkt, dvt) = (h.output(dq)?, h.output(dk)?, h.output(dv)?);
        // SAFETY: valid handles; the arrays hold the counts checked above.
        self.check(unsafe {
            sys::attn_sdpa_backward(self.as_ptr(), qt, kt, vt, ot, lt, dot, dqt, dkt, dvt, &p, &bp)
        })
    }

    /// The gradients of sdpa_varlen (lse [Hq, Tq]; dmask must be None).
    #[allow(clippy::too_many_arguments)]
    pub fn sdpa_varlen_backward(
        &self,
        q: &View<'_, f32>,
        k: &View<'_, f32>,
        v: &View<'_, f32>,
        out: &View<'_, f32>,
        lse: &View<'_, f32>,
        dout: &View<'_, f32>,
        dq: &mut ViewMut<'_, f32>,
        dk: &mut ViewMut<'_, f32>,
        dv: &mut ViewMut<'_, f32>,
        cu_seqlens_q: &[i64],
        cu_seqlens_k: &[i64],
        opts: &SdpaOptions<'_>,
        extra: SdpaGradOutputs<'_, '_>,
    ) -> Result<()> {
        const F: &str = "Context::sdpa_varlen_backward";
        let batch = varlen_batch(F, cu_seqlens_q, cu_seqlens_k)?;
        let hq = dim(q.dims(), 3, 1);
        let mut h = Handles::new(self);
        let p = opts.raw(F, &mut h, Some(batch as i64), hq)?;
        let bp = self.grad_outputs(F, &mut h, extra, hq)?;
        let [qt, kt, vt, ot, lt, dot] = h.inputs([q, k, v, out, lse, dout])?;
        let (dqt, dkt, dvt) = (h.output(dq)?, h.output(dk)?, h.output(dv)?);
        // SAFETY: valid handles; cu_seqlens hold batch + 1 entries, the other
        // arrays the counts checked above.
        let (c, cq, ck) = (self.as_ptr(), cu_seqlens_q.as_ptr(), cu_seqlens_k.as_ptr());
        self.check(unsafe {
            sys::attn_sdpa_varlen_backward(
                c, qt, kt, vt, ot, lt, dot, dqt, dkt, dvt, batch, cq, ck, &p, &bp,
            )
        })
    }

    /// The gradient of pool: dx (x's shape) from x and dout, and in the
    /// weighted mode dscores (scores' shape); `opts` are the forward's.
    pub fn pool_backward(
        &self,
        x: &View<'_, f32>,
        dout: &View<'_, f32>,
        dx: &mut ViewMut<'_, f32>,
        dscores: Option<&mut ViewMut<'_, f32>>,
        opts: &PoolOptions<'_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let p = opts.raw("Context::pool_backward", &mut h, x)?;
        let (xt, dot) = (h.input(x)?, h.input(dout)?);
        let (dxt, dst) = (h.output(dx)?, h.opt_output(dscores)?);
        // SAFETY: valid handles; lengths holds B entries.
        self.check(unsafe { sys::attn_pool_backward(self.as_ptr(), xt, dot, dxt, dst, &p) })
    }

    /// The gradients of pool_attention: dqueries (summed over the batch), dk,
    /// dv from the forward's inputs, output and lse [B, Hq, M], and dout.
    #[allow(clippy::too_many_arguments)]
    pub fn pool_attention_backward(
        &self,
        queries: &View<'_, f32>,
        k: &View<'_, f32>,
        v: &View<'_, f32>,
        out: &View<'_, f32>,
        lse: &View<'_, f32>,
        dout: &View<'_, f32>,
        dqueries: &mut ViewMut<'_, f32>,
        dk: &mut ViewMut<'_, f32>,
        dv: &mut ViewMut<'_, f32>,
        opts: &PoolAttentionOptions<'_>,
    ) -> Result<()> {
        let mut h = Handles::new(self);
        let p = opts.raw("Context::pool_attention_backward", &mut h, k)?;
        let [qt, kt, vt, ot, lt, dot] = h.inputs([queries, k, v, out, lse, dout])?;
        let (dqt, dkt, dvt) = (h.output(dqueries)?, h.output(dk)?, h.output(dv)?);
        let c = self.as_ptr();
        // SAFETY: valid handles; lengths holds B entries.
        self.check(unsafe {
            sys::attn_pool_attention_backward(c, qt, kt, vt, ot, lt, dot, dqt, dkt, dvt, &p)
        })
    }

    fn grad_outputs(
        &self,
        func: &str,
        h: &mut Handles<'_>,
        extra: SdpaGradOutputs<'_, '_>,
        hq: Option<i64>,
    ) -> Result<sys::attn_sdpa_backward_params> {
        let dsinks = extra.dsinks;
        check_len(func, "dsinks", dsinks.as_deref(), hq, "q's head count (Hq)")?;
        Ok(sys::attn_sdpa_backward_params {
            dmask: h.opt_output(extra.dmask)?,
            dsinks: dsinks.map_or(ptr::null_mut(), |d| d.as_mut_ptr()),
            ..Default::default()
        })
    }
}
