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

use std::fmt;

use serde_json::Value;

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

/// What templates read from: the dataset row and the model's sample.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The `item` namespace.
    pub item: &'a Value,
    /// The `sample` namespace.
    pub sample: &'a Value,
}

/// A variable that could not be resolved while rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVariable(pub String);

impl fmt::Display for MissingVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template variable {{{{{}}}}} not found", self.0)
    }
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

    /// Renders the template against `scope`.
    pub fn render(&self, scope: Scope<'_>) -> Result<String, MissingVariable> {
        // The common case, a template that is exactly one string variable, avoids a copy of
        // the surrounding buffer but not of the value itself; grading owns its inputs anyway.
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Variable(variable) => match variable.resolve(scope) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => return Err(MissingVariable(variable.source.clone())),
                },
                Segment::Invalid(text) => return Err(MissingVariable(text.clone())),
            }
        }
        Ok(out)
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

    fn render(template: &str, item: Value, sample: Value) -> Result<String, MissingVariable> {
        Template::parse(template).render(Scope {
            item: &item,
            sample: &sample,
        })
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
            MissingVariable("item.nope".into())
        );
        assert_eq!(
            render("{{ row.x }}", json!({"x": 1}), json!({})).unwrap_err(),
            MissingVariable("row.x".into())
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
}
