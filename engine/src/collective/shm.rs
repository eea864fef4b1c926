//! Values between processes of one host through shared memory. A process
//! whose peer can open a file it made in `/dev/shm` (same host, same mount
//! namespace, same user) puts its values there, and the socket carries only
//! signed messages that say where they lie. The values skip the
//! encryption, the kernel's two copies and TCP, which cost more CPU than the
//! arithmetic of a step's collective on a busy host (NCCL and Gloo move
//! chunks between local ranks the same way). They never leave the host: the
//! file is readable by the executors' user only (who can read the job's
//! secret too) and is removed once the peer has opened it. Peers that
//! cannot open it keep the sealed TCP path.
//!
//! [`Region`] is such a file; [`Slots`] cut one into the ring's chunk slots
//! (`async` workers and their parameter servers use a whole [`Region`] per
//! connection, `crate::ps`).

use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Slots in flight per direction (16 MiB): a sender rarely waits for an
/// acknowledgement, each wait a wake-up of the neighbour on a busy host
/// (W1's all-reduce: 17.6-18.5 ms per step with 16, 18.8-20.2 with 4). A
/// `/dev/shm` too small for them (a container's 64 MiB) makes the link TCP.
pub const SLOTS: usize = 16;
/// Bytes of a slot: a frame of the ring's chunks (up to 128 Ki i64 values).
pub const SLOT_BYTES: usize = 1 << 20;
/// Where the files are made.
const DIR: &str = "/dev/shm";
/// Their names' prefix.
const PREFIX: &str = "kallista-shm-";
/// The file opens with a random token, which the offer names: the file the
/// neighbour opened is the one this leader made.
const TOKEN: usize = 32;
/// Slots start a page in.
const DATA_AT: usize = 4096;

/// What a process offers its peer (in a signed frame).
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub path: String,
    pub token: Vec<u8>,
}

/// A file of `/dev/shm` mapped by its maker and the peer that opened it.
/// Which of them may touch which bytes when is the protocol's to say (a
/// signed message hands them over); every access here is a raw copy, so
/// a peer that breaks the protocol garbles values, never this process's
/// memory.
pub struct Region {
    map: memmap2::MmapMut,
    /// Usable bytes, from [`DATA_AT`].
    bytes: usize,
    /// The maker's file, removed once the peer answered.
    path: Option<PathBuf>,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.forget_file();
    }
}

/// One direction's slots, as the writer or the reader sees them.
pub struct Slots {
    region: Region,
    /// The writer's: the next slot to fill and the slots not yet acknowledged.
    next: usize,
    in_flight: usize,
}

/// Removes the files of processes that are gone: a process killed between
/// making its file and its neighbour opening it cannot remove it itself.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir(DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let maker = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|n| n.split('-').next());
        if let Some(pid) = maker.and_then(|p| p.parse::<u32>().ok()) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn random(bytes: &mut [u8]) -> std::io::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(bytes).map_err(|_| std::io::Error::other("no randomness"))
}

impl Region {
    /// Makes a file of `bytes` usable bytes and maps it; its space is taken
    /// now, so a full `/dev/shm` is an error here rather than a fault on
    /// first write.
    pub fn create(bytes: usize) -> std::io::Result<(Region, Offer)> {
        remove_orphans();
        let mut token = vec![0u8; TOKEN];
        random(&mut token)?;
        let mut name = [0u8; 12];
        random(&mut name)?;
        let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = Path::new(DIR).join(format!("{PREFIX}{}-{hex}", std::process::id()));
        let mut file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        let made = (|| {
            file.write_all(&token)?;
            // Written, not only sized: tmpfs gives the pages now or says it is full.
            let zeros = vec![0u8; 1 << 20];
            let mut left = DATA_AT - TOKEN + bytes;
            while left > 0 {
                let n = left.min(zeros.len());
                file.write_all(&zeros[..n])?;
                left -= n;
            }
            // SAFETY: a file of this process's own, opened read-write; every
            // access to the shared part goes through raw copies.
            unsafe { memmap2::MmapMut::map_mut(&file) }
        })();
        match made {
            Ok(map) => {
                let offer = Offer { path: path.to_string_lossy().into_owned(), token };
                Ok((Region { map, bytes, path: Some(path) }, offer))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Opens a peer's offered file of `bytes` usable bytes, if this process
    /// can and it is the one offered (its token).
    pub fn open(offer: &Offer, bytes: usize) -> std::io::Result<Region> {
        let path = Path::new(&offer.path);
        let ours = path.parent() == Some(Path::new(DIR))
            && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX));
        if !ours {
            return Err(std::io::Error::other(format!("not a Kallista shared-memory file: {}", offer.path)));
        }
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut token = [0u8; TOKEN];
        file.read_exact(&mut token)?;
        let size = file.metadata()?.len() as usize;
        if token[..] != offer.token[..] || size != DATA_AT + bytes {
            return Err(std::io::Error::other("the offered file is not the peer's"));
        }
        // SAFETY: as in `create`.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        // Opened: the name is no longer needed (its maker removes it too).
        let _ = std::fs::remove_file(path);
        Ok(Region { map, bytes, path: None })
    }

    /// Removes the maker's file (both sides keep their mappings).
    pub fn forget_file(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Copies `bytes` to offset `at`; `false` (nothing written) past the end.
    pub fn write(&mut self, at: usize, bytes: &[u8]) -> bool {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.bytes) {
            return false;
        }
        // SAFETY: inside the mapping (checked above); a copy of plain bytes,
        // whatever the peer does meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(DATA_AT + at), bytes.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        true
    }

    /// Copies `into.len()` bytes from offset `at`; `false` (nothing read) past the end.
    pub fn read(&self, at: usize, into: &mut [u8]) -> bool {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if at.checked_add(into.len()).is_none_or(|end| end > self.bytes) {
            return false;
        }
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(DATA_AT + at), into.as_mut_ptr(), into.len()) };
        true
    }
}

impl Slots {
    /// Makes a writer's file of [`SLOTS`] slots.
    pub fn create() -> std::io::Result<(Slots, Offer)> {
        let (region, offer) = Region::create(SLOTS * SLOT_BYTES)?;
        Ok((Slots { region, next: 0, in_flight: 0 }, offer))
    }

    /// Opens a neighbour's offered slots, if this process can and it is the
    /// one offered (its token).
    pub fn open(offer: &Offer) -> std::io::Result<Slots> {
        Ok(Slots { region: Region::open(offer, SLOTS * SLOT_BYTES)?, next: 0, in_flight: 0 })
    }

    /// Removes the writer's file (both sides keep their mappings).
    pub fn forget_file(&mut self) {
        self.region.forget_file();
    }

    /// The writer's next free slot, or `None` when all are in flight.
    pub fn take(&mut self) -> Option<usize> {
        if self.in_flight == SLOTS {
            return None;
        }
        let slot = self.next;
        self.next = (slot + 1) % SLOTS;
        self.in_flight += 1;
        Some(slot)
    }

    /// The slot whose acknowledgement comes next (the oldest in flight).
    pub fn oldest(&self) -> Option<usize> {
        (self.in_flight > 0).then(|| (self.next + SLOTS - self.in_flight) % SLOTS)
    }

    /// Slots written and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The oldest slot was read by the neighbour.
    pub fn acknowledged(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn at(slot: usize) -> usize {
        (slot % SLOTS) * SLOT_BYTES
    }

    /// Writes `bytes` (at most [`SLOT_BYTES`]) at the start of `slot`; the
    /// neighbour does not touch a slot between its doorbell and its
    /// acknowledgement.
    pub fn write(&mut self, slot: usize, bytes: &[u8]) {
        self.write_at(slot, 0, bytes);
    }

    /// Writes `bytes` at `offset` in `slot`, as far as the slot goes.
    pub fn write_at(&mut self, slot: usize, offset: usize, bytes: &[u8]) {
        let n = bytes.len().min(SLOT_BYTES.saturating_sub(offset));
        self.region.write(Self::at(slot) + offset.min(SLOT_BYTES), &bytes[..n]);
    }

    /// Copies the first `into.len()` bytes (at most [`SLOT_BYTES`]) of `slot`.
    pub fn read(&self, slot: usize, into: &mut [u8]) {
        let n = into.len().min(SLOT_BYTES);
        self.region.read(Self::at(slot), &mut into[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_the_writers_slots_and_the_file_goes_once_opened_or_dropped() {
        let (unopened, offer) = Slots::create().unwrap();
        assert!(Path::new(&offer.path).exists());
        drop(unopened);
        assert!(!Path::new(&offer.path).exists(), "a file never opened goes with its maker");
        let (mut writer, offer) = Slots::create().unwrap();
        let mut reader = Slots::open(&offer).unwrap();
        assert!(!Path::new(&offer.path).exists(), "opened, the name goes");
        for round in 0..2u8 {
            let slots: Vec<usize> = (0..SLOTS).map(|_| writer.take().unwrap()).collect();
            assert_eq!(writer.take(), None, "every slot in flight");
            for &s in &slots {
                writer.write(s, &[round, s as u8, 7]);
            }
            for &s in &slots {
                let mut got = [0u8; 3];
                reader.read(s, &mut got);
                assert_eq!(got, [round, s as u8, 7]);
                assert_eq!(writer.oldest(), Some(s));
                writer.acknowledged();
            }
        }
        reader.forget_file();
    }

    #[test]
    fn the_file_of_a_process_that_is_gone_is_removed_by_the_next_one_made() {
        // No process has pid u32::MAX - 1 (Linux pids stay below 2^22).
        let orphan = Path::new(DIR).join(format!("{PREFIX}{}-0123", u32::MAX - 1));
        let alive = Path::new(DIR).join(format!("{PREFIX}{}-0123", std::process::id()));
        std::fs::write(&orphan, b"left").unwrap();
        std::fs::write(&alive, b"mine").unwrap();
        let _made = Slots::create().unwrap();
        assert!(!orphan.exists());
        assert!(alive.exists(), "a live process's file was removed");
        std::fs::remove_file(alive).unwrap();
    }

    #[test]
    fn a_region_is_seen_by_its_peer_within_its_bounds_and_a_wrong_size_is_declined() {
        let (mut maker, offer) = Region::create(4096 + 3).unwrap();
        assert!(Region::open(&offer, 4096).is_err(), "a region of another size was opened");
        let mut peer = Region::open(&offer, 4096 + 3).unwrap();
        assert!(maker.write(4096, &[1, 2, 3]));
        assert!(!maker.write(4097, &[1, 2, 3]), "a write past the end");
        let mut got = [0u8; 3];
        assert!(peer.read(4096, &mut got));
        assert_eq!(got, [1, 2, 3]);
        assert!(!peer.read(usize::MAX, &mut got), "a read past the end");
        assert!(peer.write(0, &[9]));
        let mut first = [0u8; 1];
        assert!(maker.read(0, &mut first));
        assert_eq!(first, [9]);
    }

    #[test]
    fn an_offer_with_a_wrong_token_or_outside_the_ring_files_is_declined() {
        let (_writer, offer) = Slots::create().unwrap();
        let forged = Offer { path: offer.path.clone(), token: vec![0; TOKEN] };
        assert!(Slots::open(&forged).is_err());
        let elsewhere = Offer { path: "/etc/passwd".into(), token: offer.token.clone() };
        assert!(Slots::open(&elsewhere).is_err());
    }
}
