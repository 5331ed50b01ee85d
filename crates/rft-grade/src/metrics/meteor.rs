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
//!
//! The data structures differ where that cannot change a result (sorted groups instead of
//! dictionaries of position lists; the synonym lookup from whichever side is smaller), and Porter
//! stems and WordNet synonyms are remembered per thread, so that grading a corpus in parallel
//! looks each distinct word up about once per thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::ops::Deref;
use std::rc::Rc;

use super::porter::{py_lower, stem};
use super::pytext::py_split;
use super::wordnet::FxHasher;
use super::WordNet;

const ALPHA: f64 = 0.9;
const BETA: f64 = 3.0;
const GAMMA: f64 = 0.5;

/// How many stems a thread remembers before starting afresh.
const STEM_CACHE_WORDS: usize = 16_384;

/// One enumerated word: its position in the sentence and its (lowercased, maybe stemmed) text.
type Enumerated<W> = (usize, W);

/// nltk's `meteor_score([reference.split()], input.split())`: METEOR of `input` (the hypothesis)
/// against `reference`, aligning words exactly, by Porter stem and by WordNet synonymy.
///
/// Returns a value in `[0, 1)`; 0 when either side has no words or nothing aligns.
pub fn meteor(input: &str, reference: &str, wordnet: &WordNet) -> f64 {
    let hypothesis = enumerate_lowercased(input);
    let reference = enumerate_lowercased(reference);
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
fn enumerate_lowercased(text: &str) -> Vec<Enumerated<std::borrow::Cow<'_, str>>> {
    py_split(text).map(py_lower).enumerate().collect()
}

/// `_enum_align_words`: exact, then stem, then synonym matches, sorted by hypothesis position.
fn align_words<W: Deref<Target = str>>(
    hypothesis: Vec<Enumerated<W>>,
    reference: Vec<Enumerated<W>>,
    wordnet: &WordNet,
) -> Vec<(usize, usize)> {
    let (mut matches, hypothesis, reference) = match_enums(hypothesis, reference);
    let stemmed = |list: Vec<Enumerated<W>>| -> Vec<Enumerated<Rc<str>>> {
        list.into_iter()
            .map(|(i, word)| (i, cached_stem(&word)))
            .collect()
    };
    let (stem_matches, hypothesis, reference) =
        match_enums(stemmed(hypothesis), stemmed(reference));
    matches.extend(stem_matches);
    matches.extend(wordnet_synonym_matches(&hypothesis, &reference, wordnet));
    // Hypothesis positions are unique across stages, so the order of equal keys never matters.
    matches.sort_by_key(|&(hyp, _)| hyp);
    matches
}

/// `PorterStemmer().stem(word)`, remembered per thread: words recur across a corpus, and
/// stemming is a good part of the work.
fn cached_stem(word: &str) -> Rc<str> {
    thread_local! {
        static STEMS: RefCell<HashMap<Box<str>, Rc<str>, BuildHasherDefault<FxHasher>>> =
            RefCell::default();
    }
    STEMS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(stemmed) = cache.get(word) {
            return Rc::clone(stemmed);
        }
        let stemmed: Rc<str> = stem(word).into();
        if cache.len() >= STEM_CACHE_WORDS {
            cache.clear();
        }
        cache.insert(word.into(), Rc::clone(&stemmed));
        stemmed
    })
}

/// nltk's `ref_positions`: for each distinct reference word, its indices in the reference list
/// in increasing order, from which matching pops the last. Kept as one list of indices sorted
/// by (word, index), cut into groups, each a stack whose top moves down as it is popped.
struct RefPositions<'a> {
    order: Vec<usize>,
    groups: Vec<Group<'a>>,
    remaining: usize,
}

struct Group<'a> {
    word: &'a str,
    start: usize,
    top: usize,
}

impl<'a> RefPositions<'a> {
    fn new<W: Deref<Target = str>>(reference: &'a [Enumerated<W>]) -> Self {
        let mut order: Vec<usize> = (0..reference.len()).collect();
        order.sort_by(|&a, &b| reference[a].1.cmp(&reference[b].1).then(a.cmp(&b)));
        let mut groups: Vec<Group<'a>> = Vec::new();
        for (k, &j) in order.iter().enumerate() {
            let word: &str = &reference[j].1;
            match groups.last_mut() {
                Some(group) if group.word == word => group.top = k + 1,
                _ => groups.push(Group {
                    word,
                    start: k,
                    top: k + 1,
                }),
            }
        }
        RefPositions {
            order,
            groups,
            remaining: reference.len(),
        }
    }

    fn group(&self, word: &str) -> Option<usize> {
        self.groups
            .binary_search_by(|group| group.word.cmp(word))
            .ok()
    }

    /// `positions[-1]` of a group, if any is left.
    fn last(&self, group: usize) -> Option<usize> {
        let group = &self.groups[group];
        (group.top > group.start).then(|| self.order[group.top - 1])
    }

    /// `positions.pop()` of a group.
    fn pop(&mut self, group: usize) -> Option<usize> {
        let last = self.last(group)?;
        self.groups[group].top -= 1;
        self.remaining -= 1;
        Some(last)
    }
}

/// The words of `list` whose index (in `list`) is not in `matched`.
fn unmatched<W>(list: Vec<Enumerated<W>>, matched: &[bool]) -> Vec<Enumerated<W>> {
    list.into_iter()
        .zip(matched)
        .filter(|(_, &m)| !m)
        .map(|(pair, _)| pair)
        .collect()
}

/// What a matching stage returns: the matches, then the unmatched hypothesis and reference.
type Stage<W> = (Vec<(usize, usize)>, Vec<Enumerated<W>>, Vec<Enumerated<W>>);

/// `_match_enums`: pairs equal words, hypothesis from its end, each with the last free reference
/// position; returns the matches and what is left of both lists.
fn match_enums<W: Deref<Target = str>>(
    hypothesis: Vec<Enumerated<W>>,
    reference: Vec<Enumerated<W>>,
) -> Stage<W> {
    let mut word_match = Vec::new();
    let mut matched_hyp = vec![false; hypothesis.len()];
    let mut matched_ref = vec![false; reference.len()];
    {
        let mut positions = RefPositions::new(&reference);
        for (i, (hyp_pos, word)) in hypothesis.iter().enumerate().rev() {
            if let Some(j) = positions.group(word).and_then(|g| positions.pop(g)) {
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
/// word is the hypothesis word or one of its WordNet synonyms (lemma names without `_`). Only
/// the matches are returned: nothing looks at what is left.
fn wordnet_synonym_matches<W: Deref<Target = str>>(
    hypothesis: &[Enumerated<W>],
    reference: &[Enumerated<W>],
    wordnet: &WordNet,
) -> Vec<(usize, usize)> {
    let mut word_match = Vec::new();
    let mut positions = RefPositions::new(reference);
    for (hyp_pos, word) in hypothesis.iter().rev() {
        if positions.remaining == 0 {
            // Nothing can match any more; skip the WordNet lookups.
            break;
        }
        let synonyms = wordnet.synonyms(word);
        // nltk keeps the candidate whose last free position is highest. Positions are distinct,
        // so that maximum is unique and may be found from either side: through the synonyms or
        // through the reference words, whichever is fewer.
        let best = if synonyms.len() < positions.groups.len() {
            synonyms
                .iter()
                .chain(std::iter::once(&**word))
                .filter_map(|candidate| positions.group(candidate))
                .filter_map(|g| positions.last(g).map(|j| (j, g)))
                .max()
        } else {
            (0..positions.groups.len())
                .filter_map(|g| positions.last(g).map(|j| (j, g)))
                .filter(|&(_, g)| {
                    let candidate = positions.groups[g].word;
                    candidate == &**word || synonyms.contains(candidate)
                })
                .max()
        };
        if let Some((best_j, g)) = best {
            positions.pop(g);
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
        WordNet::shared().expect("WordNet 3.0 is installed (scripts/test.sh installs it)")
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
