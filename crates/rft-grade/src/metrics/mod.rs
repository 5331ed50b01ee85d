//! The `text_similarity` metrics, each an exact port of one Python reference implementation.
//!
//! Every function here must agree with `scripts/text_similarity_reference.py` to 1e-9 on any input;
//! `tests/text_similarity_parity.rs` checks that on a 700-pair corpus. Where the reference does
//! something surprising (tokenisation, smoothing, Unicode handling) the port does the same, on purpose.

mod bleu;
mod fuzzy;
mod gleu;
mod meteor;
mod ngram;
mod porter;
pub(crate) mod pytext;
mod rouge;
mod wordnet;

pub use bleu::bleu;
pub use fuzzy::fuzzy_match;
pub use gleu::gleu;
pub use meteor::meteor;
pub use rouge::{rouge_l, rouge_n};
pub use wordnet::{WordNet, WordNetError};
