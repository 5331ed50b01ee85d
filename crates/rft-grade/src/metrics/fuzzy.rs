//! `fuzzy_match`: rapidfuzz's `fuzz.WRatio` with `utils.default_process`, ported from rapidfuzz 3.14.6.
//!
//! The reference is `rapidfuzz.fuzz.WRatio(input, reference, processor=rapidfuzz.utils.default_process)
//! / 100`. What Python users run is the compiled extension, i.e. the C++ of rapidfuzz-cpp (the
//! `extern/rapidfuzz-cpp` submodule of RapidFuzz v3.14.6, commit 6c10b68: `rapidfuzz/fuzz_impl.hpp`,
//! `distance/Indel_impl.hpp`, `details/common_impl.hpp`, `details/distance.hpp`) and RapidFuzz's
//! `src/rapidfuzz/utils.hpp`/`utils.cpp` for the processor. That code, not the pure-Python fallback
//! `fuzz_py.py`, is what this file follows where the two differ (notably `partial_ratio`, whose C++
//! version searches windows by bisection and scores prefixes and suffixes differently).
//!
//! The pieces, each mirroring the C++ function of the same name:
//! - `default_process`: every code point maps to one code point, its lowercase form when it is
//!   alphanumeric and a space otherwise, then spaces are trimmed. The character table is the one
//!   compiled into rapidfuzz ([`unicode_table`]), not Rust's or the running Python's.
//! - `ratio`: normalized Indel similarity, `100 * (1 - dist / (len1 + len2))`.
//! - `partial_ratio`, `token_ratio` (token sort and token set in one), `partial_token_ratio`.
//! - `wratio`: the weighting by length ratio (`UNBASE_SCALE` 0.95, partial scale 0.9 or 0.6).
//!
//! Strings are compared as code-point sequences, as rapidfuzz does on Python `str`. Each scorer
//! takes the `score_cutoff` the C++ passes it and applies it with the same float operations
//! (including the `1e-5` slack of `NormSim_to_NormDist`), because some paths (the window search
//! of `partial_ratio`, the early exits of the token scorers) prune on it and their result can
//! depend on it. Distances themselves are exact: [`lcs`] computes the LCS bit-parallel, as
//! rapidfuzz does.

mod lcs;
mod unicode_table;

use lcs::{Pattern, Scan};

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
fn default_process(text: &str) -> Vec<u32> {
    let mut out: Vec<u32> = text.chars().map(|ch| process_char(u32::from(ch))).collect();
    // The C++ trims only U+0020, which is the only whitespace left after the mapping.
    let end = out.iter().rposition(|&c| c != SPACE).map_or(0, |i| i + 1);
    out.truncate(end);
    let start = out.iter().position(|&c| c != SPACE).unwrap_or(out.len());
    out.drain(..start);
    out
}

/// One code point through rapidfuzz's `default_process` mapping.
fn process_char(ch: u32) -> u32 {
    if ch < 0x80 {
        return match ch {
            0x30..=0x39 | 0x61..=0x7A => ch,
            0x41..=0x5A => ch + 0x20,
            _ => SPACE,
        };
    }
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
    if ch <= last && (ch - first) % stride == 0 {
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
    let mut ids = Vec::with_capacity(len2);
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
        let ls_ratio = cached_ratio(&pattern, s1, &s2[..i], &ids[..i], scan.lcs(), score_cutoff);
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
    let mut suffix_lcs = vec![0usize; len1];
    for (k, i) in (len2 - len1..len2).rev().enumerate() {
        scan.feed(ids[i]);
        suffix_lcs[len1 - 1 - k] = scan.lcs();
    }
    for (k, i) in (len2 - len1..len2).enumerate() {
        if ids[i] == 0 {
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
    let mut need = vec![0u32; alphabet];
    let mut have = vec![0u32; alphabet];
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
    let mut lower = Vec::with_capacity(starts);
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
    let mut scores = vec![UNKNOWN; starts];
    let mut windows = vec![(0usize, starts - 1)];
    let mut new_windows = Vec::new();
    while !windows.is_empty() {
        for &(first, second) in &windows {
            for start in [first, second] {
                if scores[start] != UNKNOWN {
                    continue;
                }
                if lower[start] >= cutoff_dist {
                    scores[start] = lower[start];
                    continue;
                }
                let window = &ids[start..start + len];
                // Only an LCS above this can beat the cutoff; below it the window's distance is
                // at least the cutoff, which is as good a bound as the exact value.
                let floor = (maximum - cutoff_dist) / 2 + 1;
                let lcs = lcs::lcs_pattern_at_least(pattern, window, floor);
                if lcs >= floor {
                    let dist = maximum - 2 * lcs;
                    scores[start] = dist;
                    cutoff_dist = dist;
                    best_dist = Some(dist);
                    if dist == 0 {
                        return best_dist;
                    }
                } else {
                    scores[start] = lower[start].max(cutoff_dist);
                }
            }
            let cell_diff = second - first;
            if cell_diff <= 1 {
                continue;
            }
            if interior_lower_bound(scores[first], scores[second], cell_diff) < cutoff_dist {
                let center = cell_diff / 2;
                new_windows.push((first, first + center));
                new_windows.push((first + center, second));
            }
        }
        std::mem::swap(&mut windows, &mut new_windows);
        new_windows.clear();
    }
    best_dist
}

/// A lower bound on the distance of every window strictly between two starts `gap` apart whose
/// distances are at least `left` and `right`: a shift by one changes a distance by at most 2.
/// (The C++ computes the same bound, rounded to even, from exact distances.)
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
    let mut words: Vec<&[u32]> = s.split(|&c| c == SPACE).filter(|w| !w.is_empty()).collect();
    words.sort_unstable();
    words
}

/// `SplittedSentenceView::join`: the words separated by single spaces.
fn join(words: &[&[u32]]) -> Vec<u32> {
    let mut out = Vec::with_capacity(joined_len(words));
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

/// `detail::set_decomposition` of two sorted word lists: the de-duplicated words they share and
/// those only in one of them, each in sorted order.
struct Decomposition<'a> {
    intersection: Vec<&'a [u32]>,
    difference_ab: Vec<&'a [u32]>,
    difference_ba: Vec<&'a [u32]>,
}

fn set_decomposition<'a>(a: &[&'a [u32]], b: &[&'a [u32]]) -> Decomposition<'a> {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.dedup();
    b.dedup();
    let mut out = Decomposition {
        intersection: Vec::new(),
        difference_ab: Vec::new(),
        difference_ba: Vec::new(),
    };
    // Both lists are sorted and unique, so a merge gives what the C++ finds with linear searches.
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(b[j]) {
            std::cmp::Ordering::Less => {
                out.difference_ab.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.difference_ba.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.intersection.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.difference_ab.extend_from_slice(&a[i..]);
    out.difference_ba.extend_from_slice(&b[j..]);
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
            .into_iter()
            .filter_map(char::from_u32)
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
        close(fuzzy_match("!!!", "!!!"), 0.0);
        close(fuzzy_match(" ", " "), 0.0);
    }

    #[test]
    fn default_process_lowercases_and_blanks_punctuation() {
        assert_eq!(processed("  Hello, World!  "), "hello  world");
        assert_eq!(processed("Straße"), "straße");
        // rapidfuzz maps U+0130 to a bare "i" (it ignores the combining dot of full lowercasing).
        assert_eq!(processed("İstanbul"), "istanbul");
        assert_eq!(processed("ΟΔΟΣ"), "οδοσ");
        // The Kelvin sign lowercases to "k"; the ligature and emoji are not alphanumeric / kept.
        assert_eq!(processed("K\u{212A}"), "kk");
        assert_eq!(processed("ﬁle 😀"), "ﬁle");
        // A combining mark is not alphanumeric.
        assert_eq!(processed("x\u{301}"), "x");
    }

    // Expected values below were computed with rapidfuzz 3.14.6:
    // fuzz.WRatio(a, b, processor=utils.default_process) / 100.
    #[test]
    fn token_set_and_sort_paths_match_rapidfuzz() {
        close(
            fuzzy_match("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear"),
            0.95,
        );
        close(
            fuzzy_match("fuzzy was a bear", "fuzzy fuzzy was a bear"),
            0.95,
        );
        close(fuzzy_match("this is a test", "this is a test!"), 1.0);
    }

    #[test]
    fn partial_paths_match_rapidfuzz() {
        close(fuzzy_match("New York", "new york city"), 0.9);
        close(
            fuzzy_match(
                "short",
                "this is a much longer reference that contains short somewhere",
            ),
            0.6,
        );
    }

    #[test]
    fn unicode_inputs_match_rapidfuzz() {
        close(fuzzy_match("Straße", "strasse"), 0.7692307692307692);
        close(fuzzy_match("café naïve", "cafe naive"), 0.8);
    }
}
