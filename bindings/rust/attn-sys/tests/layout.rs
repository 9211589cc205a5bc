//! The Rust declarations against the header: every struct size, field offset
//! and field size, and every enum constant, as a C program compiled against
//! attn.h prints them (tests/layout.c). A header change that the crate has
//! not followed (an appended field grows the struct) fails here. The
//! function declarations are checked too: each is turned back into a C
//! prototype, and C refuses one that conflicts with the header's.
use attn_sys::*;
use std::collections::BTreeSet;
use std::mem::{size_of, MaybeUninit};
use std::path::{Path, PathBuf};
use std::process::Command;

fn pointee_size<T>(_: *const T) -> usize {
    size_of::<T>()
}

// offsetof and sizeof of a field without offset_of! (Rust 1.77).
macro_rules! layout {
    ($out:ident, $t:ident { $($f:ident),* }) => {{
        $out.insert(format!("size {} {}", stringify!($t), size_of::<$t>()));
        let u = MaybeUninit::<$t>::uninit();
        let base = u.as_ptr();
        $(
            // SAFETY: addr_of! forms the field's address without reading it.
            let f = unsafe { std::ptr::addr_of!((*base).$f) };
            $out.insert(format!("field {}.{} {} {}", stringify!($t), stringify!($f),
                                f as usize - base as usize, pointee_size(f)));
        )*
    }};
}

macro_rules! consts {
    ($out:ident, $($c:ident),*) => {
        $( $out.insert(format!("const {} {}", stringify!($c), $c as i64)); )*
    };
}

fn rust_view() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    layout!(out, attn_ctx_options { struct_size, num_threads, reserved_, alloc, free, alloc_user });
    layout!(
        out,
        attn_softmax_params { struct_size, scale, reserved_, mask, bool_mask, axis, reserved2_ }
    );
    layout!(
        out,
        attn_sinusoidal_params { struct_size, layout, reserved_, base, offset, positions }
    );
    layout!(out, attn_rope_params { struct_size, style, rotary_dim, theta, offset, positions });
    layout!(
        out,
        attn_rope_cache_params {
            struct_size,
            scaling,
            apply_attention_factor,
            theta,
            factor,
            original_max_position,
            seq_len,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            low_freq_factor,
            high_freq_factor,
            short_factors,
            long_factors,
            yarn_no_truncate,
            reserved_
        }
    );
    layout!(out, attn_rope_cached_params { struct_size, style, num_heads, position_ids });
    layout!(
        out,
        attn_sdpa_params {
            struct_size,
            scale,
            softcap,
            causal,
            align,
            window,
            reserved_,
            window_left,
            window_right,
            mask,
            bool_mask,
            kv_lens,
            alibi_slopes,
            sinks,
            lse,
            weights,
            q_offsets,
            logits,
            logits_stage,
            reserved2_
        }
    );
    layout!(out, attn_sdpa_backward_params { struct_size, dmask, dsinks });
    layout!(out, attn_pool_params { struct_size, mode, reserved_, lengths, keep, scores });
    layout!(
        out,
        attn_pool_attention_params { struct_size, scale, reserved_, lengths, keep, weights, lse }
    );
    layout!(
        out,
        attn_kv_cache_params {
            struct_size,
            layout,
            dtype,
            batch,
            kv_heads,
            head_dim,
            value_dim,
            capacity,
            block_size,
            num_blocks
        }
    );
    layout!(
        out,
        attn_kv_cache_info {
            struct_size,
            layout,
            dtype,
            batch,
            kv_heads,
            head_dim,
            value_dim,
            capacity,
            block_size,
            num_blocks,
            free_blocks
        }
    );
    layout!(out, attn_kv_append_params { struct_size, rope });
    layout!(
        out,
        attn_mha_decoder_params {
            struct_size,
            embed_dim,
            num_heads,
            num_kv_heads,
            head_dim,
            qkv_bias,
            out_bias,
            rope,
            scale,
            softcap,
            window,
            reserved_,
            window_left,
            rope_scaling
        }
    );
    layout!(
        out,
        attn_mha_torch_params {
            struct_size,
            embed_dim,
            num_heads,
            kdim,
            vdim,
            no_bias,
            batch_first,
            add_bias_kv,
            add_zero_attn
        }
    );
    layout!(
        out,
        attn_mha_torch_forward_params {
            struct_size,
            need_weights,
            per_head_weights,
            is_causal,
            reserved_
        }
    );
    consts!(
        out,
        ATTN_OK,
        ATTN_ERR_NULL_ARG,
        ATTN_ERR_INVALID_ARG,
        ATTN_ERR_SHAPE,
        ATTN_ERR_OVERFLOW,
        ATTN_ERR_NO_MEMORY,
        ATTN_ERR_UNSUPPORTED,
        ATTN_ERR_BAD_HANDLE,
        ATTN_ERR_ALIASING,
        ATTN_ERR_BUSY,
        ATTN_DTYPE_F32,
        ATTN_DTYPE_U8,
        ATTN_DTYPE_F16,
        ATTN_DTYPE_BF16,
        ATTN_PE_INTERLEAVED,
        ATTN_PE_SIN_COS,
        ATTN_PE_SIN_COS_SHIFTED,
        ATTN_PE_COS_SIN,
        ATTN_ROPE_HALF_SPLIT,
        ATTN_ROPE_INTERLEAVED,
        ATTN_ROPE_SCALING_NONE,
        ATTN_ROPE_SCALING_LINEAR,
        ATTN_ROPE_SCALING_NTK,
        ATTN_ROPE_SCALING_DYNAMIC_NTK,
        ATTN_ROPE_SCALING_YARN,
        ATTN_ROPE_SCALING_LLAMA3,
        ATTN_ROPE_SCALING_LONGROPE,
        ATTN_LOGITS_SCALED,
        ATTN_LOGITS_SOFTCAPPED,
        ATTN_LOGITS_MASKED,
        ATTN_ALIGN_TOP_LEFT,
        ATTN_ALIGN_BOTTOM_RIGHT,
        ATTN_POOL_SUM,
        ATTN_POOL_MEAN,
        ATTN_POOL_MAX,
        ATTN_POOL_WEIGHTED,
        ATTN_KV_CONTIGUOUS,
        ATTN_KV_PAGED,
        ATTN_MHA_Q_WEIGHT,
        ATTN_MHA_K_WEIGHT,
        ATTN_MHA_V_WEIGHT,
        ATTN_MHA_O_WEIGHT,
        ATTN_MHA_Q_BIAS,
        ATTN_MHA_K_BIAS,
        ATTN_MHA_V_BIAS,
        ATTN_MHA_O_BIAS,
        ATTN_MHA_IN_PROJ_WEIGHT,
        ATTN_MHA_IN_PROJ_BIAS,
        ATTN_MAX_DIMS,
        ATTN_VERSION_MAJOR
    );
    out
}

fn include_dir() -> &'static str {
    let include = env!("ATTN_SYS_INCLUDE_DIR");
    assert!(
        Path::new(include).join("attn.h").is_file(),
        "attn.h not found in '{}': set ATTN_INCLUDE_DIR to the directory holding it",
        include
    );
    include
}

// Compiles `src` (a path) against attn.h; `extra` are more cc arguments.
fn compile(src: &Path, extra: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I", include_dir()])
        .arg(src)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler '{}' (set CC): {}", cc, e));
    assert!(
        out.status.success(),
        "{} failed on {}:\n{}",
        cc,
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn c_view() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/layout.c");
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("attn_layout");
    compile(&src, &["-o", exe.to_str().unwrap()]);
    let run = Command::new(&exe).output().expect("run the layout program");
    assert!(run.status.success(), "{} failed", exe.display());
    String::from_utf8(run.stdout).unwrap().lines().map(str::to_string).collect()
}

// A Rust type of the extern block as C spells it.
fn c_type(t: &str) -> String {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("*mut ") {
        return format!("{} *", c_type(rest));
    }
    if let Some(rest) = t.strip_prefix("*const ") {
        return format!("const {} *", c_type(rest));
    }
    match t {
        "i32" => "int32_t",
        "i64" => "int64_t",
        "usize" => "size_t",
        "f32" => "float",
        "f64" => "double",
        "c_char" => "char",
        "c_void" => "void",
        _ if t.starts_with("attn_") => t,
        _ => panic!("no C spelling for the Rust type '{}'", t),
    }
    .to_string()
}

// The extern block of src/lib.rs as C prototypes.
fn c_prototypes() -> Vec<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read src/lib.rs");
    let block = &src[src.find("extern \"C\" {").expect("extern block")..];
    let block = &block[..block.find("\n}").expect("end of the extern block")];
    let mut out = Vec::new();
    for decl in block.split(';').filter_map(|d| d.split("pub fn ").nth(1)) {
        let decl: String = decl.split_whitespace().collect::<Vec<_>>().join(" ");
        let open = decl.find('(').unwrap();
        let close = decl.rfind(')').unwrap();
        let name = &decl[..open];
        let params: Vec<String> = decl[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, t) = p.split_once(':').expect("name: type");
                format!("{} {}", c_type(t), n.trim())
            })
            .collect();
        let ret = decl[close + 1..].trim().strip_prefix("->").map_or("void".to_string(), c_type);
        let params = if params.is_empty() { "void".to_string() } else { params.join(", ") };
        out.push(format!("{} {}({});", ret, name, params));
    }
    out
}

#[test]
fn declarations_match_the_header() {
    let c = c_view();
    let rust = rust_view();
    let only_c: Vec<_> = c.difference(&rust).collect();
    let only_rust: Vec<_> = rust.difference(&c).collect();
    assert!(
        only_c.is_empty() && only_rust.is_empty(),
        "attn-sys and attn.h ({}) disagree.\nC says:\n  {}\nRust says:\n  {}",
        env!("ATTN_SYS_INCLUDE_DIR"),
        only_c.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        only_rust.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    assert!(c.len() > 150, "the layout program printed only {} lines", c.len());
}

#[test]
fn function_declarations_match_the_header() {
    let protos = c_prototypes();
    assert!(protos.len() >= 60, "only {} declarations found", protos.len());
    let src = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("attn_prototypes.c");
    std::fs::write(&src, format!("#include \"attn.h\"\n{}\n", protos.join("\n"))).unwrap();
    // A redeclaration whose type differs from attn.h's is a compile error.
    compile(&src, &["-fsyntax-only"]);
}

#[test]
fn defaults_carry_their_size() {
    assert_eq!(attn_sdpa_params::default().struct_size, size_of::<attn_sdpa_params>());
    assert!(attn_sdpa_params::default().mask.is_null());
    assert!(attn_ctx_options::default().alloc.is_none());
}
