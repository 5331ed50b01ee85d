//! PLACEHOLDER: being written.

/// placeholder
pub fn rouge_n(_input: &str, _reference: &str, _n: usize) -> f64 {
    unimplemented!()
}

/// placeholder
pub fn rouge_l(_input: &str, _reference: &str) -> f64 {
    unimplemented!()
}
