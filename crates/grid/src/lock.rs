//! One process per run folder, also across the hosts of a cluster on a shared (NFS) file
//! system, where `flock` is not reliable: the lock is a file created with `O_EXCL`
//! (`create_new`), holding the host, the pid and the start time, whose modification time is
//! a heartbeat renewed every [`HEARTBEAT`] while the run goes on.
//!
//! Stale-lock rule: a lock is stale when its host is this host and its process is gone, or
//! when its heartbeat is older than [`STALE_AFTER`] (a host that died or lost the storage).
//! A stale lock is first renamed away (only one taker can win the rename), then a new one is
//! created with `O_EXCL`; the lock is removed when the run ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use lossbench_experiment::{RunDir, now_rfc3339};

/// How often a held lock's modification time is renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lock whose heartbeat is older than this is stale (ten missed heartbeats).
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// The run is held by another live process: not a failure of the run, which goes on there.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// A run folder held by this process; released (the file removed) on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    content: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Why a present lock is stale, or `None` while it is held.
fn stale(content: &str, modified: Option<SystemTime>, here: &str) -> Option<String> {
    let mut words = content.split_whitespace();
    let (lock_host, pid) = (
        words.next(),
        words.next().and_then(|p| p.parse::<u32>().ok()),
    );
    if let (Some(h), Some(pid)) = (lock_host, pid)
        && h == here
        && !Path::new(&format!("/proc/{pid}")).exists()
    {
        return Some(format!("process {pid} on {h} is gone"));
    }
    let age = modified.and_then(|m| SystemTime::now().duration_since(m).ok())?;
    (age > STALE_AFTER).then(|| format!("no heartbeat for {} s", age.as_secs()))
}

impl RunLock {
    /// Lock `run` or explain who holds it.
    pub fn acquire(run: &RunDir) -> Result<Self> {
        std::fs::create_dir_all(&run.path)
            .with_context(|| format!("cannot create {}", run.path.display()))?;
        let path = run.lock();
        let here = host();
        let content = format!("{here} {} {}\n", std::process::id(), now_rfc3339());
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(content.as_bytes())
                        .and_then(|()| file.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Self::hold(path, content, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                    let Some(reason) = stale(&holder, modified, &here) else {
                        let holder = holder.split_whitespace().collect::<Vec<_>>();
                        return Err(Busy(format!(
                            "{} is in use by another lossbench process (host {}, pid {}, since {}); wait for it to finish or stop it",
                            run.path.display(),
                            holder.first().unwrap_or(&"?"),
                            holder.get(1).unwrap_or(&"?"),
                            holder.get(2).unwrap_or(&"?"),
                        ))
                        .into());
                    };
                    // Rename, not remove: of several takers only one wins the rename, and it
                    // checks that it moved the stale lock it judged, not a fresh one.
                    let taken = path.with_extension(format!("stale.{}", std::process::id()));
                    if std::fs::rename(&path, &taken).is_ok() {
                        let moved = std::fs::read_to_string(&taken).unwrap_or_default();
                        if moved == holder {
                            let _ = std::fs::remove_file(&taken);
                            eprintln!("taking over {}: stale lock ({reason})", path.display());
                        } else {
                            let _ = std::fs::rename(&taken, &path);
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        Err(Busy(format!(
            "{} is being taken by another lossbench process at the same moment; try again",
            run.path.display()
        ))
        .into())
    }

    fn hold(path: PathBuf, content: String, file: File) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let heartbeat = std::thread::spawn(move || {
            let tick = Duration::from_millis(200);
            let mut waited = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= HEARTBEAT {
                    waited = Duration::ZERO;
                    let _ = file.set_modified(SystemTime::now());
                }
            }
        });
        Self {
            path,
            content,
            stop,
            heartbeat: Some(heartbeat),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // Remove only our own lock (a taker may have replaced a lock it judged stale).
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_rule() {
        let now = Some(SystemTime::now());
        let here = host();
        let me = format!("{here} {} 2026-01-01T00:00:00Z", std::process::id());
        assert_eq!(stale(&me, now, &here), None, "this live process holds it");
        // A pid that cannot exist on Linux (above pid_max's ceiling).
        let dead = format!("{here} 4294967 2026-01-01T00:00:00Z");
        assert!(stale(&dead, now, &here).is_some_and(|r| r.contains("is gone")));
        let other = "elsewhere 1 2026-01-01T00:00:00Z";
        assert_eq!(stale(other, now, &here), None, "another host's fresh lock");
        let old = SystemTime::now().checked_sub(STALE_AFTER * 2);
        assert!(stale(other, old, &here).is_some_and(|r| r.contains("no heartbeat")));
    }

    #[test]
    fn a_dead_holder_is_taken_over_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(dir.path(), "arcface", 0);
        std::fs::create_dir_all(&run.path).expect("mkdir");
        std::fs::write(
            run.lock(),
            format!("{} 4294967 2026-01-01T00:00:00Z\n", host()),
        )
        .expect("write");
        let held = RunLock::acquire(&run).expect("stale lock taken over");
        let err = RunLock::acquire(&run).expect_err("held").to_string();
        assert!(err.contains("in use by another lossbench process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(!run.lock().exists(), "released on drop");
        RunLock::acquire(&run).expect("free again");
    }
}
