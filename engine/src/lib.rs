//! # kallista-engine
//!
//! Brief overview: [`session::connect`] opens a client context on the
//! embedded Ballista cluster or a remote scheduler, with Kallista's SQL
//! functions ([`functions`]) registered; [`sql`] runs SQL scripts (statement
//! splitting, `${var}` substitution, rendering). The training operators,
//! gradient reduce and driver loop come with the distributed-training issue.

pub mod cluster;
pub mod error;
pub mod functions;
pub mod session;
pub mod sql;

pub use ballista;
pub use datafusion;
pub use error::{EngineError, Result};
