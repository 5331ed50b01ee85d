//! bf16 panels: the weight in half the bytes, multiplied with f32 accumulation.
//!
//! A decode step streams every weight from memory once, so at small batches its speed is the
//! weight bytes per token: bf16 halves them. Two ways to multiply them:
//! - `vdpbf16ps` (AVX512-BF16): 16 lanes, each adding the products of one pair of bf16 inputs
//!   with one pair of bf16 weights to an f32 accumulator. The input is rounded to bf16 too,
//!   as a GPU's bf16 matmul does; twice the products per instruction of f32 FMA.
//! - widening (AVX-512F or AVX2 without it): each bf16 weight becomes an f32 as it is loaded
//!   (a shift or a mask: bf16 is the top half of an f32) and meets the f32 input in an FMA.
//!   The same arithmetic as f32 panels on half the bytes.
//!
//! Both read one layout: within a slice of the input dimension, pair row `i` of a panel holds,
//! for each of its `nr` columns `j`, `[w(j, 2i), w(j, 2i + 1)]`. Read as 32-bit lanes, lane `j`
//! is column `j`'s pair: the low half the even input, the high half the odd one.

use super::{Kernel, Tile};

/// `v` rounded to the nearest bf16 (ties to even), as its bit pattern. NaN stays NaN.
pub(super) fn to_bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 a bf16 bit pattern stands for (exact).
#[cfg(test)]
pub(super) fn from_bf16_bits(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `dense: (n, k)` row-major into bf16 panels of `nr` columns, sliced along the input as the
/// f32 panels are (`slice` wide), each slice padded to an even width.
pub(super) fn pack_panels(dense: &[f32], n: usize, k: usize, nr: usize, slice: usize) -> Vec<u16> {
    let panels = n.div_ceil(nr);
    // Only the last slice can be odd (`slice` is either all of `k` or even), so slice `s`
    // starts at `k0 · panels · nr` in the packed data.
    let padded_k = k.next_multiple_of(2);
    let mut data = vec![0u16; panels * padded_k * nr];
    for (row, values) in dense.chunks_exact(k.max(1)).enumerate().take(n) {
        let (panel, lane) = (row / nr, row % nr);
        for (k0, chunk) in (0..k).step_by(slice).zip(values.chunks(slice)) {
            let kcp = chunk.len().next_multiple_of(2);
            let base = k0 * panels * nr + panel * kcp * nr + lane * 2;
            for (kk, &v) in chunk.iter().enumerate() {
                data[base + (kk / 2) * nr * 2 + kk % 2] = to_bf16_bits(v);
            }
        }
    }
    data
}

/// A tile of interleaved f32 inputs (`xs[kk·mr + r]`, `kcp` even) as bf16 pairs:
/// `pairs[i·mr + r] = bf16(x[r][2i]) | bf16(x[r][2i + 1]) << 16`.
pub(super) fn pair_rows(pairs: &mut [u32], xs: &[f32], mr: usize) {
    for (i, pair_row) in pairs.chunks_exact_mut(mr).enumerate() {
        let (even, odd) = (&xs[2 * i * mr..][..mr], &xs[(2 * i + 1) * mr..][..mr]);
        for ((dst, &lo), &hi) in pair_row.iter_mut().zip(even).zip(odd) {
            *dst = u32::from(to_bf16_bits(lo)) | (u32::from(to_bf16_bits(hi)) << 16);
        }
    }
}

/// One tile through `vdpbf16ps`: `xs` holds `kcp/2 · 12` input pairs, `weights` `kcp · 32`.
pub(super) fn micro_pairs(
    kernel: Kernel,
    xs: &[u32],
    weights: &[u16],
    kcp: usize,
    c: &mut [f32],
    tile: Tile,
) {
    check(kernel, xs.len() * 2, weights, kcp, c, tile);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: bf16 panels for this kernel are packed only after `kernel.supported()` held
    // (`pack_bf16_for`); `check` bounds every read and write.
    unsafe {
        match kernel {
            Kernel::Avx512Bf16 => avx512bf16::micro(xs, weights, kcp, c, tile),
            other => unreachable!("{other:?} does not take bf16 pairs"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, weights, kcp, c, tile);
        unreachable!("PackedWeight is only built on x86_64");
    }
}

/// One tile widening each bf16 weight to f32: `xs` holds `kcp · mr` f32 inputs.
pub(super) fn micro_widening(
    kernel: Kernel,
    xs: &[f32],
    weights: &[u16],
    kcp: usize,
    c: &mut [f32],
    tile: Tile,
) {
    check(kernel, xs.len(), weights, kcp, c, tile);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `micro_pairs`.
    unsafe {
        match kernel {
            Kernel::Avx512 => avx512::micro(xs, weights, kcp, c, tile),
            Kernel::Avx2 => avx2::micro(xs, weights, kcp, c, tile),
            Kernel::Avx512Bf16 => unreachable!("vdpbf16ps takes bf16 pairs"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xs, weights, kcp, c, tile);
        unreachable!("PackedWeight is only built on x86_64");
    }
}

/// The bounds every kernel relies on; `x_values` counts inputs (a pair counts two).
fn check(kernel: Kernel, x_values: usize, weights: &[u16], kcp: usize, c: &[f32], tile: Tile) {
    assert!(
        kcp.is_multiple_of(2)
            && x_values >= kcp * kernel.mr()
            && weights.len() >= kcp * kernel.nr()
            && tile.rows >= 1
            && tile.rows <= kernel.mr()
            && tile.cols <= kernel.nr()
            && c.len() >= (tile.rows - 1) * tile.ldc + tile.cols
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use std::arch::x86_64::*;

    use super::super::Tile;

    const MR: usize = 12;
    const NR: usize = 32;
    /// bf16 values ahead of the weight stream to prefetch (4 KiB, as for f32 panels).
    const PREFETCH: usize = 2048;

    /// Safety: AVX-512F and AVX512-BF16 present; the bounds of `super::check`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn micro(xs: &[u32], weights: &[u16], kcp: usize, c: &mut [f32], tile: Tile) {
        // SAFETY: the caller's bounds; prefetch addresses may run past the end (never faults).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let x = xs.as_ptr();
            let w = weights.as_ptr();
            for i in 0..kcp / 2 {
                let row = w.add(i * NR * 2);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH + 32).cast());
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.add(32).cast()));
                let xi = x.add(i * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xi.add(r) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], xb, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], xb, w1);
                }
            }
            super::avx512::store(&acc, c, tile);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::Tile;

    const MR: usize = 12;
    const NR: usize = 32;
    const PREFETCH: usize = 2048;

    /// Safety: AVX-512F present; the bounds of `super::check`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn micro(xs: &[f32], weights: &[u16], kcp: usize, c: &mut [f32], tile: Tile) {
        // SAFETY: the caller's bounds; prefetch addresses may run past the end (never faults).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
            let x = xs.as_ptr();
            let w = weights.as_ptr();
            for i in 0..kcp / 2 {
                let row = w.add(i * NR * 2);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH + 32).cast());
                let p0 = _mm512_loadu_si512(row.cast());
                let p1 = _mm512_loadu_si512(row.add(32).cast());
                // Lane j: the low half is w(j, 2i), the high half w(j, 2i + 1).
                let even0 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(p0));
                let odd0 = _mm512_castsi512_ps(_mm512_and_si512(p0, high));
                let even1 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(p1));
                let odd1 = _mm512_castsi512_ps(_mm512_and_si512(p1, high));
                let x_even = x.add(2 * i * MR);
                let x_odd = x.add((2 * i + 1) * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xe = _mm512_set1_ps(*x_even.add(r));
                    let xo = _mm512_set1_ps(*x_odd.add(r));
                    acc[0] = _mm512_fmadd_ps(xe, even0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(xe, even1, acc[1]);
                    acc[0] = _mm512_fmadd_ps(xo, odd0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(xo, odd1, acc[1]);
                }
            }
            store(&acc, c, tile);
        }
    }

    /// Writes (or adds) a 12 × 32 accumulator tile, masked to `tile.cols` columns.
    ///
    /// Safety: AVX-512F present; `c` holds `(rows − 1) · ldc + cols` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store(acc: &[[__m512; 2]; MR], c: &mut [f32], tile: Tile) {
        let cols = tile.cols;
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
        // SAFETY: masked loads and stores touch only the `cols` columns of the `rows` rows.
        unsafe {
            let out = c.as_mut_ptr();
            for (r, acc) in acc.iter().enumerate().take(tile.rows) {
                let at = out.add(r * tile.ldc);
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if tile.accumulate {
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

    use super::super::Tile;

    const MR: usize = 6;
    const NR: usize = 16;
    const PREFETCH: usize = 2048;

    /// Safety: AVX2 and FMA present; the bounds of `super::check`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro(xs: &[f32], weights: &[u16], kcp: usize, c: &mut [f32], tile: Tile) {
        // SAFETY: the caller's bounds; prefetch addresses may run past the end (never faults);
        // full-width stores happen only when `cols == 16`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
            let x = xs.as_ptr();
            let w = weights.as_ptr();
            for i in 0..kcp / 2 {
                let row = w.add(i * NR * 2);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH).cast());
                let p0 = _mm256_loadu_si256(row.cast());
                let p1 = _mm256_loadu_si256(row.add(16).cast());
                let even0 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(p0));
                let odd0 = _mm256_castsi256_ps(_mm256_and_si256(p0, high));
                let even1 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(p1));
                let odd1 = _mm256_castsi256_ps(_mm256_and_si256(p1, high));
                let x_even = x.add(2 * i * MR);
                let x_odd = x.add((2 * i + 1) * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xe = _mm256_broadcast_ss(&*x_even.add(r));
                    let xo = _mm256_broadcast_ss(&*x_odd.add(r));
                    acc[0] = _mm256_fmadd_ps(xe, even0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(xe, even1, acc[1]);
                    acc[0] = _mm256_fmadd_ps(xo, odd0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(xo, odd1, acc[1]);
                }
            }
            let out = c.as_mut_ptr();
            for (r, acc) in acc.iter().enumerate().take(tile.rows) {
                let at = out.add(r * tile.ldc);
                if tile.cols == NR {
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if tile.accumulate {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(at));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(at.add(8)));
                    }
                    _mm256_storeu_ps(at, v0);
                    _mm256_storeu_ps(at.add(8), v1);
                    continue;
                }
                let mut values = [0f32; NR];
                _mm256_storeu_ps(values.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(values.as_mut_ptr().add(8), acc[1]);
                for (j, v) in values.iter().enumerate().take(tile.cols) {
                    let dst = at.add(j);
                    *dst = if tile.accumulate { *dst + v } else { *v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_exact_on_bf16_values() {
        assert_eq!(from_bf16_bits(to_bf16_bits(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even pattern, 1.
        assert_eq!(from_bf16_bits(to_bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            from_bf16_bits(to_bf16_bits(1.0 + 3.0 / 256.0)),
            1.0 + 2.0 / 128.0
        );
        assert!(from_bf16_bits(to_bf16_bits(f32::NAN)).is_nan());
        assert_eq!(from_bf16_bits(to_bf16_bits(f32::INFINITY)), f32::INFINITY);
        for v in [0.1f32, -3.7, 1e-20, 6.5e4] {
            let once = from_bf16_bits(to_bf16_bits(v));
            assert_eq!(from_bf16_bits(to_bf16_bits(once)), once);
            assert!((once - v).abs() <= v.abs() / 256.0);
        }
    }
}
