//! The machine's own f32 FMA peak: every thread runs independent chains of fused multiply-adds
//! on the widest vectors the CPU has (chosen at run time), long enough to hide the FMA latency
//! on every current x86 core. The figure a kernel is judged against: achieved GFLOP/s of a
//! convolution or a training step as a share of it.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The measured peak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// f32 GFLOP/s (2 FLOPs per multiply-add) of all `threads` together.
    pub gflops: f64,
    pub threads: usize,
    /// The instruction set the loop ran on: `avx512f`, `avx2+fma` or `scalar`.
    pub isa: String,
}

/// Independent accumulators per thread: 2 FMA units × a latency of up to 5 cycles needs 10.
const CHAINS: usize = 12;

/// Multiply-adds per accumulator lane per call.
const STEPS: usize = 1 << 24;

/// `STEPS` rounds of `CHAINS` FMAs over vectors of `LANES` f32; returns a value that depends
/// on every chain, so nothing is optimised away.
macro_rules! fma_loop {
    ($name:ident, $feature:literal, $lanes:expr, $vec:ty, $set1:ident, $fmadd:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        fn $name() -> f32 {
            use std::arch::x86_64::*;
            let a = $set1(0.999_999);
            let b = $set1(1e-7);
            let mut acc: [$vec; CHAINS] = [$set1(1.0); CHAINS];
            for _ in 0..STEPS {
                for x in &mut acc {
                    *x = $fmadd(*x, a, b);
                }
            }
            let mut lanes = [0.0f32; $lanes];
            let mut sum = 0.0;
            for x in acc {
                // SAFETY: `lanes` holds exactly one vector of f32.
                #[allow(unsafe_code)]
                unsafe {
                    $store(lanes.as_mut_ptr(), x)
                };
                sum += lanes.iter().sum::<f32>();
            }
            sum
        }
    };
}

fma_loop!(
    fma_avx512,
    "avx512f",
    16,
    __m512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
fma_loop!(
    fma_avx2,
    "avx2,fma",
    8,
    __m256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

/// One thread's loop on the widest instruction set available: (its result, lanes, name).
fn one_thread() -> (f32, usize, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            #[allow(unsafe_code)]
            return (unsafe { fma_avx512() }, 16, "avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            #[allow(unsafe_code)]
            return (unsafe { fma_avx2() }, 8, "avx2+fma");
        }
    }
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..STEPS {
        for x in &mut acc {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    (acc.iter().sum(), 1, "scalar")
}

/// The f32 FMA peak of `threads` threads running at once (best of three).
#[must_use]
pub fn fma_peak(threads: usize) -> Peak {
    let threads = threads.max(1);
    let mut best = 0.0f64;
    let mut isa = "scalar";
    for _ in 0..3 {
        let start = Instant::now();
        let results: Vec<(f32, usize, &'static str)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(one_thread)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((0.0, 0, "scalar")))
                .collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        let lanes: usize = results.iter().map(|r| r.1).sum();
        isa = results.first().map_or("scalar", |r| r.2);
        // Keep the results observable.
        std::hint::black_box(results.iter().map(|r| r.0).sum::<f32>());
        let flops = 2.0 * (STEPS * CHAINS * lanes) as f64;
        best = best.max(flops / seconds / 1e9);
    }
    Peak {
        gflops: best,
        threads,
        isa: isa.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_measured_on_a_known_instruction_set() {
        let p = fma_peak(1);
        assert!(p.gflops > 0.1, "{p:?}");
        assert!(["avx512f", "avx2+fma", "scalar"].contains(&p.isa.as_str()));
    }
}
