//! What the ranks of a `sync` segment share besides storage: the driver's
//! rendezvous ([`rendezvous`]), the in-memory sum of the ranks of one
//! process ([`group`]), and the exact all-reduce between processes
//! ([`ring`]) of sums whose overflow is an error
//! ([`checked`]), sent dense or as their non-zero rows ([`chunk`]), every
//! message authenticated with the job's secret ([`frame`]), the chunks
//! between processes of one host through shared memory ([`shm`]); each rank
//! watches its generation and stops at once when it fails ([`watch`]).

pub mod checked;
pub mod chunk;
pub mod frame;
pub mod group;
pub mod rendezvous;
pub mod ring;
pub mod shm;
pub mod watch;
