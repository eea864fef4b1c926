//! # kallista-ops
//!
//! Brief overview: [`Tensor`] (f32, stored in a [`buf::Buf`] on the host or
//! on the device of the backend that made it), [`IntTensor`] (ids) and
//! [`ByteTensor`] (raw pixels, on the host); the [`backend::Backend`] trait is the
//! one dispatch point for kernels (CPU on `gemm`, CUDA behind feature `cuda`);
//! [`autodiff`] records ops on a [`autodiff::Tape`] and back-propagates;
//! [`layers`] are the Keras layers with Keras names, defaults and weight
//! layouts (dense, recurrent, and channels-last image layers: `Conv2D`,
//! `DepthwiseConv2D`, pooling, `BatchNormalization`, `TimeDistributed`);
//! [`model::Model`] is the functional API (inputs, shared layers, several
//! inputs and outputs, and a model used as a layer of another) with `summary`,
//! a JSON config, safetensors weights and `train_on_batch`; [`optim`] holds the
//! optimizers and schedules; [`losses`] and [`metrics`] what `compile` takes;
//! [`applications`] ready-made models.
//!
//! ```
//! use kallista_ops::{layers::*, model::ModelBuilder, tensor::DType};
//!
//! let mut g = ModelBuilder::new("tiny");
//! let x = g.input("x", &[4], DType::F32);
//! let h = g.apply(Dense::new(8).activation("relu"), &[x]).unwrap();
//! let y = g.apply(Dense::new(3).activation("softmax"), &[h]).unwrap();
//! let model = g.build(&[x], &[y], 42).unwrap();
//! assert_eq!(model.count_params(), 4 * 8 + 8 + 8 * 3 + 3);
//! ```

pub mod applications;
pub mod autodiff;
pub mod backend;
pub mod buf;
pub mod error;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod tensor;

pub use error::{OpsError, Result};
pub use tensor::{ByteTensor, DType, Data, IntTensor, Tensor};
