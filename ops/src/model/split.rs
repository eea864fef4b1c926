//! A model split at one layer into the part that computes it (the head: a
//! frozen feature extractor such as a TimeDistributed pre-trained CNN) and
//! the rest (the tail, which reads that layer's output as an input), so that
//! the head can run once over a dataset and the tail train from its stored
//! output: frozen-feature caching. Both parts keep the model's weights; the
//! tail's trained weights go back with [`Model::with_weights_of`].

use super::config::{FunctionalJson, InputJson, NodeJson};
use super::Model;
use crate::error::{OpsError, Result};
use std::collections::{BTreeMap, HashSet};

/// The two parts of [`Model::split_at`].
#[derive(Clone, Debug)]
pub struct Split {
    /// The layers the cut tensor depends on; its only output is the cut tensor.
    pub head: Model,
    /// Every other layer; its inputs are the model's that it reads, and one
    /// input named after the cut tensor, where the first input only the head
    /// reads was (first, when the rest reads every model input).
    pub tail: Model,
    /// The cut tensor's name: the head's output and the tail's new input.
    pub cut: String,
}

/// The output name of each node (`layer`, then `layer@k` for its k-th later call).
fn node_names(nodes: &[NodeJson]) -> Vec<String> {
    let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
    nodes
        .iter()
        .map(|n| {
            let k = calls.entry(&n.layer).or_insert(0);
            let name = if *k == 0 { n.layer.clone() } else { format!("{}@{k}", n.layer) };
            *k += 1;
            name
        })
        .collect()
}

/// Which nodes `tensor` depends on (itself included), searching backwards from node `last`.
fn ancestors(nodes: &[NodeJson], names: &[String], last: usize) -> Vec<bool> {
    let mut needed: HashSet<&str> = HashSet::from([names[last].as_str()]);
    let mut keep = vec![false; nodes.len()];
    for i in (0..=last).rev() {
        if needed.contains(names[i].as_str()) {
            keep[i] = true;
            needed.extend(nodes[i].inputs.iter().map(String::as_str));
        }
    }
    keep
}

impl Model {
    /// Splits the model after the last call of `layer` (see the module docs).
    /// Errors when the rest reads any tensor of the head other than the cut,
    /// when a layer is called on both sides, or when the cut carries a mask.
    pub fn split_at(&self, layer: &str) -> Result<Split> {
        let j = self.functional_json();
        let names = node_names(&j.nodes);
        let config = |why: String| OpsError::Config(format!("cannot split model '{}' at '{layer}': {why}", self.name));
        let last =
            j.nodes.iter().rposition(|n| n.layer == layer).ok_or_else(|| config("no call of that layer".into()))?;
        let cut = names[last].clone();
        let spec = &self.tensors[self.nodes[last].output].spec;
        if spec.masked {
            return Err(config("its output carries a mask, which a stored feature cannot".into()));
        }
        let in_head = ancestors(&j.nodes, &names, last);
        let head_tensors: HashSet<&str> =
            names.iter().zip(&in_head).filter(|(_, h)| **h).map(|(n, _)| n.as_str()).collect();
        let head_layers: HashSet<String> =
            j.nodes.iter().zip(&in_head).filter(|(_, h)| **h).map(|(n, _)| n.layer.clone()).collect();
        let mut tail_reads: HashSet<String> = HashSet::new();
        for (n, _) in j.nodes.iter().zip(&in_head).filter(|(_, h)| !**h) {
            if head_layers.contains(&n.layer) {
                return Err(config(format!("layer '{}' is called both before and after the cut", n.layer)));
            }
            for input in &n.inputs {
                if input != &cut && head_tensors.contains(input.as_str()) {
                    return Err(config(format!("layer '{}' reads '{input}', computed before the cut", n.layer)));
                }
                tail_reads.insert(input.clone());
            }
        }
        for output in &j.outputs {
            if output != &cut && head_tensors.contains(output.as_str()) {
                return Err(config(format!("output '{output}' is computed before the cut")));
            }
            tail_reads.insert(output.clone());
        }
        let head_reads: HashSet<String> =
            j.nodes.iter().zip(&in_head).filter(|(_, h)| **h).flat_map(|(n, _)| n.inputs.iter().cloned()).collect();
        let cut_input = InputJson { name: cut.clone(), shape: spec.shape.clone(), dtype: spec.dtype.to_string() };
        let mut tail_inputs = vec![];
        let mut cut_placed = false;
        for input in &j.inputs {
            if tail_reads.contains(input.name.as_str()) {
                tail_inputs.push(input.clone());
            } else if head_reads.contains(input.name.as_str()) && !cut_placed {
                tail_inputs.push(cut_input.clone());
                cut_placed = true;
            }
        }
        if !cut_placed {
            tail_inputs.insert(0, cut_input);
        }
        let FunctionalJson { name, seed, inputs, layers, nodes, outputs } = j;
        let (head_nodes, tail_nodes): (Vec<_>, Vec<_>) = nodes.into_iter().zip(in_head).partition(|(_, h)| *h);
        let (head_layer_json, tail_layer_json): (Vec<_>, Vec<_>) =
            layers.into_iter().partition(|l| head_layers.contains(&l.name));
        let head = FunctionalJson {
            name: format!("{name}_head"),
            seed,
            inputs: inputs.into_iter().filter(|i| head_reads.contains(&i.name)).collect(),
            layers: head_layer_json,
            nodes: head_nodes.into_iter().map(|(n, _)| n).collect(),
            outputs: vec![cut.clone()],
        };
        let tail = FunctionalJson {
            name: format!("{name}_tail"),
            seed,
            inputs: tail_inputs,
            layers: tail_layer_json,
            nodes: tail_nodes.into_iter().map(|(n, _)| n).collect(),
            outputs,
        };
        let weights = self.named_weights();
        let part = |c: FunctionalJson| -> Result<Model> {
            let mut m = Model::from_functional(c)?;
            let mine: BTreeMap<_, _> = m.weight_keys().into_iter().map(|k| (k.clone(), weights[&k].clone())).collect();
            m.set_weights(&mine)?;
            Ok(m)
        };
        Ok(Split { head: part(head)?, tail: part(tail)?, cut })
    }

    /// This model with the weights of `parts` (each a part of it, as
    /// [`Model::split_at`] gives), which together must cover all of them.
    pub fn with_weights_of(&self, parts: &[&Model]) -> Result<Model> {
        let mut weights = BTreeMap::new();
        for p in parts {
            weights.extend(p.named_weights());
        }
        let mut joined = self.clone();
        joined.set_weights(&weights)?;
        Ok(joined)
    }

    /// The layer a frozen-feature cache would store: the first `TimeDistributed`
    /// layer that has weights, none of them trainable, whose first call reads
    /// the model's inputs through layers without trainable weights (a
    /// `Rescaling`, say). `None` when there is none. [`Model::split_at`] cuts
    /// after a layer's last call, so a cache needs the layer called once.
    pub fn frozen_feature_layer(&self) -> Option<String> {
        let entries = self.weight_entries();
        let trainable_in = |layer: &str| {
            entries.iter().any(|(k, _, t)| *t && k.strip_prefix(layer).is_some_and(|r| r.starts_with('/')))
        };
        let has_weights =
            |layer: &str| entries.iter().any(|(k, _, _)| k.strip_prefix(layer).is_some_and(|r| r.starts_with('/')));
        let j = self.functional_json();
        let names = node_names(&j.nodes);
        for (i, n) in j.nodes.iter().enumerate() {
            let class = self.layers.iter().find(|l| l.name() == n.layer).map(|l| l.class_name());
            if class != Some("TimeDistributed") || !has_weights(&n.layer) || trainable_in(&n.layer) {
                continue;
            }
            let before = ancestors(&j.nodes, &names, i);
            if j.nodes.iter().zip(&before).all(|(m, h)| !*h || !trainable_in(&m.layer)) {
                return Some(n.layer.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::applications::{video_qa_pixels, VideoQaPixelsDims};
    use crate::{ByteTensor, Data, IntTensor};

    fn inputs(d: &VideoQaPixelsDims, batch: usize) -> Vec<Data> {
        let video = d.frames * d.height * d.width * d.channels;
        let frames = ByteTensor::new(
            &[batch, d.frames, d.height, d.width, d.channels],
            (0..batch * video).map(|i| (i * 37 % 255) as u8).collect(),
        )
        .unwrap();
        let question = IntTensor::new(
            &[batch, d.question_len],
            (0..batch * d.question_len).map(|i| 1 + (i * 7 % (d.vocab - 1)) as i32).collect(),
        )
        .unwrap();
        vec![Data::U8(frames), Data::I32(question)]
    }

    #[test]
    fn the_tail_on_the_head_output_computes_what_the_whole_model_computes() {
        let d = VideoQaPixelsDims::toy();
        let mut model = video_qa_pixels(&d, 5).unwrap();
        assert_eq!(model.frozen_feature_layer(), None, "nothing is frozen yet");
        model.set_trainable("td_cnn", false).unwrap();
        assert_eq!(model.frozen_feature_layer().as_deref(), Some("td_cnn"));
        let split = model.split_at("td_cnn").unwrap();
        assert_eq!(split.cut, "td_cnn");
        let tail_inputs: Vec<String> = split.tail.input_specs().into_iter().map(|i| i.name).collect();
        assert_eq!(tail_inputs, ["td_cnn", "question"]);
        assert_eq!(split.head.input_specs().len(), 1);
        assert_eq!(split.head.count_params() + split.tail.count_params(), model.count_params());

        let x = inputs(&d, 3);
        let whole = model.predict_on_batch(&x).unwrap();
        let features = split.head.predict_on_batch(&x[..1]).unwrap();
        let rest = split.tail.predict_on_batch(&[Data::F32(features[0].clone()), x[1].clone()]).unwrap();
        assert_eq!(whole[0].shape(), rest[0].shape());
        assert!(whole[0].max_abs_diff(&rest[0]) < 1e-6, "{}", whole[0].max_abs_diff(&rest[0]));

        // The parts' weights go back into the whole; a part alone does not cover it.
        let joined = model.with_weights_of(&[&split.head, &split.tail]).unwrap();
        assert_eq!(joined.named_weights(), model.named_weights());
        assert!(model.with_weights_of(&[&split.tail]).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn a_cut_the_rest_reads_around_is_refused() {
        // x -> a -> b; concat(a, b): the rest would need `a`, computed before a cut at `b`.
        let json = r#"{"class_name": "Functional", "config": {"name": "skip", "seed": 1,
            "inputs": [{"name": "x", "shape": [4], "dtype": "float32"}],
            "layers": [{"class_name": "Dense", "name": "a", "config": {"units": 3}},
                       {"class_name": "Dense", "name": "b", "config": {"units": 3}},
                       {"class_name": "Concatenate", "name": "c", "config": {}}],
            "nodes": [{"layer": "a", "inputs": ["x"]}, {"layer": "b", "inputs": ["a"]},
                      {"layer": "c", "inputs": ["a", "b"]}],
            "outputs": ["c"]}}"#;
        let model = crate::model::Model::from_json(json).unwrap();
        let e = model.split_at("b").unwrap_err().to_string();
        assert!(e.contains("layer 'c' reads 'a', computed before the cut"), "{e}");
        assert!(model.split_at("a").is_ok());
        assert!(model.split_at("no_such_layer").unwrap_err().to_string().contains("no call of that layer"));
    }
}
