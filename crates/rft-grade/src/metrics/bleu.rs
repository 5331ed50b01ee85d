//! PLACEHOLDER: being written.

/// placeholder
pub fn bleu(_input: &str, _reference: &str) -> f64 {
    unimplemented!()
}
