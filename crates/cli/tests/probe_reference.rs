//! `lossbench probe` against an independent float64 implementation of the guide's formulas
//! (plain Rust, no burn), with gradients by central differences of that implementation.

use serde_json::{Value, json};

mod support;

fn probe(input: &Value) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("in.json");
    std::fs::write(&path, input.to_string()).expect("write");
    let out = support::lossbench(&["probe", "--input", support::s(&path)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Mean loss by the formulas of the guide.
fn reference(
    loss: &str,
    p: &Value,
    x: &[Vec<f64>],
    w: &[Vec<f64>],
    b: &[f64],
    y: &[usize],
    iteration: f64,
) -> f64 {
    let get = |k: &str, d: f64| p.get(k).and_then(Value::as_f64).unwrap_or(d);
    let mut total = 0.0;
    for (xi, &yi) in x.iter().zip(y) {
        let xn = norm(xi);
        let cos: Vec<f64> = w
            .iter()
            .map(|wj| xi.iter().zip(wj).map(|(a, c)| a * c).sum::<f64>() / (xn * norm(wj)))
            .map(|c| c.clamp(-1.0, 1.0))
            .collect();
        let logits: Vec<f64> = match loss {
            "softmax" => w
                .iter()
                .zip(b)
                .map(|(wj, bj)| xi.iter().zip(wj).map(|(a, c)| a * c).sum::<f64>() + bj)
                .collect(),
            "normface" => cos.iter().map(|c| get("s", 64.0) * c).collect(),
            "cosface" => {
                let (s, m) = (get("s", 64.0), get("m", 0.35));
                cos.iter()
                    .enumerate()
                    .map(|(j, c)| if j == yi { s * (c - m) } else { s * c })
                    .collect()
            }
            "arcface" => {
                let (s, m) = (get("s", 64.0), get("m", 0.5));
                cos.iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        if j != yi {
                            return s * c;
                        }
                        let theta = c.acos();
                        if theta + m <= std::f64::consts::PI {
                            s * (theta + m).cos()
                        } else {
                            s * (c - m * m.sin())
                        }
                    })
                    .collect()
            }
            "sphereface" => {
                let m = get("m", 4.0);
                let lambda = (get("lambda_base", 1000.0)
                    * (1.0 + get("lambda_gamma", 0.12) * iteration)
                        .powf(-get("lambda_power", 1.0)))
                .max(get("lambda_min", 5.0));
                cos.iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        if j != yi {
                            return xn * c;
                        }
                        let theta = c.acos();
                        let k = (m * theta / std::f64::consts::PI).floor();
                        let psi = (-1f64).powf(k) * (m * theta).cos() - 2.0 * k;
                        (lambda * xn * c + xn * psi) / (1.0 + lambda)
                    })
                    .collect()
            }
            other => panic!("no reference for {other}"),
        };
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        total += lse - logits[yi];
    }
    total / x.len() as f64
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn check(loss: &str, params: Value, iteration: u64) {
    // Rows: generic, aligned with its class weight (cos = 1), opposite to it (cos = −1).
    let w = vec![
        vec![0.6, -0.2, 0.9],
        vec![-0.5, 0.8, 0.1],
        vec![0.3, 0.4, -0.7],
        vec![0.9, 0.1, 0.2],
    ];
    let x = vec![
        vec![1.2, -0.7, 0.4],
        w[1].iter().map(|v| 2.0 * v).collect(),
        w[2].iter().map(|v| -1.5 * v).collect(),
        vec![-0.3, 0.9, 1.1],
    ];
    let y = vec![0usize, 1, 2, 3];
    let b = vec![0.1, -0.2, 0.05, 0.0];
    let mut input = json!({"loss": loss, "params": params, "features": x, "weights": w, "labels": y, "iteration": iteration});
    if loss == "softmax" {
        input["bias"] = json!(b);
    }
    let (code, out, err) = probe(&input);
    assert_eq!(code, 0, "{loss}: {err}");
    let got: Value = serde_json::from_str(&out).expect("JSON output");
    let it = iteration as f64;
    let f = |x: &[Vec<f64>], w: &[Vec<f64>], b: &[f64]| reference(loss, &params, x, w, b, &y, it);
    let want = f(&x, &w, &b);
    let loss_got = got["loss"].as_f64().expect("loss");
    assert!(
        (loss_got - want).abs() <= 1e-4 * want.abs().max(1e-6),
        "{loss}: loss {loss_got} vs reference {want}"
    );
    // h = 1e-5: small enough for the curvature, large enough that the rounding of `acos`
    // near cos = 1 (the aligned row) stays far below the tolerance.
    let h = 1e-5;
    let mut fd_x = Vec::new();
    for i in 0..x.len() {
        for j in 0..3 {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i][j] += h;
            m[i][j] -= h;
            fd_x.push((f(&p, &w, &b) - f(&m, &w, &b)) / (2.0 * h));
        }
    }
    let mut fd_w = Vec::new();
    for i in 0..w.len() {
        for j in 0..3 {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i][j] += h;
            m[i][j] -= h;
            fd_w.push((f(&x, &p, &b) - f(&x, &m, &b)) / (2.0 * h));
        }
    }
    for (name, fd, key) in [
        ("grad_features", fd_x, "grad_features"),
        ("grad_weights", fd_w, "grad_weights"),
    ] {
        let analytic: Vec<f64> = matrix(&got[key]).concat();
        let scale = fd.iter().fold(1e-12_f64, |m, v| m.max(v.abs()));
        for (k, (a, r)) in analytic.iter().zip(&fd).enumerate() {
            assert!(
                (a - r).abs() <= 1e-4 * r.abs().max(scale),
                "{loss}: {name}[{k}] = {a}, reference {r}"
            );
        }
    }
    assert_eq!(matrix(&got["logits"]).len(), 4);
    assert_eq!(
        got.get("grad_bias").is_some(),
        loss == "softmax",
        "{loss}: grad_bias present only for softmax"
    );
}

#[test]
fn softmax_matches_reference() {
    check("softmax", json!({}), 0);
}

#[test]
fn normface_matches_reference() {
    check("normface", json!({"s": 16.0}), 0);
}

#[test]
fn cosface_matches_reference() {
    check("cosface", json!({"s": 16.0, "m": 0.35}), 0);
    check("cosface", json!({}), 0);
}

#[test]
fn arcface_matches_reference() {
    check("arcface", json!({"s": 16.0, "m": 0.5}), 0);
    check("arcface", json!({"s": 8.0, "m": 2.0}), 0); // past π for the generic rows
}

#[test]
fn sphereface_matches_reference() {
    check("sphereface", json!({}), 0);
    check("sphereface", json!({"m": 4, "lambda_min": 0.5}), 50_000);
    check(
        "sphereface",
        json!({"m": 3, "lambda_base": 0, "lambda_min": 0}),
        0,
    );
}
