//! Finds libattn: the directory in ATTN_LIB_DIR (a build tree such as
//! build/default/src, or an install's lib/), else what `pkg-config --libs
//! attn` says (the pkg-config program, not a crate: no dependencies).
//! Links the shared library. Tells the attn crate the directory
//! (DEP_ATTN_LIB_DIR, for the rpath of its tests and examples) and the
//! layout test where attn.h is (ATTN_SYS_INCLUDE_DIR).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for v in ["ATTN_LIB_DIR", "ATTN_INCLUDE_DIR", "PKG_CONFIG", "PKG_CONFIG_PATH"] {
        println!("cargo:rerun-if-env-changed={}", v);
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // bindings/rust/attn-sys -> the source tree's include/.
    let tree_include = manifest.join("../../../include");

    let (lib_dirs, mut include) = match env::var_os("ATTN_LIB_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !has_library(&dir) {
                fail(&format!("ATTN_LIB_DIR={} holds no libattn shared library", dir.display()));
            }
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=dylib=attn");
            (vec![dir], None)
        }
        None => from_pkg_config(),
    };
    if let Some(dir) = env::var_os("ATTN_INCLUDE_DIR") {
        include = Some(PathBuf::from(dir));
    }
    let include = include.unwrap_or(tree_include);
    let include = include.canonicalize().unwrap_or(include);
    println!("cargo:rustc-env=ATTN_SYS_INCLUDE_DIR={}", include.display());
    println!("cargo:include={}", include.display());
    if let Some(dir) = lib_dirs.first() {
        println!("cargo:lib_dir={}", dir.display());
        // This crate's own tests find the library without LD_LIBRARY_PATH.
        if env::var_os("CARGO_CFG_UNIX").is_some() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        }
    }
}

fn has_library(dir: &Path) -> bool {
    ["libattn.so", "libattn.dylib", "attn.lib"].iter().any(|f| dir.join(f).exists())
}

fn fail(why: &str) -> ! {
    panic!(
        "\n\nattn-sys: {}.\nPoint it at libattn with ATTN_LIB_DIR=<dir holding libattn.so> \
         (a build tree: build/default/src), or install libattn and make \
         `pkg-config --libs attn` work (PKG_CONFIG_PATH=<prefix>/lib/pkgconfig).\n\n",
        why
    )
}

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let prog = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(&prog)
        .args(args)
        .arg("attn")
        .output()
        .map_err(|e| format!("cannot run {}: {}", prog, e))?;
    if !out.status.success() {
        return Err(format!(
            "`{} {} attn` failed: {}",
            prog,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// Passes on the -L directories and -l libraries of `pkg-config --libs attn`.
fn from_pkg_config() -> (Vec<PathBuf>, Option<PathBuf>) {
    let libs = pkg_config(&["--libs"]).unwrap_or_else(|e| fail(&e));
    let mut dirs = Vec::new();
    let mut linked = false;
    for tok in libs.split_whitespace() {
        if let Some(d) = tok.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", d);
            dirs.push(PathBuf::from(d));
        } else if let Some(l) = tok.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={}", l);
            linked |= l == "attn";
        }
    }
    if !linked {
        fail(&format!("`pkg-config --libs attn` gave no -lattn: '{}'", libs));
    }
    let include = pkg_config(&["--variable=includedir"]).ok().map(PathBuf::from);
    (dirs, include)
}
