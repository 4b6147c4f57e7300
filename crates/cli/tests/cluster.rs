//! The grid on a scheduler, with the real binary: `plan`, `run --index` / `--shard`, and the
//! Slurm and Kubernetes exporters (structure; the real Slurm run is scripts/slurm-check.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use lossbench_experiment::{RunDir, read_metrics};
use support::{Tiny, lossbench_with_env as lossbench, s, text};

mod support;

/// Two losses × two seeds, one epoch each.
fn grid_experiment() -> Tiny {
    Tiny {
        name: "grid",
        seeds: &[0, 1],
        losses: &[
            ("softmax", ""),
            ("cosface", "params = { s = 8.0, m = 0.2 }"),
        ],
        ..Tiny::default()
    }
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    (
        grid_experiment().write(dir, "grid.toml"),
        dir.join("results"),
    )
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
        // Bad input: the same task can only fail again (a Job's podFailurePolicy reads it).
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
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
            "--claim-path",
            s(dir.path()),
            "--report-out",
            s(&dir.path().join("reports")),
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
    // This machine's copy of the claim (--claim-path) is /work in the pods: every path of the
    // command is the same path under the mount.
    assert_eq!(
        &command[..5],
        ["lossbench", "run", "/work/grid.toml", "--index", "auto"]
    );
    let after = |flag: &str| {
        let at = command.iter().position(|w| *w == flag).expect(flag);
        command[at + 1]
    };
    assert_eq!(after("--results"), "/work/results");
    assert_eq!(after("--data-dir"), "/work/data");
    assert_eq!(container["workingDir"], "/work");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report-job.json")).expect("report"))
            .expect("report parses");
    let report_command = &report["spec"]["template"]["spec"]["containers"][0]["command"];
    assert_eq!(report_command[1], "report");
    assert_eq!(report_command[2], "/work/grid.toml");
}

fn k8s_export(dir: &Path, extra: &[&str]) -> std::process::Output {
    let (exp, results) = setup(dir);
    let out_dir = dir.join("k8s");
    let reports = dir.join("reports");
    let mut args = vec![
        "export",
        "k8s",
        s(&exp),
        "--results",
        s(&results),
        "--report-out",
        s(&reports),
        "--out",
        s(&out_dir),
        "--image",
        "lossbench:1",
    ];
    args.extend_from_slice(extra);
    lossbench(&args, &[])
}

#[test]
fn k8s_export_refuses_paths_a_pod_cannot_see() {
    let dir = tempfile::tempdir().expect("tmp");
    // The experiment and the results are in a temporary folder, the claim at /work.
    let out = k8s_export(dir.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!(
            "the experiment file {} is not under the claim's mount /work",
            s(&dir.path().join("grid.toml"))
        )),
        "{err}"
    );
    assert!(!dir.path().join("k8s").exists(), "nothing written");
    // The data folder counts too: under the claim's local copy, the rest of the paths are
    // fine, the data is not.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(dir.path().join("grid.toml")).expect("read");
    std::fs::write(
        dir.path().join("grid.toml"),
        text.replace(
            s(&dir.path().join("data")),
            s(&elsewhere.path().join("data")),
        ),
    )
    .expect("write");
    let out = lossbench(
        &[
            "export",
            "k8s",
            s(&dir.path().join("grid.toml")),
            "--results",
            s(&dir.path().join("results")),
            "--out",
            s(&dir.path().join("k8s")),
            "--image",
            "lossbench:1",
            "--claim-path",
            s(dir.path()),
            "--report-out",
            s(&dir.path().join("reports")),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the data folder") && err.contains("is not under --claim-path"),
        "{err}"
    );
    assert!(!dir.path().join("k8s").exists(), "nothing written");
}

#[test]
fn k8s_export_retries_interruptions_for_free_and_fails_bad_input_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = k8s_export(dir.path(), &["--mount", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out));
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("k8s/job.json")).expect("job"))
            .expect("job parses");
    let rules = job["spec"]["podFailurePolicy"]["rules"]
        .as_array()
        .expect("podFailurePolicy.rules");
    let action_for_exit = |code: u64| {
        rules
            .iter()
            .find(|r| {
                r["onExitCodes"]["operator"] == "In"
                    && r["onExitCodes"]["containerName"] == "run"
                    && r["onExitCodes"]["values"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|c| c.as_u64() == Some(code)))
            })
            .map(|r| r["action"].clone())
    };
    // SIGTERM → checkpoint → exit 75: retried without spending the index's backoff.
    assert_eq!(action_for_exit(75), Some("Ignore".into()));
    // Bad input (exit 2): the same command can only fail again.
    assert_eq!(action_for_exit(2), Some("FailIndex".into()));
    // A failed run (exit 1) spends one retry of backoffLimitPerIndex, as without a policy.
    assert_eq!(action_for_exit(1), None);
    let disrupted = rules.iter().find(|r| {
        r["onPodConditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget"))
    });
    assert_eq!(
        disrupted.map(|r| r["action"].clone()),
        Some("Ignore".into())
    );
    // Kubernetes accepts a podFailurePolicy only with restartPolicy Never, and FailIndex only
    // with backoffLimitPerIndex.
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert!(job["spec"]["backoffLimitPerIndex"].as_u64().is_some());
    // The exit codes the policy names are the binary's: bad input is 2 ...
    let (exp, results) = (dir.path().join("grid.toml"), dir.path().join("results"));
    let out = lossbench(
        &["run", s(&exp), "--index", "99", "--results", s(&results)],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
