//! Saying when a policy collapses. GRPO learns only from groups whose samples got different
//! rewards; when nearly every group of a step is flat (every sample right, or every one wrong)
//! or the policy's entropy is nearly zero (it says one thing whatever it samples), a step has
//! no signal left, and a run of such steps drifts or overfits while looking healthy. After
//! [`COLLAPSE_STEPS`] such steps in a row the job writes a warning event, once per run of them.

/// A step is flat when at least this share of its groups have no reward spread.
pub const ZERO_VARIANCE_SHARE: f64 = 0.9;
/// A step has collapsed entropy below this mean per-token entropy (nats).
pub const ENTROPY_FLOOR: f64 = 0.05;
/// Steps in a row before the warning.
pub const COLLAPSE_STEPS: usize = 3;

/// Watches the steps of one job (saved with its resume state).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CollapseWatch {
    /// Collapsed steps in a row, and whether this run of them was reported.
    run: usize,
    warned: bool,
}

impl CollapseWatch {
    /// Takes a step's share of flat groups and mean entropy; returns the warning to write when
    /// this step completes a run of [`COLLAPSE_STEPS`].
    pub(crate) fn observe(
        &mut self,
        step: usize,
        frac_zero_std_groups: f64,
        entropy: f64,
    ) -> Option<String> {
        let flat = frac_zero_std_groups >= ZERO_VARIANCE_SHARE;
        let frozen = entropy.is_finite() && entropy < ENTROPY_FLOOR;
        if !(flat || frozen) {
            self.run = 0;
            self.warned = false;
            return None;
        }
        self.run += 1;
        if self.run < COLLAPSE_STEPS || self.warned {
            return None;
        }
        self.warned = true;
        let first = step + 1 - self.run;
        let why = if frozen {
            format!(
                "the policy's entropy is {entropy:.3} nats per token (below {ENTROPY_FLOOR}): it gives one answer whatever it samples"
            )
        } else {
            format!(
                "{:.0}% of this step's groups got the same reward on every sample, so their advantages are zero",
                frac_zero_std_groups * 100.0
            )
        };
        Some(format!(
            "Possible collapse since step {first}: {why}, and {run} steps in a row had (almost) no training signal. Rewards may stop improving or fall; the kept checkpoints hold the best validation so far. Try a lower learning rate, a higher temperature, or rows the model gets right only sometimes.",
            run = self.run
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_run_of_collapsed_steps() {
        let mut watch = CollapseWatch::default();
        assert!(watch.observe(1, 1.0, 2.0).is_none());
        assert!(watch.observe(2, 0.95, 2.0).is_none());
        let warning = watch.observe(3, 1.0, 2.0).expect("third flat step");
        assert!(warning.contains("since step 1"), "{warning}");
        assert!(warning.contains("100%"), "{warning}");
        // Once per run.
        assert!(watch.observe(4, 1.0, 2.0).is_none());
        // A healthy step ends the run; a new run warns again.
        assert!(watch.observe(5, 0.2, 2.0).is_none());
        assert!(watch.observe(6, 0.0, 0.01).is_none());
        assert!(watch.observe(7, 0.0, 0.002).is_none());
        let warning = watch.observe(8, 0.5, 0.001).expect("entropy collapse");
        assert!(warning.contains("entropy"), "{warning}");
        assert!(warning.contains("since step 6"), "{warning}");
    }

    #[test]
    fn healthy_or_interrupted_runs_never_warn() {
        let mut watch = CollapseWatch::default();
        for step in 1..=20 {
            let flat = if step % 3 == 0 { 0.5 } else { 1.0 };
            assert!(watch.observe(step, flat, 1.0).is_none(), "step {step}");
        }
        // Entropy is NaN when no token was scored: not a collapse by itself.
        for step in 21..=30 {
            assert!(watch.observe(step, 0.1, f64::NAN).is_none());
        }
    }
}
