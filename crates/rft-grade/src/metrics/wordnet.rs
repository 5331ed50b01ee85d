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
use super::pytext::py_split;

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

/// The offsets of one lemma's synsets for one part of speech: a slice of [`WordNet::offsets`].
/// nltk refuses index lines with no synsets, so an empty span means "not under this part of speech".
#[derive(Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// WordNet 3.0, loaded from its database files, answering the synonym query nltk's METEOR makes.
pub struct WordNet {
    dir: PathBuf,
    /// `index.<pos>`: lemma → its synset offsets under each part of speech (`POS_LIST` order).
    index: HashMap<Box<str>, [Span; 4]>,
    /// All synset offsets of the index, referenced by [`Span`]s.
    offsets: Vec<u32>,
    /// `<pos>.exc`: inflected form → base forms, per part of speech.
    exceptions: [HashMap<Box<str>, Box<[Box<str>]>>; 4],
    /// `data.<pos>`, whole; synset lines are found by the byte offsets the index stores.
    data: [String; 4],
}

impl fmt::Debug for WordNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WordNet")
            .field("dir", &self.dir)
            .field("lemmas", &self.index.len())
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

impl WordNet {
    /// Loads WordNet from a folder holding `index.{noun,verb,adj,adv}`, `data.*` and `*.exc`
    /// (WordNet 3.0's `dict` folder; Debian installs it as `/usr/share/wordnet`).
    pub fn load(dir: &Path) -> Result<WordNet, WordNetError> {
        let mut index: HashMap<Box<str>, [Span; 4]> = HashMap::with_capacity(160_000);
        let mut offsets = Vec::with_capacity(210_000);
        let mut exceptions: [HashMap<Box<str>, Box<[Box<str>]>>; 4] = Default::default();
        let mut data: [String; 4] = Default::default();
        for (pos, suffix) in POS_FILES.iter().enumerate() {
            let path = dir.join(format!("index.{suffix}"));
            load_index(&path, &read(&path)?, &mut index, &mut offsets)?;
            let path = dir.join(format!("{suffix}.exc"));
            for line in read(&path)?.lines() {
                let mut terms = py_split(line);
                // nltk would fail on a blank line (`terms[0]`); skipping it is the lenient reading.
                if let Some(form) = terms.next() {
                    exceptions[pos].insert(form.into(), terms.map(Box::from).collect());
                }
            }
            data[pos] = read(&dir.join(format!("data.{suffix}")))?;
        }
        index.shrink_to_fit();
        Ok(WordNet {
            dir: dir.to_owned(),
            index,
            offsets,
            exceptions,
            data,
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

    /// `[l for s in wordnet.synsets(word) for l in s.lemma_names()]` in nltk 3.10.4, in its order
    /// and with its repetitions: the lemma names of every synset of every base form of `word`.
    pub(crate) fn synset_lemma_names(&self, word: &str) -> Vec<&str> {
        let lemma = py_lower(word);
        let mut names = Vec::new();
        for pos in 0..POS_FILES.len() {
            for span in self.morphy(&lemma, pos) {
                let start = span.start as usize;
                let offsets = self
                    .offsets
                    .get(start..start + span.len as usize)
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
    fn morphy(&self, form: &str, pos: usize) -> Vec<Span> {
        let mut candidates: Vec<std::borrow::Cow<'_, str>> = vec![form.into()];
        if let Some(bases) = self.exceptions[pos].get(form) {
            candidates.extend(bases.iter().map(|base| (&**base).into()));
        } else {
            for (old, new) in SUBSTITUTIONS[pos] {
                if let Some(stem) = form.strip_suffix(old) {
                    candidates.push(format!("{stem}{new}").into());
                }
            }
        }
        let mut seen: Vec<&str> = Vec::with_capacity(candidates.len());
        let mut spans = Vec::new();
        for candidate in &candidates {
            if let Some((key, entry)) = self.index.get_key_value(&**candidate) {
                if entry[pos].len > 0 && !seen.contains(&&**key) {
                    seen.push(key);
                    spans.push(entry[pos]);
                }
            }
        }
        spans
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
        if line.get(..8) != Some(format!("{offset:08}").as_str()) {
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

/// Parses one `index.<pos>` file into `index` as nltk's `_load_lemma_pos_offset_map` does: the
/// part of speech is the one written on each line, and a later line for the same lemma and part
/// of speech replaces an earlier one.
fn load_index(
    path: &Path,
    text: &str,
    index: &mut HashMap<Box<str>, [Span; 4]>,
    offsets: &mut Vec<u32>,
) -> Result<(), WordNetError> {
    for (i, line) in text.lines().enumerate() {
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
        let start = offsets.len();
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
        let span = Span {
            start: u32::try_from(start).map_err(|_| malformed(path, line_no, "index too large"))?,
            len: n_synsets,
        };
        index.entry(lemma.into()).or_default()[pos] = span;
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
