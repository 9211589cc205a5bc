//! The Rust declarations against the header: every struct size, field offset
//! and field size, and every enum constant, as a C program compiled against
//! attn.h prints them (tests/abi/layout_dump.c, shared with the Python
//! binding). A header change that the crate has not followed (an appended
//! field grows the struct) fails here. The
//! function declarations are checked too: each is turned back into a C
//! prototype, and C refuses one that conflicts with the header's.
use attn_sys::*;
use std::collections::BTreeSet;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;

// The sizes, offsets and values the crate declares (its c_structs! and
// c_consts! tables).
fn rust_view() -> BTreeSet<String> {
    struct_layouts().into_iter().chain(const_values()).collect()
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
    // Shared with the Python binding's layout test.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/abi/layout_dump.c");
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
