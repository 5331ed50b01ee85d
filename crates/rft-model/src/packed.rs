//! A matmul for decoding, with each weight packed once instead of at every call.
//!
//! Why not candle's matmul: for `x @ Wᵀ` with a few dozen rows of `x` (one decode step of a
//! rollout shard), `gemm` 0.19 repacks the whole weight into its micro-kernel's panel layout on
//! every call, gathering it element by element; `perf` put that packing at 38% of a 32-row decode
//! step, as much as the arithmetic. The weights of a rollout do not change, so they are packed
//! once here (`PANEL` output columns at a time, contiguous along the input dimension) and an
//! AVX2/FMA micro-kernel of `ROWS × PANEL` accumulators streams each panel once per call.
//!
//! Used only where it applies (CPU, f32, a CPU with AVX2 and FMA); everything else keeps the
//! dense weight and candle's matmul.

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// Output columns per packed panel: two 8-lane AVX registers.
const PANEL: usize = 16;
/// Rows of `x` per micro-kernel call (6 × 2 accumulators + 2 weight registers + 1 broadcast).
const ROWS: usize = 6;

/// A `(n, k)` weight packed for `x @ Wᵀ`: panel `p` holds columns `p·16 .. p·16 + 16` of `Wᵀ`,
/// `k` rows of 16 contiguous floats; the last panel is zero-padded.
#[derive(Clone)]
pub struct PackedWeight {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

/// Whether this machine can run the packed kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({} x {})", self.n, self.k)
    }
}

impl PackedWeight {
    /// Packs `weight: (n, k)`; `None` when the kernel does not apply (not an f32 CPU tensor, or
    /// no AVX2/FMA).
    pub fn pack(weight: &Tensor) -> Result<Option<PackedWeight>, ModelError> {
        if !available() || !weight.device().is_cpu() || weight.dtype() != DType::F32 {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        let dense: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0f32; panels * k * PANEL];
        for (row, values) in dense.chunks_exact(k.max(1)).enumerate().take(n) {
            let (panel, lane) = (row / PANEL, row % PANEL);
            let base = panel * k * PANEL + lane;
            for (kk, &v) in values.iter().enumerate() {
                data[base + kk * PANEL] = v;
            }
        }
        Ok(Some(PackedWeight { data, n, k }))
    }

    /// Output columns.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `x @ Wᵀ` for `x: (m, k)` f32 on the CPU → `(m, n)`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(ModelError::Format(format!(
                "packed matmul: input has {k} features, the weight {}",
                self.k
            )));
        }
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; m * self.n];
        self.compute(&x, m, &mut out);
        Ok(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?)
    }

    fn compute(&self, x: &[f32], m: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `available()` held when the weight was packed (checked in `pack`), and
            // the slices have the lengths the kernel reads and writes: `x` is m·k, `out` m·n,
            // each panel k·PANEL.
            unsafe { self.compute_avx2(x, m, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, m, out);
            unreachable!("PackedWeight is only built on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn compute_avx2(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        for panel in 0..n.div_ceil(PANEL) {
            let weights = &self.data[panel * k * PANEL..(panel + 1) * k * PANEL];
            let col = panel * PANEL;
            let cols = PANEL.min(n - col);
            let mut row = 0;
            while row < m {
                let rows = ROWS.min(m - row);
                let xs = &x[row * k..(row + rows) * k];
                // SAFETY: this function runs only with AVX2 and FMA (see `compute`); `xs` holds
                // `rows` rows of `k` and `weights` one panel of `k × PANEL`.
                let tile = unsafe {
                    match rows {
                        6 => tile::<6>(xs, weights, k),
                        5 => tile::<5>(xs, weights, k),
                        4 => tile::<4>(xs, weights, k),
                        3 => tile::<3>(xs, weights, k),
                        2 => tile::<2>(xs, weights, k),
                        _ => tile::<1>(xs, weights, k),
                    }
                };
                for r in 0..rows {
                    let at = (row + r) * n + col;
                    out[at..at + cols].copy_from_slice(&tile[r * PANEL..r * PANEL + cols]);
                }
                row += rows;
            }
        }
    }
}

/// `R` rows of `x` (row-major, `k` wide) times one packed panel: `R × 16` results, row-major.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(xs: &[f32], weights: &[f32], k: usize) -> [f32; ROWS * PANEL] {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() >= R * k && weights.len() >= k * PANEL);
    // SAFETY: the caller guarantees AVX2/FMA and that `xs` holds R rows of k floats and
    // `weights` k rows of PANEL floats; every pointer below stays inside them, and `out` holds
    // ROWS ≥ R rows of PANEL floats.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let w = weights.as_ptr();
        let x = xs.as_ptr();
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(w.add(kk * PANEL));
            let w1 = _mm256_loadu_ps(w.add(kk * PANEL + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xb = _mm256_broadcast_ss(&*x.add(r * k + kk));
                acc[0] = _mm256_fmadd_ps(xb, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(xb, w1, acc[1]);
            }
        }
        let mut out = [0f32; ROWS * PANEL];
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(r * PANEL), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(r * PANEL + 8), acc[1]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_matmul_equals_candle() {
        if !available() {
            return;
        }
        for (m, k, n) in [(1, 5, 3), (7, 33, 40), (13, 64, 16), (32, 96, 50)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let expected: Vec<f32> = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let packed = PackedWeight::pack(&w).unwrap().unwrap();
            let got: Vec<f32> = packed
                .matmul_t(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let worst = expected
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{m}x{k}x{n}: {worst}");
        }
    }
}
