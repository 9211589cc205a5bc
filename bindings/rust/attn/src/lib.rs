//! Safe Rust interface to libattn (include/attn.h): softmax kernels,
//! positional encodings, scaled dot-product attention, pooling, KV caches,
//! a decoder attention layer and PyTorch's nn.MultiheadAttention on the CPU.
//!
//! - [`Context`] owns the library's context: dropping it destroys it. It is
//!   `Send` but not `Sync`, which is the library's threading rule (one thread
//!   at a time per context; one context per thread for parallel work).
//! - Tensors are borrowed slices: [`View`] (read) and [`ViewMut`] (written),
//!   with a shape and optional strides checked against the slice when they are
//!   made, so the library never reaches outside it. Element types are `f32`,
//!   `u8` (boolean masks) and the half types [`F16`] and [`Bf16`], whose data
//!   are `u16` bit patterns.
//! - Every fallible call returns [`Result`]; an [`Error`] carries the status
//!   and the context's message (attn_ctx_last_error), or, for a slice or
//!   array the crate refuses before calling the library, a message of its own
//!   in the same style.
//!
//! ```no_run
//! let ctx = attn::Context::new()?;
//! let mut x = [1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0];
//! ctx.softmax_inplace(&mut attn::ViewMut::f32(&mut x, &[2, 3])?, &Default::default())?;
//! # Ok::<(), attn::Error>(())
//! ```
use std::cell::Cell;
use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

pub use attn_sys as sys;

/// A Rust enum over the values of a C enum, taken from attn-sys's constants
/// (which its layout test checks against attn.h); `as i32` is the value the
/// library takes.
macro_rules! c_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $c:ident,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(i32)]
        pub enum $name { $($(#[$vm])* $v = sys::$c,)* }
    };
}

mod kv;
mod mha;
mod mha_torch;
mod ops;
mod tensor;

pub use kv::{KvCache, KvCacheInfo};
pub use mha::{DecoderConfig, DecoderLayer, Weight};
pub use mha_torch::{Mask, MhaConfig, MhaForwardOptions, MultiheadAttention, StateDict};
pub use ops::{
    Align, LogitsStage, PeLayout, PoolAttentionOptions, PoolAttentionOutputs, PoolMode,
    PoolOptions, RopeCacheOptions, RopeCachedOptions, RopeOptions, RopeScaling, RopeStyle,
    SdpaGradOutputs, SdpaOptions, SdpaOutputs, SinusoidalOptions, SoftmaxOptions,
};
pub use tensor::{Bf16, Element, Float, View, ViewMut, F16};

/// A failed call: the status (one variant per attn_status code) and the
/// message that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// ATTN_ERR_NULL_ARG: a required pointer or handle was NULL.
    NullArg(String),
    /// ATTN_ERR_INVALID_ARG: a value is out of range (enum, scale, stride, ...).
    InvalidArg(String),
    /// ATTN_ERR_SHAPE: shapes, or a slice and a shape, do not fit together.
    Shape(String),
    /// ATTN_ERR_OVERFLOW: a size product overflows.
    Overflow(String),
    /// ATTN_ERR_NO_MEMORY: the allocator (or a paged cache's pool) ran out.
    NoMemory(String),
    /// ATTN_ERR_UNSUPPORTED: a valid request this build does not do (dtype, ...).
    Unsupported(String),
    /// ATTN_ERR_BAD_HANDLE: a handle from another context.
    BadHandle(String),
    /// ATTN_ERR_ALIASING: an output overlaps an input.
    Aliasing(String),
    /// ATTN_ERR_BUSY: another thread is inside a call on the context.
    Busy(String),
    /// A status this crate does not know (a newer library), with its message.
    Other(i32, String),
}

impl Error {
    pub(crate) fn from_status(status: i32, message: String) -> Error {
        match status {
            sys::ATTN_ERR_NULL_ARG => Error::NullArg(message),
            sys::ATTN_ERR_INVALID_ARG => Error::InvalidArg(message),
            sys::ATTN_ERR_SHAPE => Error::Shape(message),
            sys::ATTN_ERR_OVERFLOW => Error::Overflow(message),
            sys::ATTN_ERR_NO_MEMORY => Error::NoMemory(message),
            sys::ATTN_ERR_UNSUPPORTED => Error::Unsupported(message),
            sys::ATTN_ERR_BAD_HANDLE => Error::BadHandle(message),
            sys::ATTN_ERR_ALIASING => Error::Aliasing(message),
            sys::ATTN_ERR_BUSY => Error::Busy(message),
            _ => Error::Other(status, message),
        }
    }

    /// The attn_status code (ATTN_ERR_SHAPE = 3, ...).
    pub fn status(&self) -> i32 {
        match self {
            Error::NullArg(_) => sys::ATTN_ERR_NULL_ARG,
            Error::InvalidArg(_) => sys::ATTN_ERR_INVALID_ARG,
            Error::Shape(_) => sys::ATTN_ERR_SHAPE,
            Error::Overflow(_) => sys::ATTN_ERR_OVERFLOW,
            Error::NoMemory(_) => sys::ATTN_ERR_NO_MEMORY,
            Error::Unsupported(_) => sys::ATTN_ERR_UNSUPPORTED,
            Error::BadHandle(_) => sys::ATTN_ERR_BAD_HANDLE,
            Error::Aliasing(_) => sys::ATTN_ERR_ALIASING,
            Error::Busy(_) => sys::ATTN_ERR_BUSY,
            Error::Other(s, _) => *s,
        }
    }

    /// The status's name ("ATTN_ERR_SHAPE"), from attn_status_string().
    pub fn status_name(&self) -> &'static str {
        // SAFETY: attn_status_string returns static storage, never NULL.
        unsafe { static_str(sys::attn_status_string(self.status())) }
    }

    /// The sentence that explains the failure.
    pub fn message(&self) -> &str {
        match self {
            Error::NullArg(m)
            | Error::InvalidArg(m)
            | Error::Shape(m)
            | Error::Overflow(m)
            | Error::NoMemory(m)
            | Error::Unsupported(m)
            | Error::BadHandle(m)
            | Error::Aliasing(m)
            | Error::Busy(m)
            | Error::Other(_, m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status_name(), self.message())
    }
}

impl std::error::Error for Error {}

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

// SAFETY (callers): p is NULL or a NUL-terminated string in static storage.
unsafe fn static_str(p: *const sys::c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    CStr::from_ptr(p).to_str().unwrap_or("(not UTF-8)")
}

/// A libattn context: thread count, scratch memory and the last error.
/// Every op is a method; caches and layers borrow it.
///
/// It may move to another thread (`Send`) but not be shared (`!Sync`):
///
/// ```compile_fail,E0277
/// fn shared<T: Sync>() {}
/// shared::<attn::Context>();
/// ```
pub struct Context {
    raw: NonNull<sys::attn_ctx>,
    // The library serves one call at a time per context: not Sync.
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a context may move between threads; it is used by one at a time,
// which !Sync and &self / &mut self borrows guarantee.
unsafe impl Send for Context {}

impl Context {
    /// A context with the default thread count (the CPUs available to the
    /// process).
    pub fn new() -> Result<Context> {
        Context::create(0)
    }

    /// A context whose ops use at most `num_threads` threads (1 = no worker
    /// threads; at most 1024).
    pub fn with_threads(num_threads: usize) -> Result<Context> {
        if num_threads == 0 || num_threads > 1024 {
            return Err(Error::InvalidArg(format!(
                "Context::with_threads: num_threads = {} (must be 1..1024)",
                num_threads
            )));
        }
        Context::create(num_threads as i32)
    }

    fn create(num_threads: i32) -> Result<Context> {
        let opts = sys::attn_ctx_options { num_threads, ..Default::default() };
        let mut raw = std::ptr::null_mut();
        // SAFETY: out and opts are valid for the call.
        let st = unsafe { sys::attn_ctx_create(&mut raw, &opts) };
        if st != sys::ATTN_OK {
            // There is no context to hold a message.
            let why = match st {
                sys::ATTN_ERR_NO_MEMORY => {
                    ": out of memory, or a worker thread could not be started (the \
                     system's limit on threads or on memory for their stacks)"
                }
                _ => "",
            };
            let e = Error::from_status(st, String::new());
            return Err(Error::from_status(
                st,
                format!("attn_ctx_create failed ({}){}", e.status_name(), why),
            ));
        }
        Ok(Context {
            raw: NonNull::new(raw).expect("attn_ctx_create gave NULL with ATTN_OK"),
            _not_sync: PhantomData,
        })
    }

    /// The thread count an op may use.
    pub fn num_threads(&self) -> usize {
        // SAFETY: raw is a live context.
        unsafe { sys::attn_ctx_num_threads(self.raw.as_ptr()) as usize }
    }

    /// The raw handle, for calls through [`sys`]; valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::attn_ctx {
        self.raw.as_ptr()
    }

    /// The message of the most recent failed call ("" if none).
    pub fn last_error(&self) -> String {
        // SAFETY: the text is valid until the next call on the context;
        // it is copied at once.
        unsafe {
            let p = sys::attn_ctx_last_error(self.raw.as_ptr());
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    /// Ok for ATTN_OK, else the status with the context's message.
    pub(crate) fn check(&self, status: i32) -> Result<()> {
        if status == sys::ATTN_OK {
            Ok(())
        } else {
            Err(Error::from_status(status, self.last_error()))
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: raw is live; caches, layers and tensor handles borrow the
        // context, so none outlives this.
        unsafe { sys::attn_ctx_destroy(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("num_threads", &self.num_threads()).finish()
    }
}

/// The linked library's version: major * 10000 + minor * 100 + patch.
pub fn version() -> i32 {
    // SAFETY: no arguments.
    unsafe { sys::attn_version() }
}

/// The linked library's version as "major.minor.patch".
pub fn version_string() -> &'static str {
    // SAFETY: static storage.
    unsafe { static_str(sys::attn_version_string()) }
}

/// The CPU features found and the kernel set chosen.
pub fn cpu_info() -> &'static str {
    // SAFETY: static storage.
    unsafe { static_str(sys::attn_cpu_info()) }
}

/// A line describing the linked BLAS.
pub fn blas_info() -> String {
    let mut buf = [0 as sys::c_char; 256];
    // SAFETY: buf holds buf.len() bytes; the line is always NUL-terminated.
    unsafe {
        sys::attn_blas_info(buf.as_mut_ptr(), buf.len());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}
