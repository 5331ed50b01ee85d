//! Structured outputs (`rft_model::constrain`) with the default model's real tokenizer: a
//! simulated sampler (seeded random logits, masked, then argmax or a random allowed token) must
//! always end, and the decoded text must be JSON valid under the schema.
//!
//! The timings printed (`ConstraintCompiler::new`, schema compilation, `allowed()` per step) are
//! for information; nothing here asserts on time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rft_model::constrain::{Constraint, ConstraintCompiler, ConstraintError, ResponseFormat};
use rft_model::hub;
use rft_model::tokenizer::Tokenizer;
use serde_json::{json, Value};

struct Setup {
    tokenizer: Tokenizer,
    compiler: ConstraintCompiler,
}

/// The default model's tokenizer and a compiler for it; `None` (test skipped) when the model is
/// not fetched and RFT_SLOW_TESTS is not 1.
fn setup() -> Option<&'static Setup> {
    static SETUP: OnceLock<Option<Setup>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let slow = std::env::var("RFT_SLOW_TESTS").as_deref() == Ok("1");
            if !slow && !hub::SMOLLM2_135M_INSTRUCT.is_present() {
                eprintln!(
                    "skipping: the default model is not fetched (RFT_SLOW_TESTS=1 fetches it)"
                );
                return None;
            }
            let dir = hub::SMOLLM2_135M_INSTRUCT
                .ensure()
                .expect("fetch the default model");
            let tokenizer =
                Tokenizer::load(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("tokenizer");
            let t0 = Instant::now();
            let compiler = ConstraintCompiler::new(&tokenizer).expect("compiler");
            eprintln!(
                "timing: ConstraintCompiler::new ({} tokens): {:.1} ms",
                tokenizer.vocab_size(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            Some(Setup {
                tokenizer,
                compiler,
            })
        })
        .as_ref()
}

#[derive(Clone, Copy, Debug)]
enum Pick {
    /// Argmax of random logits after masking.
    Argmax,
    /// A uniformly random allowed token.
    Random,
}

struct Run {
    ids: Vec<u32>,
    text: String,
    mask_times: Vec<Duration>,
}

/// Samples until an end-of-sequence token. After `budget` steps it favours tokens made only of
/// closing characters (`"`, `}`, `]`) and EOS, the way a model eventually wraps up; before that
/// it picks freely. Panics past 2,000 steps.
fn simulate(s: &Setup, c: &mut Constraint, seed: u64, pick: Pick, budget: usize) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = s.tokenizer.vocab_size();
    let eos = s.compiler.eos_token_ids();
    let mut ids = Vec::new();
    let mut mask_times = Vec::new();
    for step in 0.. {
        assert!(
            step < 2000,
            "no end after 2000 steps: {:?}",
            decode(s, &ids)
        );
        let t0 = Instant::now();
        let mask = c.allowed().expect("allowed");
        mask_times.push(t0.elapsed());
        let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>()).collect();
        let closing = step >= budget;
        if closing {
            for id in mask.allowed_ids() {
                let bytes = s.tokenizer.token_bytes(id).unwrap_or_default();
                if eos.contains(&id) {
                    logits[id as usize] += 20.0;
                } else if !bytes.is_empty() && bytes.iter().all(|b| b"\"}]".contains(b)) {
                    logits[id as usize] += 10.0;
                }
            }
        }
        mask.apply(&mut logits);
        let token = match pick {
            Pick::Random if !closing => {
                let allowed: Vec<u32> = mask.allowed_ids().collect();
                allowed[rng.random_range(0..allowed.len())]
            }
            _ => argmax(&logits),
        };
        assert!(mask.is_allowed(token));
        c.commit(token).expect("commit an allowed token");
        if eos.contains(&token) {
            break;
        }
        ids.push(token);
    }
    // After the end only EOS ids are allowed.
    assert!(c.is_finished());
    let mask = c.allowed().expect("mask after the end");
    let mut allowed: Vec<u32> = mask.allowed_ids().collect();
    let mut expected = eos.to_vec();
    allowed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(allowed, expected, "after EOS only EOS ids are allowed");
    let text = decode(s, &ids);
    Run {
        ids,
        text,
        mask_times,
    }
}

fn decode(s: &Setup, ids: &[u32]) -> String {
    s.tokenizer.decode(ids, false).expect("decode")
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn report(label: &str, runs: &[Run]) {
    let mut times: Vec<Duration> = runs.iter().flat_map(|r| r.mask_times.clone()).collect();
    times.sort_unstable();
    let n = times.len().max(1);
    let total: Duration = times.iter().sum();
    let tokens: usize = runs.iter().map(|r| r.ids.len()).sum();
    eprintln!(
        "timing: {label}: allowed() over {} steps ({} runs, {} tokens): mean {:.1} us, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        times.len(),
        runs.len(),
        tokens,
        total.as_secs_f64() * 1e6 / n as f64,
        times[n / 2].as_secs_f64() * 1e6,
        times[(n * 99 / 100).min(n - 1)].as_secs_f64() * 1e6,
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1e6),
    );
}

fn constraint(s: &Setup, format: &ResponseFormat) -> Constraint {
    let t0 = Instant::now();
    let c = s
        .compiler
        .constraint(format)
        .expect("compile")
        .expect("a JSON format has a constraint");
    eprintln!(
        "timing: constraint() for {format_kind}: {:.2} ms",
        t0.elapsed().as_secs_f64() * 1e3,
        format_kind = match format {
            ResponseFormat::Text => "text",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema { .. } => "json_schema",
        }
    );
    c
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 15},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                },
                "required": ["city", "zip"],
                "additionalProperties": false
            },
            "nickname": {"type": "string", "maxLength": 10},
            "score": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["name", "age", "color", "tags", "address"],
        "additionalProperties": false
    })
}

/// Checks `v` against `person_schema()` by hand.
fn check_person(v: &Value, text: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let known = [
        "name", "age", "color", "tags", "address", "nickname", "score",
    ];
    for k in obj.keys() {
        assert!(known.contains(&k.as_str()), "extra key {k}: {text}");
    }
    let name = obj["name"]
        .as_str()
        .unwrap_or_else(|| panic!("name: {text}"));
    assert!(name.chars().count() <= 20, "name too long: {text}");
    let age = as_integer(&obj["age"]).unwrap_or_else(|| panic!("age: {text}"));
    assert!((0..=120).contains(&age), "age: {text}");
    assert!(
        ["red", "green", "blue"].contains(&obj["color"].as_str().unwrap_or("")),
        "color: {text}"
    );
    let tags = obj["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags: {text}"));
    assert!(tags.len() <= 3, "tags: {text}");
    for t in tags {
        assert!(
            t.as_str().is_some_and(|t| t.chars().count() <= 8),
            "tag: {text}"
        );
    }
    let addr = obj["address"]
        .as_object()
        .unwrap_or_else(|| panic!("address: {text}"));
    assert_eq!(addr.len(), 2, "address keys: {text}");
    let city = addr["city"]
        .as_str()
        .unwrap_or_else(|| panic!("city: {text}"));
    assert!(city.chars().count() <= 15, "city: {text}");
    let zip = addr["zip"]
        .as_str()
        .unwrap_or_else(|| panic!("zip: {text}"));
    assert!(
        zip.len() == 5 && zip.bytes().all(|b| b.is_ascii_digit()),
        "zip: {text}"
    );
    if let Some(n) = obj.get("nickname") {
        assert!(
            n.as_str().is_some_and(|n| n.chars().count() <= 10),
            "nickname: {text}"
        );
    }
    if let Some(x) = obj.get("score") {
        let x = x.as_f64().unwrap_or_else(|| panic!("score: {text}"));
        assert!((0.0..=1.0).contains(&x), "score: {text}");
    }
}

/// A JSON integer. JSON Schema counts `-0` (which llguidance may produce, and serde_json reads as
/// the float -0.0) as the integer 0.
fn as_integer(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|x| *x == 0.0).map(|_| 0))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn json_schema_strict_outputs_validate() {
    let Some(s) = setup() else { return };
    let format = ResponseFormat::from_value(&json!({
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": true, "schema": person_schema()}
    }))
    .expect("format");
    let mut runs = Vec::new();
    for seed in 0..16 {
        let pick = if seed % 2 == 0 {
            Pick::Argmax
        } else {
            Pick::Random
        };
        let mut c = constraint(s, &format);
        let run = simulate(s, &mut c, seed, pick, 200);
        check_person(&parse(&run.text), &run.text);
        if seed < 4 {
            eprintln!("sample {seed} ({pick:?}): {}", run.text);
        }
        runs.push(run);
    }
    report("person schema (strict)", &runs);
}

#[test]
fn json_schema_not_strict_still_constrains_and_ignores_unsupported_keywords() {
    let Some(s) = setup() else { return };
    let mut schema = person_schema();
    schema["properties"]["tags"]["uniqueItems"] = json!(true);
    let strict = ResponseFormat::JsonSchema {
        name: "person".into(),
        schema: schema.clone(),
        strict: true,
    };
    let err = s
        .compiler
        .constraint(&strict)
        .expect_err("uniqueItems is unsupported");
    let msg = err.to_string();
    assert!(matches!(err, ConstraintError::Schema { .. }), "{msg}");
    assert!(
        msg.contains("uniqueItems") && msg.contains("strict"),
        "{msg}"
    );

    let lenient = ResponseFormat::JsonSchema {
        name: "person".into(),
        schema,
        strict: false,
    };
    let mut runs = Vec::new();
    for seed in 100..108 {
        let mut c = constraint(s, &lenient);
        let run = simulate(s, &mut c, seed, Pick::Random, 200);
        check_person(&parse(&run.text), &run.text);
        runs.push(run);
    }
    report("person schema (strict: false)", &runs);
}

#[test]
fn json_object_outputs_are_objects() {
    let Some(s) = setup() else { return };
    let format = ResponseFormat::from_value(&json!({"type": "json_object"})).expect("format");
    let mut runs = Vec::new();
    for seed in 0..12 {
        let pick = if seed % 2 == 0 {
            Pick::Argmax
        } else {
            Pick::Random
        };
        let mut c = constraint(s, &format);
        let run = simulate(s, &mut c, 1000 + seed, pick, 60);
        let v = parse(&run.text);
        assert!(v.is_object(), "not an object: {}", run.text);
        // One line, Python json.dumps separators, nothing before or after the object.
        assert!(
            run.text.starts_with('{') && run.text.ends_with('}'),
            "{}",
            run.text
        );
        assert!(!run.text.contains('\n'), "{}", run.text);
        if seed < 3 {
            eprintln!("json_object sample {seed} ({pick:?}): {}", run.text);
        }
        runs.push(run);
    }
    report("json_object", &runs);
}

#[test]
fn nested_refs_and_any_of() {
    let Some(s) = setup() else { return };
    let schema = json!({
        "type": "object",
        "$defs": {
            "step": {
                "type": "object",
                "properties": {
                    "op": {"enum": ["add", "mul"]},
                    "args": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9}, "minItems": 2, "maxItems": 2}
                },
                "required": ["op", "args"],
                "additionalProperties": false
            }
        },
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1, "maxItems": 3},
            "answer": {"anyOf": [{"type": "integer", "minimum": -1000, "maximum": 1000}, {"type": "null"}]},
            "ok": {"type": "boolean"}
        },
        "required": ["steps", "answer", "ok"],
        "additionalProperties": false
    });
    let format = ResponseFormat::JsonSchema {
        name: "calc".into(),
        schema,
        strict: true,
    };
    let mut runs = Vec::new();
    for seed in 0..8 {
        let mut c = constraint(s, &format);
        let run = simulate(s, &mut c, 2000 + seed, Pick::Random, 100);
        let v = parse(&run.text);
        let steps = v["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("steps: {}", run.text));
        assert!((1..=3).contains(&steps.len()), "{}", run.text);
        for st in steps {
            assert!(
                ["add", "mul"].contains(&st["op"].as_str().unwrap_or("")),
                "{}",
                run.text
            );
            let args = st["args"]
                .as_array()
                .unwrap_or_else(|| panic!("args: {}", run.text));
            assert_eq!(args.len(), 2, "{}", run.text);
            assert!(
                args.iter()
                    .all(|a| as_integer(a).is_some_and(|a| (-9..=9).contains(&a))),
                "{}",
                run.text
            );
        }
        assert!(v["answer"].is_null() || as_integer(&v["answer"]).is_some_and(|a| a.abs() <= 1000));
        assert!(v["ok"].is_boolean(), "{}", run.text);
        runs.push(run);
    }
    report("$ref/anyOf schema", &runs);
}

#[test]
fn text_has_no_constraint_and_errors_are_clear() {
    let Some(s) = setup() else { return };
    assert!(s
        .compiler
        .constraint(&ResponseFormat::Text)
        .unwrap()
        .is_none());

    let format = ResponseFormat::from_value(&json!({
        "type": "json_schema",
        "json_schema": {"name": "x", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}
    }))
    .unwrap();
    let mut c = constraint(s, &format);
    // The first token must start the object: a letter is refused, and the state is unchanged.
    let a = s.tokenizer.encode("a", false).unwrap()[0];
    let err = c.commit(a).expect_err("'a' cannot start an object");
    assert!(
        matches!(err, ConstraintError::TokenNotAllowed { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not allowed"), "{err}");
    let err = c.commit(u32::MAX).expect_err("out of range");
    assert!(
        matches!(err, ConstraintError::TokenOutOfRange { .. }),
        "{err}"
    );
    // EOS before the value is complete is refused too.
    let eos = s.compiler.eos_token_ids()[0];
    assert!(!c.allowed().unwrap().is_allowed(eos));
    assert!(!c.is_accepting());
    // Drive it by text: {"a": 12} then EOS.
    for id in s.tokenizer.encode("{\"a\": 12}", false).unwrap() {
        c.commit(id).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(c.is_accepting());
    c.commit(eos).unwrap();
    assert!(c.is_finished());
    c.commit(eos).unwrap();
    let err = c.commit(a).expect_err("nothing after EOS");
    assert!(
        matches!(err, ConstraintError::TokenNotAllowed { .. }),
        "{err}"
    );

    // A $ref to another document is an error, not a fetch.
    let remote = ResponseFormat::JsonSchema {
        name: "remote".into(),
        schema: json!({"$ref": "https://example.com/schema.json"}),
        strict: false,
    };
    let err = s.compiler.constraint(&remote).expect_err("remote $ref");
    assert!(
        err.to_string().contains("https://example.com/schema.json"),
        "{err}"
    );
}

#[test]
fn mask_apply_covers_padded_logits() {
    let Some(s) = setup() else { return };
    let mut c = constraint(s, &ResponseFormat::JsonObject);
    let mask = c.allowed().unwrap();
    assert_eq!(mask.len(), s.tokenizer.vocab_size());
    // A model with padding rows past the vocabulary: those are never allowed.
    let mut logits = vec![1.0f32; s.tokenizer.vocab_size() + 64];
    mask.apply(&mut logits);
    let finite = logits.iter().filter(|x| x.is_finite()).count();
    assert_eq!(finite, mask.count_allowed());
    assert!(logits[s.tokenizer.vocab_size()..]
        .iter()
        .all(|x| *x == f32::NEG_INFINITY));
    // Every allowed first token starts with '{'; special tokens are never allowed.
    for id in mask.allowed_ids() {
        assert!(!s.tokenizer.is_special(id));
        assert_eq!(s.tokenizer.token_bytes(id).unwrap()[0], b'{');
    }
}

#[test]
fn response_format_parse_errors_name_the_field() {
    let cases = [
        (json!("json"), "response_format: expected an object"),
        (json!({}), "response_format.type: missing"),
        (
            json!({"type": 3}),
            "response_format.type: expected a string",
        ),
        (
            json!({"type": "xml"}),
            "response_format.type: \"xml\" is not a response format",
        ),
        (
            json!({"type": "text", "extra": 1}),
            "response_format.extra: unknown field",
        ),
        (
            json!({"type": "json_schema"}),
            "response_format.json_schema: missing",
        ),
        (
            json!({"type": "json_schema", "json_schema": []}),
            "response_format.json_schema: expected an object",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"schema": {}}}),
            "response_format.json_schema.name: missing",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
            "response_format.json_schema.name: \"a b\" must be",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}),
            "response_format.json_schema.strict: expected true or false",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}),
            "response_format.json_schema.schema: expected a JSON schema object",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": false}}),
            "response_format.json_schema.schema: the schema `false`",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "schemas": {}}}),
            "response_format.json_schema.schemas: unknown field",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"x-guidance": {}}}}),
            "response_format.json_schema.schema.x-guidance",
        ),
        (
            json!({"type": "json_schema", "name": 5}),
            "response_format.name: expected a string",
        ),
    ];
    for (value, expected) in cases {
        let err = ResponseFormat::from_value(&value).expect_err(&value.to_string());
        assert!(matches!(err, ConstraintError::InvalidFormat { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with(expected),
            "{value}: got {msg:?}, expected {expected:?}"
        );
    }

    assert_eq!(
        ResponseFormat::from_value(&Value::Null).unwrap(),
        ResponseFormat::Text
    );
    assert_eq!(
        ResponseFormat::from_value(&json!({"type": "text"})).unwrap(),
        ResponseFormat::Text
    );
    assert_eq!(
        ResponseFormat::from_value(&json!({"type": "json_object"})).unwrap(),
        ResponseFormat::JsonObject
    );
    let chat = ResponseFormat::from_value(&json!({
        "type": "json_schema",
        "json_schema": {"name": "a_1-b", "description": "d", "schema": {"type": "object"}, "strict": true}
    }))
    .unwrap();
    assert_eq!(
        chat,
        ResponseFormat::JsonSchema {
            name: "a_1-b".into(),
            schema: json!({"type": "object"}),
            strict: true
        }
    );
    // The Responses API's flat text.format shape.
    let flat = ResponseFormat::from_value(&json!({
        "type": "json_schema", "name": "a_1-b", "schema": {"type": "object"}, "strict": true
    }))
    .unwrap();
    assert_eq!(flat, chat);
    // strict defaults to false, schema to {} (any JSON value).
    assert_eq!(
        ResponseFormat::from_value(&json!({"type": "json_schema", "json_schema": {"name": "n"}}))
            .unwrap(),
        ResponseFormat::JsonSchema {
            name: "n".into(),
            schema: json!({}),
            strict: false
        }
    );
}
