//! [`Buf`]: the f32 storage of tensors, gradients and optimizer slots, on the
//! host (a `Vec`) or in memory a device backend allocated (CUDA managed
//! memory, addressable from the host and the device at one address).
//!
//! Either way it derefs to a slice, so host code reads and writes it as it
//! does a `Vec`, and the backend calls keep taking slices: a device backend
//! recognises the buffers it allocated and runs its kernels on them in place,
//! so a weight, a gradient or an Adam moment stays on the device between
//! steps. A device block waits for the device's queued work before it hands
//! its address to the host ([`DeviceBlock::ptr`]), so the host never reads a
//! value a kernel is still writing.

use crate::backend::Device;
use std::ops::{Deref, DerefMut};

/// Memory a device backend allocated. Dropping it hands the memory back to
/// the backend.
///
/// # Safety
/// For as long as the block lives, `ptr()` must return the address of
/// `value_count()` initialised f32 values (or null when there are none)
/// that the host may read and write: no device work may still be writing
/// them when `ptr()` returns, and no other block may share them.
pub unsafe trait DeviceBlock: Send + Sync + std::fmt::Debug {
    /// The first value's address, once the host may use it (no device work
    /// still queued on the block).
    fn ptr(&self) -> *mut f32;
    /// How many f32 values the block holds.
    fn value_count(&self) -> usize;
    fn device(&self) -> Device;
    /// A copy of the values in a new block of the same device.
    fn duplicate(&self) -> Box<dyn DeviceBlock>;
}

/// f32 values on the host or on a device; see the module doc.
pub struct Buf(Storage);

enum Storage {
    Host(Vec<f32>),
    Device(Box<dyn DeviceBlock>),
}

impl Buf {
    /// Storage in a block a device backend allocated.
    pub fn on_device(block: Box<dyn DeviceBlock>) -> Self {
        Buf(Storage::Device(block))
    }

    /// Where the values live.
    pub fn device(&self) -> Device {
        match &self.0 {
            Storage::Host(_) => Device::Cpu,
            Storage::Device(block) => block.device(),
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        self
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        self
    }

    /// The values in a host `Vec` (no copy when they are on the host already).
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Storage::Host(v) => v,
            Storage::Device(block) => Buf(Storage::Device(block)).to_vec(),
        }
    }
}

impl Deref for Buf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.0 {
            Storage::Host(v) => v,
            // SAFETY: the block owns `len` initialised f32 values at `ptr`, addressable from the
            // host, for as long as it lives; `&self` keeps it alive and unaliased by writers.
            Storage::Device(block) => unsafe { std::slice::from_raw_parts(non_null(block.ptr()), block.value_count()) },
        }
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.0 {
            Storage::Host(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes this the only view.
            Storage::Device(block) => unsafe {
                std::slice::from_raw_parts_mut(non_null(block.ptr()), block.value_count())
            },
        }
    }
}

/// A slice's pointer must not be null even when it is empty.
fn non_null(ptr: *mut f32) -> *mut f32 {
    if ptr.is_null() {
        std::ptr::NonNull::dangling().as_ptr()
    } else {
        ptr
    }
}

impl From<Vec<f32>> for Buf {
    fn from(values: Vec<f32>) -> Self {
        Buf(Storage::Host(values))
    }
}

impl FromIterator<f32> for Buf {
    fn from_iter<I: IntoIterator<Item = f32>>(values: I) -> Self {
        Buf(Storage::Host(values.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a Buf {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf(Storage::Host(Vec::new()))
    }
}

impl Clone for Buf {
    fn clone(&self) -> Self {
        match &self.0 {
            Storage::Host(v) => Buf(Storage::Host(v.clone())),
            Storage::Device(block) => Buf(Storage::Device(block.duplicate())),
        }
    }
}

impl PartialEq for Buf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Storage::Host(v) => v.fmt(f),
            Storage::Device(block) => write!(f, "{:?} on {}", &self[..], block.device()),
        }
    }
}

/// Appends `rows` copies of `row` to `v`, doubling what is there already: a
/// few long copies instead of one short copy per row (a bias over a batch).
pub fn extend_with_rows(v: &mut Vec<f32>, row: &[f32], rows: usize) {
    let (start, len) = (v.len(), rows * row.len());
    if len == 0 {
        return;
    }
    v.reserve(len);
    v.extend_from_slice(row);
    while v.len() - start < len {
        let have = v.len() - start;
        v.extend_from_within(start..start + have.min(len - have));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_buffer_reads_and_writes_as_its_vec() {
        let mut b = Buf::from(vec![1.0, 2.0]);
        b[1] = 5.0;
        assert_eq!(b.device(), Device::Cpu);
        assert_eq!(&b[..], &[1.0, 5.0]);
        assert_eq!(b.clone(), b);
        assert_eq!(b.into_vec(), vec![1.0, 5.0]);
        assert!(Buf::default().is_empty());
    }

    #[test]
    fn rows_extended_onto_a_vector_are_copies_of_the_row() {
        for rows in [0, 1, 2, 3, 7, 64, 100] {
            let mut v = vec![9.0];
            extend_with_rows(&mut v, &[1.0, 2.0, 3.0], rows);
            let want: Vec<f32> = std::iter::once(9.0).chain((0..rows).flat_map(|_| [1.0, 2.0, 3.0])).collect();
            assert_eq!(v, want, "{rows} rows");
        }
    }
}
