//! A worker's side of the parameter servers: one authenticated connection
//! per shard; pulls write the shards' values into the worker's model in
//! place; a push sends each shard its slices of a gradient and takes the
//! values the shard answers with (push and pull in one round trip), to all
//! shards at once. An unreachable shard is an error naming its address.
//! A shard in the worker's own process is called directly ([`super::local`]);
//! with one of the worker's host, the values go through a region of shared
//! memory the worker offers (`crate::collective::shm`), the connection
//! carrying only the signed requests and replies.

use super::local::{self, LocalShard};
use super::slices::{plan, Slice};
use super::wire::{self, Push, Reply, Request, ShardStats, SparseRows, REPLY, REQUEST};
use crate::collective::frame::{FrameError, Framed, Secret};
use crate::collective::shm::Region;
use crate::error::{EngineError, Result};
use kallista_ops::model::{Model, WeightGrads};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One shard's connection.
struct Link {
    index: usize,
    address: String,
    transport: Transport,
    slices: Vec<Slice>,
    /// The shard's version of the values this worker holds.
    version: u64,
    /// This worker's run, as the shard answered its pull.
    run: u64,
}

/// How a worker reaches one shard.
enum Transport {
    /// Values sealed on the connection, or in the region when there is one.
    Connection(Box<Framed<TcpStream>>, Option<Region>),
    /// The shard runs in this process.
    Local(LocalShard),
}

/// The ways a worker may reach a shard besides sealed values on a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reach {
    /// Call a shard of this process directly.
    pub direct: bool,
    /// Pass values through shared memory with a shard of this host.
    pub shared_memory: bool,
}

impl Reach {
    /// Direct calls unless `KALLISTA_PS_DIRECT=0` (to try the network path
    /// on the embedded cluster); shared memory as the job says.
    pub fn from_env(shared_memory: bool) -> Reach {
        Reach { direct: std::env::var("KALLISTA_PS_DIRECT").as_deref() != Ok("0"), shared_memory }
    }
}

fn unreachable_shard(index: usize, address: &str, e: impl std::fmt::Display) -> EngineError {
    // A worker that cannot push must fail its job, never "finish" with untrained weights.
    EngineError::Training(format!("parameter server shard {index} at {address}: {e}"))
}

/// What one push did, over all shards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushOutcome {
    /// Shards that applied the gradient (the others dropped it as too stale).
    pub accepted: usize,
    pub staleness_sum: u64,
}

/// A worker's connections to every shard of a job.
pub struct ParameterClient {
    job: String,
    worker: usize,
    links: Vec<Link>,
}

/// Connects, retrying for up to `timeout` (a shard that just started).
fn connect(index: usize, address: &str, timeout: Duration) -> Result<TcpStream> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(address) {
            Ok(s) => return Ok(s),
            Err(e) if started.elapsed() >= timeout => {
                return Err(unreachable_shard(
                    index,
                    address,
                    format!("cannot connect within {}s: {e}", timeout.as_secs_f64().round()),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl ParameterClient {
    /// Connects worker `worker` to the shards at `addresses` (in shard order),
    /// reaching them as [`Reach::from_env`] says with shared memory allowed.
    pub fn connect(
        addresses: &[String],
        model: &Model,
        secret: &Secret,
        job: &str,
        worker: usize,
        timeout: Duration,
    ) -> Result<ParameterClient> {
        Self::connect_via(addresses, model, secret, job, worker, timeout, Reach::from_env(true))
    }

    /// [`Self::connect`], reaching the shards as `reach` allows.
    pub fn connect_via(
        addresses: &[String],
        model: &Model,
        secret: &Secret,
        job: &str,
        worker: usize,
        timeout: Duration,
        reach: Reach,
    ) -> Result<ParameterClient> {
        let plans = plan(model, addresses.len());
        let mut links = vec![];
        for (index, (address, slices)) in addresses.iter().zip(plans).enumerate() {
            if let Some(shard) = local::find(address, job, secret).filter(|_| reach.direct) {
                let transport = Transport::Local(shard);
                links.push(Link { index, address: address.clone(), transport, slices, version: 0, run: 0 });
                continue;
            }
            // Well within the segment's timeout: the error must be this one, not a timed-out segment.
            let stream = connect(index, address, timeout.min(Duration::from_secs(20)) / 2)?;
            stream.set_read_timeout(Some(timeout)).map_err(|e| unreachable_shard(index, address, e))?;
            let _ = stream.set_nodelay(true);
            let mut framed = Box::new(Framed::new(stream, secret.clone()));
            let region = match reach.shared_memory {
                true => share_memory(&mut framed, job, &slices).map_err(|e| unreachable_shard(index, address, e))?,
                false => None,
            };
            let transport = Transport::Connection(framed, region);
            links.push(Link { index, address: address.clone(), transport, slices, version: 0, run: 0 });
        }
        Ok(ParameterClient { job: job.to_string(), worker, links })
    }

    /// How many shards this worker calls directly (they run in its process).
    pub fn direct_shards(&self) -> usize {
        self.links.iter().filter(|l| matches!(l.transport, Transport::Local(_))).count()
    }

    /// How many shards this worker passes values to through shared memory.
    pub fn shared_memory_shards(&self) -> usize {
        self.links.iter().filter(|l| matches!(l.transport, Transport::Connection(_, Some(_)))).count()
    }

    /// Writes every shard's values into `model`, starting this worker's run
    /// in `segment` ([`Reply::Weights`]); returns the steps of `segment`
    /// this worker already pushed (by shard 0's count).
    pub fn pull(&mut self, model: &mut Model, segment: u64) -> Result<u64> {
        self.pull_as(model, segment, false)
    }

    /// Writes every shard's newer values into `model` within this worker's
    /// run (a shard of this process whose version did not move is skipped):
    /// for a worker that waited for its turn on the host's cores while
    /// others pushed, its next gradient is then computed on weights about
    /// as old as a worker's that did not wait.
    pub fn pull_again(&mut self, model: &mut Model, segment: u64) -> Result<()> {
        self.pull_as(model, segment, true).map(|_| ())
    }

    fn pull_as(&mut self, model: &mut Model, segment: u64, again: bool) -> Result<u64> {
        let (job, worker) = (self.job.clone(), self.worker);
        let results = self.each_link(model, |link, parts| {
            let (index, address) = (link.index, link.address.clone());
            let failed = |e: &dyn std::fmt::Display| unreachable_shard(index, &address, e);
            let (framed, region) = match &mut link.transport {
                Transport::Local(shard) if again => {
                    link.version = shard.pull_again(worker, segment, link.version, parts).map_err(|e| failed(&e))?;
                    return Ok(0);
                }
                Transport::Local(shard) => {
                    let (version, done_steps, run) = shard.pull(worker, segment, parts).map_err(|e| failed(&e))?;
                    (link.version, link.run) = (version, run);
                    return Ok(done_steps);
                }
                Transport::Connection(framed, region) => (framed, region),
            };
            // Within a run the worker holds `link.version`'s values: a shard still at it sends none.
            let have = again.then_some(link.version);
            let request = match region {
                Some(_) => Request::PullShared { job: job.clone(), worker, segment, again, have },
                None => Request::Pull { job: job.clone(), worker, segment, again, have },
            };
            let answer = wire::send_json(framed, REQUEST, &request).and_then(|()| wire::receive_json(framed, REPLY));
            match answer.map_err(|e| failed(&e))? {
                Reply::Weights { version, done_steps, run } => {
                    answered_values(framed, region.as_ref(), parts).map_err(|e| failed(&e))?;
                    link.version = version;
                    if !again {
                        link.run = run;
                    }
                    Ok(done_steps)
                }
                Reply::Unchanged { version } if again && version == link.version => Ok(0),
                other => Err(failed(&format!("unexpected answer {other:?}"))),
            }
        })?;
        Ok(results.first().copied().unwrap_or(0))
    }

    /// Pushes `grads` (every weight's, by index) to every shard, each with
    /// the version it was computed on, and takes the values they answer with.
    pub fn push(&mut self, model: &mut Model, grads: &WeightGrads, push: &Push) -> Result<PushOutcome> {
        let results = self.each_link(model, |link, parts| {
            let (index, address) = (link.index, link.address.clone());
            let failed = |e: &dyn std::fmt::Display| unreachable_shard(index, &address, e);
            let mut mine = push.clone();
            (mine.base_version, mine.run) = (link.version, link.run);
            let mut sent: Vec<&[f32]> = vec![];
            for s in &link.slices {
                let g = grads.values.get(s.weight).and_then(|g| g.as_deref()).filter(|g| g.len() >= s.range.end);
                let g = g.ok_or_else(|| {
                    EngineError::Training(format!("'{}': no gradient of the expected size to push", s.key))
                })?;
                sent.push(&g[s.range.clone()]);
            }
            let (framed, region) = match &mut link.transport {
                Transport::Local(shard) => {
                    let (accepted, staleness, version) = shard.push(&mine, &sent, parts).map_err(|e| failed(&e))?;
                    link.version = version;
                    return Ok((accepted, staleness));
                }
                Transport::Connection(framed, region) => (framed, region),
            };
            let sending = match region {
                Some(region) => {
                    let (sparse, froms) = sparse_rows(grads, &link.slices);
                    match wire::write_shared(region, &sent, &sparse, &froms) {
                        true if sparse.is_empty() => wire::send_json(framed, REQUEST, &Request::PushShared(mine)),
                        true => wire::send_json(framed, REQUEST, &Request::PushSharedRows(Push { sparse, ..mine })),
                        false => Err(FrameError::Refused("the gradient does not fit the shared region".into())),
                    }
                }
                None => wire::send_json(framed, REQUEST, &Request::Push(mine))
                    .and_then(|()| wire::send_values(framed, &sent)),
            };
            let answer = sending.and_then(|()| wire::receive_json(framed, REPLY));
            match answer.map_err(|e| failed(&e))? {
                Reply::Pushed { accepted, staleness, version } => {
                    answered_values(framed, region.as_ref(), parts).map_err(|e| failed(&e))?;
                    link.version = version;
                    Ok((accepted, staleness))
                }
                Reply::Refused(why) => Err(failed(&format!("refused: {why}"))),
                other => Err(failed(&format!("unexpected answer {other:?}"))),
            }
        })?;
        let mut out = PushOutcome::default();
        for (accepted, staleness) in results {
            out.accepted += usize::from(accepted);
            out.staleness_sum += staleness;
        }
        Ok(out)
    }

    /// Runs `f` for every shard at once, each with the parts of `model`'s
    /// weights its slices cover (disjoint: the slices of the shards, in
    /// shard order, tile the weights in order).
    fn each_link<T: Send>(
        &mut self,
        model: &mut Model,
        f: impl Fn(&mut Link, &mut [&mut [f32]]) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let mut weights: Vec<Option<&mut [f32]>> = model.weight_values_mut().into_iter().map(Some).collect();
        // Cut each weight front to back: shard 0's slice first, then shard 1's, ...
        let mut consumed: Vec<usize> = vec![0; weights.len()];
        let mut per_link: Vec<Vec<&mut [f32]>> = vec![];
        for link in &self.links {
            let mut parts = vec![];
            for s in &link.slices {
                let w = weights.get_mut(s.weight).and_then(Option::take);
                let w = w.filter(|w| s.range.start == consumed[s.weight] && w.len() >= s.range.len());
                let w =
                    w.ok_or_else(|| EngineError::Invalid(format!("'{}': the model does not match its shards", s.key)))?;
                let (part, rest) = w.split_at_mut(s.range.len());
                consumed[s.weight] = s.range.end;
                weights[s.weight] = Some(rest);
                parts.push(part);
            }
            per_link.push(parts);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .links
                .iter_mut()
                .zip(per_link.iter_mut())
                .map(|(link, parts)| {
                    let f = &f;
                    scope.spawn(move || f(link, parts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Training("a shard connection panicked".into()))))
                .collect()
        })
    }
}

/// The rows of each of `slices`' gradients that may be non-zero, where
/// `grads` knows them and they are under half of the slice (otherwise the
/// whole slice goes); each slice's first element in its weight.
fn sparse_rows(grads: &WeightGrads, slices: &[Slice]) -> (Vec<Option<SparseRows>>, Vec<usize>) {
    let rows_of = |s: &Slice| {
        let touched = grads.rows.get(s.weight)?.as_ref()?;
        let rows = SparseRows { width: touched.width, rows: touched.rows.clone() };
        let elements: usize = rows.spans(s.range.start, s.range.len()).iter().map(|r| r.len()).sum();
        (touched.width > 0 && elements * 2 < s.range.len()).then_some(rows)
    };
    let sparse: Vec<Option<SparseRows>> = slices.iter().map(rows_of).collect();
    let froms = slices.iter().map(|s| s.range.start).collect();
    match sparse.iter().any(Option::is_some) {
        true => (sparse, froms),
        false => (vec![], froms),
    }
}

/// The values of a shard's reply: in the shared region, or sealed on the connection.
fn answered_values(
    framed: &mut Framed<TcpStream>,
    region: Option<&Region>,
    parts: &mut [&mut [f32]],
) -> std::result::Result<(), FrameError> {
    match region {
        Some(region) => wire::read_shared(region, parts),
        None => wire::receive_values(framed, parts),
    }
}

/// Offers the shard a region of shared memory for `slices`' values; the
/// region if the shard opened it (same host and mount namespace), `None` if
/// not or if none could be made (the values then go sealed on the connection).
fn share_memory(
    framed: &mut Framed<TcpStream>,
    job: &str,
    slices: &[Slice],
) -> std::result::Result<Option<Region>, FrameError> {
    let bytes = slices.iter().map(|s| s.range.len()).sum::<usize>() * std::mem::size_of::<f32>();
    let (mut region, offer) = match Region::create(bytes) {
        Ok(made) => made,
        Err(e) => {
            log::info!("no shared memory for a parameter server ({e}): values go by TCP");
            return Ok(None);
        }
    };
    wire::send_json(framed, REQUEST, &Request::Share { job: job.to_string(), offer })?;
    let opened = match wire::receive_json(framed, REPLY)? {
        Reply::Shared(opened) => opened,
        other => return Err(FrameError::Refused(format!("unexpected answer {other:?} to a shared region"))),
    };
    region.forget_file();
    Ok(opened.then_some(region))
}

/// Asks the shard at `address` for its counters.
pub fn stats(address: &str, secret: &Secret, job: &str, timeout: Duration) -> Result<ShardStats> {
    let failed = |e: &dyn std::fmt::Display| EngineError::Collective(format!("parameter server at {address}: {e}"));
    let stream = TcpStream::connect(address).map_err(|e| failed(&e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    let mut framed = Framed::new(stream, secret.clone());
    wire::send_json(&mut framed, REQUEST, &Request::Stats { job: job.into() }).map_err(|e| failed(&e))?;
    match wire::receive_json(&mut framed, REPLY).map_err(|e: FrameError| failed(&e))? {
        Reply::Stats(s) => Ok(s),
        other => Err(failed(&format!("unexpected answer {other:?}"))),
    }
}
