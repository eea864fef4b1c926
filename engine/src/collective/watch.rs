//! A rank's watch on its generation. A rank blocks on its ring neighbours
//! (connecting, accepting, reading a frame) with the segment's timeout,
//! minutes; when the generation fails elsewhere (a peer's executor was
//! killed before it connected, a peer far round the ring aborted), the
//! rank must stop at once, not at that timeout: it holds one of its
//! executor's task slots, and the next generation's rank waits for it. The
//! watch asks the driver's rendezvous (a long poll) and, on a failure,
//! shuts the ring's sockets down, which ends every blocked read and write.

use super::frame::Secret;
use super::rendezvous::{request, Reply, Request};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    failure: Mutex<Option<String>>,
    /// Clones of the ring's sockets, shut down on a failure.
    sockets: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

impl Shared {
    /// Records the failure first, then cuts: a socket added meanwhile sees the failure and is cut too.
    fn fail(&self, reason: String) {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
        for s in self.sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Stops watching when dropped.
pub struct GenerationWatch {
    shared: Arc<Shared>,
}

impl GenerationWatch {
    /// Watches `generation` of `job` at the rendezvous `address`.
    pub fn start(address: &str, secret: &Secret, job: &str, generation: u64) -> GenerationWatch {
        let shared = Arc::new(Shared::default());
        let (watching, address, secret) = (shared.clone(), address.to_string(), secret.clone());
        let req = Request::Watch { job: job.to_string(), generation };
        let spawned = std::thread::Builder::new().name("kallista-generation-watch".into()).spawn(move || {
            while !watching.stopped.load(Ordering::Relaxed) {
                match request(&address, &secret, &req, Duration::from_secs(10)) {
                    Ok(Reply::Ack) => {}
                    Ok(Reply::Failed(why)) => return watching.fail(format!("generation {generation} failed: {why}")),
                    Ok(Reply::Refused(why)) => return watching.fail(format!("the rendezvous refused: {why}")),
                    Ok(Reply::Peers(_)) => return watching.fail("the rendezvous answered out of turn".into()),
                    // The driver may be busy: its own deadline still bounds the segment.
                    Err(e) => {
                        log::warn!("watching generation {generation}: {e}");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot watch generation {generation}: {e}; a failure elsewhere is seen at the timeout");
        }
        GenerationWatch { shared }
    }

    /// A watch that never fires: a rank with no ring to cut, or a ring outside any driver (tests).
    pub fn none() -> GenerationWatch {
        GenerationWatch { shared: Arc::new(Shared::default()) }
    }

    /// Why the generation failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Shuts `stream` down when the generation fails (at once if it already has).
    pub fn cut_on_failure(&self, stream: &TcpStream) {
        let Ok(clone) = stream.try_clone() else { return };
        let mut sockets = self.shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if self.failure().is_some() {
            let _ = clone.shutdown(Shutdown::Both);
        }
        sockets.push(clone);
    }
}

impl Drop for GenerationWatch {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::rendezvous::Rendezvous;
    use crate::collective::ring::{connect, Listener, RingPeers};
    use std::time::Instant;

    /// A rendezvous with generation 1 of 2 ranks open, and a watch on it.
    fn watched() -> (Rendezvous, Secret, GenerationWatch) {
        let (secret, _) = Secret::generate().unwrap();
        let rendezvous = Rendezvous::start("127.0.0.1", "job".into(), secret.clone()).unwrap();
        rendezvous.open(1, 2);
        let watch = GenerationWatch::start(rendezvous.address(), &secret, "job", 1);
        (rendezvous, secret, watch)
    }

    /// Rank 1's side of a two-leader ring whose rank 0 is at `endpoint`.
    fn connect_to(endpoint: String, secret: &Secret, watch: &GenerationWatch) -> crate::error::Result<()> {
        let mine = Listener::bind("127.0.0.1", "127.0.0.1").unwrap();
        let leaders = vec![(0, endpoint), (1, mine.endpoint.clone())];
        let peers = RingPeers { job: "job", generation: 1, leaders: &leaders, position: 1, shared_memory: false };
        connect(mine, &peers, secret, Duration::from_secs(60), watch).map(|_| ())
    }

    #[test]
    fn a_rank_waiting_for_a_silent_neighbour_stops_when_its_generation_fails() {
        let (rendezvous, secret, watch) = watched();
        // Rank 0 registered, then stalled: its listener takes the connection but never says hello.
        let silent = Listener::bind("127.0.0.1", "127.0.0.1").unwrap();
        let failing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            rendezvous.fail(1, "rank 0 aborted: its executor was lost".into());
            rendezvous
        });
        let started = Instant::now();
        let err = connect_to(silent.endpoint.clone(), &secret, &watch).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}, not at once", started.elapsed());
        assert!(err.contains("rank 0 aborted: its executor was lost"), "{err}");
        assert!(watch.failure().unwrap().contains("generation 1 failed"), "{:?}", watch.failure());
        drop(failing.join().unwrap());
    }

    #[test]
    fn a_neighbour_that_refuses_the_connection_fails_the_rank_at_once() {
        let (_rendezvous, secret, watch) = watched();
        // Rank 0's process is gone: nothing listens at its endpoint any more.
        let gone = Listener::bind("127.0.0.1", "127.0.0.1").unwrap().endpoint;
        let started = Instant::now();
        let err = connect_to(gone.clone(), &secret, &watch).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
        assert!(err.contains(&format!("cannot reach rank 0 at {gone}")), "{err}");
        assert_eq!(watch.failure(), None, "the generation itself has not failed");
    }

    #[test]
    fn a_failure_cuts_a_connected_ring_blocked_on_a_stalled_neighbour() {
        let (rendezvous, secret, watch) = watched();
        let listeners = [0, 1].map(|_| Listener::bind("127.0.0.1", "127.0.0.1").unwrap());
        let leaders: Vec<(usize, String)> = listeners.iter().map(|l| l.endpoint.clone()).enumerate().collect();
        let [first, second] = listeners;
        let (secret0, leaders0) = (secret.clone(), leaders.clone());
        // Rank 0 joins the ring, then never sends its part of the sum.
        let (stall, stalled) = std::sync::mpsc::channel::<()>();
        let stalled_rank = std::thread::spawn(move || {
            let peers = RingPeers { job: "job", generation: 1, leaders: &leaders0, position: 0, shared_memory: false };
            let ring = connect(first, &peers, &secret0, Duration::from_secs(60), &GenerationWatch::none()).unwrap();
            let _ = stalled.recv();
            drop(ring);
        });
        let peers = RingPeers { job: "job", generation: 1, leaders: &leaders, position: 1, shared_memory: false };
        let mut ring = connect(second, &peers, &secret, Duration::from_secs(60), &watch).unwrap().unwrap();
        let failing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            rendezvous.fail(1, "rank 0 aborted: out of memory".into());
            rendezvous
        });
        let started = Instant::now();
        let mut values = vec![1i64; 10];
        assert!(ring.all_reduce(1, &mut values).is_err(), "the sum cannot complete without rank 0");
        assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}", started.elapsed());
        assert!(watch.failure().unwrap().contains("out of memory"), "{:?}", watch.failure());
        stall.send(()).unwrap();
        stalled_rank.join().unwrap();
        drop(failing.join().unwrap());
    }
}
