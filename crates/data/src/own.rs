//! A data set of your own: the images a [`Listing`] names, decoded in parallel into
//! `side`×`side` RGB by the rule of `decode.rs`, and packed once into a cache file so that
//! the next load reads one file, as loading CIFAR does.
//!
//! The cache key hashes what decides the pixels without reading the images: the rule's
//! version, the side, and every listed file's split, class, path, size and modification
//! time. A changed, added or removed image makes a new key (and the run identity, which
//! hashes the decoded pixels, changes with it); the payload carries a CRC-32 against a
//! damaged cache file, which is then decoded again.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{RULE_VERSION, decode_file};
use crate::listing::{Entry, Listing, SPLITS};
use crate::{DataError, image_len};

const MAGIC: &[u8; 8] = b"LBIMAGE1";

/// Every listed image decoded, in the listing's order, with labels into the sorted class
/// names of all splits together.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub side: usize,
    /// Sorted, unique class names over every split.
    pub names: Vec<String>,
    /// Index into [`SPLITS`] of each image.
    pub splits: Vec<u8>,
    /// Index into `names` of each image.
    pub labels: Vec<u16>,
    /// Channel-planar pixels, image after image.
    pub pixels: Vec<u8>,
    /// Files left out with `skip_unreadable`, each with why.
    pub skipped: Vec<String>,
    /// SHA-256 of the side, class names, splits, labels and pixels.
    pub fingerprint: String,
}

/// The JSON header of a cache file; the pixels follow it.
#[derive(Serialize, Deserialize)]
struct Header {
    side: usize,
    names: Vec<String>,
    splits: Vec<u8>,
    labels: Vec<u16>,
    skipped: Vec<String>,
    fingerprint: String,
    pixels_crc32: u32,
}

/// How to decode a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Side of the square images a run trains on (`[data] image_size`).
    pub side: usize,
    /// Leave unreadable images out (listed in `skipped`) instead of refusing the set.
    pub skip_unreadable: bool,
    /// Folder of the packed files (`images/<key>.bin` below it).
    pub cache_dir: PathBuf,
}

/// The user's cache folder: `$XDG_CACHE_HOME/lossbench`, else `~/.cache/lossbench`, else a
/// folder in the temporary directory.
#[must_use]
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("lossbench")
}

/// The cache key of a listing decoded with `options` (see the module comment).
fn cache_key(listing: &Listing, options: &DecodeOptions) -> Result<String, DataError> {
    let mut h = Sha256::new();
    h.update(b"lossbench-images\0");
    h.update(RULE_VERSION.to_le_bytes());
    h.update((options.side as u64).to_le_bytes());
    h.update([u8::from(options.skip_unreadable)]);
    // The files' sizes and times, asked for in parallel (a system call each: 2,000 of them
    // were a third of a cached reload), hashed in the listing's order.
    let stats: Vec<(u64, u128)> = listing
        .entries
        .par_iter()
        .map(|e| {
            let meta = std::fs::metadata(&e.path).map_err(DataError::io(&e.path))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok((meta.len(), modified))
        })
        .collect::<Result<_, DataError>>()?;
    for (e, &(len, modified)) in listing.entries.iter().zip(&stats) {
        for part in [
            e.split.as_bytes(),
            e.class.as_bytes(),
            e.path.as_os_str().as_encoded_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(len.to_le_bytes());
        h.update(modified.to_le_bytes());
    }
    Ok(crate::hex(&h.finalize()))
}

fn fingerprint(
    side: usize,
    names: &[String],
    splits: &[u8],
    labels: &[u16],
    pixels: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(b"lossbench-own-data\0");
    h.update((side as u64).to_le_bytes());
    for name in names {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.update(splits);
    for l in labels {
        h.update(l.to_le_bytes());
    }
    h.update(pixels);
    crate::hex(&h.finalize())
}

/// The listing decoded, from the cache when it holds it. `log` hears what is done.
pub fn decode_listing(
    listing: &Listing,
    options: &DecodeOptions,
    log: &dyn Fn(&str),
) -> Result<Decoded, DataError> {
    if !(8..=1024).contains(&options.side) {
        return Err(DataError::Invalid(format!(
            "data.image_size = {} is invalid: must be in [8, 1024] (the CIFAR ResNets need 8 pixels for their three stride-2 stages)",
            options.side
        )));
    }
    let key = cache_key(listing, options)?;
    let path = options.cache_dir.join("images").join(format!("{key}.bin"));
    if let Some(cached) = read_cache(&path) {
        return Ok(cached);
    }
    log(&format!(
        "decoding {} images of {} into {}×{} (cached in {})",
        listing.entries.len(),
        listing.origin.display(),
        options.side,
        options.side,
        path.display()
    ));
    let decoded = decode_all(listing, options)?;
    write_cache(&path, &decoded)?;
    Ok(decoded)
}

fn decode_all(listing: &Listing, options: &DecodeOptions) -> Result<Decoded, DataError> {
    let bar = ProgressBar::new(listing.entries.len() as u64).with_style(
        ProgressStyle::with_template("decoding {bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results: Vec<Result<Vec<u8>, String>> = listing
        .entries
        .par_iter()
        .map(|e| {
            let r = decode_file(&e.path, options.side);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let failures: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    if !failures.is_empty() && !options.skip_unreadable {
        let shown: Vec<&str> = failures.iter().take(5).map(String::as_str).collect();
        return Err(DataError::Invalid(format!(
            "{} of {} images cannot be read ({}{}); fix or remove them, or set data.skip_unreadable = true to leave them out",
            failures.len(),
            listing.entries.len(),
            shown.join("; "),
            if failures.len() > shown.len() {
                "; …"
            } else {
                ""
            }
        )));
    }
    let kept: Vec<(&Entry, Vec<u8>)> = listing
        .entries
        .iter()
        .zip(results)
        .filter_map(|(e, r)| r.ok().map(|p| (e, p)))
        .collect();
    let mut names: Vec<String> = kept.iter().map(|(e, _)| e.class.clone()).collect();
    names.sort();
    names.dedup();
    if names.len() > usize::from(u16::MAX) {
        return Err(DataError::Invalid(format!(
            "{}: {} classes; lossbench supports at most {}",
            listing.origin.display(),
            names.len(),
            u16::MAX
        )));
    }
    let mut pixels = Vec::with_capacity(kept.len() * image_len(options.side));
    let (mut splits, mut labels) = (Vec::new(), Vec::new());
    for (e, p) in &kept {
        let split = SPLITS.iter().position(|&s| s == e.split).unwrap_or(0);
        splits.push(split as u8);
        labels.push(names.binary_search(&e.class).unwrap_or(0) as u16);
        pixels.extend_from_slice(p);
    }
    let fingerprint = fingerprint(options.side, &names, &splits, &labels, &pixels);
    Ok(Decoded {
        side: options.side,
        names,
        splits,
        labels,
        pixels,
        skipped: failures,
        fingerprint,
    })
}

/// The cached set, or `None` when there is none or it is damaged (then decoded again). The
/// pixels are read straight into their own buffer (no second copy of the set), in chunks on
/// the threads, each chunk's CRC-32 computed while it is in the cache and the CRCs combined in
/// order (reading and checking 25 MB on one thread was most of a cached reload).
fn read_cache(path: &Path) -> Option<Decoded> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 16];
    file.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(head[8..].try_into().ok()?)).ok()?;
    let mut json = vec![0u8; len];
    file.read_exact(&mut json).ok()?;
    let header: Header = serde_json::from_slice(&json).ok()?;
    let want = header.labels.len().checked_mul(image_len(header.side))?;
    let start = (16 + len) as u64;
    // Exactly the pixels after the header: a longer file is as damaged as a shorter one.
    if file.metadata().ok()?.len() != start + want as u64
        || header.splits.len() != header.labels.len()
    {
        return None;
    }
    let mut pixels = vec![0u8; want];
    let crcs: Vec<crc32fast::Hasher> = pixels
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            file.read_exact_at(chunk, start + (i * CHUNK) as u64).ok()?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            Some(crc)
        })
        .collect::<Option<_>>()?;
    let mut crc = crc32fast::Hasher::new();
    crcs.iter().for_each(|c| crc.combine(c));
    (crc.finalize() == header.pixels_crc32).then_some(Decoded {
        side: header.side,
        names: header.names,
        splits: header.splits,
        labels: header.labels,
        pixels,
        skipped: header.skipped,
        fingerprint: header.fingerprint,
    })
}

/// Written to a temporary name and renamed, so a crash leaves no half file under the key.
fn write_cache(path: &Path, d: &Decoded) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let header = serde_json::to_vec(&Header {
        side: d.side,
        names: d.names.clone(),
        splits: d.splits.clone(),
        labels: d.labels.clone(),
        skipped: d.skipped.clone(),
        fingerprint: d.fingerprint.clone(),
        pixels_crc32: crc32fast::hash(&d.pixels),
    })
    .map_err(|e| DataError::Invalid(e.to_string()))?;
    let mut bytes = Vec::with_capacity(16 + header.len() + d.pixels.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&d.pixels);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(DataError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(DataError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::read_folder;
    use image::{Rgb, RgbImage};

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        for (i, f) in [
            "train/a/1.png",
            "train/b/2.png",
            "test/a/3.png",
            "test/b/4.png",
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            RgbImage::from_pixel(10, 12, Rgb([i as u8 * 50, 1, 2]))
                .save(&path)
                .expect("png");
        }
        dir
    }

    fn options(cache: &Path) -> DecodeOptions {
        DecodeOptions {
            side: 8,
            skip_unreadable: false,
            cache_dir: cache.to_path_buf(),
        }
    }

    #[test]
    fn decoded_once_then_read_from_the_cache() {
        let (data, cache) = (folder(), tempfile::tempdir().expect("tmp"));
        let listing = read_folder(data.path()).expect("listing");
        let lines = std::cell::RefCell::new(Vec::new());
        let log = |l: &str| lines.borrow_mut().push(l.to_string());
        let first = decode_listing(&listing, &options(cache.path()), &log).expect("decode");
        assert_eq!(first.names, ["a", "b"]);
        assert_eq!(
            (first.splits.as_slice(), first.labels.as_slice()),
            (&[0u8, 0, 2, 2][..], &[0u16, 1, 0, 1][..])
        );
        assert_eq!(first.pixels.len(), 4 * 3 * 64);
        assert_eq!(
            first.pixels[3 * 64 * 3],
            150,
            "the fourth image's red plane"
        );
        let again = decode_listing(&listing, &options(cache.path()), &log).expect("cached");
        assert_eq!(again, first);
        assert_eq!(
            lines.borrow().len(),
            1,
            "decoded once: {:?}",
            lines.borrow()
        );

        // A damaged cache file is decoded again; a changed image makes another key.
        let file = std::fs::read_dir(cache.path().join("images"))
            .expect("cache")
            .next()
            .expect("one file")
            .expect("entry")
            .path();
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, bytes).expect("write");
        assert_eq!(
            decode_listing(&listing, &options(cache.path()), &log).expect("redo"),
            first
        );
        assert_eq!(lines.borrow().len(), 2);
        RgbImage::from_pixel(10, 13, Rgb([9, 9, 9]))
            .save(data.path().join("test/b/4.png"))
            .expect("png");
        let changed = decode_listing(&listing, &options(cache.path()), &log).expect("changed");
        assert_ne!(changed.fingerprint, first.fingerprint);
        assert_eq!(lines.borrow().len(), 3);
    }

    #[test]
    fn unreadable_images_are_named_or_skipped() {
        let (data, cache) = (folder(), tempfile::tempdir().expect("tmp"));
        std::fs::write(
            data.path().join("train/b/2.png"),
            b"\x89PNG\r\n\x1a\n broken",
        )
        .expect("w");
        let listing = read_folder(data.path()).expect("listing");
        let err = decode_listing(&listing, &options(cache.path()), &|_| {})
            .expect_err("broken")
            .to_string();
        assert!(
            err.contains("1 of 4 images cannot be read") && err.contains("train/b/2.png"),
            "{err}"
        );
        assert!(err.contains("data.skip_unreadable = true"), "{err}");
        assert!(!cache.path().join("images").exists(), "nothing written");
        let skip = DecodeOptions {
            skip_unreadable: true,
            ..options(cache.path())
        };
        let d = decode_listing(&listing, &skip, &|_| {}).expect("skipped");
        assert_eq!(d.labels.len(), 3);
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0].contains("2.png"), "{:?}", d.skipped);
        let err = decode_listing(&listing, &DecodeOptions { side: 4, ..skip }, &|_| {})
            .expect_err("tiny")
            .to_string();
        assert!(err.contains("data.image_size = 4 is invalid"), "{err}");
    }
}
