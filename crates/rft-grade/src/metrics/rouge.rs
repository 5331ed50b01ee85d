//! ROUGE-N and ROUGE-L F-measures, ported from Google's rouge-score 0.1.2.
//!
//! Each is `RougeScorer([key], use_stemmer=False).score(reference, input)[key].fmeasure` for
//! `key` in rouge1..rouge9 or rougeL (`rouge_score/rouge_scorer.py`), with the default tokenizer
//! (`rouge_score/tokenize.py`): Python's `str.lower()`, every run of characters outside `[a-z0-9]`
//! becomes a separator, empty tokens are dropped. Precision, recall and F-measure use the same
//! float operations as `rouge_score/scoring.py`.

use super::ngram::{ngram_matches, Vocab};

/// ROUGE-N F-measure of `input` (the prediction) against `reference` (the target), in 0..=1.
///
/// Only ASCII letters and digits survive tokenisation (after Unicode lowercasing), so "café" is
/// the token "caf". `n` is the n-gram order, 1 for ROUGE-1; rouge-score rejects 0, which scores 0
/// here. A side too short to hold one n-gram gives precision or recall 0.
pub fn rouge_n(input: &str, reference: &str, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (target_tokens, prediction_tokens) = (Tokens::new(reference), Tokens::new(input));
    let mut vocab = Vocab::default();
    let target = target_tokens.ids(&mut vocab);
    let prediction = prediction_tokens.ids(&mut vocab);
    let vocab_len = vocab.len();

    let target_count = (target.len() + 1).saturating_sub(n);
    let prediction_count = (prediction.len() + 1).saturating_sub(n);
    // `_score_ngrams` sums min(target count, prediction count) over the target's n-grams.
    let intersection = ngram_matches(&prediction, &target, vocab_len, n);
    let precision = intersection as f64 / prediction_count.max(1) as f64;
    let recall = intersection as f64 / target_count.max(1) as f64;
    fmeasure(precision, recall)
}

/// ROUGE-L F-measure of `input` (the prediction) against `reference` (the target), in 0..=1:
/// from the length of the longest common subsequence of the two token sequences.
///
/// Tokenisation is the same as [`rouge_n`]'s. If either side has no token the score is 0.
pub fn rouge_l(input: &str, reference: &str) -> f64 {
    let (target_tokens, prediction_tokens) = (Tokens::new(reference), Tokens::new(input));
    let mut vocab = Vocab::default();
    let target = target_tokens.ids(&mut vocab);
    let prediction = prediction_tokens.ids(&mut vocab);
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_length(&target, &prediction);
    let precision = lcs as f64 / prediction.len() as f64;
    let recall = lcs as f64 / target.len() as f64;
    fmeasure(precision, recall)
}

/// `scoring.fmeasure`: the harmonic mean, computed as `2 * p * r / (p + r)` in that order.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// The tokens of rouge-score's default tokenizer (`tokenize.tokenize` without a stemmer):
/// `text.lower()`, `[^a-z0-9]+` replaced by a space, split on whitespace, and only tokens that
/// match `^[a-z0-9]+$` kept. Put together, the tokens are the maximal runs of ASCII letters and
/// digits in the lowercased text.
///
/// Python lowercases with the full Unicode mapping, and exactly two non-ASCII characters
/// lowercase into ASCII letters: U+212A KELVIN SIGN to "k" (which then joins its neighbours'
/// token) and U+0130 to "i" plus a combining dot (which ends the token). Those two are
/// special-cased (asking `char::to_lowercase` about every non-ASCII character would cost far
/// more); a test checks against Rust's Unicode tables that no other character lowercases into
/// ASCII.
struct Tokens {
    /// The tokens, back to back (ASCII letters and digits only).
    text: Vec<u8>,
    /// Where each token ends in `text`.
    ends: Vec<usize>,
}

impl Tokens {
    fn new(raw: &str) -> Self {
        /// The lowercase of each ASCII letter and digit; 0 for every other byte.
        const ALNUM_LOWER: [u8; 256] = {
            let mut table = [0; 256];
            let mut b = 0;
            while b < 128 {
                let c = b as u8;
                if c.is_ascii_alphanumeric() {
                    table[b] = c.to_ascii_lowercase();
                }
                b += 1;
            }
            table
        };
        // Every byte of `raw` yields at most one byte of `text` (see below), so `text` is filled in
        // place up to `len` and its `get_mut`s never fail; plain locals rather than `Vec::push`
        // keep this loop tight.
        let mut text = vec![0u8; raw.len()];
        let mut len = 0;
        let mut ends = Vec::with_capacity(raw.len() / 4 + 1);
        let mut token_start = 0;
        let bytes = raw.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let alnum = if b.is_ascii() {
                // Most text is ASCII, handled a byte at a time.
                i += 1;
                ALNUM_LOWER[usize::from(b)]
            } else {
                // A non-ASCII character, 2 to 4 bytes, contributes at most one letter.
                let c = raw.get(i..).and_then(|rest| rest.chars().next());
                i += c.map_or(1, char::len_utf8);
                match c {
                    // Python lowercases these two into ASCII (see the doc comment); every other
                    // non-ASCII character lowercases to non-ASCII: a separator.
                    Some('\u{212a}') => b'k',
                    Some('\u{130}') => {
                        // "i" and a combining dot, which ends the token.
                        if let Some(slot) = text.get_mut(len) {
                            *slot = b'i';
                            len += 1;
                        }
                        0
                    }
                    _ => 0,
                }
            };
            if alnum != 0 {
                if let Some(slot) = text.get_mut(len) {
                    *slot = alnum;
                    len += 1;
                }
            } else if token_start < len {
                ends.push(len);
                token_start = len;
            }
        }
        if token_start < len {
            ends.push(len);
        }
        text.truncate(len);
        Self { text, ends }
    }

    /// The tokens' ids in `vocab`.
    fn ids<'a>(&'a self, vocab: &mut Vocab<'a>) -> Vec<u32> {
        vocab.ids(self.iter(), self.ends.len())
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.text[start..end])
    }
}

/// Length of the longest common subsequence: `_lcs_table(...)[-1][-1]`, keeping one row.
fn lcs_length(a: &[u32], b: &[u32]) -> u32 {
    let mut row = vec![0u32; b.len() + 1];
    for &x in a {
        // `diagonal` holds the previous row's value at j - 1 (table[i - 1][j - 1]).
        let mut diagonal = 0;
        for (j, &y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        Tokens::new(text)
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    #[test]
    fn rouge_of_identical_sentences_is_one() {
        let s = "The quick brown fox jumps over the lazy dog";
        for n in 1..=5 {
            assert_eq!(rouge_n(s, s, n), 1.0);
        }
        assert_eq!(rouge_l(s, s), 1.0);
    }

    #[test]
    fn rouge_of_empty_or_tokenless_text_is_zero() {
        assert_eq!(rouge_n("", "cat", 1), 0.0);
        assert_eq!(rouge_n("!!! ???", "!!! ???", 1), 0.0);
        assert_eq!(rouge_l("cat", "..."), 0.0);
        assert_eq!(rouge_n("cat", "cat", 2), 0.0);
    }

    #[test]
    fn rouge_l_uses_lcs() {
        // rouge-score 0.1.2: LCS of "a b c d" and "d c b a" is 1 -> F = 0.25; rouge2 is 0.
        assert_eq!(rouge_l("a b c d", "d c b a"), 0.25);
        assert_eq!(rouge_n("a b c d", "d c b a", 2), 0.0);
        assert_eq!(lcs_length(&[1, 2, 3, 4, 1, 2], &[2, 4, 3, 1, 2, 1]), 4);
    }

    #[test]
    fn rouge_matches_rouge_score_on_hand_checked_pairs() {
        // RougeScorer([key]).score(reference, input)[key].fmeasure, rouge-score 0.1.2.
        let (hyp, reference) = ("the cat sat on the mat", "the cat is on the mat");
        assert_eq!(rouge_n(hyp, reference, 1), 0.833_333_333_333_333_4);
        assert_eq!(rouge_n(hyp, reference, 2), 0.6);
        assert_eq!(rouge_l(hyp, reference), 0.833_333_333_333_333_4);
    }

    #[test]
    fn tokenizer_keeps_only_lowercased_ascii_alphanumerics() {
        assert_eq!(
            words("Straße CAFÉ, x2-Y3"),
            ["stra", "e", "caf", "x2", "y3"]
        );
        // Python's lower(): KELVIN SIGN -> "k" joins the word; U+0130 -> "i" + U+0307 splits it.
        assert_eq!(
            words("KELVIN\u{212a} \u{130}stanbul"),
            ["kelvink", "i", "stanbul"]
        );
        assert_eq!(
            rouge_n("KELVIN\u{212a} \u{130}stanbul", "kelvink i stanbul", 2),
            1.0
        );
    }

    #[test]
    fn only_kelvin_and_dotted_capital_i_lowercase_into_ascii() {
        // `Tokens::new` relies on this, and Python 3.11 agrees:
        // [c for c in map(chr, range(0x110000))
        //  if not c.isascii() and any(x.isascii() for x in c.lower())] == ['\u0130', '\u212a']
        let found: Vec<char> = (0x80..=0x10_ffff)
            .filter_map(char::from_u32)
            .filter(|c| c.to_lowercase().any(|l| l.is_ascii()))
            .collect();
        assert_eq!(found, ['\u{130}', '\u{212a}']);
    }
}
