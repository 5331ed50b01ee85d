//! The `calculate_output` language of multi graders (spec §2.8).
//!
//! Written here rather than taken from `evalexpr`: the language is tiny, and OpenAI's names
//! (`log` is natural, `min`/`max` take any number of arguments, `^` is power) and its error
//! classes (a parse error vs an unknown variable) must map onto distinct grader error flags.
//!
//! Grammar, loosest binding first (docs/graders.md, "Formulas"):
//! ```text
//! expr    := term (("+" | "-") term)*
//! term    := unary (("*" | "/") unary)*
//! unary   := ("-" | "+") unary | power
//! power   := primary ("^" unary)?          right-associative; -2^2 = -4 as in Python
//! primary := number | name | name "(" expr ("," expr)* ")" | "(" expr ")"
//! ```

use std::fmt;

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    root: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Number(f64),
    Variable(String),
    Negate(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
    Call(Function, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Min,
    Max,
    Abs,
    Floor,
    Ceil,
    Exp,
    Sqrt,
    Log,
}

const FUNCTIONS: [(&str, Function); 8] = [
    ("min", Function::Min),
    ("max", Function::Max),
    ("abs", Function::Abs),
    ("floor", Function::Floor),
    ("ceil", Function::Ceil),
    ("exp", Function::Exp),
    ("sqrt", Function::Sqrt),
    ("log", Function::Log),
];

/// A formula that does not parse: the byte offset and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("formula {formula:?}: {message} at character {position}")]
pub struct FormulaError {
    /// The formula text.
    pub formula: String,
    /// 1-based character position of the problem.
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

/// Why evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The formula names a variable that has no value.
    UnknownVariable(String),
    /// The result is NaN or infinite (division by zero, `log(0)`, `sqrt(-1)`).
    NotFinite,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::UnknownVariable(name) => write!(f, "unknown variable {name:?}"),
            EvalError::NotFinite => f.write_str("the result is not a finite number"),
        }
    }
}

impl Formula {
    /// Parses a formula.
    pub fn parse(text: &str) -> Result<Formula, FormulaError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            text,
            tokens: &tokens,
            pos: 0,
        };
        let root = parser.expr()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token.start, format!("unexpected {}", token.kind)));
        }
        Ok(Formula { root })
    }

    /// Every variable the formula reads, in order of first use.
    pub fn variables(&self) -> Vec<&str> {
        fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a str>) {
            match expr {
                Expr::Number(_) => {}
                Expr::Variable(name) => {
                    if !out.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
                Expr::Negate(inner) => walk(inner, out),
                Expr::Binary(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// Evaluates the formula, reading variables through `lookup`.
    pub fn evaluate(&self, lookup: &dyn Fn(&str) -> Option<f64>) -> Result<f64, EvalError> {
        let value = eval(&self.root, lookup)?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(EvalError::NotFinite)
        }
    }
}

fn eval(expr: &Expr, lookup: &dyn Fn(&str) -> Option<f64>) -> Result<f64, EvalError> {
    Ok(match expr {
        Expr::Number(n) => *n,
        Expr::Variable(name) => {
            lookup(name).ok_or_else(|| EvalError::UnknownVariable(name.clone()))?
        }
        Expr::Negate(inner) => -eval(inner, lookup)?,
        Expr::Binary(op, a, b) => {
            let (a, b) = (eval(a, lookup)?, eval(b, lookup)?);
            match op {
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
                Op::Div => a / b,
                Op::Pow => a.powf(b),
            }
        }
        Expr::Call(function, args) => {
            let values = args
                .iter()
                .map(|a| eval(a, lookup))
                .collect::<Result<Vec<_>, _>>()?;
            match function {
                Function::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                Function::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Function::Abs => values[0].abs(),
                Function::Floor => values[0].floor(),
                Function::Ceil => values[0].ceil(),
                Function::Exp => values[0].exp(),
                Function::Sqrt => values[0].sqrt(),
                Function::Log => values[0].ln(),
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Number(f64),
    Name(String),
    Op(char),
    Open,
    Close,
    Comma,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Number(n) => write!(f, "number {n}"),
            TokenKind::Name(n) => write!(f, "name {n:?}"),
            TokenKind::Op(c) => write!(f, "{c:?}"),
            TokenKind::Open => f.write_str("'('"),
            TokenKind::Close => f.write_str("')'"),
            TokenKind::Comma => f.write_str("','"),
        }
    }
}

struct Token {
    kind: TokenKind,
    /// Byte offset into the formula.
    start: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, FormulaError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        let kind = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '+' | '-' | '*' | '/' | '^' => {
                chars.next();
                TokenKind::Op(c)
            }
            '(' => {
                chars.next();
                TokenKind::Open
            }
            ')' => {
                chars.next();
                TokenKind::Close
            }
            ',' => {
                chars.next();
                TokenKind::Comma
            }
            '0'..='9' | '.' => {
                let mut end = start;
                let mut prev = ' ';
                while let Some(&(idx, c)) = chars.peek() {
                    let exponent_sign = (c == '+' || c == '-') && (prev == 'e' || prev == 'E');
                    if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exponent_sign {
                        end = idx + c.len_utf8();
                        prev = c;
                        chars.next();
                    } else {
                        break;
                    }
                }
                let literal = &text[start..end];
                let value = literal.parse::<f64>().map_err(|_| FormulaError {
                    formula: text.to_owned(),
                    position: text[..start].chars().count() + 1,
                    message: format!("invalid number {literal:?}"),
                })?;
                TokenKind::Number(value)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = start;
                while let Some(&(idx, c)) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' {
                        end = idx + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                TokenKind::Name(text[start..end].to_owned())
            }
            other => {
                return Err(FormulaError {
                    formula: text.to_owned(),
                    position: text[..start].chars().count() + 1,
                    message: format!("unexpected character {other:?}"),
                })
            }
        };
        tokens.push(Token { kind, start });
    }
    Ok(tokens)
}

struct Parser<'a> {
    text: &'a str,
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn error_at(&self, byte: usize, message: String) -> FormulaError {
        FormulaError {
            formula: self.text.to_owned(),
            position: self.text[..byte].chars().count() + 1,
            message,
        }
    }

    fn error_here(&self, expected: &str) -> FormulaError {
        match self.peek() {
            Some(token) => self.error_at(
                token.start,
                format!("expected {expected}, found {}", token.kind),
            ),
            None => self.error_at(
                self.text.len(),
                format!("expected {expected}, found the end"),
            ),
        }
    }

    fn eat_op(&mut self, ops: &[char]) -> Option<char> {
        match self.peek() {
            Some(Token {
                kind: TokenKind::Op(c),
                ..
            }) if ops.contains(c) => {
                let c = *c;
                self.pos += 1;
                Some(c)
            }
            _ => None,
        }
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        if self.peek().map(|t| &t.kind) == Some(kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.term()?;
        while let Some(op) = self.eat_op(&['+', '-']) {
            let right = self.term()?;
            let op = if op == '+' { Op::Add } else { Op::Sub };
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.unary()?;
        while let Some(op) = self.eat_op(&['*', '/']) {
            let right = self.unary()?;
            let op = if op == '*' { Op::Mul } else { Op::Div };
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FormulaError> {
        match self.eat_op(&['-', '+']) {
            Some('-') => Ok(Expr::Negate(Box::new(self.unary()?))),
            Some(_) => self.unary(),
            None => self.power(),
        }
    }

    fn power(&mut self) -> Result<Expr, FormulaError> {
        let base = self.primary()?;
        if self.eat_op(&['^']).is_some() {
            let exponent = self.unary()?;
            return Ok(Expr::Binary(Op::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr, FormulaError> {
        let Some(token) = self.peek() else {
            return Err(self.error_here("a number, a grader name or '('"));
        };
        let start = token.start;
        match &token.kind {
            TokenKind::Number(n) => {
                let n = *n;
                self.pos += 1;
                Ok(Expr::Number(n))
            }
            TokenKind::Open => {
                self.pos += 1;
                let inner = self.expr()?;
                if !self.eat(&TokenKind::Close) {
                    return Err(self.error_here("')'"));
                }
                Ok(inner)
            }
            TokenKind::Name(name) => {
                let name = name.clone();
                self.pos += 1;
                if !self.eat(&TokenKind::Open) {
                    return Ok(Expr::Variable(name));
                }
                let Some(&(_, function)) = FUNCTIONS.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
                    return Err(self.error_at(
                        start,
                        format!(
                            "unknown function {name:?}; expected one of {}",
                            known.join(", ")
                        ),
                    ));
                };
                let mut args = vec![self.expr()?];
                while self.eat(&TokenKind::Comma) {
                    args.push(self.expr()?);
                }
                if !self.eat(&TokenKind::Close) {
                    return Err(self.error_here("',' or ')'"));
                }
                let variadic = matches!(function, Function::Min | Function::Max);
                if !variadic && args.len() != 1 {
                    return Err(self.error_at(
                        start,
                        format!("{name}() takes exactly one argument, got {}", args.len()),
                    ));
                }
                Ok(Expr::Call(function, args))
            }
            other => Err(self.error_at(
                start,
                format!("expected a number, a grader name or '(', found {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with(text: &str, vars: &[(&str, f64)]) -> Result<f64, EvalError> {
        let formula = Formula::parse(text).unwrap_or_else(|e| panic!("{e}"));
        formula.evaluate(&|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    #[test]
    fn standard_precedence_and_parentheses() {
        assert_eq!(eval_with("1 + 2 * 3", &[]), Ok(7.0));
        assert_eq!(eval_with("(1 + 2) * 3", &[]), Ok(9.0));
        assert_eq!(eval_with("8 / 4 / 2", &[]), Ok(1.0));
        assert_eq!(eval_with("10 - 4 - 3", &[]), Ok(3.0));
    }

    #[test]
    fn power_is_right_associative_and_binds_tighter_than_unary_minus() {
        assert_eq!(eval_with("2 ^ 3 ^ 2", &[]), Ok(512.0));
        assert_eq!(eval_with("-2 ^ 2", &[]), Ok(-4.0));
        assert_eq!(eval_with("2 ^ -1", &[]), Ok(0.5));
        assert_eq!(eval_with("--3", &[]), Ok(3.0));
    }

    #[test]
    fn functions_and_variadic_min_max() {
        assert_eq!(
            eval_with("min(a, b, 0.5)", &[("a", 0.7), ("b", 0.9)]),
            Ok(0.5)
        );
        assert_eq!(eval_with("max(a)", &[("a", 0.7)]), Ok(0.7));
        assert_eq!(eval_with("abs(-2) + floor(1.7) + ceil(1.2)", &[]), Ok(5.0));
        assert_eq!(eval_with("log(exp(2))", &[]), Ok(2.0));
        assert_eq!(eval_with("sqrt(16)", &[]), Ok(4.0));
    }

    #[test]
    fn guide_example_uses_map_keys() {
        assert_eq!(
            eval_with("(name + email) / 2", &[("name", 1.0), ("email", 0.5)]),
            Ok(0.75)
        );
        assert_eq!(
            eval_with("0.5 * bleu + 1e-1 * x", &[("bleu", 1.0), ("x", 1.0)]),
            Ok(0.6)
        );
    }

    #[test]
    fn unknown_variable_and_non_finite_results() {
        assert_eq!(
            eval_with("a + b", &[("a", 1.0)]),
            Err(EvalError::UnknownVariable("b".into()))
        );
        assert_eq!(eval_with("1 / 0", &[]), Err(EvalError::NotFinite));
        assert_eq!(eval_with("log(0)", &[]), Err(EvalError::NotFinite));
    }

    #[test]
    fn parse_errors_name_position() {
        let err = Formula::parse("(a + b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "formula \"(a + b\": expected ')', found the end at character 7"
        );
        assert_eq!(Formula::parse("a +* b").unwrap_err().position, 4);
        assert!(Formula::parse("pow(a, 2)")
            .unwrap_err()
            .message
            .starts_with("unknown function \"pow\""));
        assert!(Formula::parse("abs(a, b)")
            .unwrap_err()
            .message
            .contains("exactly one argument"));
        assert!(Formula::parse("a $ b")
            .unwrap_err()
            .message
            .contains("unexpected character"));
        assert!(Formula::parse("").is_err());
        assert!(Formula::parse("a b").is_err());
        assert!(Formula::parse("min()").is_err());
    }

    #[test]
    fn variables_are_listed_once_in_order() {
        assert_eq!(Formula::parse("b + a * b").unwrap().variables(), ["b", "a"]);
    }
}
