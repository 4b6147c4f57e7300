//! `lossbench run EXP --devices 0,1,…`: the runs of the grid in grid order, at most one per
//! device at a time, each in its own `lossbench run --index N --device D` process (a run
//! owns its device's memory and its batch-norm state; a crash takes one run down, and
//! `--resume` continues every run exactly as on a cluster).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const INTERRUPTED: i32 = crate::INTERRUPTED as i32;

/// `--devices 0,1,3`: distinct device indices.
pub fn parse_devices(text: &str) -> Result<Vec<usize>> {
    let mut devices = Vec::new();
    for part in text.split(',') {
        let Ok(d) = part.trim().parse::<usize>() else {
            bail!("--devices {text:?}: {part:?} is not a device index (write e.g. 0,1,2,3)");
        };
        if devices.contains(&d) {
            bail!("--devices {text:?}: device {d} is listed twice");
        }
        devices.push(d);
    }
    Ok(devices)
}

/// One run to start: its grid index and a label for the log.
#[derive(Debug, Clone)]
pub struct Job {
    pub index: usize,
    pub label: String,
}

struct Running {
    device: usize,
    job: Job,
    child: Child,
}

/// Start `lossbench <args> --index N --device D` for every job in order on the first free
/// device; forward SIGTERM to the children when `stop` is set. Each child's output is
/// printed line by line, prefixed with its device.
pub fn run_on_devices(
    args: &[OsString],
    jobs: Vec<Job>,
    devices: &[usize],
    stop: &AtomicBool,
) -> Result<u8> {
    let exe = std::env::current_exe().context("cannot find the lossbench binary")?;
    let mut queue: VecDeque<Job> = jobs.into();
    let mut running: Vec<Running> = Vec::new();
    let mut finished: Vec<(Job, usize, Option<i32>)> = Vec::new();
    let mut forwarded = false;
    while !queue.is_empty() || !running.is_empty() {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && !forwarded {
            forwarded = true;
            for r in &running {
                // The child checkpoints the exact step and exits 75, as under Slurm.
                let _ = Command::new("kill")
                    .args(["-TERM", &r.child.id().to_string()])
                    .status();
            }
        }
        if !stopping {
            for &device in devices {
                if running.iter().any(|r| r.device == device) {
                    continue;
                }
                let Some(job) = queue.pop_front() else { break };
                running.push(spawn(&exe, args, job, device)?);
            }
        }
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].child.try_wait()? {
                let r = running.swap_remove(i);
                eprintln!(
                    "[device {}] {} finished: {}",
                    r.device,
                    r.job.label,
                    status
                        .code()
                        .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"))
                );
                finished.push((r.job, r.device, status.code()));
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    finished.sort_by_key(|(job, _, _)| job.index);
    println!("{:>5}  {:<28} {:>6}  exit", "index", "run", "device");
    for (job, device, code) in &finished {
        let code = code.map_or_else(|| "signal".to_string(), |c| c.to_string());
        println!("{:>5}  {:<28} {device:>6}  {code}", job.index, job.label);
    }
    let codes: Vec<Option<i32>> = finished.iter().map(|f| f.2).collect();
    if stop.load(Ordering::Relaxed) || codes.contains(&Some(INTERRUPTED)) || !queue.is_empty() {
        eprintln!("interrupted by a signal: rerun the same command to continue (runs resume)");
        return Ok(crate::INTERRUPTED);
    }
    if codes.iter().any(|c| *c != Some(0)) {
        eprintln!("error: some runs failed (see above); finished runs are kept, rerun to continue");
        return Ok(1);
    }
    Ok(0)
}

fn spawn(exe: &PathBuf, args: &[OsString], job: Job, device: usize) -> Result<Running> {
    let mut child = Command::new(exe)
        .args(args)
        .arg("--index")
        .arg(job.index.to_string())
        .arg("--device")
        .arg(device.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    eprintln!(
        "[device {device}] {} (index {}) started",
        job.label, job.index
    );
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[device {device}] {line}");
            }
        });
    }
    Ok(Running { device, job, child })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_distinct_indices() {
        assert_eq!(parse_devices("0,1, 3").expect("valid"), [0, 1, 3]);
        for bad in ["", "0,,1", "a", "0,0", "-1"] {
            assert!(parse_devices(bad).is_err(), "{bad:?}");
        }
    }
}
