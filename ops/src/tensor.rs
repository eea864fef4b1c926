//! Tensors: [`Tensor`] (f32, what the tape differentiates; its [`Buf`] is on
//! the host or on a backend's device) and host
//! [`HostTensor`]s of plain values: [`IntTensor`] (i32 token ids, labels) and
//! [`ByteTensor`] (u8 raw pixels).
//!
//! Storage is a shared, copy-on-write buffer: cloning a tensor onto the autodiff
//! tape costs a reference count, not a copy of the weights, and the optimizer
//! updates in place once the tape is gone. A host tensor's rows
//! ([`Tensor::slice_rows`]) share its buffer too: the shards of an inference
//! batch read their inputs where they lie. ndarray views give the usual
//! n-dimensional API on top.

use crate::backend::{Backend, Device};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::sync::{Arc, Weak};

/// A dense, row-major f32 tensor: `shape`'s elements from value `start` of `data`.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Buf>,
    /// Where the tensor's values begin in `data` (not 0 for a slice of rows).
    start: usize,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

/// A dense, row-major tensor of plain values that never enter autodiff:
/// [`IntTensor`] (i32 token ids, class labels) and [`ByteTensor`] (u8 raw pixels).
#[derive(Clone, Debug)]
pub struct HostTensor<T> {
    shape: Vec<usize>,
    data: Arc<Vec<T>>,
    /// As [`Tensor`]'s.
    start: usize,
}

impl<T: Copy + PartialEq> PartialEq for HostTensor<T> {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

/// i32 token ids and class labels.
pub type IntTensor = HostTensor<i32>;

/// u8 raw pixels (video frames, images), 4x smaller than f32 on the data path;
/// models convert them to f32 at their input (see [`DType::U8`]).
pub type ByteTensor = HostTensor<u8>;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor from a shape and row-major data; errors if the sizes disagree.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Self::from_buf(shape, data.into())
    }

    /// A tensor over `data`, on whichever device holds it; errors if the sizes disagree.
    pub fn from_buf(shape: &[usize], data: Buf) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(OpsError::shape(
                "Tensor::new",
                format!("{} values for {} elements", data.len(), numel(shape)),
                &[shape],
            ));
        }
        Ok(Tensor { shape: shape.to_vec(), data: Arc::new(data), start: 0 })
    }

    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: Arc::new(vec![0.0; numel(shape)].into()), start: 0 }
    }

    /// Every element set to `value`.
    pub fn full(shape: &[usize], value: f32) -> Self {
        Tensor { shape: shape.to_vec(), data: Arc::new(vec![value; numel(shape)].into()), start: 0 }
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f32) -> Self {
        Tensor { shape: vec![], data: Arc::new(vec![value].into()), start: 0 }
    }

    /// From an ndarray array (copies into row-major order).
    pub fn from_array(a: ArrayD<f32>) -> Self {
        let shape = a.shape().to_vec();
        let data = if a.is_standard_layout() { a.into_raw_vec_and_offset().0 } else { a.iter().copied().collect() };
        Tensor { shape, data: Arc::new(data.into()), start: 0 }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data(&self) -> &[f32] {
        &self.data[self.start..self.start + self.len()]
    }

    /// Whether the tensor is a part of its buffer (a slice of rows).
    fn is_part(&self) -> bool {
        self.start != 0 || self.len() != self.data.len()
    }

    /// Mutable data; copies the values first if another tensor shares them.
    pub fn data_mut(&mut self) -> &mut [f32] {
        if self.is_part() {
            self.data = Arc::new(self.data().to_vec().into());
            self.start = 0;
        }
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// A weak handle on these values, for caches of what is derived from them:
    /// it stops matching once the values are changed in place ([`Tensor::data_mut`]
    /// moves them away from weak handles) or dropped, so a stale entry is never served.
    /// A part of a buffer has a handle that matches nothing (its buffer holds more).
    pub fn downgrade(&self) -> Weak<Buf> {
        if self.is_part() {
            return Weak::new();
        }
        Arc::downgrade(&self.data)
    }

    /// Whether `handle` (from [`Tensor::downgrade`]) still refers to these very values.
    pub fn holds(&self, handle: &Weak<Buf>) -> bool {
        !self.is_part() && handle.upgrade().is_some_and(|values| Arc::ptr_eq(&values, &self.data))
    }

    /// The buffer, copied only if shared.
    pub fn into_vec(self) -> Vec<f32> {
        if self.is_part() {
            return self.data().to_vec();
        }
        Arc::try_unwrap(self.data).map(Buf::into_vec).unwrap_or_else(|shared| shared.to_vec())
    }

    /// The storage, copied only if shared.
    pub fn into_buf(self) -> Buf {
        if self.is_part() {
            return self.data().iter().copied().collect();
        }
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Where the values live.
    pub fn device(&self) -> Device {
        self.data.device()
    }

    /// Moves the values to `backend`'s device, once: a weight that moves
    /// stays there, and the backend's kernels then run on it in place.
    pub fn move_to(&mut self, backend: &dyn Backend) -> Result<()> {
        if self.device() != backend.device() {
            self.data = Arc::new(backend.buf_from(self.data())?);
            self.start = 0;
        }
        Ok(())
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.len() {
            return Err(OpsError::shape("reshape", "element counts differ", &[&self.shape, shape]));
        }
        Ok(Tensor { shape: shape.to_vec(), data: self.data.clone(), start: self.start })
    }

    /// An ndarray view.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(IxDyn(&self.shape), self.data()).expect("shape matches data")
    }

    /// An owned ndarray copy.
    pub fn to_array(&self) -> ArrayD<f32> {
        self.view().to_owned()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f32 {
        self.data()[0]
    }

    /// Largest absolute elementwise difference; `f32::INFINITY` if shapes differ.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        if self.shape != other.shape {
            return f32::INFINITY;
        }
        self.data().iter().zip(other.data()).fold(0.0, |m, (a, b)| m.max((a - b).abs()))
    }
}

impl<T: Copy> HostTensor<T> {
    /// A tensor from a shape and row-major data; errors if the sizes disagree.
    pub fn new(shape: &[usize], data: Vec<T>) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(OpsError::shape(
                format!("HostTensor<{}>::new", std::any::type_name::<T>()),
                format!("{} values for {} elements", data.len(), numel(shape)),
                &[shape],
            ));
        }
        Ok(HostTensor { shape: shape.to_vec(), data: Arc::new(data), start: 0 })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[T] {
        &self.data[self.start..self.start + self.len()]
    }

    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An ndarray view.
    pub fn view(&self) -> ArrayViewD<'_, T> {
        ArrayViewD::from_shape(IxDyn(&self.shape), self.data()).expect("shape matches data")
    }

    /// Rows `start..end` along the first axis, sharing this tensor's buffer.
    pub fn slice_rows(&self, start: usize, end: usize) -> Self {
        assert!(start <= end && end <= self.shape[0], "rows {start}..{end} of {:?}", self.shape);
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        HostTensor { shape, data: self.data.clone(), start: self.start + start * row }
    }
}

impl Tensor {
    /// Rows `start..end` along the first axis: sharing this tensor's buffer
    /// on the host, a copy on a device (whose kernels take whole buffers).
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        assert!(start <= end && end <= self.shape[0], "rows {start}..{end} of {:?}", self.shape);
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let rows = start * row..end * row;
        if self.device() != Device::Cpu {
            return Tensor { shape, data: Arc::new(self.data()[rows].iter().copied().collect()), start: 0 };
        }
        Tensor { shape, data: self.data.clone(), start: self.start + rows.start }
    }
}

/// One input or target of a batch: float features, integer ids, or raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Tensor),
    I32(IntTensor),
    U8(ByteTensor),
}

impl Data {
    pub fn shape(&self) -> &[usize] {
        match self {
            Data::F32(t) => t.shape(),
            Data::I32(t) => t.shape(),
            Data::U8(t) => t.shape(),
        }
    }

    /// Batch size (first dimension).
    pub fn batch(&self) -> usize {
        self.shape().first().copied().unwrap_or(0)
    }

    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I32(_) => DType::I32,
            Data::U8(_) => DType::U8,
        }
    }

    /// Rows `start..end` along the batch axis.
    pub fn slice_rows(&self, start: usize, end: usize) -> Data {
        match self {
            Data::F32(t) => Data::F32(t.slice_rows(start, end)),
            Data::I32(t) => Data::I32(t.slice_rows(start, end)),
            Data::U8(t) => Data::U8(t.slice_rows(start, end)),
        }
    }
}

impl From<Tensor> for Data {
    fn from(t: Tensor) -> Self {
        Data::F32(t)
    }
}

impl From<IntTensor> for Data {
    fn from(t: IntTensor) -> Self {
        Data::I32(t)
    }
}

impl From<ByteTensor> for Data {
    fn from(t: ByteTensor) -> Self {
        Data::U8(t)
    }
}

/// Element type of a model input.
///
/// `U8` is for raw pixels: the batch carries bytes ([`ByteTensor`]) and the
/// model turns them into f32 values `0.0..=255.0` at its input, where they
/// enter the tape; a `Rescaling` layer usually follows. Converting at the
/// boundary keeps every op on f32 (one kernel per op, no dtype dispatch) while
/// the data path moves a quarter of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I32,
    U8,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::I32 => "int32",
            DType::U8 => "uint8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_and_mutation_copies() {
        let a = Tensor::new(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut b = a.clone();
        b.data_mut()[0] = 9.0;
        assert_eq!(a.data()[0], 1.0);
        assert_eq!(b.data()[0], 9.0);
    }

    #[test]
    fn new_rejects_wrong_length() {
        assert!(Tensor::new(&[2, 3], vec![0.0; 5]).is_err());
        assert!(IntTensor::new(&[4], vec![0; 3]).is_err());
    }

    #[test]
    fn slice_rows_takes_leading_axis() {
        let a = Tensor::new(&[3, 2], (0..6).map(|x| x as f32).collect()).unwrap();
        assert_eq!(a.slice_rows(1, 3).data(), &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(a.slice_rows(1, 3).shape(), &[2, 2]);
    }

    #[test]
    fn a_slice_of_rows_reads_its_parents_values_and_copies_only_to_change_them() {
        let a = Tensor::new(&[4, 2], (0..8).map(|x| x as f32).collect()).unwrap();
        let mut rows = a.slice_rows(1, 3);
        assert_eq!(rows.data().as_ptr(), a.data()[2..].as_ptr(), "a slice shares the buffer");
        let inner = rows.slice_rows(1, 2);
        assert_eq!(inner.data(), &[4.0, 5.0]);
        assert_eq!(inner.reshape(&[2]).unwrap().data(), &[4.0, 5.0]);
        assert_eq!(rows, Tensor::new(&[2, 2], vec![2.0, 3.0, 4.0, 5.0]).unwrap(), "equal by values");
        assert!(!rows.holds(&a.downgrade()) && !a.holds(&rows.downgrade()), "a part is not its buffer");
        assert_eq!(rows.clone().into_vec(), vec![2.0, 3.0, 4.0, 5.0]);
        rows.data_mut()[0] = 9.0;
        assert_eq!(rows.data(), &[9.0, 3.0, 4.0, 5.0]);
        assert_eq!(a.data()[2], 2.0, "the parent is unchanged");
        let ids = IntTensor::new(&[3, 2], (0..6).collect()).unwrap();
        assert_eq!(ids.slice_rows(2, 3).data(), &[4, 5]);
        assert_eq!(ids.slice_rows(1, 3).slice_rows(1, 2), IntTensor::new(&[1, 2], vec![4, 5]).unwrap());
    }
}
