//! Table columns as model input values: one decoder for every column a model
//! reads, whatever the column is called. What a column holds is told by its
//! Arrow type and the input's element type and shape, never by its name:
//!
//! - `u8` inputs of shape `[frames, h, w, 3]`: a list of frames, one binary
//!   value per frame (raw RGB, PNG or JPEG, told apart by their bytes);
//!   of shape `[h, w, 3]`: one binary image per row;
//! - `i32` inputs: a list of integers per row (token ids), or one integer;
//! - `f32` inputs: a list of floats per row, the packed little-endian bytes
//!   that `kallista_pack_f32` stages, or one float.
//!
//! Errors name the source (a file, or a SQL function's argument), the
//! column and the row.

use crate::error::{DataError, Result};
use crate::frames;
use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, GenericBinaryArray, GenericListArray, OffsetSizeTrait};
use arrow::compute::cast;
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Int32Type};
use std::sync::Arc;

/// The element type of a model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    U8,
    I32,
    F32,
}

/// The values of one input for all rows of a batch, row after row.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    U8(Vec<u8>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

impl Values {
    /// Appends `more` (of the same element type: one input's values).
    pub fn append(&mut self, more: Values) {
        match (self, more) {
            (Values::U8(a), Values::U8(b)) => a.extend_from_slice(&b),
            (Values::I32(a), Values::I32(b)) => a.extend_from_slice(&b),
            (Values::F32(a), Values::F32(b)) => a.extend_from_slice(&b),
            _ => unreachable!("one element type per input"),
        }
    }
}

/// Decodes one column; rows are numbered from `first_row` in errors.
pub struct ColumnDecoder<'a> {
    /// A file, or `kallista_predict argument 2`.
    pub source: &'a str,
    pub column: &'a str,
    pub first_row: usize,
}

impl ColumnDecoder<'_> {
    fn bad(&self, row: usize, detail: String) -> DataError {
        DataError::Value { origin: self.source.into(), row: self.first_row + row, column: self.column.into(), detail }
    }

    fn bad_type(&self, array: &ArrayRef, wanted: &str) -> DataError {
        DataError::Value {
            origin: self.source.into(),
            row: self.first_row,
            column: self.column.into(),
            detail: format!("has type {}, the model input takes {wanted}", array.data_type()),
        }
    }

    /// The values of `array` for an input of `element`s of `shape` per row.
    pub fn decode(&self, array: &ArrayRef, element: Element, shape: &[usize]) -> Result<Values> {
        let per_row: usize = shape.iter().product();
        if let Some(r) = (0..array.len()).find(|&r| array.is_null(r)) {
            return Err(self.bad(r, "is null".into()));
        }
        match element {
            Element::U8 => self.images(array, shape).map(Values::U8),
            Element::I32 => {
                self.numbers::<Int32Type>(array, per_row, "token ids", "a list of integers").map(Values::I32)
            }
            Element::F32 => {
                let values = match array.data_type() {
                    DataType::Binary | DataType::LargeBinary => self.packed(array, per_row)?,
                    _ => self.numbers::<Float32Type>(array, per_row, "floats", "a list of floats")?,
                };
                match values.iter().position(|v| !v.is_finite()) {
                    Some(i) => {
                        Err(self.bad(i / per_row.max(1), format!("value {} is {}", i % per_row.max(1), values[i])))
                    }
                    None => Ok(Values::F32(values)),
                }
            }
        }
    }

    /// A list (or one value) per row, cast to `T`, `per_row` values each.
    fn numbers<T: ArrowPrimitiveType>(
        &self,
        array: &ArrayRef,
        per_row: usize,
        what: &str,
        wanted: &str,
    ) -> Result<Vec<T::Native>> {
        let list_of =
            |item: &Arc<Field>| DataType::List(Arc::new(Field::new("item", T::DATA_TYPE, item.is_nullable())));
        let list = match array.data_type() {
            DataType::List(item)
            | DataType::LargeList(item)
            | DataType::ListView(item)
            | DataType::FixedSizeList(item, _) => {
                cast(array, &list_of(item)).map_err(|_| self.bad_type(array, wanted))?
            }
            t if t.is_primitive() && per_row == 1 => {
                let values = cast(array, &T::DATA_TYPE).map_err(|_| self.bad_type(array, wanted))?;
                let values = values.as_primitive::<T>();
                if let Some(r) = (0..values.len()).find(|&r| values.is_null(r)) {
                    return Err(self.bad(r, "does not fit the model input's type".into()));
                }
                return Ok(values.values().to_vec());
            }
            _ => return Err(self.bad_type(array, wanted)),
        };
        let list = list.as_list::<i32>();
        let mut out = Vec::with_capacity(list.len() * per_row);
        for r in 0..list.len() {
            let row = list.value(r);
            if row.len() != per_row {
                return Err(self.bad(r, format!("{} {what}, the model input takes {per_row}", row.len())));
            }
            if row.null_count() > 0 {
                return Err(self.bad(r, format!("a null among its {what} (or one that does not fit the input's type)")));
            }
            out.extend_from_slice(row.as_primitive::<T>().values());
        }
        Ok(out)
    }

    /// Packed little-endian f32 bytes, `per_row` floats per row.
    fn packed(&self, array: &ArrayRef, per_row: usize) -> Result<Vec<f32>> {
        fn rows<O: OffsetSizeTrait>(
            d: &ColumnDecoder,
            bytes: &GenericBinaryArray<O>,
            per_row: usize,
        ) -> Result<Vec<f32>> {
            let mut out = Vec::with_capacity(bytes.len() * per_row);
            for r in 0..bytes.len() {
                let v = bytes.value(r);
                if v.len() != per_row * 4 {
                    return Err(d.bad(
                        r,
                        format!("{} bytes of packed floats, the model input takes {per_row} floats", v.len()),
                    ));
                }
                // One copy: the bytes are the floats (little-endian, as every target Kallista runs on).
                let at = out.len();
                out.resize(at + per_row, 0.0);
                bytemuck::cast_slice_mut::<f32, u8>(&mut out[at..]).copy_from_slice(v);
            }
            Ok(out)
        }
        match array.data_type() {
            DataType::LargeBinary => rows(self, array.as_binary::<i64>(), per_row),
            _ => rows(self, array.as_binary::<i32>(), per_row),
        }
    }

    /// Images: a list of frames per row (`[frames, h, w, 3]`) or one image per row (`[h, w, 3]`).
    fn images(&self, array: &ArrayRef, shape: &[usize]) -> Result<Vec<u8>> {
        let (frames, image) = match shape {
            [f, h, w, 3] => (Some(*f), [*h, *w]),
            [h, w, 3] => (None, [*h, *w]),
            _ => {
                return Err(self.bad(
                    0,
                    format!(
                        "a uint8 input of shape {shape:?}: only [h, w, 3] and [frames, h, w, 3] are read from images"
                    ),
                ))
            }
        };
        let frame_bytes = image[0] * image[1] * 3;
        let per_row = frames.unwrap_or(1) * frame_bytes;
        let total = array.len().checked_mul(per_row).filter(|&n| n <= crate::parquet_io::MAX_BATCH_BYTES);
        let mut out = vec![
            0u8;
            total.ok_or_else(
                || self.bad(0, format!("{} rows of {shape:?} are too many to decode at once", array.len()))
            )?
        ];
        let decode = |r: usize, t: usize, bytes: &[u8], dst: &mut [u8]| {
            frames::decode_into(bytes, frames::sniff_encoding(bytes, frame_bytes), image[0], image[1], dst).map_err(
                |e| match frames {
                    Some(_) => self.bad(r, format!("frame {t}: {e}")),
                    None => self.bad(r, e),
                },
            )
        };
        match frames {
            None => {
                let images = self.binaries(array, "one binary image per row")?;
                for (r, dst) in out.chunks_exact_mut(frame_bytes).enumerate() {
                    decode(r, 0, images.value(r), dst)?;
                }
            }
            Some(f) => {
                let clips = self.frame_lists(array)?;
                for (r, row) in out.chunks_exact_mut(per_row).enumerate() {
                    let clip = clips.value(r);
                    let clip = clip.as_binary::<i32>();
                    if clip.len() != f {
                        return Err(self.bad(r, format!("{} frames, the model input takes {f}", clip.len())));
                    }
                    for (t, dst) in row.chunks_exact_mut(frame_bytes).enumerate() {
                        decode(r, t, clip.value(t), dst)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn binaries(&self, array: &ArrayRef, wanted: &str) -> Result<BinaryArray> {
        if !is_binary(array.data_type()) {
            return Err(self.bad_type(array, wanted));
        }
        let b = cast(array, &DataType::Binary).map_err(|_| self.bad_type(array, wanted))?;
        Ok(b.as_binary::<i32>().clone())
    }

    fn frame_lists(&self, array: &ArrayRef) -> Result<GenericListArray<i32>> {
        let wanted = "a list of binary frames per row";
        match array.data_type() {
            DataType::List(item)
            | DataType::LargeList(item)
            | DataType::ListView(item)
            | DataType::FixedSizeList(item, _)
                if is_binary(item.data_type()) => {}
            _ => return Err(self.bad_type(array, wanted)),
        }
        let to = DataType::List(Arc::new(Field::new("item", DataType::Binary, true)));
        let lists = cast(array, &to).map_err(|_| self.bad_type(array, wanted))?;
        Ok(lists.as_list::<i32>().clone())
    }
}

/// Whether a column of `t` holds one plain value per row (an id, a label, a
/// group), not a list, bytes, a struct or a map: what staging keys rows by
/// and what predictions carry over from their input.
pub fn is_plain(t: &DataType) -> bool {
    !matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

/// Whether values of `t` are bytes (images are never read from numbers or text).
fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::FrameEncoding;
    use arrow::array::{BinaryBuilder, Float32Array, Int64Array, LargeBinaryArray, ListBuilder};

    fn decoder() -> ColumnDecoder<'static> {
        ColumnDecoder { source: "kallista_predict argument 2", column: "ids", first_row: 10 }
    }

    fn int_lists(rows: &[Vec<Option<i64>>]) -> ArrayRef {
        let mut b = ListBuilder::new(arrow::array::Int64Builder::new());
        for r in rows {
            b.append_value(r.iter().copied());
        }
        Arc::new(b.finish())
    }

    #[test]
    fn integer_lists_of_any_width_become_rows_of_i32() {
        let a = int_lists(&[vec![Some(1), Some(2), Some(3)], vec![Some(4), Some(5), Some(6)]]);
        assert_eq!(decoder().decode(&a, Element::I32, &[3]).unwrap(), Values::I32(vec![1, 2, 3, 4, 5, 6]));
        let plain: ArrayRef = Arc::new(Int64Array::from(vec![7, 8]));
        assert_eq!(decoder().decode(&plain, Element::I32, &[1]).unwrap(), Values::I32(vec![7, 8]));
    }

    #[test]
    fn a_wrong_length_a_null_or_a_wrong_type_names_source_column_and_row() {
        let a = int_lists(&[vec![Some(1), Some(2), Some(3)], vec![Some(4), Some(5)]]);
        let e = decoder().decode(&a, Element::I32, &[3]).unwrap_err().to_string();
        assert_eq!(e, "kallista_predict argument 2: row 11, column 'ids': 2 token ids, the model input takes 3");
        let a = int_lists(&[vec![Some(1), None, Some(3)]]);
        let e = decoder().decode(&a, Element::I32, &[3]).unwrap_err().to_string();
        assert!(e.contains("row 10, column 'ids': a null"), "{e}");
        let e = decoder().decode(&a, Element::U8, &[3, 1, 1, 3]).unwrap_err().to_string();
        assert!(e.contains("the model input takes a list of binary frames per row"), "{e}");
        let floats: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0]));
        let e = decoder().decode(&floats, Element::I32, &[3]).unwrap_err().to_string();
        assert!(e.contains("column 'ids': has type Float32, the model input takes a list of integers"), "{e}");
        let e = decoder().decode(&floats, Element::U8, &[2, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("has type Float32, the model input takes one binary image per row"), "{e}");
    }

    #[test]
    fn packed_floats_and_float_lists_decode_alike() {
        let values = [1.5f32, -2.0, 0.25, 8.0];
        let packed: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a: ArrayRef = Arc::new(LargeBinaryArray::from(vec![&packed[..8], &packed[8..]]));
        assert_eq!(decoder().decode(&a, Element::F32, &[2]).unwrap(), Values::F32(values.to_vec()));
        let mut b = ListBuilder::new(arrow::array::Float64Builder::new());
        b.append_value([Some(1.5), Some(-2.0)]);
        b.append_value([Some(0.25), Some(8.0)]);
        let a: ArrayRef = Arc::new(b.finish());
        assert_eq!(decoder().decode(&a, Element::F32, &[2]).unwrap(), Values::F32(values.to_vec()));
        let nan: Vec<u8> = [1.0f32, 2.0, 3.0, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a: ArrayRef = Arc::new(LargeBinaryArray::from(vec![&nan[..8], &nan[8..]]));
        let e = decoder().decode(&a, Element::F32, &[2]).unwrap_err().to_string();
        assert!(e.contains("row 11, column 'ids': value 1 is NaN"), "{e}");
        let short: ArrayRef = Arc::new(LargeBinaryArray::from(vec![&packed[..4]]));
        let e = decoder().decode(&short, Element::F32, &[2]).unwrap_err().to_string();
        assert!(e.contains("row 10, column 'ids': 4 bytes of packed floats, the model input takes 2 floats"), "{e}");
    }

    #[test]
    fn frames_in_any_encoding_decode_to_the_same_pixels_and_sizes_are_checked() {
        let (h, w) = (4usize, 6usize);
        let rgb: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = ListBuilder::new(BinaryBuilder::new());
        for enc in [FrameEncoding::Raw, FrameEncoding::Png] {
            let f = frames::encode(&rgb, h as u32, w as u32, enc);
            b.append_value([Some(f.clone()), Some(f)]);
        }
        let a: ArrayRef = Arc::new(b.finish());
        let Values::U8(out) = decoder().decode(&a, Element::U8, &[2, h, w, 3]).unwrap() else { panic!() };
        assert_eq!(out, rgb.repeat(4));
        let e = decoder().decode(&a, Element::U8, &[2, h, w + 1, 3]).unwrap_err().to_string();
        assert!(e.contains("row 10, column 'ids': frame 0: raw frame has 72 bytes, expected 84"), "{e}");
        let e = decoder().decode(&a, Element::U8, &[3, h, w, 3]).unwrap_err().to_string();
        assert!(e.contains("2 frames, the model input takes 3"), "{e}");
    }
}
