//! `kallista_tokenize(text) -> List<Utf8>`: the question tokenizer of
//! `kallista_data::tokenizer` (lower-case words), for SQL.

use super::list_of;
use datafusion::arrow::array::{Array, ListBuilder, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TokenizeUdf {
    signature: Signature,
}

impl TokenizeUdf {
    pub fn new() -> Self {
        TokenizeUdf { signature: Signature::string(1, Volatility::Immutable) }
    }
}

impl Default for TokenizeUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for TokenizeUdf {
    fn name(&self) -> &str {
        "kallista_tokenize"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(list_of(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let text = cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let text = text.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray");
        let mut out = ListBuilder::new(StringBuilder::new());
        for i in 0..text.len() {
            if text.is_null(i) {
                out.append_null();
                continue;
            }
            for t in kallista_data::tokenizer::tokenize(text.value(i)) {
                out.values().append_value(t);
            }
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
