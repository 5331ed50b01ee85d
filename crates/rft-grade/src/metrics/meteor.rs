//! METEOR as nltk 3.10.4 computes it: `nltk.translate.meteor_score.meteor_score([reference.split()],
//! input.split())` with its defaults (`alpha=0.9`, `beta=3.0`, `gamma=0.5`, `str.lower` as the
//! preprocessing, `PorterStemmer()` and the WordNet 3.0 corpus reader), ported line by line.
//!
//! nltk's alignment, which this reproduces including its quirks:
//! 1. Words are lowercased (`str.lower`), then matched in three stages, each on what the previous
//!    one left unmatched: exact, Porter stem, WordNet synonym.
//! 2. Each stage walks the hypothesis from its last word to its first, and pairs a word with the
//!    *last* still-free reference position holding an equal word.
//! 3. The stem stage hands its *stemmed* words on, so the synonym stage looks up the synonyms of
//!    stems (`feline` is looked up as `felin` and matches nothing) and compares them with stemmed
//!    reference words. Synonyms are the lemma names without `_` of all of the word's synsets, plus
//!    the word itself; among the free reference positions holding one of them the last is taken.
//! 4. The score is `(1 - gamma * (chunks / matches) ** beta) * fmean` with
//!    `fmean = P * R / (alpha * P + (1 - alpha) * R)`, and 0 when nothing matches or a side is
//!    empty (nltk's `ZeroDivisionError` branch). With one reference the maximum over references is
//!    that reference's score.

use std::collections::HashMap;

use super::porter::{py_lower, stem};
use super::pytext::py_split;
use super::WordNet;

const ALPHA: f64 = 0.9;
const BETA: f64 = 3.0;
const GAMMA: f64 = 0.5;

/// One enumerated word: its position in the sentence and its (lowercased, maybe stemmed) text.
type Enumerated = (usize, String);

/// nltk's `meteor_score([reference.split()], input.split())`: METEOR of `input` (the hypothesis)
/// against `reference`, aligning words exactly, by Porter stem and by WordNet synonymy.
///
/// Returns a value in `[0, 1)`; 0 when either side has no words or nothing aligns.
pub fn meteor(input: &str, reference: &str, wordnet: &WordNet) -> f64 {
    let hypothesis: Vec<Enumerated> = enumerate_lowercased(input);
    let reference: Vec<Enumerated> = enumerate_lowercased(reference);
    let translation_length = hypothesis.len();
    let reference_length = reference.len();
    let matches = align_words(hypothesis, reference, wordnet);
    if matches.is_empty() || translation_length == 0 || reference_length == 0 {
        // nltk divides by these three counts and returns 0.0 on ZeroDivisionError.
        return 0.0;
    }
    let matches_count = matches.len() as f64;
    let precision = matches_count / translation_length as f64;
    let recall = matches_count / reference_length as f64;
    let fmean = (precision * recall) / (ALPHA * precision + (1.0 - ALPHA) * recall);
    let chunk_count = count_chunks(&matches) as f64;
    let frag_frac = chunk_count / matches_count;
    let penalty = GAMMA * frag_frac.powf(BETA);
    (1.0 - penalty) * fmean
}

/// `_generate_enums`: `list(enumerate(map(str.lower, words)))`.
fn enumerate_lowercased(text: &str) -> Vec<Enumerated> {
    py_split(text)
        .map(|word| py_lower(word).into_owned())
        .enumerate()
        .collect()
}

/// `_enum_align_words`: exact, then stem, then synonym matches, sorted by hypothesis position.
fn align_words(
    hypothesis: Vec<Enumerated>,
    reference: Vec<Enumerated>,
    wordnet: &WordNet,
) -> Vec<(usize, usize)> {
    let (mut matches, hypothesis, reference) = match_enums(hypothesis, reference);
    let stemmed = |list: Vec<Enumerated>| -> Vec<Enumerated> {
        list.into_iter().map(|(i, word)| (i, stem(&word))).collect()
    };
    let (stem_matches, hypothesis, reference) =
        match_enums(stemmed(hypothesis), stemmed(reference));
    matches.extend(stem_matches);
    matches.extend(wordnet_synonym_matches(&hypothesis, &reference, wordnet));
    // Hypothesis positions are unique across stages, so the order of equal keys never matters.
    matches.sort_by_key(|&(hyp, _)| hyp);
    matches
}

/// Reference word → its indices in the (unmatched) reference list, in order; nltk's
/// `ref_positions`, from which matching pops the last.
fn reference_positions(reference: &[Enumerated]) -> HashMap<&str, Vec<usize>> {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, word)) in reference.iter().enumerate() {
        positions.entry(word.as_str()).or_default().push(j);
    }
    positions
}

/// The words of `list` whose index (in `list`) is not in `matched`.
fn unmatched(list: Vec<Enumerated>, matched: &[bool]) -> Vec<Enumerated> {
    list.into_iter()
        .zip(matched)
        .filter(|(_, &m)| !m)
        .map(|(pair, _)| pair)
        .collect()
}

/// `_match_enums`: pairs equal words, hypothesis from its end, each with the last free reference
/// position; returns the matches and what is left of both lists.
fn match_enums(
    hypothesis: Vec<Enumerated>,
    reference: Vec<Enumerated>,
) -> (Vec<(usize, usize)>, Vec<Enumerated>, Vec<Enumerated>) {
    let mut word_match = Vec::new();
    let mut matched_hyp = vec![false; hypothesis.len()];
    let mut matched_ref = vec![false; reference.len()];
    {
        let mut positions = reference_positions(&reference);
        for (i, (hyp_pos, word)) in hypothesis.iter().enumerate().rev() {
            if let Some(j) = positions.get_mut(word.as_str()).and_then(Vec::pop) {
                matched_hyp[i] = true;
                matched_ref[j] = true;
                word_match.push((*hyp_pos, reference[j].0));
            }
        }
    }
    (
        word_match,
        unmatched(hypothesis, &matched_hyp),
        unmatched(reference, &matched_ref),
    )
}

/// `_enum_wordnetsyn_match`: pairs a hypothesis word with the last free reference position whose
/// word is the hypothesis word or one of its WordNet synonyms (lemma names without `_`).
fn wordnet_synonym_matches(
    hypothesis: &[Enumerated],
    reference: &[Enumerated],
    wordnet: &WordNet,
) -> Vec<(usize, usize)> {
    let mut word_match = Vec::new();
    if reference.is_empty() {
        // Nothing can match; skip the WordNet lookups.
        return word_match;
    }
    let mut positions = reference_positions(reference);
    for (hyp_pos, word) in hypothesis.iter().rev() {
        let synonyms = wordnet.synset_lemma_names(word);
        let candidates = synonyms
            .into_iter()
            .filter(|name| !name.contains('_'))
            .chain(std::iter::once(word.as_str()));
        // nltk iterates a set, but the best position is a strict maximum over distinct
        // reference positions, hence unique, so the iteration order does not matter.
        let mut best: Option<(usize, &str)> = None;
        for candidate in candidates {
            if let Some(&j) = positions.get(candidate).and_then(|p| p.last()) {
                if best.is_none_or(|(best_j, _)| j > best_j) {
                    best = Some((j, candidate));
                }
            }
        }
        if let Some((best_j, best_word)) = best {
            if let Some(list) = positions.get_mut(best_word) {
                list.pop();
            }
            word_match.push((*hyp_pos, reference[best_j].0));
        }
    }
    word_match
}

/// `_count_chunks`: the number of runs of matches adjacent in both sentences.
fn count_chunks(matches: &[(usize, usize)]) -> usize {
    1 + matches
        .windows(2)
        .filter(|pair| !(pair[1].0 == pair[0].0 + 1 && pair[1].1 == pair[0].1 + 1))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordnet() -> &'static WordNet {
        WordNet::shared().expect("WordNet 3.0 is installed (apt-get install wordnet-base)")
    }

    fn score(input: &str, reference: &str) -> f64 {
        meteor(input, reference, wordnet())
    }

    #[test]
    fn meteor_of_feline_example() {
        assert_eq!(
            score("a feline sat on the rug", "the cat sat on the mat"),
            0.49074074074074076
        );
    }

    #[test]
    fn meteor_of_nltk_docstring_example() {
        let hypothesis = "It is a guide to action which ensures that the military always obeys \
                          the commands of the party";
        let reference = "It is a guide to action that ensures that the military will forever \
                         heed Party commands";
        assert!((score(hypothesis, reference) - 0.6944).abs() < 5e-5);
    }

    #[test]
    fn meteor_is_zero_for_empty_sides_or_no_match() {
        assert_eq!(score("", ""), 0.0);
        assert_eq!(score("", "hello"), 0.0);
        assert_eq!(score("hello", " "), 0.0);
        assert_eq!(score("non matching hypothesis", "this is a cat"), 0.0);
    }

    #[test]
    fn meteor_lowercases_and_stems() {
        assert_eq!(score("Hello", "hello"), 0.5);
        // "running" and "runs" share the stem "run".
        assert_eq!(score("running", "runs"), 0.5);
    }

    #[test]
    fn meteor_matches_wordnet_synonyms() {
        // "auto" is a lemma of car.n.01.
        assert_eq!(score("car", "auto"), 0.5);
        assert_eq!(score("car", "banana"), 0.0);
        // So is "automobile", but the synonym stage compares against the reference's Porter
        // stems, and "automobile" stems to "automobil" (nltk gives 0.0 too).
        assert_eq!(score("car", "automobile"), 0.0);
    }

    #[test]
    fn chunks_count_runs_adjacent_on_both_sides() {
        assert_eq!(count_chunks(&[]), 1);
        assert_eq!(count_chunks(&[(0, 0), (1, 1), (2, 2)]), 1);
        assert_eq!(count_chunks(&[(0, 1), (1, 0)]), 2);
        assert_eq!(count_chunks(&[(0, 0), (1, 1), (3, 2), (4, 3)]), 2);
    }
}

// SCRATCH-BEGIN (throwaway parity harness; remove before commit)
#[cfg(test)]
mod scratch {
    use super::*;

    #[test]
    #[ignore]
    fn scratch_dump() {
        let mode = std::env::var("SCRATCH_MODE").unwrap();
        let input = std::fs::read_to_string(std::env::var("SCRATCH_IN").unwrap()).unwrap();
        let t0 = std::time::Instant::now();
        let wn = WordNet::shared().unwrap();
        eprintln!("SCRATCH load {:?}", t0.elapsed());
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            let w = WordNet::load(std::path::Path::new("/usr/share/wordnet")).unwrap();
            eprintln!("SCRATCH reload {:?} {:?}", t0.elapsed(), w);
        }
        let mut out = String::new();
        let t = std::time::Instant::now();
        for line in input.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let res = match mode.as_str() {
                "stem" => serde_json::json!(stem(v.as_str().unwrap())),
                "syn" => serde_json::json!(wn.synset_lemma_names(v.as_str().unwrap())),
                "lower" => serde_json::json!(py_lower(v.as_str().unwrap())),
                _ => {
                    let a = v.as_array().unwrap();
                    serde_json::json!(meteor(a[0].as_str().unwrap(), a[1].as_str().unwrap(), wn))
                }
            };
            out.push_str(&res.to_string());
            out.push('\n');
        }
        eprintln!("SCRATCH elapsed {:?}", t.elapsed());
        std::fs::write(std::env::var("SCRATCH_OUT").unwrap(), out).unwrap();
    }
}
// SCRATCH-END
