//! Parameter servers of `async` training (`DESIGN.md`, "Training modes").
//!
//! The trainable weights are split into `parameter_servers` shards balanced
//! by bytes ([`slices`]); each [`shard`] owns its slices and their
//! optimizer state and applies pushed gradients as they arrive (Downpour,
//! or Hogwild without the shard's lock), dropping those older than
//! `max_staleness` versions. Workers ([`client`]) push a gradient and get
//! the new values back in one round trip ([`wire`]); every message is
//! authenticated with the job's secret, as the `sync` collectives are.
//! Shards live in the driver's process, or in `kallista ps` processes on
//! hosts of their own ([`host`]); a worker in a shard's own process (the
//! embedded cluster) calls it directly ([`local`]).

pub mod client;
pub mod host;
pub mod local;
pub mod momentum;
pub mod shard;
pub mod slices;
pub mod wire;
