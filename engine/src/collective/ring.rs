//! The exact all-reduce between processes: a ring over TCP among one leader
//! rank per process (ranks of one process have already summed in memory,
//! [`super::group`]). Reduce-scatter then all-gather, each leader sending
//! `2 (L - 1) / L` of the vector per step in chunks; the values are i64
//! fixed-point sums, so the result has the same bits in any order and for
//! any number of processes. [`Ring::exchange`] is one ring step of any such
//! collective (the sharded optimizer step's sums and weights use it too).
//! Every frame is authenticated, chunks sealed
//! ([`super::frame`]), or, between processes of one host, written to
//! shared slots and announced by signed doorbells ([`super::shm`]);
//! a connection that does not open with a signed hello from the expected
//! neighbour is refused and logged, and the real neighbour is still awaited.

use super::chunk;
use super::frame::{json, parse, FrameError, Framed, Secret};
use super::shm::{Offer, Slots, SLOTS, SLOT_BYTES};
use super::watch::GenerationWatch;
use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HELLO: u8 = 10;
/// Same-host chunks ([`super::shm`]): an offer of slots or none, the
/// neighbour's answer, a chunk's doorbell and its acknowledgement.
const SHM_OFFER: u8 = 15;
const SHM_NONE: u8 = 16;
const SHM_YES: u8 = 17;
const SHM_NO: u8 = 18;
const DOORBELL: u8 = 19;
const ACK: u8 = 20;
/// Slots a reader acknowledges in one message (and the rest when its ring
/// step ends): each message is a system call on both sides and a wake-up,
/// and a writer needs only one free slot of [`SLOTS`] to go on.
const ACK_EVERY: u32 = 4;
/// A doorbell's body: kind, chunk header, slot (u32), length (u32).
const DOORBELL_BYTES: usize = 1 + HEADER + 8;
/// Values per frame (512 KB as i64: a shared slot holds one).
const CHUNK_VALUES: usize = 1 << 16;
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
    /// Slots shared with the next leader (this one writes) and the previous one (it writes).
    to_next: Option<Slots>,
    from_prev: Option<Slots>,
}

/// Who is who in a ring: the leaders' ranks and endpoints in ring order.
pub struct RingPeers<'a> {
    pub job: &'a str,
    pub generation: u64,
    pub leaders: &'a [(usize, String)],
    pub position: usize,
    /// Whether leaders on one host pass chunks through shared memory ([`super::shm`]).
    pub shared_memory: bool,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Collective(format!("{what}: {e}"))
}

/// Connects this leader to its neighbours; `None` when it is the only one.
/// Gives up at once when `watch` sees the generation fail, or when the next
/// neighbour refuses the connection (its listener was bound before it
/// registered: a refusal means its process is gone); the ring's sockets are
/// cut when the generation fails later.
pub fn connect(
    listener: Listener,
    peers: &RingPeers,
    secret: &Secret,
    timeout: Duration,
    watch: &GenerationWatch,
) -> Result<Option<Ring>> {
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
            Err(e) if Instant::now() > deadline || e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(EngineError::Collective(format!(
                    "rank {me}: cannot reach rank {next_rank} at {next_endpoint}: {e}"
                )))
            }
            Err(_) => gave_up(watch, *me)?,
        }
    };
    watch.cut_on_failure(&stream);
    configure(&stream, timeout)?;
    let mut next = Framed::new(stream, secret.clone());
    let hello = Hello { job: peers.job.into(), generation: peers.generation, from: *me, to: *next_rank };
    next.send(HELLO, &[&json(&hello)]).map_err(|e| EngineError::Collective(format!("rank {me}: hello: {e}")))?;
    let expected = Hello { job: peers.job.into(), generation: peers.generation, from: *prev_rank, to: *me };
    let mut prev = accept(&listener.listener, &expected, secret, deadline, timeout, watch)?;
    let (to_next, from_prev) = match peers.shared_memory {
        true => share_memory(&mut next, &mut prev, *me)?,
        false => (None, None),
    };
    if to_next.is_some() {
        log::info!("rank {me}: chunks to rank {next_rank} go through shared memory");
    }
    Ok(Some(Ring {
        next,
        prev,
        position: p,
        size,
        buffer: vec![],
        narrow: vec![],
        send_narrow: vec![],
        send_wide: vec![],
        to_next,
        from_prev,
    }))
}

/// Offers the next leader slots of shared memory, answers the previous
/// one's offer, then hears the next one's answer (every leader sends before
/// it waits, so the ring cannot stall). Returns the slots this leader writes
/// (the next one could open them) and those it reads.
fn share_memory(
    next: &mut Framed<TcpStream>,
    prev: &mut Framed<TcpStream>,
    me: usize,
) -> Result<(Option<Slots>, Option<Slots>)> {
    let failed = |e: FrameError| EngineError::Collective(format!("rank {me}: sharing memory with a neighbour: {e}"));
    let made = Slots::create().map_err(|e| log::info!("rank {me}: no shared memory ({e}): chunks go by TCP")).ok();
    match &made {
        Some((_, offer)) => next.send(SHM_OFFER, &[&json(offer)]),
        None => next.send(SHM_NONE, &[]),
    }
    .map_err(failed)?;
    let from_prev = match prev.receive().map_err(failed)? {
        (SHM_OFFER, body) => Slots::open(&parse::<Offer>(&body).map_err(failed)?)
            .map_err(|e| log::info!("rank {me}: the previous rank's shared memory cannot be opened here ({e})"))
            .ok(),
        (SHM_NONE, _) => None,
        (kind, _) => return Err(failed(FrameError::Refused(format!("a message of kind {kind} instead of an offer")))),
    };
    prev.send(if from_prev.is_some() { SHM_YES } else { SHM_NO }, &[]).map_err(failed)?;
    let to_next = match (next.receive().map_err(failed)?, made) {
        ((SHM_YES, _), Some((mut slots, _))) => {
            slots.forget_file();
            Some(slots)
        }
        ((SHM_NO | SHM_YES, _), _) => None,
        ((kind, _), _) => {
            return Err(failed(FrameError::Refused(format!("a message of kind {kind} instead of an answer"))))
        }
    };
    Ok((to_next, from_prev))
}

/// Waits a little before the next try, unless the generation failed meanwhile.
fn gave_up(watch: &GenerationWatch, me: usize) -> Result<()> {
    match watch.failure() {
        Some(why) => Err(EngineError::Collective(format!("rank {me}: stopped connecting the ring: {why}"))),
        None => {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        }
    }
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
    watch: &GenerationWatch,
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
                if let Some(why) = watch.failure() {
                    return Err(EngineError::Collective(format!(
                        "rank {}: stopped waiting for rank {}: {why}",
                        expected.to, expected.from
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
                watch.cut_on_failure(&framed.stream);
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

pub(crate) fn bounds(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
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

/// Where a chunk sits: the step, the phase of the collective, the ring step,
/// its offset in the vector and the vector's length. Its header says so, and
/// a chunk that arrives anywhere else is refused.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub step: u64,
    pub phase: u8,
    pub t: u32,
    pub offset: usize,
    pub n: usize,
}

impl Place {
    /// The same place, `by` values further on.
    pub fn plus(self, by: usize) -> Place {
        Place { offset: self.offset + by, ..self }
    }

    fn header(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(&self.step.to_le_bytes());
        h[8] = self.phase;
        h[9..13].copy_from_slice(&self.t.to_le_bytes());
        h[13..21].copy_from_slice(&(self.offset as u64).to_le_bytes());
        h[21..29].copy_from_slice(&(self.n as u64).to_le_bytes());
        h
    }
}

/// The sending half of a ring step: chunks to the next leader, each sealed.
pub struct Outbox<'r> {
    to: &'r mut Framed<TcpStream>,
    narrow: &'r mut Vec<i32>,
    wide: &'r mut Vec<i64>,
    sent: u64,
    slots: Option<&'r mut Slots>,
}

impl Outbox<'_> {
    /// Sends fixed-point sums, in the narrowest form that carries them ([`chunk::encode`]).
    pub fn sums(&mut self, at: Place, values: &[i64]) -> Result<()> {
        let len = match chunk::encode(values, self.narrow, self.wide) {
            chunk::WIDE => return self.seal(chunk::WIDE, at, self.wide.len() * 8),
            kind => (kind, self.narrow.len() * 4),
        };
        self.seal(len.0, at, len.1)
    }

    /// Sends f32 values (the concatenation of `pieces`) bit for bit.
    pub fn floats(&mut self, at: Place, pieces: &[&[f32]]) -> Result<()> {
        self.floats_as(chunk::FLOATS, at, pieces)
    }

    /// Sends one process's own gradient values (the concatenation of
    /// `pieces`) as f32, for the next leader to round to fixed point: the
    /// bits of the rounded sums, without this side's rounding and encoding.
    pub fn gradients(&mut self, at: Place, pieces: &[&[f32]]) -> Result<()> {
        self.floats_as(chunk::GRADIENTS, at, pieces)
    }

    /// f32 values of `kind`: through a shared slot they are written there
    /// directly, piece by piece, not gathered into a buffer first.
    fn floats_as(&mut self, kind: u8, at: Place, pieces: &[&[f32]]) -> Result<()> {
        let len: usize = pieces.iter().map(|p| p.len() * 4).sum();
        let Some(slots) = self.slots.as_deref_mut().filter(|_| len <= SLOT_BYTES) else {
            self.narrow.clear();
            for p in pieces {
                self.narrow.extend_from_slice(bytemuck::cast_slice(p));
            }
            return self.seal(kind, at, len);
        };
        self.sent += (HEADER + len) as u64;
        let slot = free_slot(self.to, slots)?;
        let mut offset = 0;
        for p in pieces {
            slots.write_at(slot, offset, bytemuck::cast_slice(p));
            offset += p.len() * 4;
        }
        ring_doorbell(self.to, kind, at, slot, len)
    }

    fn seal(&mut self, kind: u8, at: Place, len: usize) -> Result<()> {
        let payload: &mut [u8] = match kind {
            chunk::WIDE => bytemuck::cast_slice_mut(self.wide.as_mut_slice()),
            _ => bytemuck::cast_slice_mut(self.narrow.as_mut_slice()),
        };
        self.sent += (HEADER + len) as u64;
        let Some(slots) = self.slots.as_deref_mut().filter(|_| len <= SLOT_BYTES) else {
            return self.to.send_sealed(kind, &at.header(), payload).map_err(sending);
        };
        let slot = free_slot(self.to, slots)?;
        slots.write(slot, &payload[..len]);
        ring_doorbell(self.to, kind, at, slot, len)
    }
}

/// A slot to write, once the next leader has acknowledged one if all are in flight.
fn free_slot(to: &mut Framed<TcpStream>, slots: &mut Slots) -> Result<usize> {
    loop {
        match slots.take() {
            Some(slot) => return Ok(slot),
            None => await_ack(to, slots).map_err(sending)?,
        }
    }
}

/// Tells the next leader that `slot` holds a chunk of `kind` at `at`, `len` bytes.
fn ring_doorbell(to: &mut Framed<TcpStream>, kind: u8, at: Place, slot: usize, len: usize) -> Result<()> {
    let doorbell = [&[kind][..], &at.header(), &(slot as u32).to_le_bytes(), &(len as u32).to_le_bytes()];
    to.send(DOORBELL, &doorbell).map_err(sending)
}

impl Outbox<'_> {
    /// Waits until the next leader has read every slot: an acknowledgement
    /// left unread when the ring closes would reset the connection under
    /// a neighbour still reading.
    fn drain(&mut self) -> Result<()> {
        if let Some(slots) = self.slots.as_deref_mut() {
            while slots.oldest().is_some() {
                await_ack(self.to, slots).map_err(sending)?;
            }
        }
        Ok(())
    }
}

fn sending(e: FrameError) -> EngineError {
    EngineError::Collective(format!("sending to the next rank: {e}"))
}

/// Waits for the next leader to acknowledge slots in flight, the oldest first.
fn await_ack(to: &mut Framed<TcpStream>, slots: &mut Slots) -> std::result::Result<(), FrameError> {
    let refused = |why: String| Err(FrameError::Refused(why));
    match to.receive()? {
        (ACK, body) if body.len() == 8 => {
            let number = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let (first, count) = (number(0) as usize, number(4) as usize);
            if Some(first) != slots.oldest() || count == 0 || count > slots.in_flight() {
                return refused(format!("an acknowledgement of {count} slots from slot {first}, not those in flight"));
            }
            (0..count).for_each(|_| slots.acknowledged());
            Ok(())
        }
        (kind, _) => refused(format!("a message of kind {kind} instead of the acknowledgement of a slot")),
    }
}

/// The receiving half of a ring step: chunks from the previous leader.
pub struct Inbox<'r> {
    from: &'r mut Framed<TcpStream>,
    narrow: &'r mut Vec<i32>,
    wide: &'r mut Vec<i64>,
    slots: Option<&'r Slots>,
    /// Slots read and not yet acknowledged: (the first, how many).
    unacknowledged: Option<(usize, u32)>,
}

/// A chunk as it arrived (authenticated and decrypted).
pub struct Arrived<'a> {
    kind: u8,
    narrow: &'a [i32],
    wide: &'a [i64],
    len: usize,
}

impl Inbox<'_> {
    /// The next chunk of fixed-point sums: it must sit at `at` and cover
    /// exactly `values` values (a short one would leave its reader waiting).
    pub fn sums(&mut self, at: Place, values: usize) -> Result<Arrived<'_>> {
        self.next(at, values, Some(chunk::WIDE), &[chunk::NARROW, chunk::SPARSE, chunk::GRADIENTS])
    }

    /// The next chunk of f32 values, at `at`, of exactly `values` values.
    pub fn floats(&mut self, at: Place, values: usize) -> Result<Arrived<'_>> {
        self.next(at, values, None, &[chunk::FLOATS])
    }

    fn next(&mut self, at: Place, values: usize, wide_kind: Option<u8>, narrow_kinds: &[u8]) -> Result<Arrived<'_>> {
        let mut h = [0u8; HEADER];
        let kind = self.receive(wide_kind, narrow_kinds, &mut h).map_err(|e| match e {
            FrameError::Refused(why) => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                log::warn!("refused a collective message from the previous rank: {why}");
                EngineError::Collective(format!("a collective message was refused: {why}"))
            }
            FrameError::Io(e) => EngineError::Collective(format!("the previous rank is gone: {e}")),
        })?;
        let len = chunk::covers(kind, self.narrow, self.wide, values);
        if h != at.header() {
            return Err(EngineError::Collective(format!(
                "a chunk out of order (step {}, phase {}, ring step {}, offset {})",
                at.step, at.phase, at.t, at.offset
            )));
        }
        if len != values {
            return Err(EngineError::Collective(format!(
                "a chunk of {len} values at offset {}, expected {values}",
                at.offset
            )));
        }
        Ok(Arrived { kind, narrow: self.narrow, wide: self.wide, len })
    }

    /// The next chunk, sealed on the socket or rung in through a shared slot.
    fn receive(
        &mut self,
        wide_kind: Option<u8>,
        narrow_kinds: &[u8],
        h: &mut [u8; HEADER],
    ) -> std::result::Result<u8, FrameError> {
        let head = self.from.head()?;
        if head.0 != DOORBELL {
            return self.from.values_after(head, wide_kind, narrow_kinds, h, self.wide, self.narrow);
        }
        let (_, body) = self.from.body_after(head.0, head.1)?;
        let Some(slots) = self.slots.filter(|_| body.len() == DOORBELL_BYTES) else {
            return Err(FrameError::Refused("a doorbell without shared slots".into()));
        };
        let kind = body[0];
        h.copy_from_slice(&body[1..1 + HEADER]);
        let number = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
        let (slot, len) = (number(1 + HEADER), number(1 + HEADER + 4));
        let width = match kind {
            k if Some(k) == wide_kind => 8,
            k if narrow_kinds.contains(&k) => 4,
            _ => return Err(FrameError::Refused(format!("unexpected doorbell: kind {kind}, {len} bytes"))),
        };
        if slot >= SLOTS || len > SLOT_BYTES || !len.is_multiple_of(width) {
            return Err(FrameError::Refused(format!("a doorbell of slot {slot} with {len} bytes")));
        }
        let bytes: &mut [u8] = match width {
            8 => {
                self.wide.resize(len / 8, 0);
                bytemuck::cast_slice_mut(self.wide.as_mut_slice())
            }
            _ => {
                self.narrow.resize(len / 4, 0);
                bytemuck::cast_slice_mut(self.narrow.as_mut_slice())
            }
        };
        slots.read(slot, bytes);
        if self.unacknowledged.is_some_and(|(first, count)| (first + count as usize) % SLOTS != slot) {
            self.acknowledge()?;
        }
        let (first, count) = self.unacknowledged.unwrap_or((slot, 0));
        self.unacknowledged = Some((first, count + 1));
        if count + 1 >= ACK_EVERY {
            self.acknowledge()?;
        }
        Ok(kind)
    }

    /// Acknowledges the slots read since the last acknowledgement.
    fn acknowledge(&mut self) -> std::result::Result<(), FrameError> {
        match self.unacknowledged.take() {
            Some((first, count)) => self.from.send(ACK, &[&(first as u32).to_le_bytes(), &count.to_le_bytes()]),
            None => Ok(()),
        }
    }
}

impl Arrived<'_> {
    /// Values it covers (never 0).
    pub fn covers(&self) -> usize {
        self.len
    }

    /// Adds its sums to `target` (as long as it), the overflow checked.
    pub fn add_to(&self, target: &mut [i64]) -> Result<()> {
        chunk::apply(self.kind, true, target, self.narrow, self.wide)
    }

    /// Sets `target` (as long as it) to its sums.
    pub fn set(&self, target: &mut [i64]) -> Result<()> {
        chunk::apply(self.kind, false, target, self.narrow, self.wide)
    }

    /// Its f32 values.
    pub fn floats(&self) -> &[f32] {
        bytemuck::cast_slice(self.narrow)
    }

    /// The sender's own gradient values, when it sent those
    /// ([`Outbox::gradients`]) rather than fixed-point sums.
    pub fn gradients(&self) -> Option<&[f32]> {
        (self.kind == chunk::GRADIENTS).then(|| bytemuck::cast_slice(self.narrow))
    }
}

impl Ring {
    /// Leaders in the ring.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This leader's place in the ring.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether this leader's chunks reach the next one through shared memory.
    pub fn shares_memory(&self) -> bool {
        self.to_next.is_some()
    }

    /// One ring step: `send` feeds the next leader while `receive` takes
    /// from the previous one, at once. Returns the bytes sent.
    pub fn exchange(
        &mut self,
        send: impl FnOnce(&mut Outbox) -> Result<()> + Send,
        receive: impl FnOnce(&mut Inbox) -> Result<()>,
    ) -> Result<u64> {
        let mut outbox = Outbox {
            to: &mut self.next,
            narrow: &mut self.send_narrow,
            wide: &mut self.send_wide,
            sent: 0,
            slots: self.to_next.as_mut(),
        };
        let mut inbox = Inbox {
            from: &mut self.prev,
            narrow: &mut self.narrow,
            wide: &mut self.buffer,
            slots: self.from_prev.as_ref(),
            unacknowledged: None,
        };
        std::thread::scope(|s| {
            let sender = s.spawn(move || send(&mut outbox).and_then(|()| outbox.drain()).map(|()| outbox.sent));
            let received = receive(&mut inbox).and_then(|()| {
                inbox.acknowledge().map_err(|e| EngineError::Collective(format!("acknowledging slots: {e}")))
            });
            let sent = sender.join().unwrap_or_else(|_| Err(EngineError::Collective("sender panicked".into())));
            received.and(sent)
        })
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
                let place = Place { step, phase, t: t as u32, offset: 0, n };
                let (send_at, recv_at) = (place.plus(bounds(n, l, send).start), place.plus(bounds(n, l, recv).start));
                sent += self.exchange(
                    |outbox| {
                        for (i, c) in out.chunks(CHUNK_VALUES).enumerate() {
                            outbox.sums(send_at.plus(i * CHUNK_VALUES), c)?;
                        }
                        Ok(())
                    },
                    |inbox| {
                        let mut done = 0;
                        while done < into.len() {
                            let chunk = inbox.sums(recv_at.plus(done), (into.len() - done).min(CHUNK_VALUES))?;
                            let target = &mut into[done..done + chunk.covers()];
                            // Reduce-scatter adds what arrives; all-gather sets finished parts.
                            match phase {
                                0 => chunk.add_to(target)?,
                                _ => chunk.set(target)?,
                            }
                            done += chunk.covers();
                        }
                        Ok(())
                    },
                )?;
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a ring of `parts.len()` leaders on threads, passing chunks
    /// through `shared_memory` or not; returns each one's result.
    fn ring_sum(
        parts: Vec<Vec<i64>>,
        secret: &Secret,
        shared_memory: bool,
        before: impl FnOnce(&[String]),
    ) -> Vec<Result<Vec<i64>>> {
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
                        let peers = RingPeers { job: "j", generation: 3, leaders, position: p, shared_memory };
                        let mut ring =
                            connect(listener, &peers, secret, Duration::from_secs(5), &GenerationWatch::none())?;
                        if let Some(r) = ring.as_mut() {
                            assert_eq!(r.shares_memory(), shared_memory);
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
            for shared_memory in [false, true] {
                for got in ring_sum(parts.clone(), &secret, shared_memory, |_| {}) {
                    assert!(got.unwrap() == want, "{leaders} leaders, shared memory {shared_memory}");
                }
            }
        }
    }

    #[test]
    fn unauthenticated_and_tampered_connections_are_refused_and_the_sum_is_unchanged() {
        let (secret, _) = Secret::generate().unwrap();
        let parts = vec![vec![1i64, 2, 3], vec![10, 20, 30], vec![100, 200, 300]];
        let before = REFUSED.load(Ordering::Relaxed);
        let results = ring_sum(parts, &secret, false, |endpoints| {
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
