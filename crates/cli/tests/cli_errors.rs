//! Bad input to the binary: a one-line error and a non-zero exit code, never a panic.

use std::process::{Command, Output};

fn lossbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lossbench")).args(args).output().expect("run lossbench")
}

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
    assert!(err.starts_with("error: ") && err.contains(needle), "wanted `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

const GOOD: &str = r#"{"loss": "arcface", "features": [[1, 0], [0, 1]], "weights": [[1, 0], [0, 1], [1, 1]], "labels": [0, 2]}"#;

#[test]
fn probe_rejects_bad_input_with_exit_code_2() {
    assert_eq!(probe_text(GOOD).status.code(), Some(0));
    for (text, needle) in [
        (GOOD.replace("arcface", "arcfase"), "unknown loss `arcfase`"),
        (GOOD.replace("[[1, 0], [0, 1]]", "[[1, 0], [0]]"), "`features` is ragged"),
        (GOOD.replace("[[1, 0], [0, 1], [1, 1]]", "[[1, 0, 0], [0, 1, 0]]"), "features have 2 columns but weights have 3"),
        (GOOD.replace("[0, 2]", "[0, 3]"), "label 3 at position 1 is out of range"),
        (GOOD.replace("[0, 2]", "[0]"), "1 labels for 2 feature rows"),
        (GOOD.replace("\"labels\"", "\"params\": {\"m\": 4}, \"labels\""), "parameter `m` = 4 is invalid: must be in [0, π)"),
        (GOOD.replace("\"labels\"", "\"params\": {\"q\": 1}, \"labels\""), "has no parameter `q`"),
        (GOOD.replace("\"labels\"", "\"extra\": 1, \"labels\""), "unknown field `extra`"),
        ("{\"loss\": ".to_string(), "invalid probe input"),
        (GOOD.replace("\"labels\"", "\"bias\": [0, 0, 0], \"labels\""), "has no bias"),
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
        assert!(text.lines().any(|l| l == name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("lambda_base") && text.contains("default 1000"), "{text}");
}

#[test]
fn run_and_report_reject_bad_files_in_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nbogus = 1\n").expect("write");
    assert_one_line_error(&lossbench(&["run", bad.to_str().expect("utf-8")]), 1, "bad.toml:");
    let missing = dir.path().join("nope.toml");
    assert_one_line_error(&lossbench(&["run", missing.to_str().expect("utf-8")]), 1, "nope.toml");
    let empty = dir.path().join("results-empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert_one_line_error(&lossbench(&["report", empty.to_str().expect("utf-8")]), 1, "not a results folder");
    assert_one_line_error(&lossbench(&["data", "verify", dir.path().to_str().expect("utf-8")]), 1, "train.bin: missing");
}
