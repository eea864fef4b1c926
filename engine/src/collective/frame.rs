//! Authenticated frames: every message between the driver's rendezvous and
//! the ranks, and between ranks, carries an HMAC-SHA256 tag made with the
//! job's secret ([`Secret`]) over a per-connection sequence number, the
//! message kind and the body. A frame from someone without the secret, or
//! changed on the way, or replayed out of order, fails its check and is
//! refused ([`FrameError::Refused`]); the reader never trusts a length
//! before it is bounded.
//!
//! Layout: `u32 body length (LE) | u8 kind | body | 32-byte tag`.
//!
//! Bulk frames (gradient chunks, [`Framed::send_sealed`]) are sealed with
//! AES-256-GCM under a key derived from the secret instead: the same checks
//! (the sequence number and kind are authenticated data), at several times
//! HMAC-SHA256's speed where AES-NI is present, and the values travel
//! encrypted. Their body is `12-byte nonce | header | ciphertext` and their
//! tag 16 bytes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hmac;
use ring::rand::SecureRandom;
use std::io::{Read, Write};

/// The largest body accepted: a chunk of gradients plus its header.
pub const MAX_BODY: usize = 16 << 20;
/// Bytes of a tag.
const TAG: usize = 32;
/// Bytes of a sealed frame's tag.
const SEALED_TAG: usize = 16;

/// A job's shared secret: 32 random bytes, made by the driver, kept in the
/// job dir's store (readable by whoever may read the job's data), never put
/// in a plan or a log line (its `Debug` shows nothing).
#[derive(Clone)]
pub struct Secret {
    mac: hmac::Key,
    /// AES-256-GCM key of sealed frames: HMAC(secret, a fixed label), so it never equals the MAC key.
    seal: LessSafeKey,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Whether `other` is the same secret (compared by keyed tags of a fixed
    /// label, never by the key bytes): a caller in this process that holds
    /// it may skip the frames.
    pub fn same_as(&self, other: &Secret) -> bool {
        const LABEL: &[u8] = b"kallista: same secret";
        hmac::verify(&self.mac, LABEL, hmac::sign(&other.mac, LABEL).as_ref()).is_ok()
    }

    /// A fresh random secret and its bytes (to store).
    pub fn generate() -> Result<(Secret, Vec<u8>), FrameError> {
        let mut bytes = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| FrameError::Io("no randomness for the job's secret".into()))?;
        Ok((Secret::from_bytes(&bytes), bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Secret {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let derived = hmac::sign(&mac, b"kallista collective: sealed frames v1");
        let seal = UnboundKey::new(&aead::AES_256_GCM, derived.as_ref()).expect("an HMAC-SHA256 tag is 32 bytes");
        Secret { mac, seal: LessSafeKey::new(seal) }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not from a holder of the secret, changed on the way, or out of order.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection failed or closed.
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

/// One direction of an authenticated connection: frames are numbered, so a
/// frame replayed or dropped on the way fails the next check.
pub struct Framed<S> {
    pub stream: S,
    secret: Secret,
    sent: u64,
    received: u64,
}

impl<S: Read + Write> Framed<S> {
    pub fn new(stream: S, secret: Secret) -> Self {
        Framed { stream, secret, sent: 0, received: 0 }
    }

    fn context(&self, seq: u64, kind: u8) -> hmac::Context {
        let mut ctx = hmac::Context::with_key(&self.secret.mac);
        ctx.update(&seq.to_le_bytes());
        ctx.update(&[kind]);
        ctx
    }

    /// Sends `parts` (concatenated) as one frame of `kind`.
    pub fn send(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), FrameError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_BODY {
            return Err(FrameError::Io(format!("a frame of {len} bytes is over the limit of {MAX_BODY}")));
        }
        let mut ctx = self.context(self.sent, kind);
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4] = kind;
        self.stream.write_all(&head)?;
        for p in parts {
            ctx.update(p);
            self.stream.write_all(p)?;
        }
        self.stream.write_all(ctx.sign().as_ref())?;
        self.sent += 1;
        Ok(())
    }

    /// Reads the next frame: its kind and body, after checking its tag.
    pub fn receive(&mut self) -> Result<(u8, Vec<u8>), FrameError> {
        let (kind, len) = self.head()?;
        self.body_after(kind, len)
    }

    /// The body of a signed frame whose head ([`Framed::head`]) was read, after checking its tag.
    pub fn body_after(&mut self, kind: u8, len: usize) -> Result<(u8, Vec<u8>), FrameError> {
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        self.check(kind, &[&body])?;
        Ok((kind, body))
    }

    /// Sends `header` then `values` as one sealed frame of `kind`: `values`
    /// is encrypted in place (the caller's copy of what it sends).
    pub fn send_sealed(&mut self, kind: u8, header: &[u8], values: &mut [u8]) -> Result<(), FrameError> {
        let len = NONCE_LEN + header.len() + values.len();
        if len > MAX_BODY {
            return Err(FrameError::Io(format!("a frame of {len} bytes is over the limit of {MAX_BODY}")));
        }
        // Random nonces: far fewer than 2^32 frames are sealed under one job's key.
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| FrameError::Io("no randomness for a nonce".into()))?;
        let aad = sealed_aad(self.sent, kind, header);
        let tag = self
            .secret
            .seal
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), values)
            .map_err(|_| FrameError::Io("a frame could not be sealed".into()))?;
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4] = kind;
        for part in [&head[..], &nonce, header, values, tag.as_ref()] {
            self.stream.write_all(part)?;
        }
        self.sent += 1;
        Ok(())
    }

    /// Reads the next sealed frame of kind `wide` (i64 values, if any) or one of
    /// `narrow` (i32 values) whose values follow a `header.len()`-byte header,
    /// into `header` and `values64` or `values32` (resized), decrypted in
    /// place: the values land aligned, without a copy. Returns the kind.
    pub fn receive_values(
        &mut self,
        wide: Option<u8>,
        narrow: &[u8],
        header: &mut [u8],
        values64: &mut Vec<i64>,
        values32: &mut Vec<i32>,
    ) -> Result<u8, FrameError> {
        let (got, len) = self.head()?;
        self.values_after((got, len), wide, narrow, header, values64, values32)
    }

    /// [`Framed::receive_values`] of a frame whose head was read.
    pub fn values_after(
        &mut self,
        (got, len): (u8, usize),
        wide: Option<u8>,
        narrow: &[u8],
        header: &mut [u8],
        values64: &mut Vec<i64>,
        values32: &mut Vec<i32>,
    ) -> Result<u8, FrameError> {
        let width = match got {
            k if Some(k) == wide => 8,
            k if narrow.contains(&k) => 4,
            _ => return Err(FrameError::Refused(format!("unexpected frame: kind {got}, {len} bytes"))),
        };
        let fixed = NONCE_LEN + header.len();
        if len < fixed || !(len - fixed).is_multiple_of(width) {
            return Err(FrameError::Refused(format!("a frame of kind {got} with {len} bytes")));
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.stream.read_exact(&mut nonce)?;
        self.stream.read_exact(header)?;
        let n = (len - fixed) / width;
        let bytes: &mut [u8] = match width {
            8 => {
                values64.resize(n, 0);
                bytemuck::cast_slice_mut(values64.as_mut_slice())
            }
            _ => {
                values32.resize(n, 0);
                bytemuck::cast_slice_mut(values32.as_mut_slice())
            }
        };
        self.stream.read_exact(bytes)?;
        let mut tag = [0u8; SEALED_TAG];
        self.stream.read_exact(&mut tag)?;
        let aad = sealed_aad(self.received, got, header);
        self.secret
            .seal
            .open_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), tag.into(), bytes, 0..)
            .map_err(|_| {
                FrameError::Refused(format!(
                    "frame {} (kind {got}) failed its authentication check: not sealed with the job's secret, or changed on the way",
                    self.received
                ))
            })?;
        self.received += 1;
        Ok(got)
    }

    /// Reads the next frame's kind and body length (bounded).
    pub fn head(&mut self) -> Result<(u8, usize), FrameError> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_BODY {
            return Err(FrameError::Refused(format!("a frame of {len} bytes is over the limit of {MAX_BODY}")));
        }
        Ok((head[4], len))
    }

    fn check(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), FrameError> {
        let mut tag = [0u8; TAG];
        self.stream.read_exact(&mut tag)?;
        let mut ctx = self.context(self.received, kind);
        parts.iter().for_each(|p| ctx.update(p));
        let expected = ctx.sign();
        // Compared in constant time: a forger learns nothing from timing.
        let differ = expected.as_ref().iter().zip(&tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(FrameError::Refused(format!(
                "frame {} (kind {kind}) failed its authentication check: not signed with the job's secret, or changed on the way",
                self.received
            )));
        }
        self.received += 1;
        Ok(())
    }
}

/// What a sealed frame's tag covers besides its values: its place on the connection, its kind, its header.
fn sealed_aad(seq: u64, kind: u8, header: &[u8]) -> Vec<u8> {
    [&seq.to_le_bytes()[..], &[kind], header].concat()
}

/// A JSON body.
pub fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Parses a JSON body.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Refused(format!("malformed message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(bytes: Vec<u8>, key: &[u8]) -> Framed<Cursor<Vec<u8>>> {
        Framed::new(Cursor::new(bytes), Secret::from_bytes(key))
    }

    fn sent(key: &[u8], frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut w = framed(vec![], key);
        for (kind, body) in frames {
            w.send(*kind, &[body]).unwrap();
        }
        w.stream.into_inner()
    }

    #[test]
    fn frames_round_trip_and_values_arrive_aligned() {
        let values: Vec<i64> = vec![1, -2, i64::MAX];
        let small: Vec<i32> = vec![7, -8];
        let mut w = framed(vec![], b"k");
        w.send(1, &[b"hello"]).unwrap();
        w.send_sealed(2, b"head", bytemuck::cast_slice_mut(&mut values.clone())).unwrap();
        w.send_sealed(3, b"next", bytemuck::cast_slice_mut(&mut small.clone())).unwrap();
        let sent = w.stream.into_inner();
        // Sealed values do not travel in clear.
        let clear: &[u8] = bytemuck::cast_slice(&values);
        assert!(!sent.windows(clear.len()).any(|w| w == clear));
        let mut r = framed(sent, b"k");
        assert_eq!(r.receive().unwrap(), (1, b"hello".to_vec()));
        let (mut head, mut got, mut narrow) = ([0u8; 4], vec![], vec![]);
        assert_eq!(r.receive_values(Some(2), &[3], &mut head, &mut got, &mut narrow).unwrap(), 2);
        assert_eq!((&head, got), (b"head", values));
        assert_eq!(r.receive_values(Some(2), &[3], &mut head, &mut vec![], &mut narrow).unwrap(), 3);
        assert_eq!((&head, narrow), (b"next", small));
    }

    #[test]
    fn a_sealed_frame_with_a_wrong_key_a_changed_byte_or_out_of_order_is_refused() {
        let mut w = framed(vec![], b"secret");
        w.send_sealed(2, b"head", &mut [1u8; 16]).unwrap();
        w.send_sealed(2, b"head", &mut [2u8; 16]).unwrap();
        let good = w.stream.into_inner();
        let one = good.len() / 2;
        let refused = |bytes: Vec<u8>, key: &[u8]| {
            let (mut head, mut wide, mut narrow) = ([0u8; 4], vec![], vec![]);
            matches!(
                framed(bytes, key).receive_values(Some(2), &[3], &mut head, &mut wide, &mut narrow),
                Err(FrameError::Refused(_))
            )
        };
        assert!(!refused(good[..one].to_vec(), b"secret"));
        assert!(refused(good[..one].to_vec(), b"guess"), "sealed with another key");
        for at in [6, 5 + NONCE_LEN + 1, one - 20, one - 1] {
            let mut tampered = good[..one].to_vec();
            tampered[at] ^= 1;
            assert!(refused(tampered, b"secret"), "byte {at} changed");
        }
        // The second frame first: its sequence number is not the expected one.
        assert!(refused(good[one..].to_vec(), b"secret"));
    }

    #[test]
    fn a_wrong_key_a_changed_byte_and_a_replay_are_refused() {
        let good = sent(b"secret", &[(1, b"register rank 0")]);
        let refused = |bytes: Vec<u8>, key: &[u8]| matches!(framed(bytes, key).receive(), Err(FrameError::Refused(_)));
        assert!(!refused(good.clone(), b"secret"));
        assert!(refused(good.clone(), b"guess"), "a frame signed with another key");
        let mut tampered = good.clone();
        tampered[10] ^= 1;
        assert!(refused(tampered, b"secret"), "a changed byte");
        // The same frame twice on one connection: the second is out of order.
        let mut r = framed([good.clone(), good].concat(), b"secret");
        r.receive().unwrap();
        assert!(matches!(r.receive(), Err(FrameError::Refused(_))));
        // A huge length is refused before anything is allocated.
        assert!(refused(vec![255, 255, 255, 255, 1], b"secret"));
    }
}
