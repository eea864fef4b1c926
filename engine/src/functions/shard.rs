//! `kallista_shard(shards, key, ...) -> Int64`: the shard (`0..shards`) of a
//! row, from a stable hash of its keys' text (64-bit FNV-1a, then MurmurHash3's
//! finalizer: FNV's low bits alone follow the parity of the input bytes, so
//! two equal keys would always land in even shards). Staging hashes
//! rows into shards first, so that each shard is then ranked on its own
//! partition instead of all rows on one node; the hash is the same on every
//! host and in every version, so a split stages the same way everywhere.

use datafusion::arrow::array::{Array, AsArray, Int64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use datafusion::scalar::ScalarValue;
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ShardUdf {
    signature: Signature,
}

impl ShardUdf {
    pub fn new() -> Self {
        ShardUdf { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl Default for ShardUdf {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl ScalarUDFImpl for ShardUdf {
    fn name(&self) -> &str {
        "kallista_shard"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() < 2 || !args[0].is_integer() {
            return Err(DataFusionError::Plan(
                "kallista_shard(shards INTEGER, key, ...): needs shards and a key".into(),
            ));
        }
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let shards = match &args.args[0] {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(v)) if v > 0 => v as u64,
                other => {
                    return Err(DataFusionError::Execution(format!("kallista_shard: shards must be > 0, got {other}")))
                }
            },
            ColumnarValue::Array(_) => {
                return Err(DataFusionError::Execution("kallista_shard: shards must be a constant".into()))
            }
        };
        let keys = args.args[1..]
            .iter()
            .map(|a| cast(&a.to_array(n)?, &DataType::Utf8).map_err(DataFusionError::from))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Int64Builder::with_capacity(n);
        for row in 0..n {
            let mut h = 0xCBF2_9CE4_8422_2325;
            for k in &keys {
                let k = k.as_string::<i32>();
                // A separator byte that UTF-8 text never holds keeps ("ab","c") apart from ("a","bc").
                h = fnv1a(h, if k.is_null(row) { b"\xFE" } else { k.value(row).as_bytes() });
                h = fnv1a(h, b"\xFF");
            }
            out.append_value((fmix64(h) % shards) as i64);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::ShardUdf;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn shards_are_stable_spread_and_depend_on_every_key() {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::new_from_impl(ShardUdf::new()));
        // Keys that differ in one place, and twice the same key (FNV's parity trap).
        for keys in ["'v' || CAST(x AS VARCHAR), 'q', '7'", "CAST(x AS VARCHAR), CAST(x AS VARCHAR), '1'"] {
            let sql = format!("SELECT kallista_shard(4, {keys}) FROM generate_series(0, 3999) t(x)");
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let mut counts = [0usize; 4];
            for b in &batches {
                for v in b.column(0).as_primitive::<Int64Type>().values() {
                    counts[*v as usize] += 1;
                }
            }
            assert!(counts.iter().all(|&c| (900..1100).contains(&c)), "{keys}: {counts:?}");
        }
        let one = |keys: &str| {
            let ctx = ctx.clone();
            let sql = format!("SELECT kallista_shard(1000003, {keys})");
            async move {
                let b = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                b[0].column(0).as_primitive::<Int64Type>().value(0)
            }
        };
        // Fixed by the hash's definition: staging must shard the same way on every host and version.
        assert_eq!(one("'ab', 'c'").await, 401_841, "fmix64(FNV-1a of \"ab\\xFFc\\xFF\") mod 1000003");
        assert_ne!(one("'ab', 'c'").await, one("'a', 'bc'").await);
    }
}
