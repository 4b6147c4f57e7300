//! One image file into the square RGB pixels a run trains on.
//!
//! The rule, torchvision's `Resize(N)` + `CenterCrop(N)` on a PIL image converted to RGB:
//!
//! 1. decode (PNG, JPEG, BMP or WebP, told apart by content, not by the file name) and apply
//!    the EXIF orientation (JPEG, WebP, PNG's `eXIf`); a JPEG is decoded at the smallest
//!    DCT scale (1, 1/2, 1/4, 1/8) that keeps its shorter side ≥ `N` — PIL's `draft` mode,
//!    what `Image.thumbnail` does: an area filter inside the decoder, 3–4× less work for
//!    photographs shrunk to CIFAR sizes;
//! 2. convert to 8-bit RGB: grey is repeated into the three channels, alpha is dropped (as
//!    PIL's `convert("RGB")`), palette images are expanded, 16-bit samples scaled to 8 bits;
//! 3. resize so the shorter side is `N` and the longer `floor(N · long / short)`, with a
//!    bilinear filter widened to the scale factor when shrinking (antialiased, the `image`
//!    crate's `Triangle`, as PIL's `BILINEAR`);
//! 4. crop the centre `N`×`N`, its offset `round((long − N) / 2)` with ties to even (Python's
//!    `round`, as torchvision's `center_crop`).

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Version of the rule above; part of the cache key, bumped whenever the pixels it gives for
/// a file change.
pub(crate) const RULE_VERSION: u32 = 2;

/// Why a file gives no image: the message names what is wrong, not the file (the caller does).
pub(crate) type Unreadable = String;

/// Decode `bytes` (the contents of `path`, named only in messages) into `side`×`side`
/// channel-planar RGB.
pub(crate) fn decode_square(bytes: &[u8], side: usize) -> Result<Vec<u8>, Unreadable> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a PNG, JPEG, BMP or WebP image".into());
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        if !jpeg_is_complete(bytes) {
            return Err("truncated JPEG (no end-of-image marker after the last scan)".into());
        }
        if let Some(rgb) = jpeg_at_scale(bytes, side)? {
            return Ok(planar(&resize_and_crop(&rgb, side as u32)));
        }
    }
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(planar(&resize_and_crop(&rgb, side as u32)))
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. The decoder fills a
/// truncated scan with grey without an error, so a cut-off download would train silently.
/// `FF D9` cannot occur inside entropy-coded data (an `FF` there is followed by `00`), and an
/// EXIF thumbnail's markers all come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// A JPEG decoded at the smallest DCT scale whose shorter side is still ≥ `side`, turned by
/// its EXIF orientation; `None` for a colour model this path does not take (CMYK: the
/// general decoder handles it).
fn jpeg_at_scale(bytes: &[u8], side: usize) -> Result<Option<RgbImage>, Unreadable> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no JPEG header")?;
    let n = u16::try_from(side).unwrap_or(u16::MAX);
    // The decoder picks the smallest scale reaching the request in *either* axis: ask only
    // for the shorter one.
    let request = if info.width <= info.height {
        (n, u16::MAX)
    } else {
        (u16::MAX, n)
    };
    let (w, h) = decoder
        .scale(request.0, request.1)
        .map_err(|e| e.to_string())?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no JPEG header")?;
    let (w, h) = (u32::from(w), u32::from(h));
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => RgbImage::from_raw(w, h, pixels),
        PixelFormat::L8 => image::GrayImage::from_raw(w, h, pixels)
            .map(|g| DynamicImage::ImageLuma8(g).into_rgb8()),
        PixelFormat::L16 | PixelFormat::CMYK32 => return Ok(None),
    }
    .ok_or("the decoded JPEG has the wrong number of pixels")?;
    let mut image = DynamicImage::ImageRgb8(rgb);
    if let Some(orientation) = decoder
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
    {
        image.apply_orientation(orientation);
    }
    Ok(Some(image.into_rgb8()))
}

/// Steps 3 and 4 of the rule.
fn resize_and_crop(rgb: &RgbImage, n: u32) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let (short, long) = (w.min(h), w.max(h));
    let long_n = (u64::from(n) * u64::from(long) / u64::from(short)) as u32;
    let (rw, rh) = if w <= h { (n, long_n) } else { (long_n, n) };
    let resized = image::imageops::resize(rgb, rw, rh, FilterType::Triangle);
    let offset = |extent: u32| round_half_even_halves(extent - n);
    image::imageops::crop_imm(&resized, offset(rw), offset(rh), n, n).to_image()
}

/// `round(d / 2)` with ties to even, as Python 3's `round`.
fn round_half_even_halves(d: u32) -> u32 {
    let half = d / 2;
    if d.is_multiple_of(2) || half.is_multiple_of(2) {
        half
    } else {
        half + 1
    }
}

/// Interleaved RGB into three channel planes (the CIFAR layout).
fn planar(rgb: &RgbImage) -> Vec<u8> {
    let plane = (rgb.width() * rgb.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, pixel) in rgb.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * plane + i] = pixel.0[ch];
        }
    }
    out
}

/// Read and decode one file; the error names the file.
pub(crate) fn decode_file(path: &Path, side: usize) -> Result<Vec<u8>, Unreadable> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_square(&bytes, side).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageFormat, Luma, Rgb, Rgba, RgbaImage};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).expect("encode");
        bytes.into_inner()
    }

    #[test]
    fn centre_crop_offsets_round_half_to_even_as_python() {
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
        let got: Vec<u32> = (0..8).map(round_half_even_halves).collect();
        assert_eq!(got, [0, 0, 1, 2, 2, 2, 3, 4]);
    }

    #[test]
    fn the_shorter_side_becomes_n_and_the_centre_is_kept() {
        // 12 wide, 4 high, each column a different red: resized ×1 in height it stays 12×4
        // only if n = 4; with n = 4 the crop keeps columns 4..8 (offset round(8/2) = 4).
        let img = RgbImage::from_fn(12, 4, |x, _| Rgb([(x * 20) as u8, 7, 9]));
        let out = resize_and_crop(&img, 4);
        assert_eq!(out.dimensions(), (4, 4));
        let reds: Vec<u8> = (0..4).map(|x| out.get_pixel(x, 2).0[0]).collect();
        assert_eq!(reds, [80, 100, 120, 140]);
        // A 2:1 image to n = 2: 4×2 → crop offset round(2/2) = 1 of columns 0..4.
        let tall = RgbImage::from_fn(2, 4, |_, y| Rgb([(y * 50) as u8, 0, 0]));
        let crop = resize_and_crop(&tall, 2);
        assert_eq!(crop.get_pixel(0, 0).0[0], 50);
        assert_eq!(crop.get_pixel(0, 1).0[0], 100);
    }

    #[test]
    fn shrinking_averages_instead_of_aliasing() {
        // A 1-pixel checkerboard shrunk 8× must come out mid-grey (an unfiltered sample
        // would be all black or all white).
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let v = if (x + y) % 2 == 0 { 255 } else { 0 };
            Rgb([v, v, v])
        });
        let out = resize_and_crop(&img, 8);
        for p in out.pixels() {
            assert!((100..=155).contains(&p.0[0]), "{:?}", p.0);
        }
    }

    #[test]
    fn grey_alpha_and_palette_free_modes_become_rgb() {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(5, 5, Luma([77])));
        let planes = decode_square(&encode(&grey, ImageFormat::Png), 5).expect("grey");
        assert!(planes.iter().all(|&v| v == 77), "grey repeated into RGB");
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(5, 5, Rgba([10, 20, 30, 0])));
        let planes = decode_square(&encode(&rgba, ImageFormat::Png), 5).expect("rgba");
        assert_eq!(
            (planes[0], planes[25], planes[50]),
            (10, 20, 30),
            "alpha dropped"
        );
        let la = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
            5,
            5,
            image::LumaA([200, 9]),
        ));
        let planes = decode_square(&encode(&la, ImageFormat::Png), 5).expect("grey+alpha");
        assert!(planes.iter().all(|&v| v == 200));
        let bmp = DynamicImage::ImageRgb8(RgbImage::from_pixel(5, 5, Rgb([1, 2, 3])));
        let planes = decode_square(&encode(&bmp, ImageFormat::Bmp), 5).expect("bmp");
        assert_eq!((planes[0], planes[25], planes[50]), (1, 2, 3));
        // WebP (lossless as the image crate writes it).
        let planes = decode_square(&encode(&bmp, ImageFormat::WebP), 5).expect("webp");
        assert_eq!((planes[0], planes[25], planes[50]), (1, 2, 3));
    }

    #[test]
    fn jpeg_decodes_close_to_its_source() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([200, 100, 50])));
        let planes = decode_square(&encode(&img, ImageFormat::Jpeg), 16).expect("jpeg");
        for (ch, want) in [200i32, 100, 50].into_iter().enumerate() {
            let got = i32::from(planes[ch * 256 + 77]);
            assert!((got - want).abs() <= 3, "channel {ch}: {got} vs {want}");
        }
    }

    #[test]
    fn a_jpeg_shrunk_in_the_decoder_matches_the_full_decode_resized() {
        // 256×192 smooth image to 32: decoded at 1/4 (64×48), then resized; against the
        // full-size decode resized by the same filter.
        let img = RgbImage::from_fn(256, 192, |x, y| {
            Rgb([
                (x as f64 / 256.0 * 255.0) as u8,
                (y as f64 / 192.0 * 255.0) as u8,
                90,
            ])
        });
        let bytes = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let scaled = decode_square(&bytes, 32).expect("scaled");
        let full = planar(&resize_and_crop(
            &image::load_from_memory(&bytes).expect("full").into_rgb8(),
            32,
        ));
        let worst = scaled
            .iter()
            .zip(&full)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .expect("pixels");
        assert!(worst <= 6, "off by {worst}");
    }

    /// A minimal EXIF APP1 segment holding one tag: Orientation (0x0112) = `value`.
    fn exif_segment(value: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec(); // big-endian, IFD at 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, next IFD = 0
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        segment.extend_from_slice(&payload);
        segment
    }

    #[test]
    fn jpeg_exif_orientation_is_applied() {
        // Left half black, right half white; orientation 3 (rotated 180°) must swap them.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 16, |x, _| {
            if x < 8 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        }));
        let plain = encode(&img, ImageFormat::Jpeg);
        let mut rotated = plain[..2].to_vec(); // SOI
        rotated.extend_from_slice(&exif_segment(3));
        rotated.extend_from_slice(&plain[2..]);
        let (a, b) = (
            decode_square(&plain, 16).expect("plain"),
            decode_square(&rotated, 16).expect("rotated"),
        );
        assert!(
            a[8 * 16 + 1] < 30 && a[8 * 16 + 14] > 225,
            "plain: black left"
        );
        assert!(
            b[8 * 16 + 1] > 225 && b[8 * 16 + 14] < 30,
            "rotated: white left"
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 32, |x, y| {
            Rgb([(x * 8) as u8, (y * 8) as u8, 3])
        }));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let err = decode_square(&jpeg[..jpeg.len() * 2 / 3], 8).expect_err("cut jpeg");
        assert!(err.contains("truncated JPEG"), "{err}");
        let png = encode(&img, ImageFormat::Png);
        assert!(decode_square(&png[..png.len() / 2], 8).is_err(), "cut png");
        let err = decode_square(b"label,path\n", 8).expect_err("text");
        assert!(err.contains("not a PNG, JPEG"), "{err}");
    }
}
