//! The tests and examples of this crate run without LD_LIBRARY_PATH: an
//! rpath to the directory attn-sys linked libattn from.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ATTN_LIB_DIR");
    if let Some(dir) = std::env::var_os("DEP_ATTN_LIB_DIR") {
        if std::env::var_os("CARGO_CFG_UNIX").is_some() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.to_string_lossy());
        }
    }
}
