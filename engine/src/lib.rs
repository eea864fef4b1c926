//! # kallista-engine
//!
//! Brief overview: [`session::connect`] opens a client context on the
//! embedded Ballista cluster or a remote scheduler, with Kallista's SQL
//! functions ([`functions`]) registered; [`sql`] runs SQL scripts (statement
//! splitting, `${var}` substitution, rendering); [`train`] holds distributed
//! training: the training and evaluation operators (aggregate functions run
//! by Ballista on the executors), the exact gradient reduce of the driver
//! stage, data staging, and the driver loop with checkpoints and evaluation;
//! [`predict`] serves the prediction functions (`kallista_predict`, ...);
//! [`tensors`] turns table columns into model inputs;
//! [`embedded`] runs a scheduler and an executor inside the process;
//! [`store`] resolves every path a job touches (`file://`, `s3://`, `gs://`,
//! `az://`, `http(s)://`) through one object-store registry.

pub mod cancel;
pub mod cluster;
pub mod collective;
pub mod cpu_set;
pub mod digest;
pub mod embedded;
pub mod error;
pub mod functions;
pub mod gap_filler;
pub mod job_ids;
pub mod parquet_check;
pub mod ports;
pub mod predict;
pub mod ps;
pub mod session;
pub mod sql;
pub mod store;
pub mod tensors;
pub mod train;

pub use ballista;
pub use datafusion;
pub use error::{EngineError, Result};
