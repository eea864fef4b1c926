//! An image larger than the pixel limit is refused before its pixels are
//! decoded: the peak of heap memory is measured by a counting allocator
//! (its own test binary, so no other test allocates meanwhile).

use kallista_data::image_file::decode_image;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A PNG header that claims 12000 x 12000 RGB (432 MB decoded; under the
/// image crate's own 512 MiB allocation limit) followed by a little data.
fn huge_png() -> Vec<u8> {
    let mut ihdr = 12000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&12000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // A stored (uncompressed) zlib block of 4 zero bytes.
    png.extend(chunk(b"IDAT", &[0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0, 0, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
    let png = huge_png();
    let before = NOW.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let e = decode_image(&png, 40_000_000).unwrap_err();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert!(e.contains("12000x12000") && e.contains("more than the limit"), "{e}");
    assert!(peak < 16 << 20, "refusing the image took {peak} bytes at peak");
    // The same header under a limit it fits is decoded: the limit is what stopped it.
    PEAK.store(NOW.load(Ordering::SeqCst), Ordering::SeqCst);
    let e = decode_image(&png, 200_000_000).unwrap_err();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert!(peak > 400_000_000, "decoding allocated only {peak} bytes at peak ({e})");
}
