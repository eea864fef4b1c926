//! Kallista's SQL functions. One function per file; [`kallista_functions`]
//! returns them all, and every role (client, scheduler, executors, the
//! embedded cluster) registers that same list, so they cannot drift apart.

mod lookup;
mod pack;
mod pad;
mod predict;
mod shard;
mod tokenize;

pub use lookup::LookupUdf;
pub use pack::PackF32Udf;
pub use pad::PadUdf;
pub use predict::{PredictUdf, Prediction};
pub use shard::ShardUdf;
pub use tokenize::TokenizeUdf;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use std::sync::Arc;

/// Every Kallista scalar function.
pub fn kallista_functions() -> Vec<Arc<ScalarUDF>> {
    let mut out = vec![
        Arc::new(ScalarUDF::new_from_impl(TokenizeUdf::new())),
        Arc::new(ScalarUDF::new_from_impl(LookupUdf::new())),
        Arc::new(ScalarUDF::new_from_impl(PadUdf::new())),
        Arc::new(ScalarUDF::new_from_impl(PackF32Udf::new())),
        Arc::new(ScalarUDF::new_from_impl(ShardUdf::new())),
    ];
    out.extend(Prediction::ALL.map(|p| Arc::new(ScalarUDF::new_from_impl(PredictUdf::new(p)))));
    out
}

/// Every Kallista aggregate function: the training round, `sync` and `async` segment and evaluation operators.
pub fn kallista_aggregates() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::new_from_impl(crate::train::train_udaf::TrainUdaf::new())),
        Arc::new(AggregateUDF::new_from_impl(crate::train::segment_udaf::SegmentUdaf::new())),
        Arc::new(AggregateUDF::new_from_impl(crate::train::segment_udaf::RanksUdaf::<
            crate::train::async_worker::AsyncSpec,
        >::new())),
        Arc::new(AggregateUDF::new_from_impl(crate::train::eval_udaf::EvaluateUdaf::new())),
    ]
}

/// Registers every Kallista function in `registry`.
pub fn register_all(registry: &mut dyn FunctionRegistry) -> datafusion::error::Result<()> {
    for f in kallista_functions() {
        registry.register_udf(f)?;
    }
    for f in kallista_aggregates() {
        registry.register_udaf(f)?;
    }
    Ok(())
}

/// `List<item>` with DataFusion's default (nullable) item field.
pub(crate) fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}
