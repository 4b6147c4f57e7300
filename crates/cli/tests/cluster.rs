//! The grid on a scheduler, with the real binary: `plan`, `run --index` / `--shard`, and the
//! Slurm and Kubernetes exporters (structure; the real Slurm run is scripts/slurm-check.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lossbench_experiment::{RunDir, read_metrics};

const EXPERIMENT: &str = r#"name = "grid"
seeds = [0, 1]

[data]
set = "cifar100"
dir = "DATA"
synthetic = { classes = 4, train_per_class = 8, test_per_class = 2, seed = 1 }

[model]
arch = "resnet18"
width = 0.0625

[training]
epochs = 1
batch_size = 16
lr = 0.1
schedule = { kind = "constant" }

[[losses]]
name = "softmax"

[[losses]]
name = "cosface"
params = { s = 8.0, m = 0.2 }
"#;

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let exp = dir.join("grid.toml");
    std::fs::write(
        &exp,
        EXPERIMENT.replace("DATA", &dir.join("data").display().to_string()),
    )
    .expect("write");
    (exp, dir.join("results"))
}

fn lossbench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lossbench"));
    cmd.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lossbench")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn trained(results: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for (loss, seed) in [
        ("softmax", 0),
        ("softmax", 1),
        ("cosface", 0),
        ("cosface", 1),
    ] {
        if read_metrics(&RunDir::new(&results.join("grid"), loss, seed))
            .is_ok_and(|m| !m.is_empty())
        {
            found.push((loss.to_string(), seed));
        }
    }
    found
}

/// The grid fingerprint `lossbench plan` prints on its last line (`grid HASH: N runs`).
fn plan_hash(exp: &Path, results: &Path, extra: &[&str]) -> String {
    let mut args = vec!["plan", s(exp), "--results", s(results)];
    args.extend_from_slice(extra);
    let out = lossbench(&args, &[]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("grid "))
        .and_then(|l| l.split(':').next())
        .expect("grid line")
        .to_string()
}

#[test]
fn plan_index_and_shard_address_the_same_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results) = setup(dir.path());
    let plan = |json: bool| {
        let mut args = vec!["plan", s(&exp), "--results", s(&results)];
        if json {
            args.push("--json");
        }
        lossbench(&args, &[])
    };
    let out = plan(false);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("index  loss"), "{table}");
    assert!(
        lines[1].contains("softmax") && lines[1].contains("pending"),
        "{table}"
    );
    assert!(lines[3].trim_start().starts_with("2  cosface"), "{table}");
    assert!(table.contains("4 runs"), "{table}");

    // Index 2 is (cosface, 0): exactly that run, found by SLURM_ARRAY_TASK_ID.
    let out = lossbench(
        &[
            "run",
            s(&exp),
            "--index",
            "auto",
            "--backend",
            "flex",
            "--results",
            s(&results),
        ],
        &[("SLURM_ARRAY_TASK_ID", "2")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(trained(&results), [("cosface".to_string(), 0)]);
    // The same index again (a requeued task): the completed run is skipped.
    let out = lossbench(
        &[
            "run",
            s(&exp),
            "--index",
            "2",
            "--backend",
            "flex",
            "--results",
            s(&results),
        ],
        &[],
    );
    assert!(text(&out).contains("already completed"), "{}", text(&out));

    // Shard 1/2: indices 1 and 3 = (softmax, 1) and (cosface, 1), via JOB_COMPLETION_INDEX-free
    // plain flags.
    let out = lossbench(
        &[
            "run",
            s(&exp),
            "--shard",
            "1/2",
            "--backend",
            "flex",
            "--results",
            s(&results),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        trained(&results),
        [
            ("softmax".to_string(), 1),
            ("cosface".to_string(), 0),
            ("cosface".to_string(), 1)
        ]
    );
    let out = plan(true);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let statuses: Vec<&str> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["pending", "completed", "completed", "completed"]);
    assert_eq!(rows[2]["loss"], "cosface");
    assert_eq!(rows[2]["epochs_done"], 1);
}

#[test]
fn bad_indices_and_a_changed_grid_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results) = setup(dir.path());
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "run",
            s(&exp),
            "--backend",
            "flex",
            "--results",
            s(&results),
        ];
        args.extend_from_slice(extra);
        lossbench(&args, env)
    };
    for (extra, env, needle) in [
        (
            &["--index", "4"][..],
            &[][..],
            "run index 4 is outside the grid of 4 runs (0–3)",
        ),
        (&["--index", "auto"], &[], "neither SLURM_ARRAY_TASK_ID"),
        (
            &["--index", "auto"],
            &[("JOB_COMPLETION_INDEX", "two")],
            "JOB_COMPLETION_INDEX = \"two\" is not a run index",
        ),
        (&["--shard", "2/2"], &[], "--shard \"2/2\" is invalid"),
        (
            &["--expect-grid", "0123456789abcdef"],
            &[],
            "no longer describes the grid",
        ),
        (&["--seed", "7"], &[], "--seed 7: not in"),
    ] {
        let out = run(extra, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {err}");
        assert!(
            lines[0].contains(needle),
            "{extra:?}: wanted `{needle}` in {err}"
        );
    }
    assert!(trained(&results).is_empty(), "nothing ran");
}

#[test]
fn slurm_export_is_an_array_with_requeue_and_a_report_after_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results) = setup(dir.path());
    let out_dir = dir.path().join("slurm");
    let out = lossbench(
        &[
            "export",
            "slurm",
            s(&exp),
            "--results",
            s(&results),
            "--out",
            s(&out_dir),
            "--parallel",
            "2",
            "--time",
            "01:30:00",
            "--partition",
            "gpu",
            "--account",
            "lab",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let array = std::fs::read_to_string(out_dir.join("array.sbatch")).expect("array");
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --time=01:30:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "scontrol requeue",
    ] {
        assert!(array.contains(line), "{line} missing from:\n{array}");
    }
    assert!(array.contains(&format!(
        "run {} --index auto --resume --expect-grid ",
        s(&exp)
    )));
    assert!(array.contains(&format!("--results {}", s(&results))));
    let report = std::fs::read_to_string(out_dir.join("report.sbatch")).expect("report");
    assert!(
        report.contains(&format!("report {} --results", s(&exp))),
        "{report}"
    );
    let submit = std::fs::read_to_string(out_dir.join("submit.sh")).expect("submit");
    assert!(
        submit.contains("--dependency=afterany:$array report.sbatch"),
        "{submit}"
    );
    // The grid hash in the script is the one `plan` prints.
    let hash = plan_hash(&exp, &results, &[]);
    assert!(array.contains(&format!("--expect-grid {hash}")), "{array}");
    // With --epochs the grid (and its hash) is that of `plan --epochs`.
    let short = dir.path().join("slurm-short");
    let out = lossbench(
        &[
            "export",
            "slurm",
            s(&exp),
            "--results",
            s(&results),
            "--out",
            s(&short),
            "--epochs",
            "3",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let short_hash = plan_hash(&exp, &results, &["--epochs", "3"]);
    assert_ne!(short_hash, hash);
    let array = std::fs::read_to_string(short.join("array.sbatch")).expect("array");
    assert!(
        array.contains(&format!("--expect-grid {short_hash}")) && array.contains("--epochs 3"),
        "{array}"
    );
    let check = Command::new("bash")
        .args(["-n", s(&out_dir.join("array.sbatch"))])
        .status()
        .expect("bash -n");
    assert!(check.success(), "array.sbatch is not valid bash");
}

#[test]
fn k8s_export_is_an_indexed_job_with_gpus_and_a_volume() {
    let dir = tempfile::tempdir().expect("tmp");
    let (exp, results) = setup(dir.path());
    let out_dir = dir.path().join("k8s");
    let out = lossbench(
        &[
            "export",
            "k8s",
            s(&exp),
            "--results",
            s(&results),
            "--out",
            s(&out_dir),
            "--parallel",
            "3",
            "--image",
            "registry.example/lossbench:1",
            "--claim",
            "cifar",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("job.json")).expect("job"))
            .expect("job parses");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(
        (spec["completions"].as_u64(), spec["parallelism"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(spec["backoffLimitPerIndex"], 3);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/lossbench:1");
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "cifar"
    );
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/work");
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|w| w.as_str().expect("word"))
        .collect();
    assert_eq!(
        &command[..5],
        ["lossbench", "run", s(&exp), "--index", "auto"]
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report-job.json")).expect("report"))
            .expect("report parses");
    assert_eq!(
        report["spec"]["template"]["spec"]["containers"][0]["command"][1],
        "report"
    );
}
