//! Backends and devices with the real binary: `lossbench devices`, a backend or device this
//! machine lacks (a one-line error, exit code 2), a precision a backend cannot compute in,
//! and `run --devices` (one process per run, the same results as one process).

use std::path::Path;
use std::process::Output;

use lossbench_experiment::RunDir;
use support::{Tiny, lossbench, metrics, stderr};

mod support;

/// Exit code 2 and one error line, the last (progress lines such as "generating the
/// synthetic data set" may come before it: the data is read before any device is opened).
fn assert_unavailable(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "not one error line: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn experiment(dir: &Path, extra_training: &str) -> std::path::PathBuf {
    Tiny {
        seeds: &[0, 1],
        synthetic: (4, 6, 2, 2),
        batch_size: 8,
        training: extra_training.to_string(),
        losses: &[("softmax", ""), ("normface", "params = { s = 8.0 }")],
        ..Tiny::default()
    }
    .write(dir, "e.toml")
}

#[test]
fn devices_lists_the_cpu_backends_and_explains_missing_ones() {
    let out = lossbench(&["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("flex ")), "{text}");
    // On a machine without an NVIDIA driver, CUDA is listed with the reason.
    assert!(text.lines().any(|l| l.starts_with("cuda ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("wgpu ")), "{text}");
}

/// The tested build has neither of burn's `autotune` and `fusion` features, and says so
/// (the GPU binary says "autotune on": README, "Which burn features each binary has").
#[test]
fn version_names_the_burn_features_of_the_build() {
    let out = lossbench(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        concat!(
            "lossbench ",
            env!("CARGO_PKG_VERSION"),
            " (burn autotune off, fusion off)"
        )
    );
}

/// On a machine without a desktop session, probing wgpu must not print libwayland's
/// complaint once per Vulkan instance (it did, six times).
#[test]
fn devices_without_a_desktop_session_prints_no_wayland_noise() {
    let out = support::command()
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .output()
        .expect("run lossbench");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_backend_or_device_is_exit_code_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path(), "");
    let exp = exp.to_str().expect("utf-8");
    let results = dir.path().join("results");
    let results = results.to_str().expect("utf-8");
    let has_cuda = String::from_utf8_lossy(&lossbench(&["devices"]).stdout)
        .lines()
        .any(|l| l.starts_with("cuda ") && l.contains("GPU"));
    if !has_cuda {
        assert_unavailable(
            &lossbench(&["run", exp, "--backend", "cuda", "--results", results]),
            "--backend cuda: ",
        );
    }
    assert_unavailable(
        &lossbench(&[
            "run",
            exp,
            "--backend",
            "flex",
            "--device",
            "3",
            "--results",
            results,
        ]),
        "--device 3: flex has one device (0)",
    );
    // Nothing was trained by the refused commands.
    assert!(
        !RunDir::new(&dir.path().join("results/e"), "softmax", 0)
            .manifest()
            .exists()
    );
}

#[test]
fn an_unknown_precision_is_refused_when_the_file_is_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path(), "precision = \"fp8\"");
    let out = lossbench(&["run", exp.to_str().expect("utf-8"), "--backend", "flex"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("training.precision = \"fp8\" is invalid: must be one of f32, bf16, f16"),
        "{err}"
    );
}

#[test]
fn run_on_several_devices_gives_the_results_of_one_process() {
    // flex has one device; `--devices 0` still runs every run in its own child process, in
    // grid order, and must give bit-identical metrics to a plain run.
    let dir = tempfile::tempdir().expect("tmp");
    let exp = experiment(dir.path(), "");
    let exp = exp.to_str().expect("utf-8");
    let one = dir.path().join("one");
    let many = dir.path().join("many");
    let plain = lossbench(&[
        "run",
        exp,
        "--backend",
        "flex",
        "--results",
        one.to_str().expect("utf-8"),
    ]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let spread = lossbench(&[
        "run",
        exp,
        "--backend",
        "flex",
        "--devices",
        "0",
        "--results",
        many.to_str().expect("utf-8"),
    ]);
    let log = stderr(&spread);
    assert!(spread.status.success(), "{log}");
    assert!(
        log.contains("[device 0] softmax seed 0 (index 0) started"),
        "{log}"
    );
    for (loss, seed) in [
        ("softmax", 0),
        ("softmax", 1),
        ("normface", 0),
        ("normface", 1),
    ] {
        let a = metrics(&one.join("e"), loss, seed);
        let b = metrics(&many.join("e"), loss, seed);
        assert_eq!(a.len(), 1);
        assert!(
            lossbench_experiment::same_rows(&a, &b),
            "{loss} seed {seed} differs"
        );
    }
    // A second call finds everything done and trains nothing.
    let again = lossbench(&[
        "run",
        exp,
        "--backend",
        "flex",
        "--devices",
        "0",
        "--results",
        many.to_str().expect("utf-8"),
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already completed"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn selfcheck_passes_on_flex_and_refuses_a_missing_backend() {
    let out = lossbench(&["selfcheck", "--backend", "flex", "--quick"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    for section in [
        "1. loss heads",
        "2. one training step",
        "arcface weight gradient",
    ] {
        assert!(stdout.contains(section), "{section} missing:\n{stdout}");
    }
    assert!(stdout.contains("quantities within tolerance"), "{stdout}");
    let has_cuda = String::from_utf8_lossy(&lossbench(&["devices"]).stdout)
        .lines()
        .any(|l| l.starts_with("cuda ") && l.contains("GPU"));
    if !has_cuda {
        assert_unavailable(
            &lossbench(&["selfcheck", "--backend", "cuda"]),
            "--backend cuda: ",
        );
    }
}
