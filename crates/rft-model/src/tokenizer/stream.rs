//! Incremental decoding for streaming: feed generated ids one at a time, get the new text.
//!
//! Decoding each id alone is wrong twice over: a token may carry half of a UTF-8 character
//! (emoji and CJK are often split across two or three byte-level tokens), and some decoders
//! depend on context (SentencePiece drops the space of the first token). So the stream decodes
//! a short window of recent ids, emits what grew beyond the text it already emitted, and holds
//! text back while it ends in U+FFFD, the mark of an incomplete character. This is the
//! algorithm of `tokenizers`' `DecodeStream`, kept here so the stream can be flushed at the end.

use super::{Tokenizer, TokenizerError};

/// Streams text out of generated ids; made by [`Tokenizer::decode_stream`].
///
/// Concatenating every `Some` from [`DecodeStream::step`] and then [`DecodeStream::finish`]
/// gives `tokenizer.decode(all_ids, skip_special)`.
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// The window: ids before `prefix_index` give context, the rest are not yet emitted.
    ids: Vec<u32>,
    /// The decoding of `ids[..prefix_index]`, already emitted.
    prefix: String,
    prefix_index: usize,
}

impl<'a> DecodeStream<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }

    /// Adds one id; returns the text it completes, or `None` while a character is incomplete
    /// (or the id is a skipped special token).
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        tokenizers::tokenizer::step_decode_stream(
            &*self.tokenizer.inner,
            vec![id],
            self.skip_special,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| TokenizerError::Decode {
            message: e.to_string(),
        })
    }

    /// Ends the stream: returns text still held back (an incomplete character at the end
    /// becomes U+FFFD, as in [`Tokenizer::decode`]), and resets the stream.
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let rest = text
            .strip_prefix(self.prefix.as_str())
            .filter(|rest| !rest.is_empty())
            .map(str::to_owned);
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(rest)
    }
}
