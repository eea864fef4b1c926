//! `kallista ps`: parameter-server shards in processes of their own, on
//! hosts of their own, so that the weights' traffic does not all go through
//! the driver's. A `kallista ps` process is a service, like an executor: it
//! listens on its port for drivers, each connection (authenticated with the
//! cluster's token, `--token-file`) hosting one shard of one job on a free
//! port of its own. The driver sends the shard's slices, their optimizer
//! state and the job's secret (sealed) and gets back the address workers
//! reach the shard at; it asks for counters and for the shard's state
//! between segments over the same connection. The shard closes (its port
//! with it) when the driver says so or its connection ends (Ctrl-C, a crash:
//! the driver's kernel closes the connection). A driver host that vanishes
//! without closing it (power lost, network cut) leaves its shard until the
//! `kallista ps` restarts: no keepalive or heartbeat yet.

use super::shard::{Shard, ShardRules, SliceState};
use super::slices::Slice;
use super::wire::{self, ShardStats};
use crate::collective::frame::{FrameError, Framed, Secret};
use crate::error::{EngineError, Result};
use kallista_ops::buf::Buf;
use kallista_ops::optim::Optimizer;
use serde::{Deserialize, Serialize};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

const ADMIN_REQUEST: u8 = 31;
const ADMIN_REPLY: u8 = 32;
/// The fewest bytes a token file may hold.
pub const MIN_TOKEN_BYTES: usize = 16;

/// A shard to host: the job, the rules, the slices (their values and
/// optimizer slots follow as sealed chunks, after the job's secret).
#[derive(Debug, Serialize, Deserialize)]
struct HostSpec {
    job: String,
    index: usize,
    rules: ShardRules,
    slices: Vec<SliceSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SliceSpec {
    weight: usize,
    key: String,
    start: usize,
    end: usize,
    iterations: u64,
    /// Optimizer slot vectors that follow its values (0 before the first step).
    slots: usize,
}

#[derive(Debug, Serialize, Deserialize)]
enum Admin {
    Host(HostSpec),
    Stats,
    /// The slices' state: [`AdminReply::Snapshot`], then values and slots as [`Admin::Host`] sends them.
    Snapshot,
    Close,
}

#[derive(Debug, Serialize, Deserialize)]
enum AdminReply {
    Hosted { address: String },
    Stats(ShardStats),
    Snapshot(Vec<SliceSpec>),
    Closed,
    Refused(String),
}

/// How a `kallista ps` process listens.
#[derive(Clone, Debug)]
pub struct PsOptions {
    pub bind_host: String,
    /// The name drivers and workers reach this host by (default: the bind host).
    pub external_host: Option<String>,
    pub port: u16,
    /// The cluster's token: drivers must hold it.
    pub token: Vec<u8>,
}

/// Reads a token file (at least [`MIN_TOKEN_BYTES`] bytes).
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| EngineError::Invalid(format!("parameter server token file {}: {e}", path.display())))?;
    if bytes.len() < MIN_TOKEN_BYTES {
        return Err(EngineError::Invalid(format!(
            "parameter server token file {}: {} bytes; at least {MIN_TOKEN_BYTES} random bytes are needed \
             (head -c 32 /dev/urandom > FILE)",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Runs `kallista ps` until the process is stopped.
pub fn serve(opts: &PsOptions) -> Result<()> {
    let listener = TcpListener::bind((opts.bind_host.as_str(), opts.port)).map_err(|e| {
        EngineError::Invalid(format!("kallista ps: cannot listen on {}:{}: {e}", opts.bind_host, opts.port))
    })?;
    let token = Secret::from_bytes(&opts.token);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (opts, token) = (opts.clone(), token.clone());
        std::thread::Builder::new()
            .name("kallista-ps-driver".into())
            .spawn(move || serve_driver(stream, &opts, token))
            .map_err(|e| EngineError::Invalid(format!("kallista ps: thread: {e}")))?;
    }
    Ok(())
}

/// One driver's connection: hosts its shard until it closes.
fn serve_driver(stream: TcpStream, opts: &PsOptions, token: Secret) {
    let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, token);
    let mut shard: Option<Shard> = None;
    loop {
        let outcome = match wire::receive_json::<_, Admin>(&mut framed, ADMIN_REQUEST) {
            Ok(request) => answer(&mut framed, request, &mut shard, opts),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => continue,
            Ok(false) => {
                log::info!("kallista ps: the driver at {peer} closed its shard");
                return;
            }
            Err(FrameError::Refused(why)) => {
                log::warn!("kallista ps: refused a message from {peer}: {why}");
                return;
            }
            Err(FrameError::Io(e)) => {
                if let Some(s) = &shard {
                    log::warn!("kallista ps: the driver at {peer} is gone ({e}): shard at {} closed", s.address());
                }
                return;
            }
        }
    }
}

/// Answers one request; `false` once the shard is closed.
fn answer(
    framed: &mut Framed<TcpStream>,
    request: Admin,
    shard: &mut Option<Shard>,
    opts: &PsOptions,
) -> std::result::Result<bool, FrameError> {
    let no_shard = || FrameError::Refused("no shard hosted on this connection".into());
    match request {
        Admin::Host(spec) => {
            if shard.is_some() {
                return Err(FrameError::Refused("a second shard on one connection".into()));
            }
            let mut secret = vec![0f32; 8];
            wire::receive_values(framed, &mut [&mut secret])?;
            let secret: Vec<u8> = secret.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
            let secret = Secret::from_bytes(&secret);
            let states = receive_states(framed, &spec.rules, &spec.slices)?;
            let external = opts.external_host.as_deref().unwrap_or(&opts.bind_host);
            let started =
                Shard::start(&opts.bind_host, external, spec.index, spec.job.clone(), secret, spec.rules, states);
            let reply = match started {
                Ok(s) => {
                    log::info!("kallista ps: shard {} of job {} at {}", spec.index, spec.job, s.address());
                    let address = s.address().to_string();
                    *shard = Some(s);
                    AdminReply::Hosted { address }
                }
                Err(e) => AdminReply::Refused(e.to_string()),
            };
            wire::send_json(framed, ADMIN_REPLY, &reply)?;
            Ok(true)
        }
        Admin::Stats => {
            let stats = shard.as_ref().ok_or_else(no_shard)?.stats();
            wire::send_json(framed, ADMIN_REPLY, &AdminReply::Stats(stats))?;
            Ok(true)
        }
        Admin::Snapshot => {
            let s = shard.as_ref().ok_or_else(no_shard)?;
            s.with_slices(|states| {
                let specs: Vec<SliceSpec> = states.iter().map(|s| spec_of(s)).collect();
                wire::send_json(framed, ADMIN_REPLY, &AdminReply::Snapshot(specs))?;
                send_states(framed, states)
            })?;
            Ok(true)
        }
        Admin::Close => {
            *shard = None;
            wire::send_json(framed, ADMIN_REPLY, &AdminReply::Closed)?;
            Ok(false)
        }
    }
}

fn spec_of(s: &SliceState) -> SliceSpec {
    SliceSpec {
        weight: s.slice.weight,
        key: s.slice.key.clone(),
        start: s.slice.range.start,
        end: s.slice.range.end,
        iterations: s.optimizer.iterations,
        slots: s.optimizer.slots.get(&s.slice.key).map_or(0, Vec::len),
    }
}

/// Every slice's values, then every slice's slots, as sealed chunks.
fn send_states<S: std::io::Read + std::io::Write>(
    framed: &mut Framed<S>,
    states: &[&SliceState],
) -> std::result::Result<(), FrameError> {
    let values: Vec<&[f32]> = states.iter().map(|s| s.values.as_slice()).collect();
    wire::send_values(framed, &values)?;
    let slots: Vec<&[f32]> = states
        .iter()
        .flat_map(|s| s.optimizer.slots.get(&s.slice.key).into_iter().flatten().map(|s| s.as_slice()))
        .collect();
    wire::send_values(framed, &slots)
}

fn receive_states<S: std::io::Read + std::io::Write>(
    framed: &mut Framed<S>,
    rules: &ShardRules,
    specs: &[SliceSpec],
) -> std::result::Result<Vec<SliceState>, FrameError> {
    let too_big = specs.iter().any(|s| s.end < s.start || s.end - s.start > kallista_ops::layers::MAX_WEIGHT_ELEMENTS);
    if too_big || specs.iter().any(|s| s.slots > 8) {
        return Err(FrameError::Refused("a slice out of bounds".into()));
    }
    let mut values: Vec<Vec<f32>> = specs.iter().map(|s| vec![0f32; s.end - s.start]).collect();
    wire::receive_values(framed, &mut values.iter_mut().map(|v| v.as_mut_slice()).collect::<Vec<_>>())?;
    let mut slots: Vec<Vec<f32>> =
        specs.iter().flat_map(|s| (0..s.slots).map(move |_| vec![0f32; s.end - s.start])).collect();
    wire::receive_values(framed, &mut slots.iter_mut().map(|v| v.as_mut_slice()).collect::<Vec<_>>())?;
    let mut slots = slots.into_iter();
    Ok(specs
        .iter()
        .zip(values)
        .map(|(s, values)| {
            let mut optimizer = Optimizer::new(rules.optimizer.clone());
            optimizer.iterations = s.iterations;
            if s.slots > 0 {
                optimizer.slots.insert(s.key.clone(), slots.by_ref().take(s.slots).map(Buf::from).collect());
            }
            let slice = Slice { weight: s.weight, key: s.key.clone(), range: s.start..s.end };
            SliceState { slice, values, optimizer }
        })
        .collect())
}

/// The driver's handle on a shard hosted by a `kallista ps` process.
pub struct RemoteShard {
    /// Where workers reach the shard.
    address: String,
    /// The `kallista ps` process (`host:port`).
    host: String,
    /// `None` once a request failed: a reply that comes late (after a
    /// timeout) would otherwise be read as the answer to the next request.
    admin: Mutex<Option<Framed<TcpStream>>>,
    rules: ShardRules,
}

impl RemoteShard {
    /// Hosts shard `index` of job `job` (with `states` as its start) on the
    /// `kallista ps` at `host`, which must hold `token`.
    pub fn start(
        host: &str,
        token: &Secret,
        job: &str,
        index: usize,
        secret: &[u8],
        rules: ShardRules,
        states: &[&SliceState],
    ) -> Result<RemoteShard> {
        let failed = |e: &dyn std::fmt::Display| {
            EngineError::Training(format!("parameter server shard {index} on kallista ps at {host}: {e}"))
        };
        let stream = TcpStream::connect(host).map_err(|e| failed(&e))?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| failed(&e))?;
        let mut framed = Framed::new(stream, token.clone());
        let spec = HostSpec {
            job: job.to_string(),
            index,
            rules: rules.clone(),
            slices: states.iter().map(|s| spec_of(s)).collect(),
        };
        let sent = (|| {
            wire::send_json(&mut framed, ADMIN_REQUEST, &Admin::Host(spec))?;
            let secret: Vec<f32> =
                secret.chunks(4).map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
            wire::send_values(&mut framed, &[&secret])?;
            send_states(&mut framed, states)?;
            wire::receive_json::<_, AdminReply>(&mut framed, ADMIN_REPLY)
        })();
        match sent {
            Ok(AdminReply::Hosted { address }) => {
                Ok(RemoteShard { address, host: host.to_string(), admin: Mutex::new(Some(framed)), rules })
            }
            Ok(other) => Err(failed(&format!("{other:?}"))),
            // A driver without the token sees its connection closed.
            Err(e) => Err(failed(&format!("{e} (does this driver hold the cluster's token?)"))),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `request` and reads its reply; the connection is given up on
    /// the first failure, so every later request fails too, saying why.
    fn request(&self, request: &Admin) -> Result<(AdminReply, AdminConnection<'_>)> {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(framed) = admin.as_mut() else {
            return Err(EngineError::Training(format!(
                "kallista ps at {}: its admin connection was given up after an earlier failure",
                self.host
            )));
        };
        let sent = wire::send_json(framed, ADMIN_REQUEST, request)
            .and_then(|()| wire::receive_json::<_, AdminReply>(framed, ADMIN_REPLY));
        match sent {
            Ok(reply) => Ok((reply, AdminConnection(admin))),
            Err(e) => {
                *admin = None;
                Err(EngineError::Training(format!("kallista ps at {}: {e}", self.host)))
            }
        }
    }

    pub fn stats(&self) -> Result<ShardStats> {
        match self.request(&Admin::Stats)?.0 {
            AdminReply::Stats(s) => Ok(s),
            other => Err(EngineError::Training(format!("kallista ps at {}: {other:?}", self.host))),
        }
    }

    /// The shard's slices, their values and optimizer state.
    pub fn snapshot(&self) -> Result<Vec<SliceState>> {
        let (reply, mut admin) = self.request(&Admin::Snapshot)?;
        let AdminReply::Snapshot(specs) = reply else {
            return Err(EngineError::Training(format!("kallista ps at {}: {reply:?}", self.host)));
        };
        let framed = admin.0.as_mut().expect("a request that succeeded keeps its connection");
        receive_states(framed, &self.rules, &specs).map_err(|e| {
            *admin.0 = None;
            EngineError::Training(format!("kallista ps at {}: {e}", self.host))
        })
    }
}

/// The admin connection, held after a request for the rest of its reply.
struct AdminConnection<'a>(std::sync::MutexGuard<'a, Option<Framed<TcpStream>>>);

impl Drop for RemoteShard {
    fn drop(&mut self) {
        if let Err(e) = self.request(&Admin::Close) {
            log::warn!("could not close the parameter server shard at {}: {e}", self.address);
        }
    }
}
