//! Structured outputs: OpenAI's `response_format` turned into a token mask per decode step,
//! through [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! Three pieces, from the most shared to the least:
//!
//! - [`ResponseFormat`]: the request's `response_format`, parsed and checked
//!   ([`ResponseFormat::from_value`]).
//! - [`ConstraintCompiler`]: one per tokenizer, shared (`Arc`) by every request. It holds the
//!   token trie built from [`Tokenizer::all_token_bytes`] and llguidance's parser factory
//!   (the expensive part: about a quarter of a second for a 49k vocabulary), plus a cache of compiled formats, so `n`
//!   samples of a prompt, and every later prompt with the same schema, compile it once.
//! - [`Constraint`]: the state of one sequence. Per decode step the sampler calls
//!   [`Constraint::allowed`], applies the [`TokenMask`] to the logits, samples, and calls
//!   [`Constraint::commit`] with the sampled token.
//!
//! ```text
//! let compiler = Arc::new(ConstraintCompiler::new(&tokenizer)?);       // once per model
//! let format = ResponseFormat::from_value(&request["response_format"])?;
//! let mut c = compiler.constraint(&format)?;                            // per sequence
//! loop {
//!     if let Some(c) = &mut c { c.allowed()?.apply(&mut logits); }
//!     let token = sample(&logits);
//!     if let Some(c) = &mut c { c.commit(token)?; }
//!     if eos_ids.contains(&token) { break; }
//! }
//! ```
//!
//! # What the output looks like
//!
//! JSON is written the way Python's `json.dumps` writes it on one line: `", "` between items,
//! `": "` between a key and its value, and no other whitespace (no newlines, no indentation).
//! Object properties come in the order the schema lists them. Special tokens (`<|im_end|>`,
//! `<|im_start|>`, ...) never appear inside the JSON: the trie marks them special, so no grammar
//! byte can produce them; only an end-of-sequence id may follow a complete value.
//!
//! # What bounds the generation
//!
//! Constrained sampling always ends, by one of:
//!
//! 1. **The grammar itself.** Once the value is complete and cannot be extended (an object's or
//!    array's closing bracket, a closed string, `true`, an `enum` member, ...) the constraint is
//!    [finished](Constraint::is_finished) and only end-of-sequence ids are allowed, so the next
//!    sampled token ends the sequence. A value that could still grow but is already valid (a
//!    top-level number `12`) allows EOS alongside its continuations.
//! 2. **No free whitespace.** llguidance's default lets JSON carry any amount of whitespace
//!    between tokens; a small model then often emits spaces or newlines forever. Here there is
//!    none to emit.
//! 3. **The schema's own limits**: `maxLength`, `maxItems`, `maxProperties`, `maximum`,
//!    `enum`/`const`, `additionalProperties: false`. A schema without them (a free `string`,
//!    an unbounded `array`, `{"type":"object"}` with any extra keys) can still go on as long as
//!    the model wants to.
//! 4. **The sampler's `max_tokens`**, which always applies. A sequence cut there is incomplete
//!    JSON (`finish_reason: "length"`), as with OpenAI.
//!
//! # `strict`
//!
//! OpenAI constrains decoding only when `json_schema.strict` is `true`; with `strict: false` it
//! merely shows the schema to the model. RFT users expect parseable output either way (graders
//! read `sample.output_json`), so OpenRFT constrains in both cases and `strict` decides what
//! happens to schema keywords llguidance does not implement (`uniqueItems`, `contains`,
//! `if`/`then`/`else`, `dependentRequired`, unknown `format`s, ...):
//!
//! - `strict: true`: they are errors ([`ConstraintError::Schema`]), since the output could
//!   otherwise violate the schema the caller asked to be enforced;
//! - `strict: false`: they are ignored (with a `tracing` warning): the output is valid JSON that
//!   follows every keyword llguidance does implement.
//!
//! `$ref` works for references inside the schema (`#/$defs/...`, `#`); references to other
//! documents are errors: nothing is ever fetched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;
use toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

use crate::tokenizer::Tokenizer;

/// Why a `response_format` cannot be used, or a constrained step failed.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The `response_format` value itself is malformed.
    #[error("{field}: {message}")]
    InvalidFormat {
        /// The JSON path of the bad field, e.g. `response_format.json_schema.name`.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The schema is valid JSON but cannot be turned into a grammar (unsupported or
    /// unsatisfiable keywords, a `$ref` to another document, ...).
    #[error(
        "response_format.json_schema.schema ({name:?}) cannot be enforced: {message}\nhint: {hint}"
    )]
    Schema {
        /// The format's `json_schema.name` (`json_object` for `{"type":"json_object"}`).
        name: String,
        /// llguidance's explanation.
        message: String,
        /// How to fix it.
        hint: &'static str,
    },
    /// The tokenizer cannot be used for constrained decoding.
    #[error("cannot build the token trie for constrained decoding: {message}")]
    Tokenizer {
        /// What is wrong with the vocabulary.
        message: String,
    },
    /// The sampler committed a token the last mask did not allow.
    #[error("token {token} ({text:?}) is not allowed here by the response_format; apply Constraint::allowed()'s mask to the logits before sampling")]
    TokenNotAllowed {
        /// The token id.
        token: u32,
        /// Its bytes, lossily as text.
        text: String,
    },
    /// The sampler committed a token past the end of the vocabulary.
    #[error("token {token} is outside the tokenizer's vocabulary of {vocab_size} ids; the model's extra (padding) rows cannot be sampled under a response_format")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// The tokenizer's vocabulary size.
        vocab_size: usize,
    },
    /// The grammar engine failed during a step (state too complex, internal error). The sequence
    /// cannot continue under the constraint.
    #[error("constrained decoding failed: {message}\nhint: simplify the schema (fewer alternatives, bounded lengths) or drop response_format")]
    Engine {
        /// llguidance's explanation.
        message: String,
    },
}

/// OpenAI's `response_format`, parsed:
/// `{"type":"text"}`, `{"type":"json_object"}`, or
/// `{"type":"json_schema","json_schema":{"name":..,"schema":{..},"strict":bool}}`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Free text: no constraint.
    Text,
    /// Any JSON object.
    JsonObject,
    /// A JSON value valid under `schema`.
    JsonSchema {
        /// The format's name (`^[a-zA-Z0-9_-]{1,64}$`, as OpenAI requires).
        name: String,
        /// The JSON schema; `{}` (any JSON value) when the request gave none.
        schema: Value,
        /// Whether keywords llguidance cannot enforce are errors (`true`) or ignored (`false`);
        /// the output is constrained either way (see the module documentation).
        strict: bool,
    },
}

impl ResponseFormat {
    /// The format as OpenAI's (and vLLM's) `response_format` JSON: the inverse of
    /// [`ResponseFormat::from_value`], what a remote rollout engine is sent.
    pub fn to_value(&self) -> Value {
        #[derive(serde::Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Wire<'a> {
            Text,
            JsonObject,
            JsonSchema { json_schema: Schema<'a> },
        }
        #[derive(serde::Serialize)]
        struct Schema<'a> {
            name: &'a str,
            schema: &'a Value,
            strict: bool,
        }
        let wire = match self {
            ResponseFormat::Text => Wire::Text,
            ResponseFormat::JsonObject => Wire::JsonObject,
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => Wire::JsonSchema {
                json_schema: Schema {
                    name,
                    schema,
                    strict: *strict,
                },
            },
        };
        serde_json::to_value(wire).unwrap_or(Value::Null)
    }

    /// Parses a `response_format` value. `null` means text. Besides Chat Completions' shape
    /// (`{"type":"json_schema","json_schema":{..}}`) it accepts the Responses API's flat
    /// `text.format` shape (`{"type":"json_schema","name":..,"schema":{..},"strict":..}`).
    /// Errors name the bad field (`response_format.json_schema.name: ...`).
    pub fn from_value(v: &Value) -> Result<ResponseFormat, ConstraintError> {
        const ROOT: &str = "response_format";
        let obj = match v {
            Value::Null => return Ok(ResponseFormat::Text),
            Value::Object(obj) => obj,
            other => {
                return Err(invalid(
                    ROOT,
                    format!(
                        "expected an object such as {{\"type\": \"json_object\"}}, got {}",
                        kind_of(other)
                    ),
                ))
            }
        };
        let ty = match obj.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(invalid(
                    "response_format.type",
                    format!("expected a string, got {}", kind_of(other)),
                ))
            }
            None => {
                return Err(invalid(
                    "response_format.type",
                    "missing; expected \"text\", \"json_object\" or \"json_schema\"",
                ))
            }
        };
        match ty {
            "text" => {
                reject_unknown(obj, ROOT, &["type"])?;
                Ok(ResponseFormat::Text)
            }
            "json_object" => {
                reject_unknown(obj, ROOT, &["type"])?;
                Ok(ResponseFormat::JsonObject)
            }
            "json_schema" => match obj.get("json_schema") {
                Some(Value::Object(inner)) => {
                    reject_unknown(obj, ROOT, &["type", "json_schema"])?;
                    parse_json_schema(inner, "response_format.json_schema")
                }
                Some(other) => Err(invalid(
                    "response_format.json_schema",
                    format!(
                        "expected an object {{\"name\": .., \"schema\": {{..}}, \"strict\": true}}, got {}",
                        kind_of(other)
                    ),
                )),
                // The Responses API puts name/schema/strict beside `type`.
                None if obj.contains_key("name") || obj.contains_key("schema") => {
                    parse_json_schema(obj, ROOT)
                }
                None => Err(invalid(
                    "response_format.json_schema",
                    "missing; {\"type\": \"json_schema\"} needs \"json_schema\": {\"name\": .., \"schema\": {..}}",
                )),
            },
            other => Err(invalid(
                "response_format.type",
                format!(
                    "{other:?} is not a response format; expected \"text\", \"json_object\" or \"json_schema\""
                ),
            )),
        }
    }

    /// What a format compiles: the cache key (everything that changes the grammar, not the
    /// name), the name for messages, the schema and `strict`. `None` for text.
    fn grammar(&self) -> Option<(String, &str, Value, bool)> {
        match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some((
                "json_object".to_owned(),
                "json_object",
                serde_json::json!({"type": "object"}),
                true,
            )),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => Some((
                format!("json_schema strict={strict} {schema}"),
                name.as_str(),
                schema.clone(),
                *strict,
            )),
        }
    }
}

fn parse_json_schema(
    obj: &serde_json::Map<String, Value>,
    at: &str,
) -> Result<ResponseFormat, ConstraintError> {
    let field = |k: &str| format!("{at}.{k}");
    let allowed: &[&str] = if at == "response_format" {
        &["type", "name", "description", "schema", "strict"]
    } else {
        &["name", "description", "schema", "strict"]
    };
    reject_unknown(obj, at, allowed)?;
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(
                &field("name"),
                format!("expected a string, got {}", kind_of(other)),
            ))
        }
        None => {
            return Err(invalid(
                &field("name"),
                "missing; give the format a name such as \"answer\"",
            ))
        }
    };
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(invalid(
            &field("name"),
            format!("{name:?} must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'"),
        ));
    }
    if let Some(d) = obj.get("description") {
        if !d.is_string() && !d.is_null() {
            return Err(invalid(
                &field("description"),
                format!("expected a string, got {}", kind_of(d)),
            ));
        }
    }
    let strict = match obj.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                &field("strict"),
                format!("expected true or false, got {}", kind_of(other)),
            ))
        }
    };
    let schema = match obj.get("schema") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Value::Object(Default::default()),
        Some(Value::Object(s)) => {
            if s.contains_key("x-guidance") {
                return Err(invalid(
                    &field("schema.x-guidance"),
                    "llguidance's compile options cannot be set from a request: OpenRFT fixes them so that generation ends (see rft_model::constrain); remove the key",
                ));
            }
            Value::Object(s.clone())
        }
        Some(Value::Bool(false)) => {
            return Err(invalid(
                &field("schema"),
                "the schema `false` accepts no value at all; give a schema object",
            ))
        }
        Some(other) => {
            return Err(invalid(
                &field("schema"),
                format!("expected a JSON schema object, got {}", kind_of(other)),
            ))
        }
    };
    Ok(ResponseFormat::JsonSchema {
        name,
        schema,
        strict,
    })
}

fn reject_unknown(
    obj: &serde_json::Map<String, Value>,
    at: &str,
    known: &[&str],
) -> Result<(), ConstraintError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(invalid(
            &format!("{at}.{k}"),
            format!(
                "unknown field; expected only {}",
                known
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConstraintError {
    ConstraintError::InvalidFormat {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most this many compiled formats are kept; past it the cache starts over. A training run
/// uses one format; a server sees few distinct ones.
const CACHE_CAPACITY: usize = 64;

/// Compiles [`ResponseFormat`]s into per-sequence [`Constraint`]s for one tokenizer.
///
/// Build it once per model (it computes the token trie and llguidance's token slices, about
/// 250 ms for SmolLM2's 49k vocabulary) and share it: it is `Send + Sync`, and compiled formats are
/// cached, so [`ConstraintCompiler::constraint`] is cheap after the first call for a schema.
pub struct ConstraintCompiler {
    factory: ParserFactory,
    eos: Arc<[u32]>,
    vocab_size: usize,
    /// Fresh matchers, one per format; constraints are clones of them.
    cache: Mutex<HashMap<String, Matcher>>,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl ConstraintCompiler {
    /// Builds the token trie from the tokenizer's bytes (special tokens marked special, so no
    /// grammar can produce them; every id of [`Tokenizer::eos_token_ids`] ends a sequence).
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, ConstraintError> {
        let eos: Arc<[u32]> = tokenizer.eos_token_ids().into();
        let Some(&first_eos) = eos.first() else {
            return Err(ConstraintError::Tokenizer {
                message: "the tokenizer has no end-of-sequence token, so a constrained sequence could never end; use a model whose tokenizer names eos_token".to_owned(),
            });
        };
        let words: Vec<Vec<u8>> = tokenizer
            .all_token_bytes()
            .iter()
            .enumerate()
            .map(|(id, bytes)| {
                if !bytes.is_empty() && tokenizer.is_special(id as u32) {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.clone()
                }
            })
            .collect();
        let vocab_size = words.len();
        // toktrie packs ids in 24 bits and subtree sizes in 22; stay well inside both.
        if vocab_size == 0 || vocab_size >= 1 << 21 {
            return Err(ConstraintError::Tokenizer {
                message: format!(
                    "a vocabulary of {vocab_size} tokens is not supported (1 to 2,097,151)"
                ),
            });
        }
        if let Some(&bad) = eos.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ConstraintError::Tokenizer {
                message: format!(
                    "end-of-sequence id {bad} is outside the vocabulary of {vocab_size} tokens"
                ),
            });
        }
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        // TokTrie asserts its invariants; the checks above cover them, this keeps a surprise
        // from taking the process down.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words).with_eos_tokens(&eos))
            .map_err(|_| ConstraintError::Tokenizer {
                message: "toktrie rejected the vocabulary (an internal invariant failed)"
                    .to_owned(),
            })?;
        // Greedy tokenization of forced bytes is never used: the sampler asks for masks only
        // (no fast-forward tokens), which needs no canonical tokenizer.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Tokenizer {
                message: e.to_string(),
            })?;
        factory.quiet();
        Ok(ConstraintCompiler {
            factory,
            eos,
            vocab_size,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The vocabulary size the masks cover (the tokenizer's, not the model's padded one).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids that end a sequence; the only ones allowed once a constraint is finished.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// A fresh constraint for one sequence; `None` for [`ResponseFormat::Text`]. The first call
    /// for a format compiles it (about a millisecond for a small schema); later calls clone the
    /// compiled state, which also shares llguidance's lazily built lexer between sequences.
    pub fn constraint(
        &self,
        format: &ResponseFormat,
    ) -> Result<Option<Constraint>, ConstraintError> {
        let Some((key, name, schema, strict)) = format.grammar() else {
            return Ok(None);
        };
        if let Some(m) = self.lock_cache().get(&key) {
            return Ok(Some(self.wrap(m.clone())));
        }
        let matcher = self.compile(name, schema, strict)?;
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, matcher.clone());
        Ok(Some(self.wrap(matcher)))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Matcher>> {
        // The cache holds only finished matchers; a panic elsewhere cannot leave it half-written.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrap(&self, matcher: Matcher) -> Constraint {
        Constraint {
            matcher,
            eos: self.eos.clone(),
            vocab_size: self.vocab_size,
            mask: None,
            ended: false,
        }
    }

    fn compile(
        &self,
        name: &str,
        mut schema: Value,
        strict: bool,
    ) -> Result<Matcher, ConstraintError> {
        let t0 = Instant::now();
        let schema_err = |message: String| ConstraintError::Schema {
            name: name.to_owned(),
            message: clean_message(&message),
            hint: if strict {
                "remove or rewrite the keywords named above (see llguidance's docs/json_schema.md for what is supported), or set \"strict\": false to ignore those it cannot enforce"
            } else {
                "fix the schema: it must be a JSON schema object whose $refs point inside it (#/$defs/...)"
            },
        };
        let Some(obj) = schema.as_object_mut() else {
            return Err(schema_err("the schema is not an object".to_owned()));
        };
        let options = JsonCompileOptions {
            item_separator: ", ".to_owned(),
            key_separator: ": ".to_owned(),
            whitespace_flexible: false,
            whitespace_pattern: None,
            lenient: !strict,
            ..JsonCompileOptions::default()
        };
        let options = serde_json::to_value(&options).map_err(|e| schema_err(e.to_string()))?;
        obj.insert("x-guidance".to_owned(), options);
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| schema_err(e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(schema_err(e));
        }
        for w in matcher.grammar_warnings() {
            tracing::warn!(
                format = name,
                "response_format schema: {w} (ignored, strict is false)"
            );
        }
        tracing::debug!(
            format = name,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "compiled response_format"
        );
        Ok(matcher)
    }
}

/// llguidance appends `<non-verbose/>` markers meant for its own logs.
fn clean_message(message: &str) -> String {
    message.replace("\n<non-verbose/>", "").trim().to_owned()
}

/// The constraint state of one sequence. `Send`, so sequences can be stepped on any thread;
/// sequences made from the same format share a lexer cache behind a mutex. Cloning copies the
/// state (e.g. to fork `n` samples after a shared prefix).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    eos: Arc<[u32]>,
    vocab_size: usize,
    /// The mask for the current state, once computed.
    mask: Option<TokenMask>,
    /// An end-of-sequence token was committed.
    ended: bool,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("finished", &self.is_finished())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The tokens allowed next, as a bitmask over the vocabulary. Once the value is complete
    /// ([`Constraint::is_finished`]) only end-of-sequence ids are allowed. Computing it is the
    /// costly part of a step (about 50-100 us typically for a 49k vocabulary, up to a few ms in
    /// the first steps of a format while llguidance builds its lexer lazily); asking twice without a commit
    /// in between returns the same mask without recomputing.
    pub fn allowed(&mut self) -> Result<TokenMask, ConstraintError> {
        if let Some(mask) = &self.mask {
            return Ok(mask.clone());
        }
        let mask = if self.ended || self.is_finished() {
            TokenMask::from_ids(self.vocab_size, &self.eos)
        } else {
            let vob = self.matcher.compute_mask().map_err(engine_err)?;
            TokenMask::from_words(self.vocab_size, vob.as_slice())
        };
        if mask.count_allowed() == 0 {
            return Err(ConstraintError::Engine {
                message: "no token can continue the output (the grammar reached a dead end)"
                    .to_owned(),
            });
        }
        self.mask = Some(mask.clone());
        Ok(mask)
    }

    /// Advances by the sampled token. Errors if the current mask does not allow it (the state
    /// is then unchanged) or if the engine fails. After an end-of-sequence token the sequence is
    /// over; committing another end-of-sequence token is accepted and does nothing.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if token as usize >= self.vocab_size {
            return Err(ConstraintError::TokenOutOfRange {
                token,
                vocab_size: self.vocab_size,
            });
        }
        if !self.allowed()?.is_allowed(token) {
            let text = self
                .matcher
                .tok_env()
                .map(|env| String::from_utf8_lossy(env.tok_trie().token(token)).into_owned())
                .unwrap_or_default();
            return Err(ConstraintError::TokenNotAllowed { token, text });
        }
        self.mask = None;
        if self.eos.contains(&token) {
            if !self.ended && !self.matcher.is_stopped() {
                self.matcher.consume_token(token).map_err(engine_err)?;
            }
            self.ended = true;
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(engine_err)
    }

    /// Whether the value is complete and cannot be extended: from now on only end-of-sequence
    /// ids are allowed. (Also true once an end-of-sequence token was committed.)
    pub fn is_finished(&self) -> bool {
        self.ended
            || matches!(
                self.matcher.stop_reason(),
                StopReason::NoExtension | StopReason::NoExtensionBias | StopReason::EndOfSentence
            )
    }

    /// Whether the output so far is a complete value, so that end-of-sequence is allowed now
    /// (possibly among continuations, as after the top-level number `12`).
    pub fn is_accepting(&mut self) -> bool {
        self.is_finished() || self.matcher.is_accepting().unwrap_or(false)
    }
}

fn engine_err(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError::Engine {
        message: clean_message(&e.to_string()),
    }
}

/// A set of token ids over the vocabulary, one bit per token (bit `i` set = token `i` allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    /// Bit `i % 32` of word `i / 32` is token `i`; bits at or past `len` are zero.
    words: Vec<u32>,
    len: usize,
}

impl TokenMask {
    fn from_words(len: usize, words: &[u32]) -> TokenMask {
        let n = len.div_ceil(32);
        let mut w: Vec<u32> = words.iter().copied().take(n).collect();
        w.resize(n, 0);
        if !len.is_multiple_of(32) {
            if let Some(last) = w.last_mut() {
                *last &= (1u32 << (len % 32)) - 1;
            }
        }
        TokenMask { words: w, len }
    }

    fn from_ids(len: usize, ids: &[u32]) -> TokenMask {
        let mut words = vec![0u32; len.div_ceil(32)];
        for &id in ids {
            if (id as usize) < len {
                words[id as usize / 32] |= 1 << (id % 32);
            }
        }
        TokenMask { words, len }
    }

    /// Whether `token` is allowed; ids past the vocabulary never are.
    pub fn is_allowed(&self, token: u32) -> bool {
        let i = token as usize;
        i < self.len && self.words[i / 32] & (1 << (i % 32)) != 0
    }

    /// Sets every disallowed entry of `logits` to `-inf`, including entries past the
    /// vocabulary (a model's padding rows). `logits` may be any length.
    pub fn apply(&self, logits: &mut [f32]) {
        for (chunk_index, chunk) in logits.chunks_mut(32).enumerate() {
            let word = self.words.get(chunk_index).copied().unwrap_or(0);
            if word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// How many tokens are allowed.
    pub fn count_allowed(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The allowed ids, ascending.
    pub fn allowed_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..32u32)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u32 * 32 + b)
        })
    }

    /// The vocabulary size the mask covers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask covers no vocabulary at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bits: word `i / 32`, bit `i % 32` is token `i` (for a GPU-side mask).
    pub fn as_words(&self) -> &[u32] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn thread_safety() {
        assert_send_sync::<ConstraintCompiler>();
        assert_send::<Constraint>();
        assert_send_sync::<TokenMask>();
    }

    #[test]
    fn mask_bits() {
        let m = TokenMask::from_words(40, &[0b101, u32::MAX, 7]);
        assert!(m.is_allowed(0) && !m.is_allowed(1) && m.is_allowed(2));
        assert!(m.is_allowed(32) && m.is_allowed(39) && !m.is_allowed(40));
        assert_eq!(m.count_allowed(), 2 + 8);
        let mut logits = vec![0.0f32; 70];
        m.apply(&mut logits);
        assert_eq!(logits[0], 0.0);
        assert_eq!(logits[1], f32::NEG_INFINITY);
        assert_eq!(logits[39], 0.0);
        assert!(logits[40..].iter().all(|&x| x == f32::NEG_INFINITY));
        let ids: Vec<u32> = m.allowed_ids().take(3).collect();
        assert_eq!(ids, [0, 2, 32]);
        let e = TokenMask::from_ids(40, &[3, 99]);
        assert_eq!(e.allowed_ids().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn cache_key_ignores_name() {
        let a = ResponseFormat::JsonSchema {
            name: "a".into(),
            schema: json!({"type": "object"}),
            strict: true,
        };
        let b = ResponseFormat::JsonSchema {
            name: "b".into(),
            schema: json!({"type": "object"}),
            strict: true,
        };
        assert_eq!(a.grammar().map(|g| g.0), b.grammar().map(|g| g.0));
        assert!(ResponseFormat::Text.grammar().is_none());
    }
}
