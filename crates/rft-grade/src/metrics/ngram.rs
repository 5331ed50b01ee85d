//! N-gram matching shared by BLEU, GLEU and ROUGE-N, which count the same thing: for each
//! n-gram, the smaller of its counts on the two sides, summed (Python's `Counter & Counter`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Numbers words (as UTF-8 bytes) densely from 0 in order of first appearance; the two texts of
/// a pair go through one `Vocab`, so equal words get equal ids.
///
/// Words of up to 15 bytes (nearly all) are packed into an integer key by [`pack_word`], which
/// hashes and compares much faster than a string.
pub(super) struct Vocab<'a> {
    short: IdTable<u64>,
    medium: IdTable<u128>,
    /// Words of 16 bytes or more, under std's hasher.
    long: HashMap<&'a [u8], u32>,
    len: u32,
}

impl Default for Vocab<'_> {
    fn default() -> Self {
        Self {
            short: IdTable::with_capacity(64),
            medium: IdTable::with_capacity(16),
            long: HashMap::new(),
            len: 0,
        }
    }
}

impl<'a> Vocab<'a> {
    /// The ids of `words`, of which there are about `expected` (room is made for that many).
    pub(super) fn ids(
        &mut self,
        words: impl Iterator<Item = &'a [u8]>,
        expected: usize,
    ) -> Vec<u32> {
        let mut ids = Vec::with_capacity(expected);
        ids.extend(words.map(|word| self.id(word)));
        ids
    }

    /// How many distinct words it has seen: every id is below this.
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }

    fn id(&mut self, word: &'a [u8]) -> u32 {
        let next = self.len;
        let id = match pack_word(word) {
            PackedWord::Short(key) => self.short.get_or_insert(key, next),
            PackedWord::Medium(key) => self.medium.get_or_insert(key, next),
            PackedWord::Long => *self.long.entry(word).or_insert(next),
        };
        if id == next {
            self.len += 1;
        }
        id
    }
}

/// A word as an integer key: its bytes in the low bytes and its length in the top byte, so
/// distinct words get distinct keys (NUL bytes included).
enum PackedWord {
    /// Up to 7 bytes.
    Short(u64),
    /// 8 to 15 bytes.
    Medium(u128),
    /// Longer.
    Long,
}

fn pack_word(word: &[u8]) -> PackedWord {
    let len = word.len();
    if len >= 16 {
        return PackedWord::Long;
    }
    // Reading the first and the last bytes as whole integers is cheaper than a byte loop; the two
    // reads overlap, and agree, where the word is shorter than both together.
    if let (Some(&first), Some(&last)) = (word.first_chunk::<8>(), word.last_chunk::<8>()) {
        // Bytes 8.. of the word are the top len - 8 bytes of `last` (none when len is 8).
        let rest = u64::from_le_bytes(last)
            .checked_shr(8 * (16 - len) as u32)
            .unwrap_or(0);
        let bytes = u128::from(u64::from_le_bytes(first)) | u128::from(rest) << 64;
        return PackedWord::Medium(bytes | (len as u128) << 120);
    }
    let bytes = match (word.first_chunk::<4>(), word.last_chunk::<4>()) {
        (Some(&first), Some(&last)) => {
            u64::from(u32::from_le_bytes(first))
                | u64::from(u32::from_le_bytes(last)) << (8 * (len - 4))
        }
        _ => word
            .iter()
            .enumerate()
            .fold(0, |key, (i, &b)| key | u64::from(b) << (8 * i)),
    };
    PackedWord::Short(bytes | (len as u64) << 56)
}

/// Room to make for the words of `text`: enough for most text (a word and a space take 4 bytes
/// or more), so the id vector rarely has to grow.
pub(super) fn expected_words(text: &str) -> usize {
    text.len() / 4 + 1
}

/// Marks an n-gram position that cannot match: its prefix is missing from the other side.
const DEAD: u32 = u32::MAX;

/// For each order n in 1..=`matches.len()`, sets `matches[n - 1]` to the sum over n-grams of
/// min(count in `hyp`, count in `refs`), i.e. `sum((Counter(hyp_ngrams) & Counter(ref_ngrams))
/// .values())`. Words are ids below `vocab_len`.
///
/// The n-grams of one order are numbered from (id of their first n - 1 words, last word), so each
/// is looked up as one `u64`. Only the reference's n-grams are inserted; a hypothesis n-gram that
/// is not found cannot match, nor can any longer n-gram starting with it, so its position is
/// marked [`DEAD`] and skipped from then on (likewise for reference n-grams the hypothesis lacks).
/// Counting a hypothesis occurrence against the reference's remaining count adds up to min(h, r).
pub(super) fn clipped_matches(hyp: &[u32], refs: &[u32], vocab_len: usize, matches: &mut [u64]) {
    matches.fill(0);
    if hyp.is_empty() || refs.is_empty() || matches.is_empty() {
        return;
    }
    let mut hyp_ids = hyp.to_vec();
    let mut ref_ids = refs.to_vec();
    // Per id of the current order: the reference's not yet matched occurrences, and whether
    // the hypothesis has it at all.
    let mut remaining = vec![0u32; vocab_len];
    let mut in_hyp = vec![false; vocab_len];
    for &id in refs {
        remaining[id as usize] += 1;
    }
    let mut table: IdTable<u64> = IdTable::with_capacity(refs.len());
    for order in 1..=matches.len() {
        if hyp.len() < order || refs.len() < order {
            break;
        }
        if order > 1 {
            table.clear();
            remaining.clear();
            in_hyp.clear();
            ref_ids.truncate(refs.len() + 1 - order);
            for (id, &last) in ref_ids.iter_mut().zip(&refs[order - 1..]) {
                if *id != DEAD {
                    let next = table.len();
                    *id = table.get_or_insert(gram_key(*id, last), next);
                    if *id == next {
                        remaining.push(0);
                        in_hyp.push(false);
                    }
                    remaining[*id as usize] += 1;
                }
            }
        }
        let mut matched = 0;
        hyp_ids.truncate(hyp.len() + 1 - order);
        for (id, &last) in hyp_ids.iter_mut().zip(&hyp[order - 1..]) {
            if *id == DEAD {
                continue;
            }
            let found = if order == 1 {
                // The reference has the word iff it counted it: `remaining` still shows it, or
                // earlier occurrences used it up, and those marked it `in_hyp`.
                Some(*id).filter(|&word| remaining[word as usize] > 0 || in_hyp[word as usize])
            } else {
                table.get(gram_key(*id, last))
            };
            match found {
                None => *id = DEAD,
                Some(gram) => {
                    *id = gram;
                    in_hyp[gram as usize] = true;
                    let left = &mut remaining[gram as usize];
                    if *left > 0 {
                        *left -= 1;
                        matched += 1;
                    }
                }
            }
        }
        matches[order - 1] = matched;
        if matched == 0 {
            // No n-gram in common means no longer one either.
            break;
        }
        for id in ref_ids.iter_mut() {
            if *id != DEAD && !in_hyp[*id as usize] {
                *id = DEAD;
            }
        }
    }
}

/// The key of the n-gram made of the (n - 1)-gram `prefix` and the word `last`.
fn gram_key(prefix: u32, last: u32) -> u64 {
    (u64::from(prefix) << 32) | u64::from(last)
}

/// `sum((Counter(hyp_ngrams) & Counter(ref_ngrams)).values())` for the single order `n` >= 1.
///
/// When `n` word ids fit in 128 bits together (always for n <= 4), each n-gram is looked up
/// directly under that packed key, without going through the shorter orders as
/// [`clipped_matches`] does; otherwise this falls back to it.
pub(super) fn ngram_matches(hyp: &[u32], refs: &[u32], vocab_len: usize, n: usize) -> u64 {
    if n == 0 || hyp.len() < n || refs.len() < n {
        return 0;
    }
    let bits = 128 / n;
    if n == 1 || bits > 64 || (vocab_len as u128) > (1u128 << bits) {
        let mut matches = vec![0; n];
        clipped_matches(hyp, refs, vocab_len, &mut matches);
        return matches[n - 1];
    }
    let key = |gram: &[u32]| {
        gram.iter()
            .fold(0u128, |key, &id| (key << bits) | u128::from(id))
    };
    let mut table: IdTable<u128> = IdTable::with_capacity(refs.len());
    let mut remaining: Vec<u32> = Vec::with_capacity(refs.len());
    for gram in refs.windows(n) {
        let next = table.len();
        let id = table.get_or_insert(key(gram), next);
        if id == next {
            remaining.push(0);
        }
        remaining[id as usize] += 1;
    }
    let mut matched = 0;
    for gram in hyp.windows(n) {
        if let Some(id) = table.get(key(gram)) {
            let left = &mut remaining[id as usize];
            if *left > 0 {
                *left -= 1;
                matched += 1;
            }
        }
    }
    matched
}

/// An integer key that [`IdTable`] can hash.
trait TableKey: Copy + Eq + Default {
    /// A 64-bit value whose top bits pick the slot: multiply-shift hashing with random odd
    /// `multipliers`, which whoever wrote the text cannot know, so cannot aim keys at one slot.
    fn spread(self, multipliers: [u64; 2]) -> u64;
}

impl TableKey for u64 {
    fn spread(self, multipliers: [u64; 2]) -> u64 {
        self.wrapping_mul(multipliers[0])
    }
}

impl TableKey for u128 {
    fn spread(self, multipliers: [u64; 2]) -> u64 {
        (self as u64)
            .wrapping_mul(multipliers[0])
            .wrapping_add(((self >> 64) as u64).wrapping_mul(multipliers[1]))
    }
}

/// A map from integer keys to `u32` ids: open addressing with linear probing, at most half full.
///
/// It does one job (look up or add an id) for the hot loops above, where it is markedly faster
/// than std's `HashMap` with its DoS-resistant SipHash; the random multipliers keep it safe from
/// crafted input all the same.
struct IdTable<K> {
    /// `(key, id)`, with id [`DEAD`] for an empty slot.
    slots: Vec<(K, u32)>,
    /// 64 - log2(slots.len()): a spread key shifted right by this is a slot index.
    shift: u32,
    len: u32,
    multipliers: [u64; 2],
}

impl<K: TableKey> IdTable<K> {
    /// A table that holds `capacity` keys without growing.
    fn with_capacity(capacity: usize) -> Self {
        // std's RandomState holds fresh random keys; one SipHash of them seeds both multipliers.
        let random = RandomState::new().hash_one(0u8);
        let slots = (2 * capacity).next_power_of_two().max(16);
        Self {
            slots: vec![(K::default(), DEAD); slots],
            shift: 64 - slots.trailing_zeros(),
            len: 0,
            multipliers: [
                random | 1,
                random.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            ],
        }
    }

    /// How many keys it holds.
    fn len(&self) -> u32 {
        self.len
    }

    fn clear(&mut self) {
        self.slots.fill((K::default(), DEAD));
        self.len = 0;
    }

    fn slot(&self, key: K) -> usize {
        (key.spread(self.multipliers) >> self.shift) as usize
    }

    fn get(&self, key: K) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.slot(key);
        loop {
            let (k, id) = self.slots[i];
            if id == DEAD {
                return None;
            }
            if k == key {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// The id of `key`, which gets `id` if it is new.
    fn get_or_insert(&mut self, key: K, id: u32) -> u32 {
        if 2 * (self.len as usize + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(key);
        loop {
            let (k, found) = self.slots[i];
            if found == DEAD {
                self.slots[i] = (key, id);
                self.len += 1;
                return id;
            }
            if k == key {
                return found;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let doubled = vec![(K::default(), DEAD); 2 * self.slots.len()];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.shift -= 1;
        let mask = self.slots.len() - 1;
        for (key, id) in old.into_iter().filter(|&(_, id)| id != DEAD) {
            let mut i = self.slot(key);
            while self.slots[i].1 != DEAD {
                i = (i + 1) & mask;
            }
            self.slots[i] = (key, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_matches_equals_counter_intersection() {
        // A naive `sum((Counter(a_ngrams) & Counter(b_ngrams)).values())` per order.
        fn naive(a: &[u32], b: &[u32], n: usize) -> u64 {
            let count = |s: &[u32]| {
                let mut m: HashMap<Vec<u32>, u64> = HashMap::new();
                for g in s.windows(n) {
                    *m.entry(g.to_vec()).or_insert(0) += 1;
                }
                m
            };
            let (ca, cb) = (count(a), count(b));
            ca.iter()
                .map(|(g, &c)| c.min(cb.get(g).copied().unwrap_or(0)))
                .sum()
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..500 {
            let alphabet = 1 + next() % 5;
            let a: Vec<u32> = (0..next() % 40)
                .map(|_| (next() % alphabet) as u32)
                .collect();
            let b: Vec<u32> = (0..next() % 40)
                .map(|_| (next() % alphabet) as u32)
                .collect();
            let mut got = [0u64; 6];
            clipped_matches(&a, &b, alphabet as usize, &mut got);
            for n in 1..=6 {
                let expected = naive(&a, &b, n);
                assert_eq!(got[n - 1], expected, "order {n}: {a:?} {b:?}");
                assert_eq!(ngram_matches(&a, &b, alphabet as usize, n), expected);
                // A vocabulary too large to pack n ids into 128 bits takes the other path.
                assert_eq!(ngram_matches(&a, &b, 1 << 30, n), expected);
            }
        }
    }

    #[test]
    fn id_table_grows_and_keeps_ids() {
        let mut table: IdTable<u128> = IdTable::with_capacity(1);
        for key in 0..1000u32 {
            assert_eq!(table.get_or_insert(u128::from(key) << 70, key), key);
        }
        for key in 0..1000u32 {
            assert_eq!(table.get(u128::from(key) << 70), Some(key));
            assert_eq!(table.get_or_insert(u128::from(key) << 70, 5000), key);
        }
        assert_eq!(table.get(1), None);
        assert_eq!(table.len(), 1000);
    }

    #[test]
    fn pack_word_keeps_every_byte_and_the_length() {
        // Distinct words (NUL bytes included) of every packable length get distinct keys.
        let mut seen = std::collections::HashSet::new();
        for len in 0..16 {
            for pattern in 0..512u32 {
                let word: Vec<u8> = (0..len)
                    .map(|i| {
                        if pattern >> (i % 9) & 1 == 1 {
                            0
                        } else {
                            b'a' + i as u8
                        }
                    })
                    .collect();
                let key = match pack_word(&word) {
                    // Short keys live in their own table; the top bit keeps them apart here.
                    PackedWord::Short(key) => u128::from(key) | 1 << 127,
                    PackedWord::Medium(key) => key,
                    PackedWord::Long => panic!("{len} bytes should pack"),
                };
                let distinct_words = 1u32 << len.min(9);
                assert!(seen.insert(key) || pattern >= distinct_words, "{word:?}");
            }
        }
        assert!(matches!(pack_word(&[b'x'; 16]), PackedWord::Long));
    }

    #[test]
    fn vocab_numbers_words_across_both_texts() {
        let long = "a-rather-long-word".as_bytes();
        let mut vocab = Vocab::default();
        let a = vocab.ids([&b"x"[..], b"", b"x\0", long, b"x"].into_iter(), 1);
        let b = vocab.ids([long, &b"y"[..], b"x", b"0123456789"].into_iter(), 1);
        assert_eq!(
            (a, b, vocab.len()),
            (vec![0, 1, 2, 3, 0], vec![3, 4, 0, 5], 6)
        );
    }
}
