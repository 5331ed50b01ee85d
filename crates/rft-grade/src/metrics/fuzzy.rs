//! PLACEHOLDER: being written.

/// placeholder
pub fn fuzzy_match(_input: &str, _reference: &str) -> f64 {
    unimplemented!()
}
