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

#[cfg(test)]
mod tests {
    use super::PackF32Udf;
    use datafusion::arrow::array::AsArray;
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::SessionContext;

    async fn pack(sql_list: &str) -> datafusion::error::Result<Vec<Option<Vec<u8>>>> {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::new_from_impl(PackF32Udf::new()));
        let sql = format!("SELECT kallista_pack_f32(v) FROM (VALUES ({sql_list}), (NULL)) t(v)");
        let batches = ctx.sql(&sql).await?.collect().await?;
        let col = batches[0].column(0).as_binary::<i64>();
        Ok(col.iter().map(|v| v.map(<[u8]>::to_vec)).collect())
    }

    #[tokio::test]
    async fn packs_each_rows_floats_as_little_endian_bytes() {
        let rows = pack("[CAST(1.5 AS FLOAT), -2.0, 0.25]").await.unwrap();
        let expected: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(rows, vec![Some(expected), None]);
    }

    #[tokio::test]
    async fn a_null_inside_a_row_is_an_error_naming_the_row() {
        let e = pack("[CAST(1.5 AS FLOAT), NULL]").await.unwrap_err().to_string();
        assert!(e.contains("row 0 holds 1 null values"), "{e}");
    }
}
