//! Raw declarations of libattn's C ABI, written by hand from `include/attn.h`
//! (no bindgen, so the crate builds offline with no dependencies).
//!
//! Every item keeps its C name. The parameter structs are `#[repr(C)]`
//! copies of the header's; `Default` gives the zero-filled struct with
//! `struct_size` set, which the library reads as "all defaults".
//! The structs and constants are declared through two tables (the
//! `c_structs!` and `c_consts!` macros), which also list them for
//! `tests/layout.rs`: it compares every size, field offset and enum value
//! with what a C program compiled against the header prints
//! (tests/abi/layout_dump.c).
//!
//! The safe interface is the `attn` crate.
#![allow(non_camel_case_types)]

pub use std::os::raw::{c_char, c_void};

/// `attn_status`: ATTN_OK or an error code.
pub type attn_status = i32;

// Declares the constants of attn.h (each group's doc goes on each of its
// members) and lists them for tests/layout.rs, which compares them with
// what a C compiler says of the header.
macro_rules! c_consts {
    (@each [$($attr:tt)*] $ty:ty;) => {};
    (@each [$($attr:tt)*] $ty:ty; $c:ident = $v:expr $(, $rc:ident = $rv:expr)*) => {
        $($attr)* pub const $c: $ty = $v;
        c_consts!(@each [$($attr)*] $ty; $($rc = $rv),*);
    };
    ($($(#[$m:meta])* $ty:ty: $($c:ident = $v:expr),+;)*) => {
        $(c_consts!(@each [$(#[$m])*] $ty; $($c = $v),+);)*

        /// Each constant as "const NAME value", for the layout test.
        #[doc(hidden)]
        pub fn const_values() -> Vec<String> {
            vec![$($(format!("const {} {}", stringify!($c), $c as i64)),+),*]
        }
    };
}

c_consts! {
    /// The header's major version this crate was written for (SONAME libattn.so.0).
    i32: ATTN_VERSION_MAJOR = 0;
    /// The largest number of dimensions a tensor has.
    usize: ATTN_MAX_DIMS = 4;
    /// `attn_status` values (pinned, only appended).
    attn_status:
        ATTN_OK = 0,
        ATTN_ERR_NULL_ARG = 1,
        ATTN_ERR_INVALID_ARG = 2,
        ATTN_ERR_SHAPE = 3,
        ATTN_ERR_OVERFLOW = 4,
        ATTN_ERR_NO_MEMORY = 5,
        ATTN_ERR_UNSUPPORTED = 6,
        ATTN_ERR_BAD_HANDLE = 7,
        ATTN_ERR_ALIASING = 8,
        ATTN_ERR_BUSY = 9;
    /// `attn_dtype` values.
    i32: ATTN_DTYPE_F32 = 0, ATTN_DTYPE_U8 = 1, ATTN_DTYPE_F16 = 2, ATTN_DTYPE_BF16 = 3;
    /// `attn_pe_layout` values.
    i32:
        ATTN_PE_INTERLEAVED = 0,
        ATTN_PE_SIN_COS = 1,
        ATTN_PE_SIN_COS_SHIFTED = 2,
        ATTN_PE_COS_SIN = 3;
    /// `attn_rope_style` values.
    i32: ATTN_ROPE_HALF_SPLIT = 0, ATTN_ROPE_INTERLEAVED = 1;
    /// `attn_rope_scaling` values.
    i32:
        ATTN_ROPE_SCALING_NONE = 0,
        ATTN_ROPE_SCALING_LINEAR = 1,
        ATTN_ROPE_SCALING_NTK = 2,
        ATTN_ROPE_SCALING_DYNAMIC_NTK = 3,
        ATTN_ROPE_SCALING_YARN = 4,
        ATTN_ROPE_SCALING_LLAMA3 = 5,
        ATTN_ROPE_SCALING_LONGROPE = 6;
    /// `attn_logits_stage` values.
    i32: ATTN_LOGITS_SCALED = 0, ATTN_LOGITS_SOFTCAPPED = 1, ATTN_LOGITS_MASKED = 2;
    /// `attn_align` values.
    i32: ATTN_ALIGN_TOP_LEFT = 0, ATTN_ALIGN_BOTTOM_RIGHT = 1;
    /// `attn_pool_mode` values.
    i32: ATTN_POOL_SUM = 0, ATTN_POOL_MEAN = 1, ATTN_POOL_MAX = 2, ATTN_POOL_WEIGHTED = 3;
    /// `attn_kv_layout` values.
    i32: ATTN_KV_CONTIGUOUS = 0, ATTN_KV_PAGED = 1;
    /// `attn_mha_weight` values.
    i32:
        ATTN_MHA_Q_WEIGHT = 0,
        ATTN_MHA_K_WEIGHT = 1,
        ATTN_MHA_V_WEIGHT = 2,
        ATTN_MHA_O_WEIGHT = 3,
        ATTN_MHA_Q_BIAS = 4,
        ATTN_MHA_K_BIAS = 5,
        ATTN_MHA_V_BIAS = 6,
        ATTN_MHA_O_BIAS = 7,
        ATTN_MHA_IN_PROJ_WEIGHT = 8,
        ATTN_MHA_IN_PROJ_BIAS = 9;
}

/// Opaque context.
#[repr(C)]
pub struct attn_ctx {
    _opaque: [u8; 0],
}
/// Opaque tensor handle.
#[repr(C)]
pub struct attn_tensor {
    _opaque: [u8; 0],
}
/// Opaque KV cache.
#[repr(C)]
pub struct attn_kv_cache {
    _opaque: [u8; 0],
}
/// Opaque attention layer.
#[repr(C)]
pub struct attn_mha {
    _opaque: [u8; 0],
}

pub type attn_alloc_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, size: usize) -> *mut c_void>;
pub type attn_free_fn = Option<unsafe extern "C" fn(user: *mut c_void, ptr: *mut c_void)>;

// Declares the parameter structs as attn.h does (#[repr(C)], the same
// fields in the same order), each with a Default that is the zero-filled
// struct with its size set (every field's zero is its default), and lists
// their layouts for tests/layout.rs.
macro_rules! c_structs {
    ($($(#[$m:meta])* pub struct $t:ident { $($(#[$fm:meta])* pub $f:ident: $ty:ty,)* })*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug)]
            pub struct $t { $($(#[$fm])* pub $f: $ty,)* }

            impl Default for $t {
                fn default() -> Self {
                    // SAFETY: every field is an integer, a float, a raw pointer
                    // or an Option of a function pointer: all-zero is valid.
                    let mut p: Self = unsafe { std::mem::zeroed() };
                    p.struct_size = std::mem::size_of::<Self>();
                    p
                }
            }
        )*

        /// Each struct as "size T n" and its fields as "field T.f offset
        /// size", for the layout test.
        #[doc(hidden)]
        pub fn struct_layouts() -> Vec<String> {
            fn pointee_size<T>(_: *const T) -> usize {
                std::mem::size_of::<T>()
            }
            let mut out = Vec::new();
            $(
                out.push(format!("size {} {}", stringify!($t), std::mem::size_of::<$t>()));
                let u = std::mem::MaybeUninit::<$t>::uninit();
                let base = u.as_ptr();
                $(
                    // SAFETY: addr_of! forms the field's address without reading it.
                    let f = unsafe { std::ptr::addr_of!((*base).$f) };
                    out.push(format!("field {}.{} {} {}", stringify!($t), stringify!($f),
                                     f as usize - base as usize, pointee_size(f)));
                )*
            )*
            out
        }
    };
}

c_structs! {
    pub struct attn_ctx_options {
        pub struct_size: usize,
        pub num_threads: i32,
        pub reserved_: i32,
        pub alloc: attn_alloc_fn,
        pub free: attn_free_fn,
        pub alloc_user: *mut c_void,
    }

    pub struct attn_softmax_params {
        pub struct_size: usize,
        pub scale: f32,
        pub reserved_: i32,
        pub mask: *const attn_tensor,
        pub bool_mask: *const attn_tensor,
        pub axis: i32,
        pub reserved2_: i32,
    }

    pub struct attn_sinusoidal_params {
        pub struct_size: usize,
        pub layout: i32,
        pub reserved_: i32,
        pub base: f64,
        pub offset: f64,
        pub positions: *const f64,
    }

    pub struct attn_rope_params {
        pub struct_size: usize,
        pub style: i32,
        pub rotary_dim: i32,
        pub theta: f64,
        pub offset: i64,
        pub positions: *const i64,
    }

    pub struct attn_rope_cache_params {
        pub struct_size: usize,
        pub scaling: i32,
        pub apply_attention_factor: i32,
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
        pub short_factors: *const f64,
        pub long_factors: *const f64,
        pub yarn_no_truncate: i32,
        pub reserved_: i32,
    }

    pub struct attn_rope_cached_params {
        pub struct_size: usize,
        pub style: i32,
        pub num_heads: i32,
        pub position_ids: *const i64,
    }

    pub struct attn_sdpa_params {
        pub struct_size: usize,
        pub scale: f32,
        pub softcap: f32,
        pub causal: i32,
        pub align: i32,
        pub window: i32,
        pub reserved_: i32,
        pub window_left: i64,
        pub window_right: i64,
        pub mask: *const attn_tensor,
        pub bool_mask: *const attn_tensor,
        pub kv_lens: *const i64,
        pub alibi_slopes: *const f32,
        pub sinks: *const f32,
        pub lse: *mut attn_tensor,
        pub weights: *mut attn_tensor,
        pub q_offsets: *const i64,
        pub logits: *mut attn_tensor,
        pub logits_stage: i32,
        pub reserved2_: i32,
    }

    pub struct attn_sdpa_backward_params {
        pub struct_size: usize,
        pub dmask: *mut attn_tensor,
        pub dsinks: *mut f32,
    }

    pub struct attn_pool_params {
        pub struct_size: usize,
        pub mode: i32,
        pub reserved_: i32,
        pub lengths: *const i64,
        pub keep: *const attn_tensor,
        pub scores: *const attn_tensor,
    }

    pub struct attn_pool_attention_params {
        pub struct_size: usize,
        pub scale: f32,
        pub reserved_: i32,
        pub lengths: *const i64,
        pub keep: *const attn_tensor,
        pub weights: *mut attn_tensor,
        pub lse: *mut attn_tensor,
    }

    pub struct attn_kv_cache_params {
        pub struct_size: usize,
        pub layout: i32,
        pub dtype: i32,
        pub batch: i64,
        pub kv_heads: i64,
        pub head_dim: i64,
        pub value_dim: i64,
        pub capacity: i64,
        pub block_size: i64,
        pub num_blocks: i64,
    }

    pub struct attn_kv_cache_info {
        pub struct_size: usize,
        pub layout: i32,
        pub dtype: i32,
        pub batch: i64,
        pub kv_heads: i64,
        pub head_dim: i64,
        pub value_dim: i64,
        pub capacity: i64,
        pub block_size: i64,
        pub num_blocks: i64,
        pub free_blocks: i64,
    }

    pub struct attn_kv_append_params {
        pub struct_size: usize,
        pub rope: *const attn_rope_params,
    }

    pub struct attn_mha_decoder_params {
        pub struct_size: usize,
        pub embed_dim: i64,
        pub num_heads: i64,
        pub num_kv_heads: i64,
        pub head_dim: i64,
        pub qkv_bias: i32,
        pub out_bias: i32,
        pub rope: *const attn_rope_params,
        pub scale: f32,
        pub softcap: f32,
        pub window: i32,
        pub reserved_: i32,
        pub window_left: i64,
        /// Long-context scaling of the layer's RoPE, or NULL (since 0.2.0).
        pub rope_scaling: *const attn_rope_cache_params,
    }

    pub struct attn_mha_torch_params {
        pub struct_size: usize,
        pub embed_dim: i64,
        pub num_heads: i64,
        pub kdim: i64,
        pub vdim: i64,
        pub no_bias: i32,
        pub batch_first: i32,
        pub add_bias_kv: i32,
        pub add_zero_attn: i32,
    }

    pub struct attn_mha_torch_forward_params {
        pub struct_size: usize,
        pub need_weights: i32,
        pub per_head_weights: i32,
        pub is_causal: i32,
        pub reserved_: i32,
    }
}

extern "C" {
    pub fn attn_version() -> i32;
    pub fn attn_version_string() -> *const c_char;
    pub fn attn_status_string(status: attn_status) -> *const c_char;

    pub fn attn_ctx_options_init(opts: *mut attn_ctx_options);
    pub fn attn_ctx_create(out: *mut *mut attn_ctx, opts: *const attn_ctx_options) -> attn_status;
    pub fn attn_ctx_destroy(ctx: *mut attn_ctx);
    pub fn attn_ctx_last_error(ctx: *const attn_ctx) -> *const c_char;
    pub fn attn_ctx_num_threads(ctx: *const attn_ctx) -> i32;

    pub fn attn_tensor_new(
        ctx: *mut attn_ctx,
        dtype: i32,
        ndim: i32,
        dims: *const i64,
        out: *mut *mut attn_tensor,
    ) -> attn_status;
    pub fn attn_tensor_wrap(
        ctx: *mut attn_ctx,
        dtype: i32,
        ndim: i32,
        dims: *const i64,
        strides: *const i64,
        data: *mut c_void,
        size_bytes: usize,
        out: *mut *mut attn_tensor,
    ) -> attn_status;
    pub fn attn_tensor_free(ctx: *mut attn_ctx, t: *mut attn_tensor) -> attn_status;
    pub fn attn_tensor_copy(
        ctx: *mut attn_ctx,
        src: *const attn_tensor,
        dst: *mut attn_tensor,
    ) -> attn_status;
    pub fn attn_tensor_data(t: *const attn_tensor) -> *mut c_void;
    pub fn attn_tensor_ndim(t: *const attn_tensor) -> i32;
    pub fn attn_tensor_dtype(t: *const attn_tensor) -> i32;
    pub fn attn_tensor_dims(t: *const attn_tensor) -> *const i64;
    pub fn attn_tensor_strides(t: *const attn_tensor) -> *const i64;

    pub fn attn_softmax_params_init(p: *mut attn_softmax_params);
    pub fn attn_softmax(
        ctx: *mut attn_ctx,
        x: *const attn_tensor,
        y: *mut attn_tensor,
        p: *const attn_softmax_params,
    ) -> attn_status;
    pub fn attn_log_softmax(
        ctx: *mut attn_ctx,
        x: *const attn_tensor,
        y: *mut attn_tensor,
        p: *const attn_softmax_params,
    ) -> attn_status;
    pub fn attn_softmax_backward(
        ctx: *mut attn_ctx,
        y: *const attn_tensor,
        dy: *const attn_tensor,
        dx: *mut attn_tensor,
        dmask: *mut attn_tensor,
        p: *const attn_softmax_params,
    ) -> attn_status;
    pub fn attn_log_softmax_backward(
        ctx: *mut attn_ctx,
        y: *const attn_tensor,
        dy: *const attn_tensor,
        dx: *mut attn_tensor,
        dmask: *mut attn_tensor,
        p: *const attn_softmax_params,
    ) -> attn_status;

    pub fn attn_sinusoidal_params_init(p: *mut attn_sinusoidal_params);
    pub fn attn_sinusoidal(
        ctx: *mut attn_ctx,
        out: *mut attn_tensor,
        p: *const attn_sinusoidal_params,
    ) -> attn_status;
    pub fn attn_sinusoidal_add(
        ctx: *mut attn_ctx,
        x: *mut attn_tensor,
        p: *const attn_sinusoidal_params,
    ) -> attn_status;

    pub fn attn_rope_params_init(p: *mut attn_rope_params);
    pub fn attn_rope(
        ctx: *mut attn_ctx,
        x: *mut attn_tensor,
        p: *const attn_rope_params,
    ) -> attn_status;
    pub fn attn_rope_cache_params_init(p: *mut attn_rope_cache_params);
    pub fn attn_rope_cache_fill(
        ctx: *mut attn_ctx,
        cos: *mut attn_tensor,
        sin: *mut attn_tensor,
        p: *const attn_rope_cache_params,
        attention_factor: *mut f64,
    ) -> attn_status;
    pub fn attn_rope_cached_params_init(p: *mut attn_rope_cached_params);
    pub fn attn_rope_cached(
        ctx: *mut attn_ctx,
        x: *const attn_tensor,
        y: *mut attn_tensor,
        cos: *const attn_tensor,
        sin: *const attn_tensor,
        p: *const attn_rope_cached_params,
    ) -> attn_status;
    pub fn attn_rope_backward(
        ctx: *mut attn_ctx,
        dx: *mut attn_tensor,
        p: *const attn_rope_params,
    ) -> attn_status;
    pub fn attn_alibi_slopes(
        ctx: *mut attn_ctx,
        n_heads: i32,
        max_bias: f64,
        slopes: *mut f32,
    ) -> attn_status;

    pub fn attn_sdpa_params_init(p: *mut attn_sdpa_params);
    pub fn attn_sdpa(
        ctx: *mut attn_ctx,
        q: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *mut attn_tensor,
        p: *const attn_sdpa_params,
    ) -> attn_status;
    pub fn attn_sdpa_varlen(
        ctx: *mut attn_ctx,
        q: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *mut attn_tensor,
        batch: i32,
        cu_seqlens_q: *const i64,
        cu_seqlens_k: *const i64,
        p: *const attn_sdpa_params,
    ) -> attn_status;
    pub fn attn_sdpa_backward_params_init(p: *mut attn_sdpa_backward_params);
    pub fn attn_sdpa_backward(
        ctx: *mut attn_ctx,
        q: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *const attn_tensor,
        lse: *const attn_tensor,
        dout: *const attn_tensor,
        dq: *mut attn_tensor,
        dk: *mut attn_tensor,
        dv: *mut attn_tensor,
        p: *const attn_sdpa_params,
        bp: *const attn_sdpa_backward_params,
    ) -> attn_status;
    pub fn attn_sdpa_varlen_backward(
        ctx: *mut attn_ctx,
        q: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *const attn_tensor,
        lse: *const attn_tensor,
        dout: *const attn_tensor,
        dq: *mut attn_tensor,
        dk: *mut attn_tensor,
        dv: *mut attn_tensor,
        batch: i32,
        cu_seqlens_q: *const i64,
        cu_seqlens_k: *const i64,
        p: *const attn_sdpa_params,
        bp: *const attn_sdpa_backward_params,
    ) -> attn_status;

    pub fn attn_pool_params_init(p: *mut attn_pool_params);
    pub fn attn_pool(
        ctx: *mut attn_ctx,
        x: *const attn_tensor,
        out: *mut attn_tensor,
        p: *const attn_pool_params,
    ) -> attn_status;
    pub fn attn_pool_backward(
        ctx: *mut attn_ctx,
        x: *const attn_tensor,
        dout: *const attn_tensor,
        dx: *mut attn_tensor,
        dscores: *mut attn_tensor,
        p: *const attn_pool_params,
    ) -> attn_status;
    pub fn attn_pool_attention_params_init(p: *mut attn_pool_attention_params);
    pub fn attn_pool_attention(
        ctx: *mut attn_ctx,
        queries: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *mut attn_tensor,
        p: *const attn_pool_attention_params,
    ) -> attn_status;
    pub fn attn_pool_attention_backward(
        ctx: *mut attn_ctx,
        queries: *const attn_tensor,
        k: *const attn_tensor,
        v: *const attn_tensor,
        out: *const attn_tensor,
        lse: *const attn_tensor,
        dout: *const attn_tensor,
        dqueries: *mut attn_tensor,
        dk: *mut attn_tensor,
        dv: *mut attn_tensor,
        p: *const attn_pool_attention_params,
    ) -> attn_status;

    pub fn attn_kv_cache_params_init(p: *mut attn_kv_cache_params);
    pub fn attn_kv_cache_create(
        ctx: *mut attn_ctx,
        p: *const attn_kv_cache_params,
        out: *mut *mut attn_kv_cache,
    ) -> attn_status;
    pub fn attn_kv_cache_wrap(
        ctx: *mut attn_ctx,
        k: *const attn_tensor,
        v: *const attn_tensor,
        lens: *const i64,
        out: *mut *mut attn_kv_cache,
    ) -> attn_status;
    pub fn attn_kv_cache_free(ctx: *mut attn_ctx, cache: *mut attn_kv_cache) -> attn_status;
    pub fn attn_kv_cache_info_get(
        ctx: *mut attn_ctx,
        cache: *const attn_kv_cache,
        info: *mut attn_kv_cache_info,
        lens: *mut i64,
    ) -> attn_status;
    pub fn attn_kv_append_params_init(p: *mut attn_kv_append_params);
    pub fn attn_kv_append(
        ctx: *mut attn_ctx,
        cache: *mut attn_kv_cache,
        k_new: *const attn_tensor,
        v_new: *const attn_tensor,
        n_new: *const i64,
        p: *const attn_kv_append_params,
    ) -> attn_status;
    pub fn attn_kv_truncate(
        ctx: *mut attn_ctx,
        cache: *mut attn_kv_cache,
        seq: i64,
        len: i64,
    ) -> attn_status;
    pub fn attn_kv_reset(ctx: *mut attn_ctx, cache: *mut attn_kv_cache, seq: i64) -> attn_status;
    pub fn attn_kv_copy(
        ctx: *mut attn_ctx,
        cache: *mut attn_kv_cache,
        dst: i64,
        src: i64,
    ) -> attn_status;
    pub fn attn_kv_read(
        ctx: *mut attn_ctx,
        cache: *const attn_kv_cache,
        seq: i64,
        start: i64,
        k: *mut attn_tensor,
        v: *mut attn_tensor,
    ) -> attn_status;
    pub fn attn_kv_attend(
        ctx: *mut attn_ctx,
        cache: *const attn_kv_cache,
        q: *const attn_tensor,
        out: *mut attn_tensor,
        n_new: *const i64,
        p: *const attn_sdpa_params,
    ) -> attn_status;

    pub fn attn_mha_decoder_params_init(p: *mut attn_mha_decoder_params);
    pub fn attn_mha_create_decoder(
        ctx: *mut attn_ctx,
        p: *const attn_mha_decoder_params,
        out: *mut *mut attn_mha,
    ) -> attn_status;
    pub fn attn_mha_free(ctx: *mut attn_ctx, layer: *mut attn_mha) -> attn_status;
    pub fn attn_mha_set_weight(
        ctx: *mut attn_ctx,
        layer: *mut attn_mha,
        which: i32,
        w: *const attn_tensor,
    ) -> attn_status;
    pub fn attn_mha_wrap_weight(
        ctx: *mut attn_ctx,
        layer: *mut attn_mha,
        which: i32,
        w: *const attn_tensor,
    ) -> attn_status;
    pub fn attn_mha_get_weight(
        ctx: *mut attn_ctx,
        layer: *const attn_mha,
        which: i32,
        w: *mut attn_tensor,
    ) -> attn_status;
    pub fn attn_mha_forward(
        ctx: *mut attn_ctx,
        layer: *mut attn_mha,
        cache: *mut attn_kv_cache,
        x: *const attn_tensor,
        y: *mut attn_tensor,
        n_new: *const i64,
    ) -> attn_status;
    pub fn attn_mha_torch_params_init(p: *mut attn_mha_torch_params);
    pub fn attn_mha_create_torch(
        ctx: *mut attn_ctx,
        p: *const attn_mha_torch_params,
        out: *mut *mut attn_mha,
    ) -> attn_status;
    pub fn attn_mha_torch_forward_params_init(p: *mut attn_mha_torch_forward_params);
    pub fn attn_mha_torch_forward(
        ctx: *mut attn_ctx,
        layer: *mut attn_mha,
        query: *const attn_tensor,
        key: *const attn_tensor,
        value: *const attn_tensor,
        key_padding_mask: *const attn_tensor,
        attn_mask: *const attn_tensor,
        p: *const attn_mha_torch_forward_params,
        out: *mut attn_tensor,
        out_weights: *mut attn_tensor,
    ) -> attn_status;

    pub fn attn_cpu_info() -> *const c_char;
    pub fn attn_blas_info(buf: *mut c_char, size: usize) -> attn_status;
}
