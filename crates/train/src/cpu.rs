//! Which CPU a run trains on, and which of flex's kernels it gets there.
//!
//! flex's matrix products (gemm) pick their micro-kernels at run time by the CPU's x86-64
//! level: 16-lane AVX-512 on `x86-64-v4`, 8-lane AVX2 + FMA on `x86-64-v3`. Both accumulate
//! each output along the reduction in the same order with a fixed blocking, and flex's
//! element-wise and reduction kernels (macerator) stay at AVX2 width everywhere
//! (vendor/gemm-common and vendor/macerator, `LOSSBENCH.md`), so every CPU with AVX2 + FMA
//! computes the same numbers. A CPU without them (`x86-64-v2` and older) runs other code
//! and adds in another order: a run records its level, and a resume across that line is
//! refused unless asked for, as a change of backend is.

/// The switch that keeps a CPU with AVX-512 on gemm's AVX2 + FMA kernels (read by
/// vendor/gemm-common): how the tests run both paths on one machine.
pub const KERNELS_SWITCH: &str = "LOSSBENCH_CPU_KERNELS";

/// The one value [`KERNELS_SWITCH`] takes.
pub const AVX2_KERNELS: &str = "x86-64-v3";

/// A set [`KERNELS_SWITCH`] other than [`AVX2_KERNELS`], as a one-line error (gemm reads
/// only that value and would silently ignore another).
pub fn check_kernels_switch() -> Result<(), String> {
    match std::env::var_os(KERNELS_SWITCH) {
        Some(v) if v != AVX2_KERNELS => Err(format!(
            "{KERNELS_SWITCH}={} is not a kernel level flex can be kept at: the one value is {AVX2_KERNELS} (AVX2 + FMA kernels on a CPU with AVX-512); unset it for the CPU's own",
            v.to_string_lossy()
        )),
        _ => Ok(()),
    }
}

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

/// The x86-64 level flex's matrix kernels run at here: the feature sets pulp (gemm) and
/// macerator test before choosing their AVX-512 (`x86-64-v4`) and AVX2 (`x86-64-v3`) code
/// (the union of both lists; macerator also asks for F16C), `x86-64-v3` on an AVX-512 CPU
/// when [`KERNELS_SWITCH`] says so. Elsewhere the architecture's name (one kernel set each).
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
            && has!("avx512vl")
            && std::env::var_os(KERNELS_SWITCH).is_none_or(|v| v != AVX2_KERNELS);
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

/// Whether flex computes the same numbers at kernel levels `a` and `b` (as recorded in
/// run.json): AVX-512 and AVX2 + FMA do; any other pair of different levels does not.
#[must_use]
pub fn same_numbers(a: &str, b: &str) -> bool {
    fn numerics(level: &str) -> &str {
        match level {
            "x86-64-v4" => "x86-64-v3",
            other => other,
        }
    }
    numerics(a) == numerics(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx512_and_avx2_give_the_same_numbers_and_older_levels_do_not() {
        assert!(same_numbers("x86-64-v4", "x86-64-v3"));
        assert!(same_numbers("x86-64-v3", "x86-64-v4"));
        assert!(same_numbers("x86-64-v2", "x86-64-v2"));
        assert!(!same_numbers("x86-64-v3", "x86-64-v2"));
        assert!(!same_numbers("x86-64-v4", "x86-64"));
        assert!(!same_numbers("x86-64-v3", "aarch64"));
    }

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
