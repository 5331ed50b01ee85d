//! ROUGE-N and ROUGE-L F-measures, ported from Google's rouge-score 0.1.2.
//!
//! Each is `RougeScorer([key], use_stemmer=False).score(reference, input)[key].fmeasure` for
//! `key` in rouge1..rouge9 or rougeL (`rouge_score/rouge_scorer.py`), with the default tokenizer
//! (`rouge_score/tokenize.py`): Python's `str.lower()`, every run of characters outside `[a-z0-9]`
//! becomes a separator, empty tokens are dropped. Precision, recall and F-measure use the same
//! float operations as `rouge_score/scoring.py`.

use std::collections::HashMap;

/// ROUGE-N F-measure of `input` (the prediction) against `reference` (the target), in 0..=1.
///
/// Only ASCII letters and digits survive tokenisation (after Unicode lowercasing), so "café" is
/// the token "caf". `n` is the n-gram order, 1 for ROUGE-1; rouge-score rejects 0, which scores 0
/// here. A side too short to hold one n-gram gives precision or recall 0.
pub fn rouge_n(input: &str, reference: &str, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let target_text = normalize(reference);
    let prediction_text = normalize(input);
    let mut vocab: HashMap<&str, u32> = HashMap::new();
    let target = intern(&target_text, &mut vocab);
    let prediction = intern(&prediction_text, &mut vocab);

    let target_count = (target.len() + 1).saturating_sub(n);
    let prediction_count = (prediction.len() + 1).saturating_sub(n);

    // `_score_ngrams` sums min(target, prediction) over the target's n-grams; using up the
    // target's counts occurrence by occurrence of the prediction gives the same sum.
    let mut intersection: u64 = 0;
    if target_count > 0 && prediction_count > 0 {
        let mut target_ngrams: HashMap<&[u32], u32> = HashMap::with_capacity(target_count);
        for gram in target.windows(n) {
            *target_ngrams.entry(gram).or_insert(0) += 1;
        }
        for gram in prediction.windows(n) {
            if let Some(left) = target_ngrams.get_mut(gram) {
                if *left > 0 {
                    *left -= 1;
                    intersection += 1;
                }
            }
        }
    }
    let precision = intersection as f64 / prediction_count.max(1) as f64;
    let recall = intersection as f64 / target_count.max(1) as f64;
    fmeasure(precision, recall)
}

/// ROUGE-L F-measure of `input` (the prediction) against `reference` (the target), in 0..=1:
/// from the length of the longest common subsequence of the two token sequences.
///
/// Tokenisation is the same as [`rouge_n`]'s. If either side has no token the score is 0.
pub fn rouge_l(input: &str, reference: &str) -> f64 {
    let target_text = normalize(reference);
    let prediction_text = normalize(input);
    let mut vocab: HashMap<&str, u32> = HashMap::new();
    let target = intern(&target_text, &mut vocab);
    let prediction = intern(&prediction_text, &mut vocab);
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

/// rouge-score's `tokenize` up to the split: `text.lower()`, then `[^a-z0-9]+` replaced by spaces.
///
/// Python lowercases with the full Unicode mapping, and two non-ASCII characters lowercase into
/// ASCII letters: U+212A KELVIN SIGN to "k" (which then joins its neighbours' token) and U+0130
/// to "i" plus a combining dot (which ends the token). Rust's `char::to_lowercase` uses the same
/// mapping, so it is consulted for every non-ASCII character rather than hard-coding those two.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            });
        } else {
            for lower in c.to_lowercase() {
                out.push(if lower.is_ascii_alphanumeric() {
                    lower
                } else {
                    ' '
                });
            }
        }
    }
    out
}

/// The tokens of a [`normalize`]d text (its non-empty space-separated runs, which all pass
/// rouge-score's `^[a-z0-9]+$` check), each replaced by its id in `vocab`.
fn intern<'a>(text: &'a str, vocab: &mut HashMap<&'a str, u32>) -> Vec<u32> {
    text.split(' ')
        .filter(|token| !token.is_empty())
        .map(|token| {
            let next = vocab.len() as u32;
            *vocab.entry(token).or_insert(next)
        })
        .collect()
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

    fn tokens(text: &str) -> Vec<String> {
        normalize(text)
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
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
            tokens("Straße CAFÉ, x2-Y3"),
            ["stra", "e", "caf", "x2", "y3"]
        );
        // Python's lower(): KELVIN SIGN -> "k" joins the word; U+0130 -> "i" + U+0307 splits it.
        assert_eq!(
            tokens("KELVIN\u{212a} \u{130}stanbul"),
            ["kelvink", "i", "stanbul"]
        );
        assert_eq!(
            rouge_n("KELVIN\u{212a} \u{130}stanbul", "kelvink i stanbul", 2),
            1.0
        );
    }

    #[test]
    fn only_kelvin_and_dotted_capital_i_lowercase_into_ascii() {
        // Python 3.11: [c for c in map(chr, range(0x110000)) if not c.isascii()
        //               and any(x.isascii() for x in c.lower())] == ['\u0130', '\u212a'].
        let found: Vec<char> = (0x80..=0x10_ffff)
            .filter_map(char::from_u32)
            .filter(|c| c.to_lowercase().any(|l| l.is_ascii()))
            .collect();
        assert_eq!(found, ['\u{130}', '\u{212a}']);
    }
}
