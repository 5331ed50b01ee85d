//! Sentence BLEU, ported from sacrebleu 2.6.0: `sentence_bleu(input, [reference]).score / 100`.
//!
//! That is `BLEU(effective_order=True)` with every other default: the `13a` tokenizer
//! (`sacrebleu/tokenizers/tokenizer_13a.py` and `tokenizer_re.py`), no lowercasing, n-grams of
//! order 1..=4 (`sacrebleu/metrics/helpers.py`), and `BLEU.compute_bleu` with the `exp`
//! smoothing (NIST mteval-v13a's) in `sacrebleu/metrics/bleu.py`. The arithmetic follows Python's
//! operation order (percentages, then logs summed left to right, then `exp`), so results agree
//! with sacrebleu to the last bit or two, far inside 1e-9.

use std::collections::HashMap;

use super::pytext::{is_py_space, py_split};

/// sacrebleu's `MAX_NGRAM_ORDER`.
const MAX_ORDER: usize = 4;

/// sacrebleu's BLEU of `input` (the hypothesis) against the single `reference`, in 0..=1.
///
/// Texts are tokenised with sacrebleu's `13a` tokenizer, case is kept, and orders above the
/// longest one the hypothesis has are dropped (`effective_order`), so short sentences still score.
/// Orders with no match are smoothed by halving (`exp`); a pair without a single matching word
/// scores 0.
pub fn bleu(input: &str, reference: &str) -> f64 {
    let hyp_text = tokenize_13a(input);
    let ref_text = tokenize_13a(reference);

    // Comparing interned ids is cheaper than comparing strings, and lets n-grams be slices of ids.
    let mut vocab: HashMap<&str, u32> = HashMap::new();
    let hyp = intern(&hyp_text, &mut vocab);
    let refs = intern(&ref_text, &mut vocab);

    let mut correct = [0u64; MAX_ORDER];
    let mut total = [0u64; MAX_ORDER];
    let mut ref_counts: HashMap<&[u32], u32> = HashMap::new();
    for n in 1..=MAX_ORDER.min(hyp.len()) {
        total[n - 1] = (hyp.len() - n + 1) as u64;
        if refs.len() < n {
            continue;
        }
        ref_counts.clear();
        for gram in refs.windows(n) {
            *ref_counts.entry(gram).or_insert(0) += 1;
        }
        // Using up the reference's count occurrence by occurrence sums min(hyp, ref) per n-gram:
        // sacrebleu's clipped counts.
        for gram in hyp.windows(n) {
            if let Some(left) = ref_counts.get_mut(gram) {
                if *left > 0 {
                    *left -= 1;
                    correct[n - 1] += 1;
                }
            }
        }
    }
    compute_bleu(&correct, &total, hyp.len(), refs.len()) / 100.0
}

/// Python's `str.split()` of a tokenised line, each word replaced by its id in `vocab`.
fn intern<'a>(text: &'a str, vocab: &mut HashMap<&'a str, u32>) -> Vec<u32> {
    py_split(text)
        .map(|word| {
            let next = vocab.len() as u32;
            *vocab.entry(word).or_insert(next)
        })
        .collect()
}

/// `BLEU.compute_bleu` with `smooth_method='exp'` and `effective_order=True`: the score in 0..=100.
fn compute_bleu(
    correct: &[u64; MAX_ORDER],
    total: &[u64; MAX_ORDER],
    sys_len: usize,
    ref_len: usize,
) -> f64 {
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    // sacrebleu stops early when nothing matches at any order (its issue #141).
    if correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for n in 1..=MAX_ORDER {
        if total[n - 1] == 0 {
            break;
        }
        eff_order = n;
        precisions[n - 1] = if correct[n - 1] == 0 {
            smooth_mteval *= 2.0;
            100.0 / (smooth_mteval * total[n - 1] as f64)
        } else {
            100.0 * correct[n - 1] as f64 / total[n - 1] as f64
        };
    }
    // Python's `sum` adds left to right from 0; `my_log` floors log(0), which the smoothing above
    // makes unreachable, but it is kept so the formula reads like sacrebleu's.
    let log_sum = precisions[..eff_order]
        .iter()
        .fold(0.0f64, |acc, &p| acc + my_log(p));
    bp * (log_sum / eff_order as f64).exp()
}

/// sacrebleu's `utils.my_log`: the natural log, with log(0) floored to -9999999999.
fn my_log(num: f64) -> f64 {
    if num == 0.0 {
        -9_999_999_999.0
    } else {
        num.ln()
    }
}

/// sacrebleu's `Tokenizer13a` applied the way `BLEU._preprocess_segment` does, to `sent.rstrip()`.
///
/// The result is a line whose Python `split()` gives the tokens; runs of spaces are left in, since
/// the caller splits anyway (sacrebleu joins with single spaces and splits again).
fn tokenize_13a(sent: &str) -> String {
    let line = sent.trim_end_matches(is_py_space);
    // The language-independent part: chained `str.replace`s, in sacrebleu's order (so
    // "&amp;quot;" becomes "&quot;", not '"').
    let mut line = line.replace("<skipped>", "");
    if line.contains("-\n") {
        line = line.replace("-\n", "");
    }
    if line.contains('\n') {
        line = line.replace('\n', " ");
    }
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // `TokenizerRegexp` runs on f' {line} '; the padding decides whether a leading or trailing
    // period is preceded or followed by something, so it is kept.
    let padded = format!(" {line} ");
    let spaced = split_punctuation(&padded);
    let spaced = split_period_comma_after_non_digit(&spaced);
    let spaced = split_period_comma_before_non_digit(&spaced);
    split_dash_after_digit(&spaced)
}

/// `re.sub(r'([\{-\~\[-\` -\&\(-\+\:-\@\/])', r' \1 ', line)`: every ASCII symbol except
/// `'`, `,`, `-` and `.` (space included, harmlessly) gets a space on both sides.
fn split_punctuation(line: &str) -> String {
    let mut out = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// `re.sub(r'([^0-9])([\.,])', r'\1 \2 ', line)`. Matches are two characters long and do not
/// overlap, so a character consumed as `\2` cannot also be the `\1` of the next match ("a..b"
/// splits only its first period here); a left-to-right scan reproduces that exactly.
fn split_period_comma_after_non_digit(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 2);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if !c.is_ascii_digit() {
            if let Some(&next @ ('.' | ',')) = chars.peek() {
                chars.next();
                out.push(' ');
                out.push(next);
                out.push(' ');
            }
        }
    }
    out
}

/// `re.sub(r'([\.,])([^0-9])', r' \1 \2', line)`, with the same non-overlapping scan.
fn split_period_comma_before_non_digit(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 2);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if matches!(c, '.' | ',') {
            if let Some(&next) = chars.peek() {
                if !next.is_ascii_digit() {
                    chars.next();
                    out.push(' ');
                    out.push(c);
                    out.push(' ');
                    out.push(next);
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// `re.sub(r'([0-9])(-)', r'\1 \2 ', line)`: a dash after a digit stands alone.
fn split_dash_after_digit(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 4);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c.is_ascii_digit() && chars.peek() == Some(&'-') {
            chars.next();
            out.push_str(" - ");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        py_split(&tokenize_13a(text)).map(str::to_owned).collect()
    }

    #[test]
    fn bleu_of_identical_sentences_is_one() {
        let s = "The quick brown fox jumps over the lazy dog.";
        assert!((bleu(s, s) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bleu_without_any_matching_word_is_zero() {
        assert_eq!(bleu("alpha beta", "gamma delta"), 0.0);
        assert_eq!(bleu("", "gamma delta"), 0.0);
        assert_eq!(bleu("alpha", ""), 0.0);
        assert_eq!(bleu("", ""), 0.0);
    }

    #[test]
    fn bleu_matches_sacrebleu_on_hand_checked_pairs() {
        // Values from sacrebleu 2.6.0: sentence_bleu(hyp, [ref]).score / 100.
        let cases = [
            (
                "the cat sat on the mat",
                "the cat is on the mat",
                0.379_917_842_825_796_3,
            ),
            ("hello", "hello world", 0.367_879_441_171_442_5),
            (
                "$1,234.56 on 2024-01-02.",
                "$1,234.56 on 2024-01-03.",
                0.750_623_853_750_339_6,
            ),
        ];
        for (hyp, reference, expected) in cases {
            let got = bleu(hyp, reference);
            assert!(
                (got - expected).abs() < 1e-12,
                "{hyp:?}: {got} != {expected}"
            );
        }
    }

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokens("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(
            tokens("It costs $1,234.56."),
            ["It", "costs", "$", "1,234.56", "."]
        );
        assert_eq!(tokens("don't e-mail"), ["don't", "e-mail"]);
        assert_eq!(tokens("2024-01-02"), ["2024", "-", "01", "-", "02"]);
    }

    #[test]
    fn tokenizer_13a_unescapes_entities_once_and_joins_hyphenated_lines() {
        // "&amp;lt;" becomes "&lt;" and then "<"; "&amp;quot;" stays "&quot;" (quot is done first).
        assert_eq!(tokens("&quot;a&quot; &amp;lt;"), ["\"", "a", "\"", "<"]);
        assert_eq!(tokens("&amp;quot;"), ["&", "quot", ";"]);
        assert_eq!(tokens("co-\noperate\nnow"), ["cooperate", "now"]);
        assert_eq!(tokens("x<skipped>y"), ["xy"]);
    }

    #[test]
    fn tokenizer_13a_scans_periods_without_overlap() {
        // In "x,.5" the non-digit rule's match "x," uses up the comma, so it cannot also be the
        // non-digit before the period, and before the digit 5 the period stays attached
        // (Python: ['x', ',', '.5']).
        assert_eq!(tokens("x,.5"), ["x", ",", ".5"]);
        assert_eq!(tokens("a..b"), ["a", ".", ".", "b"]);
    }
}
