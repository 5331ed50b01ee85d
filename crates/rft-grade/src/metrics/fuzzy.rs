//! `fuzzy_match`: rapidfuzz's `fuzz.WRatio` with `utils.default_process`, ported from rapidfuzz 3.14.6.
//!
//! The reference is `rapidfuzz.fuzz.WRatio(input, reference, processor=rapidfuzz.utils.default_process)
//! / 100`. What Python users run is rapidfuzz's compiled extension, so this follows its C++, not
//! the pure-Python fallback `fuzz_py.py` (they differ, notably in `partial_ratio`): the
//! `extern/rapidfuzz-cpp` submodule of RapidFuzz v3.14.6 (rapidfuzz-cpp commit 6c10b68:
//! `rapidfuzz/fuzz_impl.hpp`, `distance/Indel_impl.hpp`, `distance/LCSseq_impl.hpp`,
//! `details/common_impl.hpp`, `details/distance.hpp`) and RapidFuzz's own `src/rapidfuzz/utils.cpp`
//! for the processor.
//!
//! The pieces, each named after the C++ function it mirrors:
//! - `default_process`: every code point maps to one code point, its lowercase form when it is
//!   alphanumeric and a space otherwise, then spaces are trimmed. The table is the one compiled
//!   into rapidfuzz ([`unicode_table`]), which agrees with neither Rust's `char` methods nor the
//!   running Python's `str` methods on every code point.
//! - `ratio`: normalized Indel similarity, `100 * (1 - dist / (len1 + len2))`.
//! - `partial_ratio`, `token_ratio` (token sort and token set in one), `partial_token_ratio`.
//! - `wratio`: the weighting by length ratio (`UNBASE_SCALE` 0.95, partial scale 0.9 up to a length
//!   ratio of 8, 0.6 beyond).
//!
//! Strings are compared as code-point sequences, as rapidfuzz compares Python `str`s. `WRatio`
//! hands each scorer a `score_cutoff` derived from the scores so far, and the scorers zero or
//! skip whatever falls below it; this port passes the same cutoffs and applies them with the same
//! float operations (including the `1e-5` slack of `NormSim_to_NormDist`), because the result
//! can depend on them: below a cutoff rapidfuzz may switch to a banded LCS that can miss an
//! optimal alignment (see [`lcs`]), and that is reproduced too.
//!
//! For speed, work whose outcome is already known is skipped, never approximated: windows of
//! `partial_ratio` whose character counts rule them out, prefix and suffix scores that cannot beat
//! the best one, LCS computations confined to a band when only values above a threshold matter.
//! Scratch vectors are reused across calls ([`pool`]).

mod lcs;
mod pool;
mod unicode_table;

use lcs::{Pattern, Scan};
use pool::Buf;

/// How similar `input` is to `reference`, in `0..=1`: rapidfuzz's `WRatio` with its default
/// processor (lowercasing, non-alphanumerics to spaces, trimming), divided by 100.
///
/// It takes the best of a plain edit-distance ratio, a ratio of sorted and de-duplicated words,
/// and, when one text is at least 1.5 times longer than the other, the best ratio of the shorter
/// text against any same-length window of the longer one, scaled down (0.9, or 0.6 beyond a length
/// ratio of 8). Either text empty after processing (e.g. only punctuation) scores 0.
pub fn fuzzy_match(input: &str, reference: &str) -> f64 {
    let s1 = default_process(input);
    let s2 = default_process(reference);
    wratio(&s1, &s2) / 100.0
}

/// The space character, which `default_process` produces and the token scorers split on.
const SPACE: u32 = 0x20;

/// rapidfuzz's `default_process` on the code points of `text`.
fn default_process(text: &str) -> Buf<u32> {
    let mut out = Buf::new();
    out.reserve(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // Runs of ASCII go through the byte table; other characters are decoded one by one.
        let ascii = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(ascii);
        out.extend(run.bytes().map(|b| u32::from(ASCII_MAP[usize::from(b)])));
        let mut chars = tail.chars();
        if let Some(ch) = chars.next() {
            out.push(process_char(u32::from(ch)));
        }
        rest = chars.as_str();
    }
    // The C++ trims only U+0020, which is the only whitespace left after the mapping.
    let end = out.iter().rposition(|&c| c != SPACE).map_or(0, |i| i + 1);
    out.truncate(end);
    let start = out.iter().position(|&c| c != SPACE).unwrap_or(out.len());
    out.drain(..start);
    out
}

/// `default_process` on ASCII: letters lowercased, digits kept, everything else a space.
static ASCII_MAP: [u8; 128] = {
    let mut map = [b' '; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        if b.is_ascii_digit() || b.is_ascii_lowercase() {
            map[i] = b;
        } else if b.is_ascii_uppercase() {
            map[i] = b + 0x20;
        }
        i += 1;
    }
    map
};

/// One code point through rapidfuzz's `default_process` mapping.
#[inline]
fn process_char(ch: u32) -> u32 {
    match SMALL_MAP.get(ch as usize) {
        Some(&mapped) => u32::from(mapped),
        None => process_large(ch),
    }
}

/// Code points below this are mapped by [`SMALL_MAP`]; they cover Latin, Greek, Cyrillic, the
/// scripts of South Asia, general punctuation and letterlike symbols such as the Kelvin sign.
const SMALL_LIMIT: usize = 0x3000;

/// [`process_char`] for code points below [`SMALL_LIMIT`], expanded at compile time from the range
/// tables (all their images lie in the Basic Multilingual Plane).
static SMALL_MAP: [u16; SMALL_LIMIT] = {
    let mut map = [SPACE as u16; SMALL_LIMIT];
    let alnum = unicode_table::ALNUM_RANGES;
    let mut i = 0;
    while i < alnum.len() {
        let (first, last) = alnum[i];
        let mut cp = first as usize;
        while cp <= last as usize && cp < SMALL_LIMIT {
            map[cp] = cp as u16;
            cp += 1;
        }
        i += 1;
    }
    let runs = unicode_table::LOWER_RUNS;
    let mut i = 0;
    while i < runs.len() {
        let (first, last, stride, delta) = runs[i];
        let mut cp = first;
        while cp <= last && (cp as usize) < SMALL_LIMIT {
            map[cp as usize] = (cp as i64 + delta as i64) as u16;
            cp += stride;
        }
        i += 1;
    }
    map
};

/// [`process_char`] from the range tables, by binary search.
fn process_large(ch: u32) -> u32 {
    let alnum = unicode_table::ALNUM_RANGES
        .binary_search_by(|&(first, last)| {
            if last < ch {
                std::cmp::Ordering::Less
            } else if first > ch {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok();
    if !alnum {
        return SPACE;
    }
    let runs = unicode_table::LOWER_RUNS;
    let idx = runs.partition_point(|&(first, _, _, _)| first <= ch);
    if idx == 0 {
        return ch;
    }
    let (first, last, stride, delta) = runs[idx - 1];
    if ch <= last && stride != 0 && (ch - first).is_multiple_of(stride) {
        ch.wrapping_add_signed(delta)
    } else {
        ch
    }
}

/// `NormSim_to_NormDist`: a similarity cutoff as a distance cutoff, with rapidfuzz's slack.
fn norm_sim_to_norm_dist(score_cutoff: f64) -> f64 {
    f64::min(1.0, 1.0 - score_cutoff + 0.00001)
}

/// The normalized Indel similarity in percent, given the exact Indel distance `dist` of two
/// strings whose lengths sum to `maximum`, with the cutoff handling of rapidfuzz's
/// `CachedNormalizedMetricBase::_normalized_similarity` (and `NormalizedMetricBase`), times 100 as
/// in `fuzz::ratio`. `score_cutoff` is in percent.
fn indel_score(dist: usize, maximum: usize, score_cutoff: f64) -> f64 {
    let cutoff_sim = score_cutoff / 100.0;
    let cutoff_norm_dist = norm_sim_to_norm_dist(cutoff_sim);
    let cutoff_distance = (maximum as f64 * cutoff_norm_dist).ceil() as usize;
    // `Indel::_distance` reports anything beyond its cutoff as cutoff + 1.
    let dist = if dist <= cutoff_distance {
        dist
    } else {
        cutoff_distance + 1
    };
    let norm_dist = if maximum != 0 {
        dist as f64 / maximum as f64
    } else {
        0.0
    };
    let norm_dist = if norm_dist <= cutoff_norm_dist {
        norm_dist
    } else {
        1.0
    };
    let norm_sim = 1.0 - norm_dist;
    let norm_sim = if norm_sim >= cutoff_sim {
        norm_sim
    } else {
        0.0
    };
    norm_sim * 100.0
}

/// `fuzz::ratio`: normalized Indel similarity in percent.
fn ratio(s1: &[u32], s2: &[u32], score_cutoff: f64) -> f64 {
    let maximum = s1.len() + s2.len();
    let dist = indel_distance(s1, s2, indel_cutoff_distance(maximum, score_cutoff));
    indel_score(dist, maximum, score_cutoff)
}

/// The integer distance cutoff `_normalized_distance` derives from a percentage cutoff.
fn indel_cutoff_distance(maximum: usize, score_cutoff: f64) -> usize {
    (maximum as f64 * norm_sim_to_norm_dist(score_cutoff / 100.0)).ceil() as usize
}

/// The LCS cutoff `Indel::_distance` (and `CachedIndel::_distance`) derive from a distance cutoff.
fn lcs_cutoff(maximum: usize, cutoff_distance: usize) -> usize {
    (maximum / 2).saturating_sub(cutoff_distance)
}

/// `Indel::_distance`: the Indel distance when at most `cutoff_distance`, else `cutoff_distance + 1`.
fn indel_distance(s1: &[u32], s2: &[u32], cutoff_distance: usize) -> usize {
    let maximum = s1.len() + s2.len();
    let sim = lcs::lcs_seq_similarity(s1, s2, lcs_cutoff(maximum, cutoff_distance));
    let dist = maximum - 2 * sim;
    if dist <= cutoff_distance {
        dist
    } else {
        cutoff_distance + 1
    }
}

/// `fuzz_detail::norm_distance`: a distance as a percentage, zeroed below the cutoff.
fn norm_distance(dist: usize, lensum: usize, score_cutoff: f64) -> f64 {
    let score = if lensum > 0 {
        100.0 - 100.0 * dist as f64 / lensum as f64
    } else {
        100.0
    };
    if score >= score_cutoff {
        score
    } else {
        0.0
    }
}

/// `fuzz_detail::score_cutoff_to_distance`.
fn score_cutoff_to_distance(score_cutoff: f64, lensum: usize) -> usize {
    (lensum as f64 * (1.0 - score_cutoff / 100.0)).ceil() as usize
}

/// `fuzz::partial_ratio`: the best `ratio` of the shorter string against the parts of the
/// longer one that could align with it.
fn partial_ratio(s1: &[u32], s2: &[u32], score_cutoff: f64) -> f64 {
    let (s1, s2) = if s1.len() > s2.len() {
        (s2, s1)
    } else {
        (s1, s2)
    };
    if score_cutoff > 100.0 {
        return 0.0;
    }
    if s1.is_empty() || s2.is_empty() {
        return if s1.len() == s2.len() { 100.0 } else { 0.0 };
    }
    let score = partial_ratio_impl(s1, s2, score_cutoff);
    if score != 100.0 && s1.len() == s2.len() {
        // Equal lengths: the C++ also tries the other string as the needle.
        let score_cutoff = score_cutoff.max(score);
        let score2 = partial_ratio_impl(s2, s1, score_cutoff);
        if score2 > score {
            return score2;
        }
    }
    score
}

/// `fuzz_detail::partial_ratio_impl` for `s1.len() <= s2.len()`, both non-empty: the score of
/// its `ScoreAlignment`.
fn partial_ratio_impl(s1: &[u32], s2: &[u32], mut score_cutoff: f64) -> f64 {
    let len1 = s1.len();
    let len2 = s2.len();
    let pattern = Pattern::new(s1);
    let mut ids = Buf::new();
    pattern.encode(s2, &mut ids);
    let mut best = 0.0;

    if len2 > len1 {
        let maximum = len1 * 2;
        let cutoff_dist = indel_cutoff_distance(maximum, score_cutoff);
        if let Some(best_dist) = best_window_distance(&pattern, s1, &ids, cutoff_dist) {
            if best_dist == 0 {
                return 100.0;
            }
            let score = (1.0 - best_dist as f64 / maximum as f64) * 100.0;
            if score >= score_cutoff {
                score_cutoff = score;
                best = score;
            }
        }
    }

    // Windows cut short by the start of s2: s2[..i] for i < len1, scored only when their last
    // character occurs in s1. One left-to-right scan yields every prefix's LCS.
    let mut scan = Scan::new(pattern.masks(), pattern.words());
    for i in 1..len1 {
        let id = ids[i - 1];
        scan.feed(id);
        if id == 0 {
            continue;
        }
        let lcs = scan.lcs();
        if exact_score(lcs, len1, i) <= best {
            continue;
        }
        let ls_ratio = cached_ratio(&pattern, s1, &s2[..i], &ids[..i], lcs, score_cutoff);
        if ls_ratio > best {
            score_cutoff = ls_ratio;
            best = ls_ratio;
            if best == 100.0 {
                return best;
            }
        }
    }

    // Windows cut short by the end of s2: s2[i..] for i >= len2 - len1, scored only when their
    // first character occurs in s1. A right-to-left scan of the reversed pattern yields every
    // suffix's LCS; the C++ then visits them from the longest on.
    let reversed = pattern.reversed_masks();
    let mut scan = Scan::new(&reversed, pattern.words());
    let mut suffix_lcs = Buf::filled(len1, 0usize);
    for (k, i) in (len2 - len1..len2).rev().enumerate() {
        scan.feed(ids[i]);
        suffix_lcs[len1 - 1 - k] = scan.lcs();
    }
    for (k, i) in (len2 - len1..len2).enumerate() {
        if ids[i] == 0 || exact_score(suffix_lcs[k], len1, len2 - i) <= best {
            continue;
        }
        let ls_ratio = cached_ratio(
            &pattern,
            s1,
            &s2[i..],
            &ids[i..],
            suffix_lcs[k],
            score_cutoff,
        );
        if ls_ratio > best {
            score_cutoff = ls_ratio;
            best = ls_ratio;
            if best == 100.0 {
                return best;
            }
        }
    }
    debug_assert_eq!(pattern.len(), len1);
    best
}

/// The ratio of two strings of lengths `len1` and `len2` with LCS `lcs`, computed as
/// [`indel_score`] does: what `CachedRatio::similarity` returns when no cutoff interferes, and an
/// upper bound of what it returns otherwise (0, or the same value). Both loops of
/// `partial_ratio_impl` skip the full computation when this cannot beat the best score so far.
fn exact_score(lcs: usize, len1: usize, len2: usize) -> f64 {
    let maximum = len1 + len2;
    let dist = maximum - 2 * lcs;
    (1.0 - dist as f64 / maximum as f64) * 100.0
}

/// `CachedRatio::similarity(s2, score_cutoff)` for the needle `s1` (with its `pattern`), given
/// `s2` encoded (`ids`) and the exact LCS of the two.
fn cached_ratio(
    pattern: &Pattern,
    s1: &[u32],
    s2: &[u32],
    ids: &[u32],
    exact_lcs: usize,
    score_cutoff: f64,
) -> f64 {
    let maximum = s1.len() + s2.len();
    let cutoff_distance = indel_cutoff_distance(maximum, score_cutoff);
    let cutoff = lcs_cutoff(maximum, cutoff_distance);
    let sim = lcs::cached_lcs_seq_similarity(pattern, s1, s2, ids, exact_lcs, cutoff);
    indel_score(maximum - 2 * sim, maximum, score_cutoff)
}

/// The smallest Indel distance between the needle (`pattern`, `needle`) and a full-length window
/// `ids[start..start + len]` of the encoded haystack, `start < ids.len() - len`, if it is below
/// `cutoff_dist`.
///
/// The C++ searches these windows by bisection: it evaluates both ends of a range of starts and
/// splits the range only while their distances leave room for one below the running cutoff
/// (shifting a window by one changes its distance, always even, by 0 or 2). That bound is exact,
/// so the search ends with the smallest distance of all the windows when it is below the initial
/// cutoff, and with none otherwise; which windows it evaluates on the way does not matter. This
/// runs the same bisection, but a window whose character counts alone (a sliding histogram)
/// bound its distance at or above the running cutoff is not computed: the bound stands in for its
/// distance, which keeps every pruning decision valid.
fn best_window_distance(
    pattern: &Pattern,
    needle: &[u32],
    ids: &[u32],
    initial_cutoff: usize,
) -> Option<usize> {
    let len = pattern.len();
    let starts = ids.len() - len;
    let maximum = 2 * len;

    // lower[start]: 2 * (len - overlap), where overlap is the sum over characters of the smaller
    // of their counts in the needle and in the window, an upper bound of the window's LCS.
    let alphabet = pattern.masks().len() / pattern.words().max(1);
    let mut need = Buf::filled(alphabet, 0u32);
    let mut have = Buf::filled(alphabet, 0u32);
    for &ch in needle {
        need[pattern.id(ch) as usize] += 1;
    }
    let mut overlap = 0usize;
    for &id in &ids[..len] {
        let id = id as usize;
        if have[id] < need[id] {
            overlap += 1;
        }
        have[id] += 1;
    }
    let mut lower = Buf::new();
    lower.reserve(starts);
    for start in 0..starts {
        lower.push(maximum - 2 * overlap);
        let out = ids[start] as usize;
        have[out] -= 1;
        if have[out] < need[out] {
            overlap -= 1;
        }
        let inc = ids[start + len] as usize;
        if have[inc] < need[inc] {
            overlap += 1;
        }
        have[inc] += 1;
    }

    const UNKNOWN: usize = usize::MAX;
    let mut cutoff_dist = initial_cutoff;
    let mut best_dist = None;
    let mut scores = Buf::filled(starts, UNKNOWN);
    // Ranges of starts, as flat (first, second) pairs.
    let mut windows = Buf::new();
    windows.extend_from_slice(&[0, starts - 1]);
    let mut new_windows = Buf::new();
    while !windows.is_empty() {
        for range in windows.chunks_exact(2) {
            let (first, second) = (range[0], range[1]);
            for start in [first, second] {
                if scores[start] != UNKNOWN {
                    continue;
                }
                if lower[start] >= cutoff_dist {
                    scores[start] = lower[start];
                    continue;
                }
                // Exact distances, as the C++ computes them, prune best: a bound that only says
                // "at least the cutoff" would leave the neighbouring windows to evaluate.
                let lcs = lcs::lcs_pattern_at_least(pattern, &ids[start..start + len], 0);
                let dist = maximum - 2 * lcs;
                scores[start] = dist;
                if dist < cutoff_dist {
                    cutoff_dist = dist;
                    best_dist = Some(dist);
                    if dist == 0 {
                        return best_dist;
                    }
                }
            }
            let cell_diff = second - first;
            if cell_diff <= 1 {
                continue;
            }
            if interior_lower_bound(scores[first], scores[second], cell_diff) < cutoff_dist {
                let center = cell_diff / 2;
                new_windows.extend_from_slice(&[first, first + center, first + center, second]);
            }
        }
        std::mem::swap(&mut windows, &mut new_windows);
        new_windows.clear();
    }
    best_dist
}

/// A lower bound on the distance of every window strictly between two starts `gap` apart whose
/// distances are at least `left` and `right`: a shift by one changes a distance by at most 2.
/// The C++ prunes with a bound that is never larger (checked in the tests); any valid bound
/// leads to the same minimum.
fn interior_lower_bound(left: usize, right: usize, gap: usize) -> usize {
    let (left, right, gap) = (left as i64, right as i64, gap as i64);
    // max(left - 2x, right - 2(gap - x)) is smallest where the two lines cross.
    let cross = (left - right + 2 * gap).div_euclid(4);
    let at = |x: i64| {
        let x = x.clamp(1, gap - 1);
        (left - 2 * x).max(right - 2 * (gap - x))
    };
    at(cross).min(at(cross + 1)).max(0) as usize
}

/// `detail::sorted_split`: the words of `s` (split on spaces, empty words dropped), sorted.
fn sorted_split(s: &[u32]) -> Vec<&[u32]> {
    // Sorting on a key made of the first three characters settles most comparisons with one
    // integer comparison. Characters are below 2^21 and never 0 after `default_process`, so 0
    // marks the end of a shorter word and the key order agrees with the lexicographic order.
    let key = |w: &[u32]| -> u64 {
        let at = |i: usize| u64::from(w.get(i).copied().unwrap_or(0));
        (at(0) << 42) | (at(1) << 21) | at(2)
    };
    let mut keyed: Vec<(u64, &[u32])> = Vec::with_capacity(s.len() / 2 + 1);
    keyed.extend(
        s.split(|&c| c == SPACE)
            .filter(|w| !w.is_empty())
            .map(|w| (key(w), w)),
    );
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, w)| w).collect()
}

/// `SplittedSentenceView::join`: the words separated by single spaces.
fn join(words: &[&[u32]]) -> Buf<u32> {
    let mut out = Buf::new();
    out.reserve(joined_len(words));
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            out.push(SPACE);
        }
        out.extend_from_slice(word);
    }
    out
}

/// `SplittedSentenceView::length`: the length the joined words would have.
fn joined_len(words: &[&[u32]]) -> usize {
    if words.is_empty() {
        0
    } else {
        words.len() - 1 + words.iter().map(|w| w.len()).sum::<usize>()
    }
}

/// The result of [`set_decomposition`].
struct Decomposition<'a> {
    intersection: Vec<&'a [u32]>,
    difference_ab: Vec<&'a [u32]>,
    difference_ba: Vec<&'a [u32]>,
}

/// `detail::set_decomposition` of two sorted word lists: the de-duplicated words they share and
/// those only in one of them, each in sorted order.
fn set_decomposition<'a>(a: &[&'a [u32]], b: &[&'a [u32]]) -> Decomposition<'a> {
    let mut out = Decomposition {
        intersection: Vec::with_capacity(a.len().min(b.len())),
        difference_ab: Vec::with_capacity(a.len()),
        difference_ba: Vec::with_capacity(b.len()),
    };
    // Both lists are sorted, so a merge that skips repeated words gives what the C++ finds by
    // de-duplicating and searching.
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (word, from_a, from_b) = match order {
            std::cmp::Ordering::Less => (a[i], true, false),
            std::cmp::Ordering::Greater => (b[j], false, true),
            std::cmp::Ordering::Equal => (a[i], true, true),
        };
        match (from_a, from_b) {
            (true, true) => out.intersection.push(word),
            (true, false) => out.difference_ab.push(word),
            _ => out.difference_ba.push(word),
        }
        if from_a {
            while i < a.len() && a[i] == word {
                i += 1;
            }
        }
        if from_b {
            while j < b.len() && b[j] == word {
                j += 1;
            }
        }
    }
    out
}

/// `fuzz::token_ratio`: the better of `token_sort_ratio` and `token_set_ratio`, computed together.
fn token_ratio(s1: &[u32], s2: &[u32], score_cutoff: f64) -> f64 {
    if score_cutoff > 100.0 {
        return 0.0;
    }
    let tokens_a = sorted_split(s1);
    let tokens_b = sorted_split(s2);
    let decomposition = set_decomposition(&tokens_a, &tokens_b);
    let intersect = &decomposition.intersection;
    let diff_ab = &decomposition.difference_ab;
    let diff_ba = &decomposition.difference_ba;

    if !intersect.is_empty() && (diff_ab.is_empty() || diff_ba.is_empty()) {
        return 100.0;
    }

    let diff_ab_joined = join(diff_ab);
    let diff_ba_joined = join(diff_ba);
    let ab_len = diff_ab_joined.len();
    let ba_len = diff_ba_joined.len();
    let sect_len = joined_len(intersect);

    // token_sort_ratio: the sorted words, duplicates kept.
    let mut result = ratio(&join(&tokens_a), &join(&tokens_b), score_cutoff);

    // token_set_ratio: "sect + ab" against "sect + ba"; only the differences can differ.
    let has_sect = usize::from(sect_len != 0);
    let sect_ab_len = sect_len + has_sect + ab_len;
    let sect_ba_len = sect_len + has_sect + ba_len;

    let cutoff_distance = score_cutoff_to_distance(score_cutoff, sect_ab_len + sect_ba_len);
    let dist = indel_distance(&diff_ab_joined, &diff_ba_joined, cutoff_distance);
    if dist <= cutoff_distance {
        result = result.max(norm_distance(dist, sect_ab_len + sect_ba_len, score_cutoff));
    }

    if sect_len == 0 {
        return result;
    }

    // "sect" against "sect + ab" (and "sect + ba"): the distance is the length difference.
    let sect_ab_dist = has_sect + ab_len;
    let sect_ab_ratio = norm_distance(sect_ab_dist, sect_len + sect_ab_len, score_cutoff);
    let sect_ba_dist = has_sect + ba_len;
    let sect_ba_ratio = norm_distance(sect_ba_dist, sect_len + sect_ba_len, score_cutoff);

    result.max(sect_ab_ratio).max(sect_ba_ratio)
}

/// `fuzz::partial_token_ratio`: the better of `partial_token_sort_ratio` and
/// `partial_token_set_ratio`, computed together.
fn partial_token_ratio(s1: &[u32], s2: &[u32], score_cutoff: f64) -> f64 {
    if score_cutoff > 100.0 {
        return 0.0;
    }
    let tokens_a = sorted_split(s1);
    let tokens_b = sorted_split(s2);
    let decomposition = set_decomposition(&tokens_a, &tokens_b);

    // A word in common makes partial_token_set_ratio 100.
    if !decomposition.intersection.is_empty() {
        return 100.0;
    }
    let diff_ab = &decomposition.difference_ab;
    let diff_ba = &decomposition.difference_ba;

    let result = partial_ratio(&join(&tokens_a), &join(&tokens_b), score_cutoff);

    // Without duplicate words both would compare the same strings.
    if tokens_a.len() == diff_ab.len() && tokens_b.len() == diff_ba.len() {
        return result;
    }

    let score_cutoff = score_cutoff.max(result);
    result.max(partial_ratio(&join(diff_ab), &join(diff_ba), score_cutoff))
}

/// `fuzz::WRatio` with `score_cutoff` 0, on processed strings, in percent.
fn wratio(s1: &[u32], s2: &[u32]) -> f64 {
    const UNBASE_SCALE: f64 = 0.95;
    let mut score_cutoff = 0.0_f64;

    let len1 = s1.len();
    let len2 = s2.len();
    // FuzzyWuzzy compatibility: an empty side scores 0, even against another empty one.
    if len1 == 0 || len2 == 0 {
        return 0.0;
    }

    let len_ratio = if len1 > len2 {
        len1 as f64 / len2 as f64
    } else {
        len2 as f64 / len1 as f64
    };

    let mut end_ratio = ratio(s1, s2, score_cutoff);

    if len_ratio < 1.5 {
        score_cutoff = score_cutoff.max(end_ratio) / UNBASE_SCALE;
        return end_ratio.max(token_ratio(s1, s2, score_cutoff) * UNBASE_SCALE);
    }

    let partial_scale = if len_ratio <= 8.0 { 0.9 } else { 0.6 };

    score_cutoff = score_cutoff.max(end_ratio) / partial_scale;
    end_ratio = end_ratio.max(partial_ratio(s1, s2, score_cutoff) * partial_scale);

    score_cutoff = score_cutoff.max(end_ratio) / UNBASE_SCALE;
    end_ratio.max(partial_token_ratio(s1, s2, score_cutoff) * UNBASE_SCALE * partial_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= 1e-12,
            "got {actual}, expected {expected}"
        );
    }

    fn processed(s: &str) -> String {
        default_process(s)
            .iter()
            .filter_map(|&c| char::from_u32(c))
            .collect()
    }

    #[test]
    fn wratio_of_identical_strings_is_one() {
        close(fuzzy_match("hello world", "hello world"), 1.0);
        close(fuzzy_match("Hello World", "hello world!"), 1.0);
        // The comma leaves a double space, which only the plain ratio sees.
        close(
            fuzzy_match("Hello, World!", "hello world"),
            0.9565217391304348,
        );
    }

    #[test]
    fn empty_or_punctuation_only_scores_zero() {
        close(fuzzy_match("", ""), 0.0);
        close(fuzzy_match("", "hello"), 0.0);
        close(fuzzy_match("hello", ""), 0.0);
        close(fuzzy_match("!!!", "!!!"), 0.0);
        close(fuzzy_match(" ", " "), 0.0);
    }

    #[test]
    fn default_process_lowercases_and_blanks_punctuation() {
        assert_eq!(processed("  Hello, World!  "), "hello  world");
        assert_eq!(processed("Straße"), "straße");
        // rapidfuzz maps U+0130 to a bare "i" (it ignores the combining dot of full lowercasing).
        assert_eq!(processed("İstanbul"), "istanbul");
        // No final-sigma rule: capital sigma always becomes σ.
        assert_eq!(processed("ΟΔΟΣ"), "οδοσ");
        // The Kelvin sign lowercases to "k"; the ligature is a letter; the emoji is not.
        assert_eq!(processed("K\u{212A}"), "kk");
        assert_eq!(processed("ﬁle 😀"), "ﬁle");
        // Combining marks and non-breaking spaces are not alphanumeric.
        assert_eq!(processed("x\u{301}"), "x");
        assert_eq!(processed("a\u{a0}b\u{3000}c\u{85}"), "a b c");
    }

    #[test]
    fn compile_time_table_agrees_with_the_range_tables() {
        for (cp, &mapped) in SMALL_MAP.iter().enumerate() {
            let cp = cp as u32;
            assert_eq!(u32::from(mapped), process_large(cp), "U+{cp:04X}");
        }
        for (cp, &mapped) in ASCII_MAP.iter().enumerate() {
            assert_eq!(u16::from(mapped), SMALL_MAP[cp], "U+{cp:04X}");
        }
    }

    #[test]
    fn window_bound_never_exceeds_a_reachable_distance() {
        // Distances of windows `gap` apart differ by at most 2 per step; every value the bound
        // allows must be at least the bound.
        for gap in 2..30usize {
            for left in (0..120usize).step_by(2) {
                for right in (0..120usize).step_by(2) {
                    if left.abs_diff(right) > 2 * gap {
                        continue;
                    }
                    let tightest = (1..gap)
                        .map(|x| {
                            left.saturating_sub(2 * x)
                                .max(right.saturating_sub(2 * (gap - x)))
                        })
                        .min()
                        .unwrap_or(0);
                    assert!(interior_lower_bound(left, right, gap) <= tightest);
                }
            }
        }
    }

    // Expected values below were computed with rapidfuzz 3.14.6:
    // fuzz.WRatio(a, b, processor=utils.default_process) / 100.
    #[test]
    fn token_paths_match_rapidfuzz() {
        close(
            fuzzy_match("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear"),
            0.95,
        );
        close(
            fuzzy_match("fuzzy was a bear", "fuzzy fuzzy was a bear"),
            0.95,
        );
        close(fuzzy_match("this is a test", "this is a test!"), 1.0);
        close(fuzzy_match("the the the cat", "cat the"), 0.855);
        close(fuzzy_match("$1,234.56", "1234.56"), 0.9333333333333332);
    }

    #[test]
    fn partial_paths_match_rapidfuzz() {
        close(fuzzy_match("New York", "new york city"), 0.9);
        close(fuzzy_match("abcd", "abcdabcdxxxx"), 0.9);
        close(fuzzy_match("ab", "abc"), 0.9);
        close(fuzzy_match("abcd", "abcde"), 0.8888888888888888);
        close(
            fuzzy_match("hello", "help me with this hello world message please"),
            0.6,
        );
        close(fuzzy_match("x", &"x".repeat(200)), 0.6);
    }

    #[test]
    fn length_ratio_of_exactly_eight_keeps_the_larger_scale() {
        close(fuzzy_match("abc", &format!("abc{}", "y".repeat(21))), 0.9);
        close(fuzzy_match("abc", &format!("abc{}", "y".repeat(22))), 0.6);
    }

    #[test]
    fn long_inputs_match_rapidfuzz() {
        close(
            fuzzy_match(&"a".repeat(300), &"a".repeat(299)),
            0.998330550918197,
        );
        close(
            fuzzy_match(&"ab".repeat(150), &"ba".repeat(150)),
            0.9966666666666667,
        );
    }

    #[test]
    fn unicode_inputs_match_rapidfuzz() {
        close(fuzzy_match("Straße", "strasse"), 0.7692307692307692);
        close(fuzzy_match("café naïve", "cafe naive"), 0.8);
        close(fuzzy_match("😀 emoji here", "emoji here"), 1.0);
        close(fuzzy_match("日本語のテキスト", "日本語"), 0.9);
        close(fuzzy_match("İstanbul", "istanbul"), 1.0);
        close(fuzzy_match("Kelvin\u{212a}", "kelvink"), 1.0);
        close(fuzzy_match("ﬁle", "file"), 0.5714285714285714);
        close(fuzzy_match("x\u{301}", "x"), 1.0);
        close(fuzzy_match("ΟΔΟΣ", "οδος"), 0.75);
    }
}
