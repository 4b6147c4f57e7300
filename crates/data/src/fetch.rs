//! `lossbench data fetch`: download the official binary archive, verify its published MD5,
//! extract it and check the result — never leaving a half-written data set that looks valid.
//!
//! The archive is downloaded to `<name>.part` and renamed only once its checksum matches; it
//! is extracted into a temporary folder that is renamed into place only after every file has
//! been read and checked; a marker file then records the verified copy, so a second fetch is
//! a quick no-op.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use crate::{DataError, Kind, verify};

/// Marks a folder whose files were extracted from a verified archive and checked.
pub const VERIFIED_MARKER: &str = ".lossbench-verified";

/// Where an archive comes from and its expected checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    /// Lower-case hex MD5 of the archive.
    pub md5: String,
    /// File name of the archive.
    pub archive: String,
}

impl Source {
    /// The official archive and the MD5 published on the CIFAR page. The base URL can be
    /// replaced with `LOSSBENCH_CIFAR_MIRROR` (e.g. a local mirror).
    #[must_use]
    pub fn official(kind: Kind) -> Self {
        let (archive, md5) = match kind {
            Kind::Cifar10 => ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
            Kind::Cifar100 => (
                "cifar-100-binary.tar.gz",
                "03b5dce01913d631647c71ecec9e9cb8",
            ),
        };
        let base = std::env::var("LOSSBENCH_CIFAR_MIRROR")
            .unwrap_or_else(|_| "https://www.cs.toronto.edu/~kriz".to_string());
        Self {
            url: format!("{}/{archive}", base.trim_end_matches('/')),
            md5: md5.to_string(),
            archive: archive.to_string(),
        }
    }
}

/// What `fetch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A verified copy was already there.
    AlreadyPresent(PathBuf),
    /// Extracted from an archive already in the data folder.
    ExtractedLocalArchive(PathBuf),
    /// Downloaded, verified and extracted.
    Downloaded(PathBuf),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of a file, in lower-case hex.
pub fn md5_file(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(DataError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn manual_hint(dir: &Path, source: &Source, kind: Kind) -> String {
    format!(
        "Without internet access, download {} (MD5 {}) elsewhere, put it at {}, and run `lossbench data fetch {} --dir {}` (or `just reproduce`) again",
        source.archive,
        source.md5,
        dir.join(&source.archive).display(),
        kind.name(),
        dir.display()
    )
}

fn download(source: &Source, to: &Path, progress: bool) -> Result<(), String> {
    // A network that drops packets must end in an error, not a hang; the body itself may
    // take long on a slow link, so only connecting and the response head are bounded.
    let agent = ureq::config::Config::builder()
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut response = agent.get(&source.url).call().map_err(|e| e.to_string())?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = if progress {
        ProgressBar::new(total.unwrap_or(0))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(source.archive.clone());
    let mut reader = response.body_mut().as_reader();
    let mut file = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", to.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all()
        .map_err(|e| format!("{}: {e}", to.display()))?;
    bar.finish_and_clear();
    Ok(())
}

fn extract(archive: &Path, dir: &Path, kind: Kind) -> Result<PathBuf, DataError> {
    let staging = dir.join(format!(".{}.extracting", kind.folder()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(DataError::io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(DataError::io(&staging))?;
    let file = std::fs::File::open(archive).map_err(DataError::io(archive))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&staging)
        .map_err(|e| DataError::Invalid(format!("{}: cannot extract: {e}", archive.display())))?;
    let extracted = staging.join(kind.folder());
    // Read and check every file before the folder is put where `load` looks.
    verify(&extracted, kind)?;
    std::fs::write(extracted.join(VERIFIED_MARKER), b"").map_err(DataError::io(&extracted))?;
    let target = dir.join(kind.folder());
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(DataError::io(&target))?;
    }
    std::fs::rename(&extracted, &target).map_err(DataError::io(&target))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(target)
}

/// Make `dir/<folder>` hold a verified copy of `kind`, downloading from `source` if needed.
pub fn fetch(
    dir: &Path,
    kind: Kind,
    source: &Source,
    progress: bool,
) -> Result<Outcome, DataError> {
    let target = dir.join(kind.folder());
    if target.join(VERIFIED_MARKER).exists() && verify(&target, kind).is_ok() {
        return Ok(Outcome::AlreadyPresent(target));
    }
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let archive = dir.join(&source.archive);
    let had_archive = archive.exists();
    if !had_archive {
        let part = dir.join(format!("{}.part", source.archive));
        download(source, &part, progress).map_err(|reason| {
            let _ = std::fs::remove_file(&part);
            DataError::Download {
                url: source.url.clone(),
                reason,
                hint: manual_hint(dir, source, kind),
            }
        })?;
        let found = md5_file(&part)?;
        if found != source.md5 {
            let _ = std::fs::remove_file(&part);
            return Err(DataError::Checksum {
                path: part,
                found,
                expected: source.md5.clone(),
                hint: manual_hint(dir, source, kind),
            });
        }
        std::fs::rename(&part, &archive).map_err(DataError::io(&archive))?;
    } else {
        let found = md5_file(&archive)?;
        if found != source.md5 {
            return Err(DataError::Checksum {
                path: archive.clone(),
                found,
                expected: source.md5.clone(),
                hint: format!(
                    "The file is damaged or not the official archive: delete it, then {}",
                    manual_hint(dir, source, kind).to_lowercase()
                ),
            });
        }
    }
    let target = extract(&archive, dir, kind)?;
    Ok(if had_archive {
        Outcome::ExtractedLocalArchive(target)
    } else {
        Outcome::Downloaded(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthConfig, write};
    use std::net::TcpListener;

    /// A tar.gz of a small synthetic set laid out like the official archive.
    fn archive_bytes(kind: Kind) -> Vec<u8> {
        let src = tempfile::tempdir().expect("tmp");
        write(
            &src.path().join(kind.folder()),
            SynthConfig {
                classes: 3,
                train_per_class: 2,
                test_per_class: 1,
                seed: 1,
            },
        )
        .expect("synth");
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        tar.append_dir_all(kind.folder(), src.path().join(kind.folder()))
            .expect("tar");
        tar.into_inner().expect("tar").finish().expect("gz")
    }

    /// Serve `body` once per connection on a loopback port, for at most `n` requests.
    fn serve(body: Vec<u8>, n: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(n) {
                let mut stream = stream.expect("conn");
                let mut req = [0u8; 1024];
                let _ = stream.read(&mut req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/a.tar.gz")
    }

    #[test]
    fn downloads_verifies_extracts_and_is_idempotent() {
        let body = archive_bytes(Kind::Cifar100);
        let md5 = hex(&Md5::digest(&body));
        let source = Source {
            url: serve(body, 1),
            md5,
            archive: "a.tar.gz".into(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        let got = fetch(dir.path(), Kind::Cifar100, &source, false).expect("fetch");
        assert_eq!(
            got,
            Outcome::Downloaded(dir.path().join("cifar-100-binary"))
        );
        assert!(verify(&dir.path().join("cifar-100-binary"), Kind::Cifar100).is_ok());
        // The server is gone: a second fetch must not need it.
        let again = fetch(dir.path(), Kind::Cifar100, &source, false).expect("idempotent");
        assert!(matches!(again, Outcome::AlreadyPresent(_)));
    }

    #[test]
    fn bad_checksum_leaves_nothing_behind() {
        let body = archive_bytes(Kind::Cifar100);
        let source = Source {
            url: serve(body, 1),
            md5: "0".repeat(32),
            archive: "a.tar.gz".into(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        let err = fetch(dir.path(), Kind::Cifar100, &source, false)
            .expect_err("bad md5 accepted")
            .to_string();
        assert!(
            err.contains("does not match the published") && err.contains("put it at"),
            "{err}"
        );
        assert!(
            !dir.path().join("a.tar.gz").exists() && !dir.path().join("a.tar.gz.part").exists()
        );
        assert!(!dir.path().join("cifar-100-binary").exists());
    }

    #[test]
    fn offline_error_says_where_to_put_the_archive() {
        // Nothing listens on this port (bound, then closed).
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let source = Source {
            url: format!("http://127.0.0.1:{port}/x.tar.gz"),
            md5: "0".repeat(32),
            archive: "x.tar.gz".into(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        let err = fetch(dir.path(), Kind::Cifar100, &source, false)
            .expect_err("offline accepted")
            .to_string();
        assert!(err.starts_with("download of http://127.0.0.1"), "{err}");
        assert!(
            err.contains(&format!(
                "put it at {}",
                dir.path().join("x.tar.gz").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn local_archive_is_used_without_network() {
        let body = archive_bytes(Kind::Cifar100);
        let source = Source {
            url: "http://127.0.0.1:9/unused".into(),
            md5: hex(&Md5::digest(&body)),
            archive: "a.tar.gz".into(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.tar.gz"), &body).expect("write");
        let got = fetch(dir.path(), Kind::Cifar100, &source, false).expect("fetch");
        assert!(matches!(got, Outcome::ExtractedLocalArchive(_)));
    }

    #[test]
    fn official_sources_are_the_published_ones() {
        let s = Source::official(Kind::Cifar100);
        assert!(s.url.ends_with("/cifar-100-binary.tar.gz"));
        assert_eq!(s.md5, "03b5dce01913d631647c71ecec9e9cb8");
    }
}
