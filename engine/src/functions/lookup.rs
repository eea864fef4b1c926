//! `kallista_lookup(tokens List<Utf8>, vocab List<Utf8>) -> List<Int32>`:
//! maps each token to its position in `vocab` (the vocabulary as one array,
//! position = id, with `<pad>` at 0 and `<unk>` at 1); tokens not in it map
//! to the `<unk>` id. The vocabulary usually comes from a one-row subquery
//! (`SELECT array_agg(token ORDER BY id) FROM vocab`) joined to every row.

use super::list_of;
use datafusion::arrow::array::{Array, Int32Builder, ListArray, ListBuilder, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::collections::HashMap;
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LookupUdf {
    signature: Signature,
}

impl LookupUdf {
    pub fn new() -> Self {
        LookupUdf { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl Default for LookupUdf {
    fn default() -> Self {
        Self::new()
    }
}

fn as_string_list(name: &str, a: &Arc<dyn Array>) -> Result<ListArray> {
    let target = list_of(DataType::Utf8);
    let c = cast(a, &target)
        .map_err(|e| DataFusionError::Plan(format!("kallista_lookup: {name} must be a list of strings: {e}")))?;
    Ok(c.as_any().downcast_ref::<ListArray>().expect("cast to a list gives a ListArray").clone())
}

impl ScalarUDFImpl for LookupUdf {
    fn name(&self) -> &str {
        "kallista_lookup"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        for (name, t) in ["tokens", "vocab"].iter().zip(args) {
            if !matches!(t, DataType::List(_) | DataType::LargeList(_) | DataType::Null) {
                return Err(DataFusionError::Plan(format!(
                    "kallista_lookup: {name} must be a list of strings, got {t}"
                )));
            }
        }
        Ok(list_of(DataType::Int32))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let tokens = as_string_list("tokens", &args.args[0].to_array(n)?)?;
        let vocab = as_string_list("vocab", &args.args[1].to_array(n)?)?;
        let mut out = ListBuilder::new(Int32Builder::new());
        // The vocabulary is the same on every row in practice: build its index once per distinct value.
        let mut cached: Option<(Arc<dyn Array>, HashMap<String, i32>)> = None;
        for row in 0..n {
            if tokens.is_null(row) || vocab.is_null(row) {
                out.append_null();
                continue;
            }
            let v = vocab.value(row);
            if cached.as_ref().is_none_or(|(prev, _)| prev.to_data() != v.to_data()) {
                let words = v.as_any().downcast_ref::<StringArray>().expect("list of Utf8");
                let index = (0..words.len())
                    .filter(|&i| words.is_valid(i))
                    .map(|i| (words.value(i).to_string(), i as i32))
                    .collect();
                cached = Some((v, index));
            }
            let index = &cached.as_ref().expect("set above").1;
            let t = tokens.value(row);
            let t = t.as_any().downcast_ref::<StringArray>().expect("list of Utf8");
            for i in 0..t.len() {
                let id = if t.is_null(i) { None } else { index.get(t.value(i)).copied() };
                out.values().append_value(id.unwrap_or(kallista_data::tokenizer::UNK_ID));
            }
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
