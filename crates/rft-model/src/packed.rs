//! A CPU matmul against a weight packed once, for the frozen weights of sampling and training.
//!
//! Why not candle's matmul: for `x @ Wᵀ` `gemm` 0.19 repacks the whole weight into its
//! micro-kernel's panel layout on every call, gathering it element by element (`perf` put that
//! packing at 38% of a 32-row decode step, as much as the arithmetic), and on stable Rust its
//! kernels are AVX2 only: its AVX-512 kernels sit behind its `nightly` feature, so on an AVX-512
//! machine it runs at half the vector width the hardware has. The weights here never change
//! while they are used (a rollout's merged weights; the frozen base weights of LoRA training),
//! so they are packed once (`nr` output columns per panel, contiguous along the input
//! dimension) and a register-blocked micro-kernel streams each panel: 12 rows × 32 columns of
//! accumulators in 16-lane AVX-512 registers where the CPU has AVX-512F, else 6 × 16 in 8-lane
//! AVX2/FMA registers.
//!
//! The driver blocks as BLIS does, for the large row counts of a training pass: a block of rows
//! of `x` is repacked (`mr` rows interleaved, so each step of the micro-kernel reads one
//! contiguous run) in slices of [`KC`] along the input dimension, small enough that a panel's
//! slice stays in L1 while every row tile of the block passes over it.
//!
//! A weight can also be packed in bf16 ([`PackedWeight::pack_bf16`], `packed/bf16.rs`): half the
//! bytes a decode step streams, multiplied with f32 accumulation by widening each weight to f32
//! as it loads (`vdpbf16ps` on AVX512-BF16 CPUs when asked: [`Kernel::detect_bf16`]).
//!
//! Used only where it applies (a CPU with AVX2 and FMA, f32 inputs); everything else keeps the
//! dense weight and candle's matmul.

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

mod bf16;

/// Inputs up to this wide are not sliced: a tile's accumulators then see the whole sum and the
/// output is written once. Wider inputs (the output head's backward, 49,152) go in slices of
/// [`KC`], accumulating into the output.
const WHOLE_K_MAX: usize = 4096;
/// Input features per slice of a wide input: a 32-column panel slice is 32 KiB, within L1.
const KC: usize = 256;
/// Most row tiles per block of `x`.
const TILES_PER_BLOCK: usize = 16;
/// Bytes of repacked `x` per block, to stay in L2 while every panel passes over it.
const BLOCK_BYTES: usize = 1 << 20;

/// Width of the slices of the input dimension the weight is packed and multiplied in.
fn slice_width(k: usize) -> usize {
    if k <= WHOLE_K_MAX {
        k.max(1)
    } else {
        KC
    }
}

/// The micro-kernel a weight is packed for: its panel width must match the one computing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 6 rows × 16 columns, 8-lane FMA.
    Avx2,
    /// 12 rows × 32 columns, 16-lane FMA.
    Avx512,
    /// 12 rows × 32 columns of bf16 pair dot products (`vdpbf16ps`), 16 f32 lanes: bf16
    /// panels only.
    Avx512Bf16,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or `None` without AVX2 and FMA.
    ///
    /// `RFT_PACKED_KERNEL=avx2` keeps the AVX2 kernel on an AVX-512 machine, so a benchmark can
    /// measure both in one run.
    pub fn detect() -> Option<Kernel> {
        let forced_avx2 = forced_kernel().is_some_and(|v| v == "avx2");
        if !forced_avx2 && Kernel::Avx512.supported() {
            Some(Kernel::Avx512)
        } else if Kernel::Avx2.supported() {
            Some(Kernel::Avx2)
        } else {
            None
        }
    }

    /// The kernel for bf16 panels here: one that widens each bf16 weight to f32 as it loads it
    /// (half the weight bytes of f32 panels, the same arithmetic), 16 lanes wide where the CPU
    /// has AVX-512F.
    ///
    /// Not `vdpbf16ps` by default, where the CPU has it: on the Sapphire Rapids-class machine
    /// here it issues on one port (16 lanes × 2 products a cycle, what two FMA ports already
    /// do in f32), and rounding each input row to bf16 pairs costs more than it saves: decode
    /// of SmolLM2-135M ran 22.0 / 342 / 466 tok/s at batch 1 / 32 / 64 with it against
    /// 26.0 / 439 / 562 widening (`rft bench decode --dtype bf16`; docs/performance.md). `RFT_PACKED_KERNEL`
    /// (`avx512bf16`, `avx512`, `avx2`) picks one for measurements.
    pub fn detect_bf16() -> Option<Kernel> {
        let forced = forced_kernel();
        let candidates: &[Kernel] = match forced.as_deref() {
            Some("avx2") => &[Kernel::Avx2],
            Some("avx512bf16") => &[Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2],
            _ => &[Kernel::Avx512, Kernel::Avx2],
        };
        candidates.iter().copied().find(|kernel| kernel.supported())
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected;
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match self {
                Kernel::Avx2 => avx2,
                Kernel::Avx512 => avx2 && is_x86_feature_detected!("avx512f"),
                Kernel::Avx512Bf16 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bf16")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Output columns per panel.
    fn nr(self) -> usize {
        match self {
            Kernel::Avx2 => 16,
            Kernel::Avx512 | Kernel::Avx512Bf16 => 32,
        }
    }

    /// Rows of `x` per micro-kernel call.
    fn mr(self) -> usize {
        match self {
            Kernel::Avx2 => 6,
            Kernel::Avx512 | Kernel::Avx512Bf16 => 12,
        }
    }
}

/// `RFT_PACKED_KERNEL`, lower-cased.
fn forced_kernel() -> Option<String> {
    std::env::var("RFT_PACKED_KERNEL")
        .ok()
        .map(|v| v.to_ascii_lowercase())
}

/// The values of a packed weight.
#[derive(Clone)]
enum Panels {
    F32(Vec<f32>),
    /// bf16 bit patterns, the input dimension in pairs: within a slice, panel `p` holds
    /// `kc/2` (rounded up) pair rows of `nr` columns, each column's two values adjacent
    /// (`[w(j, 2i), w(j, 2i+1)]`), the layout `vdpbf16ps` multiplies; a slice of odd width
    /// ends with a zero.
    Bf16(Vec<u16>),
}

/// A `(n, k)` weight packed for `x @ Wᵀ`, slice by slice of the input dimension (one slice
/// when `k ≤ WHOLE_K_MAX`): within a slice `[k0, k0 + kc)`, panel `p` holds columns
/// `p·nr .. p·nr + nr` of `Wᵀ` as `kc` rows of `nr` contiguous floats, and the panels follow
/// each other, so the kernel reads the weight front to back; the last panel is zero-padded.
#[derive(Clone)]
pub struct PackedWeight {
    data: Panels,
    n: usize,
    k: usize,
    kernel: Kernel,
}

/// Whether this machine can run the packed kernel.
pub fn available() -> bool {
    Kernel::detect().is_some()
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.data {
            Panels::F32(_) => "f32",
            Panels::Bf16(_) => "bf16",
        };
        write!(
            f,
            "PackedWeight({} x {}, {format}, {:?})",
            self.n, self.k, self.kernel
        )
    }
}

impl PackedWeight {
    /// Packs `weight: (n, k)` for the fastest kernel here, keeping its precision: a bf16
    /// weight packs into bf16 panels, an f32 one into f32 panels. `None` when no kernel applies
    /// (not a CPU tensor of either type, or no AVX2/FMA).
    pub fn pack(weight: &Tensor) -> Result<Option<PackedWeight>, ModelError> {
        if weight.dtype() == DType::BF16 {
            return PackedWeight::pack_bf16(weight);
        }
        match Kernel::detect() {
            Some(kernel) => PackedWeight::pack_for(weight, kernel),
            None => Ok(None),
        }
    }

    /// Packs `weight: (n, k)` (f32 or bf16) into bf16 panels for the fastest bf16 kernel here,
    /// rounding f32 values to the nearest bf16: half the bytes a decode step streams.
    pub fn pack_bf16(weight: &Tensor) -> Result<Option<PackedWeight>, ModelError> {
        match Kernel::detect_bf16() {
            Some(kernel) => PackedWeight::pack_bf16_for(weight, kernel),
            None => Ok(None),
        }
    }

    /// Packs `weight: (n, k)` (f32 or bf16) into bf16 panels for `kernel`; `None` when it does
    /// not apply.
    pub fn pack_bf16_for(
        weight: &Tensor,
        kernel: Kernel,
    ) -> Result<Option<PackedWeight>, ModelError> {
        if !kernel.supported()
            || !weight.device().is_cpu()
            || !matches!(weight.dtype(), DType::F32 | DType::BF16)
        {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        // bf16 → f32 is exact, so rounding back gives each bf16 weight its own bits.
        let dense: Vec<f32> = weight
            .to_dtype(DType::F32)?
            .contiguous()?
            .flatten_all()?
            .to_vec1()?;
        let data = bf16::pack_panels(&dense, n, k, kernel.nr(), slice_width(k));
        Ok(Some(PackedWeight {
            data: Panels::Bf16(data),
            n,
            k,
            kernel,
        }))
    }

    /// Packs `weight: (n, k)` into f32 panels for `kernel`; `None` when it does not apply.
    pub fn pack_for(weight: &Tensor, kernel: Kernel) -> Result<Option<PackedWeight>, ModelError> {
        if !kernel.supported()
            || kernel == Kernel::Avx512Bf16
            || !weight.device().is_cpu()
            || weight.dtype() != DType::F32
        {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        let dense: Vec<f32> = weight.contiguous()?.flatten_all()?.to_vec1()?;
        let nr = kernel.nr();
        let panels = n.div_ceil(nr);
        let slice = slice_width(k);
        let mut data = vec![0f32; panels * k * nr];
        for (row, values) in dense.chunks_exact(k.max(1)).enumerate().take(n) {
            let (panel, lane) = (row / nr, row % nr);
            for (k0, chunk) in (0..k).step_by(slice).zip(values.chunks(slice)) {
                let base = k0 * panels * nr + panel * chunk.len() * nr + lane;
                for (kk, &v) in chunk.iter().enumerate() {
                    data[base + kk * nr] = v;
                }
            }
        }
        Ok(Some(PackedWeight {
            data: Panels::F32(data),
            n,
            k,
            kernel,
        }))
    }

    /// Whether the weight is held in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.data, Panels::Bf16(_))
    }

    /// Output columns.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The kernel the weight is packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
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
        if x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Err(ModelError::Format(format!(
                "packed matmul: input is {:?} on {:?}, the kernel takes f32 on the CPU",
                x.dtype(),
                x.device()
            )));
        }
        let x: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; m * self.n];
        self.compute(&x, m, &mut out);
        Ok(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?)
    }

    /// `out = x @ Wᵀ`, `x` row-major `(m, k)`, `out` row-major `(m, n)`.
    fn compute(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            out.fill(0.0);
            return;
        }
        let bf16 = self.is_bf16();
        let pairs = self.kernel == Kernel::Avx512Bf16;
        // bf16 panels hold each slice's input dimension rounded up to pairs.
        let padded = |kc: usize| if bf16 { kc.next_multiple_of(2) } else { kc };
        let (mr, nr) = (self.kernel.mr(), self.kernel.nr());
        let panels = n.div_ceil(nr);
        let slice = slice_width(k);
        let block_rows = mr * (BLOCK_BYTES / (4 * slice * mr)).clamp(1, TILES_PER_BLOCK);
        let block_rows = block_rows.min(m.next_multiple_of(mr));
        let mut packed_x = vec![0f32; block_rows * padded(slice)];
        let mut packed_pairs = vec![
            0u32;
            if pairs {
                block_rows * padded(slice) / 2
            } else {
                0
            }
        ];
        for row0 in (0..m).step_by(block_rows) {
            let rows_in_block = block_rows.min(m - row0);
            let tiles = rows_in_block.div_ceil(mr);
            for k0 in (0..k).step_by(slice) {
                let kc = slice.min(k - k0);
                let kcp = padded(kc);
                // Tile t holds its rows interleaved: element (r, kk) at t·kcp·mr + kk·mr + r;
                // rows past the end of x, and the padding of an odd slice, stay zero.
                for tile in 0..tiles {
                    let dst = &mut packed_x[tile * kcp * mr..(tile + 1) * kcp * mr];
                    dst.fill(0.0);
                    for r in 0..mr {
                        let row = row0 + tile * mr + r;
                        if row < row0 + rows_in_block {
                            let src = &x[row * k + k0..row * k + k0 + kc];
                            for (kk, &v) in src.iter().enumerate() {
                                dst[kk * mr + r] = v;
                            }
                        }
                    }
                    if pairs {
                        let dst = &mut packed_pairs[tile * kcp / 2 * mr..][..kcp / 2 * mr];
                        bf16::pair_rows(dst, &packed_x[tile * kcp * mr..][..kcp * mr], mr);
                    }
                }
                for panel in 0..panels {
                    let at = k0 * panels * nr + panel * kcp * nr;
                    let col = panel * nr;
                    let cols = nr.min(n - col);
                    for tile in 0..tiles {
                        let row = row0 + tile * mr;
                        let rows = mr.min(row0 + rows_in_block - row);
                        let c = &mut out[row * n + col..(row + rows - 1) * n + col + cols];
                        let tile_x = Tile {
                            rows,
                            cols,
                            ldc: n,
                            accumulate: k0 > 0,
                        };
                        match &self.data {
                            Panels::F32(data) => {
                                let xs = &packed_x[tile * kc * mr..(tile + 1) * kc * mr];
                                self.micro(xs, &data[at..][..kc * nr], kc, c, tile_x)
                            }
                            Panels::Bf16(data) => {
                                let weights = &data[at..][..kcp * nr];
                                if pairs {
                                    let xs = &packed_pairs[tile * kcp / 2 * mr..][..kcp / 2 * mr];
                                    bf16::micro_pairs(self.kernel, xs, weights, kcp, c, tile_x)
                                } else {
                                    let xs = &packed_x[tile * kcp * mr..][..kcp * mr];
                                    bf16::micro_widening(self.kernel, xs, weights, kcp, c, tile_x)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// One tile: `c[r][j] (+)= Σ_kk xs[kk·mr + r] · weights[kk·nr + j]` for `r < rows`,
    /// `j < cols`, row stride `ldc`.
    fn micro(&self, xs: &[f32], weights: &[f32], kc: usize, c: &mut [f32], tile: Tile) {
        let Tile {
            rows,
            cols,
            ldc,
            accumulate,
        } = tile;
        assert!(
            xs.len() >= kc * self.kernel.mr()
                && weights.len() >= kc * self.kernel.nr()
                && rows >= 1
                && rows <= self.kernel.mr()
                && cols <= self.kernel.nr()
                && c.len() >= (rows - 1) * ldc + cols
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the weight was packed only after `kernel.supported()` held (`pack_for`), so
        // the CPU has the kernel's features; the assertion above bounds every read and write.
        unsafe {
            match self.kernel {
                Kernel::Avx512 => avx512::micro(xs, weights, kc, c, ldc, rows, cols, accumulate),
                Kernel::Avx2 => avx2::micro(xs, weights, kc, c, ldc, rows, cols, accumulate),
                Kernel::Avx512Bf16 => unreachable!("f32 panels are never packed for vdpbf16ps"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (xs, weights, kc, c, ldc, rows, cols, accumulate);
            unreachable!("PackedWeight is only built on x86_64");
        }
    }
}

/// Where one micro-kernel call writes: `rows × cols` of the output, row stride `ldc`, added to
/// what is there when `accumulate`.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    ldc: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const MR: usize = 12;
    const NR: usize = 32;
    /// Floats ahead of the weight stream to prefetch, 4 KiB: the hardware prefetcher stops at
    /// each 4 KiB page, and a decode step streams every weight from memory once (`rft bench
    /// matmul`, 32 rows over 300 MB of weights: 76 → 96 GFLOP/s on one AVX-512 core; 2 and 8
    /// KiB ahead were no better).
    const PREFETCH: usize = 1024;

    /// See `PackedWeight::micro`. Safety: AVX-512F present; `xs` holds `kc · 12` floats,
    /// `weights` `kc · 32`, `c` `(rows − 1) · ldc + cols`, `rows ≤ 12`, `cols ≤ 32`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro(
        xs: &[f32],
        weights: &[f32],
        kc: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's bounds; every pointer that is dereferenced stays inside the
        // three slices (prefetch addresses may run past the end: prefetching never faults).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let x = xs.as_ptr();
            let w = weights.as_ptr();
            for kk in 0..kc {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(kk * NR + PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(kk * NR + PREFETCH + 16).cast());
                let w0 = _mm512_loadu_ps(w.add(kk * NR));
                let w1 = _mm512_loadu_ps(w.add(kk * NR + 16));
                let xk = x.add(kk * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xk.add(r));
                    acc[0] = _mm512_fmadd_ps(xb, w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(xb, w1, acc[1]);
                }
            }
            let mask0: __mmask16 = if cols >= 16 {
                0xffff
            } else {
                (1u16 << cols) - 1
            };
            let mask1: __mmask16 = if cols >= 32 {
                0xffff
            } else if cols > 16 {
                (1u16 << (cols - 16)) - 1
            } else {
                0
            };
            let out = c.as_mut_ptr();
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let at = out.add(r * ldc);
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, at));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, at.add(16)));
                }
                _mm512_mask_storeu_ps(at, mask0, v0);
                _mm512_mask_storeu_ps(at.add(16), mask1, v1);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const MR: usize = 6;
    const NR: usize = 16;
    /// Floats ahead of the weight stream to prefetch (see the AVX-512 kernel).
    const PREFETCH: usize = 1024;

    /// See `PackedWeight::micro`. Safety: AVX2 and FMA present; `xs` holds `kc · 6` floats,
    /// `weights` `kc · 16`, `c` `(rows − 1) · ldc + cols`, `rows ≤ 6`, `cols ≤ 16`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro(
        xs: &[f32],
        weights: &[f32],
        kc: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's bounds; every pointer that is dereferenced stays inside the three
        // slices (prefetch addresses may run past the end: prefetching never faults), and the
        // full-width loads and stores below happen only when `cols == 16`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let x = xs.as_ptr();
            let w = weights.as_ptr();
            for kk in 0..kc {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(kk * NR + PREFETCH).cast());
                let w0 = _mm256_loadu_ps(w.add(kk * NR));
                let w1 = _mm256_loadu_ps(w.add(kk * NR + 8));
                let xk = x.add(kk * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm256_broadcast_ss(&*xk.add(r));
                    acc[0] = _mm256_fmadd_ps(xb, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(xb, w1, acc[1]);
                }
            }
            let out = c.as_mut_ptr();
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let at = out.add(r * ldc);
                if cols == NR {
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if accumulate {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(at));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(at.add(8)));
                    }
                    _mm256_storeu_ps(at, v0);
                    _mm256_storeu_ps(at.add(8), v1);
                } else {
                    let mut tile = [0f32; NR];
                    _mm256_storeu_ps(tile.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(tile.as_mut_ptr().add(8), acc[1]);
                    for (j, v) in tile.iter().enumerate().take(cols) {
                        let dst = at.add(j);
                        *dst = if accumulate { *dst + v } else { *v };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU features `kernel` needs that this CPU lacks, found independently of
    /// `Kernel::supported`.
    fn missing_features(kernel: Kernel) -> Vec<&'static str> {
        let needed: &[&'static str] = match kernel {
            Kernel::Avx2 => &["avx2", "fma"],
            Kernel::Avx512 => &["avx2", "fma", "avx512f"],
            Kernel::Avx512Bf16 => &["avx2", "fma", "avx512f", "avx512bf16"],
        };
        #[cfg(target_arch = "x86_64")]
        let has = |feature: &str| match feature {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
            _ => unreachable!("{feature}"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let has = |_: &str| false;
        needed.iter().copied().filter(|f| !has(f)).collect()
    }

    /// Why `kernel` cannot run here, or `None` when it can.
    fn not_run_reason(kernel: Kernel) -> Option<String> {
        if cfg!(not(target_arch = "x86_64")) {
            return Some(format!(
                "kernel {kernel:?} not run: this CPU is not x86-64 ({})",
                std::env::consts::ARCH
            ));
        }
        let missing = missing_features(kernel);
        (!missing.is_empty()).then(|| {
            format!(
                "kernel {kernel:?} not run: this CPU lacks {}",
                missing.join(", ")
            )
        })
    }

    /// Says which kernels a test could not run, on the process's stderr directly: past the
    /// harness's capture of `eprintln!`, so the log of a passing run (CI's) shows it.
    fn report_not_run(test: &str, kernels: &[Kernel]) {
        use std::io::Write;
        for &kernel in kernels {
            if let Some(reason) = not_run_reason(kernel) {
                let _ = writeln!(std::io::stderr().lock(), "{test}: {reason}");
            }
        }
    }

    #[test]
    fn supported_is_what_the_cpu_reports() {
        for kernel in [Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Bf16] {
            assert_eq!(
                kernel.supported(),
                not_run_reason(kernel).is_none(),
                "{kernel:?}: {:?}",
                not_run_reason(kernel)
            );
        }
        assert_eq!(
            Kernel::detect().is_some(),
            Kernel::Avx2.supported(),
            "a CPU with AVX2 and FMA gets a kernel"
        );
    }

    fn dense_matmul_t(x: &Tensor, w: &Tensor) -> Vec<f32> {
        x.matmul(&w.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn packed_matmul_equals_candle_for_every_kernel() {
        // Shapes cover row and column tails of both tile sizes, inputs sliced (k > WHOLE_K_MAX)
        // with a short last slice, and more than one block of rows (m > 16 · 12).
        let shapes = [
            (1, 5, 3),
            (7, 33, 40),
            (13, 64, 16),
            (32, 96, 50),
            (25, 300, 33),
            (200, 520, 70),
            (30, 4200, 40),
            (2, 9000, 33),
        ];
        // Every kernel this CPU runs; the others are named on stderr, not skipped silently.
        let kernels = [Kernel::Avx2, Kernel::Avx512];
        report_not_run("packed_matmul_equals_candle_for_every_kernel", &kernels);
        for kernel in kernels {
            if !kernel.supported() {
                continue;
            }
            for (m, k, n) in shapes {
                let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
                let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
                let expected = dense_matmul_t(&x, &w);
                let packed = PackedWeight::pack_for(&w, kernel).unwrap().unwrap();
                assert_eq!(packed.kernel(), kernel);
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
                // Sums of up to 9,000 products of unit normals: rounding grows with √k.
                assert!(worst < 5e-3, "{kernel:?} {m}x{k}x{n}: {worst}");
            }
        }
    }

    #[test]
    fn bf16_panels_equal_the_product_of_the_rounded_weights_for_every_kernel() {
        // Odd widths (a padded pair), sliced inputs with an odd last slice, row and column
        // tails of both tile sizes, more than one block of rows.
        let shapes = [
            (1, 5, 3),
            (7, 33, 40),
            (13, 64, 16),
            (25, 301, 33),
            (200, 520, 70),
            (3, 4201, 40),
        ];
        let kernels = [Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Bf16];
        report_not_run(
            "bf16_panels_equal_the_product_of_the_rounded_weights_for_every_kernel",
            &kernels,
        );
        for kernel in kernels {
            if !kernel.supported() {
                continue;
            }
            for (m, k, n) in shapes {
                let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
                let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
                let w_rounded = w
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                // vdpbf16ps rounds the input to bf16 too, as a GPU's bf16 product does.
                let x_used = if kernel == Kernel::Avx512Bf16 {
                    x.to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                } else {
                    x.clone()
                };
                let expected = dense_matmul_t(&x_used, &w_rounded);
                for source in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
                    let packed = PackedWeight::pack_bf16_for(&source, kernel)
                        .unwrap()
                        .unwrap();
                    assert!(packed.is_bf16());
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
                    assert!(worst < 5e-3, "{kernel:?} {m}x{k}x{n}: {worst}");
                }
            }
        }
        // The f32 kernels never take bf16 panels' place, nor vdpbf16ps f32 ones.
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(PackedWeight::pack_for(&w, Kernel::Avx512Bf16)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_transposed_weight_packs_as_its_values() {
        let Some(kernel) = Kernel::detect() else {
            report_not_run("a_transposed_weight_packs_as_its_values", &[Kernel::Avx2]);
            return;
        };
        let x = Tensor::randn(0f32, 1.0, (9, 20), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (20, 35), &Device::Cpu).unwrap();
        // x @ w == x @ (wᵀ)ᵀ: packing the non-contiguous wᵀ must read it in logical order.
        let expected: Vec<f32> = x
            .matmul(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let packed = PackedWeight::pack_for(&w.t().unwrap(), kernel)
            .unwrap()
            .unwrap();
        let got: Vec<f32> = packed
            .matmul_t(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in expected.iter().zip(&got) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let Some(kernel) = Kernel::detect() else {
            report_not_run("wrong_input_width_is_an_error", &[Kernel::Avx2]);
            return;
        };
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        let packed = PackedWeight::pack_for(&w, kernel).unwrap().unwrap();
        let x = Tensor::zeros((2, 7), DType::F32, &Device::Cpu).unwrap();
        assert!(packed.matmul_t(&x).is_err());
    }
}
