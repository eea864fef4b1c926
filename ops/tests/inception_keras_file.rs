//! A Keras-written InceptionV3 weight file (random weights and moving
//! statistics, saved by Keras 3) loads into Kallista's InceptionV3 and gives
//! Keras's features on the same images, to 1e-4 relative.
//!
//! The ~87 MB file is made in test set-up, not committed:
//! `scripts/make-test-fixtures.sh` (which `.ci/run` runs) writes it to
//! `$KALLISTA_FIXTURES` (default `~/.cache/kallista/fixtures`).

use kallista_ops::applications::{inception_v3, Pooling};
use kallista_ops::{Data, Tensor};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    std::env::var_os("KALLISTA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kallista/fixtures"))
}

#[test]
fn keras_written_inception_v3_gives_keras_features() {
    let dir = fixtures().join("inception_v3");
    let h5 = dir.join("inception_v3.weights.h5");
    assert!(
        h5.exists(),
        "{} is missing: run scripts/make-test-fixtures.sh first (it needs Python and PyPI)",
        h5.display()
    );
    let io = kallista_ops::model::read_safetensors(&dir.join("inception_v3_io.safetensors")).unwrap().0;
    let mut model = inception_v3(false, Pooling::Avg, (75, 75), 0, 1).unwrap();
    model.load_keras_weights_h5(&h5).unwrap();
    let x: &Tensor = &io["input"];
    let want = &io["features"];
    let got = model.predict_on_batch(&[Data::F32(x.clone())]).unwrap();
    assert_eq!(got[0].shape(), want.shape());
    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got[0].max_abs_diff(want) / scale;
    assert!(err < 1e-4, "features differ from Keras by {err:e} (relative to their max)");
    // The loaded weights matter: the model's own seeded weights give other features.
    let fresh = inception_v3(false, Pooling::Avg, (75, 75), 0, 1).unwrap();
    let other = fresh.predict_on_batch(&[Data::F32(x.clone())]).unwrap();
    assert!(other[0].max_abs_diff(want) / scale > 1e-2);
}
