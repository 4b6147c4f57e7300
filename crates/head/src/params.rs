//! Loss hyper-parameters: declared once per loss as [`ParamSpec`]s, resolved and validated
//! generically, so every loss reports bad values the same way.

use std::collections::BTreeMap;
use std::fmt;

use crate::HeadError;

/// The values a parameter may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    /// A finite number > 0.
    Positive,
    /// A finite number ≥ 0.
    NonNegative,
    /// A finite number in `[lo, hi)`.
    HalfOpen(f64, f64),
    /// A finite number in `[lo, hi]`.
    Closed(f64, f64),
    /// An integer in `lo..=hi`.
    Integer(i64, i64),
}

impl Allowed {
    /// Whether `v` is allowed.
    #[must_use]
    pub fn contains(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Self::Positive => v > 0.0,
                Self::NonNegative => v >= 0.0,
                Self::HalfOpen(lo, hi) => v >= lo && v < hi,
                Self::Closed(lo, hi) => v >= lo && v <= hi,
                Self::Integer(lo, hi) => v.fract() == 0.0 && v >= lo as f64 && v <= hi as f64,
            }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Positive => write!(f, "a finite number > 0"),
            Self::NonNegative => write!(f, "a finite number >= 0"),
            Self::HalfOpen(lo, hi) => write!(f, "in [{lo}, {})", fmt_bound(hi)),
            Self::Closed(lo, hi) => write!(f, "in [{lo}, {hi}]"),
            Self::Integer(lo, hi) => write!(f, "an integer in [{lo}, {hi}]"),
        }
    }
}

fn fmt_bound(v: f64) -> String {
    if v == std::f64::consts::PI {
        "π".to_string()
    } else {
        v.to_string()
    }
}

/// One hyper-parameter of a loss, with its published default.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: f64,
    pub allowed: Allowed,
    pub help: &'static str,
}

/// The cosine-logit scale `s` of the normalised heads, with the usual default 64.
pub const SCALE: ParamSpec = ParamSpec {
    name: "s",
    default: 64.0,
    allowed: Allowed::Positive,
    help: "scale of the cosine logits",
};

/// ArcFace's additive angular margin `m` (radians, in `[0, π)`) with the given default.
#[must_use]
pub const fn angular_margin(default: f64) -> ParamSpec {
    ParamSpec {
        name: "m",
        default,
        allowed: Allowed::HalfOpen(0.0, std::f64::consts::PI),
        help: "additive angular margin (radians)",
    }
}

/// Parameters after defaults are filled in and every value is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedParams {
    values: BTreeMap<&'static str, f64>,
}

impl ResolvedParams {
    /// Fill defaults into `given` and validate every value against `specs`. Unknown names,
    /// non-numbers and out-of-range values are errors that name the parameter.
    pub fn resolve(
        loss: &str,
        specs: &[ParamSpec],
        given: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, HeadError> {
        let known = || specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
        for key in given.keys() {
            if !specs.iter().any(|s| s.name == key) {
                let known = if specs.is_empty() {
                    "none".to_string()
                } else {
                    known()
                };
                return Err(HeadError::UnknownParam {
                    loss: loss.into(),
                    param: key.clone(),
                    known,
                });
            }
        }
        let mut values = BTreeMap::new();
        for spec in specs {
            let value = match given.get(spec.name) {
                None => spec.default,
                Some(v) => v.as_f64().ok_or_else(|| HeadError::InvalidParam {
                    loss: loss.into(),
                    param: spec.name.into(),
                    value: v.to_string(),
                    allowed: spec.allowed.to_string(),
                })?,
            };
            if !spec.allowed.contains(value) {
                return Err(HeadError::InvalidParam {
                    loss: loss.into(),
                    param: spec.name.into(),
                    value: value.to_string(),
                    allowed: spec.allowed.to_string(),
                });
            }
            values.insert(spec.name, value);
        }
        Ok(Self { values })
    }

    /// The defaults of `specs` (which are valid by construction; checked in tests).
    #[must_use]
    pub fn defaults(specs: &[ParamSpec]) -> Self {
        Self {
            values: specs.iter().map(|s| (s.name, s.default)).collect(),
        }
    }

    /// The value of a declared parameter.
    ///
    /// # Panics
    /// If `name` was not declared by the loss: a programming error in the loss crate,
    /// caught by its own tests.
    #[must_use]
    pub fn get(&self, name: &str) -> f64 {
        match self.values.get(name) {
            Some(v) => *v,
            None => panic!("parameter `{name}` is not declared in the loss's ParamSpec list"),
        }
    }

    /// All values, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.values.iter().map(|(k, v)| (*k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[ParamSpec] = &[
        ParamSpec {
            name: "s",
            default: 64.0,
            allowed: Allowed::Positive,
            help: "",
        },
        ParamSpec {
            name: "m",
            default: 4.0,
            allowed: Allowed::Integer(1, 10),
            help: "",
        },
    ];

    fn given(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).expect("test JSON")
    }

    #[test]
    fn defaults_fill_missing_values() {
        let p = ResolvedParams::resolve("x", SPECS, &given(r#"{"s": 30}"#)).expect("valid");
        assert_eq!(p.get("s"), 30.0);
        assert_eq!(p.get("m"), 4.0);
    }

    #[test]
    fn errors_name_the_parameter_and_range() {
        let e = ResolvedParams::resolve("x", SPECS, &given(r#"{"s": -1}"#))
            .expect_err("invalid value accepted");
        assert_eq!(
            e.to_string(),
            "loss `x`: parameter `s` = -1 is invalid: must be a finite number > 0"
        );
        let e = ResolvedParams::resolve("x", SPECS, &given(r#"{"m": 2.5}"#))
            .expect_err("invalid value accepted");
        assert!(
            e.to_string().contains("`m` = 2.5") && e.to_string().contains("integer in [1, 10]")
        );
        let e = ResolvedParams::resolve("x", SPECS, &given(r#"{"m": "four"}"#))
            .expect_err("invalid value accepted");
        assert!(e.to_string().contains("`m` = \"four\""), "{e}");
        let e = ResolvedParams::resolve("x", SPECS, &given(r#"{"q": 1}"#))
            .expect_err("invalid value accepted");
        assert_eq!(
            e.to_string(),
            "loss `x` has no parameter `q` (its parameters: s, m)"
        );
    }

    #[test]
    fn allowed_ranges_are_exact_at_their_bounds() {
        let pi = std::f64::consts::PI;
        assert!(Allowed::HalfOpen(0.0, pi).contains(0.0));
        assert!(!Allowed::HalfOpen(0.0, pi).contains(pi));
        assert!(!Allowed::Positive.contains(0.0));
        assert!(!Allowed::Positive.contains(f64::INFINITY));
        assert!(!Allowed::NonNegative.contains(f64::NAN));
        assert!(Allowed::Closed(0.0, 1.0).contains(1.0));
    }
}
