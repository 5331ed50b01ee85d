"""Reference implementations of OpenRFT's `text_similarity` metrics, and the corpus they are checked on.

Each metric is defined as exactly one call into the package OpenAI's grader image ships
(docs/graders.md lists them); OpenRFT's Rust code must reproduce these values to 1e-9.

    python scripts/text_similarity_reference.py fixtures OUT.jsonl   # golden values for the test corpus
    python scripts/text_similarity_reference.py bench PAIRS.jsonl    # seconds per metric over the pairs

Run it through `scripts/reference_env.sh`, which pins the packages and provides WordNet.
"""

import json
import random
import sys
import time

from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from rapidfuzz import fuzz, utils
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

_BLEU = BLEU(effective_order=True)
_ROUGE = {
    key: rouge_scorer.RougeScorer([key], use_stemmer=False)
    for key in ["rouge1", "rouge2", "rouge3", "rouge4", "rouge5", "rougeL"]
}


def fuzzy_match(inp, ref):
    return fuzz.WRatio(inp, ref, processor=utils.default_process) / 100


def bleu(inp, ref):
    # sacrebleu.sentence_bleu(inp, [ref]) builds BLEU(effective_order=True) with these defaults.
    return _BLEU.sentence_score(inp, [ref]).score / 100


def gleu(inp, ref):
    return sentence_gleu([ref.split()], inp.split())


def meteor(inp, ref):
    return meteor_score([ref.split()], inp.split())


def _rouge(key):
    scorer = _ROUGE[key]
    return lambda inp, ref: scorer.score(ref, inp)[key].fmeasure


METRICS = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    "rouge_1": _rouge("rouge1"),
    "rouge_2": _rouge("rouge2"),
    "rouge_3": _rouge("rouge3"),
    "rouge_4": _rouge("rouge4"),
    "rouge_5": _rouge("rouge5"),
    "rouge_l": _rouge("rougeL"),
}

# Words chosen so that WordNet synonyms, stems and inflections all occur (METEOR's three matchers).
WORDS = """the a an of to in on at by for with from and or but not is are was were be been being
cat feline dog canine mat rug sat sitting sits run running ran runs quick fast rapid speedy brown
fox jumps jumped jumping over lazy idle car automobile auto machine big large huge great small little
tiny happy glad content sad unhappy house home dwelling buy purchase bought sell sold good well better
best bad worse worst child children kid kids man men woman women person people mouse mice go went gone
goes going city town village walk walked walks walking talk speak spoke spoken say said tell told
answer reply response question query invoice payment total amount due date name email address phone
number order shipped shipping delivered delivery customer client price cost value 42 3.14 2024 100
doctor physician hospital patient medicine drug treat treated treatment law legal court judge ruling
code function return value error bug fix fixed fixing compile compiled test tests passed failing
begin start commence end finish stop close shut open read write wrote written book books library
""".split()

PUNCT = list(".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
UNICODE_BITS = ["café", "naïve", "Straße", "İstanbul", "ΟΔΟΣ", "σοφός", "日本語", "中文字符",
                "emoji😀", "🚀", "Ñandú", "façade", "ﬁle", "Kelvin\u212a", "x\u0301", "résumé",
                "\u00a0", "\u2003", "\u3000", "ǅ", "ⅷ", "١٢٣", "עברית", "русский", "Ǆ"]
SPACES = [" ", "  ", "\t", "\n", " \r\n ", "\u00a0", "\u2009", "\x0b", "\x1c", "\x85"]


def _sentence(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.06:
            w = rng.choice(UNICODE_BITS)
        elif r < 0.12:
            w = rng.choice(WORDS) + rng.choice(PUNCT)
        elif r < 0.16:
            w = rng.choice(WORDS).upper()
        elif r < 0.22:
            w = rng.choice(WORDS).capitalize()
        else:
            w = rng.choice(WORDS)
        out.append(w)
    sep = " " if rng.random() < 0.8 else rng.choice(SPACES)
    return sep.join(out)


def _perturb(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.3 and words:
            words.pop(rng.randrange(len(words)))
        elif op < 0.55:
            words.insert(rng.randint(0, len(words)), rng.choice(WORDS))
        elif op < 0.8 and len(words) > 1:
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif words:
            i = rng.randrange(len(words))
            words[i] = words[i].lower() if rng.random() < 0.5 else words[i].title()
    return " ".join(words)


HANDWRITTEN = [
    ("", ""), ("", "hello"), ("hello", ""), (" ", " "), ("hello", "hello"), ("Hello", "hello"),
    ("hello world", "world hello"), ("the cat sat on the mat", "a feline sat on the rug"),
    ("the the the the", "the cat"), ("the cat", "the the the the"),
    ("!!!", "???"), ("...", "..."), ("a", "a"), ("a b c d e", "a b c d e"),
    ("New York", "new york city"), ("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear"),
    ("Straße", "strasse"), ("İstanbul", "istanbul"), ("ΟΔΟΣ", "οδος"), ("日本語のテキスト", "日本語"),
    ("emoji 😀 here", "emoji here"), ("café naïve", "cafe naive"), ("42", "42.0"),
    ("$1,234.56", "1234.56"), ("e-mail", "email"), ("don't", "do not"), ("U.S.A.", "USA"),
    ("running ran runs", "run run run"), ("the children went home", "the child goes home"),
    ("He bought a big car", "He purchased a large automobile"),
    ("tab\tseparated\twords", "tab separated words"), ("line\nbreaks\nhere", "line breaks here"),
    ("nbsp\u00a0word", "nbsp word"), ("a" * 300, "a" * 299), ("ab" * 150, "ba" * 150),
    ("x", "x" * 200), ("short", "this is a much longer reference that contains short somewhere"),
    ("{\"name\": \"Ada\", \"email\": \"ada@example.com\"}", "{\"name\": \"Ada\", \"email\": \"ada@x.org\"}"),
    ("def f(x):\n    return x + 1", "def f(x): return x+1"),
    ("Kelvin\u212a", "kelvink"), ("ﬁle", "file"), ("x\u0301", "x"),
]


def corpus(seed=20261126, n_random=700):
    rng = random.Random(seed)
    pairs = list(HANDWRITTEN)
    for i in range(n_random):
        kind = i % 7
        if kind == 6:
            # Long texts with repetition: exercises counting, clipping and LCS on long inputs.
            ref = _sentence(rng, rng.randint(150, 600))
            inp = _perturb(rng, ref) + " " + _sentence(rng, rng.randint(0, 50))
        elif kind == 5:
            ref = _sentence(rng, rng.randint(1, 12))
            inp = _sentence(rng, rng.randint(0, 12))  # unrelated
        elif kind == 4:
            w = rng.choice(WORDS)
            ref = " ".join([w] * rng.randint(1, 8) + [rng.choice(WORDS)])
            inp = " ".join([w] * rng.randint(1, 8))
        else:
            ref = _sentence(rng, rng.randint(1, 40))
            inp = _perturb(rng, ref)
        if rng.random() < 0.5:
            inp, ref = ref, inp
        pairs.append((inp, ref))
    return pairs


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "fixtures":
        with open(path, "w", encoding="utf-8") as f:
            for inp, ref in corpus():
                row = {"input": inp, "reference": ref}
                for name, fn in METRICS.items():
                    row[name] = fn(inp, ref)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif mode == "bench":
        pairs = [json.loads(line) for line in open(path, encoding="utf-8")]
        pairs = [(p["input"], p["reference"]) for p in pairs]
        result = {}
        for name, fn in METRICS.items():
            start = time.perf_counter()
            for inp, ref in pairs:
                fn(inp, ref)
            result[name] = time.perf_counter() - start
        print(json.dumps(result))
    else:
        sys.exit(f"unknown mode {mode!r}: expected fixtures or bench")


if __name__ == "__main__":
    main()
