//! Benchmarks of data sets of your own: decoding an image folder (first load) against reading
//! its cache (every later load), and retrieval metrics at Stanford Online Products' scale.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use lossbench_data::listing::read_folder;
use lossbench_data::own::{DecodeOptions, decode_listing};
use lossbench_train::retrieval::{l2_normalise, retrieval};
use rayon::prelude::*;

use crate::{Measurement, peak_rss_mib, rayon_threads, reset_peak_rss};

/// A photograph-like 500×375 JPEG (CUB-200's typical size): smooth colour fields, edges and
/// fine noise, so it neither compresses to nothing nor is pure noise.
fn photo(i: usize) -> image::RgbImage {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    image::RgbImage::from_fn(500, 375, |x, y| {
        state = lossbench_rng::splitmix64(state);
        let noise = (state >> 59) as f64;
        let (xf, yf) = (f64::from(x), f64::from(y));
        let phase = i as f64 * 0.7;
        let r = 128.0 + 90.0 * (xf / 37.0 + phase).sin() + noise;
        let g = 128.0 + 80.0 * (yf / 23.0 - phase).cos() + noise;
        let b = if (x / 60 + y / 45 + i as u32).is_multiple_of(3) {
            220.0
        } else {
            40.0
        } + noise;
        image::Rgb([r as u8, g as u8, b as u8])
    })
}

/// `n` JPEGs of 500×375 in `dir/train/c<k>/` and `dir/test/c<k>/`.
fn write_photos(dir: &Path, n: usize) -> Result<()> {
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let split = if i % 5 == 0 { "test" } else { "train" };
        let folder = dir.join(split).join(format!("c{}", i % 20));
        std::fs::create_dir_all(&folder)?;
        photo(i).save(folder.join(format!("{i:05}.jpg")))?;
        Ok(())
    })
}

/// Decode + resize a folder of JPEGs into 64×64, then load it again from the cache.
pub(crate) fn images(quick: bool, out: &mut Vec<Measurement>, log: &dyn Fn(&str)) -> Result<()> {
    let n = if quick { 200 } else { 2_000 };
    let root = std::env::temp_dir().join(format!("lossbench-bench-images-{}", std::process::id()));
    let (data, cache) = (root.join("data"), root.join("cache"));
    write_photos(&data, n)?;
    let options = DecodeOptions {
        side: 64,
        skip_unreadable: false,
        cache_dir: cache,
    };
    let load = || -> Result<f64> {
        let start = Instant::now();
        let listing = read_folder(&data)?;
        std::hint::black_box(decode_listing(&listing, &options, &|_| {})?);
        Ok(start.elapsed().as_secs_f64())
    };
    // First loads: decoded from scratch each time (the cache removed before each), median of
    // three — one load of freshly written files is at the mercy of their write-back.
    let first: Vec<f64> = (0..3)
        .map(|_| {
            let _ = std::fs::remove_dir_all(&options.cache_dir);
            load()
        })
        .collect::<Result<_>>()?;
    let first = crate::median(first);
    let cached: Vec<f64> = (0..5).map(|_| load()).collect::<Result<_>>()?;
    let cached = crate::median(cached);
    let _ = std::fs::remove_dir_all(&root);
    let threads = format!(
        "libjpeg-turbo + fast_image_resize + rayon, {} threads",
        rayon_threads()
    );
    log(&format!(
        "images: decode + resize {n} JPEGs 500×375 → 64×64: {:.0} img/s; cached reload {:.1} ms ({:.0}× faster)",
        n as f64 / first,
        1e3 * cached,
        first / cached
    ));
    for (name, seconds, repeats) in [
        ("decode + resize (first load)", first, 3),
        ("cached reload", cached, 5),
    ] {
        out.push(Measurement {
            group: "images".into(),
            name: name.into(),
            shape: format!("{n} JPEGs 500×375 → 64×64"),
            backend: threads.clone(),
            median_seconds: seconds,
            repeats,
            per_second: Some(n as f64 / seconds),
            peak_rss_mib: None,
            flops: None,
        });
    }
    Ok(())
}

/// Recall@K and MAP@R over SOP-sized features: 60,000 × 512, about 5 images per class.
pub(crate) fn retrieval_scale(
    quick: bool,
    out: &mut Vec<Measurement>,
    log: &dyn Fn(&str),
) -> Result<()> {
    let (n, dim) = if quick { (6_000, 128) } else { (60_000, 512) };
    let device = Device::flex();
    let labels: Vec<i64> = (0..n as i64).map(|i| i / 5).collect();
    let mut stream = lossbench_rng::Stream::new(1, lossbench_rng::Purpose::Synthetic, 77);
    // Each class a random direction, each image that direction plus noise.
    let centres = stream.normal_vec((n / 5 + 1) * dim, 1.0);
    let noise = stream.normal_vec(n * dim, 1.0);
    let features: Vec<f32> = (0..n * dim)
        .map(|k| centres[(k / dim / 5) * dim + k % dim] + 1.5 * noise[k])
        .collect();
    let embeddings = l2_normalise(Tensor::<2>::from_data(
        TensorData::new(features, [n, dim]),
        &device,
    ));
    reset_peak_rss();
    let start = Instant::now();
    let m = retrieval(&embeddings, &labels);
    let seconds = start.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    let m = m.ok_or_else(|| anyhow::anyhow!("no retrieval query counted"))?;
    log(&format!(
        "retrieval: {n} × {dim}: {seconds:.1} s, peak RSS {} MiB (MAP@R {:.3}, Recall@1 {:.3})",
        rss.map_or("?".into(), |r| format!("{r:.0}")),
        m.map_at_r,
        m.recall_at_1()
    ));
    out.push(Measurement {
        group: "retrieval".into(),
        name: "Recall@1/2/4/8 + MAP@R".into(),
        shape: format!("{n} × {dim}, 5 per class"),
        backend: format!("flex, {} threads", rayon_threads()),
        median_seconds: seconds,
        repeats: 1,
        per_second: Some(n as f64 / seconds),
        peak_rss_mib: rss,
        flops: Some(2.0 * (n as f64) * (n as f64) * dim as f64),
    });
    Ok(())
}
