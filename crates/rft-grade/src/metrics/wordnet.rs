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
//! The index and exception files are parsed when loading; the data files are kept in memory and a
//! synset line is parsed only when a query reaches its byte offset (which is what the index
//! stores). Everything is immutable after loading, so a [`WordNet`] is shared freely across threads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::porter::py_lower;
use super::pytext::{is_py_space, py_split};

/// The parts of speech in nltk's `POS_LIST` order, with the file suffix of each.
const POS_FILES: [&str; 4] = ["noun", "verb", "adj", "adv"];

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

/// One line of an `index.<pos>` file: the lemma (a byte range of that file's text) and its
/// synset offsets (a range of [`WordNet::offsets`]). nltk refuses lines without synsets.
#[derive(Clone, Copy)]
struct Entry {
    file: u8,
    lemma_start: u32,
    lemma_len: u32,
    offsets_start: u32,
    offsets_len: u32,
}

/// WordNet 3.0, loaded from its database files, answering the synonym query nltk's METEOR makes.
pub struct WordNet {
    dir: PathBuf,
    /// The text of `index.<pos>`, by file (`POS_FILES` order).
    index_text: [String; 4],
    /// Per part of speech (`POS_LIST` order), the index lines tagged with it, sorted by lemma
    /// without duplicates, for binary search. (WordNet ships its index files sorted, so loading
    /// only checks the order.)
    entries: [Vec<Entry>; 4],
    /// The synset offsets of all index lines, referenced by [`Entry`]s.
    offsets: Vec<u32>,
    /// `<pos>.exc`: inflected form → base forms, per part of speech.
    exceptions: [HashMap<Box<str>, Box<[Box<str>]>>; 4],
    /// `data.<pos>`, whole; synset lines are found by the byte offsets the index stores.
    data: [String; 4],
}

impl fmt::Debug for WordNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lemmas: Vec<usize> = self.entries.iter().map(Vec::len).collect();
        f.debug_struct("WordNet")
            .field("dir", &self.dir)
            .field("lemmas_per_pos", &lemmas)
            .field("synset_offsets", &self.offsets.len())
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
        let mut index_text: [String; 4] = Default::default();
        let mut entries: [Vec<Entry>; 4] = Default::default();
        let mut offsets = Vec::with_capacity(210_000);
        let mut exceptions: [HashMap<Box<str>, Box<[Box<str>]>>; 4] = Default::default();
        let mut data: [String; 4] = Default::default();
        // nltk reads the files in `_FILEMAP` order (adj, adv, noun, verb); only a lemma listed
        // twice could tell, the later line winning.
        for file in [2, 3, 0, 1] {
            let suffix = POS_FILES[file];
            let path = dir.join(format!("index.{suffix}"));
            index_text[file] = read(&path)?;
            load_index(&path, file, &index_text[file], &mut entries, &mut offsets)?;
            let path = dir.join(format!("{suffix}.exc"));
            for line in read(&path)?.lines() {
                let mut terms = py_split(line);
                // nltk would fail on a blank line (`terms[0]`); skipping it is the lenient reading.
                if let Some(form) = terms.next() {
                    exceptions[file].insert(form.into(), terms.map(Box::from).collect());
                }
            }
            data[file] = read(&dir.join(format!("data.{suffix}")))?;
        }
        let mut wordnet = WordNet {
            dir: dir.to_owned(),
            index_text,
            entries,
            offsets,
            exceptions,
            data,
        };
        for pos in 0..POS_FILES.len() {
            wordnet.sort_entries(pos);
        }
        Ok(wordnet)
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

    fn lemma(&self, entry: &Entry) -> &str {
        let start = entry.lemma_start as usize;
        self.index_text[usize::from(entry.file)]
            .get(start..start + entry.lemma_len as usize)
            .unwrap_or_default()
    }

    /// Sorts one part of speech's entries by lemma, keeping the last of equal lemmas (nltk's
    /// dictionary assignment), unless they already are (as WordNet ships them).
    fn sort_entries(&mut self, pos: usize) {
        let mut list = std::mem::take(&mut self.entries[pos]);
        if !list
            .windows(2)
            .all(|pair| self.lemma(&pair[0]) < self.lemma(&pair[1]))
        {
            list.sort_by(|a, b| self.lemma(a).cmp(self.lemma(b)));
            let mut deduped: Vec<Entry> = Vec::with_capacity(list.len());
            for entry in list {
                match deduped.last_mut() {
                    Some(last) if self.lemma(last) == self.lemma(&entry) => *last = entry,
                    _ => deduped.push(entry),
                }
            }
            list = deduped;
        }
        self.entries[pos] = list;
    }

    /// The index line of `lemma` under part of speech `pos`, if any.
    fn lookup(&self, lemma: &str, pos: usize) -> Option<&Entry> {
        let list = &self.entries[pos];
        list.binary_search_by(|entry| self.lemma(entry).cmp(lemma))
            .ok()
            .map(|i| &list[i])
    }

    /// `[l for s in wordnet.synsets(word) for l in s.lemma_names()]` in nltk 3.10.4, in its order
    /// and with its repetitions: the lemma names of every synset of every base form of `word`.
    pub(crate) fn synset_lemma_names(&self, word: &str) -> Vec<&str> {
        let lemma = py_lower(word);
        let mut names = Vec::new();
        for pos in 0..POS_FILES.len() {
            for entry in self.morphy(&lemma, pos) {
                let start = entry.offsets_start as usize;
                let offsets = self
                    .offsets
                    .get(start..start + entry.offsets_len as usize)
                    .unwrap_or(&[]);
                for &offset in offsets {
                    self.push_lemma_names(pos, offset, &mut names);
                }
            }
        }
        names
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
        if let Some(bases) = self.exceptions[pos].get(form) {
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
    fn push_lemma_names<'a>(&'a self, pos: usize, offset: u32, names: &mut Vec<&'a str>) {
        let data = &self.data[pos];
        let Some(rest) = data.get(offset as usize..) else {
            tracing::warn!(
                pos = POS_FILES[pos],
                offset,
                "WordNet offset outside its data file"
            );
            return;
        };
        let line = rest.split('\n').next().unwrap_or_default();
        if !starts_with_padded_offset(line, offset) {
            tracing::warn!(
                pos = POS_FILES[pos],
                offset,
                "no WordNet synset at this offset"
            );
            return;
        }
        // `columns_str, gloss = line.strip().split("|")`: the gloss is not needed.
        let columns = line.split('|').next().unwrap_or_default();
        let mut tokens = py_split(columns).skip(3);
        let Some(count) = tokens
            .next()
            .and_then(|n| usize::from_str_radix(n, 16).ok())
        else {
            tracing::warn!(
                pos = POS_FILES[pos],
                offset,
                "malformed WordNet synset line"
            );
            return;
        };
        for _ in 0..count {
            let Some(name) = tokens.next() else { break };
            names.push(strip_syntactic_marker(name));
            tokens.next(); // lex_id
        }
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

/// Parses one `index.<pos>` file as nltk's `_load_lemma_pos_offset_map` does, appending each
/// line to the entries of the part of speech written on it.
fn load_index(
    path: &Path,
    file: usize,
    text: &str,
    entries: &mut [Vec<Entry>; 4],
    offsets: &mut Vec<u32>,
) -> Result<(), WordNetError> {
    let mut line_start = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let this_start = line_start;
        line_start += line.len();
        // The license text at the top of each file is indented.
        if line.starts_with(' ') {
            continue;
        }
        let line_no = i + 1;
        let mut tokens = py_split(line);
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
        let offsets_start = to_u32(offsets.len(), path, line_no)?;
        for _ in 0..n_synsets {
            offsets.push(parse_number(tokens.next(), path, line_no)?);
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
        entries[pos].push(Entry {
            file: file as u8,
            lemma_start: to_u32(lemma_start, path, line_no)?,
            lemma_len: to_u32(lemma.len(), path, line_no)?,
            offsets_start,
            offsets_len: n_synsets,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordnet() -> &'static WordNet {
        WordNet::shared().expect("WordNet 3.0 is installed (apt-get install wordnet-base)")
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
    fn unknown_words_have_no_synsets() {
        assert!(names("qwertyuiop").is_empty());
        assert!(names("").is_empty());
    }

    #[test]
    fn missing_wordnet_names_the_file_and_the_fix() {
        let err = WordNet::load(Path::new("/nonexistent/wordnet")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/wordnet/index.noun"),
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
