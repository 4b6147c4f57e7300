//! Crash safety with a real process: SIGKILL in the middle of an epoch, then `--resume`.
//! Slow (a few training runs): `just test-slow`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lossbench_experiment::{EpochRecord, RunDir, RunManifest, RunStatus};
use support::{Tiny, command, metrics};

mod support;

/// One CosFace run of 5 epochs, long enough to be killed in the middle of one.
fn experiment(dir: &Path) -> std::path::PathBuf {
    Tiny {
        name: "crash",
        synthetic: (5, 120, 10, 2),
        epochs: 5,
        batch_size: 20,
        lr: 0.05,
        schedule: "{ kind = \"cosine\" }",
        training: "warmup_epochs = 1".into(),
        losses: &[("cosface", "params = { s = 8.0, m = 0.2 }")],
        ..Tiny::default()
    }
    .write(dir, "crash.toml")
}

fn run(exp: &Path, results: &Path, resume: bool) -> std::process::Child {
    let mut cmd = command();
    cmd.args([
        "run",
        exp.to_str().expect("utf-8"),
        "--backend",
        "flex",
        "--results",
        results.to_str().expect("utf-8"),
    ]);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

fn rows(results: &Path) -> Vec<EpochRecord> {
    metrics(&results.join("crash"), "cosface", 0)
}

#[test]
#[ignore = "slow: trains three small runs in child processes"]
fn sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path());
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    assert!(run(&exp, &full, false).wait().expect("wait").success());
    let reference = rows(&full);
    assert_eq!(reference.len(), 5);

    let mut child = run(&exp, &cut, false);
    let started = Instant::now();
    // Kill while epoch 3 is being trained: 2 epochs are on disk, the third is not.
    loop {
        let done = rows(&cut).len();
        if done >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "run made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let partial = rows(&cut);
    assert!(
        (2..5).contains(&partial.len()),
        "{} epochs on disk after the kill",
        partial.len()
    );
    assert_eq!(
        partial[..],
        reference[..partial.len()],
        "finished epochs before the crash are exact"
    );
    let manifest = RunManifest::read(&RunDir::new(&cut.join("crash"), "cosface", 0).manifest())
        .expect("run.json readable");
    assert_eq!(manifest.status, RunStatus::Running);

    // Corrupt the newest checkpoint: resume must fall back to the previous one.
    let ckpts = RunDir::new(&cut.join("crash"), "cosface", 0).checkpoints();
    let mut files: Vec<_> = std::fs::read_dir(&ckpts)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    files.sort();
    let newest = files.last().expect("a checkpoint").clone();
    let bytes = std::fs::read(&newest).expect("read");
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).expect("truncate");

    assert!(run(&exp, &cut, true).wait().expect("wait").success());
    assert_eq!(
        rows(&cut),
        reference,
        "resumed run differs from the uninterrupted one"
    );
    let manifest = RunManifest::read(&RunDir::new(&cut.join("crash"), "cosface", 0).manifest())
        .expect("run.json");
    assert_eq!(manifest.status, RunStatus::Completed);
}

#[test]
#[ignore = "slow: trains a small run in a child process"]
fn a_second_process_on_the_same_run_refuses() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path());
    let results = dir.path().join("r");
    let mut first = run(&exp, &results, false);
    let run_dir = RunDir::new(&results.join("crash"), "cosface", 0);
    let started = Instant::now();
    while !run_dir.manifest().exists() {
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = command()
        .args([
            "run",
            exp.to_str().expect("utf-8"),
            "--backend",
            "flex",
            "--resume",
            "--results",
            results.to_str().expect("utf-8"),
        ])
        .output()
        .expect("second");
    first.kill().expect("kill");
    first.wait().expect("reap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("in use by another lossbench process"),
        "{stdout}"
    );
    // The summary table says the run is busy elsewhere, not that it failed.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("cosface"))
        .unwrap_or_default();
    assert!(row.contains(" busy "), "{stdout}");
}

#[test]
#[ignore = "slow: trains small runs in child processes"]
fn sigterm_mid_epoch_interrupts_cleanly_and_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path());
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    assert!(run(&exp, &full, false).wait().expect("wait").success());
    let reference = rows(&full);

    let mut child = run(&exp, &cut, false);
    let started = Instant::now();
    while rows(&cut).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "run made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("reap");
    assert_eq!(
        status.code(),
        Some(75),
        "interrupted runs exit with EX_TEMPFAIL"
    );
    let run_dir = RunDir::new(&cut.join("crash"), "cosface", 0);
    let manifest = RunManifest::read(&run_dir.manifest()).expect("run.json");
    assert_eq!(manifest.status, RunStatus::Interrupted);
    let partial = rows(&cut);
    assert!((2..5).contains(&partial.len()), "{} epochs", partial.len());
    assert_eq!(partial[..], reference[..partial.len()]);
    let mid_epoch = run_dir
        .checkpoints()
        .join(format!("epoch-{:04}.partial.ckpt", partial.len()));
    assert!(mid_epoch.exists(), "no checkpoint of the point of the stop");

    assert!(run(&exp, &cut, true).wait().expect("wait").success());
    assert_eq!(
        rows(&cut),
        reference,
        "resumed run differs from the uninterrupted one"
    );
    let manifest = RunManifest::read(&run_dir.manifest()).expect("run.json");
    assert_eq!(manifest.status, RunStatus::Completed);
}
