"""Reference renderings of chat templates with tools, for crates/rft-model/tests/tool_calls.rs.

    python3 scripts/tool_template_reference.py

Needs only `jinja2` (3.1). It renders the published Llama 3.1, Llama 3.2 and Qwen2.5 chat
templates (crates/rft-model/tests/fixtures/tokenizer_templates/) the way transformers'
`apply_chat_template` does: a sandboxed Jinja2 environment with `trim_blocks`, `lstrip_blocks`
and loop controls, transformers' `tojson` (`json.dumps` with `ensure_ascii=False`) and its
`raise_exception` and `strftime_now` globals. Assistant tool calls are given to the templates
with their arguments as objects, as Hugging Face templates expect; the Rust side sends OpenAI's
shape (arguments as a JSON string) through `ChatTemplate::render_prompt`, which must give the
same text. Writes crates/rft-model/tests/fixtures/tool_templates.jsonl.
"""

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "rft-model" / "tests" / "fixtures"

TEMPLATES = {
    "llama3_1.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3_2.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen2_5_tools.jinja": (None, "<|im_end|>"),
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def conversations():
    """(name, messages with string arguments, tools) triples."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich", "unit": "c"})},
    }
    return [
        ("user_only", [{"role": "user", "content": "Weather in Zürich?"}], [WEATHER]),
        (
            "system_two_tools",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Find Rust news, then the weather in Oslo."},
            ],
            [WEATHER, SEARCH],
        ),
        (
            "tool_round_trip",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            ],
            [WEATHER],
        ),
    ]


def as_objects(messages):
    out = []
    for m in messages:
        m = json.loads(json.dumps(m))
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        out.append(m)
    return out


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def main():
    env = environment()
    rows = []
    for name, (bos, eos) in TEMPLATES.items():
        template = env.from_string((FIXTURES / "tokenizer_templates" / name).read_text())
        for conv, messages, tools in conversations():
            # A fixed date, so Llama 3.2's `strftime_now` default does not enter the fixture.
            extra = {"date_string": "26 Jul 2024"}
            try:
                expected = template.render(
                    messages=as_objects(messages),
                    tools=tools,
                    add_generation_prompt=True,
                    bos_token=bos or "",
                    eos_token=eos or "",
                    **extra,
                )
                error = None
            except jinja2.exceptions.TemplateError as e:
                expected, error = None, str(e)
            rows.append(
                {
                    "name": f"{name}:{conv}",
                    "template": name,
                    "bos_token": bos,
                    "eos_token": eos,
                    "messages": messages,
                    "tools": tools,
                    "extra": extra,
                    "expected": expected,
                    "error": error,
                }
            )
    out = FIXTURES / "tool_templates.jsonl"
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} renderings to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
