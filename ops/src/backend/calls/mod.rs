//! What each op family asks of a backend, as plain descriptions of one kernel
//! call: the buffers it reads and writes and the sizes that shape them. The
//! ops build these; each backend carries them out its own way (see
//! [`super::Backend`]). Sizes that describe a plan (window geometry, pooling
//! counts) stay with the op; these hold only what a kernel needs.

mod conv;
mod elementwise;
mod loss;
mod norm_pool;
mod recurrent;

pub use conv::{DepthwiseCall, Im2colCall};
pub use elementwise::Elementwise;
pub use loss::{LossCall, Targets};
pub use norm_pool::{BatchNormCall, ChannelStats, PoolCall};
pub use recurrent::{RecurrentCall, SequenceDims};
