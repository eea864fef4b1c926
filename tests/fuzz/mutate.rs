//! The mutations: byte-level (flip, set to a boundary value, insert, delete,
//! duplicate, truncate, splice with another corpus entry) and, for text
//! formats, tokens of the format (numbers at their limits, `.nan`, nesting,
//! YAML anchors and tags) inserted or swapped in.

use rand::{Rng, RngCore};

const BYTES: [u8; 10] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, b'"', b'\n', b'{', b'['];
const NUMBERS: [u64; 12] = [0, 1, 2, 127, 255, 256, 65535, 65536, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, u64::MAX];
const TOKENS: [&str; 34] = [
    ".nan",
    "-.inf",
    ".inf",
    "-1",
    "0",
    "1e309",
    "-0.0",
    "4294967296",
    "18446744073709551616",
    "null",
    "~",
    "true",
    "[]",
    "{}",
    "[[[[[[[[",
    "{{{{",
    "\"",
    "'",
    ",",
    ":",
    "\n",
    "\n  ",
    "- ",
    "&a ",
    "*a",
    "!!binary ",
    "!!str ",
    "<<: *a",
    "\u{feff}",
    "\u{0}",
    "\\u0000",
    "\u{1F600}",
    "1.5",
    "NaN",
];

/// One mutant of `input`, `others` giving material to splice from.
pub fn mutate(rng: &mut impl Rng, input: &[u8], others: &[Vec<u8>], text: bool) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.gen_range(0..4) {
        mutate_once(rng, &mut out, others, text);
    }
    out
}

fn mutate_once(rng: &mut impl Rng, out: &mut Vec<u8>, others: &[Vec<u8>], text: bool) {
    let at = |rng: &mut dyn RngCore, len: usize| if len == 0 { 0 } else { rng.gen_range(0..=len) };
    let kinds = if text { 10 } else { 8 };
    match rng.gen_range(0..kinds) {
        0 if !out.is_empty() => {
            let i = rng.gen_range(0..out.len());
            out[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if !out.is_empty() => {
            let i = rng.gen_range(0..out.len());
            out[i] = BYTES[rng.gen_range(0..BYTES.len())];
        }
        2 if out.len() >= 4 => {
            // A boundary number over 1, 2, 4 or 8 bytes, either endianness.
            let width = [1, 2, 4, 8][rng.gen_range(0..4)].min(out.len());
            let i = rng.gen_range(0..=out.len() - width);
            let n = NUMBERS[rng.gen_range(0..NUMBERS.len())];
            let bytes = if rng.gen() { n.to_le_bytes() } else { n.to_be_bytes() };
            out[i..i + width].copy_from_slice(&bytes[..width]);
        }
        3 if !out.is_empty() => {
            let start = rng.gen_range(0..out.len());
            let end = (start + 1 + rng.gen_range(0..64)).min(out.len());
            out.drain(start..end);
        }
        4 if !out.is_empty() => {
            let start = rng.gen_range(0..out.len());
            let end = (start + 1 + rng.gen_range(0..256)).min(out.len());
            let piece = out[start..end].to_vec();
            let to = at(rng, out.len());
            out.splice(to..to, piece);
        }
        5 => {
            let cut = at(rng, out.len());
            out.truncate(cut);
        }
        6 if !others.is_empty() => {
            let other = &others[rng.gen_range(0..others.len())];
            if !other.is_empty() {
                let start = rng.gen_range(0..other.len());
                let end = (start + 1 + rng.gen_range(0..512)).min(other.len());
                let to = at(rng, out.len());
                out.splice(to..to, other[start..end].iter().copied());
            }
        }
        7 => {
            let to = at(rng, out.len());
            let n = rng.gen_range(1..16);
            out.splice(to..to, (0..n).map(|_| rng.gen::<u8>()));
        }
        8 => {
            let to = at(rng, out.len());
            out.splice(to..to, TOKENS[rng.gen_range(0..TOKENS.len())].bytes());
        }
        _ => {
            // Replace a run of digits or a word with a token.
            if out.is_empty() {
                return;
            }
            let i = rng.gen_range(0..out.len());
            let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
            let (mut s, mut e) = (i, i);
            while s > 0 && is_word(out[s - 1]) {
                s -= 1;
            }
            while e < out.len() && is_word(out[e]) {
                e += 1;
            }
            out.splice(s..e, TOKENS[rng.gen_range(0..TOKENS.len())].bytes());
        }
    }
}
