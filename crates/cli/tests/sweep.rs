//! `lossbench sweep` end to end with the real binary: the sweep runs (planned, trained,
//! resumable), the choice in sweep.json, `run` at the chosen point, and the report's tuning
//! section.

use lossbench_experiment::{RunDir, RunManifest, SweepRecord, read_metrics};
use support::{Tiny, lossbench, text};

mod support;

/// softmax, and NormFace swept over s and the head's learning rate on a validation split.
fn tune_experiment() -> Tiny {
    Tiny {
        name: "tune",
        synthetic: (4, 10, 2, 4),
        data: "validation = 8",
        model: "head_init = { std = 1.0 }\nembedding = { dim = 16 }",
        batch_size: 8,
        tables: "[sweep]\nepochs = 1\nseeds = [0]\nmetric = \"val_top1\"",
        losses: &[
            ("softmax", ""),
            (
                "normface",
                "params = { s = 16.0 }\nsweep = { s = [4.0, 16.0], head_lr_scale = [1.0, 10.0] }",
            ),
        ],
        ..Tiny::default()
    }
}

#[test]
fn sweep_then_run_at_the_chosen_point_then_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tune_experiment().write(dir.path(), "tune.toml");
    let exp = exp.to_str().expect("utf-8");
    let results = dir.path().join("results");
    let res = results.to_str().expect("utf-8");

    // The main grid needs the sweep's choice first.
    let out = lossbench(&["run", exp, "--backend", "flex", "--results", res]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("run `lossbench sweep` on it first"),
        "{}",
        text(&out)
    );

    // The sweep grid: softmax once, normface at 2 × 2 points.
    let out = lossbench(&["plan", exp, "--sweep", "--results", res]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = text(&out);
    for label in [
        "softmax",
        "normface@head_lr_scale=1,s=4",
        "normface@head_lr_scale=10,s=16",
    ] {
        assert!(plan.contains(label), "{label} missing:\n{plan}");
    }
    assert!(plan.contains("5 runs"), "{plan}");

    // One index on its own (a cluster task) trains only that run and chooses nothing.
    let out = lossbench(&[
        "sweep",
        exp,
        "--backend",
        "flex",
        "--results",
        res,
        "--index",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!results.join("tune/sweep.json").exists());

    let out = lossbench(&["sweep", exp, "--backend", "flex", "--results", res]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already completed"), "{}", text(&out));
    let record = SweepRecord::read_in(&results.join("tune"))
        .expect("readable")
        .expect("written");
    let normface = &record.losses[1];
    assert_eq!(normface.points.len(), 4);
    // The choice is the point with the best validation top-1 (the first of equals).
    assert_eq!(&normface.chosen, support::best_point(&normface.points));
    for p in &normface.points {
        let label = lossbench_grid::sweep::point_label("normface", &p.point);
        let records =
            read_metrics(&RunDir::new(&results.join("tune/sweep"), &label, 0)).expect("metrics");
        assert_eq!(p.value, records[0].val_top1, "{label}");
    }

    // The experiment's runs train at the chosen point.
    let out = lossbench(&["run", exp, "--backend", "flex", "--results", res]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = RunManifest::read(&RunDir::new(&results.join("tune"), "normface", 0).manifest())
        .expect("run.json");
    assert_eq!(manifest.params["s"], normface.chosen["s"]);
    let identity = manifest.identity.expect("identity");
    let scale = normface.chosen["head_lr_scale"];
    if scale == 1.0 {
        assert!(!identity.values.contains_key("training.head_lr_scale"));
    } else {
        assert_eq!(
            identity.values["training.head_lr_scale"],
            format!("{scale:?}")
        );
    }

    let report = dir.path().join("report");
    let out = lossbench(&[
        "report",
        exp,
        "--results",
        res,
        "--out",
        report.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(report.join("index.html")).expect("html");
    assert!(html.contains("id=\"tuning\""), "no tuning table");
    assert!(report.join("sweep-normface.png").exists());
    assert!(report.join("sweep-normface.svg").exists());
    // Equal budgets are not flagged (softmax has nothing to tune).
    assert!(!html.contains("unequal-budget"));
}

#[test]
fn the_tuned_cifar_experiment_parses_and_plans() {
    let exp = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/cifar100-resnet50-tuned.toml"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let res = dir.path().to_str().expect("utf-8");
    let out = lossbench(&["plan", exp, "--sweep", "--results", res]);
    assert!(out.status.success(), "{}", text(&out));
    // softmax 1, normface 4, sphereface 3, cosface 9, arcface 9, adacos 1, curricularface 9.
    assert!(text(&out).contains(": 36 runs"), "{}", text(&out));
    assert!(text(&out).contains("arcface@m=0.35,s=64"), "{}", text(&out));
    // The protocol's runs wait for the sweep's choice.
    let out = lossbench(&["plan", exp, "--results", res]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("run `lossbench sweep` on it first"),
        "{}",
        text(&out)
    );
    for demo in ["demo-tuned.toml", "demo.toml", "cifar100-resnet50.toml"] {
        let path = format!("{}/../../experiments/{demo}", env!("CARGO_MANIFEST_DIR"));
        let out = lossbench(&["plan", &path, "--sweep", "--results", res]);
        let has_sweep = demo == "demo-tuned.toml";
        assert_eq!(out.status.success(), has_sweep, "{demo}: {}", text(&out));
    }
}
