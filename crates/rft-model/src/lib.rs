//! OpenRFT: the model engine: architectures, loading, batched sampling, LoRA (issue 4).
//!
//! This crate is an empty shell: it reserves its place in the workspace (see docs/architecture.md)
//! and is filled by the issue named above. Nothing here is used yet.
