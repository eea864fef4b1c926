//! CUDA C for the CUDA backend's kernels, compiled by NVRTC when the backend
//! opens (so building needs no toolkit), one file per op family. Each follows
//! the CPU backend's formula for its family (`backend/cpu/`); sums whose
//! order the CPU fixes keep that order (one thread walks a column's rows),
//! so that results do not depend on scheduling.

mod activations;
mod data;
mod loss;
mod optimizer;
mod recurrent;

pub(super) use activations::act_code;

/// Every kernel's source, for one NVRTC compilation.
pub(super) fn source() -> String {
    [activations::ACTIVATIONS, data::DATA, loss::LOSS, recurrent::RECURRENT, optimizer::OPTIMIZER].concat()
}

/// The kernels' names, each loaded once when the backend opens.
pub(super) const NAMES: &[&str] = &[
    "act_forward",
    "act_backward",
    "softmax_rows",
    "softmax_backward_rows",
    "copy_view",
    "elementwise",
    "sum_rows",
    "dot_partials",
    "gather_rows",
    "scatter_add_rows",
    "cross_entropy_rows",
    "elementwise_loss",
    "lstm_step",
    "lstm_step_backward",
    "carry_masked",
    "gru_step",
    "gru_step_backward",
    "optimizer_step",
];
