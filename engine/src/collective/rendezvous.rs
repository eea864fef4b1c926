//! The driver's rendezvous: the ranks of a segment job register (job,
//! generation, rank, endpoint, process, kernels) and receive the peer table
//! once all `world` ranks of that generation are in. A generation fails, and
//! its waiting ranks are refused, when a rank aborts, a rank registers twice
//! (Ballista re-ran it alone: it never re-enters a collective), ranks' CPU
//! kernels differ, or not all ranks started in time ("k of W ranks
//! started"). Every message is an authenticated frame ([`super::frame`]);
//! a refused one is logged and counted, and changes nothing.

use super::frame::{json, parse, FrameError, Framed, Secret};
use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const REQUEST: u8 = 1;
const REPLY: u8 = 2;

/// A registered rank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankInfo {
    pub rank: usize,
    /// Where its all-reduce listener is (`host:port`).
    pub endpoint: String,
    /// Its process: ranks of one process reduce in memory.
    pub process: String,
    /// The executor that runs it (the placement record).
    pub executor: String,
    /// The CPU kernel set its GEMM would pick ([`kernel_set`]).
    pub kernels: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    Register {
        job: String,
        generation: u64,
        info: RankInfo,
    },
    Abort {
        job: String,
        generation: u64,
        rank: usize,
        reason: String,
        deterministic: bool,
    },
    /// Answered as soon as the generation fails, or after [`WATCH_WAIT`] while it is healthy.
    Watch {
        job: String,
        generation: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Peers(Vec<RankInfo>),
    Refused(String),
    Ack,
    /// The watched generation failed, and why.
    Failed(String),
}

/// How long a `Watch` request waits for a failure before answering that there is none yet.
const WATCH_WAIT: Duration = Duration::from_secs(1);

/// Why a generation failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: String,
    /// A rerun would fail the same way (bad data, mismatched kernels).
    pub deterministic: bool,
    /// Ranks that had registered.
    pub started: usize,
    /// Not all ranks registered within the start timeout: the cluster may
    /// have fewer slots now, and a rerun with `started` ranks may fit.
    pub short_of_ranks: bool,
}

impl Failure {
    /// The world a rerun should use after this failure of a `world`-rank
    /// generation: the ranks that started, when too few did and at least one did.
    pub fn world_that_fits(&self, world: usize) -> usize {
        if self.short_of_ranks && (1..world).contains(&self.started) {
            self.started
        } else {
            world
        }
    }
}

struct Generation {
    world: usize,
    ranks: BTreeMap<usize, RankInfo>,
    failure: Option<Failure>,
}

#[derive(Default)]
struct State {
    generations: HashMap<u64, Generation>,
}

struct Shared {
    job: String,
    secret: Secret,
    state: Mutex<State>,
    changed: Condvar,
    refused: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, state: &mut State, generation: u64, reason: String, deterministic: bool) {
        self.fail_as(state, generation, reason, deterministic, false);
    }

    fn fail_as(&self, state: &mut State, generation: u64, reason: String, deterministic: bool, short_of_ranks: bool) {
        if let Some(g) = state.generations.get_mut(&generation) {
            // A deterministic cause (a bad row) outranks its echoes (peers that saw the rank go).
            if g.failure.as_ref().is_none_or(|f| deterministic && !f.deterministic) {
                log::warn!("rendezvous: generation {generation} failed: {reason}");
                g.failure = Some(Failure { reason, deterministic, started: g.ranks.len(), short_of_ranks });
                self.changed.notify_all();
            }
        }
    }
}

/// The rendezvous service of one job (see the module docs). Stops when dropped.
pub struct Rendezvous {
    address: String,
    shared: Arc<Shared>,
}

/// What became of a generation so far.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Waiting { started: usize },
    Started(Vec<RankInfo>),
    Failed(Failure),
}

impl Rendezvous {
    /// Listens on `host` (a free port) for the ranks of job `job`.
    pub fn start(host: &str, job: String, secret: Secret) -> Result<Rendezvous> {
        let listener = TcpListener::bind((host, 0))
            .map_err(|e| EngineError::Invalid(format!("rendezvous: cannot listen on {host}: {e}")))?;
        let port = listener.local_addr().map_err(|e| EngineError::Invalid(e.to_string()))?.port();
        listener.set_nonblocking(true).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let shared = Arc::new(Shared {
            job,
            secret,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            refused: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("kallista-rendezvous".into())
            .spawn(move || accept_loop(listener, accepting))
            .map_err(|e| EngineError::Invalid(format!("rendezvous thread: {e}")))?;
        Ok(Rendezvous { address: format!("{host}:{port}"), shared })
    }

    /// `host:port`, for the segment's spec.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The id of the job it serves.
    pub fn job(&self) -> &str {
        &self.shared.job
    }

    /// Opens `generation` for `world` ranks.
    pub fn open(&self, generation: u64, world: usize) {
        let mut state = self.shared.lock();
        state.generations.insert(generation, Generation { world, ranks: BTreeMap::new(), failure: None });
    }

    pub fn status(&self, generation: u64) -> Status {
        let state = self.shared.lock();
        match state.generations.get(&generation) {
            None => Status::Waiting { started: 0 },
            Some(g) => match (&g.failure, g.ranks.len() == g.world) {
                (Some(f), _) => Status::Failed(f.clone()),
                (None, true) => Status::Started(g.ranks.values().cloned().collect()),
                (None, false) => Status::Waiting { started: g.ranks.len() },
            },
        }
    }

    /// Fails `generation` (its waiting ranks are refused).
    pub fn fail(&self, generation: u64, reason: String) {
        let mut state = self.shared.lock();
        self.shared.fail(&mut state, generation, reason, false);
    }

    /// Waits until `generation` fails, failing it when not all its ranks
    /// registered within `start_timeout`; never returns while it is healthy.
    pub async fn failure(&self, generation: u64, start_timeout: Duration) -> Failure {
        let opened = Instant::now();
        loop {
            match self.status(generation) {
                Status::Failed(f) => return f,
                Status::Waiting { started } if opened.elapsed() >= start_timeout => {
                    let mut state = self.shared.lock();
                    let world = state.generations.get(&generation).map_or(0, |g| g.world);
                    let reason = format!("{started} of {world} ranks started within {}s", start_timeout.as_secs());
                    self.shared.fail_as(&mut state, generation, reason, false, true);
                }
                // Running: a failure is reported by a rank, and seen a little later.
                Status::Started(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages refused so far (not authenticated, tampered, or for another job).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

/// How often an idle accept loop looks whether the rendezvous closed (it
/// stops that much after being dropped; it refuses every request from the
/// moment it is). A connection wakes it at once: it waits on the socket,
/// where a 10 ms sleep woke the driver 100 times a second and preempted a
/// training rank on a small host.
const CLOSED_CHECK: Duration = Duration::from_millis(250);

/// Waits until `listener` has a connection to accept, at most `limit`.
fn wait_readable(listener: &TcpListener, limit: Duration) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut fd, 1, limit.as_millis() as libc::c_int) } < 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.closed.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("kallista-rendezvous-conn".into())
                    .spawn(move || serve(stream, peer.to_string(), &shared));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener, CLOSED_CHECK),
            Err(e) => {
                log::warn!("rendezvous: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers one connection's request.
fn serve(stream: TcpStream, peer: String, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut framed = Framed::new(stream, shared.secret.clone());
    let request = match framed.receive().and_then(|(kind, body)| match kind {
        REQUEST => parse::<Request>(&body),
        other => Err(FrameError::Refused(format!("unexpected message kind {other}"))),
    }) {
        Ok(r) => r,
        Err(FrameError::Refused(why)) => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            log::warn!("rendezvous: refused a message from {peer}: {why}");
            return;
        }
        Err(FrameError::Io(e)) => {
            log::warn!("rendezvous: connection from {peer} failed: {e}");
            return;
        }
    };
    let reply = answer(request, &peer, shared);
    let _ = framed.send(REPLY, &[&json(&reply)]);
}

fn answer(request: Request, peer: &str, shared: &Shared) -> Reply {
    let job = match &request {
        Request::Register { job, .. } | Request::Abort { job, .. } | Request::Watch { job, .. } => job,
    };
    if *job != shared.job {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        log::warn!("rendezvous: refused a message from {peer} for another job");
        return Reply::Refused("another job's message".into());
    }
    match request {
        Request::Abort { generation, rank, reason, deterministic, .. } => {
            let mut state = shared.lock();
            shared.fail(&mut state, generation, format!("rank {rank} aborted: {reason}"), deterministic);
            Reply::Ack
        }
        Request::Register { generation, info, .. } => register_rank(shared, generation, info),
        Request::Watch { generation, .. } => watch(shared, generation),
    }
}

/// Waits up to [`WATCH_WAIT`] for `generation` to fail.
fn watch(shared: &Shared, generation: u64) -> Reply {
    let deadline = Instant::now() + WATCH_WAIT;
    let mut state = shared.lock();
    loop {
        let Some(g) = state.generations.get(&generation) else {
            return Reply::Refused(format!("generation {generation} is not open"));
        };
        if let Some(f) = &g.failure {
            return Reply::Failed(f.reason.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || shared.closed.load(Ordering::Relaxed) {
            return Reply::Ack;
        }
        state = shared.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
    }
}

fn register_rank(shared: &Shared, generation: u64, info: RankInfo) -> Reply {
    let mut state = shared.lock();
    let Some(g) = state.generations.get_mut(&generation) else {
        return Reply::Refused(format!("generation {generation} is not open"));
    };
    if let Some(f) = &g.failure {
        return Reply::Refused(format!("generation {generation} failed: {}", f.reason));
    }
    let rank = info.rank;
    let problem = if rank >= g.world {
        Some((format!("rank {rank} registered in a generation of {} ranks", g.world), true))
    } else if g.ranks.contains_key(&rank) {
        Some((format!("rank {rank} registered twice (re-run alone: it never re-enters a collective)"), false))
    } else {
        g.ranks.values().find(|o| o.kernels != info.kernels).map(|o| {
            (
                format!(
                    "rank {rank} on {} has CPU kernels [{}], rank {} on {} has [{}]: their GEMM kernels would \
                     round differently and break bit-exactness; run the job on executors with the same CPU features",
                    info.executor, info.kernels, o.rank, o.executor, o.kernels
                ),
                true,
            )
        })
    };
    if let Some((reason, deterministic)) = problem {
        shared.fail(&mut state, generation, reason.clone(), deterministic);
        return Reply::Refused(reason);
    }
    g.ranks.insert(rank, info);
    shared.changed.notify_all();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let Some(g) = state.generations.get(&generation) else { return Reply::Refused("generation closed".into()) };
        if let Some(f) = &g.failure {
            return Reply::Refused(format!("generation {generation} failed: {}", f.reason));
        }
        if g.ranks.len() == g.world {
            return Reply::Peers(g.ranks.values().cloned().collect());
        }
        if shared.closed.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Reply::Refused("the rendezvous closed".into());
        }
        state = shared.changed.wait_timeout(state, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// One request and its reply.
pub(super) fn request(address: &str, secret: &Secret, request: &Request, timeout: Duration) -> Result<Reply> {
    let failed = |e: String| EngineError::Collective(format!("rendezvous at {address}: {e}"));
    let stream = TcpStream::connect(address).map_err(|e| failed(e.to_string()))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, secret.clone());
    framed.send(REQUEST, &[&json(request)]).map_err(|e| failed(e.to_string()))?;
    let (kind, body) = framed.receive().map_err(|e| failed(e.to_string()))?;
    if kind != REPLY {
        return Err(failed(format!("unexpected reply kind {kind}")));
    }
    parse(&body).map_err(|e| failed(e.to_string()))
}

/// Registers a rank; returns the peer table, every rank in rank order.
pub fn register(
    address: &str,
    secret: &Secret,
    job: &str,
    generation: u64,
    info: RankInfo,
    timeout: Duration,
) -> Result<Vec<RankInfo>> {
    let rank = info.rank;
    match request(address, secret, &Request::Register { job: job.into(), generation, info }, timeout)? {
        Reply::Peers(p) => Ok(p),
        Reply::Refused(why) => Err(EngineError::Collective(format!("rank {rank} refused by the rendezvous: {why}"))),
        Reply::Ack | Reply::Failed(_) => Err(EngineError::Collective("rendezvous: unexpected answer".into())),
    }
}

/// Tells the driver that a rank failed, so that it restarts the segment at
/// once instead of waiting for Ballista. Best effort: the task's own failure follows.
pub fn abort(address: &str, secret: &Secret, job: &str, generation: u64, rank: usize, error: &EngineError) {
    let req = Request::Abort {
        job: job.into(),
        generation,
        rank,
        reason: error.to_string(),
        deterministic: error.is_deterministic(),
    };
    if let Err(e) = request(address, secret, &req, Duration::from_secs(5)) {
        log::warn!("could not tell the driver that rank {rank} failed: {e}");
    }
}

/// The CPU kernels in use here (the GEMM path the CPU backend chose, and the
/// features of the elementwise kernels): ranks that differ would compute
/// different bits for the same rows.
pub fn kernel_set() -> String {
    let gemm = format!("gemm={}", kallista_ops::backend::gemm_kernels().name());
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = vec!["x86_64".to_string(), gemm];
        for (name, on) in [
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
        ] {
            if on {
                f.push(name.to_string());
            }
        }
        f.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("{} {gemm}", std::env::consts::ARCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(rank: usize, kernels: &str) -> RankInfo {
        RankInfo {
            rank,
            endpoint: format!("127.0.0.1:{}", 1000 + rank),
            process: format!("p{rank}"),
            executor: format!("e{rank}"),
            kernels: kernels.into(),
        }
    }

    #[test]
    fn ranks_get_the_table_and_forged_or_tampered_messages_change_nothing() {
        let (secret, _) = Secret::generate().unwrap();
        let r = Rendezvous::start("127.0.0.1", "job-1".into(), secret.clone()).unwrap();
        r.open(1, 2);
        let addr = r.address().to_string();
        // A forger without the secret asks to abort the generation: refused, logged, nothing changes.
        let forged = Secret::from_bytes(b"a guess");
        assert!(register(&addr, &forged, "job-1", 1, info(0, "k"), Duration::from_secs(5)).is_err());
        // A tampered frame: signed with the right secret, one byte changed on the way.
        let mut bytes = Framed::new(std::io::Cursor::new(vec![]), secret.clone());
        let abort =
            Request::Abort { job: "job-1".into(), generation: 1, rank: 0, reason: "x".into(), deterministic: false };
        bytes.send(REQUEST, &[&json(&abort)]).unwrap();
        let mut raw = bytes.stream.into_inner();
        raw[12] ^= 0x20;
        let mut s = TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut s, &raw).unwrap();
        let mut rest = vec![];
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        assert!(rest.is_empty(), "a tampered message gets no answer");
        assert_eq!(r.refused(), 2);
        assert_eq!(r.status(1), Status::Waiting { started: 0 });

        let (a, b) = (addr.clone(), secret.clone());
        let first = std::thread::spawn(move || register(&a, &b, "job-1", 1, info(1, "k"), Duration::from_secs(5)));
        let table = register(&addr, &secret, "job-1", 1, info(0, "k"), Duration::from_secs(5)).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), table);
        assert_eq!(table.iter().map(|i| i.rank).collect::<Vec<_>>(), vec![0, 1]);
        assert!(matches!(r.status(1), Status::Started(_)));
    }

    #[test]
    fn a_rank_registered_twice_or_with_other_kernels_fails_its_generation() {
        let (secret, _) = Secret::generate().unwrap();
        let r = Rendezvous::start("127.0.0.1", "j".into(), secret.clone()).unwrap();
        let addr = r.address().to_string();
        for (generation, second) in [(1, info(0, "k")), (2, info(1, "other"))] {
            r.open(generation, 3);
            let (a, s) = (addr.clone(), secret.clone());
            let waiting =
                std::thread::spawn(move || register(&a, &s, "j", generation, info(0, "k"), Duration::from_secs(5)));
            while r.status(generation) == (Status::Waiting { started: 0 }) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let e = register(&addr, &secret, "j", generation, second, Duration::from_secs(5)).unwrap_err().to_string();
            assert!(waiting.join().unwrap().is_err(), "the waiting rank is refused too");
            let Status::Failed(f) = r.status(generation) else { panic!("generation {generation} did not fail") };
            assert_eq!(f.deterministic, generation == 2, "{f:?}");
            assert_eq!(f.world_that_fits(3), 3, "every rank started: a rerun keeps the world");
            assert!(e.contains(if generation == 1 { "twice" } else { "CPU kernels" }), "{e}");
        }
    }

    #[tokio::test]
    async fn a_generation_whose_ranks_do_not_all_start_fails_with_how_many_did() {
        let (secret, _) = Secret::generate().unwrap();
        let r = Rendezvous::start("127.0.0.1", "j".into(), secret.clone()).unwrap();
        r.open(5, 2);
        let (a, s) = (r.address().to_string(), secret.clone());
        let lone = std::thread::spawn(move || register(&a, &s, "j", 5, info(0, "k"), Duration::from_secs(5)));
        let f = r.failure(5, Duration::from_millis(300)).await;
        assert_eq!(f.reason, "1 of 2 ranks started within 0s");
        assert_eq!(f.started, 1);
        assert_eq!(f.world_that_fits(2), 1, "a rerun fits the one rank that started");
        assert!(lone.join().unwrap().is_err());
    }
}
