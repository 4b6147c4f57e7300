//! The report rebuilt from hand-made result files: statistics, a diverged seed, an
//! unfinished run and the error for an empty or missing results folder.

use std::collections::BTreeMap;
use std::path::Path;

use lossbench_experiment::{
    EXPERIMENT_COPY, EpochRecord, Experiment, RunDir, RunManifest, RunStatus, write_metrics,
};

const EXPERIMENT: &str = r#"
name = "handmade"
seeds = [0, 1, 2]

[data]
set = "cifar100"
dir = "data/none"

[model]
arch = "resnet18"

[training]
epochs = 3
batch_size = 8
lr = 0.1
schedule = { kind = "constant" }

[[losses]]
name = "softmax"

[[losses]]
name = "arcface"

[claimed.arcface]
top1 = 0.9
epochs = 3
"#;

fn record(loss: &str, seed: u64, epoch: u32, top1: f64) -> EpochRecord {
    EpochRecord {
        experiment: "handmade".into(),
        loss: loss.into(),
        seed,
        epoch,
        iteration: u64::from(epoch) * 10,
        lr: 0.1,
        train_loss: 3.0 / f64::from(epoch),
        train_top1: top1,
        test_loss: 2.0,
        test_top1: top1,
        test_top5: (top1 + 0.2).min(1.0),
        target_angle_deg: 70.0 - f64::from(epoch),
        nearest_other_angle_deg: 80.0,
        epoch_seconds: 2.0,
        images_per_second: 100.0,
    }
}

fn write_run(root: &Path, loss: &str, seed: u64, status: RunStatus, curve: &[f64]) {
    let run = RunDir::new(root, loss, seed);
    std::fs::create_dir_all(&run.path).expect("mkdir");
    let records: Vec<EpochRecord> = curve
        .iter()
        .enumerate()
        .map(|(i, &t)| record(loss, seed, i as u32 + 1, t))
        .collect();
    write_metrics(&run, &records).expect("metrics");
    RunManifest {
        experiment: "handmade".into(),
        loss: loss.into(),
        seed,
        params: BTreeMap::new(),
        epochs: 3,
        epochs_completed: curve.len() as u32,
        status,
        diverged_at_step: (status == RunStatus::Diverged).then_some(17),
        error: None,
        backend: "flex".into(),
        device: "CPU (flex)".into(),
        versions: BTreeMap::from([("lossbench".into(), "0.1.0".into())]),
        git_commit: None,
        synthetic_data: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        finished_at: None,
        config: serde_json::Value::Null,
    }
    .write(&run.manifest())
    .expect("manifest");
}

fn results(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("handmade");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join(EXPERIMENT_COPY), EXPERIMENT).expect("experiment");
    write_run(&root, "softmax", 0, RunStatus::Completed, &[0.3, 0.6, 0.70]);
    write_run(&root, "softmax", 1, RunStatus::Completed, &[0.3, 0.6, 0.72]);
    write_run(&root, "softmax", 2, RunStatus::Completed, &[0.3, 0.6, 0.74]);
    write_run(&root, "arcface", 0, RunStatus::Completed, &[0.2, 0.7, 0.75]);
    write_run(&root, "arcface", 1, RunStatus::Diverged, &[0.2]);
    write_run(&root, "arcface", 2, RunStatus::Running, &[0.2, 0.5]);
    root
}

#[test]
fn report_counts_diverged_and_unfinished_runs_and_computes_statistics() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = results(dir.path());
    let out = dir.path().join("report");
    let built = lossbench_report::build_from(&root, dir.path(), Some(&out)).expect("report");
    assert_eq!(built.runs, 6);
    assert_eq!(built.incomplete.len(), 2, "{:?}", built.incomplete);
    for file in [
        "index.html",
        "test_top1.png",
        "test_top1.svg",
        "train_loss.png",
        "lr.png",
        "angles.png",
        "epoch_seconds.png",
        "summary.csv",
        "summary.parquet",
    ] {
        assert!(
            out.join(file).metadata().is_ok_and(|m| m.len() > 0),
            "{file} missing"
        );
    }
    let experiment = Experiment::parse(EXPERIMENT, Path::new("x")).expect("experiment");
    let runs = lossbench_report::summary::load_runs(&root).expect("runs");
    let rows = lossbench_report::summary::summarise(&experiment, &runs);
    let softmax = &rows[0];
    let e = softmax.final_top1.expect("softmax estimate");
    // 0.70, 0.72, 0.74: mean 0.72, std 0.02, CI ± 4.303·0.02/√3.
    assert_eq!((e.n, (e.mean * 1e9).round() / 1e9), (3, 0.72));
    assert!((e.std - 0.02).abs() < 1e-12);
    assert!((e.ci.1 - 0.72 - 0.049_686_8).abs() < 1e-6);
    assert_eq!(softmax.epochs_to_95.map(|x| x.mean), Some(3.0)); // 0.6 < 0.95·0.7
    let arc = &rows[1];
    assert_eq!(
        (arc.completed, arc.diverged, arc.incomplete, arc.total_runs),
        (1, 1, 1, 3)
    );
    // One completed seed pairs with softmax seed 0: Δ = 0.75 − 0.70.
    let delta = arc.delta_vs_softmax.expect("paired difference");
    assert_eq!(delta.n, 1);
    assert!((delta.mean - 0.05).abs() < 1e-12);
    assert_eq!(
        arc.verdict,
        "claim above the single measured run (one seed: no CI)"
    );
    let html = std::fs::read_to_string(out.join("index.html")).expect("html");
    assert!(
        html.contains("1 diverged") && html.contains("non-finite loss at step 17"),
        "diverged run not shown"
    );
    assert!(html.contains("1 unfinished") && html.contains("id=\"incomplete\""));
    assert!(
        !html.contains("id=\"synthetic\""),
        "real-data runs carry no synthetic banner"
    );
    for stem in ["test_top1", "train_loss", "lr", "angles", "epoch_seconds"] {
        assert!(
            html.contains(&format!("src=\"{stem}.png\"")),
            "{stem} not in the page"
        );
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).expect("csv");
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("softmax,")),
        "{csv}"
    );
}

#[test]
fn missing_or_empty_results_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = lossbench_report::build_from(&dir.path().join("nothing"), dir.path(), None)
        .expect_err("missing")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let empty = dir.path().join("handmade");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join(EXPERIMENT_COPY), EXPERIMENT).expect("experiment");
    let err = format!(
        "{:#}",
        lossbench_report::build_from(&empty, dir.path(), Some(&dir.path().join("r")))
            .expect_err("empty")
    );
    assert!(err.contains("holds no runs"), "{err}");
}
