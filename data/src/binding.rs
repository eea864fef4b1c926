//! Which table columns a model reads: one column per model input, the label,
//! the column per-group metrics group by, and the row key staging shards by. Training writes it to its job
//! dir (`binding.json`), so that evaluation and prediction of that model read
//! the same columns without being told again.

use serde::{Deserialize, Serialize};

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The column of each model input, in input order.
    pub inputs: Vec<String>,
    /// The class-id column.
    #[serde(default)]
    pub label: Option<String>,
    /// The column that per-group metrics group by.
    #[serde(default)]
    pub group_by: Option<String>,
    /// The columns that identify a row: staging hashes them into shards and
    /// orders each shard by them (empty: every column that is not a list or
    /// binary).
    #[serde(default)]
    pub key: Vec<String>,
}

impl Binding {
    /// The name of a job dir's binding object.
    pub const FILE: &'static str = "binding.json";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_reads_back_and_label_and_group_are_optional() {
        let b = Binding {
            inputs: vec!["clip".into(), "ids".into()],
            label: Some("y".into()),
            group_by: None,
            key: vec!["id".into()],
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Binding>(&text).unwrap(), b);
        let only_inputs: Binding = serde_json::from_str(r#"{"inputs": ["x"]}"#).unwrap();
        assert_eq!((only_inputs.label, only_inputs.group_by, only_inputs.key.len()), (None, None, 0));
    }
}
