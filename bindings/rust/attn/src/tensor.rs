//! Tensors as borrowed slices, and the library handles made from them for
//! the length of one call.
use crate::{sys, Context, Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// An element type the library knows: its dtype and the Rust type of its data.
pub trait Element: sealed::Sealed {
    /// What a slice of this element holds (`u16` bit patterns for the halves).
    type Repr: Copy;
    /// The attn_dtype value.
    const DTYPE: i32;
}

/// The types ops compute on: `f32`, [`F16`], [`Bf16`].
pub trait Float: Element {}

/// IEEE binary16, stored as `u16` bit patterns in native byte order.
#[derive(Clone, Copy, Debug)]
pub enum F16 {}
/// bfloat16 (the upper half of an f32), stored as `u16` bit patterns.
#[derive(Clone, Copy, Debug)]
pub enum Bf16 {}

macro_rules! element {
    ($t:ty, $repr:ty, $dtype:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            type Repr = $repr;
            const DTYPE: i32 = $dtype;
        }
    };
}
element!(f32, f32, sys::ATTN_DTYPE_F32);
element!(u8, u8, sys::ATTN_DTYPE_U8);
element!(F16, u16, sys::ATTN_DTYPE_F16);
element!(Bf16, u16, sys::ATTN_DTYPE_BF16);
impl Float for f32 {}
impl Float for F16 {}
impl Float for Bf16 {}

/// Dims and element strides (outermost first), checked against a slice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    ndim: usize,
    dims: [i64; sys::ATTN_MAX_DIMS],
    strides: [i64; sys::ATTN_MAX_DIMS],
}

impl Shape {
    // Refuses what could make the library reach outside `len` elements:
    // the extent the dims and strides imply must fit.
    fn new(len: usize, dims: &[usize], strides: Option<&[usize]>) -> Result<Shape> {
        let ndim = dims.len();
        if ndim == 0 || ndim > sys::ATTN_MAX_DIMS {
            return Err(Error::InvalidArg(format!(
                "View: {} dims (a tensor has 1 to {})",
                ndim,
                sys::ATTN_MAX_DIMS
            )));
        }
        let too_big = || Error::Overflow(format!("View: dims {:?} overflow", dims));
        let mut s = Shape { ndim, dims: [0; 4], strides: [0; 4] };
        for (i, &d) in dims.iter().enumerate() {
            s.dims[i] = i64::try_from(d).map_err(|_| too_big())?;
        }
        match strides {
            Some(st) => {
                if st.len() != ndim {
                    return Err(Error::Shape(format!(
                        "View: {} strides for {} dims",
                        st.len(),
                        ndim
                    )));
                }
                for (i, &x) in st.iter().enumerate() {
                    s.strides[i] = i64::try_from(x).map_err(|_| too_big())?;
                }
                if dims[ndim - 1] > 1 && st[ndim - 1] != 1 {
                    return Err(Error::InvalidArg(format!(
                        "View: innermost stride {} (must be 1)",
                        st[ndim - 1]
                    )));
                }
            }
            None => {
                let mut acc: usize = 1;
                for i in (0..ndim).rev() {
                    s.strides[i] = i64::try_from(acc).map_err(|_| too_big())?;
                    acc = acc.checked_mul(dims[i].max(1)).ok_or_else(too_big)?;
                }
            }
        }
        // Elements reached: 1 + sum (d - 1) * stride, or 0 for an empty tensor.
        let extent = if dims.contains(&0) {
            0
        } else {
            let mut last: usize = 0;
            for (&d, &st) in dims.iter().zip(&s.strides) {
                let step = (d - 1).checked_mul(st as usize).ok_or_else(too_big)?;
                last = last.checked_add(step).ok_or_else(too_big)?;
            }
            last.checked_add(1).ok_or_else(too_big)?
        };
        if extent > len {
            return Err(Error::Shape(format!(
                "View: dims {:?} with strides {:?} reach {} elements but the slice holds {}",
                dims,
                &s.strides[..ndim],
                extent,
                len
            )));
        }
        Ok(s)
    }

    pub(crate) fn dims(&self) -> &[i64] {
        &self.dims[..self.ndim]
    }
}

/// A tensor read by an op: a borrowed slice with dims and strides.
pub struct View<'a, E: Element> {
    data: &'a [E::Repr],
    shape: Shape,
}

impl<'a, E: Element> Clone for View<'a, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<'a, E: Element> Copy for View<'a, E> {}

impl<'a, E: Element> View<'a, E> {
    /// The contiguous (row-major) tensor of `dims` at the start of `data`.
    pub fn new(data: &'a [E::Repr], dims: &[usize]) -> Result<Self> {
        Ok(View { data, shape: Shape::new(data.len(), dims, None)? })
    }

    /// A strided view: `strides` in elements, outermost first, the innermost
    /// 1; 0 repeats an element along that axis (broadcast).
    pub fn strided(data: &'a [E::Repr], dims: &[usize], strides: &[usize]) -> Result<Self> {
        Ok(View { data, shape: Shape::new(data.len(), dims, Some(strides))? })
    }

    /// The dims, outermost first.
    pub fn dims(&self) -> &[i64] {
        self.shape.dims()
    }

    /// The borrowed data.
    pub fn data(&self) -> &'a [E::Repr] {
        self.data
    }
}

/// A tensor written by an op: a mutably borrowed slice with dims and strides.
pub struct ViewMut<'a, E: Element> {
    data: &'a mut [E::Repr],
    shape: Shape,
}

impl<'a, E: Element> ViewMut<'a, E> {
    /// The contiguous (row-major) tensor of `dims` at the start of `data`.
    pub fn new(data: &'a mut [E::Repr], dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(data.len(), dims, None)?;
        Ok(ViewMut { data, shape })
    }

    /// A strided view (strides in elements, the innermost 1).
    pub fn strided(data: &'a mut [E::Repr], dims: &[usize], strides: &[usize]) -> Result<Self> {
        let shape = Shape::new(data.len(), dims, Some(strides))?;
        Ok(ViewMut { data, shape })
    }

    /// The dims, outermost first.
    pub fn dims(&self) -> &[i64] {
        self.shape.dims()
    }

    /// The same tensor, read-only.
    pub fn as_view(&self) -> View<'_, E> {
        View { data: &*self.data, shape: self.shape }
    }

    /// The borrowed data.
    pub fn data(&mut self) -> &mut [E::Repr] {
        &mut *self.data
    }
}

// Constructors that name the element type, so a call to a generic op needs
// no turbofish: View::f32(&q, &dims) instead of View::<f32>::new(&q, &dims).
macro_rules! named_constructors {
    ($($t:ty, $repr:ty, $name:ident, $what:literal;)*) => {$(
        impl<'a> View<'a, $t> {
            #[doc = concat!("The contiguous ", $what, " tensor of `dims` at the start of `data`.")]
            pub fn $name(data: &'a [$repr], dims: &[usize]) -> Result<Self> {
                View::new(data, dims)
            }
        }
        impl<'a> ViewMut<'a, $t> {
            #[doc = concat!("The contiguous ", $what, " tensor of `dims` at the start of `data`.")]
            pub fn $name(data: &'a mut [$repr], dims: &[usize]) -> Result<Self> {
                ViewMut::new(data, dims)
            }
        }
    )*};
}
named_constructors! {
    f32, f32, f32, "f32";
    u8, u8, u8, "u8 (boolean mask)";
    F16, u16, f16, "binary16 (u16 bit patterns)";
    Bf16, u16, bf16, "bfloat16 (u16 bit patterns)";
}

/// Tensor handles of one call, freed when it ends (the context keeps a
/// freed handle's memory for reuse, so this is cheap).
pub(crate) struct Handles<'c> {
    ctx: &'c Context,
    list: Vec<*mut sys::attn_tensor>,
}

impl<'c> Handles<'c> {
    pub(crate) fn new(ctx: &'c Context) -> Self {
        Handles { ctx, list: Vec::with_capacity(8) }
    }

    fn wrap(
        &mut self,
        dtype: i32,
        shape: &Shape,
        data: *mut sys::c_void,
        bytes: usize,
    ) -> Result<*mut sys::attn_tensor> {
        let mut t = std::ptr::null_mut();
        // SAFETY: dims and strides hold ndim entries; Shape::new checked that
        // the extent lies inside the `bytes` at data, which the caller borrows
        // for at least the call.
        let st = unsafe {
            sys::attn_tensor_wrap(
                self.ctx.as_ptr(),
                dtype,
                shape.ndim as i32,
                shape.dims.as_ptr(),
                shape.strides.as_ptr(),
                data,
                bytes,
                &mut t,
            )
        };
        self.ctx.check(st)?;
        self.list.push(t);
        Ok(t)
    }

    /// A handle the library only reads.
    pub(crate) fn input<E: Element>(&mut self, v: &View<'_, E>) -> Result<*const sys::attn_tensor> {
        let bytes = std::mem::size_of_val(v.data);
        self.wrap(E::DTYPE, &v.shape, v.data.as_ptr() as *mut sys::c_void, bytes)
            .map(|t| t as *const _)
    }

    /// A handle the library may write through.
    pub(crate) fn output<E: Element>(
        &mut self,
        v: &mut ViewMut<'_, E>,
    ) -> Result<*mut sys::attn_tensor> {
        let bytes = std::mem::size_of_val(v.data);
        self.wrap(E::DTYPE, &v.shape, v.data.as_mut_ptr() as *mut sys::c_void, bytes)
    }

    /// Handles of several inputs at once.
    pub(crate) fn inputs<const N: usize>(
        &mut self,
        views: [&View<'_, f32>; N],
    ) -> Result<[*const sys::attn_tensor; N]> {
        let mut out = [std::ptr::null(); N];
        for (t, v) in out.iter_mut().zip(views) {
            *t = self.input(v)?;
        }
        Ok(out)
    }

    pub(crate) fn opt_input<E: Element>(
        &mut self,
        v: Option<&View<'_, E>>,
    ) -> Result<*const sys::attn_tensor> {
        v.map_or(Ok(std::ptr::null()), |v| self.input(v))
    }

    pub(crate) fn opt_output<E: Element>(
        &mut self,
        v: Option<&mut ViewMut<'_, E>>,
    ) -> Result<*mut sys::attn_tensor> {
        v.map_or(Ok(std::ptr::null_mut()), |v| self.output(v))
    }
}

impl<'c> Drop for Handles<'c> {
    fn drop(&mut self) {
        for &t in &self.list {
            // SAFETY: t was wrapped from this context and not freed yet.
            unsafe { sys::attn_tensor_free(self.ctx.as_ptr(), t) };
        }
    }
}
