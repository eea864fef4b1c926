//! Losses over rows of predictions, each giving the batch-mean loss and its
//! gradient with respect to the predictions.

/// The targets of a cross-entropy.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class id per row, each in `[0, classes)` (the op checks them first).
    Sparse(&'a [i32]),
    /// Dense (one-hot or soft) targets of the predictions' shape.
    Dense(&'a [f32]),
}

/// One loss kernel call. Each returns the mean loss over the batch (as Keras
/// 3's "sum_over_batch_size") and writes `d loss / d pred` into `grad`.
#[derive(Debug)]
pub enum LossCall<'a> {
    /// Categorical cross-entropy over rows of `classes`; `from_logits` takes a
    /// softmax first, else predictions are probabilities (normalised per row
    /// and clipped to `[1e-7, 1 - 1e-7]`, a clipped value having no gradient).
    CrossEntropy { pred: &'a [f32], classes: usize, target: Targets<'a>, from_logits: bool, grad: &'a mut [f32] },
    /// Binary cross-entropy, element by element.
    Binary { pred: &'a [f32], target: &'a [f32], from_logits: bool, grad: &'a mut [f32] },
    /// Mean squared error over all elements.
    MeanSquared { pred: &'a [f32], target: &'a [f32], grad: &'a mut [f32] },
}
