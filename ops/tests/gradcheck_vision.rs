//! Finite-difference gradient checks of the image layers w.r.t. their inputs
//! and trainable weights: convolutions (strided, dilated, 'same' on odd and
//! even sizes), pooling, BatchNormalization (training and inference),
//! Rescaling, ZeroPadding2D and Activation. Each check also proves its power: a 10% error
//! in one gradient must be caught (see `common/mod.rs`).

mod common;

use common::*;
use kallista_ops::layers::*;

#[test]
fn conv2d_valid_same_strided_dilated() {
    let same = Padding::Same;
    // 'same' with stride 2 on an even size pads only after; on an odd size, both sides.
    check_layer(
        "Conv2D same s2 even",
        Box::new(Conv2D::new(3, 3).strides(2).padding(same)),
        vec![randn(&[2, 6, 6, 2], 1, 1.0)],
        None,
    );
    check_layer(
        "Conv2D same s2 odd",
        Box::new(Conv2D::new(3, 3).strides(2).padding(same)),
        vec![randn(&[2, 7, 5, 2], 2, 1.0)],
        None,
    );
    check_layer("Conv2D valid", Box::new(Conv2D::new(4, (3, 2))), vec![randn(&[2, 5, 6, 3], 3, 1.0)], None);
    check_layer(
        "Conv2D dilated same",
        Box::new(Conv2D::new(2, 3).dilation_rate(2).padding(same)),
        vec![randn(&[2, 7, 6, 2], 4, 1.0)],
        None,
    );
    check_layer(
        "Conv2D even kernel same",
        Box::new(Conv2D::new(2, 4).padding(same)),
        vec![randn(&[1, 5, 5, 2], 5, 1.0)],
        None,
    );
    check_layer(
        "Conv2D 1x1 no bias tanh",
        Box::new(Conv2D::new(3, 1).use_bias(false).activation("tanh")),
        vec![randn(&[2, 3, 4, 5], 6, 1.0)],
        None,
    );
}

#[test]
fn depthwise_conv2d_multipliers_strides_dilation() {
    let same = Padding::Same;
    check_layer("DepthwiseConv2D", Box::new(DepthwiseConv2D::new(3)), vec![randn(&[2, 5, 5, 3], 7, 1.0)], None);
    check_layer(
        "DepthwiseConv2D dm2 same s2",
        Box::new(DepthwiseConv2D::new(3).depth_multiplier(2).strides(2).padding(same)),
        vec![randn(&[2, 6, 7, 2], 8, 1.0)],
        None,
    );
    check_layer(
        "DepthwiseConv2D dilated",
        Box::new(DepthwiseConv2D::new((2, 3)).dilation_rate(2).padding(same).use_bias(false)),
        vec![randn(&[1, 6, 6, 3], 9, 1.0)],
        None,
    );
}

#[test]
fn pooling_windows_and_global() {
    let same = Padding::Same;
    // Distinct, well-separated values: a finite-difference step never changes a max.
    let x = || vec![distinct(&[2, 5, 6, 3], 10, 4.0)];
    check_layer_no_weights("MaxPooling2D valid", Box::new(MaxPooling2D::new(2)), x());
    check_layer_no_weights("MaxPooling2D same s1", Box::new(MaxPooling2D::new(3).strides(1).padding(same)), x());
    check_layer_no_weights("AveragePooling2D valid", Box::new(AveragePooling2D::new(2)), x());
    check_layer_no_weights("AveragePooling2D same", Box::new(AveragePooling2D::new((2, 3)).padding(same)), x());
    // Few cells, so that each cell's share of an average is large enough for the power test.
    let small = || vec![distinct(&[2, 2, 2, 3], 11, 4.0)];
    check_layer_no_weights("GlobalAveragePooling2D", Box::new(GlobalAveragePooling2D::new()), small());
    check_layer_no_weights("GlobalMaxPooling2D", Box::new(GlobalMaxPooling2D::new().keepdims(true)), small());
}

#[test]
fn batch_normalization_training_and_inference() {
    // Training: through the batch statistics, w.r.t. input, gamma and beta.
    let x = randn(&[4, 3, 3, 5], 11, 2.0);
    check_layer("BatchNormalization training", Box::new(BatchNormalization::new()), vec![x.clone()], None);
    check_layer("BatchNormalization 2-D", Box::new(BatchNormalization::new()), vec![randn(&[6, 4], 12, 1.0)], None);
    check_layer("BatchNormalization no scale", Box::new(BatchNormalization::new().scale(false)), vec![x.clone()], None);
    // Inference: the moving statistics are constants.
    check_layer_in("BatchNormalization inference", Box::new(BatchNormalization::new()), vec![x], None, false);
}

#[test]
fn rescaling_and_zero_padding() {
    let x = || vec![randn(&[2, 3, 4, 2], 13, 1.0)];
    check_layer_no_weights("Rescaling", Box::new(Rescaling::new(0.5, 0.25)), x());
    check_layer_no_weights("ZeroPadding2D", Box::new(ZeroPadding2D::new(((1, 0), (2, 1)))), x());
}

#[test]
fn activation_layer() {
    // Away from relu's kink at 0 the finite differences are exact enough;
    // softmax couples the last axis, so its Jacobian is not diagonal.
    let x = || vec![randn(&[2, 3, 4, 5], 14, 1.0)];
    for name in ["relu", "sigmoid", "tanh", "softmax", "gelu"] {
        check_layer_no_weights(&format!("Activation {name}"), Box::new(Activation::new(name)), x());
    }
}
