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
//!    bilinear filter widened to the scale factor when shrinking (antialiased: PIL's
//!    `BILINEAR` convolution, by `fast_image_resize`, whose SIMD paths give the same pixels as
//!    its scalar one);
//! 4. crop the centre `N`×`N`, its offset `round((long − N) / 2)` with ties to even (Python's
//!    `round`, as torchvision's `center_crop`).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Version of the rule above; part of the cache key, bumped whenever the pixels it gives for
/// a file change.
pub(crate) const RULE_VERSION: u32 = 4;

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
    let Some(last_scan) = memchr::memmem::rfind(bytes, &[0xFF, 0xDA]) else {
        return false;
    };
    memchr::memmem::find(&bytes[last_scan..], &[0xFF, 0xD9]).is_some()
}

/// A JPEG decoded at the smallest DCT scale whose shorter side is still ≥ `side`, turned by
/// its EXIF orientation; `None` for a colour model this path does not take (CMYK, YCCK: the
/// general decoder handles them).
///
/// libjpeg-turbo's decoder (mozjpeg's copy): its SIMD (x86 SSE2/AVX2, picked at run time)
/// and its plain C path give the same pixels, so neither the CPU nor whether `nasm` was
/// there at build time changes a run (test below, and `JSIMD_FORCENONE=1` to check by hand).
fn jpeg_at_scale(bytes: &[u8], side: usize) -> Result<Option<RgbImage>, Unreadable> {
    // libjpeg reports a damaged file by unwinding out of its error handler (no panic hook,
    // nothing printed); that is caught here and becomes the file's error.
    let decoded = std::panic::catch_unwind(|| libjpeg_scaled(bytes, side)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .map(|m| m.trim_start_matches("libjpeg fatal error: ").to_string())
            .unwrap_or_else(|| "the JPEG decoder failed".into())
    })??;
    let Some(ScaledJpeg { rgb, exif }) = decoded else {
        return Ok(None);
    };
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err("the image has no pixels".into());
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    if let Some(orientation) = exif
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
    {
        image.apply_orientation(orientation);
    }
    Ok(Some(image.into_rgb8()))
}

/// A JPEG as libjpeg-turbo decoded it at the DCT scale, and its EXIF block.
struct ScaledJpeg {
    rgb: RgbImage,
    exif: Option<Vec<u8>>,
}

/// The decoding itself (may unwind: see [`jpeg_at_scale`]).
fn libjpeg_scaled(bytes: &[u8], side: usize) -> Result<Option<ScaledJpeg>, Unreadable> {
    let mut decoder = mozjpeg::Decompress::with_markers(&[mozjpeg::Marker::APP(1)])
        .from_mem(bytes)
        .map_err(|e| e.to_string())?;
    if !matches!(
        decoder.color_space(),
        mozjpeg::ColorSpace::JCS_YCbCr
            | mozjpeg::ColorSpace::JCS_RGB
            | mozjpeg::ColorSpace::JCS_GRAYSCALE
    ) {
        return Ok(None);
    }
    let (w, h) = decoder.size();
    decoder.scale(dct_scale_eighths(w.min(h), side));
    let exif = decoder
        .markers()
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0").map(<[u8]>::to_vec));
    // Grey is repeated into R, G and B by the decoder itself.
    let mut started = decoder.rgb().map_err(|e| e.to_string())?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let pixels = started.read_scanlines::<u8>().map_err(|e| e.to_string())?;
    started.finish().map_err(|e| e.to_string())?;
    let rgb = RgbImage::from_raw(w, h, pixels)
        .ok_or("the decoded JPEG has the wrong number of pixels")?;
    Ok(Some(ScaledJpeg { rgb, exif }))
}

/// The smallest of libjpeg's scales 1/8, 2/8, 4/8 and 8/8 (PIL's `draft` choices) at which a
/// shorter side of `short` pixels (output `ceil(short · k / 8)`) is still ≥ `side`.
fn dct_scale_eighths(short: usize, side: usize) -> u8 {
    [1u8, 2, 4]
        .into_iter()
        .find(|&k| (short * usize::from(k)).div_ceil(8) >= side)
        .unwrap_or(8)
}

/// Steps 3 and 4 of the rule.
fn resize_and_crop(rgb: &RgbImage, n: u32) -> RgbImage {
    use fast_image_resize as fir;
    let (w, h) = rgb.dimensions();
    let (short, long) = (w.min(h), w.max(h));
    let long_n = (u64::from(n) * u64::from(long) / u64::from(short)) as u32;
    let (rw, rh) = if w <= h { (n, long_n) } else { (long_n, n) };
    let offset = |extent: u32| round_half_even_halves(extent - n);
    let resized = if (rw, rh) == (w, h) {
        rgb.clone()
    } else {
        let src = fir::images::ImageRef::new(w, h, rgb.as_raw(), fir::PixelType::U8x3)
            .expect("an RgbImage holds w·h·3 bytes");
        let mut dst = fir::images::Image::new(rw, rh, fir::PixelType::U8x3);
        let bilinear = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        fir::Resizer::new()
            .resize(&src, &mut dst, &bilinear)
            .expect("source and destination are both RGB8");
        RgbImage::from_raw(rw, rh, dst.into_vec()).expect("rw·rh·3 bytes")
    };
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

    /// PIL's separable convolution resampling with the bilinear (triangle) filter, in f64:
    /// weights `1 − |t|` over a support widened to the scale when shrinking, horizontal pass
    /// first, rounded to 8 bits between and after the passes (Pillow `Resample.c`).
    fn pil_bilinear(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
        fn weights(in_size: u32, out_size: u32) -> Vec<(usize, Vec<f64>)> {
            let scale = f64::from(in_size) / f64::from(out_size);
            let filter_scale = scale.max(1.0);
            let support = filter_scale;
            (0..out_size)
                .map(|o| {
                    let centre = (f64::from(o) + 0.5) * scale;
                    let lo = ((centre - support + 0.5) as i64).max(0) as usize;
                    let hi = ((centre + support + 0.5) as i64).min(i64::from(in_size)) as usize;
                    let mut k: Vec<f64> = (lo..hi)
                        .map(|i| {
                            let t = ((i as f64 - centre + 0.5) / filter_scale).abs();
                            if t < 1.0 { 1.0 - t } else { 0.0 }
                        })
                        .collect();
                    let total: f64 = k.iter().sum();
                    k.iter_mut().for_each(|w| *w /= total);
                    (lo, k)
                })
                .collect()
        }
        let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        let (w, h) = src.dimensions();
        let horizontal = weights(w, out_w);
        let mid = RgbImage::from_fn(out_w, h, |x, y| {
            let (lo, k) = &horizontal[x as usize];
            let mut acc = [0.0f64; 3];
            for (j, wt) in k.iter().enumerate() {
                let p = src.get_pixel((lo + j) as u32, y).0;
                for c in 0..3 {
                    acc[c] += wt * f64::from(p[c]);
                }
            }
            Rgb(acc.map(to_u8))
        });
        let vertical = weights(h, out_h);
        RgbImage::from_fn(out_w, out_h, |x, y| {
            let (lo, k) = &vertical[y as usize];
            let mut acc = [0.0f64; 3];
            for (j, wt) in k.iter().enumerate() {
                let p = mid.get_pixel(x, (lo + j) as u32).0;
                for c in 0..3 {
                    acc[c] += wt * f64::from(p[c]);
                }
            }
            Rgb(acc.map(to_u8))
        })
    }

    #[test]
    fn resizing_is_pils_bilinear_convolution() {
        // Noise (the hardest case for a filter) shrunk by non-integer factors and enlarged.
        let mut state = 7u64;
        let src = RgbImage::from_fn(125, 94, |_, _| {
            state = lossbench_rng::splitmix64(state);
            let b = state.to_le_bytes();
            Rgb([b[0], b[1], b[2]])
        });
        for (n, w, h) in [
            (64u32, 85u32, 64u32),
            (32, 42, 32),
            (8, 10, 8),
            (120, 159, 120),
        ] {
            let got = resize_and_crop(&src, n);
            let want = pil_bilinear(&src, w, h);
            let (ox, oy) = (round_half_even_halves(w - n), round_half_even_halves(h - n));
            let worst = (0..n)
                .flat_map(|y| (0..n).map(move |x| (x, y)))
                .flat_map(|(x, y)| {
                    let (a, b) = (got.get_pixel(x, y).0, want.get_pixel(x + ox, y + oy).0);
                    (0..3).map(move |c| (i32::from(a[c]) - i32::from(b[c])).abs())
                })
                .max()
                .expect("pixels");
            // Integer weights (fast_image_resize, as Pillow) against exact f64 ones: one
            // level of rounding apart at most.
            assert!(worst <= 1, "side {n}: off by {worst}");
        }
    }

    #[test]
    fn the_dct_scale_is_the_smallest_keeping_the_shorter_side() {
        assert_eq!(dct_scale_eighths(375, 64), 2, "CUB 500×375 → 125×94 for 64");
        assert_eq!(dct_scale_eighths(375, 32), 1, "→ 63×47 for 32");
        assert_eq!(dct_scale_eighths(256, 32), 1, "exactly 32 at 1/8");
        assert_eq!(dct_scale_eighths(255, 32), 1, "ceil(255/8) = 32");
        assert_eq!(dct_scale_eighths(248, 32), 2, "31 at 1/8 is short");
        assert_eq!(dct_scale_eighths(100, 64), 8, "no shrinking below the side");
        assert_eq!(
            dct_scale_eighths(30, 64),
            8,
            "smaller than the side: full size, resize up"
        );
    }

    #[test]
    fn a_damaged_jpeg_header_is_an_error_not_a_panic() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([9, 9, 9])));
        let mut jpeg = encode(&img, ImageFormat::Jpeg);
        // The baseline frame header FF C0, length (2 bytes), then the sample precision: 7
        // bits is not a JPEG libjpeg reads (fatal inside the C decoder).
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("SOF0");
        jpeg[sof + 4] = 7;
        let err = decode_square(&jpeg, 8).expect_err("precision 7");
        assert!(err.contains("precision"), "{err}");
    }

    #[test]
    fn palette_pngs_become_rgb_with_and_without_transparency() {
        let palette = [10u8, 20, 30, 200, 100, 50];
        for transparent in [false, true] {
            let mut bytes = Vec::new();
            {
                let mut encoder = png::Encoder::new(&mut bytes, 4, 4);
                encoder.set_color(png::ColorType::Indexed);
                encoder.set_depth(png::BitDepth::Eight);
                encoder.set_palette(palette.to_vec());
                if transparent {
                    encoder.set_trns(vec![0u8, 255]);
                }
                let mut writer = encoder.write_header().expect("header");
                // Left half entry 0, right half entry 1.
                let indices: Vec<u8> = (0..16).map(|i| u8::from(i % 4 >= 2)).collect();
                writer.write_image_data(&indices).expect("pixels");
            }
            let planes = decode_square(&bytes, 4).expect("palette png");
            let pixel = |i: usize| (planes[i], planes[16 + i], planes[32 + i]);
            assert_eq!(
                pixel(0),
                (10, 20, 30),
                "entry 0 (transparent: {transparent})"
            );
            assert_eq!(
                pixel(3),
                (200, 100, 50),
                "entry 1 (transparent: {transparent})"
            );
        }
    }

    /// Pixels of JPEGs in every chroma layout the encoders here write, at every DCT scale,
    /// hashed: what the test below compares across libjpeg-turbo's SIMD paths.
    fn jpeg_fingerprints() -> String {
        let photo = RgbImage::from_fn(203, 157, |x, y| {
            let v = (x * 7 + y * 13) ^ (x * y);
            Rgb([v as u8, (v >> 3) as u8, (x + 2 * y) as u8])
        });
        let grey = DynamicImage::ImageRgb8(photo.clone()).into_luma8();
        let files = [
            encode(&DynamicImage::ImageRgb8(photo), ImageFormat::Jpeg),
            encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Jpeg),
        ];
        let mut out = String::new();
        for (f, bytes) in files.iter().enumerate() {
            for side in [8, 20, 40, 80, 157] {
                let planes = decode_square(bytes, side).expect("jpeg");
                let hash = planes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                out += &format!("{f} {side} {hash:016x}\n");
            }
        }
        out
    }

    /// Run by the test below in a child process with one of libjpeg-turbo's switches set.
    #[test]
    #[ignore = "helper of simd_paths_give_the_same_pixels"]
    fn print_jpeg_fingerprints() {
        println!("FINGERPRINTS\n{}END", jpeg_fingerprints());
    }

    #[test]
    fn simd_paths_give_the_same_pixels() {
        // libjpeg-turbo picks AVX2, SSE2 or plain C once per process (its JSIMD_FORCE*
        // variables), so each path runs in its own child. Built without nasm, all three are
        // the C path and this compares C with itself.
        let exe = std::env::current_exe().expect("test binary");
        let run = |switch: Option<&str>| {
            let mut command = std::process::Command::new(&exe);
            command.args([
                "--exact",
                "decode::tests::print_jpeg_fingerprints",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ]);
            for var in ["JSIMD_FORCENONE", "JSIMD_FORCESSE2", "JSIMD_FORCEAVX2"] {
                command.env_remove(var);
            }
            if let Some(var) = switch {
                command.env(var, "1");
            }
            let output = command.output().expect("child test");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let start = text.find("FINGERPRINTS\n").expect("fingerprints printed") + 13;
            let end = text.find("END").expect("end");
            text[start..end].to_string()
        };
        let here = jpeg_fingerprints();
        assert_eq!(here.lines().count(), 10);
        for switch in [
            None,
            Some("JSIMD_FORCENONE"),
            Some("JSIMD_FORCESSE2"),
            Some("JSIMD_FORCEAVX2"),
        ] {
            assert_eq!(run(switch), here, "{switch:?}");
        }
    }
}
