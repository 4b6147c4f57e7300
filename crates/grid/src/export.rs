//! `lossbench export slurm|k8s`: the grid as a job for an existing scheduler — one array
//! task or indexed pod per run, each running `lossbench run --index auto`, and a report job
//! after them. lossbench schedules nothing itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lossbench_experiment::{Experiment, atomic_write};

use crate::grid::{GridKind, experiment_grid, grid_hash};
use crate::orchestrate::{EXIT_BAD_INPUT, EXIT_INTERRUPTED};

/// What every exporter needs: the experiment, where things live, how much at once.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The experiment file as the jobs will read it (an absolute path on shared storage).
    pub experiment: PathBuf,
    /// The results root as the jobs will see it.
    pub results: PathBuf,
    /// Where the job files are written.
    pub out: PathBuf,
    /// Where the report job writes the report.
    pub report_out: PathBuf,
    /// Runs at the same time (the array's `%P`, the Job's `parallelism`); 0 = all.
    pub parallel: usize,
    /// GPUs per run (0: a CPU job, e.g. `--backend flex`).
    pub gpus_per_run: u32,
    /// `--backend` of every run.
    pub backend: String,
    /// `--epochs` of every run (part of the grid, so of its fingerprint).
    pub epochs: Option<u32>,
    /// `--data-dir` of every run (the Kubernetes exporter sets it: the pods see the data
    /// under the claim's mount, not where the experiment file says).
    pub data_dir: Option<PathBuf>,
    /// The experiment's runs, or its sweep runs (`lossbench sweep --index auto`, then a job
    /// that records the choice instead of the report).
    pub kind: GridKind,
}

/// Slurm specifics.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// The `lossbench` binary on the cluster (default: this one).
    pub lossbench: PathBuf,
    /// CPUs per task.
    pub cpus_per_run: u32,
}

/// Kubernetes specifics.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    pub image: String,
    /// PersistentVolumeClaim holding the data and results, mounted at `mount`.
    pub claim: String,
    /// Where the pods mount the claim.
    pub mount: PathBuf,
    /// Where this machine sees the claim's contents, if not at `mount`: paths under it are
    /// written as the same paths under `mount`.
    pub claim_path: Option<PathBuf>,
    /// Retries of one index before it counts as failed.
    pub backoff_limit_per_index: u32,
}

/// The files an exporter wrote, and the grid size.
#[derive(Debug, Clone)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub runs: usize,
    pub grid: String,
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn prepare(options: &ExportOptions) -> Result<(Experiment, usize, String)> {
    let experiment = Experiment::load(&options.experiment)?;
    let (runs, _) = experiment_grid(
        &experiment,
        &options.experiment,
        options.epochs,
        &options.results,
        options.kind,
    )?;
    if runs.is_empty() {
        bail!("{} has no runs", options.experiment.display());
    }
    let hash = grid_hash(&experiment, &runs);
    Ok((experiment, runs.len(), hash))
}

fn create_out(options: &ExportOptions) -> Result<()> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    atomic_write(path, text.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}

/// The `lossbench run` command of one task, word by word (unquoted).
fn run_command(lossbench: &str, options: &ExportOptions, grid: &str) -> Vec<String> {
    let mut words = vec![
        lossbench.to_string(),
        subcommand(options.kind).into(),
        options.experiment.display().to_string(),
        "--index".into(),
        "auto".into(),
        "--resume".into(),
        "--expect-grid".into(),
        grid.into(),
        "--backend".into(),
        options.backend.clone(),
        "--results".into(),
        options.results.display().to_string(),
    ];
    if let Some(e) = options.epochs {
        words.extend(["--epochs".to_string(), e.to_string()]);
    }
    if let Some(d) = &options.data_dir {
        words.extend(["--data-dir".to_string(), d.display().to_string()]);
    }
    words
}

fn subcommand(kind: GridKind) -> &'static str {
    match kind {
        GridKind::Main => "run",
        GridKind::Sweep => "sweep",
    }
}

/// What runs once every task has ended: the report, or (a sweep) recording the choice.
fn final_command(lossbench: &str, options: &ExportOptions) -> Vec<String> {
    let mut words = vec![
        lossbench.to_string(),
        match options.kind {
            GridKind::Main => "report",
            GridKind::Sweep => "sweep",
        }
        .into(),
        options.experiment.display().to_string(),
        "--results".into(),
        options.results.display().to_string(),
    ];
    match options.kind {
        GridKind::Main => {
            words.extend(["--out".into(), options.report_out.display().to_string()]);
        }
        GridKind::Sweep => {
            words.push("--choose".into());
            if let Some(e) = options.epochs {
                words.extend(["--epochs".to_string(), e.to_string()]);
            }
        }
    }
    words
}

fn shell(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// An sbatch array (one task per run, requeued on pre-emption), a report job that runs after
/// the whole array (`afterany`), and `submit.sh` that submits both.
pub fn slurm(options: &ExportOptions, slurm: &SlurmOptions) -> Result<Exported> {
    let (experiment, runs, hash) = prepare(options)?;
    create_out(options)?;
    let name = &experiment.name;
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let lossbench = slurm.lossbench.display().to_string();
    let parallel = if options.parallel == 0 {
        String::new()
    } else {
        format!("%{}", options.parallel)
    };
    let mut header = format!(
        "#!/usr/bin/env bash\n# Written by `lossbench export slurm` for experiment `{name}` ({runs} runs, grid {hash}).\n"
    );
    let common = |header: &mut String, job: &str| {
        header.push_str(&format!("#SBATCH --job-name={job}\n"));
        if let Some(t) = &slurm.time {
            header.push_str(&format!("#SBATCH --time={t}\n"));
        }
        if let Some(p) = &slurm.partition {
            header.push_str(&format!("#SBATCH --partition={p}\n"));
        }
        if let Some(a) = &slurm.account {
            header.push_str(&format!("#SBATCH --account={a}\n"));
        }
    };
    common(&mut header, &format!("lossbench-{name}"));
    header.push_str(&format!(
        "#SBATCH --array=0-{}{parallel}\n#SBATCH --requeue\n#SBATCH --signal=B:USR1@120\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task={}\n",
        runs - 1,
        slurm.cpus_per_run.max(1)
    ));
    if options.gpus_per_run > 0 {
        header.push_str(&format!(
            "#SBATCH --gpus-per-task={}\n",
            options.gpus_per_run
        ));
    }
    header.push_str(&format!(
        "#SBATCH --output={}/%x-%A_%a.out\n",
        logs.display()
    ));
    let array = format!(
        "{header}
# Slurm sends USR1 two minutes before the time limit (TERM on pre-emption); this script
# passes it on as TERM: lossbench finishes its current step, checkpoints that exact point,
# marks the run interrupted and exits 75, and the task is requeued. `--resume` then continues
# from that checkpoint. A finished run is skipped.
set -uo pipefail
{command} &
child=$!
trap 'kill -TERM $child 2>/dev/null' USR1 TERM
wait $child; status=$?
# wait returns early when a trapped signal arrives: wait for the run's own exit.
while kill -0 $child 2>/dev/null; do wait $child; status=$?; done
if [ $status -eq 75 ]; then
  scontrol requeue \"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}\"
fi
exit $status
",
        command = shell(&run_command(&lossbench, options, &hash))
    );
    let mut report_header = format!(
        "#!/usr/bin/env bash\n# Written by `lossbench export slurm`: the report of `{name}` once every array task has ended.\n"
    );
    common(&mut report_header, &format!("lossbench-{name}-report"));
    report_header.push_str(&format!(
        "#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n#SBATCH --output={}/%x-%j.out\n",
        logs.display()
    ));
    let report = format!(
        "{report_header}set -euo pipefail\n{}\n",
        shell(&final_command(&lossbench, options))
    );
    let submit = "#!/usr/bin/env bash
# Submit the array, then the report job to run after every task of it has ended.
set -euo pipefail
cd \"$(dirname \"$0\")\"
array=$(sbatch --parsable array.sbatch)
array=${array%%;*}
report=$(sbatch --parsable --dependency=afterany:$array report.sbatch)
report=${report%%;*}
echo \"array job $array, report job $report\"
"
    .to_string();
    let files = [
        ("array.sbatch", array),
        ("report.sbatch", report),
        ("submit.sh", submit),
    ];
    let mut written = Vec::new();
    for (file, text) in files {
        let path = options.out.join(file);
        write_script(&path, &text)?;
        written.push(path);
    }
    Ok(Exported {
        files: written,
        runs,
        grid: hash,
    })
}

/// Paths as the pods see them: every path a pod reads or writes must be on the claim.
struct PodPaths<'a> {
    k8s: &'a K8sOptions,
}

impl PodPaths<'_> {
    /// `path` inside a pod, or a one-line refusal naming it and the mount.
    fn map(&self, what: &str, path: &Path) -> Result<PathBuf> {
        let mount = &self.k8s.mount;
        let local_root = self.k8s.claim_path.as_deref().unwrap_or(mount);
        match path.strip_prefix(local_root) {
            Ok(inside) => Ok(mount.join(inside)),
            Err(_) => match &self.k8s.claim_path {
                Some(local) => bail!(
                    "{what} {} is not under --claim-path {} (the claim, mounted at {} in the pods): a pod cannot see it",
                    path.display(),
                    local.display(),
                    mount.display()
                ),
                None => bail!(
                    "{what} {} is not under the claim's mount {}: a pod cannot see it; put it there, or pass --claim-path with the folder where this machine sees the claim",
                    path.display(),
                    mount.display()
                ),
            },
        }
    }

    /// The exporter's options with every path a pod uses mapped onto the mount, the data
    /// folder included (a relative `data.dir` is taken from the current directory, as a run
    /// started here would).
    fn options(&self, options: &ExportOptions, experiment: &Experiment) -> Result<ExportOptions> {
        let data = options
            .data_dir
            .clone()
            .unwrap_or_else(|| experiment.data.location().to_path_buf());
        let data = if data.is_absolute() {
            data
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(data)
        };
        Ok(ExportOptions {
            experiment: self.map("the experiment file", &options.experiment)?,
            results: self.map("--results", &options.results)?,
            report_out: self.map("--report-out", &options.report_out)?,
            data_dir: Some(self.map("the data folder", &data)?),
            ..options.clone()
        })
    }
}

/// The Job's `podFailurePolicy`: a run interrupted by a signal (exit 75, checkpointed) or a
/// pod the cluster disrupted (pre-emption, eviction, node drain) is retried without spending
/// the index's backoff; bad input (exit 2: the same command can only fail again) fails the
/// index at once; any other failure spends one retry of `backoffLimitPerIndex`.
fn pod_failure_policy(container: &str) -> serde_json::Value {
    serde_json::json!({
        "rules": [
            { "action": "Ignore", "onPodConditions": [{ "type": "DisruptionTarget" }] },
            {
                "action": "Ignore",
                "onExitCodes": { "containerName": container, "operator": "In", "values": [EXIT_INTERRUPTED] }
            },
            {
                "action": "FailIndex",
                "onExitCodes": { "containerName": container, "operator": "In", "values": [EXIT_BAD_INPUT] }
            }
        ]
    })
}

/// A Kubernetes Indexed Job (one pod per run, `completions` = runs) and a report Job, as
/// JSON manifests (`kubectl apply -f`), data and results on a PersistentVolumeClaim. Every
/// path in the pods' commands is on the claim, or nothing is written.
pub fn k8s(options: &ExportOptions, k8s: &K8sOptions) -> Result<Exported> {
    let (experiment, runs, hash) = prepare(options)?;
    let pod = PodPaths { k8s }.options(options, &experiment)?;
    create_out(options)?;
    let name = format!("lossbench-{}", experiment.name.replace('_', "-"));
    let volume = serde_json::json!([{
        "name": "work",
        "persistentVolumeClaim": { "claimName": k8s.claim }
    }]);
    let mounts = serde_json::json!([{ "name": "work", "mountPath": k8s.mount }]);
    let mut limits = serde_json::Map::new();
    if options.gpus_per_run > 0 {
        limits.insert("nvidia.com/gpu".into(), options.gpus_per_run.into());
    }
    let parallelism = if options.parallel == 0 {
        runs
    } else {
        options.parallel.min(runs)
    };
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": { "app.kubernetes.io/name": "lossbench", "lossbench/grid": hash }
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": runs,
            "parallelism": parallelism,
            "backoffLimitPerIndex": k8s.backoff_limit_per_index,
            "maxFailedIndexes": runs,
            "podFailurePolicy": pod_failure_policy("run"),
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 120,
                    "volumes": volume,
                    "containers": [{
                        "name": "run",
                        "image": k8s.image,
                        "workingDir": k8s.mount,
                        "command": run_command("lossbench", &pod, &hash),
                        "resources": { "limits": limits },
                        "volumeMounts": mounts
                    }]
                }
            }
        }
    });
    let report = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": format!("{name}-report") },
        "spec": {
            "backoffLimit": 2,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "volumes": volume,
                    "containers": [{
                        "name": "report",
                        "image": k8s.image,
                        "workingDir": k8s.mount,
                        "command": final_command("lossbench", &pod),
                        "volumeMounts": mounts
                    }]
                }
            }
        }
    });
    let mut written = Vec::new();
    for (file, value) in [("job.json", job), ("report-job.json", report)] {
        let path = options.out.join(file);
        atomic_write(&path, &serde_json::to_vec_pretty(&value)?)?;
        written.push(path);
    }
    Ok(Exported {
        files: written,
        runs,
        grid: hash,
    })
}
