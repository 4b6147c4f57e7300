//! Bad input to the binary: a one-line error and a non-zero exit code, never a panic.

use std::process::Output;

use support::{Tiny, command, lossbench, lossbench_with_env, repeated_clause, s};

mod support;

fn probe_text(text: &str) -> Output {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("in.json");
    std::fs::write(&path, text).expect("write");
    lossbench(&["probe", "--input", path.to_str().expect("utf-8")])
}

fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "wanted `{needle}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

const GOOD: &str = r#"{"loss": "arcface", "features": [[1, 0], [0, 1]], "weights": [[1, 0], [0, 1], [1, 1]], "labels": [0, 2]}"#;

#[test]
fn probe_rejects_bad_input_with_exit_code_2() {
    assert_eq!(probe_text(GOOD).status.code(), Some(0));
    for (text, needle) in [
        (GOOD.replace("arcface", "arcfase"), "unknown loss `arcfase`"),
        (
            GOOD.replace("[[1, 0], [0, 1]]", "[[1, 0], [0]]"),
            "`features` is ragged",
        ),
        (
            GOOD.replace("[[1, 0], [0, 1], [1, 1]]", "[[1, 0, 0], [0, 1, 0]]"),
            "features have 2 columns but weights have 3",
        ),
        (
            GOOD.replace("[0, 2]", "[0, 3]"),
            "label 3 at position 1 is out of range",
        ),
        (GOOD.replace("[0, 2]", "[0]"), "1 labels for 2 feature rows"),
        (
            GOOD.replace("\"labels\"", "\"params\": {\"m\": 4}, \"labels\""),
            "parameter `m` = 4 is invalid: must be in [0, π)",
        ),
        (
            GOOD.replace("\"labels\"", "\"params\": {\"q\": 1}, \"labels\""),
            "has no parameter `q`",
        ),
        (
            GOOD.replace("\"labels\"", "\"extra\": 1, \"labels\""),
            "unknown field `extra`",
        ),
        ("{\"loss\": ".to_string(), "invalid probe input"),
        (
            GOOD.replace("\"labels\"", "\"bias\": [0, 0, 0], \"labels\""),
            "has no bias",
        ),
        (
            GOOD.replace("[[1, 0], [0, 1]]", "[[1e300, 0], [0, 1]]"),
            "`features` row 0 has a norm too large for float64",
        ),
        (
            GOOD.replace("[[1, 0], [0, 1], [1, 1]]", "[[1, 0], [0, 1], [1, 1e200]]"),
            "`weights` row 2 has a norm too large for float64",
        ),
    ] {
        assert_one_line_error(&probe_text(&text), 2, needle);
    }
}

#[test]
fn losses_lists_every_loss_with_defaults() {
    let out = lossbench(&["losses"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["softmax", "normface", "sphereface", "cosface", "arcface"] {
        assert!(
            text.lines().any(|l| l == name),
            "{name} missing from:\n{text}"
        );
    }
    assert!(
        text.contains("lambda_base") && text.contains("default 1000"),
        "{text}"
    );
}

#[test]
fn run_and_report_reject_bad_files_in_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nbogus = 1\n").expect("write");
    assert_one_line_error(
        &lossbench(&["run", bad.to_str().expect("utf-8")]),
        2,
        "bad.toml:",
    );
    let missing = dir.path().join("nope.toml");
    assert_one_line_error(
        &lossbench(&["run", missing.to_str().expect("utf-8")]),
        2,
        "nope.toml",
    );
    let empty = dir.path().join("results-empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert_one_line_error(
        &lossbench(&["report", empty.to_str().expect("utf-8")]),
        1,
        "not a results folder",
    );
    assert_one_line_error(
        &lossbench(&["data", "verify", dir.path().to_str().expect("utf-8")]),
        1,
        "train.bin: missing",
    );
}

#[test]
fn probe_answers_for_every_registered_loss() {
    let out = lossbench(&["losses"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        let rows = if name == "subcenter-arcface" {
            "[[1, 0], [0, 1], [1, 1], [0.5, -1], [-1, 0.2], [0.3, 0.3]]"
        } else {
            "[[1, 0], [0, 1], [1, 1]]"
        };
        let input = format!(
            r#"{{"loss": "{name}", "features": [[1, 0.5], [0.2, 1]], "weights": {rows}, "labels": [0, 1]}}"#
        );
        let out = probe_text(&input);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        assert!(
            v["loss"].as_f64().is_some_and(f64::is_finite),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn unwritable_results_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").expect("write");
    let exp = Tiny {
        synthetic: (3, 2, 1, 0),
        batch_size: 4,
        ..Tiny::default()
    }
    .write(dir.path(), "e.toml");
    let results = blocker.join("results");
    let out = lossbench(&[
        "run",
        exp.to_str().expect("utf-8"),
        "--backend",
        "flex",
        "--results",
        results.to_str().expect("utf-8"),
    ]);
    assert_one_line_error(&out, 1, "cannot create");
}

#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    use std::io::Read;
    let mut child = command()
        .arg("losses")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Close the reading end at once, as `lossbench losses | head -0` would.
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "{status:?}: {err}");
}

/// Every documented bad input, each a one-line error that says no clause twice (a message
/// that repeats its source reads `x: No such file (os error 2): No such file (os error 2)`).
#[test]
fn no_error_message_says_a_clause_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let exp = Tiny {
        seeds: &[0, 1],
        ..Tiny::default()
    }
    .write(d, "e.toml");
    let bad_key = d.join("bad-key.toml");
    std::fs::write(&bad_key, "name = \"x\"\nbogus = 1\n").expect("write");
    let bad_type = d.join("bad-type.toml");
    let text = std::fs::read_to_string(&exp).expect("read");
    std::fs::write(&bad_type, text.replace("epochs = 1", "epochs = \"one\"")).expect("write");
    let no_data = d.join("no-data.toml");
    std::fs::write(
        &no_data,
        text.replace(
            "synthetic = { classes = 4, train_per_class = 8, test_per_class = 2, seed = 1 }\n",
            "",
        )
        .replace(
            &d.join("data").display().to_string(),
            &d.join("missing").display().to_string(),
        ),
    )
    .expect("write");
    let probe = d.join("probe.json");
    std::fs::write(&probe, "{\"loss\": \"arcface\", \"features\": [[1, 0]]").expect("write");
    let nope = d.join("nope.toml");
    let results = d.join("results");
    let flex = ["--backend", "flex", "--results", s(&results)];
    let with = |head: &[&str]| -> Vec<String> {
        head.iter().chain(&flex).map(|w| (*w).to_string()).collect()
    };
    let cases: Vec<Vec<String>> = vec![
        with(&["run", s(&nope)]),
        with(&["run", s(&bad_key)]),
        with(&["run", s(&bad_type)]),
        with(&["run", s(&no_data)]),
        with(&["run", s(&exp), "--loss", "arcfase"]),
        with(&["run", s(&exp), "--seed", "7"]),
        with(&["run", s(&exp), "--index", "9"]),
        with(&["run", s(&exp), "--shard", "3/2"]),
        with(&["run", s(&exp), "--device", "3"]),
        with(&["sweep", s(&exp)]),
        vec!["plan".into(), s(&nope).into()],
        vec!["report".into(), s(&nope).into()],
        vec!["report".into(), s(d).into()],
        vec!["verify-results".into(), s(&nope).into()],
        vec!["data".into(), "verify".into(), s(d).into()],
        vec!["probe".into(), "--input".into(), s(&probe).into()],
        vec!["probe".into(), "--input".into(), s(&nope).into()],
        vec![
            "export".into(),
            "k8s".into(),
            s(&exp).into(),
            "--image".into(),
            "lossbench:1".into(),
            "--out".into(),
            s(&d.join("jobs")).into(),
        ],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lossbench_with_env(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if let Some(twice) = repeated_clause(errors[0]) {
            panic!("{args:?} says `{twice}` twice: {}", errors[0]);
        }
    }
    assert!(
        !results.join("e").join("softmax").exists(),
        "nothing trained"
    );
}

#[test]
fn the_clause_check_finds_a_repeated_source() {
    let doubled = "error: nope.toml: No such file or directory (os error 2): No such file or directory (os error 2)";
    assert_eq!(
        repeated_clause(doubled).as_deref(),
        Some("No such file or directory")
    );
    assert_eq!(
        repeated_clause("error: cannot read nope.toml: No such file or directory (os error 2)"),
        None
    );
}
