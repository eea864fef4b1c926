//! `kallista_pack_f32(values List<Float32>) -> LargeBinary`: each row's floats
//! as little-endian bytes. Staging packs float-list columns this way:
//! Parquet stores a list with a repetition and a definition level per value,
//! which cost more to decode than the values themselves (W1: 32,768 floats
//! a row), while a binary value decodes as one copy.

use super::list_of;
use datafusion::arrow::array::{Array, AsArray, LargeBinaryBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PackF32Udf {
    signature: Signature,
}

impl PackF32Udf {
    pub fn new() -> Self {
        PackF32Udf { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl Default for PackF32Udf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for PackF32Udf {
    fn name(&self) -> &str {
        "kallista_pack_f32"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !matches!(args[0], DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)) {
            return Err(DataFusionError::Plan(format!("kallista_pack_f32(float list): got ({})", args[0])));
        }
        Ok(DataType::LargeBinary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let lists = cast(&args.args[0].to_array(n)?, &list_of(DataType::Float32))?;
        let lists = lists.as_list::<i32>();
        let mut out = LargeBinaryBuilder::with_capacity(n, lists.values().len() * 4);
        for row in 0..n {
            if lists.is_null(row) {
                out.append_null();
                continue;
            }
            let values = lists.value(row);
            if values.null_count() > 0 {
                return Err(DataFusionError::Execution(format!(
                    "kallista_pack_f32: row {row} holds {} null values",
                    values.null_count()
                )));
            }
            out.append_value(bytemuck::cast_slice::<f32, u8>(values.as_primitive::<Float32Type>().values()));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
