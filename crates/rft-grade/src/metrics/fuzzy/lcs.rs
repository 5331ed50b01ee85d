//! Longest common subsequence as rapidfuzz-cpp 3.14.6 computes it (`distance/LCSseq_impl.hpp`).
//!
//! Every score in `fuzz` derives from Indel distances, `indel(a, b) = |a| + |b| - 2 * lcs(a, b)`.
//! rapidfuzz computes the LCS bit-parallel (Hyyrö, "Bit-Parallel LCS-length Computation
//! Revisited", 2004): a [`Pattern`] holds, for each distinct character of one string, the mask of
//! its positions (64 per word), and each character of the other string updates the DP row in
//! `ceil(len / 64)` word operations.
//!
//! When a caller passes a cutoff (the smallest LCS worth knowing), rapidfuzz picks among
//! shortcuts whose result is only promised when the LCS reaches the cutoff. One of them,
//! `lcs_blockwise`, the Ukkonen-banded variant, does not keep that promise: after each text
//! character its band grows by one position too few on the side of the pattern's end, so at a
//! 64-position word boundary an optimal alignment that runs along that edge of the band is cut,
//! and the call reports 0 although the LCS reaches the cutoff (for instance
//! `LCSseq.similarity("012" + s, s + "AB", score_cutoff=190)` is 0 for some 190-character `s`).
//! Python users get those results, so [`lcs_seq_similarity`] and [`cached_lcs_seq_similarity`]
//! follow rapidfuzz's choice of algorithm and run that banded variant ([`lcs_blockwise`]) exactly
//! where it does. Everywhere else rapidfuzz's answer is the exact LCS, and
//! [`lcs_pattern_at_least`] computes it the quickest way it can, with a correct band.
//!
//! Characters are first given dense ids ([`Pattern::encode`]), so that the inner loops index an
//! array instead of hashing, and so that a text can be encoded once and scanned many times
//! (`partial_ratio` slides a window over it). Id 0 stands for every character that does not occur
//! in the pattern: its mask is all zeros, which leaves the DP row unchanged.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::pool::Buf;

/// Multiplicative hash for single code points: the default SipHash costs more than the LCS step
/// it serves for non-Latin text.
#[derive(Default)]
pub(super) struct CharHasher(u64);

impl Hasher for CharHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type CharMap = HashMap<u32, u32, BuildHasherDefault<CharHasher>>;

/// Number of 64-bit words needed for `len` positions.
fn words_for(len: usize) -> usize {
    len.div_ceil(64)
}

/// Occurrence masks of one string (the pattern), indexed by dense character id.
pub(super) struct Pattern {
    len: usize,
    words: usize,
    /// Ids of code points below 256, the common case after `default_process`. They are assigned
    /// first, so they fit in 16 bits, which halves the table a `Pattern` zeroes and moves.
    latin1: [u16; 256],
    /// Ids of every other code point of the pattern.
    other: CharMap,
    /// `masks[id * words + w]`: bit `i % 64` of word `i / 64` is set where the pattern holds the
    /// character `id`. Id 0 (absent characters) is all zeros.
    masks: Buf<u64>,
}

impl Pattern {
    /// Builds the masks of `pattern`.
    pub(super) fn new(pattern: &[u32]) -> Self {
        let words = words_for(pattern.len());
        let mut this = Pattern {
            len: pattern.len(),
            words,
            latin1: [0; 256],
            other: CharMap::default(),
            masks: Buf::new(),
        };
        // First the ids (those of code points below 256 before the others), so that the masks
        // are allocated once.
        let mut next_id = 1u32;
        for &ch in pattern {
            if ch < 256 && this.latin1[ch as usize] == 0 {
                // At most 256 such ids, so the cast is lossless.
                this.latin1[ch as usize] = next_id as u16;
                next_id += 1;
            }
        }
        for &ch in pattern {
            if ch >= 256 {
                this.other.entry(ch).or_insert_with(|| {
                    next_id += 1;
                    next_id - 1
                });
            }
        }
        this.masks.resize(next_id as usize * words, 0);
        for (pos, &ch) in pattern.iter().enumerate() {
            let id = this.id(ch) as usize;
            this.masks[id * words + pos / 64] |= 1u64 << (pos % 64);
        }
        this
    }

    /// Length of the pattern in code points.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Dense id of `ch`, 0 when the pattern does not contain it.
    #[inline]
    pub(super) fn id(&self, ch: u32) -> u32 {
        if ch < 256 {
            u32::from(self.latin1[ch as usize])
        } else {
            self.other.get(&ch).copied().unwrap_or(0)
        }
    }

    /// The ids of `text`'s characters, into `out`.
    pub(super) fn encode(&self, text: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.extend(text.iter().map(|&ch| self.id(ch)));
    }

    /// Masks of the reversed pattern, with the same ids: LCS(rev p, rev t) = LCS(p, t), which
    /// lets one right-to-left scan give the LCS of the pattern against every suffix of a text.
    pub(super) fn reversed_masks(&self) -> Buf<u64> {
        let words = self.words;
        let mut out = Buf::filled(self.masks.len(), 0u64);
        for (id, chunk) in self.masks.chunks_exact(words.max(1)).enumerate() {
            for (w, &word) in chunk.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let pos = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let rev = self.len - 1 - pos;
                    out[id * words + rev / 64] |= 1u64 << (rev % 64);
                }
            }
        }
        out
    }

    /// The forward masks.
    pub(super) fn masks(&self) -> &[u64] {
        &self.masks
    }

    /// Number of 64-bit words per mask.
    pub(super) fn words(&self) -> usize {
        self.words
    }

    /// LCS length of the pattern and the encoded text `ids`.
    pub(super) fn lcs(&self, ids: &[u32]) -> usize {
        lcs_masks(&self.masks, self.words, ids)
    }
}

/// LCS length of a pattern, given by its masks, and an encoded text.
pub(super) fn lcs_masks(masks: &[u64], words: usize, ids: &[u32]) -> usize {
    match words {
        0 => 0,
        1 => {
            let mut row = !0u64;
            for &id in ids {
                let matches = masks[id as usize];
                let u = row & matches;
                row = row.wrapping_add(u) | (row - u);
            }
            (!row).count_ones() as usize
        }
        _ => {
            let mut row = Buf::filled(words, !0u64);
            for &id in ids {
                if id != 0 {
                    let start = id as usize * words;
                    step(&mut row, &masks[start..start + words]);
                }
            }
            row.iter().map(|w| (!w).count_ones() as usize).sum()
        }
    }
}

/// One Hyyrö step on a multi-word row: `row = (row + u) | (row - u)` with `u = row & matches`,
/// the addition carrying across words.
#[inline]
fn step(row: &mut [u64], matches: &[u64]) {
    let mut carry = 0u64;
    for (word, &m) in row.iter_mut().zip(matches) {
        let w = *word;
        let u = w & m;
        // A 128-bit sum keeps the carry out of the 64-bit word in its upper half.
        let sum = u128::from(w) + u128::from(u) + u128::from(carry);
        carry = (sum >> 64) as u64;
        // `u` is a subset of `w`, so this subtraction never borrows.
        *word = (sum as u64) | (w - u);
    }
}

/// A DP row fed one character at a time, for the LCS of a pattern against every prefix of a text.
pub(super) struct Scan<'a> {
    masks: &'a [u64],
    words: usize,
    row: Buf<u64>,
}

impl<'a> Scan<'a> {
    /// A scan of the pattern whose masks are `masks` (`words` words each).
    pub(super) fn new(masks: &'a [u64], words: usize) -> Self {
        Scan {
            masks,
            words,
            row: Buf::filled(words, !0u64),
        }
    }

    /// Appends the character with id `id` to the text.
    #[inline]
    pub(super) fn feed(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        let start = id as usize * self.words;
        if self.words == 1 {
            let row = self.row[0];
            let u = row & self.masks[start];
            self.row[0] = row.wrapping_add(u) | (row - u);
        } else {
            step(&mut self.row, &self.masks[start..start + self.words]);
        }
    }

    /// LCS of the pattern and the text fed so far.
    pub(super) fn lcs(&self) -> usize {
        self.row.iter().map(|w| (!w).count_ones() as usize).sum()
    }
}

/// rapidfuzz's `lcs_blockwise`: Hyyrö's algorithm updating only the words of the Ukkonen band for
/// alignments with at least `cutoff` matches, with rapidfuzz's band bounds (see the module doc).
/// Returns the banded LCS when it reaches `cutoff`, else 0. Requires `cutoff <= m` (the pattern
/// length) and `cutoff <= ids.len()`.
pub(super) fn lcs_blockwise(
    masks: &[u64],
    words: usize,
    m: usize,
    ids: &[u32],
    cutoff: usize,
) -> usize {
    let n = ids.len();
    let band_left = m - cutoff;
    let band_right = n - cutoff;
    let mut row_bits = Buf::filled(words, !0u64);
    let mut first_block = 0;
    let mut last_block = words.min((band_left + 1).div_ceil(64));
    for (row, &id) in ids.iter().enumerate() {
        // An absent character leaves the row as it is.
        if id != 0 {
            let start = id as usize * words;
            step(
                &mut row_bits[first_block..last_block],
                &masks[start + first_block..start + last_block],
            );
        }
        if row > band_right {
            first_block = (row - band_right) / 64;
        }
        if row + 1 + band_left <= m {
            last_block = (row + 1 + band_left).div_ceil(64);
        }
    }
    let sim: usize = row_bits.iter().map(|w| (!w).count_ones() as usize).sum();
    if sim >= cutoff {
        sim
    } else {
        0
    }
}

/// Hyyrö's algorithm restricted to the Ukkonen band that holds every alignment with at least
/// `need` matches: the result is exact when it reaches `need`, and never more than the LCS. A
/// match of pattern position `i` with text position `j` in such an alignment has
/// `-(n - need) <= i - j <= m - need`; row `j` updates the words holding those positions (plus
/// one position below, as rapidfuzz does), which, unlike [`lcs_blockwise`], includes the top one.
fn lcs_band(masks: &[u64], words: usize, m: usize, ids: &[u32], need: usize) -> usize {
    let n = ids.len();
    debug_assert!(need <= m && need <= n);
    let band_left = m - need;
    let band_right = n - need;
    let mut row_bits = Buf::filled(words, !0u64);
    for (row, &id) in ids.iter().enumerate() {
        if id == 0 {
            continue;
        }
        let first_block = row.saturating_sub(band_right + 1) / 64;
        let last_block = words.min((row + band_left) / 64 + 1);
        let start = id as usize * words;
        step(
            &mut row_bits[first_block..last_block],
            &masks[start + first_block..start + last_block],
        );
    }
    row_bits.iter().map(|w| (!w).count_ones() as usize).sum()
}

/// The exact LCS of a pattern and an encoded text when it is at least `need`, otherwise some
/// value below `need`.
///
/// First tries a band that assumes few unmatched characters in the shorter string. If the LCS
/// falls short of that band's threshold, the band's result still bounds the number of unmatched
/// characters, which sizes the second (last) band; bands that would cover most of the matrix give
/// way to the full computation.
pub(super) fn lcs_pattern_at_least(pattern: &Pattern, ids: &[u32], need: usize) -> usize {
    let words = pattern.words();
    let m = pattern.len();
    let n = ids.len();
    if need > m || need > n {
        return 0;
    }
    if words <= 1 {
        return pattern.lcs(ids);
    }
    let shorter = m.min(n);
    let mut slack = 32;
    for _ in 0..2 {
        let try_need = need.max(shorter.saturating_sub(slack));
        let band_words = (m - try_need + n - try_need) / 64 + 2;
        if band_words * 2 >= words {
            // The band would cover most of the matrix anyway.
            break;
        }
        let sim = lcs_band(pattern.masks(), words, m, ids, try_need);
        if sim >= try_need {
            return sim;
        }
        if try_need == need {
            return 0;
        }
        // The LCS is at least `sim`, so at most `shorter - sim` characters go unmatched.
        slack = shorter - sim;
    }
    let sim = if need > 0 {
        lcs_band(pattern.masks(), words, m, ids, need)
    } else {
        pattern.lcs(ids)
    };
    if sim >= need {
        sim
    } else {
        0
    }
}

/// Lengths of the common prefix and suffix of `a` and `b` (not overlapping).
fn common_affix(a: &[u32], b: &[u32]) -> (usize, usize) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (prefix, suffix)
}

/// Whether `short` is a subsequence of `long` (then it is their LCS), by a greedy scan.
fn is_subsequence(short: &[u32], long: &[u32]) -> bool {
    let mut rest = short.iter().peekable();
    for &ch in long {
        match rest.peek() {
            Some(&&want) if want == ch => {
                rest.next();
            }
            Some(_) => {}
            None => return true,
        }
    }
    rest.peek().is_none()
}

/// One row of rapidfuzz's `lcs_seq_mbleven2018_matrix`: for a maximum number of misses and a
/// length difference, the edit sequences (two bits per step: 1 delete, 2 insert) worth trying.
const MBLEVEN_MATRIX: [[u8; 6]; 14] = [
    // max misses 1
    [0, 0, 0, 0, 0, 0],
    [0x01, 0, 0, 0, 0, 0],
    // max misses 2
    [0x09, 0x06, 0, 0, 0, 0],
    [0x01, 0, 0, 0, 0, 0],
    [0x05, 0, 0, 0, 0, 0],
    // max misses 3
    [0x09, 0x06, 0, 0, 0, 0],
    [0x25, 0x19, 0x16, 0, 0, 0],
    [0x05, 0, 0, 0, 0, 0],
    [0x15, 0, 0, 0, 0, 0],
    // max misses 4
    [0x96, 0x66, 0x5A, 0x99, 0x69, 0xA5],
    [0x25, 0x19, 0x16, 0, 0, 0],
    [0x65, 0x56, 0x95, 0x59, 0, 0],
    [0x15, 0, 0, 0, 0, 0],
    [0x55, 0, 0, 0, 0, 0],
];

/// rapidfuzz's `lcs_seq_mbleven2018`, for at most 4 misses: the best LCS over a fixed set of
/// edit sequences, or 0 below `cutoff`. Both strings are non-empty.
fn mbleven(s1: &[u32], s2: &[u32], cutoff: usize) -> usize {
    if s1.len() < s2.len() {
        return mbleven(s2, s1, cutoff);
    }
    let len_diff = s1.len() - s2.len();
    let max_misses = s1.len() + s2.len() - 2 * cutoff;
    let ops_index = (max_misses + max_misses * max_misses) / 2 + len_diff;
    let Some(possible_ops) = ops_index.checked_sub(1).and_then(|i| MBLEVEN_MATRIX.get(i)) else {
        return 0;
    };
    let mut max_len = 0;
    for &ops in possible_ops {
        if ops == 0 {
            break;
        }
        let mut ops = ops;
        let (mut i, mut j, mut cur_len) = (0, 0, 0);
        while i < s1.len() && j < s2.len() {
            if s1[i] != s2[j] {
                if ops == 0 {
                    break;
                }
                if ops & 1 != 0 {
                    i += 1;
                } else if ops & 2 != 0 {
                    j += 1;
                }
                ops >>= 2;
            } else {
                cur_len += 1;
                i += 1;
                j += 1;
            }
        }
        max_len = max_len.max(cur_len);
    }
    if max_len >= cutoff {
        max_len
    } else {
        0
    }
}

/// Whether rapidfuzz's `longest_common_subsequence(PM, s1, s2, cutoff)` (pattern length `len1`,
/// text length `len2`) runs `lcs_blockwise` with a band narrow enough to matter; otherwise its
/// result is the exact LCS (0 below the cutoff).
fn uses_narrow_blockwise(len1: usize, len2: usize, cutoff: usize) -> bool {
    let words = len1.div_ceil(64);
    let band_left = len1 - cutoff;
    let band_right = len2 - cutoff;
    let full_band_words = words.min((band_left + 1 + band_right) / 64 + 2);
    let blockwise = full_band_words < words || words > 8;
    // The band covers every word of every row when the first block never moves (its last update
    // is (len2 - 1 - band_right) / 64 = (cutoff - 1) / 64) and the last block starts at `words`.
    let full = cutoff <= 64 && band_left + 1 > 64 * words.saturating_sub(1);
    blockwise && !full
}

/// rapidfuzz's uncached `lcs_seq_similarity(s1, s2, score_cutoff)` (what `Indel` distances and
/// `fuzz::ratio` use): the LCS when it reaches `cutoff`, else 0, with rapidfuzz's shortcuts.
pub(super) fn lcs_seq_similarity(s1: &[u32], s2: &[u32], cutoff: usize) -> usize {
    // The longer string is the pattern.
    let (s1, s2) = if s1.len() < s2.len() {
        (s2, s1)
    } else {
        (s1, s2)
    };
    let (len1, len2) = (s1.len(), s2.len());
    if cutoff > len2 {
        return 0;
    }
    let max_misses = len1 + len2 - 2 * cutoff;
    if max_misses == 0 || (max_misses == 1 && len1 == len2) {
        return if s1 == s2 { len1 } else { 0 };
    }
    if max_misses < len1 - len2 {
        return 0;
    }
    let (prefix, suffix) = common_affix(s1, s2);
    let a = &s1[prefix..len1 - suffix];
    let b = &s2[prefix..len2 - suffix];
    let mut sim = prefix + suffix;
    if !a.is_empty() && !b.is_empty() {
        let adjusted_cutoff = cutoff.saturating_sub(sim);
        if max_misses < 5 {
            sim += mbleven(a, b, adjusted_cutoff);
        } else if uses_narrow_blockwise(a.len(), b.len(), adjusted_cutoff) {
            let pattern = Pattern::new(a);
            let mut ids = Buf::new();
            pattern.encode(b, &mut ids);
            sim += lcs_blockwise(
                pattern.masks(),
                pattern.words(),
                a.len(),
                &ids,
                adjusted_cutoff,
            );
        } else {
            // rapidfuzz's result is the exact LCS here, whichever string is the pattern; the
            // shorter one makes fewer words per step.
            let (p, text) = if a.len() <= b.len() { (a, b) } else { (b, a) };
            let exact = if is_subsequence(p, text) {
                // Common for a text against an edited copy with words added.
                p.len()
            } else {
                let pattern = Pattern::new(p);
                let mut ids = Buf::new();
                pattern.encode(text, &mut ids);
                lcs_pattern_at_least(&pattern, &ids, adjusted_cutoff)
            };
            if exact >= adjusted_cutoff {
                sim += exact;
            }
        }
    }
    if sim >= cutoff {
        sim
    } else {
        0
    }
}

/// rapidfuzz's cached `lcs_seq_similarity(PM, s1, s2, score_cutoff)` (what `CachedIndel` uses):
/// `pattern` is built from `s1`, `ids` is `s2` encoded with it, and `exact` is their exact LCS,
/// already known to the caller.
pub(super) fn cached_lcs_seq_similarity(
    pattern: &Pattern,
    s1: &[u32],
    s2: &[u32],
    ids: &[u32],
    exact: usize,
    cutoff: usize,
) -> usize {
    let (len1, len2) = (s1.len(), s2.len());
    if cutoff > len1 || cutoff > len2 {
        return 0;
    }
    let max_misses = len1 + len2 - 2 * cutoff;
    if max_misses == 0 || (max_misses == 1 && len1 == len2) {
        return if s1 == s2 { len1 } else { 0 };
    }
    if max_misses < len1.abs_diff(len2) {
        return 0;
    }
    if max_misses >= 5 {
        // The banded variant never reports more than the LCS, so below the cutoff it gives 0 too.
        if exact < cutoff {
            return 0;
        }
        return if uses_narrow_blockwise(len1, len2, cutoff) {
            lcs_blockwise(pattern.masks(), pattern.words(), len1, ids, cutoff)
        } else {
            exact
        };
    }
    let (prefix, suffix) = common_affix(s1, s2);
    let a = &s1[prefix..len1 - suffix];
    let b = &s2[prefix..len2 - suffix];
    let mut sim = prefix + suffix;
    if !a.is_empty() && !b.is_empty() {
        sim += mbleven(a, b, cutoff.saturating_sub(sim));
    }
    if sim >= cutoff {
        sim
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact LCS of `a` and `b` when it is at least `need`, otherwise some value below `need`.
    fn lcs_at_least(a: &[u32], b: &[u32], need: usize) -> usize {
        // A common prefix or suffix is always part of some longest common subsequence.
        let (prefix, suffix) = common_affix(a, b);
        let a = &a[prefix..a.len() - suffix];
        let b = &b[prefix..b.len() - suffix];
        let affix = prefix + suffix;
        if a.is_empty() || b.is_empty() {
            return affix;
        }
        // The shorter string as pattern means fewer words per step.
        let (pattern, text) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        let pattern = Pattern::new(pattern);
        let mut ids = Vec::with_capacity(text.len());
        pattern.encode(text, &mut ids);
        let sim = lcs_pattern_at_least(&pattern, &ids, need.saturating_sub(affix));
        affix + sim
    }

    /// The exact LCS of two code-point strings.
    fn lcs(a: &[u32], b: &[u32]) -> usize {
        lcs_at_least(a, b, 0)
    }

    fn naive(a: &[u32], b: &[u32]) -> usize {
        let mut prev = vec![0usize; b.len() + 1];
        for &x in a {
            let mut cur = vec![0usize; b.len() + 1];
            for (j, &y) in b.iter().enumerate() {
                cur[j + 1] = if x == y {
                    prev[j] + 1
                } else {
                    cur[j].max(prev[j + 1])
                };
            }
            prev = cur;
        }
        prev[b.len()]
    }

    fn codes(s: &str) -> Vec<u32> {
        s.chars().map(u32::from).collect()
    }

    /// xorshift64, so that the tests need no extra crate and are reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }

        fn string(&mut self, len: usize, alphabet: u64) -> Vec<u32> {
            (0..len)
                .map(|_| 0x61 + self.below(alphabet) as u32)
                .collect()
        }

        /// `s` with about one character in `rate` deleted, replaced or followed by an insertion.
        fn mutate(&mut self, s: &[u32], rate: u64, alphabet: u64) -> Vec<u32> {
            let mut out = Vec::new();
            for &ch in s {
                match self.below(rate * 3) {
                    0 => {}
                    1 => out.push(0x61 + self.below(alphabet) as u32),
                    2 => {
                        out.push(ch);
                        out.push(0x61 + self.below(alphabet) as u32);
                    }
                    _ => out.push(ch),
                }
            }
            out
        }
    }

    /// A 0-based "pattern with `dels` extra characters in front" and "pattern with `ins` extra
    /// characters at the end": their optimal alignment runs along the edge of the Ukkonen band.
    fn band_edge_pair(len: usize, dels: usize, ins: usize) -> (Vec<u32>, Vec<u32>) {
        let body: Vec<u32> = (0..len)
            .map(|i| 0x61 + ((i * i * 7 + i * 3) % 26) as u32)
            .collect();
        let mut a: Vec<u32> = (0..dels).map(|i| 0x30 + i as u32).collect();
        a.extend_from_slice(&body);
        let mut b = body;
        b.extend((0..ins).map(|i| 0x41 + i as u32));
        (a, b)
    }

    #[test]
    fn exact_lcs_matches_the_quadratic_dp_across_word_boundaries() {
        let mut rng = Rng(0x1234_5678);
        for _ in 0..300 {
            let alphabet = 1 + rng.below(6) as u64;
            let len_a = rng.below(200);
            let a = rng.string(len_a, alphabet);
            let b = if rng.below(2) == 0 {
                let len_b = rng.below(200);
                rng.string(len_b, alphabet)
            } else {
                rng.mutate(&a, 5, alphabet)
            };
            assert_eq!(lcs(&a, &b), naive(&a, &b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn narrow_bands_are_exact_at_their_threshold() {
        let mut rng = Rng(0x9876_5432);
        let mut cases = Vec::new();
        for len in [130, 190, 200, 256, 300, 333] {
            for dels in 0..6 {
                for ins in 0..6 {
                    let (a, b) = band_edge_pair(len, dels, ins);
                    cases.push((b.clone(), a.clone()));
                    cases.push((a, b));
                }
            }
        }
        for _ in 0..300 {
            let alphabet = 2 + rng.below(5) as u64;
            let len_a = 60 + rng.below(400);
            let a = rng.string(len_a, alphabet);
            let mut b = rng.mutate(&a, 8, alphabet);
            let tail = rng.below(150);
            b.extend(rng.string(tail, alphabet));
            cases.push((a, b));
        }
        for (a, b) in &cases {
            let exact = naive(a, b);
            assert_eq!(lcs(a, b), exact);
            for need in [exact.saturating_sub(1), exact, exact + 1] {
                let got = lcs_at_least(a, b, need);
                if need <= exact {
                    assert_eq!(got, exact, "need {need}");
                } else {
                    assert!(got < need, "need {need}, got {got}, exact {exact}");
                }
            }
            let pattern = Pattern::new(a);
            let mut ids = Vec::new();
            pattern.encode(b, &mut ids);
            for need in [exact.saturating_sub(3), exact] {
                let got = lcs_band(pattern.masks(), pattern.words(), a.len(), &ids, need);
                assert_eq!(got, exact, "band, need {need}");
                // rapidfuzz's band may lose the alignment, but never overshoots.
                let got = lcs_blockwise(pattern.masks(), pattern.words(), a.len(), &ids, need);
                assert!(
                    got == 0 || (got >= need && got <= exact),
                    "blockwise {got} of {exact}"
                );
            }
        }
    }

    #[test]
    fn a_band_never_reports_more_than_the_lcs() {
        let mut rng = Rng(0x0BAD_5EED);
        for _ in 0..300 {
            let alphabet = 2 + rng.below(20) as u64;
            let len_a = 65 + rng.below(300);
            let a = rng.string(len_a, alphabet);
            let b = if rng.below(2) == 0 {
                let len_b = 1 + rng.below(400);
                rng.string(len_b, alphabet)
            } else {
                let rate = 2 + rng.below(6) as u64;
                rng.mutate(&a, rate, alphabet)
            };
            let exact = naive(&a, &b);
            let pattern = Pattern::new(&a);
            let mut ids = Vec::new();
            pattern.encode(&b, &mut ids);
            let top = a.len().min(b.len());
            for need in [0, exact / 2, exact, (exact + top) / 2, top] {
                let got = lcs_band(pattern.masks(), pattern.words(), a.len(), &ids, need);
                assert!(got <= exact, "band {got} over LCS {exact} at {need}");
                if need <= exact {
                    assert_eq!(got, exact);
                }
            }
            for need in [0, exact / 3, exact] {
                assert_eq!(lcs_pattern_at_least(&pattern, &ids, need), exact);
            }
        }
    }

    #[test]
    fn uncached_similarity_reproduces_rapidfuzz_losing_a_band_edge_alignment() {
        // LCSseq.similarity("012" + body, body + "AB", score_cutoff=190) is 0 in rapidfuzz 3.14.6
        // although the LCS is 190: the alignment runs along the band's edge.
        let (a, b) = band_edge_pair(190, 3, 2);
        assert_eq!(naive(&a, &b), 190);
        assert_eq!(lcs_seq_similarity(&a, &b, 190), 0);
        assert_eq!(lcs_seq_similarity(&a, &b, 189), 190);
        assert_eq!(lcs_seq_similarity(&a, &b, 0), 190);
    }

    #[test]
    fn uncached_similarity_is_exact_or_zero() {
        let mut rng = Rng(0x5555_1234);
        for _ in 0..500 {
            let alphabet = 2 + rng.below(4) as u64;
            let len_a = rng.below(300);
            let a = rng.string(len_a, alphabet);
            let rate = 4 + rng.below(10) as u64;
            let b = rng.mutate(&a, rate, alphabet);
            let exact = naive(&a, &b);
            for cutoff in [0, exact / 2, exact.saturating_sub(2), exact, exact + 1] {
                let got = lcs_seq_similarity(&a, &b, cutoff);
                if cutoff > exact {
                    assert_eq!(got, 0);
                } else {
                    assert!(got == exact || got == 0, "{got} vs {exact} at {cutoff}");
                }
                if cutoff == 0 {
                    assert_eq!(got, exact);
                }
            }
        }
    }

    #[test]
    fn mbleven_finds_every_lcs_within_four_misses() {
        // Every pair of strings over {a, b, c} up to length 4 without a common prefix or suffix
        // (rapidfuzz strips those first), in every case its callers send to mbleven.
        let mut strings = vec![Vec::new()];
        for len in 1..=4u32 {
            for code in 0..3u32.pow(len) {
                strings.push((0..len).map(|k| 0x61 + code / 3u32.pow(k) % 3).collect());
            }
        }
        for a in &strings {
            for b in &strings {
                if a.is_empty() || b.is_empty() || a[0] == b[0] || a.last() == b.last() {
                    continue;
                }
                let exact = naive(a, b);
                for cutoff in 0..=a.len().min(b.len()) {
                    let max_misses = a.len() + b.len() - 2 * cutoff;
                    if max_misses >= 5
                        || max_misses < a.len().abs_diff(b.len())
                        || max_misses == 0
                        || (max_misses == 1 && a.len() == b.len())
                    {
                        continue;
                    }
                    let expected = if exact >= cutoff { exact } else { 0 };
                    assert_eq!(mbleven(a, b, cutoff), expected, "{a:?} {b:?} {cutoff}");
                }
            }
        }
    }

    #[test]
    fn subsequence_check_is_exact() {
        assert!(is_subsequence(&codes("ace"), &codes("abcde")));
        assert!(is_subsequence(&codes(""), &codes("abc")));
        assert!(!is_subsequence(&codes("aec"), &codes("abcde")));
        assert!(!is_subsequence(&codes("abcdef"), &codes("abcde")));
        // With words added, the shorter text is the LCS.
        let a = codes("the cat sat on the mat");
        let b = codes("the big cat sat down on the mat today");
        assert!(is_subsequence(&a, &b));
        assert_eq!(lcs_seq_similarity(&a, &b, 0), naive(&a, &b));
    }

    #[test]
    fn lcs_handles_non_latin_characters() {
        let a = codes("日本語のテキスト");
        let b = codes("日本語");
        assert_eq!(lcs(&a, &b), 3);
        assert_eq!(lcs(&codes("😀x😀"), &codes("x😀")), 2);
    }

    #[test]
    fn reversed_masks_give_suffix_lcs() {
        let pattern = codes("abcab");
        let text = codes("xxbcabyab");
        let pat = Pattern::new(&pattern);
        let rev = pat.reversed_masks();
        let mut ids = Vec::new();
        pat.encode(&text, &mut ids);
        let mut scan = Scan::new(&rev, pat.words());
        for start in (0..text.len()).rev() {
            scan.feed(ids[start]);
            assert_eq!(scan.lcs(), naive(&pattern, &text[start..]));
        }
    }
}
