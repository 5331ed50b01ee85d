//! Sentence GLEU, ported from nltk 3.10.4: `sentence_gleu([reference.split()], input.split())`.
//!
//! `nltk/translate/gleu_score.py` with its defaults `min_len=1`, `max_len=4`: every n-gram of
//! order 1..=4 (`nltk.util.everygrams`) is counted on both sides, and the score is
//! `matches / max(hypothesis n-grams, reference n-grams)`: the smaller of precision and recall.

use super::ngram::{clipped_matches, expected_words, Vocab};
use super::pytext::py_split;

/// nltk's `max_len` default.
const MAX_ORDER: usize = 4;

/// nltk's sentence GLEU of `input` (the hypothesis) against `reference`, in 0..=1.
///
/// Both texts are split on whitespace exactly like Python's `str.split()`; words are compared
/// case-sensitively and punctuation stays attached. Two empty texts score 0.
pub fn gleu(input: &str, reference: &str) -> f64 {
    let mut vocab = Vocab::default();
    let hyp = vocab.ids(py_split(input).map(str::as_bytes), expected_words(input));
    let refs = vocab.ids(
        py_split(reference).map(str::as_bytes),
        expected_words(reference),
    );
    let vocab_len = vocab.len();

    // nltk: tpfp = hypothesis n-grams, tpfn = reference n-grams, n_all = max(tpfp, tpfn).
    let n_all = everygram_count(hyp.len()).max(everygram_count(refs.len()));
    if n_all == 0 {
        return 0.0;
    }
    // tp = sum((ref_ngrams & hyp_ngrams).values()), over all orders at once.
    let mut matches = [0u64; MAX_ORDER];
    clipped_matches(&hyp, &refs, vocab_len, &mut matches);
    let tp: u64 = matches.iter().sum();
    tp as f64 / n_all as f64
}

/// How many n-grams of orders 1..=4 `everygrams` yields for a sequence of `len` tokens.
fn everygram_count(len: usize) -> u64 {
    (1..=MAX_ORDER.min(len)).map(|n| (len - n + 1) as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gleu_of_identical_sentences_is_one() {
        assert_eq!(
            gleu("the cat sat on the mat", "the cat sat on the mat"),
            1.0
        );
    }

    #[test]
    fn gleu_of_empty_texts_is_zero() {
        assert_eq!(gleu("", ""), 0.0);
        assert_eq!(gleu(" \t", "cat"), 0.0);
        assert_eq!(gleu("cat", ""), 0.0);
    }

    #[test]
    fn gleu_divides_by_the_larger_n_gram_count() {
        // nltk's docstring example: the the the ... against "the cat sat on the mat" -> 1/11.
        // Hypothesis: 7 tokens, 22 n-grams; reference: 6 tokens, 18 n-grams; 2 unigram matches.
        let got = gleu("the the the the the the the", "the cat sat on the mat");
        assert!((got - 2.0 / 22.0).abs() < 1e-15, "{got}");
    }

    #[test]
    fn gleu_matches_nltk_on_hand_checked_pairs() {
        // Values from nltk 3.10.4: sentence_gleu([ref.split()], hyp.split()).
        let cases = [
            ("the cat sat on the mat", "the cat is on the mat", 0.5),
            ("Hello world", "hello world", 1.0 / 3.0),
            ("a\u{a0}b\u{1c}c", "a b c", 1.0),
        ];
        for (hyp, reference, expected) in cases {
            let got = gleu(hyp, reference);
            assert!(
                (got - expected).abs() < 1e-15,
                "{hyp:?}: {got} != {expected}"
            );
        }
    }
}
