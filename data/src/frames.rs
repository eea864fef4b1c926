//! Frame codecs. A clip's frames are stored one binary value per frame, as raw
//! RGB bytes (`raw`: H x W x 3, row-major) or an encoded image (`png`,
//! `jpeg`); `data/SCHEMA.md` gives the measurements behind the default (raw).

use image::{ExtendedColorType, ImageEncoder, ImageFormat};

/// How frames are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEncoding {
    Raw,
    Png,
    Jpeg { quality: u8 },
}

impl FrameEncoding {
    /// The value of the `frame_encoding` column.
    pub fn name(self) -> &'static str {
        match self {
            FrameEncoding::Raw => "raw",
            FrameEncoding::Png => "png",
            FrameEncoding::Jpeg { .. } => "jpeg",
        }
    }

    /// Parses `raw`, `png` or `jpeg` (quality 90).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(FrameEncoding::Raw),
            "png" => Some(FrameEncoding::Png),
            "jpeg" | "jpg" => Some(FrameEncoding::Jpeg { quality: 90 }),
            _ => None,
        }
    }
}

/// Encodes one RGB frame.
pub fn encode(rgb: &[u8], height: u32, width: u32, enc: FrameEncoding) -> Vec<u8> {
    match enc {
        FrameEncoding::Raw => rgb.to_vec(),
        FrameEncoding::Png => {
            let mut out = Vec::new();
            image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Sub,
            )
            .write_image(rgb, width, height, ExtendedColorType::Rgb8)
            .expect("in-memory PNG encoding of a valid RGB buffer");
            out
        }
        FrameEncoding::Jpeg { quality } => {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(rgb, width, height, ExtendedColorType::Rgb8)
                .expect("in-memory JPEG encoding of a valid RGB buffer");
            out
        }
    }
}

/// The encoding of a frame told by its bytes: PNG and JPEG by their
/// signatures, anything else of exactly `raw_bytes` bytes as raw RGB (a raw
/// frame of another size is reported by [`decode_into`] as such).
pub fn sniff_encoding(bytes: &[u8], raw_bytes: usize) -> &'static str {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() != raw_bytes && bytes.starts_with(PNG) {
        "png"
    } else if bytes.len() != raw_bytes && bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpeg"
    } else {
        "raw"
    }
}

/// Decodes one frame of `encoding` (`raw`, `png`, `jpeg`) into `out` (H x W x 3 bytes).
/// The error text says what is wrong; callers add the file and row.
pub fn decode_into(bytes: &[u8], encoding: &str, height: usize, width: usize, out: &mut [u8]) -> Result<(), String> {
    let want = height * width * 3;
    if out.len() != want {
        return Err(format!("output buffer holds {} bytes, frame needs {want}", out.len()));
    }
    match encoding {
        "raw" => {
            if bytes.len() != want {
                return Err(format!("raw frame has {} bytes, expected {want} ({height}x{width}x3)", bytes.len()));
            }
            out.copy_from_slice(bytes);
            Ok(())
        }
        "png" | "jpeg" => {
            let format = if encoding == "png" { ImageFormat::Png } else { ImageFormat::Jpeg };
            let img = image::load_from_memory_with_format(bytes, format)
                .map_err(|e| format!("cannot decode {encoding}: {e}"))?;
            if img.height() as usize != height || img.width() as usize != width {
                return Err(format!("{encoding} frame is {}x{}, expected {height}x{width}", img.height(), img.width()));
            }
            out.copy_from_slice(img.to_rgb8().as_raw());
            Ok(())
        }
        other => Err(format!("unknown frame encoding '{other}' (expected raw, png or jpeg)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| ((i * 7) % 251) as u8).collect()
    }

    #[test]
    fn raw_and_png_round_trip_exactly_jpeg_approximately() {
        let (h, w) = (12, 10);
        let rgb = gradient(h, w);
        for enc in [FrameEncoding::Raw, FrameEncoding::Png] {
            let mut out = vec![0; h * w * 3];
            decode_into(&encode(&rgb, h as u32, w as u32, enc), enc.name(), h, w, &mut out).unwrap();
            assert_eq!(out, rgb, "{}", enc.name());
        }
        let smooth: Vec<u8> = (0..h * w * 3).map(|i| (i / 3 % w * 20) as u8).collect();
        let mut out = vec![0; h * w * 3];
        decode_into(&encode(&smooth, h as u32, w as u32, FrameEncoding::Jpeg { quality: 95 }), "jpeg", h, w, &mut out)
            .unwrap();
        let err = out.iter().zip(&smooth).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(err < 40, "jpeg error {err}");
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let mut out = vec![0; 12];
        assert!(decode_into(&[1, 2, 3], "raw", 2, 2, &mut out).unwrap_err().contains("expected 12"));
        assert!(decode_into(&[1, 2, 3], "png", 2, 2, &mut out).unwrap_err().contains("cannot decode png"));
        assert!(decode_into(&[1, 2, 3], "gif", 2, 2, &mut out).unwrap_err().contains("unknown frame encoding"));
    }
}
