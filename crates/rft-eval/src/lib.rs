//! OpenRFT's evals and the RFT readiness report: know before you train.
//!
//! This crate runs a model over a dataset and grades every sample ([`run::run_eval`]), turns the
//! results into the spec's eval objects ([`objects`]: `eval`, `eval.run`,
//! `eval.run.output_item`, served unchanged by the HTTP server) and into the readiness report
//! ([`report::build_report`]), which turns the RFT guide's advice (evals first, judge the judge,
//! guard against reward hacking, avoid skewed data, limit lucky guesses) into eight checks with
//! a verdict each.
//!
//! The main types: [`data::EvalData`] (the rows of an RFT dataset or of an eval-run file),
//! [`policy::Policy`] (the model under test: the local engine or an OpenAI-compatible endpoint),
//! [`run::RowResult`] (one line of the resumable results file) and [`report::Report`].
//! It depends on the model engine and the graders; it knows nothing of HTTP servers or storage.
//!
//! ```
//! use rft_eval::report::{check_signal, Verdict};
//! // A grader that always returns its maximum gives RFT nothing to learn from.
//! let rewards = vec![vec![1.0; 4]; 8];
//! let check = check_signal(&rewards, (0.0, 1.0));
//! assert_eq!(check.verdict, Verdict::Blocker);
//! ```
#![forbid(unsafe_code)]

pub mod data;
mod error;
pub mod objects;
pub mod policy;
pub mod report;
pub mod run;
pub mod stats;

pub use error::EvalError;
