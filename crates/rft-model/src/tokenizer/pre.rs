//! The pre-tokenizers a byte-level BPE GGUF can name in `tokenizer.ggml.pre`, rebuilt as the
//! `tokenizer.json` of the model family would have them.
//!
//! A GGUF stores a vocabulary and merges but not the text splitting that ran before the merges
//! were learned; llama.cpp keys it on `tokenizer.ggml.pre` (`llama-vocab.cpp`). Splitting text
//! differently from training gives valid but different ids, which silently degrades a model, so
//! an unknown name is an error rather than a GPT-2 fallback. candle's `TokenizerFromGguf` gets
//! `smollm` and `llama-bpe` wrong (it falls back to a prefix-space `ByteLevel`), hence this file.
//!
//! Each kind reproduces the Hugging Face `tokenizer.json` of its family, not llama.cpp's own
//! splitter: the parity fixtures are made with Python `tokenizers`.

use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::TokenizerError;

/// Qwen2's split regex, as in its `tokenizer.json`: single digits, letters with one leading
/// non-letter, punctuation runs that swallow the newlines after them.
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama-3's split regex (tiktoken's cl100k): as Qwen2's but digits in groups of up to three.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The text splitting of a byte-level BPE vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// GPT-2's `ByteLevel` regex alone, no prefix space (`gpt-2`, `default`, or no `pre`).
    Gpt2,
    /// `Digits(individual_digits)` then GPT-2's `ByteLevel` (`smollm`, `starcoder`): every digit
    /// is its own piece, and whitespace before a digit is split off on its own.
    SmolLm,
    /// Llama-3's regex, `ignore_merges`, BOS added by default (`llama-bpe`, `llama3`, ...).
    Llama3,
    /// Qwen2's regex after NFC normalisation (`qwen2`, `deepseek-r1-qwen`, `megrez`).
    Qwen2,
}

/// `tokenizer.ggml.pre` values this module implements, for error messages.
pub(crate) const SUPPORTED_PRE: &str =
    "gpt-2, default, smollm, starcoder, llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen, megrez";

impl PreTokenizerKind {
    /// The kind for a GGUF's `tokenizer.ggml.pre`; `None` when the file has no such field.
    pub(crate) fn from_gguf_pre(pre: Option<&str>) -> Result<Self, TokenizerError> {
        Ok(match pre {
            None | Some("default" | "gpt-2" | "gpt2") => Self::Gpt2,
            Some("smollm" | "starcoder") => Self::SmolLm,
            Some("llama-bpe" | "llama3" | "llama-v3") => Self::Llama3,
            Some("qwen2" | "deepseek-r1-qwen" | "megrez") => Self::Qwen2,
            Some(other) => {
                return Err(TokenizerError::UnsupportedPreTokenizer {
                    pre: other.to_owned(),
                })
            }
        })
    }

    /// The normaliser the family's `tokenizer.json` runs before splitting.
    pub(crate) fn normalizer(self) -> Option<NormalizerWrapper> {
        match self {
            Self::Qwen2 => Some(NFC.into()),
            Self::Gpt2 | Self::SmolLm | Self::Llama3 => None,
        }
    }

    /// The pre-tokenizer, ending in the `ByteLevel` step that maps bytes to BPE symbols.
    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(match self {
            // use_regex = true: ByteLevel applies GPT-2's own split regex.
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
            Self::SmolLm => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Self::Llama3 => split_then_bytes(LLAMA3_REGEX, true)?,
            Self::Qwen2 => split_then_bytes(QWEN2_REGEX, false)?,
        })
    }

    /// Whether BPE emits a whole pre-token that is itself in the vocabulary without merging
    /// (Llama-3's `ignore_merges`; llama.cpp sets it for the same `pre` names).
    pub(crate) fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Whether encoding with special tokens prepends BOS when the GGUF does not say
    /// (`tokenizer.ggml.add_bos_token`); llama.cpp's default per family.
    pub(crate) fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }
}

fn split_then_bytes(
    regex: &str,
    trim_offsets: bool,
) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TokenizerError::Build {
        what: "the pre-tokenizer regex".to_owned(),
        message: e.to_string(),
    })?;
    // use_regex = false: the Split above already did the splitting.
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, trim_offsets, false).into(),
    ])
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{
        NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
        PreTokenizer,
    };

    /// The pieces a kind cuts `text` into, in byte-level spelling (`Ġ` is a space, `Ċ` a newline).
    fn pieces(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let mut normalized = NormalizedString::from(text);
        if let Some(n) = kind.normalizer() {
            n.normalize(&mut normalized).unwrap();
        }
        let mut pre = PreTokenizedString::from(normalized);
        kind.pre_tokenizer()
            .unwrap()
            .pre_tokenize(&mut pre)
            .unwrap();
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_owned())
            .collect()
    }

    #[test]
    fn smollm_splits_digits_individually() {
        assert_eq!(
            pieces(PreTokenizerKind::SmolLm, "Hello world! 123"),
            ["Hello", "Ġworld", "!", "Ġ", "1", "2", "3"]
        );
    }

    #[test]
    fn smollm_has_no_prefix_space() {
        // candle's fallback adds a prefix space: "ab" -> ["Ġab"].
        assert_eq!(pieces(PreTokenizerKind::SmolLm, "ab"), ["ab"]);
        assert_eq!(pieces(PreTokenizerKind::Gpt2, "ab"), ["ab"]);
    }

    #[test]
    fn smollm_splits_whitespace_before_a_digit_off() {
        // Digits runs first, so the GPT-2 regex sees "a  " alone and keeps its two spaces
        // together; GPT-2 alone would give "a", "Ġ", "Ġ1".
        assert_eq!(pieces(PreTokenizerKind::SmolLm, "a  1"), ["a", "ĠĠ", "1"]);
        assert_eq!(pieces(PreTokenizerKind::Gpt2, "a  1"), ["a", "Ġ", "Ġ1"]);
    }

    #[test]
    fn smollm_treats_other_numerals_as_digits() {
        // Digits uses char::is_numeric, which covers ½, ² and Roman numerals too.
        assert_eq!(pieces(PreTokenizerKind::SmolLm, "x ½"), ["x", "Ġ", "Â½"]);
    }

    #[test]
    fn gpt2_keeps_digit_runs_and_lowercase_contractions_only() {
        assert_eq!(
            pieces(PreTokenizerKind::Gpt2, "it's 2024 IT'S"),
            ["it", "'s", "Ġ2024", "ĠIT", "'", "S"]
        );
    }

    #[test]
    fn llama3_groups_digits_in_threes() {
        assert_eq!(
            pieces(PreTokenizerKind::Llama3, "1234567 x"),
            ["123", "456", "7", "Ġx"]
        );
    }

    #[test]
    fn llama3_contractions_are_case_insensitive() {
        assert_eq!(
            pieces(PreTokenizerKind::Llama3, "IT'S we'LL"),
            ["IT", "'S", "Ġwe", "'LL"]
        );
    }

    #[test]
    fn qwen2_keeps_contractions() {
        assert_eq!(
            pieces(PreTokenizerKind::Qwen2, "I'm sure they'll say it's fine"),
            ["I", "'m", "Ġsure", "Ġthey", "'ll", "Ġsay", "Ġit", "'s", "Ġfine"]
        );
    }

    #[test]
    fn qwen2_splits_digits_individually() {
        assert_eq!(
            pieces(PreTokenizerKind::Qwen2, "x 123"),
            ["x", "Ġ", "1", "2", "3"]
        );
    }

    #[test]
    fn qwen2_whitespace_runs_leave_the_last_space_to_the_word() {
        // `\s+(?!\S)` needs fancy-regex's look-ahead: "   foo" -> "ĠĠ", "Ġfoo".
        assert_eq!(
            pieces(PreTokenizerKind::Qwen2, "a   foo\n\n  bar"),
            ["a", "ĠĠ", "Ġfoo", "ĊĊ", "Ġ", "Ġbar"]
        );
    }

    #[test]
    fn qwen2_punctuation_takes_following_newlines() {
        assert_eq!(
            pieces(PreTokenizerKind::Qwen2, "end.\n\nNext"),
            ["end", ".ĊĊ", "Next"]
        );
    }

    #[test]
    fn qwen2_normalises_to_nfc() {
        // "e" + COMBINING ACUTE becomes the single letter "é" (bytes C3 A9, spelled "Ã©");
        // without NFC the mark (CC 81, spelled "Ìģ") is a piece of its own.
        assert_eq!(pieces(PreTokenizerKind::Qwen2, "e\u{301}"), ["Ã©"]);
        assert_eq!(pieces(PreTokenizerKind::Llama3, "e\u{301}"), ["e", "Ìģ"]);
    }

    #[test]
    fn gguf_pre_names_map_to_kinds() {
        use PreTokenizerKind::*;
        let cases = [
            (None, Gpt2),
            (Some("gpt-2"), Gpt2),
            (Some("default"), Gpt2),
            (Some("smollm"), SmolLm),
            (Some("llama-bpe"), Llama3),
            (Some("llama3"), Llama3),
            (Some("qwen2"), Qwen2),
        ];
        for (pre, kind) in cases {
            assert_eq!(
                PreTokenizerKind::from_gguf_pre(pre).unwrap(),
                kind,
                "{pre:?}"
            );
        }
        let err = PreTokenizerKind::from_gguf_pre(Some("deepseek-coder")).unwrap_err();
        assert!(err.to_string().contains("deepseek-coder"), "{err}");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
