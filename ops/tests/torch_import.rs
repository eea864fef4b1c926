//! PyTorch weight import: the small CNN's `state_dict`, written by
//! `fixtures/make_torch_fixtures.py` (torch Conv2d layouts, Keras 'same'
//! padding emulated with `F.pad`), loads through a `TorchMapping` and gives
//! torch's features; a wrong mapping lists every mismatch.

use kallista_ops::applications::small_cnn;
use kallista_ops::model::{read_safetensors, TorchMapping};
use kallista_ops::{Data, OpsError};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn mapping() -> TorchMapping {
    TorchMapping::new().conv2d("conv1", "conv1", true).conv2d("conv2", "conv2", true).conv2d("conv3", "conv3", true)
}

#[test]
fn small_cnn_from_torch_matches_torch_features() {
    let mut model = small_cnn([16, 16, 3], [4, 8, 8], 7).unwrap();
    model.load_torch_weights(fixture("torch_small_cnn.safetensors"), &mapping()).unwrap();
    let (io, _) = read_safetensors(&fixture("torch_small_cnn_io.safetensors")).unwrap();
    let y = &model.predict_on_batch(&[Data::F32(io["x"].clone())]).unwrap()[0];
    let want = &io["y"];
    assert_eq!(y.shape(), want.shape());
    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-2, "the fixture's features are not all zero");
    let err = y.max_abs_diff(want);
    assert!(err <= 1e-4 * scale, "max |kallista - torch| = {err}, max |torch| = {scale}");
}

#[test]
fn wrong_mapping_lists_every_mismatch() {
    let mut model = small_cnn([16, 16, 3], [4, 8, 8], 7).unwrap();
    let before = model.named_weights();
    // conv3 unmapped (its torch tensors unexpected, its weights missing), conv2
    // read as a Linear (wrong layout), and a key the model lacks.
    let m = TorchMapping::new().conv2d("conv1", "conv1", true).linear("conv2", "conv2", true).entry(
        "conv1.bias",
        "conv9/bias",
        kallista_ops::model::TorchLayout::AsIs,
    );
    let err = model.load_torch_weights(fixture("torch_small_cnn.safetensors"), &m).unwrap_err();
    let OpsError::WeightMismatch(p) = &err else { panic!("{err}") };
    let text = p.join("\n");
    for needle in [
        "'conv2/kernel' from [\"conv2.weight\"]: expected a 2-D tensor, torch has [8, 4, 3, 3]",
        "unexpected torch tensor 'conv3.weight'",
        "unexpected torch tensor 'conv3.bias'",
        "missing 'conv3/kernel'",
        "missing 'conv3/bias'",
        "mapping names 'conv9/bias'",
    ] {
        assert!(text.contains(needle), "no '{needle}' in:\n{text}");
    }
    assert_eq!(model.named_weights(), before, "nothing changes on error");
}
