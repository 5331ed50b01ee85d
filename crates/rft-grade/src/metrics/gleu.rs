//! PLACEHOLDER: being written.

/// placeholder
pub fn gleu(_input: &str, _reference: &str) -> f64 {
    unimplemented!()
}
