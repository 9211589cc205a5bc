//! The PyTorch nn.MultiheadAttention layer (attn_mha_create_torch /
//! attn_mha_torch_forward), as the Python binding's attn.MultiheadAttention:
//! torch's constructor arguments, weights under the state_dict's names,
//! forward's masks and weights (eval mode: no dropout).
use crate::mha::{to_i64, Layer};
use crate::tensor::Handles;
use crate::{sys, Context, Error, Result, View, ViewMut};
use std::ptr;

/// nn.MultiheadAttention's constructor arguments. `bias` defaults to true,
/// as in torch; add_bias_kv and add_zero_attn are refused by the library
/// (Err(Unsupported)).
#[derive(Clone, Copy, Debug)]
pub struct MhaConfig {
    /// E, the model width.
    pub embed_dim: usize,
    /// H (divides E).
    pub num_heads: usize,
    /// Key features; None = E.
    pub kdim: Option<usize>,
    /// Value features; None = E.
    pub vdim: Option<usize>,
    /// in_proj_bias and out_proj.bias.
    pub bias: bool,
    /// [B, L, E] tensors instead of [L, B, E].
    pub batch_first: bool,
    pub add_bias_kv: bool,
    pub add_zero_attn: bool,
}

impl Default for MhaConfig {
    fn default() -> Self {
        MhaConfig {
            embed_dim: 0,
            num_heads: 0,
            kdim: None,
            vdim: None,
            bias: true,
            batch_first: false,
            add_bias_kv: false,
            add_zero_attn: false,
        }
    }
}

/// A mask of forward, with torch's meanings: `Bool` nonzero = NOT allowed
/// to attend (torch's True); `Float` is added to the logits.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    Bool(View<'a, u8>),
    Float(View<'a, f32>),
}

/// forward's options besides the tensors (need_weights is whether a
/// weights buffer is given).
#[derive(Clone, Copy)]
pub struct MhaForwardOptions<'a> {
    /// [B, S]: padding keys (Bool) or added per key (Float).
    pub key_padding_mask: Option<Mask<'a>>,
    /// [L, S] (every batch and head) or [B*H, L, S] (index b*H + h).
    pub attn_mask: Option<Mask<'a>>,
    /// Weights averaged over heads [B, L, S] (torch's default, true), or per
    /// head [B, H, L, S].
    pub average_attn_weights: bool,
    /// Hides key j from query i when j > i, on top of the masks.
    pub is_causal: bool,
}

impl Default for MhaForwardOptions<'_> {
    fn default() -> Self {
        MhaForwardOptions {
            key_padding_mask: None,
            attn_mask: None,
            average_attn_weights: true,
            is_causal: false,
        }
    }
}

/// Weights by torch's state_dict names: (name, shape, row-major values).
pub type StateDict = Vec<(&'static str, Vec<usize>, Vec<f32>)>;

/// The state_dict names and their attn_mha_weight values.
const WEIGHT_IDS: [(&str, i32); 7] = [
    ("in_proj_weight", sys::ATTN_MHA_IN_PROJ_WEIGHT),
    ("q_proj_weight", sys::ATTN_MHA_Q_WEIGHT),
    ("k_proj_weight", sys::ATTN_MHA_K_WEIGHT),
    ("v_proj_weight", sys::ATTN_MHA_V_WEIGHT),
    ("in_proj_bias", sys::ATTN_MHA_IN_PROJ_BIAS),
    ("out_proj.weight", sys::ATTN_MHA_O_WEIGHT),
    ("out_proj.bias", sys::ATTN_MHA_O_BIAS),
];

/// torch.nn.MultiheadAttention's forward on libattn, owning its weights
/// (zero until set), freed on drop. Weights set with
/// [`MultiheadAttention::wrap_weight`] stay borrowed for the layer's life.
///
/// ```no_run
/// use attn::{Context, MhaConfig, MhaForwardOptions, MultiheadAttention, View, ViewMut};
/// let ctx = Context::new()?;
/// let cfg = MhaConfig { embed_dim: 8, num_heads: 2, batch_first: true, ..Default::default() };
/// let mut mha = MultiheadAttention::new(&ctx, &cfg)?;
/// let (w_in, w_out, b_in, b_out) = (vec![0.1f32; 24 * 8], vec![0.1f32; 64], [0f32; 24], [0f32; 8]);
/// mha.load_state_dict(
///     &[
///         ("in_proj_weight", View::f32(&w_in, &[24, 8])?),
///         ("in_proj_bias", View::f32(&b_in, &[24])?),
///         ("out_proj.weight", View::f32(&w_out, &[8, 8])?),
///         ("out_proj.bias", View::f32(&b_out, &[8])?),
///     ],
///     true,
/// )?;
/// let x = vec![1.0f32; 2 * 3 * 8];
/// let x = View::f32(&x, &[2, 3, 8])?;
/// let (out, weights) = mha.forward_owned(&x, &x, &x, &MhaForwardOptions::default(), true)?;
/// assert_eq!((out.len(), weights.unwrap().len()), (2 * 3 * 8, 2 * 3 * 3));
/// # Ok::<(), attn::Error>(())
/// ```
pub struct MultiheadAttention<'c> {
    layer: Layer<'c>,
    cfg: MhaConfig,
}

impl<'c> MultiheadAttention<'c> {
    /// Creates the layer (attn_mha_create_torch).
    pub fn new(ctx: &'c Context, cfg: &MhaConfig) -> Result<Self> {
        let n = |name: &str, x: usize| to_i64("MultiheadAttention::new", name, x as u64);
        let p = sys::attn_mha_torch_params {
            embed_dim: n("embed_dim", cfg.embed_dim)?,
            num_heads: n("num_heads", cfg.num_heads)?,
            kdim: n("kdim", cfg.kdim.unwrap_or(0))?,
            vdim: n("vdim", cfg.vdim.unwrap_or(0))?,
            no_bias: !cfg.bias as i32,
            batch_first: cfg.batch_first as i32,
            add_bias_kv: cfg.add_bias_kv as i32,
            add_zero_attn: cfg.add_zero_attn as i32,
            ..Default::default()
        };
        // SAFETY: params valid for the call.
        let layer =
            Layer::create(ctx, |out| unsafe { sys::attn_mha_create_torch(ctx.as_ptr(), &p, out) })?;
        Ok(MultiheadAttention { layer, cfg: *cfg })
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &MhaConfig {
        &self.cfg
    }

    /// The weights this layer has, in state_dict order, with their shapes:
    /// in_proj_weight [3E, E] when kdim = vdim = E, else q_proj_weight [E,
    /// E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]; in_proj_bias
    /// [3E] (bias); out_proj.weight [E, E]; out_proj.bias [E] (bias).
    pub fn weight_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let e = self.cfg.embed_dim;
        let (kdim, vdim) = (self.cfg.kdim.unwrap_or(e), self.cfg.vdim.unwrap_or(e));
        let mut out = Vec::new();
        if kdim == e && vdim == e {
            out.push(("in_proj_weight", vec![3 * e, e]));
        } else {
            out.push(("q_proj_weight", vec![e, e]));
            out.push(("k_proj_weight", vec![e, kdim]));
            out.push(("v_proj_weight", vec![e, vdim]));
        }
        if self.cfg.bias {
            out.push(("in_proj_bias", vec![3 * e]));
        }
        out.push(("out_proj.weight", vec![e, e]));
        if self.cfg.bias {
            out.push(("out_proj.bias", vec![e]));
        }
        out
    }

    // The attn_mha_weight of a state_dict name this layer has.
    fn weight_id(&self, func: &str, name: &str) -> Result<i32> {
        let known = self.weight_shapes().iter().any(|(n, _)| *n == name);
        match WEIGHT_IDS.iter().find(|(n, _)| *n == name) {
            Some(&(_, id)) if known => Ok(id),
            _ => Err(Error::InvalidArg(format!(
                "{}: no weight '{}' in this layer (it has {:?})",
                func,
                name,
                self.weight_shapes().iter().map(|(n, _)| *n).collect::<Vec<_>>()
            ))),
        }
    }

    /// Copies the weight named as in torch's state_dict into the layer.
    pub fn set_weight(&mut self, name: &str, w: &View<'_, f32>) -> Result<()> {
        let id = self.weight_id("MultiheadAttention::set_weight", name)?;
        self.layer.set_weight(id, w)
    }

    /// Uses `w`'s memory as the named weight, without a copy; it stays
    /// borrowed (so unchanged) while the layer lives.
    pub fn wrap_weight(&mut self, name: &str, w: View<'c, f32>) -> Result<()> {
        let id = self.weight_id("MultiheadAttention::wrap_weight", name)?;
        self.layer.wrap_weight(id, w)
    }

    /// Reads the named weight back into `w`.
    pub fn get_weight(&self, name: &str, w: &mut ViewMut<'_, f32>) -> Result<()> {
        let id = self.weight_id("MultiheadAttention::get_weight", name)?;
        self.layer.get_weight(id, w)
    }

    /// Copies weights named as torch's state_dict. `strict`: every weight
    /// of [`MultiheadAttention::weight_shapes`] given and no other name.
    /// Names and shapes are all checked first: on Err nothing is changed.
    pub fn load_state_dict(
        &mut self,
        entries: &[(&str, View<'_, f32>)],
        strict: bool,
    ) -> Result<()> {
        const F: &str = "MultiheadAttention::load_state_dict";
        let shapes = self.weight_shapes();
        for (i, (name, w)) in entries.iter().enumerate() {
            let want = match shapes.iter().find(|(n, _)| n == name) {
                Some((_, s)) => s,
                None if strict => {
                    return Err(Error::InvalidArg(format!(
                        "{}: unexpected key '{}' (the layer has {:?})",
                        F,
                        name,
                        shapes.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                    )))
                }
                None => continue,
            };
            if entries[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::InvalidArg(format!("{}: '{}' given twice", F, name)));
            }
            if !w.dims().iter().map(|&d| d as usize).eq(want.iter().copied()) {
                return Err(Error::Shape(format!(
                    "{}: {} has shape {:?} but must be {:?}",
                    F,
                    name,
                    w.dims(),
                    want
                )));
            }
        }
        if strict {
            if let Some((missing, _)) =
                shapes.iter().find(|(n, _)| !entries.iter().any(|(e, _)| e == n))
            {
                return Err(Error::InvalidArg(format!("{}: missing key '{}'", F, missing)));
            }
        }
        for (name, w) in entries {
            if let Some(&(_, id)) = WEIGHT_IDS.iter().find(|(n, _)| n == name) {
                if shapes.iter().any(|(n, _)| n == name) {
                    self.layer.set_weight(id, w)?;
                }
            }
        }
        Ok(())
    }

    /// The weights under torch's state_dict names: (name, shape, values).
    pub fn state_dict(&self) -> Result<StateDict> {
        let mut out = Vec::new();
        for (name, shape) in self.weight_shapes() {
            let mut data = vec![0f32; shape.iter().product()];
            self.get_weight(name, &mut ViewMut::f32(&mut data, &shape)?)?;
            out.push((name, shape, data));
        }
        Ok(out)
    }

    /// torch's forward: query [L, B, E] ([B, L, E] with batch_first), key
    /// [S, B, kdim], value [S, B, vdim] into out (query's L and B, E); with
    /// `weights` (torch's need_weights) the attention weights [B, L, S], or
    /// [B, H, L, S] when !average_attn_weights. A query row that sees no key
    /// gives zeros where torch gives NaN. On Err nothing is written.
    pub fn forward(
        &mut self,
        query: &View<'_, f32>,
        key: &View<'_, f32>,
        value: &View<'_, f32>,
        opts: &MhaForwardOptions<'_>,
        out: &mut ViewMut<'_, f32>,
        weights: Option<&mut ViewMut<'_, f32>>,
    ) -> Result<()> {
        let ctx = self.layer.ctx;
        let mut h = Handles::new(ctx);
        let mut mask = |m: &Option<Mask<'_>>| match m {
            None => Ok(ptr::null()),
            Some(Mask::Bool(v)) => h.input(v),
            Some(Mask::Float(v)) => h.input(v),
        };
        let (kpm, am) = (mask(&opts.key_padding_mask)?, mask(&opts.attn_mask)?);
        let p = sys::attn_mha_torch_forward_params {
            need_weights: weights.is_some() as i32,
            per_head_weights: !opts.average_attn_weights as i32,
            is_causal: opts.is_causal as i32,
            ..Default::default()
        };
        let (qt, kt, vt) = (h.input(query)?, h.input(key)?, h.input(value)?);
        let (ot, wt) = (h.output(out)?, h.opt_output(weights)?);
        // SAFETY: valid handles and params for the call.
        ctx.check(unsafe {
            sys::attn_mha_torch_forward(
                ctx.as_ptr(),
                self.layer.raw.as_ptr(),
                qt,
                kt,
                vt,
                kpm,
                am,
                &p,
                ot,
                wt,
            )
        })
    }

    /// [`MultiheadAttention::forward`] into new vectors, as the Python
    /// binding returns them: (out, Some(weights)) when `need_weights`.
    pub fn forward_owned(
        &mut self,
        query: &View<'_, f32>,
        key: &View<'_, f32>,
        value: &View<'_, f32>,
        opts: &MhaForwardOptions<'_>,
        need_weights: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let (q, k) = (query.dims(), key.dims());
        if q.len() != 3 || k.len() != 3 {
            return Err(Error::Shape(format!(
                "MultiheadAttention::forward_owned: query and key must be 3-D, not {}-D and {}-D",
                q.len(),
                k.len()
            )));
        }
        let u = |x: i64| x as usize;
        let (b, l, s) = if self.cfg.batch_first { (q[0], q[1], k[1]) } else { (q[1], q[0], k[0]) };
        let out_dims = [u(q[0]), u(q[1]), self.cfg.embed_dim];
        let w_dims: Vec<usize> = if opts.average_attn_weights {
            vec![u(b), u(l), u(s)]
        } else {
            vec![u(b), self.cfg.num_heads, u(l), u(s)]
        };
        // Sizes from the views and the config; refused before allocating.
        let count = |d: &[usize]| {
            d.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).ok_or_else(|| {
                Error::Overflow(format!("MultiheadAttention::forward_owned: {:?} overflows", d))
            })
        };
        let mut out = vec![0f32; count(&out_dims)?];
        let mut w = vec![0f32; if need_weights { count(&w_dims)? } else { 0 }];
        {
            let mut ov = ViewMut::f32(&mut out, &out_dims)?;
            let mut wv = if need_weights { Some(ViewMut::f32(&mut w, &w_dims)?) } else { None };
            self.forward(query, key, value, opts, &mut ov, wv.as_mut())?;
        }
        Ok((out, if need_weights { Some(w) } else { None }))
    }
}
