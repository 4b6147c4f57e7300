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

[[losses]]
name = "cosface"
epochs = 4

[claimed.softmax]
top1 = 0.78

[claimed.arcface]
top1 = 0.9
epochs = 3

[claimed.cosface]
top1 = 0.8
"#;

fn record(loss: &str, seed: u64, epoch: u32, top1: f64, val: Option<f64>) -> EpochRecord {
    EpochRecord {
        experiment: "handmade".into(),
        loss: loss.into(),
        seed,
        epoch,
        iteration: u64::from(epoch) * 10,
        lr: 0.1,
        train_loss: 3.0 / f64::from(epoch),
        train_top1: top1,
        val_loss: val.map(|v| 1.0 - v),
        val_top1: val,
        val_recall_at_1: None,
        val_map_at_r: None,
        test_loss: Some(2.0),
        test_top1: Some(top1),
        test_top5: Some((top1 + 0.2).min(1.0)),
        test_recall_at_1: Some(top1),
        test_recall_at_2: None,
        test_recall_at_4: None,
        test_recall_at_8: None,
        test_map_at_r: Some(top1 - 0.1),
        target_angle_deg: Some(70.0 - f64::from(epoch)),
        nearest_other_angle_deg: Some(80.0),
        epoch_seconds: 2.0,
        images_per_second: 100.0,
        backend: "flex".into(),
    }
}

fn write_run(
    root: &Path,
    loss: &str,
    seed: u64,
    status: RunStatus,
    curve: &[f64],
    validation: &[f64],
) {
    let run = RunDir::new(root, loss, seed);
    std::fs::create_dir_all(&run.path).expect("mkdir");
    let records: Vec<EpochRecord> = curve
        .iter()
        .enumerate()
        .map(|(i, &t)| record(loss, seed, i as u32 + 1, t, validation.get(i).copied()))
        .collect();
    write_metrics(&run, &records).expect("metrics");
    RunManifest {
        experiment: "handmade".into(),
        loss: loss.into(),
        seed,
        params: BTreeMap::new(),
        epochs: if loss == "cosface" { 4 } else { 3 },
        epochs_completed: curve.len() as u32,
        status,
        diverged_at_step: (status == RunStatus::Diverged).then_some(17),
        error: None,
        backend: "flex".into(),
        device: "CPU (flex)".into(),
        cpu: None,
        cpu_kernels: None,
        versions: BTreeMap::from([("lossbench".into(), "0.1.0".into())]),
        git_commit: None,
        synthetic_data: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        finished_at: None,
        config: serde_json::Value::Null,
        identity: None,
        data: None,
    }
    .write(&run.manifest())
    .expect("manifest");
}

fn results(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("handmade");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join(EXPERIMENT_COPY), EXPERIMENT).expect("experiment");
    let done = RunStatus::Completed;
    write_run(&root, "softmax", 0, done, &[0.3, 0.6, 0.70], &[]);
    write_run(&root, "softmax", 1, done, &[0.3, 0.6, 0.72], &[]);
    write_run(&root, "softmax", 2, done, &[0.3, 0.6, 0.74], &[]);
    write_run(&root, "arcface", 0, done, &[0.2, 0.7, 0.75], &[]);
    write_run(&root, "arcface", 1, RunStatus::Diverged, &[0.2], &[]);
    write_run(&root, "arcface", 2, RunStatus::Running, &[0.2, 0.5], &[]);
    // The best validation epoch is 2, 3 and 4: the selected test top-1 is 0.80 for each.
    let val = [
        [0.4, 0.9, 0.85, 0.86],
        [0.4, 0.6, 0.88, 0.87],
        [0.4, 0.7, 0.7, 0.9],
    ];
    write_run(&root, "cosface", 0, done, &[0.5, 0.8, 0.76, 0.78], &val[0]);
    write_run(&root, "cosface", 1, done, &[0.5, 0.7, 0.80, 0.79], &val[1]);
    write_run(&root, "cosface", 2, done, &[0.5, 0.75, 0.77, 0.80], &val[2]);
    root
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn statistics_against_hand_computed_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = results(dir.path());
    let experiment = Experiment::parse(EXPERIMENT, Path::new("x")).expect("experiment");
    let loaded = lossbench_report::summary::load_runs(&root).expect("runs");
    assert!(loaded.unreadable.is_empty());
    let rows = lossbench_report::summary::summarise(&experiment, &loaded.runs);

    let softmax = &rows[0];
    let e = softmax.final_headline.expect("softmax estimate");
    // 0.70, 0.72, 0.74: mean 0.72, s 0.02; t(2) = 4.302653: CI ± 0.0496828, PI ± 0.0993656.
    assert_eq!(e.n, 3);
    assert!(close(e.mean, 0.72) && close(e.std, 0.02));
    assert!((e.ci.1 - 0.72 - 0.049_682_8).abs() < 1e-6, "{:?}", e.ci);
    assert!((e.pi.1 - 0.72 - 0.099_365_6).abs() < 1e-6, "{:?}", e.pi);
    // The claim 0.78 is above the CI of the mean but inside the prediction interval.
    assert_eq!(
        softmax.verdict,
        "claim inside the measured 95 % prediction interval"
    );
    assert_eq!(softmax.epochs_to_95.map(|x| x.mean), Some(3.0)); // 0.6 < 0.95·0.7
    assert!(softmax.selected_headline.is_none(), "no validation columns");

    let arc = &rows[1];
    assert_eq!(
        (arc.completed, arc.diverged, arc.incomplete, arc.total_runs),
        (1, 1, 1, 3)
    );
    assert_eq!(arc.diverged_label().as_deref(), Some("1/3 diverged"));
    let delta = arc.delta_vs_softmax.expect("paired difference");
    assert_eq!(delta.n, 1);
    assert!(close(delta.mean, 0.05));
    assert!(!arc.confounded_vs_softmax);
    assert_eq!(
        arc.verdict,
        "n too small for a verdict (n = 1); claim above the measured mean; 1/3 diverged"
    );

    let cos = &rows[2];
    assert!(close(cos.final_headline.expect("final").mean, 0.79));
    assert!(close(cos.selected_headline.expect("selected").mean, 0.80));
    assert!(close(cos.optimistic_headline.expect("max").mean, 0.80));
    assert!(close(cos.final_map_at_r.expect("map").mean, 0.69));
    assert!(close(cos.selected_map_at_r.expect("map").mean, 0.70));
    let d = cos.delta_vs_softmax.expect("delta");
    assert!(close(d.mean, 0.07) && close(d.std, 0.01));
    assert!(cos.confounded_vs_softmax, "4 epochs against softmax's 3");
    assert_eq!(
        cos.verdict,
        "claim inside the measured 95 % prediction interval"
    );

    let pairs = lossbench_report::summary::pairwise(&experiment, &loaded.runs);
    let names: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
    assert_eq!(
        names,
        [
            ("softmax", "arcface"),
            ("softmax", "cosface"),
            ("arcface", "cosface")
        ]
    );
    // softmax − cosface: −0.08, −0.07, −0.06; t = −12.1244 (df 2): p = 0.0067341.
    let sc = &pairs[1];
    assert!(close(sc.delta.expect("delta").mean, -0.07));
    assert!((sc.p.expect("p") - 0.006_734_08).abs() < 1e-7, "{:?}", sc.p);
    assert_eq!(sc.p_holm, sc.p, "the only pair with a p-value");
    assert!(sc.confounded && pairs[2].confounded && !pairs[0].confounded);
    assert_eq!(
        (pairs[0].p, pairs[2].p_holm),
        (None, None),
        "one common seed"
    );
    assert!(close(pairs[2].delta.expect("one seed").mean, -0.03));
}

#[test]
fn report_counts_diverged_and_unfinished_runs_and_draws_every_figure() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = results(dir.path());
    let out = dir.path().join("report");
    let built = lossbench_report::build_from(&root, dir.path(), Some(&out)).expect("report");
    assert_eq!(built.runs, 9);
    assert_eq!(built.incomplete.len(), 2, "{:?}", built.incomplete);
    for file in [
        "index.html",
        "delta_vs_softmax.png",
        "delta_vs_softmax.svg",
        "claimed_vs_measured.png",
        "test_top1.png",
        "test_top1.svg",
        "val_top1.png",
        "map_at_r.png",
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
    let html = std::fs::read_to_string(out.join("index.html")).expect("html");
    assert!(
        html.contains("1/3 diverged") && html.contains("non-finite loss at step 17"),
        "diverged run not shown"
    );
    assert!(html.contains("1 unfinished") && html.contains("id=\"incomplete\""));
    assert!(html.contains("n too small (n = 1)"));
    assert!(html.contains("optimistic (selected on test)"));
    assert!(html.contains("confounded: other epoch count than softmax"));
    assert!(html.contains("id=\"pairwise\"") && html.contains("0.007"));
    assert!(
        !html.contains("id=\"synthetic\""),
        "real-data runs carry no synthetic banner"
    );
    // The forest plot comes first, before the table.
    let forest = html
        .find("src=\"delta_vs_softmax.png\"")
        .expect("forest plot");
    assert!(forest < html.find("id=\"summary\"").expect("table"));
    for stem in ["test_top1", "train_loss", "lr", "angles", "epoch_seconds"] {
        assert!(
            html.contains(&format!("src=\"{stem}.png\"")),
            "{stem} not in the page"
        );
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).expect("csv");
    let header = csv.lines().next().expect("header");
    for column in [
        "final_top1_pi_low",
        "val_selected_top1_mean",
        "optimistic_max_test_top1_mean",
        "delta_vs_softmax_confounded",
        "final_map_at_r_mean",
        "final_recall_at_1_mean",
    ] {
        assert!(
            header.split(',').any(|c| c == column),
            "{column} in {header}"
        );
    }
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("softmax,")),
        "{csv}"
    );
}

#[test]
fn damaged_and_unreadable_runs_never_stop_the_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = results(dir.path());
    // softmax seed 2: Parquet damaged, CSV intact → the CSV is used and the report says so.
    let damaged = RunDir::new(&root, "softmax", 2);
    std::fs::write(damaged.metrics_parquet(), b"PAR1 not really").expect("damage");
    // arcface seed 0: both metrics files damaged → listed as unreadable.
    let lost = RunDir::new(&root, "arcface", 0);
    std::fs::write(lost.metrics_parquet(), b"x").expect("damage");
    std::fs::write(lost.metrics_csv(), b"x").expect("damage");
    // cosface seed 3: a run.json that is not JSON; cosface seed 4: no run.json at all.
    let broken = RunDir::new(&root, "cosface", 3);
    std::fs::create_dir_all(&broken.path).expect("mkdir");
    std::fs::write(broken.manifest(), b"{ not json").expect("write");
    std::fs::create_dir_all(RunDir::new(&root, "cosface", 4).path).expect("mkdir");

    let loaded = lossbench_report::summary::load_runs(&root).expect("runs");
    let unreadable: Vec<String> = loaded
        .unreadable
        .iter()
        .map(|u| format!("{}/{}", u.dir.loss, u.dir.seed))
        .collect();
    assert_eq!(unreadable, ["arcface/0", "cosface/3", "cosface/4"]);
    let experiment = Experiment::parse(EXPERIMENT, Path::new("x")).expect("experiment");
    let rows = lossbench_report::summary::summarise(&experiment, &loaded.runs);
    assert!(
        close(rows[0].final_headline.expect("softmax").mean, 0.72),
        "CSV rows used"
    );

    let out = dir.path().join("report");
    let built = lossbench_report::build_from(&root, dir.path(), Some(&out)).expect("report");
    assert!(
        built
            .notes
            .iter()
            .any(|n| n.contains("softmax seed-2: used metrics.csv")),
        "{built}"
    );
    assert!(
        built
            .incomplete
            .iter()
            .any(|n| n.contains("cosface seed-3 (unreadable")),
        "{built}"
    );
    let html = std::fs::read_to_string(out.join("index.html")).expect("html");
    assert!(html.contains("id=\"damaged\"") && html.contains("used metrics.csv"));
    assert!(html.contains("unreadable: no readable metrics"));
    assert!(html.contains("cosface seed 4 (unreadable)"));
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
