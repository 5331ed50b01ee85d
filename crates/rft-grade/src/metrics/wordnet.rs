//! PLACEHOLDER: being written.

/// placeholder
#[derive(Debug)]
pub struct WordNet;

/// placeholder
#[derive(Debug, thiserror::Error)]
#[error("placeholder")]
pub struct WordNetError;

impl WordNet {
    /// placeholder
    pub fn shared() -> Result<&'static WordNet, WordNetError> {
        unimplemented!()
    }
}
