//! `applications::inception_v3` against Keras 3's InceptionV3: parameter
//! counts (Keras's `model.summary()` numbers), the layer names Keras gives a
//! fresh session, the output shapes, and the typed error below 75x75.

mod common;

use common::*;
use kallista_ops::applications::{inception_v3, Pooling};
use kallista_ops::Data;

#[test]
fn notop_avg_has_keras_parameter_count_and_names() {
    let model = inception_v3(false, Pooling::Avg, (75, 75), 1000, 1).unwrap();
    // Keras: InceptionV3(include_top=False, pooling="avg", weights=None):
    // Total params 21,802,784; trainable 21,768,352 (non-trainable: the
    // BatchNormalization moving statistics, 2 x 17,216).
    assert_eq!(model.count_params(), 21_802_784);
    assert_eq!(model.count_trainable_params(), 21_768_352);
    // 94 conv2d_bn blocks, 4 max and 9 average poolings, numbered as Keras does.
    for name in [
        "conv2d",
        "conv2d_93",
        "batch_normalization_93",
        "activation_93",
        "max_pooling2d_3",
        "average_pooling2d_8",
        "mixed0",
        "mixed9_1",
        "concatenate_1",
        "mixed10",
        "global_average_pooling2d",
    ] {
        assert!(model.layer(name).is_some(), "missing layer {name}");
    }
    assert!(model.layer("conv2d_94").is_none());
    assert!(model.weight("conv2d/kernel").is_some_and(|k| k.shape() == [3, 3, 3, 32]));
    assert!(model.weight("batch_normalization/gamma").is_none(), "scale=False has no gamma");
    assert!(model.weight("batch_normalization/beta").is_some());
    assert!(model.weight("conv2d/bias").is_none(), "use_bias=False");

    let x = randn(&[1, 75, 75, 3], 3, 1.0);
    let y = model.predict_on_batch(&[Data::F32(x)]).unwrap();
    assert_eq!(y[0].shape(), [1, 2048]);
    assert!(y[0].data().iter().all(|v| v.is_finite() && *v >= 0.0), "relu features");
}

#[test]
fn top_and_spatial_outputs() {
    // Keras InceptionV3(weights=None): 23,851,784 parameters with the 1000-way top.
    let top = inception_v3(true, Pooling::None, (75, 75), 1000, 1).unwrap();
    assert_eq!(top.count_params(), 23_851_784);
    assert_eq!(top.output_specs()[0].shape, [1000]);
    assert!(top.layer("avg_pool").is_some() && top.layer("predictions").is_some());
    let spatial = inception_v3(false, Pooling::None, (150, 150), 0, 1).unwrap();
    assert_eq!(spatial.output_specs()[0].shape, [3, 3, 2048]);
    let max = inception_v3(false, Pooling::Max, (75, 80), 0, 1).unwrap();
    assert_eq!(max.output_specs()[0].shape, [2048]);
    assert!(max.layer("global_max_pooling2d").is_some());
}

#[test]
fn below_75_is_a_typed_error() {
    let err = inception_v3(false, Pooling::Avg, (74, 100), 0, 1).unwrap_err().to_string();
    assert!(err.contains("75") && err.contains("74x100"), "{err}");
}
