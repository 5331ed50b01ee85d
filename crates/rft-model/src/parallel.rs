//! Data parallelism across CPU cores: batched work (the rows of a rollout, the prompt groups of a
//! training batch) is split into shards that run side by side, each on its own thread.
//!
//! Why not leave the cores to candle: its matmul forks and joins a rayon task per call, and its
//! element-wise ops meet at a barrier per call. At rollout and training sizes those hand-offs
//! cost more than they share. Measured on the 2-core reference machine (`rft bench decode
//! --batch 64 --tokens 64 --prompt-tokens 85`): one batch of 64 rows on both cores decodes
//! 115 tok/s, while two batches of 32 rows, each on one core, decode 174 tok/s together.
//!
//! Each shard runs inside its own rayon pool of `cores / shards` threads, so candle's matmul
//! (which parallelises over the *current* rayon pool) stays within the shard's share of the
//! machine. On a GPU there is one shard: the device is the parallel part.

use candle_core::Device;

use crate::ModelError;

/// How many threads the machine offers for tensor work: rayon's global pool size, which
/// honours `RAYON_NUM_THREADS`.
pub fn cores() -> usize {
    rayon::current_num_threads().max(1)
}

/// How many shards to split `units` independent pieces of work into on `device`.
pub fn shard_count(device: &Device, units: usize) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    cores().min(units).max(1)
}

/// One shard's work.
pub type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;

/// Runs every job, each on its own thread inside a rayon pool of an equal share of the cores,
/// and returns their results in order. One job runs on the calling thread.
pub fn run_shards<T: Send>(jobs: Vec<Job<'_, T>>) -> Result<Vec<T>, ModelError> {
    if jobs.len() <= 1 {
        return Ok(jobs.into_iter().map(|job| job()).collect());
    }
    let threads = (cores() / jobs.len()).max(1);
    let pools = (0..jobs.len())
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ModelError::Format(format!("could not start worker threads: {err}")))?;
    Ok(std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .zip(&pools)
            .map(|(job, pool)| scope.spawn(move || pool.install(job)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    }))
}

/// Splits `weights` (the cost of each unit, in order) into at most `shards` contiguous ranges
/// of roughly equal total weight; empty ranges are dropped.
pub fn balanced_ranges(weights: &[usize], shards: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = weights.iter().sum();
    let shards = shards.max(1);
    let mut ranges = Vec::with_capacity(shards);
    let mut start = 0;
    let mut acc = 0;
    for (idx, &w) in weights.iter().enumerate() {
        // A unit starts the next range when its midpoint lies past the current range's share
        // of the total (in integers: 2·acc + w ≥ 2·total·k / shards).
        let k = ranges.len() + 1;
        if idx > start && k < shards && (2 * acc + w) * shards >= 2 * total * k {
            ranges.push(start..idx);
            start = idx;
        }
        acc += w;
    }
    if start < weights.len() {
        ranges.push(start..weights.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_unit_once_and_balance_the_weight() {
        let weights = [5, 5, 5, 5, 5, 5, 5, 5];
        assert_eq!(balanced_ranges(&weights, 2), vec![0..4, 4..8]);
        assert_eq!(balanced_ranges(&weights, 3), vec![0..3, 3..5, 5..8]);
        assert_eq!(balanced_ranges(&[1, 1, 10], 2), vec![0..2, 2..3]);
        assert_eq!(balanced_ranges(&[10, 1, 1], 2), vec![0..1, 1..3]);
        assert_eq!(balanced_ranges(&[3], 4), vec![0..1]);
        assert!(balanced_ranges(&[], 2).is_empty());
    }

    #[test]
    fn shards_return_their_results_in_order() {
        let jobs: Vec<Job<'_, usize>> = (0..5usize)
            .map(|i| Box::new(move || i * i) as Job<'_, usize>)
            .collect();
        assert_eq!(run_shards(jobs).unwrap(), vec![0, 1, 4, 9, 16]);
    }
}
