//! Pre-trained applications as sub-models of a job's model, as the talk mixes
//! a Keras application into its own layers:
//!
//! ```yaml
//! models:
//!   cnn:
//!     application: InceptionV3      # keras.applications.InceptionV3
//!     include_top: false
//!     pooling: avg                  # none | avg | max
//!     input_shape: [75, 75, 3]
//!     weights: inception_v3.weights.h5   # a Keras weights file, relative to the job file
//! ```
//!
//! The application's graph becomes the sub-model's config (named after its
//! key), so it serialises, ships to executors and nests like any other.

use super::model::SubModelSpec;
use super::spec_error;
use crate::error::JobError;
use kallista_ops::applications::{inception_v3, Pooling};
use serde_json::Value;
use std::path::Path;

/// The applications a job file may name.
const KNOWN: &[&str] = &["InceptionV3"];

/// The graph config of sub-model `name` (at job-file key `key`), an application.
pub(super) fn config(file: &Path, key: &str, name: &str, m: &SubModelSpec, seed: u64) -> Result<Value, JobError> {
    let app = m.application.as_deref().unwrap_or_default();
    if !m.inputs.is_empty() || !m.layers.is_empty() || !m.outputs.is_empty() {
        return Err(spec_error(file, key, "an application sub-model has no inputs, layers or outputs of its own"));
    }
    if !KNOWN.contains(&app) {
        return Err(spec_error(file, &format!("{key}.application"), format!("'{app}' (known: {})", KNOWN.join(", "))));
    }
    let pooling = match m.pooling.as_deref() {
        None | Some("none") => Pooling::None,
        Some("avg") => Pooling::Avg,
        Some("max") => Pooling::Max,
        Some(other) => {
            return Err(spec_error(file, &format!("{key}.pooling"), format!("'{other}' (expected none, avg or max)")))
        }
    };
    let (h, w) = match m.input_shape.as_deref() {
        Some([h, w, 3]) => (*h, *w),
        other => {
            return Err(spec_error(
                file,
                &format!("{key}.input_shape"),
                format!("{other:?}: expected [height, width, 3]"),
            ))
        }
    };
    let classes = if m.include_top { m.classes.unwrap_or(1000) } else { 0 };
    let model = inception_v3(m.include_top, pooling, (h, w), classes, seed).map_err(|e| spec_error(file, key, e))?;
    let mut json: Value = serde_json::from_str(&model.to_json()).map_err(|e| spec_error(file, key, e))?;
    let mut config = json["config"].take();
    config["name"] = Value::String(name.to_string());
    Ok(config)
}
