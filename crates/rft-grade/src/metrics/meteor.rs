//! PLACEHOLDER: being written.

use super::WordNet;

/// placeholder
pub fn meteor(_input: &str, _reference: &str, _wordnet: &WordNet) -> f64 {
    unimplemented!()
}
