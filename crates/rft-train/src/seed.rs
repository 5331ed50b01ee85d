//! Seeds: everything random in a job derives from `(seed, step, row)` through [`mix`], so a
//! resumed run draws exactly what an uninterrupted one would have.

/// A cheap, well-mixed 64-bit hash (splitmix64) for deriving seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The row order of one epoch of `n` rows: a Fisher–Yates shuffle seeded by `(seed, epoch)`.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = mix(seed ^ mix(epoch as u64 + 1));
    for i in (1..n).rev() {
        state = mix(state);
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_splitmix64_and_orders_are_permutations() {
        // rft-eval keeps a copy of `mix` (it must not depend on the trainer): same values.
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix(42), 0xBDD7_3226_2FEB_6E95);
        let mut order = epoch_order(50, 7, 3);
        assert_ne!(order, (0..50).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
    }
}
