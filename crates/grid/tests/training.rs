//! Training the grid end to end on a tiny synthetic experiment (flex).

mod common;

use common::{metrics, tiny_experiment};
use lossbench_experiment::{RunDir, RunManifest, RunStatus};
use lossbench_grid::{RunLock, RunOptions, run_experiment};
use lossbench_train::{BackendChoice, Net, Progress};

fn options(results: &std::path::Path) -> RunOptions {
    RunOptions {
        backend: BackendChoice::Flex,
        results: results.to_path_buf(),
        ..RunOptions::default()
    }
}

#[test]
fn every_loss_runs_and_writes_its_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let losses = ["softmax", "normface", "sphereface", "cosface", "arcface"];
    let exp = tiny_experiment(dir.path(), &losses, &[0], 2, 0.05);
    let results = dir.path().join("results");
    let reports = run_experiment(&exp, &options(&results), &mut Progress::quiet()).expect("run");
    assert_eq!(reports.len(), 5);
    for (report, loss) in reports.iter().zip(losses) {
        assert_eq!(
            report.status,
            RunStatus::Completed,
            "{loss}: {}",
            report.detail
        );
        let run = RunDir::new(&results.join("tiny"), loss, 0);
        for file in [
            run.metrics_parquet(),
            run.metrics_csv(),
            run.manifest(),
            run.checkpoints().join("epoch-0002.ckpt"),
        ] {
            assert!(file.exists(), "{} missing", file.display());
        }
        let m = RunManifest::read(&run.manifest()).expect("manifest");
        assert_eq!(
            (m.status, m.epochs_completed, m.backend.as_str()),
            (RunStatus::Completed, 2, "flex")
        );
        assert!(m.synthetic_data);
        let rows = metrics(&results, loss, 0);
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let (top1, top5) = (r.test_top1.expect("top-1"), r.test_top5.expect("top-5"));
            for v in [r.train_top1, top1, top5] {
                assert!((0.0..=1.0).contains(&v), "{loss}: accuracy {v}");
            }
            assert!(top5 >= top1);
            let angle = r.target_angle_deg.expect("angle");
            assert!(angle > 0.0 && angle < 180.0);
            for v in [r.test_map_at_r, r.test_recall_at_1] {
                assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{loss}: {v:?}");
            }
            assert_eq!(
                (r.val_top1, r.val_loss),
                (None, None),
                "no validation split"
            );
            assert_eq!(r.backend, "flex");
        }
    }
    assert!(results.join("tiny/experiment.toml").exists());
}

#[test]
fn same_loss_and_seed_give_identical_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tiny_experiment(dir.path(), &["arcface"], &[3], 2, 0.05);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_experiment(&exp, &options(&a), &mut Progress::quiet()).expect("run a");
    run_experiment(&exp, &options(&b), &mut Progress::quiet()).expect("run b");
    assert_eq!(metrics(&a, "arcface", 3), metrics(&b, "arcface", 3));
}

#[test]
fn every_loss_starts_from_the_same_backbone() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp_path = tiny_experiment(dir.path(), &["softmax", "arcface"], &[0], 1, 0.05);
    let experiment = lossbench_experiment::Experiment::load(&exp_path).expect("experiment");
    let device = burn::prelude::Device::flex();
    let weights = |loss: &str, seed: u64| -> Vec<f32> {
        let params =
            lossbench_registry::resolve_params(loss, &serde_json::Map::new()).expect("params");
        let net = Net::init(&experiment, loss, &params, 4, seed, &device).expect("net");
        let mut all = Vec::new();
        struct Collect<'a>(&'a mut Vec<f32>);
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(
                &mut self,
                p: &burn::module::Param<burn::prelude::Tensor<D>>,
            ) {
                let t = p.val();
                let n = t.shape().num_elements();
                self.0.extend(
                    t.reshape([n])
                        .into_data()
                        .try_into_vec_as::<f32>()
                        .expect("f32"),
                );
            }
        }
        burn::module::Module::visit(&net.backbone, &mut Collect(&mut all));
        all
    };
    assert_eq!(weights("softmax", 0), weights("arcface", 0));
    assert_ne!(weights("softmax", 0), weights("softmax", 1));
}

#[test]
fn resume_after_an_interruption_reproduces_the_uninterrupted_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tiny_experiment(dir.path(), &["sphereface"], &[1], 3, 0.05);
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    run_experiment(&exp, &options(&full), &mut Progress::quiet()).expect("full run");
    run_experiment(&exp, &options(&cut), &mut Progress::quiet()).expect("cut run");
    // Make it a run that crashed after writing epoch 3's metrics, before its checkpoint.
    let run = RunDir::new(&cut.join("tiny"), "sphereface", 1);
    std::fs::remove_file(run.checkpoints().join("epoch-0003.ckpt")).expect("rm");
    let mut m = RunManifest::read(&run.manifest()).expect("manifest");
    m.status = RunStatus::Running;
    m.epochs_completed = 2;
    m.write(&run.manifest()).expect("write");
    // Without --resume an existing run is refused before anything is written.
    let err = run_experiment(&exp, &options(&cut), &mut Progress::quiet()).expect_err("refused");
    assert!(err.to_string().contains("--resume"), "{err}");
    let mut resume = options(&cut);
    resume.resume = true;
    let reports = run_experiment(&exp, &resume, &mut Progress::quiet()).expect("resume");
    assert_eq!(
        reports[0].status,
        RunStatus::Completed,
        "{}",
        reports[0].detail
    );
    assert_eq!(
        metrics(&cut, "sphereface", 1),
        metrics(&full, "sphereface", 1)
    );
    // A completed run is skipped on the next --resume.
    let again = run_experiment(&exp, &resume, &mut Progress::quiet()).expect("again");
    assert_eq!(again[0].detail, "already completed");
}

#[test]
fn a_validation_split_is_held_out_and_evaluated_every_epoch() {
    let dir = tempfile::tempdir().expect("tmp");
    let exp = tiny_experiment(dir.path(), &["softmax"], &[0], 2, 0.05);
    let text = std::fs::read_to_string(&exp).expect("read");
    std::fs::write(
        &exp,
        text.replace("seed = 1 }", "seed = 1 }\nvalidation = 8"),
    )
    .expect("write");
    let results = dir.path().join("results");
    let reports = run_experiment(&exp, &options(&results), &mut Progress::quiet()).expect("run");
    assert_eq!(
        reports[0].status,
        RunStatus::Completed,
        "{}",
        reports[0].detail
    );
    let rows = metrics(&results, "softmax", 0);
    for r in &rows {
        let top1 = r.val_top1.expect("validation top-1");
        // 8 validation images: accuracy in eighths.
        assert!((top1 * 8.0 - (top1 * 8.0).round()).abs() < 1e-9, "{top1}");
        assert!(r.val_loss.is_some_and(f64::is_finite));
    }
    let m = RunManifest::read(&RunDir::new(&results.join("tiny"), "softmax", 0).manifest())
        .expect("manifest");
    assert_eq!(m.identity.expect("identity").values["data.validation"], "8");
    // 48 training images less 8 held out, batch 16: 3 steps an epoch.
    assert_eq!(rows[0].iteration, 3);
}

#[test]
fn a_diverging_run_is_marked_and_the_others_go_on() {
    let dir = tempfile::tempdir().expect("tmp");
    // lr = 1e30 overflows f32 within a step or two.
    let exp = tiny_experiment(dir.path(), &["softmax", "normface"], &[0, 1], 2, 1e30);
    let results = dir.path().join("results");
    let reports = run_experiment(&exp, &options(&results), &mut Progress::quiet()).expect("run");
    assert_eq!(reports.len(), 4, "every run was attempted");
    let softmax = RunManifest::read(&RunDir::new(&results.join("tiny"), "softmax", 0).manifest())
        .expect("manifest");
    assert_eq!(softmax.status, RunStatus::Diverged);
    let step = softmax.diverged_at_step.expect("step recorded");
    assert!(step < 6, "diverged late: step {step}");
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.status, RunStatus::Diverged | RunStatus::Completed))
    );
}

#[test]
fn a_second_process_cannot_take_a_locked_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = RunDir::new(dir.path(), "arcface", 0);
    let held = RunLock::acquire(&run).expect("first lock");
    let err = RunLock::acquire(&run).expect_err("second lock").to_string();
    assert!(
        err.contains("in use by another lossbench process")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(held);
    RunLock::acquire(&run).expect("lock is free again after release");
}

/// The failure of issue 16 as a regression test: a cosine head (NormFace, s = 16) on
/// post-ReLU features of an easy task (10 well-separated classes), trained by the shared
/// recipe's SGD (lr 0.1, momentum 0.9, weight decay 5e-4), must learn it when initialised as
/// the fair protocol does (N(0, 0.1²)). With InsightFace's N(0, 0.01²) it learns 56 of the 80.
#[test]
fn a_cosine_head_trains_under_the_fair_protocol_init() {
    use burn::prelude::*;
    use lossbench_head::{HeadDims, Labels};
    use lossbench_train::sgd::{SgdConfig, SgdState};
    let device = Device::flex().autodiff();
    let (classes, dim, per_class) = (10, 64, 8);
    let dims = HeadDims {
        num_classes: classes,
        feature_dim: dim,
    };
    let params = lossbench_registry::resolve_params(
        "normface",
        &serde_json::json!({ "s": 16.0 })
            .as_object()
            .expect("object")
            .clone(),
    )
    .expect("params");
    // Class c's features: a shared non-negative part plus a bump on its own 6 coordinates,
    // with noise; all ≥ 0 as after a ReLU.
    let mut noise = lossbench_rng::Stream::new(9, lossbench_rng::Purpose::Synthetic, 1);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for c in 0..classes {
        for _ in 0..per_class {
            for j in 0..dim {
                let own = if j / 6 == c { 1.0 } else { 0.0 };
                x.push((0.5 + own + 0.2 * noise.normal()).max(0.0) as f32);
            }
            y.push(c as i64);
        }
    }
    let n = classes * per_class;
    let features = Tensor::<2>::from_data(TensorData::new(x, [n, dim]), &device);
    let labels = Labels::new(&y, classes, &device).expect("labels");
    let mut head = lossbench_registry::init_head_std("normface", &params, dims, 0, 0.1, &device)
        .expect("head");
    let mut sgd = SgdState::default();
    let config = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    };
    for step in 0..60 {
        let loss = head.loss(features.clone(), &labels, step);
        let grads = loss.backward();
        head = sgd.step(head, &grads, 0.1, config);
    }
    let logits: Vec<f32> = head
        .logits(features.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32");
    let correct = logits
        .chunks(classes)
        .zip(&y)
        .filter(|(row, label)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
            best as i64 == **label
        })
        .count();
    assert!(
        correct as f64 / n as f64 >= 0.9,
        "NormFace learnt {correct} of {n}"
    );
}
