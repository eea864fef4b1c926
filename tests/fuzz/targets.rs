//! The fuzz targets: each takes any bytes and must answer with a value or an
//! error, never a panic. Each reads the input the way Kallista does when the
//! bytes come from a file, and its seed corpus is made here from real inputs.

use kallista_engine::store::Location;
use kallista_engine::train::vectors::{decode_vectors, encode_vectors, Vectors};
use kallista_ops::model::Model;
use kallista_ops::model::{parse_safetensors, safetensors_bytes};
use std::path::{Path, PathBuf};

/// A fuzz target: its name, whether its format is text, its seeds, and the run of one input.
pub struct Target {
    pub name: &'static str,
    pub text: bool,
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Runs one input and says what came of it (an error's text, or what was
    /// read): an input with an outcome not seen before joins the corpus.
    pub run: fn(&[u8]) -> String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small model of the video-QA kind (the job file's), for seeds.
fn job_model() -> Model {
    let file = root().join("jobs/video_qa/job.yaml");
    kallista_jobs::spec::load(&file).unwrap().model.build(&file, 1).unwrap()
}

fn job_yaml_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![std::fs::read(root().join("jobs/video_qa/job.yaml")).unwrap()];
    seeds.push(b"job_dir: /tmp/x\nmodel: {path: m.json}\ndata: {train: /d/, label: y}\ntraining: {optimizer: {name: sgd, learning_rate: 0.1}, batch_size: 4, max_steps: 1}\n".to_vec());
    seeds
}

/// What came of a `Result`: its error's text, or `ok` and what `show` says of the value.
fn outcome<T, E: std::fmt::Display>(r: Result<T, E>, show: impl Fn(&T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", show(&v)),
        Err(e) => e.to_string(),
    }
}

fn job_yaml(bytes: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(bytes) else { return "not UTF-8".into() };
    let file = Path::new("/nonexistent-fuzz-dir/job.yaml");
    let built = kallista_jobs::spec::parse(text, file)
        .and_then(|spec| spec.validate(file).and_then(|_| spec.model.build(file, 1)));
    outcome(built, |m| format!("{} weights", m.named_weights().len()))
}

fn model_json_seeds() -> Vec<Vec<u8>> {
    vec![job_model().to_json().into_bytes()]
}

fn model_json(bytes: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(bytes) else { return "not UTF-8".into() };
    outcome(Model::from_json(text), |m| format!("{} weights", m.named_weights().len()))
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let m = job_model();
    let mut tensors = std::collections::BTreeMap::new();
    for (k, w) in m.named_weights().into_iter().take(4) {
        tensors.insert(k, w);
    }
    let meta = [("format".to_string(), "kallista".to_string())].into();
    vec![
        safetensors_bytes(&tensors, meta).unwrap(),
        std::fs::read(root().join("ops/tests/fixtures/keras_toy_weights.safetensors")).unwrap(),
    ]
}

fn safetensors(bytes: &[u8]) -> String {
    outcome(parse_safetensors(bytes, "fuzz.safetensors"), |(t, m)| format!("{} tensors, {} metadata", t.len(), m.len()))
}

fn keras_h5_seeds() -> Vec<Vec<u8>> {
    ["keras_toy.weights.h5", "keras_toy_legacy.h5", "keras_toy_legacy_root.h5"]
        .iter()
        .map(|f| std::fs::read(root().join("ops/tests/fixtures").join(f)).unwrap())
        .collect()
}

fn keras_h5(bytes: &[u8]) -> String {
    let read = kallista_ops::model::read_keras_weights_h5_bytes(bytes.to_vec(), "fuzz.weights.h5");
    outcome(read, |layers| format!("{:?}", layers.keys().collect::<Vec<_>>()))
}

fn at() -> Location {
    Location::parse("/tmp/fuzz.vec").unwrap()
}

fn vectors_seeds() -> Vec<Vec<u8>> {
    let f: Vectors<f32> = vec![("a/kernel".into(), vec![1.0, -2.5, 3.0]), ("b".into(), vec![])];
    let i: Vectors<i64> = vec![("grads/x".into(), vec![1, -2, 1 << 40]), ("n".into(), vec![7])];
    vec![encode_vectors(&f).unwrap(), encode_vectors(&i).unwrap()]
}

fn vectors(bytes: &[u8]) -> String {
    let f = outcome(decode_vectors::<f32>(bytes, &at()), |v| format!("{} f32 vectors", v.len()));
    let i = outcome(decode_vectors::<i64>(bytes, &at()), |v| format!("{} i64 vectors", v.len()));
    format!("{f}; {i}")
}

fn annotations_seeds() -> Vec<Vec<u8>> {
    vec![
        b"video,question,answer,split\nv1,What is he doing?,waving,train\nv2,\"Which, way?\",left,\nv3,\"two\nlines\",x,test\n".to_vec(),
        b"{\"video\":\"v1\",\"question\":\"q?\",\"answer\":\"a\",\"split\":\"eval\"}\n{\"video\":\"v2\",\"question\":\"q2\",\"answer\":\"b\"}\n".to_vec(),
    ]
}

fn annotations(bytes: &[u8]) -> String {
    use kallista_data::ingest::annotations::parse_annotations;
    let rows = |name: &str| {
        outcome(parse_annotations(bytes, Path::new(name)), |rows| {
            rows.iter()
                .map(|r| r.as_ref().map_or_else(|e| e.to_string(), |_| "row".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
    };
    format!("{}; {}", rows("fuzz.csv"), rows("fuzz.jsonl"))
}

pub fn all() -> Vec<Target> {
    vec![
        Target { name: "job_yaml", text: true, seeds: job_yaml_seeds, run: job_yaml },
        Target { name: "model_json", text: true, seeds: model_json_seeds, run: model_json },
        Target { name: "safetensors", text: false, seeds: safetensors_seeds, run: safetensors },
        Target { name: "keras_h5", text: false, seeds: keras_h5_seeds, run: keras_h5 },
        Target { name: "vectors", text: false, seeds: vectors_seeds, run: vectors },
        Target { name: "annotations", text: true, seeds: annotations_seeds, run: annotations },
    ]
}
