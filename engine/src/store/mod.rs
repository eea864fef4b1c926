//! Where a job's bytes live. Hosts share nothing but the network and an
//! object store (`DESIGN.md`, "Where state lives"), so every path a job
//! touches (data, staging, the job dir) is a [`Location`]: a `file://`,
//! `s3://`, `gs://`, `az://` or `http(s)://` URL, or a plain path made
//! absolute where it is given.
//!
//! One registry ([`KallistaStores`], built by [`runtime_env`]) serves them on
//! the client, in the scheduler's session builder and on every executor, and
//! builds each store from that host's environment (the standard `AWS_*`,
//! `GOOGLE_*` and `AZURE_*` variables, or the host's role): credentials never
//! travel in a plan or a session setting. [`blocking`] reads and writes whole
//! objects from synchronous code (the training operators run on executor
//! threads). A whole-object put is atomic on every store (a local put writes a
//! temporary file and renames it), so a reader never sees half a file.
//!
//! ```
//! use kallista_engine::store::Location;
//! let job = Location::parse("s3://bucket/jobs/video_qa").unwrap();
//! assert_eq!(job.join("checkpoints/last.json").as_str(), "s3://bucket/jobs/video_qa/checkpoints/last.json");
//! ```

pub mod blocking;
pub mod cache;
mod location;
mod registry;

pub use location::Location;
pub use registry::{build_store, object_stores, runtime_env, KallistaStores};
