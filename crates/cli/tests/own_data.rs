//! Data sets of your own, end to end through the binary: a generated image folder of PNG and
//! JPEG files of mixed sizes and modes trains and reports under the closed and the open
//! protocol; the same images as a CSV make the same run; every bad input is one clear error
//! naming the file, with nothing written.

mod support;

use std::path::{Path, PathBuf};

use lossbench_experiment::{EpochRecord, RunDir, RunManifest};
use support::{lossbench, metrics, s, text};

/// `lossbench data synth --format folder` into `<dir>/images`: 4 classes, 6 training and 3
/// test images each, PNG and JPEG in turn, shorter side 16.
fn synth_folder(dir: &Path) -> PathBuf {
    synth_classes(dir, 4)
}

fn synth_classes(dir: &Path, classes: usize) -> PathBuf {
    let images = dir.join("images");
    let classes = classes.to_string();
    let out = lossbench(&[
        "data",
        "synth",
        "--format",
        "folder",
        "--image-format",
        "mixed",
        "--side",
        "16",
        "--classes",
        &classes,
        "--train-per-class",
        "6",
        "--test-per-class",
        "3",
        "--out",
        s(&images),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    images
}

/// The losses of [`experiment`]: softmax and CosFace.
const TWO_LOSSES: &str = r#"[[losses]]
name = "softmax"

[[losses]]
name = "cosface"
"#;

/// An experiment on a set of your own: `data` is the `[data]` table's body.
fn experiment(dir: &Path, name: &str, data: &str) -> PathBuf {
    experiment_with(dir, name, data, TWO_LOSSES)
}

/// [`experiment`] with `rest` (what follows `[training]`: losses, a sweep) in place of its
/// two losses.
fn experiment_with(dir: &Path, name: &str, data: &str, rest: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
seeds = [0]

[data]
{data}
image_size = 12
cache = "{cache}"

[model]
arch = "resnet18"
width = 0.0625

[training]
epochs = 1
batch_size = 8
lr = 0.1
schedule = {{ kind = "constant" }}

{rest}"#,
            cache = dir.join("cache").display()
        ),
    )
    .expect("experiment");
    path
}

fn run(dir: &Path, experiment: &Path) -> std::process::Output {
    lossbench(&["run", s(experiment), "--results", s(&dir.join("results"))])
}

/// Metrics without the experiment's name and the wall-clock columns.
fn numbers(dir: &Path, name: &str, loss: &str) -> Vec<EpochRecord> {
    metrics(&dir.join("results").join(name), loss, 0)
        .into_iter()
        .map(|mut r| {
            r.experiment.clear();
            r
        })
        .collect()
}

fn manifest(dir: &Path, name: &str, loss: &str) -> RunManifest {
    let run = RunDir::new(&dir.join("results").join(name), loss, 0);
    RunManifest::read(&run.manifest()).expect("run.json")
}

#[test]
fn an_image_folder_trains_and_reports_closed_and_open_and_a_csv_of_it_is_the_same_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let images = synth_folder(dir);
    let folder_data = format!("set = \"folder\"\ndir = \"{}\"", images.display());

    // Closed set: top-1 exists, class names travel with the run.
    let closed = experiment(dir, "closed", &folder_data);
    let out = run(dir, &closed);
    assert!(out.status.success(), "{}", text(&out));
    let first = numbers(dir, "closed", "softmax");
    assert!(first[0].test_top1.is_some() && first[0].test_map_at_r.is_some());
    let data = manifest(dir, "closed", "softmax")
        .data
        .expect("data summary");
    assert_eq!(
        data.train_classes,
        ["class-00", "class-01", "class-02", "class-03"]
    );
    assert_eq!(
        (data.train_images, data.test_images, data.image_size),
        (24, 12, 12)
    );
    assert!(manifest(dir, "closed", "softmax").synthetic_data);

    // The same images as a CSV, rows in reverse order, paths relative to the file: the same
    // run, bit for bit (canonical order, identical decoding).
    let mut rows: Vec<String> = Vec::new();
    for split in ["train", "test"] {
        for class in std::fs::read_dir(images.join(split)).expect("split") {
            let class = class.expect("entry").path();
            for file in std::fs::read_dir(&class).expect("class") {
                let file = file.expect("entry").path();
                let name = class.file_name().and_then(|n| n.to_str()).expect("name");
                rows.push(format!(
                    "{},{name},{split}",
                    file.strip_prefix(dir).expect("below dir").display()
                ));
            }
        }
    }
    rows.sort();
    rows.reverse();
    std::fs::write(
        dir.join("list.csv"),
        format!("path,label,split\n{}\n", rows.join("\n")),
    )
    .expect("csv");
    let csv = experiment(
        dir,
        "as-csv",
        &format!(
            "set = \"csv\"\nfile = \"{}\"",
            dir.join("list.csv").display()
        ),
    );
    let out = run(dir, &csv);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(numbers(dir, "as-csv", "softmax"), first);
    assert_eq!(
        numbers(dir, "as-csv", "cosface"),
        numbers(dir, "closed", "cosface")
    );

    // Open set: the first two classes by name train, the other two are unseen test classes.
    let open = experiment(
        dir,
        "open",
        &format!("{folder_data}\nprotocol = \"open\"\nopen = {{ train_classes = 2 }}"),
    );
    let out = run(dir, &open);
    assert!(out.status.success(), "{}", text(&out));
    let r = &numbers(dir, "open", "cosface")[0];
    assert_eq!(
        (r.test_top1, r.test_loss, r.target_angle_deg),
        (None, None, None)
    );
    let (map, r1, r8) = (
        r.test_map_at_r.expect("MAP@R"),
        r.test_recall_at_1.expect("R@1"),
        r.test_recall_at_8.expect("R@8"),
    );
    assert!((0.0..=1.0).contains(&map) && r1 <= r8, "{r:?}");
    let data = manifest(dir, "open", "cosface").data.expect("data summary");
    assert_eq!(data.train_classes, ["class-00", "class-01"]);
    assert_eq!(data.test_classes, ["class-02", "class-03"]);
    assert_eq!((data.train_images, data.test_images), (12, 6));

    let report = dir.join("report");
    let out = lossbench(&[
        "report",
        s(&open),
        "--results",
        s(&dir.join("results")),
        "--out",
        s(&report),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(report.join("index.html")).expect("html");
    assert!(html.contains("final test MAP@R %"), "the headline is MAP@R");
    assert!(
        html.contains("unseen classes (class-02, class-03)"),
        "class names in the report"
    );
    assert!(
        !html.contains("test_top1.png"),
        "no top-1 curve under the open protocol"
    );
    let summary = std::fs::read_to_string(report.join("summary.csv")).expect("csv");
    assert!(
        summary
            .lines()
            .next()
            .expect("header")
            .contains("final_map_at_r_mean")
    );
}

#[test]
fn an_open_set_sweep_selects_by_validation_map_at_r_on_held_out_classes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let images = synth_classes(dir, 6);
    let results = dir.join("results");
    let exp = experiment_with(
        dir,
        "open-sweep",
        &format!(
            "set = \"folder\"\ndir = \"{}\"\nprotocol = \"open\"\nopen = {{ train_classes = 4 }}\nvalidation_classes = 2",
            images.display()
        ),
        r#"[sweep]
epochs = 1
seeds = [0]

[[losses]]
name = "softmax"

[[losses]]
name = "cosface"
sweep = { s = [4.0, 16.0] }
"#,
    );
    let out = lossbench(&[
        "sweep",
        s(&exp),
        "--backend",
        "flex",
        "--results",
        s(&results),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let record = lossbench_experiment::SweepRecord::read_in(&results.join("open-sweep"))
        .expect("readable")
        .expect("written");
    let cosface = &record.losses[1];
    assert_eq!(cosface.points.len(), 2);
    // Under the open protocol the default metric is validation MAP@R, on the held-out classes.
    for p in &cosface.points {
        let label = lossbench_grid::sweep::point_label("cosface", &p.point);
        let records = metrics(&results.join("open-sweep/sweep"), &label, 0);
        let r = &records[0];
        assert!(r.val_map_at_r.is_some() && r.val_top1.is_none(), "{r:?}");
        assert_eq!(p.value, r.val_map_at_r, "{label}");
    }
    assert_eq!(&cosface.chosen, support::best_point(&cosface.points));

    // The experiment's runs train at the chosen point, on the training classes left after
    // the two held out, and test on the two unseen ones.
    let out = lossbench(&[
        "run",
        s(&exp),
        "--backend",
        "flex",
        "--results",
        s(&results),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let run = RunDir::new(&results.join("open-sweep"), "cosface", 0);
    let m = RunManifest::read(&run.manifest()).expect("run.json");
    assert_eq!(m.params["s"], cosface.chosen["s"]);
    let data = m.data.expect("data summary");
    assert_eq!(data.train_classes.len(), 2);
    assert_eq!(data.validation_classes.len(), 2);
    assert_eq!(data.test_classes, ["class-04", "class-05"]);
    for held in &data.validation_classes {
        assert!(
            !data.train_classes.contains(held),
            "{held} held out and trained"
        );
    }
}

/// Runs `data` (the `[data]` body) and expects exit code 2 with every `wanted` fragment in
/// one error line, and nothing under `results/`.
fn refused(dir: &Path, name: &str, data: &str, wanted: &[&str]) {
    let path = experiment(dir, name, data);
    let out = run(dir, &path);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: {message}");
    for w in wanted {
        assert!(message.contains(w), "{name}: {w:?} not in {message}");
    }
    assert!(
        !dir.join("results").join(name).exists(),
        "{name}: nothing may be written"
    );
}

#[test]
fn bad_image_data_is_one_clear_error_naming_the_file_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let images = synth_folder(dir);
    let folder = |d: &Path| format!("set = \"folder\"\ndir = \"{}\"", d.display());
    let copy = |name: &str| -> PathBuf {
        let to = dir.join(name);
        let out = std::process::Command::new("cp")
            .args(["-r", s(&images), s(&to)])
            .output()
            .expect("cp");
        assert!(out.status.success());
        to
    };

    let no_test = copy("no-test");
    std::fs::remove_dir_all(no_test.join("test")).expect("rm");
    refused(
        dir,
        "no-test",
        &folder(&no_test),
        &["no-test/test: missing", "test/<class>/<image>"],
    );

    let empty = copy("empty-class");
    std::fs::create_dir_all(empty.join("train/class-09")).expect("mkdir");
    refused(
        dir,
        "empty-class",
        &folder(&empty),
        &["train/class-09: class folder holds no images"],
    );

    let unseen = copy("unseen");
    std::fs::rename(unseen.join("train/class-03"), dir.join("moved")).expect("mv");
    refused(
        dir,
        "unseen",
        &folder(&unseen),
        &[
            "test class class-03 has no training images",
            "protocol = \"open\"",
        ],
    );
    refused(
        dir,
        "overlap",
        &format!("{}\nprotocol = \"open\"", folder(&images)),
        &["class-00, class-01, class-02, class-03 are in both train and test"],
    );

    // A truncated JPEG is named; with skip_unreadable it is left out and listed in run.json.
    let cut = copy("cut");
    let victim = cut.join("train/class-01/00001.jpg");
    let bytes = std::fs::read(&victim).expect("jpeg");
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).expect("cut");
    refused(
        dir,
        "cut",
        &folder(&cut),
        &[
            "1 of 36 images cannot be read",
            "00001.jpg: truncated JPEG",
            "skip_unreadable",
        ],
    );
    let skip = experiment(
        dir,
        "skip",
        &format!("{}\nskip_unreadable = true", folder(&cut)),
    );
    let out = run(dir, &skip);
    assert!(out.status.success(), "{}", text(&out));
    let data = manifest(dir, "skip", "softmax").data.expect("data");
    assert_eq!(data.train_images, 23);
    assert!(
        data.skipped_images[0].contains("00001.jpg"),
        "{:?}",
        data.skipped_images
    );

    // CSV rows: a missing file, an unknown split.
    let list = dir.join("bad.csv");
    let csv = format!("set = \"csv\"\nfile = \"{}\"", list.display());
    std::fs::write(
        &list,
        "path,label,split\nimages/train/class-00/00000.png,a,train\nimages/gone.png,a,test\n",
    )
    .expect("csv");
    refused(
        dir,
        "missing-row",
        &csv,
        &["bad.csv line 3", "gone.png does not exist"],
    );
    std::fs::write(
        &list,
        "path,label,split\nimages/train/class-00/00000.png,a,holdout\n",
    )
    .expect("csv");
    refused(
        dir,
        "bad-split",
        &csv,
        &[
            "bad.csv line 2",
            "split \"holdout\" is not one of train, val, test",
        ],
    );

    // Data that changed under a finished run: a resume is refused by the run's identity.
    let changing = copy("changing");
    let resumed = experiment(dir, "resumed", &folder(&changing));
    let out = run(dir, &resumed);
    assert!(out.status.success(), "{}", text(&out));
    let img = changing.join("test/class-00/00000.png");
    image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]))
        .save(&img)
        .expect("png");
    let out = lossbench(&[
        "run",
        s(&resumed),
        "--results",
        s(&dir.join("results")),
        "--resume",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("data.content_sha256"), "{}", text(&out));
}
