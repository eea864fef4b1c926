//! `kallista_evaluate(<data columns>, group, spec)` (data columns as
//! [`super::args::data_columns`]): loss and accuracy per value of the group
//! column (the binding's `group_by`, staged as `kallista_group`), computed
//! where the rows are scanned (a partial aggregate per partition, inference
//! mode) and summed in the final stage. Returns a JSON object
//! `{group: {rows, loss_sum, correct}}`.

use super::args::{data_columns, external, json_scalar, json_states, named_batch, spec_literal};
use super::model_cache::model_for;
use super::round::{EvalCounts, EvalSpec};
use super::worker::decode_rows;
use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use datafusion::scalar::ScalarValue;
use std::collections::BTreeMap;
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EvaluateUdaf {
    signature: Signature,
}

impl EvaluateUdaf {
    pub fn new() -> Self {
        EvaluateUdaf { signature: Signature::variadic_any(Volatility::Volatile) }
    }
}

impl Default for EvaluateUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for EvaluateUdaf {
    fn name(&self) -> &str {
        "kallista_evaluate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let spec: EvalSpec = spec_literal(self.name(), args.exprs)?;
        Ok(Box::new(EvaluateAccumulator { spec, counts: BTreeMap::new() }))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("counts", DataType::Utf8, true))])
    }
}

#[derive(Debug)]
struct EvaluateAccumulator {
    spec: EvalSpec,
    counts: BTreeMap<String, EvalCounts>,
}

impl Accumulator for EvaluateAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let names = data_columns(&self.spec.model.binding);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let batch = named_batch(&names, values)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let families = cast(&values[names.len()], &DataType::Utf8)?;
        let families = families.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let mut names: Vec<&str> = (0..families.len()).map(|i| families.value(i)).collect();
        names.sort_unstable();
        names.dedup();
        let model = model_for(&self.spec.model).map_err(external)?;
        for family in names {
            let mask = datafusion::arrow::compute::kernels::cmp::eq(families, &StringArray::new_scalar(family))?;
            let rows = filter_record_batch(&batch, &mask)?;
            let source = format!("{} (group {family})", self.spec.data);
            let (x, y) = decode_rows(&model, &rows, &self.spec.model.binding, &source).map_err(external)?;
            let r = model.test_on_batch(&x, &[y]).map_err(|e| external(crate::EngineError::from(e)))?;
            let c = self.counts.entry(family.to_string()).or_default();
            c.rows += r.samples as u64;
            c.loss_sum += r.loss as f64 * r.samples as f64;
            c.correct += r.metrics.first().map_or(0, |m| m.1 as u64);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![json_scalar(&self.counts)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for part in json_states::<BTreeMap<String, EvalCounts>>(&states[0])? {
            for (family, c) in part {
                self.counts.entry(family).or_default().add(&c);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        json_scalar(&self.counts)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.counts.len() * 64
    }
}
