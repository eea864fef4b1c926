//! The exact all-reduce between processes: a ring over TCP among one leader
//! rank per process (ranks of one process have already summed in memory,
//! [`super::group`]). Reduce-scatter then all-gather, each leader sending
//! `2 (L - 1) / L` of the vector per step in chunks; the values are i64
//! fixed-point sums, so the result has the same bits in any order and for
//! any number of processes. Every frame is authenticated, chunks sealed
//! ([`super::frame`]);
//! a connection that does not open with a signed hello from the expected
//! neighbour is refused and logged, and the real neighbour is still awaited.

use super::chunk;
use super::frame::{json, parse, FrameError, Framed, Secret};
use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HELLO: u8 = 10;
/// Values per frame (8 MB).
const CHUNK_VALUES: usize = 1 << 20;
/// A chunk's header: step (8), phase (1), ring step (4), offset (8), vector length (8).
const HEADER: usize = 29;

/// Collective connections refused in this process (not authenticated,
/// tampered, or not from the expected neighbour).
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Hello {
    job: String,
    generation: u64,
    from: usize,
    to: usize,
}

/// A rank's listener, bound before it registers: its endpoint goes in the peer table.
pub struct Listener {
    listener: TcpListener,
    pub endpoint: String,
}

impl Listener {
    /// Listens on `bind_host` (a free port); others reach it at `advertised_host`.
    pub fn bind(bind_host: &str, advertised_host: &str) -> Result<Listener> {
        let listener = TcpListener::bind((bind_host, 0))
            .map_err(|e| EngineError::Collective(format!("cannot listen on {bind_host}: {e}")))?;
        let port = listener.local_addr().map_err(|e| EngineError::Collective(e.to_string()))?.port();
        Ok(Listener { listener, endpoint: format!("{advertised_host}:{port}") })
    }
}

/// This leader's place in the ring of one generation.
pub struct Ring {
    next: Framed<TcpStream>,
    prev: Framed<TcpStream>,
    position: usize,
    size: usize,
    buffer: Vec<i64>,
    narrow: Vec<i32>,
    send_narrow: Vec<i32>,
    send_wide: Vec<i64>,
}

/// Who is who in a ring: the leaders' ranks and endpoints in ring order.
pub struct RingPeers<'a> {
    pub job: &'a str,
    pub generation: u64,
    pub leaders: &'a [(usize, String)],
    pub position: usize,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Collective(format!("{what}: {e}"))
}

/// Connects this leader to its neighbours; `None` when it is the only one.
pub fn connect(listener: Listener, peers: &RingPeers, secret: &Secret, timeout: Duration) -> Result<Option<Ring>> {
    let size = peers.leaders.len();
    if size < 2 {
        return Ok(None);
    }
    let p = peers.position;
    let (me, _) = &peers.leaders[p];
    let (next_rank, next_endpoint) = &peers.leaders[(p + 1) % size];
    let (prev_rank, _) = &peers.leaders[(p + size - 1) % size];
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match TcpStream::connect(next_endpoint) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(EngineError::Collective(format!(
                    "rank {me}: cannot reach rank {next_rank} at {next_endpoint}: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    configure(&stream, timeout)?;
    let mut next = Framed::new(stream, secret.clone());
    let hello = Hello { job: peers.job.into(), generation: peers.generation, from: *me, to: *next_rank };
    next.send(HELLO, &[&json(&hello)]).map_err(|e| EngineError::Collective(format!("rank {me}: hello: {e}")))?;
    let expected = Hello { job: peers.job.into(), generation: peers.generation, from: *prev_rank, to: *me };
    let prev = accept(&listener.listener, &expected, secret, deadline, timeout)?;
    Ok(Some(Ring {
        next,
        prev,
        position: p,
        size,
        buffer: vec![],
        narrow: vec![],
        send_narrow: vec![],
        send_wide: vec![],
    }))
}

fn configure(stream: &TcpStream, timeout: Duration) -> Result<()> {
    stream.set_nodelay(true).map_err(io("socket"))?;
    stream.set_read_timeout(Some(timeout)).map_err(io("socket"))?;
    stream.set_write_timeout(Some(timeout)).map_err(io("socket"))
}

/// Waits for the expected neighbour's signed hello, refusing (and logging) anyone else.
fn accept(
    listener: &TcpListener,
    expected: &Hello,
    secret: &Secret,
    deadline: Instant,
    timeout: Duration,
) -> Result<Framed<TcpStream>> {
    listener.set_nonblocking(true).map_err(io("listener"))?;
    loop {
        let (stream, addr) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(EngineError::Collective(format!(
                        "rank {}: rank {} did not connect within {}s",
                        expected.to,
                        expected.from,
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(io("accept")(e)),
        };
        stream.set_nonblocking(false).map_err(io("socket"))?;
        configure(&stream, Duration::from_secs(10).min(timeout))?;
        let mut framed = Framed::new(stream, secret.clone());
        let verdict = match framed.receive() {
            Ok((HELLO, body)) => match parse::<Hello>(&body) {
                Ok(h) if h == *expected => Ok(()),
                Ok(h) => Err(format!(
                    "a hello from rank {} of generation {}, expected rank {}",
                    h.from, h.generation, expected.from
                )),
                Err(e) => Err(e.to_string()),
            },
            Ok((kind, _)) => Err(format!("a message of kind {kind} before any hello")),
            Err(e) => Err(e.to_string()),
        };
        match verdict {
            Ok(()) => {
                configure(&framed.stream, timeout)?;
                return Ok(framed);
            }
            Err(why) => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                log::warn!("rank {}: refused a collective connection from {addr}: {why}", expected.to);
            }
        }
    }
}

fn bounds(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    n * i / parts..n * (i + 1) / parts
}

/// `data[send]` to read and `data[recv]` to write, two disjoint ranges.
fn split(data: &mut [i64], send: std::ops::Range<usize>, recv: std::ops::Range<usize>) -> (&[i64], &mut [i64]) {
    if send.start < recv.start {
        let (lo, hi) = data.split_at_mut(recv.start);
        (&lo[send], &mut hi[..recv.len()])
    } else {
        let (lo, hi) = data.split_at_mut(send.start);
        (&hi[..send.len()], &mut lo[recv])
    }
}

fn header(step: u64, phase: u8, t: u32, offset: u64, n: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&step.to_le_bytes());
    h[8] = phase;
    h[9..13].copy_from_slice(&t.to_le_bytes());
    h[13..21].copy_from_slice(&offset.to_le_bytes());
    h[21..29].copy_from_slice(&n.to_le_bytes());
    h
}

impl Ring {
    /// Leaders in the ring.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Replaces `data` by its sum over the ring; returns the bytes this leader sent.
    pub fn all_reduce(&mut self, step: u64, data: &mut [i64]) -> Result<u64> {
        let (l, p, n) = (self.size, self.position, data.len());
        let mut sent = 0u64;
        for phase in 0..2u8 {
            for t in 0..l - 1 {
                // Reduce-scatter sends what it has summed so far; all-gather sends finished parts.
                let (send, recv) = match phase {
                    0 => ((p + l - t) % l, (p + l - t - 1) % l),
                    _ => ((p + 1 + l - t) % l, (p + l - t) % l),
                };
                let (out, into) = split(data, bounds(n, l, send), bounds(n, l, recv));
                let (send_offset, recv_offset) = (bounds(n, l, send).start, bounds(n, l, recv).start);
                let (next, prev) = (&mut self.next, &mut self.prev);
                let send_buffers = (&mut self.send_narrow, &mut self.send_wide);
                let buffers = (&mut self.buffer, &mut self.narrow);
                let result = std::thread::scope(|s| {
                    let sender =
                        s.spawn(move || send_part(next, step, phase, t as u32, send_offset, n, out, send_buffers));
                    let received = receive_part(prev, step, phase, t as u32, recv_offset, n, into, buffers);
                    let sent = sender.join().unwrap_or_else(|_| Err(EngineError::Collective("sender panicked".into())));
                    received.and(sent)
                });
                sent += result?;
            }
        }
        Ok(sent)
    }
}

#[allow(clippy::too_many_arguments)]
fn send_part(
    to: &mut Framed<TcpStream>,
    step: u64,
    phase: u8,
    t: u32,
    offset: usize,
    n: usize,
    values: &[i64],
    (narrow, wide): (&mut Vec<i32>, &mut Vec<i64>),
) -> Result<u64> {
    let mut sent = 0;
    for (i, chunk) in values.chunks(CHUNK_VALUES).enumerate() {
        let h = header(step, phase, t, (offset + i * CHUNK_VALUES) as u64, n as u64);
        // Sealing encrypts in place: the values go through a buffer of the sender's.
        let kind = chunk::encode(chunk, narrow, wide);
        let payload: &mut [u8] = match kind {
            chunk::WIDE => bytemuck::cast_slice_mut(wide.as_mut_slice()),
            _ => bytemuck::cast_slice_mut(narrow.as_mut_slice()),
        };
        sent += (HEADER + payload.len()) as u64;
        to.send_sealed(kind, &h, payload)
            .map_err(|e| EngineError::Collective(format!("sending to the next rank: {e}")))?;
    }
    Ok(sent)
}

#[allow(clippy::too_many_arguments)]
fn receive_part(
    from: &mut Framed<TcpStream>,
    step: u64,
    phase: u8,
    t: u32,
    offset: usize,
    n: usize,
    into: &mut [i64],
    (wide, narrow): (&mut Vec<i64>, &mut Vec<i32>),
) -> Result<()> {
    let mut done = 0;
    while done < into.len() {
        let mut h = [0u8; HEADER];
        let kind = from.receive_values(chunk::WIDE, &[chunk::NARROW, chunk::SPARSE], &mut h, wide, narrow).map_err(
            |e| match e {
                FrameError::Refused(why) => {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    log::warn!("refused a collective message from the previous rank: {why}");
                    EngineError::Collective(format!("a collective message was refused: {why}"))
                }
                FrameError::Io(e) => EngineError::Collective(format!("the previous rank is gone: {e}")),
            },
        )?;
        let got = chunk::covers(kind, narrow, wide, (into.len() - done).min(CHUNK_VALUES));
        let expected = header(step, phase, t, (offset + done) as u64, n as u64);
        if h != expected || done + got > into.len() {
            return Err(EngineError::Collective(format!(
                "a chunk out of order (step {step}, phase {phase}, ring step {t}, offset {})",
                offset + done
            )));
        }
        // Reduce-scatter adds what arrives; all-gather sets finished parts.
        chunk::apply(kind, phase == 0, &mut into[done..done + got], narrow, wide)?;
        done += got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a ring of `parts.len()` leaders on threads; returns each one's result.
    fn ring_sum(parts: Vec<Vec<i64>>, secret: &Secret, before: impl FnOnce(&[String])) -> Vec<Result<Vec<i64>>> {
        let listeners: Vec<Listener> =
            parts.iter().map(|_| Listener::bind("127.0.0.1", "127.0.0.1").unwrap()).collect();
        let leaders: Vec<(usize, String)> =
            listeners.iter().enumerate().map(|(r, l)| (r * 2, l.endpoint.clone())).collect();
        before(&leaders.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
        std::thread::scope(|s| {
            let handles: Vec<_> = listeners
                .into_iter()
                .zip(parts)
                .enumerate()
                .map(|(p, (listener, mut data))| {
                    let leaders = &leaders;
                    s.spawn(move || {
                        let peers = RingPeers { job: "j", generation: 3, leaders, position: p };
                        let mut ring = connect(listener, &peers, secret, Duration::from_secs(5))?;
                        if let Some(r) = ring.as_mut() {
                            r.all_reduce(9, &mut data)?;
                        }
                        Ok(data)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_leader_ends_with_the_exact_sum() {
        let (secret, _) = Secret::generate().unwrap();
        for leaders in 1..=4 {
            // Longer than a chunk, and not divisible by the leader count.
            let n = CHUNK_VALUES + 7;
            // The first half mostly zero (sparse chunks, each leader's rows
            // elsewhere), small values as i32, the last chunk's, past i32, as i64.
            let value = |i: usize, k: usize| {
                let v = (i as i64 * 31 + k as i64 * 1_000_003) % 977 - 400;
                match i {
                    i if i < n / 2 => v * ((i % 4099) == k * 7) as i64,
                    i if i >= CHUNK_VALUES => v << 40,
                    _ => v,
                }
            };
            let parts: Vec<Vec<i64>> = (0..leaders).map(|k| (0..n).map(|i| value(i, k)).collect()).collect();
            let want: Vec<i64> = (0..n).map(|i| parts.iter().map(|p| p[i]).sum()).collect();
            for got in ring_sum(parts, &secret, |_| {}) {
                assert!(got.unwrap() == want, "{leaders} leaders");
            }
        }
    }

    #[test]
    fn unauthenticated_and_tampered_connections_are_refused_and_the_sum_is_unchanged() {
        let (secret, _) = Secret::generate().unwrap();
        let parts = vec![vec![1i64, 2, 3], vec![10, 20, 30], vec![100, 200, 300]];
        let before = REFUSED.load(Ordering::Relaxed);
        let results = ring_sum(parts, &secret, |endpoints| {
            // A stranger without the secret, then a hello signed right but changed on the way,
            // reach rank 0's listener before its real neighbour does.
            let mut stranger = Framed::new(TcpStream::connect(&endpoints[0]).unwrap(), Secret::from_bytes(b"guess"));
            let hello = Hello { job: "j".into(), generation: 3, from: 4, to: 0 };
            stranger.send(HELLO, &[&json(&hello)]).unwrap();
            let mut signed = Framed::new(std::io::Cursor::new(vec![]), secret.clone());
            signed.send(HELLO, &[&json(&hello)]).unwrap();
            let mut raw = signed.stream.into_inner();
            let at = raw.len() - 40;
            raw[at] ^= 1;
            std::io::Write::write_all(&mut TcpStream::connect(&endpoints[0]).unwrap(), &raw).unwrap();
            drop(stranger);
        });
        for r in results {
            assert_eq!(r.unwrap(), vec![111, 222, 333]);
        }
        assert!(REFUSED.load(Ordering::Relaxed) >= before + 2);
    }
}
