//! Hugging Face chat templates, rendered with minijinja the way transformers'
//! `apply_chat_template` renders them with Jinja2.
//!
//! transformers uses a sandboxed Jinja2 environment with `trim_blocks` and `lstrip_blocks`, the
//! loop-controls extension, its own `tojson` (Python's `json.dumps`, keys in insertion order, no
//! HTML escaping) and two globals, `raise_exception` and `strftime_now`. minijinja needs the same
//! switches plus `minijinja_contrib`'s Python-method shim (`.strip()`, `.items()`, ...), and a
//! `tojson` of our own, since minijinja's is HTML-safe and compact.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, ErrorKind};

use super::TokenizerError;

/// The template name inside the environment; it shows in error messages.
const NAME: &str = "chat_template";

/// transformers' old default: ChatML, which SmolLM2 and Qwen2 also use.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The name of the tool [`ChatTemplate::renders_tools`] offers the template.
const PROBE_TOOL: &str = "openrft_probe_tool_5f1c";

/// The fallback tools prompt, before the tools (Qwen2.5's wording).
const FALLBACK_TOOLS_HEAD: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
/// The fallback tools prompt, after the tools.
const FALLBACK_TOOLS_TAIL: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

/// A compiled chat template with the tokenizer's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    renders_tools: std::sync::OnceLock<bool>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// The error `raise_exception` returns, recognised again when rendering fails.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn template_err(e: &minijinja::Error) -> TokenizerError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(Raised(message)) = err.downcast_ref::<Raised>() {
            return TokenizerError::TemplateException {
                message: message.clone(),
            };
        }
        source = err.source();
    }
    TokenizerError::Template {
        message: e.to_string(),
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. `bos_token` and `eos_token` are the values the template
    /// sees (empty when the model has none).
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_err(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| template_err(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.unwrap_or_default().to_owned(),
            eos_token: eos_token.unwrap_or_default().to_owned(),
            renders_tools: std::sync::OnceLock::new(),
        })
    }

    /// The built-in ChatML template, for models that ship none.
    pub fn chatml(bos_token: Option<&str>, eos_token: Option<&str>) -> ChatTemplate {
        match Self::new(CHATML, bos_token, eos_token) {
            Ok(template) => template,
            // CHATML is a constant that the tests compile; this arm cannot run.
            Err(e) => unreachable!("the built-in ChatML template does not compile: {e}"),
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation: `messages` are OpenAI-style objects (`role`, `content`,
    /// `tool_calls`, ...), `tools` the function definitions, and `add_generation_prompt` opens
    /// the assistant's turn.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// Renders a prompt for sampling (the assistant's turn opened), the way OpenRFT feeds
    /// conversations with tools to a model:
    /// - assistant `tool_calls` whose `arguments` are a JSON string (OpenAI's shape) are given
    ///   to the template as objects, which is what Hugging Face templates expect;
    /// - an empty `tools` list is no tools;
    /// - when the template ignores `tools` (SmolLM2's, ChatML), the tools are listed in a system
    ///   message in the Hermes format ([`ChatTemplate::fallback_tools_prompt`]), assistant tool
    ///   calls are written as `<tool_call>` blocks and tool results as `<tool_response>` blocks,
    ///   so the model sees what a tool-aware template would have shown it and its calls parse
    ///   with [`crate::tool_calls::ToolCallFormat::Hermes`].
    pub fn render_prompt(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, TokenizerError> {
        self.render_prompt_with(messages, tools, &serde_json::Map::new())
    }

    /// [`ChatTemplate::render_prompt`] with extra template variables.
    pub fn render_prompt_with(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        let tools = tools.filter(|t| !t.is_empty());
        let has_tool_turns = messages.iter().any(|m| {
            m.get("tool_calls").is_some()
                || m.get("role").and_then(serde_json::Value::as_str) == Some("tool")
        });
        if tools.is_none() && !has_tool_turns {
            return self.render_with(messages, None, true, extra);
        }
        if self.renders_tools() {
            let messages = crate::tool_calls::arguments_as_objects(messages);
            return self.render_with(&messages, tools, true, extra);
        }
        let messages = fallback_messages(messages, tools);
        self.render_with(&messages, None, true, extra)
    }

    /// Whether the template shows the model its `tools` (checked once, by rendering a probe
    /// tool and looking for its name).
    pub fn renders_tools(&self) -> bool {
        *self.renders_tools.get_or_init(|| {
            let probe = serde_json::json!({
                "type": "function",
                "function": {
                    "name": PROBE_TOOL,
                    "description": "probe",
                    "parameters": {"type": "object", "properties": {}},
                },
            });
            let messages = [serde_json::json!({"role": "user", "content": "hello"})];
            self.render(&messages, Some(&[probe]), true)
                .is_ok_and(|out| out.contains(PROBE_TOOL))
        })
    }

    /// The syntax models prompted by this template call tools in: the template's own family
    /// when it shows tools, else Hermes (what the fallback prompt asks for).
    pub fn tool_call_format(&self) -> crate::tool_calls::ToolCallFormat {
        if self.renders_tools() {
            crate::tool_calls::ToolCallFormat::detect(&self.source)
        } else {
            crate::tool_calls::ToolCallFormat::Hermes
        }
    }

    /// The system text listing `tools` for templates that ignore them: the Hermes format
    /// Qwen2.5's template writes, each tool as one line of JSON.
    pub fn fallback_tools_prompt(tools: &[serde_json::Value]) -> String {
        let options = DumpOptions {
            indent: None,
            item_sep: ", ".to_owned(),
            key_sep: ": ".to_owned(),
            ensure_ascii: false,
            sort_keys: false,
        };
        let mut out = String::from(FALLBACK_TOOLS_HEAD);
        for tool in tools {
            out.push('\n');
            dump(tool, &options, 0, &mut out);
        }
        out.push_str(FALLBACK_TOOLS_TAIL);
        out
    }

    /// [`ChatTemplate::render`] with extra template variables (transformers'
    /// `**kwargs`, e.g. `enable_thinking`, `date_string`).
    pub fn render_with(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        let mut context = extra.clone();
        context.insert("messages".to_owned(), messages.into());
        context.insert(
            "tools".to_owned(),
            tools.map_or(serde_json::Value::Null, Into::into),
        );
        context.insert(
            "add_generation_prompt".to_owned(),
            add_generation_prompt.into(),
        );
        context.insert("bos_token".to_owned(), self.bos_token.clone().into());
        context.insert("eos_token".to_owned(), self.eos_token.clone().into());
        let template = self.env.get_template(NAME).map_err(|e| template_err(&e))?;
        template
            .render(Value::from(Serde(&context)))
            .map_err(|e| template_err(&e))
    }
}

/// The conversation a template that ignores tools gets: the tools prompt joined to the first
/// system message (or as a new one at the start), assistant tool calls as `<tool_call>` blocks
/// after the message's text, and tool results as `<tool_response>` blocks in `tool` messages.
fn fallback_messages(
    messages: &[serde_json::Value],
    tools: Option<&[serde_json::Value]>,
) -> Vec<serde_json::Value> {
    use serde_json::{json, Value};
    let mut out: Vec<Value> = messages
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            let text = content_text(m.get("content"));
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                let mut content = text;
                for call in calls {
                    let function = call.get("function").unwrap_or(call);
                    let name = function.get("name").cloned().unwrap_or(Value::Null);
                    let arguments = match function.get("arguments") {
                        Some(Value::String(s)) => serde_json::from_str(s)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| Value::String(s.clone())),
                        Some(other) => other.clone(),
                        None => json!({}),
                    };
                    let call = json!({"name": name, "arguments": arguments});
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str("<tool_call>\n");
                    content.push_str(&call.to_string());
                    content.push_str("\n</tool_call>");
                }
                json!({"role": role, "content": content})
            } else if role == "tool" {
                json!({"role": "tool", "content": format!("<tool_response>\n{text}\n</tool_response>")})
            } else {
                m.clone()
            }
        })
        .collect();
    if let Some(tools) = tools {
        let prompt = ChatTemplate::fallback_tools_prompt(tools);
        match out.first_mut() {
            Some(first) if first.get("role").and_then(Value::as_str) == Some("system") => {
                let text = content_text(first.get("content"));
                first["content"] = Value::String(if text.is_empty() {
                    prompt
                } else {
                    format!("{text}\n\n{prompt}")
                });
            }
            _ => out.insert(0, json!({"role": "system", "content": prompt})),
        }
    }
    out
}

/// A message's content as text: a string as it is, text parts joined, anything else empty.
fn content_text(content: Option<&serde_json::Value>) -> String {
    match content {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// `strftime_now(format)`: the current time, formatted like Python's `strftime`. UTC, where
/// transformers uses the machine's local time (the same on servers that run in UTC).
fn strftime_now(format: String) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, i64::try_from(now).unwrap_or(0))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `strftime` for the directives chat templates use, at `unix_seconds` UTC.
pub(crate) fn strftime(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0);
    let month_name = MONTHS
        .get(usize::try_from(month - 1).unwrap_or(0))
        .copied()
        .unwrap_or("");
    let weekday_name = WEEKDAYS.get(weekday).copied().unwrap_or("");
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:>2}"),
            Some('j') => write!(out, "{day_of_year:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", month_name.get(..3).unwrap_or("")),
            Some('A') => write!(out, "{weekday_name}"),
            Some('a') => write!(out, "{}", weekday_name.get(..3).unwrap_or("")),
            Some('%') => write!(out, "%"),
            // Unknown directives stay as written, as glibc's strftime leaves them.
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those keyword arguments.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            None => Some(v.as_str().unwrap_or_default().to_owned()),
        },
    };
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => {
            let part = |i| {
                v.get_item_by_index(i)
                    .ok()
                    .and_then(|p| p.as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be two strings, like (', ', ': ')",
                        )
                    })
            };
            (part(0)?, part(1)?)
        }
        // Python's defaults: no space after commas when indenting (lines end there instead).
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let options = DumpOptions {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    dump(&json, &options, 0, &mut out);
    Ok(Value::from(out))
}

/// Python `json.dumps` formatting options.
pub(crate) struct DumpOptions {
    pub(crate) indent: Option<String>,
    pub(crate) item_sep: String,
    pub(crate) key_sep: String,
    pub(crate) ensure_ascii: bool,
    pub(crate) sort_keys: bool,
}

/// Writes `value` as Python's `json.dumps` would.
pub(crate) fn dump(
    value: &serde_json::Value,
    options: &DumpOptions,
    level: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &options.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    match value {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                out.push_str(&python_float(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        J::String(s) => python_string(s, options.ensure_ascii, out),
        J::Array(items) if items.is_empty() => out.push_str("[]"),
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_sep);
                }
                newline(out, level + 1);
                dump(item, options, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if map.is_empty() => out.push_str("{}"),
        J::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_sep);
                }
                newline(out, level + 1);
                python_string(key, options.ensure_ascii, out);
                out.push_str(&options.key_sep);
                dump(item, options, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// A JSON string literal as Python escapes it: `"`, `\`, and control characters always;
/// everything outside printable ASCII too when `ensure_ascii` (as `\uXXXX`, surrogate pairs
/// beyond the BMP, lowercase hex).
fn python_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -4..16 and
/// scientific (`1e+16`, `1e-05`) outside; `NaN`/`Infinity` as `json.dumps` writes them.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n_digits = i64::try_from(digits.len()).unwrap_or(1);
    if (-4..16).contains(&exponent) {
        if exponent < 0 {
            let zeros = "0".repeat(usize::try_from(-exponent - 1).unwrap_or(0));
            format!("{sign}0.{zeros}{digits}")
        } else if n_digits > exponent + 1 {
            let (int, frac) = digits.split_at(usize::try_from(exponent + 1).unwrap_or(1));
            format!("{sign}{int}.{frac}")
        } else {
            let zeros = "0".repeat(usize::try_from(exponent + 1 - n_digits).unwrap_or(0));
            format!("{sign}{digits}{zeros}.0")
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{rest}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dumps(v: serde_json::Value, indent: Option<&str>) -> String {
        let options = DumpOptions {
            indent: indent.map(str::to_owned),
            item_sep: if indent.is_some() { "," } else { ", " }.to_owned(),
            key_sep: ": ".to_owned(),
            ensure_ascii: false,
            sort_keys: false,
        };
        let mut out = String::new();
        dump(&v, &options, 0, &mut out);
        out
    }

    #[test]
    fn floats_format_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (21.5, "21.5"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e21, "1e+21"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
            (1e300, "1e+300"),
            (f64::INFINITY, "Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float(f), want, "{f:e}");
        }
    }

    #[test]
    fn dumps_like_python_json() {
        let v = json!({"b": [1, 2.0, "x\"\n\u{1}é"], "a": {}, "c": [], "d": null, "e": true});
        assert_eq!(
            dumps(v.clone(), None),
            r#"{"b": [1, 2.0, "x\"\n\u0001é"], "a": {}, "c": [], "d": null, "e": true}"#
        );
        assert_eq!(
            dumps(v, Some("  ")),
            "{\n  \"b\": [\n    1,\n    2.0,\n    \"x\\\"\\n\\u0001é\"\n  ],\n  \"a\": {},\n  \"c\": [],\n  \"d\": null,\n  \"e\": true\n}"
        );
    }

    #[test]
    fn ensure_ascii_escapes_beyond_ascii_with_surrogates() {
        let mut out = String::new();
        python_string("é😀\u{7f}", true, &mut out);
        assert_eq!(out, r#""\u00e9\ud83d\ude00\u007f""#);
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%B %d, %Y", t), "July 26, 2024");
        assert_eq!(
            strftime("%A %a %H:%M:%S %I%p %j %y %m %e %%", t),
            "Friday Fri 13:05:09 01PM 208 24 07 26 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }

    #[test]
    fn chatml_fallback_renders() {
        let t = ChatTemplate::chatml(None, None);
        let out = t
            .render(&[json!({"role": "user", "content": "hi"})], None, true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let t = ChatTemplate::new(
            "{{ raise_exception('no ' + messages[0].role) }}",
            None,
            None,
        )
        .unwrap();
        let err = t
            .render(&[json!({"role": "robot"})], None, false)
            .unwrap_err();
        assert!(
            matches!(&err, TokenizerError::TemplateException { message } if message == "no robot"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_the_template() {
        let err = ChatTemplate::new("{% for x in %}", None, None).unwrap_err();
        assert!(err.to_string().contains("chat_template"), "{err}");
    }

    #[test]
    fn tojson_keeps_insertion_order_and_does_not_escape_html() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}", None, None).unwrap();
        let out = t
            .render(&[json!({"z": "<b>&</b>", "a": 1})], None, false)
            .unwrap();
        assert_eq!(out, r#"{"z": "<b>&</b>", "a": 1}"#);
    }

    #[test]
    fn trim_and_lstrip_blocks_are_on() {
        let t = ChatTemplate::new("a\n  {% if true %}\nb\n  {% endif %}\nc", None, None).unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "a\nb\nc");
    }

    #[test]
    fn bos_and_eos_are_variables() {
        let t = ChatTemplate::new("{{ bos_token }}|{{ eos_token }}", Some("<s>"), Some("</s>"))
            .unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "<s>|</s>");
    }
}
