//! Sentence GLEU, ported from nltk 3.10.4: `sentence_gleu([reference.split()], input.split())`.
//!
//! `nltk/translate/gleu_score.py` with its defaults `min_len=1`, `max_len=4`: every n-gram of
//! order 1..=4 (`nltk.util.everygrams`) is counted on both sides, and the score is
//! `matches / max(hypothesis n-grams, reference n-grams)`, i.e. the smaller of precision and recall.

use std::collections::HashMap;

use super::pytext::py_split;

/// nltk's `max_len` default.
const MAX_ORDER: usize = 4;

/// nltk's sentence GLEU of `input` (the hypothesis) against `reference`, in 0..=1.
///
/// Both texts are split on whitespace exactly like Python's `str.split()`; words are compared
/// case-sensitively and punctuation stays attached. Two empty texts score 0.
pub fn gleu(input: &str, reference: &str) -> f64 {
    // Interned ids make n-grams cheap slices to hash and compare.
    let mut vocab: HashMap<&str, u32> = HashMap::new();
    let hyp = intern(input, &mut vocab);
    let refs = intern(reference, &mut vocab);

    // nltk: tpfp = hypothesis n-grams, tpfn = reference n-grams, n_all = max(tpfp, tpfn).
    let n_all = everygram_count(hyp.len()).max(everygram_count(refs.len()));
    if n_all == 0 {
        return 0.0;
    }

    // tp = sum(|ref_ngrams & hyp_ngrams|): Counter intersection keeps min(count, count) per n-gram,
    // which using up the reference's counts occurrence by occurrence adds up to as well.
    let mut tp: u64 = 0;
    let mut ref_counts: HashMap<&[u32], u32> = HashMap::new();
    for n in 1..=MAX_ORDER.min(hyp.len()).min(refs.len()) {
        ref_counts.clear();
        for gram in refs.windows(n) {
            *ref_counts.entry(gram).or_insert(0) += 1;
        }
        for gram in hyp.windows(n) {
            if let Some(left) = ref_counts.get_mut(gram) {
                if *left > 0 {
                    *left -= 1;
                    tp += 1;
                }
            }
        }
    }
    tp as f64 / n_all as f64
}

/// Python's `str.split()` of `text`, each word replaced by its id in `vocab`.
fn intern<'a>(text: &'a str, vocab: &mut HashMap<&'a str, u32>) -> Vec<u32> {
    py_split(text)
        .map(|word| {
            let next = vocab.len() as u32;
            *vocab.entry(word).or_insert(next)
        })
        .collect()
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
