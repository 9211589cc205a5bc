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

/// A weight of the layer (attn_mha_weight), with its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Wq [Hq*D, E]
    Q = 0,
    /// Wk [Hkv*D, E]
    K = 1,
    /// Wv [Hkv*D, E]
    V = 2,
    /// Wo [E, Hq*D]
    O = 3,
    /// bq [Hq*D]
    QBias = 4,
    /// bk [Hkv*D]
    KBias = 5,
    /// bv [Hkv*D]
    VBias = 6,
    /// bo [E]
    OBias = 7,
}

/// A decoder attention layer of a context, freed on drop. Weights set with
/// [`DecoderLayer::wrap_weight`] stay borrowed for the layer's life.
pub struct DecoderLayer<'c> {
    ctx: &'c Context,
    raw: NonNull<sys::attn_mha>,
    _weights: PhantomData<&'c [f32]>,
}

impl<'c> DecoderLayer<'c> {
    /// Creates the layer; its weights are zero until set.
    pub fn new(ctx: &'c Context, cfg: &DecoderConfig<'_>) -> Result<Self> {
        let n = |name: &str, x: u64| {
            i64::try_from(x)
                .map_err(|_| Error::InvalidArg(format!("DecoderLayer::new: {} = {}", name, x)))
        };
        let rope = match &cfg.rope {
            Some(r) => Some(r.raw()?),
            None => None,
        };
        let p = sys::attn_mha_decoder_params {
            embed_dim: n("embed_dim", cfg.embed_dim as u64)?,
            num_heads: n("num_heads", cfg.num_heads as u64)?,
            num_kv_heads: n("num_kv_heads", cfg.num_kv_heads as u64)?,
            head_dim: n("head_dim", cfg.head_dim as u64)?,
            qkv_bias: cfg.qkv_bias as i32,
            out_bias: cfg.out_bias as i32,
            rope: rope.as_ref().map_or(ptr::null(), |r| r as *const _),
            scale: cfg.scale,
            softcap: cfg.softcap,
            window: cfg.window_left.is_some() as i32,
            window_left: n("window_left", cfg.window_left.unwrap_or(0))?,
            ..Default::default()
        };
        let mut raw = ptr::null_mut();
        // SAFETY: params valid for the call (the library copies rope).
        ctx.check(unsafe { sys::attn_mha_create_decoder(ctx.as_ptr(), &p, &mut raw) })?;
        Ok(DecoderLayer { ctx, raw: NonNull::new(raw).expect("layer"), _weights: PhantomData })
    }

    /// Copies a weight into the layer.
    pub fn set_weight(&mut self, which: Weight, w: &View<'_, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.input(w)?;
        // SAFETY: valid handle.
        self.ctx.check(unsafe {
            sys::attn_mha_set_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which as i32, t)
        })
    }

    /// Uses `w`'s memory as the weight, without a copy; it stays borrowed
    /// (so unchanged) while the layer lives.
    pub fn wrap_weight(&mut self, which: Weight, w: View<'c, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.input(&w)?;
        // SAFETY: valid handle; the memory is borrowed for 'c.
        self.ctx.check(unsafe {
            sys::attn_mha_wrap_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which as i32, t)
        })
    }

    /// Reads a weight back into `w`.
    pub fn get_weight(&self, which: Weight, w: &mut ViewMut<'_, f32>) -> Result<()> {
        let mut h = Handles::new(self.ctx);
        let t = h.output(w)?;
        // SAFETY: valid handle.
        self.ctx.check(unsafe {
            sys::attn_mha_get_weight(self.ctx.as_ptr(), self.raw.as_ptr(), which as i32, t)
        })
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
        if !ptr::eq(self.ctx, cache.ctx) {
            return Err(Error::BadHandle(format!("{}: the cache is of another context", F)));
        }
        check_len(F, "n_new", n_new, dim(x.dims(), 3, 0), "x.shape[0] (B)")?;
        let mut h = Handles::new(self.ctx);
        let (xt, yt) = (h.input(x)?, h.output(y)?);
        // SAFETY: valid handles; n_new holds B entries.
        self.ctx.check(unsafe {
            sys::attn_mha_forward(
                self.ctx.as_ptr(),
                self.raw.as_ptr(),
                cache.raw.as_ptr(),
                xt,
                yt,
                n_new.map_or(ptr::null(), |n| n.as_ptr()),
            )
        })
    }
}

impl Drop for DecoderLayer<'_> {
    fn drop(&mut self) {
        // SAFETY: a live layer of this context.
        unsafe { sys::attn_mha_free(self.ctx.as_ptr(), self.raw.as_ptr()) };
    }
}
