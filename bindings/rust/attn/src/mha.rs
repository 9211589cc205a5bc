//! The decoder attention layer (attn_mha_create_decoder / attn_mha_forward):
//! q/k/v projections, rotary embedding, attention through a KV cache, output
//! projection, with PyTorch nn.Linear weight layouts.
use crate::ops::{check_len, dim};
use crate::tensor::Handles;
use crate::{sys, Context, Error, KvCache, Result, RopeOptions, View, ViewMut};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

/// Sizes and options of a decoder layer (0 = the default where noted).
#[derive(Clone, Copy, Default)]
pub struct DecoderConfig<'a> {
    /// E, the model width.
    pub embed_dim: usize,
    /// Hq, the query heads.
    pub num_heads: usize,
    /// Hkv (divides Hq); 0 = Hq.
    pub num_kv_heads: usize,
    /// D; 0 = E / Hq.
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub out_bias: bool,
    /// Rotary embedding of q and k (offset 0, no positions); copied at creation.
    pub rope: Option<RopeOptions<'a>>,
    /// 0 = 1/sqrt(D).
    pub scale: f32,
    /// 0 = off.
    pub softcap: f32,
    /// Sliding window: keys j >= p - window_left only.
    pub window_left: Option<u64>,
}

c_enum! {
    /// A weight of the layer (attn_mha_weight), with its shape.
    pub enum Weight {
        /// Wq [Hq*D, E]
        Q = ATTN_MHA_Q_WEIGHT,
        /// Wk [Hkv*D, E]
        K = ATTN_MHA_K_WEIGHT,
        /// Wv [Hkv*D, E]
        V = ATTN_MHA_V_WEIGHT,
        /// Wo [E, Hq*D]
        O = ATTN_MHA_O_WEIGHT,
        /// bq [Hq*D]
        QBias = ATTN_MHA_Q_BIAS,
        /// bk [Hkv*D]
        KBias = ATTN_MHA_K_BIAS,
        /// bv [Hkv*D]
        VBias = ATTN_MHA_V_BIAS,
        /// bo [E]
        OBias = ATTN_MHA_O_BIAS,
    }
}

/// A layer handle of a context (either form), freed on drop, with the
/// weight calls both forms share; `which` is an attn_mha_weight value.
pub(crate) struct Layer<'c> {
    pub(crate) ctx: &'c Context,
    pub(crate) raw: NonNull<sys::attn_mha>,
    // Wrapped weights stay borrowed while the layer lives.
    _weights: PhantomData<&'c [f32]>,
}

impl<'c> Layer<'c> {
    // `create` calls the library's constructor with the out pointer.
    pub(crate) fn create(
        ctx: &'c Context,
        create: impl FnOnce(*mut *mut sys::attn_mha) -> sys::attn_status,
    ) -> Result<Self> {
        let mut raw = ptr::null_mut();
        ctx.check(create(&mut raw))?;
        Ok(Layer { ctx, raw: NonNull::new(raw).expect("layer"), _weights: PhantomData })
    }

    pub(crate) fn set_weight(&mut self, which: i32, w: &View<'_, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.input(w)?;
        // SAFETY: valid handle.
        self.ctx.check(unsafe {
            sys::attn_mha_set_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which, t)
        })
    }

    pub(crate) fn wrap_weight(&mut self, which: i32, w: View<'c, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.input(&w)?;
        // SAFETY: valid handle; the memory is borrowed for 'c.
        self.ctx.check(unsafe {
            sys::attn_mha_wrap_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which, t)
        })
    }

    pub(crate) fn get_weight(&self, which: i32, w: &mut ViewMut<'_, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.output(w)?;
        // SAFETY: valid handle.
        self.ctx.check(unsafe {
            sys::attn_mha_get_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which, t)
        })
    }
}

impl Drop for Layer<'_> {
    fn drop(&mut self) {
        // SAFETY: a live layer of this context.
        unsafe { sys::attn_mha_free(self.ctx.as_ptr(), self.raw.as_ptr()) };
    }
}

/// Err(InvalidArg) naming `what` unless `x` fits an int64 field.
pub(crate) fn to_i64(func: &str, what: &str, x: u64) -> Result<i64> {
    i64::try_from(x).map_err(|_| Error::InvalidArg(format!("{}: {} = {}", func, what, x)))
}

/// A decoder attention layer of a context, freed on drop. Weights set with
/// [`DecoderLayer::wrap_weight`] stay borrowed for the layer's life.
pub struct DecoderLayer<'c> {
    layer: Layer<'c>,
}

impl<'c> DecoderLayer<'c> {
    /// Creates the layer; its weights are zero until set.
    pub fn new(ctx: &'c Context, cfg: &DecoderConfig<'_>) -> Result<Self> {
        let n = |name: &str, x: usize| to_i64("DecoderLayer::new", name, x as u64);
        let rope = match &cfg.rope {
            Some(r) => Some(r.raw()?),
            None => None,
        };
        let window_left = cfg.window_left.unwrap_or(0);
        let p = sys::attn_mha_decoder_params {
            embed_dim: n("embed_dim", cfg.embed_dim)?,
            num_heads: n("num_heads", cfg.num_heads)?,
            num_kv_heads: n("num_kv_heads", cfg.num_kv_heads)?,
            head_dim: n("head_dim", cfg.head_dim)?,
            qkv_bias: cfg.qkv_bias as i32,
            out_bias: cfg.out_bias as i32,
            rope: rope.as_ref().map_or(ptr::null(), |r| r as *const _),
            scale: cfg.scale,
            softcap: cfg.softcap,
            window: cfg.window_left.is_some() as i32,
            window_left: to_i64("DecoderLayer::new", "window_left", window_left)?,
            ..Default::default()
        };
        // SAFETY: params valid for the call (the library copies rope).
        let layer = Layer::create(ctx, |out| unsafe {
            sys::attn_mha_create_decoder(ctx.as_ptr(), &p, out)
        })?;
        Ok(DecoderLayer { layer })
    }

    /// Copies a weight into the layer.
    pub fn set_weight(&mut self, which: Weight, w: &View<'_, f32>) -> Result<()> {
        self.layer.set_weight(which as i32, w)
    }

    /// Uses `w`'s memory as the weight, without a copy; it stays borrowed
    /// (so unchanged) while the layer lives.
    pub fn wrap_weight(&mut self, which: Weight, w: View<'c, f32>) -> Result<()> {
        self.layer.wrap_weight(which as i32, w)
    }

    /// Reads a weight back into `w`.
    pub fn get_weight(&self, which: Weight, w: &mut ViewMut<'_, f32>) -> Result<()> {
        self.layer.get_weight(which as i32, w)
    }

    /// Runs the layer over new tokens x [B, L, E] into y [B, L, E]: sequence
    /// b takes its first n_new[b] (default L) tokens, whose keys and values
    /// are appended to `cache` (B sequences, Hkv heads, D = Dv); other rows
    /// of y are zero.
    pub fn forward(
        &mut self,
        cache: &mut KvCache<'_>,
        x: &View<'_, f32>,
        y: &mut ViewMut<'_, f32>,
        n_new: Option<&[i64]>,
    ) -> Result<()> {
        const F: &str = "DecoderLayer::forward";
        let ctx = self.layer.ctx;
        if !ptr::eq(ctx, cache.ctx) {
            return Err(Error::BadHandle(format!("{}: the cache is of another context", F)));
        }
        check_len(F, "n_new", n_new, dim(x.dims(), 3, 0), "x.shape[0] (B)")?;
        let mut h = Handles::new(ctx);
        let (xt, yt) = (h.input(x)?, h.output(y)?);
        // SAFETY: valid handles; n_new holds B entries.
        ctx.check(unsafe {
            sys::attn_mha_forward(
                ctx.as_ptr(),
                self.layer.raw.as_ptr(),
                cache.raw.as_ptr(),
                xt,
                yt,
                n_new.map_or(ptr::null(), |n| n.as_ptr()),
            )
        })
    }
}
