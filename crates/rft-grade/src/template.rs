//! Template rendering (spec §3): `{{ item.path }}` and `{{ sample.path }}` inside grader strings.
//!
//! A template is parsed once, when the grader is compiled, into literal text and variable
//! references; rendering then only walks JSON values. The choices where the spec is silent
//! (docs/graders.md, "Templates"):
//! - whitespace inside the braces is optional: `{{item.x}}` and `{{  item.x  }}` are the same;
//! - paths are dotted keys and `[n]` indices: `{{sample.output_json.a[0].b}}`;
//! - strings render verbatim, every other JSON value as compact JSON (`{"a":1}`, `true`, `null`);
//! - `{{item}}` alone renders the whole namespace as JSON;
//! - text that is not a valid variable reference between braces (unknown namespace, bad path)
//!   is an invalid variable, exactly like a missing one: the grade gets `invalid_variable_error`;
//! - an unclosed `{{` is literal text; there is no escaping, since no grader needs a literal `{{x}}`.
//!
//! A template is user input and so is what it reads: `{{item.x}}` written 2,048 times over a
//! 1 MiB `item.x` would ask for 2 GiB. Rendering therefore measures the result before it
//! allocates it, and refuses one over [`MAX_TEMPLATE_RENDER_BYTES`], or one that would take
//! the templates of a single grade together over [`MAX_GRADE_RENDER_BYTES`] (a [`RenderBudget`]
//! carried in the [`Scope`]).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The most one template may render to: 4 MiB. Far above any prompt or reference a grader
/// needs (a judge's context window is smaller), low enough that a grade cannot exhaust memory.
pub const MAX_TEMPLATE_RENDER_BYTES: usize = 4 << 20;

/// The most all the templates rendered for one grade may produce together: 16 MiB. A multi
/// grader's children and a model grader's messages each render several templates, and
/// `grade_all` grades one sample per core at once.
pub const MAX_GRADE_RENDER_BYTES: usize = 16 << 20;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Variable(Variable),
    /// Text between braces that is not a variable reference; rendering it always fails.
    Invalid(String),
}

/// A reference to a value in the `item` or `sample` namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    namespace: Namespace,
    path: Vec<PathStep>,
    source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Item,
    Sample,
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// What templates read from: the dataset row and the model's sample, and the rendering budget
/// of the grade they are rendered for.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The `item` namespace.
    pub item: &'a Value,
    /// The `sample` namespace.
    pub sample: &'a Value,
    /// Shared by every render of one grade; without one, only the per-template cap applies.
    budget: Option<&'a RenderBudget>,
}

impl<'a> Scope<'a> {
    /// A scope with no grade budget: each render is capped at [`MAX_TEMPLATE_RENDER_BYTES`].
    pub fn new(item: &'a Value, sample: &'a Value) -> Scope<'a> {
        Scope {
            item,
            sample,
            budget: None,
        }
    }

    /// The same scope, with every render also spending from `budget`.
    pub fn with_budget(self, budget: &'a RenderBudget) -> Scope<'a> {
        Scope {
            budget: Some(budget),
            ..self
        }
    }
}

/// How many bytes the renders of one grade may still produce ([`MAX_GRADE_RENDER_BYTES`] for a
/// grade). Atomic so that a [`Scope`] stays `Send` and `Sync`.
#[derive(Debug)]
pub struct RenderBudget {
    limit: usize,
    remaining: AtomicUsize,
}

impl RenderBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> RenderBudget {
        RenderBudget {
            limit,
            remaining: AtomicUsize::new(limit),
        }
    }

    /// The budget of one grade: [`MAX_GRADE_RENDER_BYTES`].
    pub fn per_grade() -> RenderBudget {
        RenderBudget::new(MAX_GRADE_RENDER_BYTES)
    }

    fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; false (and nothing taken) if fewer remain.
    fn spend(&self, bytes: usize) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_sub(bytes)
            })
            .is_ok()
    }
}

/// Which cap a render hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderCap {
    /// [`MAX_TEMPLATE_RENDER_BYTES`], for one template.
    Template,
    /// The grade's [`RenderBudget`] ([`MAX_GRADE_RENDER_BYTES`]), for all its templates.
    Grade,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A variable that could not be resolved (or text between braces that is not one).
    #[error("template variable {{{{{0}}}}} not found")]
    Missing(String),
    /// The result would be over a size cap; nothing of that size was allocated.
    #[error("{}", too_large_message(*cap, *limit, at))]
    TooLarge {
        /// The cap that was hit.
        cap: RenderCap,
        /// Its size in bytes.
        limit: usize,
        /// Where the cap was reached: the variable (`item.x`) or `literal text`.
        at: String,
    },
}

fn too_large_message(cap: RenderCap, limit: usize, at: &str) -> String {
    match cap {
        RenderCap::Template => format!(
            "the template renders to more than {limit} bytes (at {at}), the limit for one template (MAX_TEMPLATE_RENDER_BYTES)"
        ),
        RenderCap::Grade => format!(
            "the templates of this grade render to more than {limit} bytes together (at {at}), the limit for one grade (MAX_GRADE_RENDER_BYTES)"
        ),
    }
}

/// The name this error had when a missing variable was the only way rendering could fail;
/// `judge/model.rs` still uses it.
pub type MissingVariable = RenderError;

/// One resolved piece of a render, measured before anything is copied.
enum Piece<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl Template {
    /// Parses a template; never fails, since malformed references fail when rendered.
    pub fn parse(text: &str) -> Template {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                break;
            };
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            let inner = after_open[..close].trim();
            segments.push(match Variable::parse(inner) {
                Some(variable) => Segment::Variable(variable),
                None => Segment::Invalid(inner.to_owned()),
            });
            rest = &after_open[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Template { segments }
    }

    /// The variables this template references, for validation and diagnostics.
    pub fn variables(&self) -> impl Iterator<Item = Result<&Variable, &str>> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Literal(_) => None,
            Segment::Variable(v) => Some(Ok(v)),
            Segment::Invalid(text) => Some(Err(text.as_str())),
        })
    }

    /// Renders the template against `scope`, within [`MAX_TEMPLATE_RENDER_BYTES`] and what is
    /// left of the scope's [`RenderBudget`].
    pub fn render(&self, scope: Scope<'_>) -> Result<String, RenderError> {
        let left = scope.budget.map_or(usize::MAX, RenderBudget::remaining);
        let (cap, limit, cap_size) = if MAX_TEMPLATE_RENDER_BYTES <= left {
            (
                RenderCap::Template,
                MAX_TEMPLATE_RENDER_BYTES,
                MAX_TEMPLATE_RENDER_BYTES,
            )
        } else {
            let total = scope.budget.map_or(left, |b| b.limit);
            (RenderCap::Grade, left, total)
        };
        let too_large = |at: &str| RenderError::TooLarge {
            cap,
            limit: cap_size,
            at: at.to_owned(),
        };
        // First pass: resolve and measure, stopping at the first piece over the limit, so that
        // nothing larger than the limit is ever allocated.
        let mut pieces = Vec::with_capacity(self.segments.len());
        let mut total = 0usize;
        for segment in &self.segments {
            let (piece, at) = match segment {
                Segment::Literal(text) => (Piece::Text(text), "literal text"),
                Segment::Variable(variable) => match variable.resolve(scope) {
                    Some(Value::String(s)) => (Piece::Text(s), variable.source.as_str()),
                    Some(other) => (Piece::Json(other), variable.source.as_str()),
                    None => return Err(RenderError::Missing(variable.source.clone())),
                },
                Segment::Invalid(text) => return Err(RenderError::Missing(text.clone())),
            };
            let room = limit - total;
            let size = match piece {
                Piece::Text(text) => text.len(),
                Piece::Json(value) => json_size(value, room),
            };
            if size > room {
                return Err(too_large(at));
            }
            total += size;
            pieces.push(piece);
        }
        if let Some(budget) = scope.budget {
            // Another render of the same grade may have spent in the meantime.
            if !budget.spend(total) {
                return Err(RenderError::TooLarge {
                    cap: RenderCap::Grade,
                    limit: budget.limit,
                    at: "the end of the template".to_owned(),
                });
            }
        }
        // Second pass: one allocation of the measured size.
        let mut out = String::with_capacity(total);
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Json(value) => out.push_str(&value.to_string()),
            }
        }
        Ok(out)
    }
}

/// The length of `value`'s compact JSON, counted without building it; any value over `limit`
/// bytes is reported as `limit + 1` as soon as that is known.
fn json_size(value: &Value, limit: usize) -> usize {
    struct Counter {
        bytes: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes = self.bytes.saturating_add(buf.len());
            if self.bytes > self.limit {
                // Stops the serializer: the rest need not be counted.
                return Err(io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { bytes: 0, limit };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.bytes,
        Err(_) => limit.saturating_add(1),
    }
}

impl Variable {
    fn parse(text: &str) -> Option<Variable> {
        let (head, mut rest) = match text.find(['.', '[']) {
            Some(idx) => text.split_at(idx),
            None => (text, ""),
        };
        let namespace = match head {
            "item" => Namespace::Item,
            "sample" => Namespace::Sample,
            _ => return None,
        };
        let mut path = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() || key.contains(char::is_whitespace) || key.contains(']') {
                    return None;
                }
                path.push(PathStep::Key(key.to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']')?;
                let index = after[..end].trim().parse().ok()?;
                path.push(PathStep::Index(index));
                rest = &after[end + 1..];
            } else {
                return None;
            }
        }
        Some(Variable {
            namespace,
            path,
            source: text.to_owned(),
        })
    }

    fn resolve<'a>(&self, scope: Scope<'a>) -> Option<&'a Value> {
        let mut value = match self.namespace {
            Namespace::Item => scope.item,
            Namespace::Sample => scope.sample,
        };
        for step in &self.path {
            value = match (step, value) {
                (PathStep::Key(key), Value::Object(map)) => map.get(key)?,
                (PathStep::Index(idx), Value::Array(items)) => items.get(*idx)?,
                // `.0` on an array reads like an index to most users; allow it.
                (PathStep::Key(key), Value::Array(items)) => {
                    items.get(key.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(value)
    }

    /// The text of the reference as written, e.g. `item.answer`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True for references into the `sample` namespace.
    pub fn is_sample(&self) -> bool {
        self.namespace == Namespace::Sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, item: Value, sample: Value) -> Result<String, RenderError> {
        Template::parse(template).render(Scope::new(&item, &sample))
    }

    #[test]
    fn whitespace_inside_braces_is_optional() {
        let item = json!({"x": "v"});
        assert_eq!(
            render("{{item.x}}|{{ item.x }}|{{   item.x}}", item, json!({})).unwrap(),
            "v|v|v"
        );
    }

    #[test]
    fn nested_paths_with_indices() {
        let sample = json!({"output_json": {"a": [{"b": "deep"}, {"b": 2}]}});
        assert_eq!(
            render(
                "{{sample.output_json.a[0].b}} {{sample.output_json.a[1].b}}",
                json!({}),
                sample
            )
            .unwrap(),
            "deep 2"
        );
    }

    #[test]
    fn non_strings_render_as_compact_json() {
        let item = json!({"n": 1.5, "b": true, "z": null, "o": {"k": [1, "two"]}, "i": 3});
        assert_eq!(
            render(
                "{{item.n}} {{item.b}} {{item.z}} {{item.o}} {{item.i}}",
                item,
                json!({})
            )
            .unwrap(),
            r#"1.5 true null {"k":[1,"two"]} 3"#
        );
    }

    #[test]
    fn missing_variable_and_unknown_namespace_fail() {
        assert_eq!(
            render("{{item.nope}}", json!({}), json!({})).unwrap_err(),
            RenderError::Missing("item.nope".into())
        );
        assert_eq!(
            render("{{ row.x }}", json!({"x": 1}), json!({})).unwrap_err(),
            RenderError::Missing("row.x".into())
        );
        assert!(render("{{item.a[x]}}", json!({"a": [1]}), json!({})).is_err());
    }

    #[test]
    fn literal_text_and_unclosed_braces_are_kept() {
        assert_eq!(render("a {{ b", json!({}), json!({})).unwrap(), "a {{ b");
        assert_eq!(render("no vars", json!({}), json!({})).unwrap(), "no vars");
        assert_eq!(render("", json!({}), json!({})).unwrap(), "");
    }

    #[test]
    fn whole_namespace_renders_as_json() {
        assert_eq!(
            render("{{item}}", json!({"a": 1}), json!({})).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn a_render_over_the_template_cap_fails_before_allocating_it() {
        // 2,048 copies of 1 MiB would be 2 GiB; the render stops at the fifth.
        let item = json!({"x": "a".repeat(1 << 20)});
        let err = render(&"{{ item.x }}".repeat(2048), item.clone(), json!({})).unwrap_err();
        assert_eq!(
            err,
            RenderError::TooLarge {
                cap: RenderCap::Template,
                limit: MAX_TEMPLATE_RENDER_BYTES,
                at: "item.x".into()
            }
        );
        assert!(
            err.to_string().contains("MAX_TEMPLATE_RENDER_BYTES"),
            "{err}"
        );
        // Exactly at the cap is fine.
        assert_eq!(
            render(&"{{item.x}}".repeat(4), item, json!({}))
                .unwrap()
                .len(),
            MAX_TEMPLATE_RENDER_BYTES
        );
    }

    #[test]
    fn json_values_are_measured_against_the_cap() {
        // 4,200 strings of 1 KiB: just over 4 MiB once quoted and separated.
        let big = json!({"o": {"list": vec!["x".repeat(1024); 4200]}});
        assert!(matches!(
            render("{{item.o}}", big, json!({})),
            Err(RenderError::TooLarge {
                cap: RenderCap::Template,
                ..
            })
        ));
        assert_eq!(json_size(&json!({"k": [1, "two"]}), 100), 15);
        assert_eq!(json_size(&json!({"k": [1, "two"]}), 10), 11);
    }

    #[test]
    fn renders_of_one_grade_share_a_budget() {
        let item = json!({"x": "a".repeat(1000)});
        let sample = json!({});
        let budget = RenderBudget::new(2500);
        let scope = Scope::new(&item, &sample).with_budget(&budget);
        let template = Template::parse("{{item.x}}");
        assert!(template.render(scope).is_ok());
        assert!(template.render(scope).is_ok());
        let err = template.render(scope).unwrap_err();
        assert_eq!(
            err,
            RenderError::TooLarge {
                cap: RenderCap::Grade,
                limit: 2500,
                at: "item.x".into()
            }
        );
        assert!(err.to_string().contains("MAX_GRADE_RENDER_BYTES"), "{err}");
        // A failed render spends nothing: 500 bytes are still there.
        assert_eq!(
            Template::parse("{{item.x}}|{{item.x}}")
                .render(scope)
                .map_err(|e| e.to_string()),
            Err(err.to_string())
        );
        assert!(Template::parse("short").render(scope).is_ok());
    }
}
