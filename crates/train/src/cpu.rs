//! Which CPU a run trains on, and which of flex's kernels it gets there.
//!
//! flex's matrix products (gemm) and its element-wise and reduction kernels (macerator) pick
//! their code at run time by the CPU's x86-64 level: 16-lane AVX-512 vectors on
//! `x86-64-v4`, 8-lane AVX2 + FMA on `x86-64-v3`. The vector width sets the order in which
//! a reduction adds its terms, so two levels give different numbers from the same config
//! and seed. A run records its level, and a resume on another one is refused unless asked
//! for, as a change of backend is.

/// The CPU model as the operating system names it (`/proc/cpuinfo` on Linux).
#[must_use]
pub fn model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

/// The x86-64 level flex's kernels run at here: the feature sets pulp (gemm) and macerator
/// test before choosing their AVX-512 (`x86-64-v4`) and AVX2 (`x86-64-v3`) code (the union
/// of both lists; macerator also asks for F16C). Elsewhere the
/// architecture's name (one kernel set each).
#[must_use]
pub fn kernel_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx")
            && has!("avx2")
            && has!("fma")
            && has!("bmi1")
            && has!("bmi2")
            && has!("lzcnt")
            && has!("popcnt")
            && has!("sse4.2")
            && has!("f16c");
        let v4 = v3
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl");
        if v4 {
            "x86-64-v4"
        } else if v3 {
            "x86-64-v3"
        } else if has!("sse4.2") && has!("popcnt") {
            "x86-64-v2"
        } else {
            "x86-64"
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_is_one_of_the_named_ones_and_matches_the_cpu_flags() {
        let level = kernel_level();
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                ["x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64"].contains(&level),
                "{level}"
            );
            // Checked against the kernel's own list of the CPU's flags, not the same macro.
            if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
                let flags: Vec<&str> = info
                    .lines()
                    .find(|l| l.starts_with("flags"))
                    .map(|l| l.split_whitespace().collect())
                    .unwrap_or_default();
                let has = |f: &str| flags.contains(&f);
                assert_eq!(
                    level == "x86-64-v4",
                    has("avx512f")
                        && has("avx512bw")
                        && has("avx512vl")
                        && has("avx512dq")
                        && has("avx512cd"),
                    "{level}"
                );
                if level != "x86-64-v4" {
                    assert_eq!(level == "x86-64-v3", has("avx2") && has("fma"), "{level}");
                }
            }
        }
        assert!(!model().is_empty());
    }
}
