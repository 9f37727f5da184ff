//! Matrix products on the CPU (the DINOv3 engine and mining) through the `gemm` crate, whose
//! AVX-512 or AVX2+FMA micro-kernels are picked from the CPU's features at run time (no
//! `-C target-cpu` needed).
//!
//! Every matrix is a strided view over a slice; the bounds of each view are checked before the
//! product runs, so the one `unsafe` call below never reads or writes outside its slices.

pub(crate) mod bf16;

use gemm_common::Parallelism;

/// A read-only matrix: `rows × cols` elements of `data` at `r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with rows `row_stride` apart (a column block of a wider matrix).
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// A contiguous row-major matrix.
    pub(crate) fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::rows(data, rows, cols, cols)
    }

    /// The transpose, without moving data.
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// One past the largest index the view touches (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// How many threads a product of this size is worth: below ~2 MFLOP the fork costs more than it
/// saves.
fn parallelism(m: usize, n: usize, k: usize, threads: usize) -> Parallelism {
    if threads > 1 && m * n * k >= 1 << 20 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major with rows `out_stride`
/// apart. Runs on up to `threads` threads of the current rayon pool.
///
/// # Panics
/// When a view or `out` is too short for its shape, or the inner dimensions differ: shapes come
/// from the engine's own layout, so that is a bug, never bad input.
pub(crate) fn matmul(
    out: &mut [f32],
    out_stride: usize,
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(a.extent() <= a.data.len() && b.extent() <= b.data.len());
    let out_extent = if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * out_stride + n
    };
    // Rows of `out` must not overlap: the kernel writes them from several threads.
    assert!(out_extent <= out.len() && (m <= 1 || n <= out_stride));
    if m == 0 || n == 0 {
        return;
    }
    let gemm = gemm_f32::gemm::f32::get_gemm_fn();
    // The micro-kernels want a column-oriented destination, and `out` is row-major: compute
    // `outᵀ = bᵀ·aᵀ` instead (same memory, strides swapped), which is 4× faster here.
    // SAFETY: the asserts above keep every index the kernel touches inside `out`, `a.data` and
    // `b.data`; `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            out_stride as isize,
            1,
            accumulate,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k, threads),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_the_definition_for_plain_transposed_and_strided_views() {
        let (m, k, n) = (37, 29, 41);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let want = naive(&a, &b, m, k, n);
        for threads in [1, 2] {
            let mut c = vec![0f32; m * n];
            matmul(
                &mut c,
                n,
                View::dense(&a, m, k),
                View::dense(&b, k, n),
                false,
                threads,
            );
            assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
        }
        // bᵀ stored as [n, k] and read transposed; accumulate on top of ones; output stride > n.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let stride = n + 3;
        let mut c = vec![1f32; m * stride];
        matmul(
            &mut c,
            stride,
            View::dense(&a, m, k),
            View::dense(&bt, n, k).t(),
            true,
            1,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * stride + j] - 1.0 - want[i * n + j]).abs() < 1e-4);
            }
            assert!(
                c[i * stride + n..(i + 1) * stride]
                    .iter()
                    .all(|&x| x == 1.0)
            );
        }
        // A column block of a wider matrix as the left operand.
        let wide: Vec<f32> = (0..m * 2 * k)
            .map(|i| {
                if i % (2 * k) >= k {
                    a[(i / (2 * k)) * k + i % (2 * k) - k]
                } else {
                    9.0
                }
            })
            .collect();
        let mut c = vec![0f32; m * n];
        matmul(
            &mut c,
            n,
            View::rows(&wide[k..], m, k, 2 * k),
            View::dense(&b, k, n),
            false,
            1,
        );
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn refuses_mismatched_shapes() {
        let a = [0f32; 6];
        let mut c = [0f32; 4];
        matmul(
            &mut c,
            2,
            View::dense(&a, 2, 3),
            View::dense(&a, 2, 3),
            false,
            1,
        );
    }
}
