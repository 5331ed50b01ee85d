//! A reader for Princeton WordNet 3.0 in its original database format (Debian's `wordnet-base`,
//! installed in `/usr/share/wordnet`), reproducing what nltk 3.10.4's
//! `nltk.corpus.reader.wordnet.WordNetCorpusReader` returns from
//! `[l for s in wordnet.synsets(word) for l in s.lemma_names()]`, the one query METEOR makes.
//!
//! That query, as nltk answers it:
//! - `synsets` lowercases the word, then for each part of speech in `POS_LIST` order (noun, verb,
//!   adjective, adverb; adjective satellites are reached through the adjective index) runs
//!   `_morphy`: if the word is in that part of speech's exception list (`noun.exc`, ...), its
//!   listed base forms, otherwise the forms given by applying each suffix substitution rule once;
//!   the word itself plus those forms, kept when the index holds them under that part of speech,
//!   without duplicates, in order.
//! - Each kept form's synset offsets come from `index.<pos>` in file order, and each synset's
//!   lemma names from its line in `data.<pos>`, with the adjective syntactic marker (`(a)`,
//!   `(p)`, `(ip)`) removed and the original case and underscores kept.
//!
//! Loading reads the twelve files (one thread per part of speech) and parses the index and
//! exception files into compact tables, without one allocation per lemma; the data files stay
//! in memory as text, and a synset line is read only when a query reaches its byte offset (which
//! is what the index stores). A [`WordNet`] is immutable, so it is shared freely across threads;
//! each thread remembers the synonyms it has looked up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::porter::py_lower;
use super::pytext::is_py_space;

/// The parts of speech in nltk's `POS_LIST` order, by their file suffix.
const POS_FILES: [&str; 4] = ["noun", "verb", "adj", "adv"];

/// The order in which nltk reads the files (`_FILEMAP`: adj, adv, noun, verb), as indices into
/// [`POS_FILES`]. Only a lemma listed twice could tell: the line read later wins.
const NLTK_FILE_ORDER: [usize; 4] = [2, 3, 0, 1];

/// nltk's `MORPHOLOGICAL_SUBSTITUTIONS`, in `POS_LIST` order.
const SUBSTITUTIONS: [&[(&str, &str)]; 4] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// Where the WordNet files are looked for when `RFT_WORDNET_DIR` is not set.
const DEFAULT_DIR: &str = "/usr/share/wordnet";

/// How many words' synonyms a thread remembers before starting afresh.
const SYNONYM_CACHE_WORDS: usize = 16_384;

/// Why WordNet could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WordNetError {
    /// A WordNet file is missing or unreadable.
    #[error(
        "cannot read WordNet file {path}: {source}; install WordNet 3.0 with \
         `apt-get install wordnet-base`, or set RFT_WORDNET_DIR to a folder holding its \
         index.*, data.* and *.exc files"
    )]
    Missing {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A WordNet file is not in the WordNet 3.0 database format.
    #[error(
        "WordNet file {path}, line {line}: {reason}; reinstall WordNet 3.0 with \
         `apt-get install --reinstall wordnet-base`"
    )]
    Malformed {
        /// The offending file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One line of an `index.<pos>` file: where its lemma is in that file's text, and where its
/// synset offsets are in that file's [`PosFiles::offsets`]. nltk refuses lines without synsets.
#[derive(Clone, Copy)]
struct Entry {
    file: u8,
    lemma_start: u32,
    lemma_len: u32,
    offsets_start: u32,
    offsets_len: u32,
}

/// The files of one part of speech, parsed.
#[derive(Default)]
struct PosFiles {
    /// `index.<pos>`, whole.
    index_text: String,
    /// Its lines, each with the part of speech written on it (`POS_FILES` index).
    lines: Vec<(usize, Entry)>,
    /// The synset offsets of its lines, referenced by [`Entry`]s.
    offsets: Vec<u32>,
    /// `<pos>.exc`: inflected form → base forms.
    exceptions: HashMap<Box<str>, Box<[Box<str>]>>,
    /// `data.<pos>`, whole; synset lines are found by the byte offsets the index stores.
    data: String,
}

/// WordNet 3.0, loaded from its database files, answering the synonym query nltk's METEOR makes.
pub struct WordNet {
    /// Tells WordNets apart in the per-thread synonym caches.
    id: u64,
    dir: PathBuf,
    /// By file (`POS_FILES` order).
    files: [PosFiles; 4],
    /// Per part of speech (`POS_LIST` order), the index lines tagged with it, in nltk's order.
    entries: [Vec<Entry>; 4],
    /// Per part of speech, an open-addressing hash table over `entries` keyed by lemma: the
    /// entry's index in the low half, the lemma's hash in the high half (so that probing rarely
    /// has to compare lemmas), `EMPTY` for a free slot.
    slots: [Vec<u64>; 4],
}

impl fmt::Debug for WordNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lemmas: Vec<usize> = self.entries.iter().map(Vec::len).collect();
        f.debug_struct("WordNet")
            .field("dir", &self.dir)
            .field("lemmas_per_pos", &lemmas)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, WordNetError> {
    std::fs::read_to_string(path).map_err(|source| WordNetError::Missing {
        path: path.to_owned(),
        source,
    })
}

fn malformed(path: &Path, line: usize, reason: impl Into<String>) -> WordNetError {
    WordNetError::Malformed {
        path: path.to_owned(),
        line,
        reason: reason.into(),
    }
}

/// Python's `int(token)` for the non-negative decimal numbers of the index files.
fn parse_number(token: Option<&str>, path: &Path, line: usize) -> Result<u32, WordNetError> {
    let token = token.ok_or_else(|| malformed(path, line, "line ends too early"))?;
    token
        .parse()
        .map_err(|_| malformed(path, line, format!("{token:?} is not a number")))
}

fn to_u32(value: usize, path: &Path, line: usize) -> Result<u32, WordNetError> {
    u32::try_from(value).map_err(|_| malformed(path, line, "file too large"))
}

impl WordNet {
    /// Loads WordNet from a folder holding `index.{noun,verb,adj,adv}`, `data.*` and `*.exc`
    /// (WordNet 3.0's `dict` folder; Debian installs it as `/usr/share/wordnet`).
    pub fn load(dir: &Path) -> Result<WordNet, WordNetError> {
        let loaded: Vec<Result<PosFiles, WordNetError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..POS_FILES.len())
                .map(|file| scope.spawn(move || load_pos_files(dir, file)))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
        });
        let mut files: [PosFiles; 4] = Default::default();
        let mut results: Vec<Option<Result<PosFiles, WordNetError>>> =
            loaded.into_iter().map(Some).collect();
        // Report the first failure in the order nltk would meet it.
        for file in NLTK_FILE_ORDER {
            if let Some(result) = results[file].take() {
                files[file] = result?;
            }
        }
        let mut entries: [Vec<Entry>; 4] = Default::default();
        for file in NLTK_FILE_ORDER {
            for &(pos, entry) in &files[file].lines {
                entries[pos].push(entry);
            }
        }
        let slots: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let files = &files;
            let workers: Vec<_> = entries
                .iter()
                .map(|list| scope.spawn(move || build_table(files, list)))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
        });
        let mut slot_tables: [Vec<u64>; 4] = Default::default();
        for (table, built) in slot_tables.iter_mut().zip(slots) {
            *table = built;
        }
        Ok(WordNet {
            id: NEXT_WORDNET_ID.fetch_add(1, Ordering::Relaxed),
            dir: dir.to_owned(),
            files,
            entries,
            slots: slot_tables,
        })
    }

    /// The WordNet of this process, loaded on first use from `$RFT_WORDNET_DIR`, or
    /// `/usr/share/wordnet` when that is not set.
    pub fn shared() -> Result<&'static WordNet, WordNetError> {
        static SHARED: OnceLock<WordNet> = OnceLock::new();
        static LOADING: Mutex<()> = Mutex::new(());
        if let Some(wordnet) = SHARED.get() {
            return Ok(wordnet);
        }
        // Serialise loading so that parallel first calls load once; a failed load is retried
        // by the next call rather than cached.
        let _guard = LOADING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(wordnet) = SHARED.get() {
            return Ok(wordnet);
        }
        let dir = match std::env::var_os("RFT_WORDNET_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(DEFAULT_DIR),
        };
        let started = std::time::Instant::now();
        let wordnet = WordNet::load(&dir)?;
        tracing::debug!(dir = %dir.display(), elapsed = ?started.elapsed(), "loaded WordNet");
        Ok(SHARED.get_or_init(|| wordnet))
    }

    /// The index line of `lemma` under part of speech `pos`, if any.
    fn lookup(&self, lemma: &str, pos: usize) -> Option<&Entry> {
        let slots = &self.slots[pos];
        let mask = slots.len().checked_sub(1)?;
        let hash = fx_hash(lemma);
        let mut slot = home_slot(hash, slots.len());
        loop {
            let value = *slots.get(slot)?;
            if value == EMPTY {
                return None;
            }
            if value >> 32 == hash >> 32 {
                let entry = self.entries[pos].get((value & 0xffff_ffff) as usize)?;
                if lemma_of(&self.files, entry) == lemma {
                    return Some(entry);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// `[l for s in wordnet.synsets(word) for l in s.lemma_names()]` in nltk 3.10.4, in its order
    /// and with its repetitions: the lemma names of every synset of every base form of `word`.
    #[cfg(test)]
    pub(crate) fn synset_lemma_names(&self, word: &str) -> Vec<&str> {
        let spans = self.synset_name_spans(word);
        spans.iter().map(|&span| self.name(span)).collect()
    }

    /// What METEOR's synonym stage makes of the lemma names of `word`'s synsets (see
    /// `synset_lemma_names`): the set of those without `_`
    /// (`set(... if lemma.name().find("_") < 0)`).
    ///
    /// Answers are cached per thread (words recur across the sentences of a corpus, and one
    /// lookup reads many scattered synset lines); the cache is dropped when it grows large.
    pub(crate) fn synonyms(&self, word: &str) -> Synonyms<'_> {
        SYNONYM_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.wordnet != self.id {
                cache.wordnet = self.id;
                cache.spans.clear();
            }
            if let Some(spans) = cache.spans.get(word) {
                return Synonyms {
                    wordnet: self,
                    spans: Rc::clone(spans),
                };
            }
            let mut spans = self.synset_name_spans(word);
            spans.retain(|&span| !self.name(span).contains('_'));
            spans.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
            spans.dedup_by(|a, b| self.name(*a) == self.name(*b));
            let spans: Rc<[NameSpan]> = spans.into();
            if cache.spans.len() >= SYNONYM_CACHE_WORDS {
                cache.spans.clear();
            }
            cache.spans.insert(word.into(), Rc::clone(&spans));
            Synonyms {
                wordnet: self,
                spans,
            }
        })
    }

    /// The uncached lemma names of `word`'s synsets, as places in the data files.
    fn synset_name_spans(&self, word: &str) -> Vec<NameSpan> {
        let lemma = py_lower(word);
        let mut names = Vec::new();
        for pos in 0..POS_FILES.len() {
            for entry in self.morphy(&lemma, pos) {
                let start = entry.offsets_start as usize;
                let offsets = self.files[usize::from(entry.file)]
                    .offsets
                    .get(start..start + entry.offsets_len as usize)
                    .unwrap_or(&[]);
                for &offset in offsets {
                    self.push_name_spans(pos, offset, &mut names);
                }
            }
        }
        names
    }

    fn name(&self, span: NameSpan) -> &str {
        let start = span.start as usize;
        self.files[usize::from(span.pos)]
            .data
            .get(start..start + span.len as usize)
            .unwrap_or_default()
    }

    /// nltk's `_morphy(form, pos)` (with `check_exceptions=True`), answering with the index
    /// entries of the forms it returns, in its order.
    fn morphy(&self, form: &str, pos: usize) -> Vec<&Entry> {
        /// `filter_forms`: keeps forms in the index, once each (equal forms, equal entries).
        fn keep<'a>(found: &mut Vec<&'a Entry>, entry: Option<&'a Entry>) {
            if let Some(entry) = entry {
                if !found.iter().any(|seen| std::ptr::eq(*seen, entry)) {
                    found.push(entry);
                }
            }
        }
        let mut found: Vec<&Entry> = Vec::new();
        keep(&mut found, self.lookup(form, pos));
        if let Some(bases) = self.files[pos].exceptions.get(form) {
            for base in bases.iter() {
                keep(&mut found, self.lookup(base, pos));
            }
        } else {
            let mut candidate = String::new();
            for (old, new) in SUBSTITUTIONS[pos] {
                if let Some(stem) = form.strip_suffix(old) {
                    candidate.clear();
                    candidate.push_str(stem);
                    candidate.push_str(new);
                    keep(&mut found, self.lookup(&candidate, pos));
                }
            }
        }
        found
    }

    /// Appends the lemma names of the synset at byte `offset` of `data.<pos>`. nltk first checks
    /// that the line there starts with that offset, zero-padded to 8 digits, and yields no synset
    /// (then fails) otherwise; with intact files that never happens, and here it yields nothing.
    fn push_name_spans(&self, pos: usize, offset: u32, names: &mut Vec<NameSpan>) {
        let data = &self.files[pos].data;
        let at = offset as usize;
        if !data.is_char_boundary(at) || !starts_with_padded_offset(&data[at..], offset) {
            tracing::warn!(
                pos = POS_FILES[pos],
                offset,
                "no WordNet synset at this offset"
            );
            return;
        }
        // `columns_str, gloss = line.strip().split("|")`: the gloss is not needed.
        let mut tokens = Columns {
            data,
            at,
            done: false,
        }
        .skip(3);
        let Some(count) = tokens
            .next()
            .and_then(|(_, n)| usize::from_str_radix(n, 16).ok())
        else {
            tracing::warn!(
                pos = POS_FILES[pos],
                offset,
                "malformed WordNet synset line"
            );
            return;
        };
        for _ in 0..count {
            let Some((start, name)) = tokens.next() else {
                break;
            };
            // The data file was read whole, so it is far below 4 GiB; `pos` is below 4.
            names.push(NameSpan {
                pos: pos as u8,
                start: start as u32,
                len: strip_syntactic_marker(name).len() as u32,
            });
            tokens.next(); // lex_id
        }
    }
}

/// Reads and parses the files of part of speech `file` (a `POS_FILES` index).
fn load_pos_files(dir: &Path, file: usize) -> Result<PosFiles, WordNetError> {
    let suffix = POS_FILES[file];
    let mut files = PosFiles::default();
    let path = dir.join(format!("index.{suffix}"));
    files.index_text = read(&path)?;
    load_index(&path, file, &mut files)?;
    let path = dir.join(format!("{suffix}.exc"));
    for line in read(&path)?.lines() {
        let mut terms = Tokens { text: line, at: 0 };
        // nltk would fail on a blank line (`terms[0]`); skipping it is the lenient reading.
        if let Some(form) = terms.next() {
            files
                .exceptions
                .insert(form.into(), terms.map(Box::from).collect());
        }
    }
    files.data = read(&dir.join(format!("data.{suffix}")))?;
    Ok(files)
}

/// Parses `files.index_text` as nltk's `_load_lemma_pos_offset_map` does, recording each line
/// with the part of speech written on it.
fn load_index(path: &Path, file: usize, files: &mut PosFiles) -> Result<(), WordNetError> {
    let text = &files.index_text;
    let plain = is_plain_ascii(text);
    let mut line_start = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let this_start = line_start;
        line_start += line.len();
        // The license text at the top of each file is indented.
        if line.starts_with(' ') {
            continue;
        }
        let line_no = i + 1;
        let mut tokens = LineTokens::new(line, plain);
        let Some(lemma) = tokens.next() else {
            return Err(malformed(path, line_no, "blank line"));
        };
        let pos_tag = tokens
            .next()
            .ok_or_else(|| malformed(path, line_no, "no part of speech"))?;
        let n_synsets = parse_number(tokens.next(), path, line_no)?;
        if n_synsets == 0 {
            return Err(malformed(path, line_no, "a lemma without synsets"));
        }
        let n_pointers = parse_number(tokens.next(), path, line_no)?;
        for _ in 0..n_pointers {
            tokens
                .next()
                .ok_or_else(|| malformed(path, line_no, "line ends too early"))?;
        }
        if parse_number(tokens.next(), path, line_no)? != n_synsets {
            return Err(malformed(
                path,
                line_no,
                "sense count differs from synset count",
            ));
        }
        tokens
            .next()
            .ok_or_else(|| malformed(path, line_no, "line ends too early"))?;
        let offsets_start = to_u32(files.offsets.len(), path, line_no)?;
        for _ in 0..n_synsets {
            files
                .offsets
                .push(parse_number(tokens.next(), path, line_no)?);
        }
        let pos = match pos_tag {
            "n" => 0,
            "v" => 1,
            "a" => 2,
            "r" => 3,
            // A part of speech nltk's `synsets` never asks for (it asks `POS_LIST` only).
            _ => continue,
        };
        // `lemma` is the first word of the line.
        let lemma_start = this_start + (line.len() - line.trim_start_matches(is_py_space).len());
        files.lines.push((
            pos,
            Entry {
                // `file` indexes `POS_FILES`, so it is below 4.
                file: file as u8,
                lemma_start: to_u32(lemma_start, path, line_no)?,
                lemma_len: to_u32(lemma.len(), path, line_no)?,
                offsets_start,
                offsets_len: n_synsets,
            },
        ));
    }
    Ok(())
}

fn lemma_of<'a>(files: &'a [PosFiles; 4], entry: &Entry) -> &'a str {
    let start = entry.lemma_start as usize;
    files[usize::from(entry.file)]
        .index_text
        .get(start..start + entry.lemma_len as usize)
        .unwrap_or_default()
}

/// Builds the hash table of one part of speech's `entries` (see [`WordNet::slots`]). Entries
/// are inserted in nltk's order and a lemma seen again takes over its slot: the later line wins,
/// as with nltk's dictionary assignment.
fn build_table(files: &[PosFiles; 4], entries: &[Entry]) -> Vec<u64> {
    let size = (entries.len() * 2).next_power_of_two().max(2);
    let mut slots = vec![EMPTY; size];
    for (i, entry) in entries.iter().enumerate() {
        let lemma = lemma_of(files, entry);
        let hash = fx_hash(lemma);
        let mut slot = home_slot(hash, size);
        loop {
            let value = slots[slot];
            if value == EMPTY
                || (value >> 32 == hash >> 32
                    && lemma_of(files, &entries[(value & 0xffff_ffff) as usize]) == lemma)
            {
                break;
            }
            slot = (slot + 1) & (size - 1);
        }
        // Entries number far fewer than 2^32 (each is a line of a file read whole).
        slots[slot] = (hash & 0xffff_ffff_0000_0000) | i as u64;
    }
    slots
}

/// A free slot of [`WordNet::slots`] (no entry has index `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// rustc's FxHash: fast on the short strings used as keys here, where SipHash's resistance to
/// chosen collisions buys nothing (the tables hold WordNet's lemmas; the caches are per thread
/// and bounded).
#[derive(Default)]
pub(crate) struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn fx_hash(key: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// The home slot of a key with this hash in a table of `size` (a power of two) slots; FxHash's
/// top bits are its best mixed.
fn home_slot(hash: u64, size: usize) -> usize {
    match size.trailing_zeros() {
        0 => 0,
        bits => (hash >> (64 - bits)) as usize,
    }
}

/// Whether `line` starts with `offset` written in 8 zero-padded digits (nltk's
/// `line[:8] == f"{'0'*(8-len(str(offset)))}{str(offset)}"`).
fn starts_with_padded_offset(line: &str, offset: u32) -> bool {
    let Some(head) = line.as_bytes().get(..8) else {
        return false;
    };
    let mut rest = u64::from(offset);
    for &digit in head.iter().rev() {
        if !digit.is_ascii_digit() || u64::from(digit - b'0') != rest % 10 {
            return false;
        }
        rest /= 10;
    }
    rest == 0
}

/// nltk's `re.match(r"(.*?)(\([^()]*\))?$", name).group(1)`: drops a trailing parenthesised
/// marker such as `(a)`, `(p)` or `(ip)` from an adjective's lemma name.
fn strip_syntactic_marker(name: &str) -> &str {
    if let Some(body) = name.strip_suffix(')') {
        if let Some(open) = body.rfind('(') {
            if !body[open + 1..].contains(')') {
                return &name[..open];
            }
        }
    }
    name
}

/// Where a lemma name is: a byte range of `data.<pos>`.
#[derive(Clone, Copy)]
struct NameSpan {
    pos: u8,
    start: u32,
    len: u32,
}

/// A word's WordNet synonyms, as [`WordNet::synonyms`] gives them: distinct, sorted.
pub(crate) struct Synonyms<'a> {
    wordnet: &'a WordNet,
    spans: Rc<[NameSpan]>,
}

impl<'a> Synonyms<'a> {
    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether `name` is one of them.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.spans
            .binary_search_by(|&span| self.wordnet.name(span).cmp(name))
            .is_ok()
    }

    /// All of them, in byte order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.spans.iter().map(|&span| self.wordnet.name(span))
    }
}

/// Per-thread memo of [`WordNet::synonyms`], for one [`WordNet`] at a time.
#[derive(Default)]
struct SynonymCache {
    /// [`WordNet::id`] of the WordNet the spans point into.
    wordnet: u64,
    spans: HashMap<Box<str>, Rc<[NameSpan]>, BuildHasherDefault<FxHasher>>,
}

thread_local! {
    static SYNONYM_CACHE: RefCell<SynonymCache> = RefCell::default();
}

/// Source of [`WordNet::id`]s; 0 is never handed out, so an empty cache matches no WordNet.
static NEXT_WORDNET_ID: AtomicU64 = AtomicU64::new(1);

/// Python's `text.split()`, scanning bytes: as fast on ASCII (all of WordNet) as a byte splitter,
/// and decoding a character only to check a non-ASCII one for Unicode whitespace.
struct Tokens<'a> {
    text: &'a str,
    at: usize,
}

/// Python's `str.isspace()` for an ASCII byte.
fn is_ascii_py_space(byte: u8) -> bool {
    matches!(byte, b'\t'..=b'\r' | 0x1c..=0x1f | b' ')
}

impl Tokens<'_> {
    /// The length of the whitespace character at byte `at`, or `None` at the end or on a word.
    fn space_at(&self, at: usize) -> Option<usize> {
        let byte = *self.text.as_bytes().get(at)?;
        if byte.is_ascii() {
            return is_ascii_py_space(byte).then_some(1);
        }
        let c = self.text.get(at..)?.chars().next()?;
        is_py_space(c).then_some(c.len_utf8())
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while let Some(len) = self.space_at(self.at) {
            self.at += len;
        }
        let start = self.at;
        let bytes = self.text.as_bytes();
        while let Some(&byte) = bytes.get(self.at) {
            if byte.is_ascii() {
                if is_ascii_py_space(byte) {
                    break;
                }
                self.at += 1;
            } else if self.space_at(self.at).is_some() {
                break;
            } else {
                // Not whitespace: step over the whole character.
                self.at += self
                    .text
                    .get(self.at..)
                    .and_then(|rest| rest.chars().next())
                    .map_or(1, char::len_utf8);
            }
        }
        self.text
            .get(start..self.at)
            .filter(|token| !token.is_empty())
    }
}

/// Whether `text` is ASCII without the separators (`\x0b`, `\x1c`..`\x1f`) that Python's
/// `str.split()` honours and `str::split_ascii_whitespace` does not: then the two agree.
fn is_plain_ascii(text: &str) -> bool {
    // Without early exit, so that it vectorises.
    text.is_ascii()
        && !text.as_bytes().iter().fold(false, |odd, &b| {
            odd | (b == 0x0b) | (b.wrapping_sub(0x1c) < 4)
        })
}

/// Python's `line.split()`: `split_ascii_whitespace` on plain ASCII files (all of WordNet's,
/// and faster), [`Tokens`] otherwise.
enum LineTokens<'a> {
    Plain(std::str::SplitAsciiWhitespace<'a>),
    Unicode(Tokens<'a>),
}

impl<'a> LineTokens<'a> {
    fn new(line: &'a str, plain: bool) -> Self {
        if plain {
            LineTokens::Plain(line.split_ascii_whitespace())
        } else {
            LineTokens::Unicode(Tokens { text: line, at: 0 })
        }
    }
}

impl<'a> Iterator for LineTokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            LineTokens::Plain(tokens) => tokens.next(),
            LineTokens::Unicode(tokens) => tokens.next(),
        }
    }
}

/// The words of a data line before its gloss, with their byte offsets, read lazily from the
/// line's start: nltk's `line.strip().split("|")[0].split()`, without first scanning the line
/// for its end (the pointers that follow the lemma names can be long, and are not needed).
struct Columns<'a> {
    data: &'a str,
    at: usize,
    done: bool,
}

impl<'a> Iterator for Columns<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        if self.done {
            return None;
        }
        let rest = self.data.get(self.at..)?;
        let start = rest.trim_start_matches(|c: char| c != '\n' && is_py_space(c));
        let end = start
            .find(|c: char| c == '|' || is_py_space(c))
            .unwrap_or(start.len());
        let (token, after) = start.split_at(end);
        let token_at = self.data.len() - start.len();
        // The line, or its columns, end here.
        self.done = after.is_empty() || after.starts_with(['|', '\n']);
        self.at = self.data.len() - after.len();
        (!token.is_empty()).then_some((token_at, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordnet() -> &'static WordNet {
        WordNet::shared().expect("WordNet 3.0 is installed (scripts/test.sh installs it)")
    }

    fn names(word: &str) -> Vec<&'static str> {
        wordnet().synset_lemma_names(word)
    }

    #[test]
    fn synsets_of_cat_start_with_the_feline() {
        let names = names("cat");
        assert_eq!(&names[..3], ["cat", "true_cat", "guy"]);
        assert!(names.contains(&"CAT"), "case is kept as in data.noun");
    }

    #[test]
    fn morphy_uses_exceptions_instead_of_rules() {
        // noun.exc: mice → mouse; verb.exc: went → go.
        assert!(names("mice").contains(&"mouse"));
        assert!(names("went").contains(&"go"));
        assert!(names("Went").contains(&"go"), "synsets() lowercases");
    }

    #[test]
    fn morphy_applies_each_rule_once() {
        assert!(names("churches").contains(&"church"));
        assert!(names("running").contains(&"run"));
        assert!(names("bigger").contains(&"big"));
    }

    #[test]
    fn adjective_markers_are_stripped() {
        // data.adj lists "galore(ip)".
        assert!(names("galore").contains(&"galore"));
        assert_eq!(strip_syntactic_marker("galore(ip)"), "galore");
        assert_eq!(strip_syntactic_marker("a(b)c"), "a(b)c");
        assert_eq!(strip_syntactic_marker("a(b)(c)"), "a(b)");
    }

    #[test]
    fn synonyms_are_distinct_sorted_and_without_underscores() {
        let synonyms = wordnet().synonyms("Cat");
        let listed: Vec<&str> = synonyms.iter().collect();
        let mut expected: Vec<&str> = names("cat")
            .into_iter()
            .filter(|name| !name.contains('_'))
            .collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(listed, expected);
        assert!(!synonyms.contains("computerized_tomography"));
        assert!(synonyms.contains("kat"));
        // A second lookup comes from the cache, unchanged.
        assert_eq!(
            wordnet().synonyms("Cat").iter().collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn tokens_split_like_python_str_split() {
        let text = " a\u{1c}b\u{a0}c\u{85}d\u{3000}e\tfé\u{200b}g\n  ";
        let tokens: Vec<&str> = Tokens { text, at: 0 }.collect();
        let expected: Vec<&str> = super::super::pytext::py_split(text).collect();
        assert_eq!(tokens, expected);
        assert_eq!(Tokens { text: "   ", at: 0 }.next(), None);
        assert!(is_plain_ascii("a b\tc\n"));
        assert!(!is_plain_ascii("a\u{1c}b"));
        assert!(!is_plain_ascii("a\u{b}b"));
        assert!(!is_plain_ascii("é"));
    }

    #[test]
    fn data_columns_stop_at_the_gloss_and_the_line_end() {
        let data = "00000001 03 n 01 x 0 001 | gloss words\n00000002 z";
        let columns: Vec<(usize, &str)> = Columns {
            data,
            at: 0,
            done: false,
        }
        .collect();
        assert_eq!(columns.last(), Some(&(21, "001")));
        assert_eq!(columns.len(), 7);
        let line: Vec<&str> = Columns {
            data: "1 a|b",
            at: 0,
            done: false,
        }
        .map(|(_, token)| token)
        .collect();
        assert_eq!(line, ["1", "a"]);
        assert!(starts_with_padded_offset(data, 1));
        assert!(!starts_with_padded_offset(data, 2));
        assert!(!starts_with_padded_offset("123", 123));
    }

    #[test]
    fn unknown_words_have_no_synsets() {
        assert!(names("qwertyuiop").is_empty());
        assert!(names("").is_empty());
        assert_eq!(wordnet().synonyms("qwertyuiop").len(), 0);
    }

    #[test]
    fn missing_wordnet_names_the_file_and_the_fix() {
        let err = WordNet::load(Path::new("/nonexistent/wordnet")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/wordnet/index.adj"),
            "{message}"
        );
        assert!(
            message.contains("apt-get install wordnet-base"),
            "{message}"
        );
    }

    #[test]
    fn wordnet_is_shareable_across_threads() {
        fn assert_sync<T: Sync + Send>() {}
        assert_sync::<WordNet>();
    }
}
