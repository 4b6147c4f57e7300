//! flex's two kernel paths on x86-64: the AVX-512 and the AVX2 + FMA kernels train to the same
//! metrics, bit for bit (run on a CPU with AVX-512; elsewhere flex has one path and the test
//! says so), run.json records the path, and the switch between them refuses a value it does
//! not know.

use std::path::Path;

use lossbench_experiment::{RunDir, RunManifest};
use lossbench_train::cpu::{AVX2_KERNELS, KERNELS_SWITCH, kernel_level, model};
use support::{Tiny, lossbench_with_env, metrics, s, stderr};

mod support;

/// ArcFace (a margin, a normalised head) on a narrow ResNet-18, two epochs.
fn tiny() -> Tiny {
    Tiny {
        name: "kernels",
        synthetic: (4, 12, 4, 1),
        epochs: 2,
        losses: &[("arcface", "")],
        ..Tiny::default()
    }
}

fn train(exp: &Path, results: &Path, env: &[(&str, &str)]) -> RunManifest {
    let out = lossbench_with_env(
        &["run", s(exp), "--results", s(results), "--backend", "flex"],
        env,
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    RunManifest::read(&RunDir::new(&results.join("kernels"), "arcface", 0).manifest())
        .expect("run.json")
}

#[test]
fn avx512_and_avx2_kernels_train_to_the_same_metrics() {
    if kernel_level() != "x86-64-v4" {
        eprintln!(
            "skipped: this CPU ({}) has no AVX-512, so flex has one kernel path here",
            model()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tiny().write(dir.path(), "e.toml");
    let (wide, narrow) = (dir.path().join("avx512"), dir.path().join("avx2"));
    let m = train(&exp, &wide, &[]);
    assert_eq!(m.cpu_kernels.as_deref(), Some("x86-64-v4"));
    let m = train(&exp, &narrow, &[(KERNELS_SWITCH, AVX2_KERNELS)]);
    assert_eq!(m.cpu_kernels.as_deref(), Some(AVX2_KERNELS));
    assert_eq!(
        metrics(&wide.join("kernels"), "arcface", 0),
        metrics(&narrow.join("kernels"), "arcface", 0)
    );
}

#[test]
fn an_unknown_kernel_switch_is_one_error_and_trains_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tiny().write(dir.path(), "e.toml");
    let results = dir.path().join("results");
    let out = lossbench_with_env(
        &[
            "run",
            s(&exp),
            "--results",
            s(&results),
            "--backend",
            "flex",
        ],
        &[(KERNELS_SWITCH, "avx512")],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("LOSSBENCH_CPU_KERNELS=avx512 is not a kernel level")
            && lines[0].contains(AVX2_KERNELS),
        "{err}"
    );
    let run = RunDir::new(&results.join("kernels"), "arcface", 0);
    assert!(!run.metrics_parquet().exists() && !run.manifest().exists());
}
