//! `kallista_pad(ids List<Int>, length) -> List<Int32>`: right-pads with the
//! `<pad>` id 0, or truncates, to exactly `length` ids, so that token-id
//! columns become fixed-size model inputs.

use super::list_of;
use datafusion::arrow::array::{Array, Int32Array, Int32Builder, Int64Array, ListArray, ListBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PadUdf {
    signature: Signature,
}

impl PadUdf {
    pub fn new() -> Self {
        PadUdf { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl Default for PadUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for PadUdf {
    fn name(&self) -> &str {
        "kallista_pad"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !matches!(args[0], DataType::List(_) | DataType::LargeList(_)) || !args[1].is_integer() {
            return Err(DataFusionError::Plan(format!(
                "kallista_pad(ids list, length integer): got ({}, {})",
                args[0], args[1]
            )));
        }
        Ok(list_of(DataType::Int32))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let ids = cast(&args.args[0].to_array(n)?, &list_of(DataType::Int32))?;
        let ids = ids.as_any().downcast_ref::<ListArray>().expect("list");
        let lens = cast(&args.args[1].to_array(n)?, &DataType::Int64)?;
        let lens = lens.as_any().downcast_ref::<Int64Array>().expect("int64");
        let mut out = ListBuilder::new(Int32Builder::new());
        for row in 0..n {
            if ids.is_null(row) || lens.is_null(row) {
                out.append_null();
                continue;
            }
            let len = lens.value(row);
            if len < 0 {
                return Err(DataFusionError::Execution(format!(
                    "kallista_pad: length must be >= 0, got {len} at row {row}"
                )));
            }
            let v = ids.value(row);
            let v = v.as_any().downcast_ref::<Int32Array>().expect("int32 list");
            let keep = v.len().min(len as usize);
            for i in 0..keep {
                out.values().append_value(if v.is_null(i) { kallista_data::tokenizer::PAD_ID } else { v.value(i) });
            }
            for _ in keep..len as usize {
                out.values().append_value(kallista_data::tokenizer::PAD_ID);
            }
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
