//! Sentence BLEU, ported from sacrebleu 2.6.0: `sentence_bleu(input, [reference]).score / 100`.
//!
//! That is `BLEU(effective_order=True)` with every other default: the `13a` tokenizer
//! (`sacrebleu/tokenizers/tokenizer_13a.py` and `tokenizer_re.py`), no lowercasing, n-grams of
//! order 1..=4 (`sacrebleu/metrics/helpers.py`), and `BLEU.compute_bleu` with the `exp`
//! smoothing (NIST mteval-v13a's) in `sacrebleu/metrics/bleu.py`. The arithmetic follows Python's
//! operation order (percentages, then logs summed left to right, then `exp`), so results agree
//! with sacrebleu to the last bit or two, far inside 1e-9.

use super::ngram::{clipped_matches, expected_words, Vocab};
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

    let mut vocab = Vocab::default();
    let hyp = vocab.ids(
        py_split(&hyp_text).map(str::as_bytes),
        expected_words(&hyp_text),
    );
    let refs = vocab.ids(
        py_split(&ref_text).map(str::as_bytes),
        expected_words(&ref_text),
    );
    let vocab_len = vocab.len();

    let mut correct = [0u64; MAX_ORDER];
    clipped_matches(&hyp, &refs, vocab_len, &mut correct);
    // The hypothesis has len - n + 1 n-grams of order n = i + 1.
    let total: [u64; MAX_ORDER] = std::array::from_fn(|i| hyp.len().saturating_sub(i) as u64);
    compute_bleu(&correct, &total, hyp.len(), refs.len()) / 100.0
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
///
/// Every character the regexes look for is ASCII, so they are run as byte scans that copy the text
/// between matches as whole `&str` slices. Around a multi-byte character the scan sees its first or
/// last byte instead of the character; both are non-digits, like the character, so every match
/// and replacement comes out as Python's.
fn tokenize_13a(sent: &str) -> String {
    let line = sent.trim_end_matches(is_py_space);
    // The language-independent part: chained `str.replace`s, in sacrebleu's order (so
    // "&amp;quot;" becomes "&quot;", never '"'). The single-character checks only skip work.
    let mut line = line.to_owned();
    if line.contains('<') {
        line = replace_if_found(line, "<skipped>", "");
    }
    if line.contains('\n') {
        line = replace_if_found(line, "-\n", "");
        line = line.replace('\n', " ");
    }
    if line.contains('&') {
        line = replace_if_found(line, "&quot;", "\"");
        line = replace_if_found(line, "&amp;", "&");
        line = replace_if_found(line, "&lt;", "<");
        line = replace_if_found(line, "&gt;", ">");
    }
    let mut line = split_punctuation(&line);
    // The remaining rules only act at a period, comma or dash.
    if line.bytes().any(|b| b == b'.' || b == b',') {
        line = split_period_comma_after_non_digit(&line);
        line = split_period_comma_before_non_digit(&line);
    }
    if line.as_bytes().contains(&b'-') {
        line = split_dash_after_digit(&line);
    }
    line
}

/// `text.replace(from, to)`, without copying when `from` does not occur.
fn replace_if_found(text: String, from: &str, to: &str) -> String {
    if text.contains(from) {
        text.replace(from, to)
    } else {
        text
    }
}

/// `TokenizerRegexp` is applied to `f' {line} '` and starts with
/// `re.sub(r'([\{-\~\[-\` -\&\(-\+\:-\@\/])', r' \1 ', line)`: every ASCII symbol except
/// `'`, `,`, `-` and `.` gets a space on both sides.
///
/// The class also holds the space itself, which it only turns into three; since spaces matter
/// to the later rules only as non-digits and to `split()` only as separators, spaces (the padding
/// included) are left single here.
fn split_punctuation(line: &str) -> String {
    /// The regex's character class less the space, as a byte table.
    const SPACED_SYMBOL: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = matches!(
                b as u8,
                b'{'..=b'~' | b'['..=b'`' | b'!'..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/'
            );
            b += 1;
        }
        table
    };
    let mut out = String::with_capacity(line.len() + line.len() / 2 + 2);
    out.push(' ');
    let mut copied = 0;
    for (i, &b) in line.as_bytes().iter().enumerate() {
        if SPACED_SYMBOL[usize::from(b)] {
            // `i` and `i + 1` are character boundaries: `b` is an ASCII character.
            out.push_str(&line[copied..i]);
            out.push(' ');
            out.push(char::from(b));
            out.push(' ');
            copied = i + 1;
        }
    }
    out.push_str(&line[copied..]);
    out.push(' ');
    out
}

/// `re.sub(r'([^0-9])([\.,])', r'\1 \2 ', line)`. Matches are two characters long and do not
/// overlap, so a character taken as `\2` cannot also be the `\1` of the next match; in "x,.5"
/// the period is left alone. A left-to-right scan that skips past each match does the same.
fn split_period_comma_after_non_digit(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len() + line.len() / 2);
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        let next = bytes[i + 1];
        if matches!(next, b'.' | b',') && !bytes[i].is_ascii_digit() {
            // `i + 1` holds an ASCII character, so `i + 1` and `i + 2` are boundaries.
            out.push_str(&line[copied..=i]);
            out.push(' ');
            out.push(char::from(next));
            out.push(' ');
            copied = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&line[copied..]);
    out
}

/// `re.sub(r'([\.,])([^0-9])', r' \1 \2', line)`, with the same non-overlapping scan: the
/// character after a split period or comma is not itself looked at (in "..b" only the first
/// period is split off here).
fn split_period_comma_before_non_digit(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len() + line.len() / 2);
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        let b = bytes[i];
        if matches!(b, b'.' | b',') && !bytes[i + 1].is_ascii_digit() {
            // `i` holds an ASCII character, so `i` and `i + 1` are boundaries; the character
            // after it is copied unchanged later.
            out.push_str(&line[copied..i]);
            out.push(' ');
            out.push(char::from(b));
            out.push(' ');
            copied = i + 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&line[copied..]);
    out
}

/// `re.sub(r'([0-9])(-)', r'\1 \2 ', line)`: a dash after a digit stands alone.
fn split_dash_after_digit(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len() + line.len() / 4);
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i].is_ascii_digit() && bytes[i + 1] == b'-' {
            // Both bytes are ASCII characters, so the slice ends on a boundary.
            out.push_str(&line[copied..=i]);
            out.push_str(" - ");
            copied = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&line[copied..]);
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
