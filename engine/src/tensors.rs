//! Table columns as model inputs: [`kallista_data::columns`] decodes a
//! column's values by the input's element type and shape; here they become
//! the `[rows, shape...]` tensors the model takes. Training, evaluation,
//! prediction and the job file's data check all decode through this.

use crate::error::Result;
use datafusion::arrow::array::ArrayRef;
use kallista_data::columns::{ColumnDecoder, Element, Values};
use kallista_ops::model::InputSpec;
use kallista_ops::{ByteTensor, DType, Data, IntTensor, Tensor};

/// The column element type a model input of `dtype` reads.
pub fn element_of(dtype: DType) -> Element {
    match dtype {
        DType::U8 => Element::U8,
        DType::I32 => Element::I32,
        DType::F32 => Element::F32,
    }
}

/// The values of `arrays` (consecutive rows of one column) for `input`;
/// errors name `source`, `column` and the row counted from `first_row`.
pub fn input_values(
    arrays: &[&ArrayRef],
    input: &InputSpec,
    source: &str,
    column: &str,
    first_row: usize,
) -> Result<Values> {
    let element = element_of(input.spec.dtype);
    let mut all: Option<Values> = None;
    let mut row = first_row;
    for array in arrays {
        let values = ColumnDecoder { source, column, first_row: row }.decode(array, element, &input.spec.shape)?;
        row += array.len();
        match &mut all {
            Some(a) => a.append(values),
            None => all = Some(values),
        }
    }
    Ok(all.unwrap_or(match element {
        Element::U8 => Values::U8(vec![]),
        Element::I32 => Values::I32(vec![]),
        Element::F32 => Values::F32(vec![]),
    }))
}

/// `rows` rows of `values` as the tensor `input` takes.
pub fn input_data(values: Values, rows: usize, input: &InputSpec) -> Result<Data> {
    let mut shape = vec![rows];
    shape.extend_from_slice(&input.spec.shape);
    Ok(match values {
        Values::U8(v) => Data::U8(ByteTensor::new(&shape, v)?),
        Values::I32(v) => Data::I32(IntTensor::new(&shape, v)?),
        Values::F32(v) => Data::F32(Tensor::new(&shape, v)?),
    })
}
