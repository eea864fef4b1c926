//! Ring chunks between processes of one host through shared memory. A
//! leader whose next neighbour can open a file it made in `/dev/shm` (same
//! host, same mount namespace, same user) writes its chunks into a few slots
//! of that file; the socket then carries only signed doorbells (the chunk's
//! kind, place, slot and length) and acknowledgements. The values skip the
//! encryption, the kernel's two copies and TCP, which cost more CPU than the
//! arithmetic of a step's collective on a busy host (NCCL and Gloo move
//! chunks between local ranks the same way). They never leave the host: the
//! file is readable by the executors' user only (who can read the job's
//! secret too) and is removed once the neighbour has opened it. Ranks that
//! cannot open it keep the sealed TCP path.

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
/// Bytes of a slot: a frame of the ring's chunks (64 Ki i64 values) and more.
pub const SLOT_BYTES: usize = 1 << 20;
/// Where the files are made.
const DIR: &str = "/dev/shm";
/// Their names' prefix.
const PREFIX: &str = "kallista-ring-";
/// The file opens with a random token, which the offer names: the file the
/// neighbour opened is the one this leader made.
const TOKEN: usize = 32;
/// Slots start a page in.
const DATA_AT: usize = 4096;

/// What a leader offers its next neighbour (in a signed frame).
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub path: String,
    pub token: Vec<u8>,
}

/// One direction's slots, as the writer or the reader sees them.
pub struct Slots {
    map: memmap2::MmapMut,
    /// The writer's: the next slot to fill and the slots not yet acknowledged.
    next: usize,
    in_flight: usize,
    /// The writer's file, removed once the reader answered.
    path: Option<PathBuf>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.forget_file();
    }
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

impl Slots {
    /// Makes a writer's file and maps it; its space is taken now, so a full
    /// `/dev/shm` is an error here rather than a fault on first write.
    pub fn create() -> std::io::Result<(Slots, Offer)> {
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
            let zeros = vec![0u8; DATA_AT - TOKEN + SLOTS * SLOT_BYTES];
            file.write_all(&zeros)?;
            // SAFETY: a file of this process's own, opened read-write; every
            // access to the shared part goes through raw copies (`write`, `read`).
            unsafe { memmap2::MmapMut::map_mut(&file) }
        })();
        match made {
            Ok(map) => {
                let offer = Offer { path: path.to_string_lossy().into_owned(), token };
                Ok((Slots { map, next: 0, in_flight: 0, path: Some(path) }, offer))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Opens a neighbour's offered file, if this process can and it is the
    /// one offered (its token).
    pub fn open(offer: &Offer) -> std::io::Result<Slots> {
        let path = Path::new(&offer.path);
        let ours = path.parent() == Some(Path::new(DIR))
            && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX));
        if !ours {
            return Err(std::io::Error::other(format!("not a ring file: {}", offer.path)));
        }
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut token = [0u8; TOKEN];
        file.read_exact(&mut token)?;
        let size = file.metadata()?.len() as usize;
        if token[..] != offer.token[..] || size != DATA_AT + SLOTS * SLOT_BYTES {
            return Err(std::io::Error::other("the offered file is not the neighbour's"));
        }
        // SAFETY: as in `create`.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        // Opened: the name is no longer needed (its maker removes it too).
        let _ = std::fs::remove_file(path);
        Ok(Slots { map, next: 0, in_flight: 0, path: None })
    }

    /// Removes the writer's file (both sides keep their mappings).
    pub fn forget_file(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
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

    /// The oldest slot was read by the neighbour.
    pub fn acknowledged(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn at(&self, slot: usize) -> usize {
        DATA_AT + (slot % SLOTS) * SLOT_BYTES
    }

    /// Writes `bytes` (at most [`SLOT_BYTES`]) at the start of `slot`.
    pub fn write(&mut self, slot: usize, bytes: &[u8]) {
        let n = bytes.len().min(SLOT_BYTES);
        let at = self.at(slot);
        // SAFETY: `at + n` is inside the mapping; the neighbour does not touch
        // a slot between its doorbell and its acknowledgement, and a copy of
        // plain bytes is all that happens here whatever it does.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(at), n) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }

    /// Copies the first `into.len()` bytes (at most [`SLOT_BYTES`]) of `slot`.
    pub fn read(&self, slot: usize, into: &mut [u8]) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let n = into.len().min(SLOT_BYTES);
        let at = self.at(slot);
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(at), into.as_mut_ptr(), n) };
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
    fn an_offer_with_a_wrong_token_or_outside_the_ring_files_is_declined() {
        let (_writer, offer) = Slots::create().unwrap();
        let forged = Offer { path: offer.path.clone(), token: vec![0; TOKEN] };
        assert!(Slots::open(&forged).is_err());
        let elsewhere = Offer { path: "/etc/passwd".into(), token: offer.token.clone() };
        assert!(Slots::open(&elsewhere).is_err());
    }
}
