//! Reading one image file as a person would see it: the format told by the
//! content (not the file name), the size checked against a limit before any
//! pixel is decoded, EXIF orientation applied, and an image whose data ends
//! early refused instead of completed with grey.
//!
//! Colour rule: every image becomes 8-bit RGB. Grey is copied to R, G and B;
//! palette images are expanded; 16-bit channels keep their high byte (rounded);
//! CMYK JPEGs are converted by the decoder; alpha is composited onto black
//! (a transparent pixel is black whatever colour it stores).

use crate::error::{DataError, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// The default of `--max-frame-pixels`: an 8K frame (7680 x 4320) fits.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// An image decoded to RGB: `height x width x 3` bytes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<u8>,
}

/// Reads the image file at `path` (PNG or JPEG, whatever its name says) as RGB,
/// refusing images of more than `max_pixels` pixels before decoding them.
pub fn read_image_file(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, max_pixels).map_err(|detail| DataError::BadImage { path: path.into(), detail })
}

/// [`read_image_file`] of bytes in memory; the error says what is wrong.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        Some(other) => return Err(format!("{other:?} images are not read (PNG and JPEG are)")),
        None => return Err(format!("not a PNG or JPEG image (it starts with {:02x?})", &bytes[..bytes.len().min(8)])),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG: its data ends before the end-of-image marker".into());
    }
    let mut decoder = reader.into_decoder().map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(format!(
            "image is {w}x{h} ({pixels} pixels), more than the limit of {max_pixels} (--max-frame-pixels)"
        ));
    }
    if pixels == 0 {
        return Err(format!("image is {w}x{h}: it has no pixels"));
    }
    // A malformed EXIF block is ignored, as viewers ignore it.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    img.apply_orientation(orientation);
    let rgb = if img.color().has_alpha() { over_black(img.to_rgba8()) } else { img.to_rgb8() };
    Ok(RgbImage { height: rgb.height() as usize, width: rgb.width() as usize, rgb: rgb.into_raw() })
}

/// Composites RGBA onto black (see the colour rule in the module docs).
fn over_black(rgba: image::RgbaImage) -> image::RgbImage {
    let (w, h) = rgba.dimensions();
    let rgb = rgba
        .into_raw()
        .chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u16;
            [0, 1, 2].map(|c| ((p[c] as u16 * a + 127) / 255) as u8)
        })
        .collect();
    image::RgbImage::from_raw(w, h, rgb).expect("3 bytes per pixel of a w x h image")
}

/// Whether a JPEG's entropy-coded data is followed by its end-of-image
/// marker. The decoder fills a cut-off image with grey without a word, so the
/// marker is looked for after the first start-of-scan: inside scan data a 0xFF
/// byte is always followed by 0x00 or a restart marker, never by 0xD9, and
/// before the first scan (where an EXIF thumbnail's own marker may sit) the
/// segments are skipped by their lengths.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 2; // after SOI
    loop {
        if at + 4 > bytes.len() || bytes[at] != 0xFF {
            return false;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            at += 2; // TEM and RSTn stand alone, without a length
            continue;
        }
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        at += 2 + len;
        if marker == 0xDA {
            break;
        }
    }
    bytes.get(at..).is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ExtendedColorType, ImageEncoder};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 200) as u8).collect();
        let mut out = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(&rgb, w, h, ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn a_whole_jpeg_is_complete_and_a_cut_one_is_not() {
        let j = jpeg(32, 24);
        assert!(jpeg_is_complete(&j));
        for cut in [j.len() - 2, j.len() / 2, 20, 3] {
            assert!(!jpeg_is_complete(&j[..cut]), "cut at {cut} of {}", j.len());
        }
        let e = decode_image(&j[..j.len() / 2], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.contains("truncated JPEG"), "{e}");
    }

    #[test]
    fn alpha_is_composited_onto_black_and_grey_is_copied() {
        let rgba = image::RgbaImage::from_raw(2, 1, vec![200, 100, 50, 255, 200, 100, 50, 0]).unwrap();
        assert_eq!(over_black(rgba).into_raw(), vec![200, 100, 50, 0, 0, 0]);
        let mut png = vec![];
        image::codecs::png::PngEncoder::new(&mut png).write_image(&[7, 9], 2, 1, ExtendedColorType::L8).unwrap();
        assert_eq!(decode_image(&png, 10).unwrap().rgb, vec![7, 7, 7, 9, 9, 9]);
        assert!(decode_image(&png, 1).unwrap_err().contains("more than the limit of 1"));
    }
}
