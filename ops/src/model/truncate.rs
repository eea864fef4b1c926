//! A model cut at one layer: its output becomes the model's, so that
//! `predict_on_batch` returns what that layer computes (an embedding, the
//! features of a frozen feature extractor).

use super::Model;
use crate::error::{OpsError, Result};

impl Model {
    /// This model with the output of layer `layer` (its last application) as
    /// its only output; the nodes after it are dropped, the weights kept.
    pub fn truncated_at(&self, layer: &str) -> Result<Model> {
        let index = self.layers.iter().position(|l| l.name() == layer).ok_or_else(|| {
            let names: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
            OpsError::Config(format!("model '{}' has no layer '{layer}' (layers: {})", self.name, names.join(", ")))
        })?;
        let last = self.nodes.iter().rposition(|n| n.layer == index).ok_or_else(|| {
            OpsError::Config(format!("layer '{layer}' of model '{}' is not applied to anything", self.name))
        })?;
        let mut cut = self.clone();
        cut.outputs = vec![cut.nodes[last].output];
        cut.nodes.truncate(last + 1);
        cut.compiled = None;
        cut.optimizer = None;
        Ok(cut)
    }
}

#[cfg(test)]
mod tests {
    use crate::applications::{video_qa, VideoQaDims};
    use crate::{Data, IntTensor, Tensor};

    #[test]
    fn a_cut_model_returns_the_layer_output_the_whole_model_computes_from() {
        let d = VideoQaDims {
            frames: 3,
            features: 8,
            question_len: 4,
            vocab: 20,
            answers: 5,
            embedding: 6,
            video_units: 7,
            question_units: 5,
            hidden: 9,
            mask_zero: false,
        };
        let model = video_qa(&d, 3).unwrap();
        let features = Tensor::new(
            &[2, d.frames, d.features],
            (0..2 * d.frames * d.features).map(|i| (i % 13) as f32 / 13.0).collect(),
        )
        .unwrap();
        let question =
            IntTensor::new(&[2, d.question_len], (0..2 * d.question_len as i32).map(|i| 1 + i % 5).collect()).unwrap();
        let inputs = [Data::F32(features), Data::I32(question)];
        let layers: Vec<String> = model.layers().iter().map(|l| l.name().to_string()).collect();
        let last = layers.last().unwrap();
        let full = model.predict_on_batch(&inputs).unwrap();
        let cut = model.truncated_at(last).unwrap().predict_on_batch(&inputs).unwrap();
        assert_eq!(full[0].data(), cut[0].data());
        let before_last = &layers[layers.len() - 2];
        let hidden = model.truncated_at(before_last).unwrap().predict_on_batch(&inputs).unwrap();
        assert_eq!(hidden[0].shape()[0], 2);
        assert_ne!(hidden[0].shape(), full[0].shape());
        assert!(model.truncated_at("no_such_layer").unwrap_err().to_string().contains("has no layer 'no_such_layer'"));
    }
}
