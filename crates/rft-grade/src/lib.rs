//! OpenRFT's graders.
#![deny(missing_docs)]

pub mod metrics;
