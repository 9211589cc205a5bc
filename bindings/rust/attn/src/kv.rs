//! KV cache: keys and values of past tokens per sequence, contiguous or
//! paged, owned by the library or wrapping caller memory.
use crate::ops::{check_len, dim};
use crate::tensor::Handles;
use crate::{sys, Context, Error, Result, RopeOptions, SdpaOptions, View, ViewMut};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

/// What a cache is and holds (attn_kv_cache_info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheInfo {
    pub paged: bool,
    pub batch: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    /// Most tokens one sequence may hold.
    pub capacity: usize,
    /// Paged: tokens per block, blocks in the pool, blocks no sequence holds.
    pub block_size: usize,
    pub num_blocks: usize,
    pub free_blocks: usize,
}

/// A KV cache of a context; it borrows the context (and, when it wraps
/// caller memory, that memory) for its whole life, and is freed on drop.
/// So a cache cannot be used after its context is gone:
///
/// ```compile_fail,E0505
/// let ctx = attn::Context::new().unwrap();
/// let cache = attn::KvCache::contiguous(&ctx, 1, 1, 4, 0, 8).unwrap();
/// drop(ctx);
/// cache.lens().unwrap();
/// ```
pub struct KvCache<'c> {
    pub(crate) ctx: &'c Context,
    pub(crate) raw: NonNull<sys::attn_kv_cache>,
    batch: usize,
    _mem: PhantomData<&'c mut [f32]>,
}

fn size(func: &str, name: &str, x: usize) -> Result<i64> {
    i64::try_from(x).map_err(|_| Error::InvalidArg(format!("{}: {} = {}", func, name, x)))
}

// The creation params both layouts share, checked for `func` in this order.
fn params(
    func: &str,
    layout: i32,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    value_dim: usize,
) -> Result<sys::attn_kv_cache_params> {
    Ok(sys::attn_kv_cache_params {
        layout,
        batch: size(func, "batch", batch)?,
        kv_heads: size(func, "kv_heads", kv_heads)?,
        head_dim: size(func, "head_dim", head_dim)?,
        value_dim: size(func, "value_dim", value_dim)?,
        ..Default::default()
    })
}

impl<'c> KvCache<'c> {
    fn create(ctx: &'c Context, p: &sys::attn_kv_cache_params) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: params and out valid for the call.
        ctx.check(unsafe { sys::attn_kv_cache_create(ctx.as_ptr(), p, &mut raw) })?;
        KvCache::adopt(ctx, raw)
    }

    fn adopt(ctx: &'c Context, raw: *mut sys::attn_kv_cache) -> Result<Self> {
        let mut c =
            KvCache { ctx, raw: NonNull::new(raw).expect("cache"), batch: 0, _mem: PhantomData };
        c.batch = c.info()?.batch;
        Ok(c)
    }

    /// A contiguous cache: `batch` sequences of `capacity` tokens, `kv_heads`
    /// heads, keys of `head_dim` and values of `value_dim` (0 = head_dim).
    pub fn contiguous(
        ctx: &'c Context,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        value_dim: usize,
        capacity: usize,
    ) -> Result<Self> {
        const F: &str = "KvCache::contiguous";
        let mut p = params(F, sys::ATTN_KV_CONTIGUOUS, batch, kv_heads, head_dim, value_dim)?;
        p.capacity = size(F, "capacity", capacity)?;
        KvCache::create(ctx, &p)
    }

    /// A paged cache (vLLM's PagedAttention): a pool of `num_blocks` blocks
    /// of `block_size` tokens (0 = 16) shared by the sequences.
    pub fn paged(
        ctx: &'c Context,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        value_dim: usize,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        const F: &str = "KvCache::paged";
        let mut p = params(F, sys::ATTN_KV_PAGED, batch, kv_heads, head_dim, value_dim)?;
        p.block_size = size(F, "block_size", block_size)?;
        p.num_blocks = size(F, "num_blocks", num_blocks)?;
        KvCache::create(ctx, &p)
    }

    /// A contiguous cache over caller memory: keys [B, Hkv, capacity, D],
    /// values [B, Hkv, capacity, Dv], `lens` the tokens already there.
    pub fn wrap(
        ctx: &'c Context,
        k: ViewMut<'c, f32>,
        v: ViewMut<'c, f32>,
        lens: Option<&[i64]>,
    ) -> Result<Self> {
        let (mut k, mut v) = (k, v);
        check_len("KvCache::wrap", "lens", lens, dim(k.dims(), 4, 0), "k.shape[0] (B)")?;
        let mut h = Handles::new(ctx);
        let (kt, vt) = (h.output(&mut k)?, h.output(&mut v)?);
        let mut raw = ptr::null_mut();
        // SAFETY: valid handles; lens holds B entries; the memory stays
        // borrowed for 'c, the cache's whole life.
        ctx.check(unsafe {
            sys::attn_kv_cache_wrap(
                ctx.as_ptr(),
                kt,
                vt,
                lens.map_or(ptr::null(), |l| l.as_ptr()),
                &mut raw,
            )
        })?;
        KvCache::adopt(ctx, raw)
    }

    fn info_raw(&self, lens: *mut i64) -> Result<sys::attn_kv_cache_info> {
        let mut info = sys::attn_kv_cache_info::default();
        // SAFETY: info is sized; lens is NULL or holds batch entries.
        self.ctx.check(unsafe {
            sys::attn_kv_cache_info_get(self.ctx.as_ptr(), self.raw.as_ptr(), &mut info, lens)
        })?;
        Ok(info)
    }

    /// The cache's sizes.
    pub fn info(&self) -> Result<KvCacheInfo> {
        let i = self.info_raw(ptr::null_mut())?;
        let u = |x: i64| x as usize;
        Ok(KvCacheInfo {
            paged: i.layout == sys::ATTN_KV_PAGED,
            batch: u(i.batch),
            kv_heads: u(i.kv_heads),
            head_dim: u(i.head_dim),
            value_dim: u(i.value_dim),
            capacity: u(i.capacity),
            block_size: u(i.block_size),
            num_blocks: u(i.num_blocks),
            free_blocks: u(i.free_blocks),
        })
    }

    /// The current length of every sequence.
    pub fn lens(&self) -> Result<Vec<i64>> {
        let mut lens = vec![0i64; self.batch];
        self.info_raw(lens.as_mut_ptr())?;
        Ok(lens)
    }

    fn n_new(&self, func: &str, n_new: Option<&[i64]>) -> Result<*const i64> {
        check_len(func, "n_new", n_new, Some(self.batch as i64), "the cache's batch")?;
        Ok(n_new.map_or(ptr::null(), |n| n.as_ptr()))
    }

    /// Appends new keys k_new [B, Hkv, L, D] and values v_new [B, Hkv, L, Dv]:
    /// the first n_new[b] (default L) rows of each sequence, optionally
    /// rotated at their absolute positions first (offset 0, no positions).
    pub fn append(
        &mut self,
        k_new: &View<'_, f32>,
        v_new: &View<'_, f32>,
        n_new: Option<&[i64]>,
        rope: Option<&RopeOptions<'_>>,
    ) -> Result<()> {
        let n = self.n_new("KvCache::append", n_new)?;
        let rp = match rope {
            Some(r) => Some(r.raw()?),
            None => None,
        };
        let p = sys::attn_kv_append_params {
            rope: rp.as_ref().map_or(ptr::null(), |r| r as *const _),
            ..Default::default()
        };
        let mut h = Handles::new(self.ctx);
        let (kt, vt) = (h.input(k_new)?, h.input(v_new)?);
        // SAFETY: valid handles; n_new holds B entries; rope's positions (if
        // any: the library refuses them) are a live slice.
        self.ctx.check(unsafe {
            sys::attn_kv_append(self.ctx.as_ptr(), self.raw.as_ptr(), kt, vt, n, &p)
        })
    }

    /// Shortens sequence `seq` to `len` tokens.
    pub fn truncate(&mut self, seq: usize, len: usize) -> Result<()> {
        const F: &str = "KvCache::truncate";
        let (s, l) = (size(F, "seq", seq)?, size(F, "len", len)?);
        // SAFETY: live cache.
        self.ctx.check(unsafe { sys::attn_kv_truncate(self.ctx.as_ptr(), self.raw.as_ptr(), s, l) })
    }

    /// Empties sequence `seq`, or every sequence for None.
    pub fn reset(&mut self, seq: Option<usize>) -> Result<()> {
        let s = match seq {
            Some(s) => size("KvCache::reset", "seq", s)?,
            None => -1,
        };
        // SAFETY: live cache.
        self.ctx.check(unsafe { sys::attn_kv_reset(self.ctx.as_ptr(), self.raw.as_ptr(), s) })
    }

    /// Makes sequence `dst` a copy of `src` (paged: shares its blocks).
    pub fn copy_seq(&mut self, dst: usize, src: usize) -> Result<()> {
        const F: &str = "KvCache::copy_seq";
        let (d, s) = (size(F, "dst", dst)?, size(F, "src", src)?);
        // SAFETY: live cache.
        self.ctx.check(unsafe { sys::attn_kv_copy(self.ctx.as_ptr(), self.raw.as_ptr(), d, s) })
    }

    /// Reads positions start.. of sequence `seq` into k [Hkv, n, D] and/or
    /// v [Hkv, n, Dv].
    pub fn read(
        &self,
        seq: usize,
        start: usize,
        k: Option<&mut ViewMut<'_, f32>>,
        v: Option<&mut ViewMut<'_, f32>>,
    ) -> Result<()> {
        const F: &str = "KvCache::read";
        let (s, st) = (size(F, "seq", seq)?, size(F, "start", start)?);
        let mut h = Handles::new(self.ctx);
        let (kt, vt) = (h.opt_output(k)?, h.opt_output(v)?);
        // SAFETY: valid handles.
        self.ctx.check(unsafe {
            sys::attn_kv_read(self.ctx.as_ptr(), self.raw.as_ptr(), s, st, kt, vt)
        })
    }

    /// Attention of new queries q [B, Hq, Lq, D] over the cache into out
    /// [B, Hq, Lq, Dv]: row i of sequence b is the token at position
    /// len_b - n_new[b] + i. Options as sdpa (mask, bool_mask, kv_lens and
    /// q_offsets must be None); `lse` [B, Hq, Lq].
    pub fn attend(
        &self,
        q: &View<'_, f32>,
        out: &mut ViewMut<'_, f32>,
        n_new: Option<&[i64]>,
        opts: &SdpaOptions<'_>,
        lse: Option<&mut ViewMut<'_, f32>>,
    ) -> Result<()> {
        const F: &str = "KvCache::attend";
        let n = self.n_new(F, n_new)?;
        let mut h = Handles::new(self.ctx);
        let mut p = opts.raw(F, &mut h, Some(self.batch as i64), dim(q.dims(), 4, 1))?;
        p.lse = h.opt_output(lse)?;
        let (qt, ot) = (h.input(q)?, h.output(out)?);
        // SAFETY: valid handles; n_new and the option arrays hold the counts
        // checked above (the library refuses a q whose B is not the cache's).
        self.ctx.check(unsafe {
            sys::attn_kv_attend(self.ctx.as_ptr(), self.raw.as_ptr(), qt, ot, n, &p)
        })
    }

    /// The raw handle, for calls through [`crate::sys`].
    pub fn as_ptr(&self) -> *mut sys::attn_kv_cache {
        self.raw.as_ptr()
    }
}

impl Drop for KvCache<'_> {
    fn drop(&mut self) {
        // SAFETY: a live cache of this context.
        unsafe { sys::attn_kv_cache_free(self.ctx.as_ptr(), self.raw.as_ptr()) };
    }
}
