//! `lossbench probe`: one loss on explicit numbers, as JSON, so anyone can check our maths
//! against another framework.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use burn::prelude::*;
use lossbench_head::eval::Case;
use serde::Deserialize;

/// The input document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeInput {
    loss: String,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    features: Vec<Vec<f64>>,
    weights: Vec<Vec<f64>>,
    #[serde(default)]
    bias: Option<Vec<f64>>,
    labels: Vec<i64>,
    #[serde(default)]
    iteration: u64,
}

fn evaluate(path: &Path) -> Result<String, String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let input: ProbeInput = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid probe input: {e}", path.display()))?;
    let params = lossbench_registry::resolve_params(&input.loss, &input.params)
        .map_err(|e| e.to_string())?;
    let case = Case {
        features: input.features,
        weights: input.weights,
        bias: input.bias,
        labels: input.labels,
        iteration: input.iteration,
    };
    let out = lossbench_registry::evaluate_named(&input.loss, &params, &case, &Device::flex())
        .map_err(|e| e.to_string())?;
    serde_json::to_string(&out).map_err(|e| e.to_string())
}

/// Print the evaluation, or a one-line error and exit code 2.
pub fn run(path: &Path) -> ExitCode {
    match evaluate(path) {
        Ok(json) => match crate::emit(&format!("{json}\n")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the result: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
