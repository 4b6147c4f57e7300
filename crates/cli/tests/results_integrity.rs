//! Results integrity with the real binary: a run is never continued under another recipe,
//! experiment or (silently) backend; `verify-results` finds damaged files; a full disk fails
//! the run cleanly and leaves the previous epoch's files intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lossbench_experiment::{RunDir, RunManifest, RunStatus, read_metrics};
use support::{Tiny, lossbench};

mod support;

/// Two losses, one seed, two epochs.
fn integrity() -> Tiny {
    Tiny {
        name: "integrity",
        synthetic: (4, 12, 4, 1),
        epochs: 2,
        schedule: "{ kind = \"cosine\" }",
        losses: &[
            ("softmax", ""),
            ("cosface", "params = { s = 8.0, m = 0.2 }"),
        ],
        ..Tiny::default()
    }
}

fn run(exp: &Path, results: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        exp.to_str().expect("utf-8"),
        "--results",
        results.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    lossbench(&args)
}

/// A refusal before anything is written: one error line, exit code 2 (bad input).
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "wanted `{needle}` in: {err}");
    }
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("ls") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_run_is_never_continued_under_another_recipe_or_experiment() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = integrity().write(dir.path(), "e.toml");
    let results = dir.path().join("results");
    succeeded(&run(
        &exp,
        &results,
        &["--backend", "flex", "--loss", "softmax"],
    ));
    let before = snapshot(&results);
    let manifest =
        RunManifest::read(&RunDir::new(&results.join("integrity"), "softmax", 0).manifest())
            .expect("run.json");
    let identity = manifest.identity.expect("identity recorded");
    assert_eq!(identity.values["training.lr"], "0.1");
    assert_eq!(identity.values["epochs"], "2");
    assert_eq!(identity.hash.len(), 64);

    // Another lr and more epochs, resumed into the same results: refused, nothing written.
    let changed = Tiny {
        lr: 0.05,
        ..integrity()
    }
    .write(dir.path(), "lr.toml");
    let out = run(
        &changed,
        &results,
        &[
            "--backend",
            "flex",
            "--resume",
            "--epochs",
            "3",
            "--loss",
            "softmax",
        ],
    );
    assert_one_line_error(
        &out,
        &[
            "softmax/seed-0 was trained with another setup",
            "epochs: 2 recorded, 3 now",
            "training.lr: 0.1 recorded, 0.05 now",
        ],
    );
    assert_eq!(snapshot(&results), before, "a refused run writes nothing");

    // More epochs alone are a new run too: the cosine schedule depends on them.
    let out = run(
        &exp,
        &results,
        &["--backend", "flex", "--resume", "--epochs", "3"],
    );
    assert_one_line_error(&out, &["epochs: 2 recorded, 3 now"]);
    assert_eq!(snapshot(&results), before);

    // A run of the changed experiment that has no files yet: the experiment copy refuses.
    let out = run(
        &changed,
        &results,
        &["--backend", "flex", "--loss", "cosface"],
    );
    assert_one_line_error(
        &out,
        &[
            "holds a different experiment named `integrity`",
            "training.lr",
            "another --results",
        ],
    );
    assert_eq!(snapshot(&results), before);

    // Existing results without --resume: refused up front, the run's files untouched.
    let out = run(&exp, &results, &["--backend", "flex", "--loss", "softmax"]);
    assert_one_line_error(
        &out,
        &["already holds results (status completed)", "--resume"],
    );
    assert_eq!(snapshot(&results), before);

    // The same experiment resumed: the finished run is skipped, the other one trains.
    succeeded(&run(&exp, &results, &["--backend", "flex", "--resume"]));
    let cosface = RunDir::new(&results.join("integrity"), "cosface", 0);
    assert_eq!(read_metrics(&cosface).expect("metrics").len(), 2);
}

/// The softmax run of [`integrity`] trained on flex: (experiment file, results root, run).
fn trained_softmax(dir: &Path) -> (PathBuf, PathBuf, RunDir) {
    let exp = integrity().write(dir, "e.toml");
    let results = dir.join("results");
    succeeded(&run(
        &exp,
        &results,
        &["--backend", "flex", "--loss", "softmax"],
    ));
    let run_dir = RunDir::new(&results.join("integrity"), "softmax", 0);
    (exp, results, run_dir)
}

/// Make a finished run an interrupted one (epoch 2's checkpoint lost, status failed), with
/// `edit` applied to its run.json as well.
fn interrupt(run_dir: &RunDir, edit: impl FnOnce(&mut RunManifest)) {
    std::fs::remove_file(run_dir.checkpoints().join("epoch-0002.ckpt")).expect("rm");
    let mut m = RunManifest::read(&run_dir.manifest()).expect("run.json");
    m.status = RunStatus::Failed;
    edit(&mut m);
    m.write(&run_dir.manifest()).expect("write");
}

#[test]
fn a_backend_switch_on_resume_needs_a_flag_and_is_recorded_per_epoch() {
    // The other backend is wgpu: lavapipe on a machine without a GPU (CI installs it).
    if lossbench_train::backend::probe_wgpu().is_none() {
        eprintln!("skipped: no Vulkan adapter for wgpu here, and flex is the only CPU backend");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results, run_dir) = trained_softmax(dir.path());
    interrupt(&run_dir, |_| {});

    let out = run(
        &exp,
        &results,
        &["--backend", "wgpu", "--resume", "--loss", "softmax"],
    );
    assert_one_line_error(
        &out,
        &[
            "trained on flex and would continue on wgpu",
            "--allow-backend-change",
        ],
    );

    succeeded(&run(
        &exp,
        &results,
        &[
            "--backend",
            "wgpu",
            "--resume",
            "--loss",
            "softmax",
            "--allow-backend-change",
        ],
    ));
    let backends: Vec<String> = read_metrics(&run_dir)
        .expect("metrics")
        .into_iter()
        .map(|r| r.backend)
        .collect();
    assert_eq!(backends, ["flex", "wgpu"]);
    let m = RunManifest::read(&run_dir.manifest()).expect("run.json");
    assert_eq!(
        (m.status, m.backend.as_str()),
        (RunStatus::Completed, "wgpu")
    );
}

#[test]
fn a_resume_on_a_cpu_with_other_kernels_needs_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results, run_dir) = trained_softmax(dir.path());
    let m = RunManifest::read(&run_dir.manifest()).expect("run.json");
    let here = m
        .cpu_kernels
        .clone()
        .expect("a CPU run records its kernel level");
    assert_eq!(here, lossbench_train::cpu::kernel_level());
    assert!(
        m.cpu.as_deref().is_some_and(|c| !c.is_empty()),
        "{:?}",
        m.cpu
    );
    // As if epoch 1 had run on a CPU at another level.
    interrupt(&run_dir, |m| {
        m.cpu_kernels = Some("x86-64-v9".into());
        m.cpu = Some("Imaginary CPU".into());
    });

    let out = run(
        &exp,
        &results,
        &["--backend", "flex", "--resume", "--loss", "softmax"],
    );
    assert_one_line_error(
        &out,
        &[
            "trained with flex's x86-64-v9 kernels (Imaginary CPU)",
            &format!("would continue with its {here} kernels"),
            "--allow-backend-change",
        ],
    );
    succeeded(&run(
        &exp,
        &results,
        &[
            "--backend",
            "flex",
            "--resume",
            "--loss",
            "softmax",
            "--allow-backend-change",
        ],
    ));
    let m = RunManifest::read(&run_dir.manifest()).expect("run.json");
    assert_eq!(
        (m.status, m.cpu_kernels.as_deref()),
        (RunStatus::Completed, Some(here.as_str()))
    );
}

#[test]
fn a_resume_between_avx512_and_avx2_kernels_needs_no_flag() {
    // Both compute the same numbers (vendor/gemm-common, vendor/macerator): no break to flag.
    let here = lossbench_train::cpu::kernel_level();
    let other = match here {
        "x86-64-v3" => "x86-64-v4",
        "x86-64-v4" => "x86-64-v3",
        _ => {
            eprintln!("skipped: flex runs {here} kernels here, neither AVX2 nor AVX-512 ones");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results, run_dir) = trained_softmax(dir.path());
    interrupt(&run_dir, |m| m.cpu_kernels = Some(other.into()));
    succeeded(&run(
        &exp,
        &results,
        &["--backend", "flex", "--resume", "--loss", "softmax"],
    ));
    let m = RunManifest::read(&run_dir.manifest()).expect("run.json");
    assert_eq!(
        (m.status, m.cpu_kernels.as_deref()),
        (RunStatus::Completed, Some(here))
    );
}

#[test]
fn verify_results_names_damaged_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = integrity().write(dir.path(), "e.toml");
    let results = dir.path().join("results");
    succeeded(&run(&exp, &results, &["--backend", "flex"]));
    let root = results.join("integrity");
    let verify = || lossbench(&["verify-results", root.to_str().expect("utf-8")]);
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("2 runs and 4 checkpoints checked: no problems"),
        "{text}"
    );

    let softmax = RunDir::new(&root, "softmax", 0);
    let cosface = RunDir::new(&root, "cosface", 0);
    let ckpt = cosface.checkpoints().join("epoch-0002.ckpt");
    let mut bytes = std::fs::read(&ckpt).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&ckpt, bytes).expect("flip a bit");
    std::fs::write(softmax.metrics_csv(), "experiment,loss\nx,y\n").expect("damage csv");
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cosface/seed-0: checkpoint epoch-0002.ckpt: checksum mismatch"),
        "{text}"
    );
    assert!(
        text.contains("softmax/seed-0:") && text.contains("metrics.csv"),
        "{text}"
    );
    assert!(text.contains("2 problems"), "{text}");

    // The report is still built: the intact Parquet file is used, and it says so.
    let out = lossbench(&[
        "report",
        root.to_str().expect("utf-8"),
        "--out",
        dir.path().join("report").to_str().expect("utf-8"),
    ]);
    succeeded(&out);
    let page = std::fs::read_to_string(dir.path().join("report/index.html")).expect("page");
    assert!(
        page.contains("used metrics.parquet"),
        "the fallback is reported"
    );
}

/// A results folder on a tiny tmpfs: the epoch whose checkpoint does not fit fails the run
/// with the reason in run.json and a non-zero exit; the previous epoch's files stay intact.
#[test]
fn a_full_disk_fails_the_run_and_keeps_the_previous_epoch() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = integrity().write(dir.path(), "e.toml");
    // Size the disk from a real run: one checkpoint fits, two do not.
    let reference = dir.path().join("reference");
    succeeded(&run(
        &exp,
        &reference,
        &["--backend", "flex", "--loss", "softmax"],
    ));
    let ckpt = RunDir::new(&reference.join("integrity"), "softmax", 0)
        .checkpoints()
        .join("epoch-0001.ckpt");
    let size = std::fs::metadata(&ckpt).expect("checkpoint").len();
    let mount_point = dir.path().join("small");
    std::fs::create_dir_all(&mount_point).expect("mkdir");
    let kib = (size + size / 2) / 1024 + 64;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(&mount_point)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {:?}",
            mounted.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount_point.clone());

    let out = run(
        &exp,
        &mount_point,
        &["--backend", "flex", "--loss", "softmax"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("No space left on device"), "{stdout}");
    let run_dir = RunDir::new(&mount_point.join("integrity"), "softmax", 0);
    let m = RunManifest::read(&run_dir.manifest()).expect("run.json readable");
    assert_eq!(m.status, RunStatus::Failed);
    assert!(
        m.error
            .as_deref()
            .is_some_and(|e| e.contains("No space left on device")),
        "{m:?}"
    );
    let rows = read_metrics(&run_dir).expect("metrics intact");
    assert_eq!(rows.len(), 1, "epoch 1 is kept, epoch 2 never half-written");
    assert_eq!(
        lossbench_experiment::read_metrics_csv(&run_dir).expect("csv intact"),
        rows
    );
    let left: Vec<String> = std::fs::read_dir(run_dir.checkpoints())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["epoch-0001.ckpt"], "no temporary file left behind");
    let out = lossbench(&[
        "verify-results",
        mount_point.join("integrity").to_str().expect("utf-8"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no problems"), "{text}");
}
