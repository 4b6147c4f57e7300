//! flex's matrix products (gemm, patched in vendor/gemm-common) add each output's products in
//! one order that no vector width enters: along `k` in order, one fused multiply-add at a
//! time, in blocks of a fixed `kc`, the blocks added in order. Checked bit for bit against that
//! order written out in scalar code, for the shapes that used to take a lane-width-dependent
//! path (the horizontal kernels of small products, the row-major gemv) and the blocked ones.
//! Agreeing with a width-free reference on this CPU's kernels is what makes the AVX2 and
//! AVX-512 kernels agree with each other (vendor/gemm-common/LOSSBENCH.md).

// gemm's entry point is a raw-pointer function: the one unsafe call of the workspace's tests,
// on slices sized to the strides passed.
#![allow(unsafe_code)]

use gemm::Parallelism;

/// Deterministic values in [-1, 1], of several magnitudes so that the order of additions
/// shows in the last bits.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 12);
    (0..n)
        .map(|i| ((2.0 * s.next_f64() - 1.0) * [1.0, 1e-3, 30.0][i % 3]) as f32)
        .collect()
}

/// The reduction blocks gemm uses for an `m × n × k` product: all of `k` in one for a
/// matrix-vector product with a column-major matrix (its gemv adds one column after the
/// other), `min(k, 512)` wide for products of at most 64 × 64, otherwise `k` split into
/// `⌈k / 512⌉` blocks as equal as possible.
fn blocks(m: usize, n: usize, k: usize, column_gemv: bool) -> Vec<std::ops::Range<usize>> {
    let kc = if column_gemv {
        k
    } else if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        k.div_ceil(k.div_ceil(512))
    };
    (0..k)
        .step_by(kc)
        .map(|start| start..(start + kc).min(k))
        .collect()
}

/// A matrix stored with element `(i, j)` at `i * rs + j * cs`.
struct Layout {
    rs: usize,
    cs: usize,
}

impl Layout {
    fn of(rows: usize, cols: usize, row_major: bool) -> Self {
        if row_major {
            Self { rs: cols, cs: 1 }
        } else {
            Self { rs: 1, cs: rows }
        }
    }
    fn at(&self, i: usize, j: usize) -> usize {
        i * self.rs + j * self.cs
    }
}

#[allow(clippy::too_many_arguments)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    lhs_row_major: bool,
    rhs_row_major: bool,
    dst_row_major: bool,
    threads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (la, lb, ld) = (
        Layout::of(m, k, lhs_row_major),
        Layout::of(k, n, rhs_row_major),
        Layout::of(m, n, dst_row_major),
    );
    let a = values(m * k, (m * 1000 + k) as u64);
    let b = values(k * n, (n * 1000 + k + 7) as u64);
    let mut got = vec![f32::NAN; m * n];
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index the strides reach is inside its slice; dst is not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            got.as_mut_ptr(),
            ld.cs as isize,
            ld.rs as isize,
            false,
            a.as_ptr(),
            la.cs as isize,
            la.rs as isize,
            b.as_ptr(),
            lb.cs as isize,
            lb.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    // gemm's column-major gemv: `y = A·x` with A's columns contiguous (or its transpose).
    let column_gemv = (n <= 1 && la.rs == 1 && ld.rs == 1) || (m <= 1 && lb.cs == 1 && ld.cs == 1);
    let blocks = blocks(m, n, k, column_gemv);
    let mut want = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f32;
            for (nth, block) in blocks.iter().enumerate() {
                let mut acc = 0.0f32;
                for p in block.clone() {
                    acc = a[la.at(i, p)].mul_add(b[lb.at(p, j)], acc);
                }
                sum = if nth == 0 { acc } else { sum + acc };
            }
            want[ld.at(i, j)] = sum;
        }
    }
    (got, want)
}

fn assert_in_order(m: usize, n: usize, k: usize, threads: usize) {
    for lhs_row_major in [true, false] {
        for rhs_row_major in [true, false] {
            for dst_row_major in [true, false] {
                let (got, want) = product(
                    m,
                    n,
                    k,
                    lhs_row_major,
                    rhs_row_major,
                    dst_row_major,
                    threads,
                );
                let differ = got
                    .iter()
                    .zip(&want)
                    .filter(|(g, w)| g.to_bits() != w.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{m}×{n}×{k} (lhs {}, rhs {}, dst {}, {threads} threads): {differ} of {} outputs differ from the in-order sum, first {:?}",
                    if lhs_row_major { "rows" } else { "columns" },
                    if rhs_row_major { "rows" } else { "columns" },
                    if dst_row_major { "rows" } else { "columns" },
                    got.len(),
                    got.iter()
                        .zip(&want)
                        .find(|(g, w)| g.to_bits() != w.to_bits())
                );
            }
        }
    }
}

#[test]
fn small_products_sum_in_order_where_upstream_used_horizontal_kernels() {
    // m·n ≤ 256 with a row-major lhs and a column-major rhs took the horizontal kernels.
    for (m, n, k) in [
        (1, 1, 100),
        (3, 5, 77),
        (16, 16, 300),
        (10, 4, 1000),
        (7, 9, 33),
    ] {
        assert_in_order(m, n, k, 1);
    }
}

#[test]
fn matrix_vector_products_sum_in_order_where_upstream_used_row_major_gemv() {
    for (m, n, k) in [(100, 1, 300), (1, 100, 300), (513, 1, 700), (1, 40, 1500)] {
        assert_in_order(m, n, k, 1);
    }
}

#[test]
fn blocked_products_sum_each_block_in_order_and_the_blocks_in_order() {
    // One block, unequal 512-wide blocks (m, n ≤ 64), equal blocks (1100 = 367 + 367 + 366),
    // and the ResNet shapes' reductions (576 = 64·3·3, 1152, 4608 = 512·3·3).
    for (m, n, k) in [
        (40, 30, 500),
        (64, 64, 1100),
        (100, 70, 1100),
        (64, 130, 576),
        (128, 96, 1152),
        (65, 33, 4608),
    ] {
        assert_in_order(m, n, k, 1);
    }
}

#[test]
fn two_threads_give_the_same_order() {
    for (m, n, k) in [(256, 300, 1152), (512, 64, 4608)] {
        assert_in_order(m, n, k, 2);
    }
}
