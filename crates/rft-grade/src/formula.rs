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
//!
//! Formulas come from API callers, and parsing, evaluating, walking and dropping a tree all
//! recurse, on threads with small stacks (HTTP handlers, rayon workers). So the tree's height
//! is bounded by construction: the text is at most [`MAX_FORMULA_BYTES`], parentheses (and
//! function calls) nest at most [`MAX_FORMULA_DEPTH`] deep, and so do `^` exponents; runs of
//! unary signs fold into one node, and chains of `+ -` or `* /` are flat nodes rather than
//! left-deep trees. Every recursive function here therefore stays within a few hundred frames.

use std::fmt;

/// The longest `calculate_output` accepted, in bytes. Real formulas combine a handful of
/// graders in well under 200 bytes; the limit only keeps hostile input cheap.
pub const MAX_FORMULA_BYTES: usize = 4096;

/// How deep parentheses (and function calls) may nest, and, separately, how many `^` may be
/// open at once. Each level costs a few stack frames when parsing and evaluating.
pub const MAX_FORMULA_DEPTH: usize = 64;

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
    /// `first op x op y ...` of one precedence level (`+ -` or `* /`), applied left to right.
    /// Flat rather than a left-deep tree, so that `1+1+...+1` does not make a deep tree.
    Chain(Box<Expr>, Vec<(Op, Expr)>),
    Pow(Box<Expr>, Box<Expr>),
    Call(Function, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
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

/// A formula that is refused: it does not parse, or it is over a size limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormulaError {
    /// The text does not parse: the position and what was expected.
    #[error("formula {}: {message} at character {position}", Excerpt(formula))]
    Syntax {
        /// The formula text.
        formula: String,
        /// 1-based character position of the problem.
        position: usize,
        /// What was wrong.
        message: String,
    },
    /// The text is longer than [`MAX_FORMULA_BYTES`].
    #[error("the formula is {bytes} bytes long; the limit is {limit}")]
    TooLong {
        /// The formula's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Parentheses nest deeper than [`MAX_FORMULA_DEPTH`].
    #[error("the formula nests parentheses {depth} deep; the limit is {limit}")]
    TooDeep {
        /// How deep they nest.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// More than [`MAX_FORMULA_DEPTH`] `^` are open at once (`2^2^2^...`).
    #[error("the formula nests more than {limit} powers (`^`) at character {position}; the limit is {limit}")]
    PowersTooDeep {
        /// 1-based character position of the `^` over the limit.
        position: usize,
        /// The limit.
        limit: usize,
    },
}

/// A formula quoted in an error, cut short when long: errors end up in logs and API answers,
/// and a 4 KiB formula would drown the message.
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 80;
        match self.0.char_indices().nth(SHOWN) {
            Some((end, _)) => write!(f, "{:?}…", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
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
    /// Parses a formula. Texts over [`MAX_FORMULA_BYTES`], or nesting parentheses or powers
    /// over [`MAX_FORMULA_DEPTH`] deep, are refused before anything recurses.
    pub fn parse(text: &str) -> Result<Formula, FormulaError> {
        if text.len() > MAX_FORMULA_BYTES {
            return Err(FormulaError::TooLong {
                bytes: text.len(),
                limit: MAX_FORMULA_BYTES,
            });
        }
        let tokens = tokenize(text)?;
        // Measured on the tokens, with a loop, so the error can say how deep they really nest;
        // the parser then never recurses through more than MAX_FORMULA_DEPTH parentheses.
        let depth = paren_depth(&tokens);
        if depth > MAX_FORMULA_DEPTH {
            return Err(FormulaError::TooDeep {
                depth,
                limit: MAX_FORMULA_DEPTH,
            });
        }
        let mut parser = Parser {
            text,
            tokens: &tokens,
            pos: 0,
            open_powers: 0,
        };
        let root = parser.expr()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token.start, format!("unexpected {}", token.kind)));
        }
        Ok(Formula { root })
    }

    /// Every variable the formula reads, in order of first use.
    pub fn variables(&self) -> Vec<&str> {
        // Recursive, like `eval`: `parse` bounds the tree's height.
        fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a str>) {
            match expr {
                Expr::Number(_) => {}
                Expr::Variable(name) => {
                    if !out.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
                Expr::Negate(inner) => walk(inner, out),
                Expr::Chain(first, rest) => {
                    walk(first, out);
                    rest.iter().for_each(|(_, e)| walk(e, out));
                }
                Expr::Pow(a, b) => {
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
        Expr::Chain(first, rest) => {
            let mut acc = eval(first, lookup)?;
            for (op, operand) in rest {
                let value = eval(operand, lookup)?;
                acc = match op {
                    Op::Add => acc + value,
                    Op::Sub => acc - value,
                    Op::Mul => acc * value,
                    Op::Div => acc / value,
                };
            }
            acc
        }
        Expr::Pow(base, exponent) => eval(base, lookup)?.powf(eval(exponent, lookup)?),
        Expr::Call(function, args) => {
            let values = args
                .iter()
                .map(|a| eval(a, lookup))
                .collect::<Result<Vec<_>, _>>()?;
            // The parser gives every non-variadic function exactly one argument; `first`
            // keeps a mistake there from panicking.
            let first = values.first().copied().unwrap_or(f64::NAN);
            match function {
                Function::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                Function::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Function::Abs => first.abs(),
                Function::Floor => first.floor(),
                Function::Ceil => first.ceil(),
                Function::Exp => first.exp(),
                Function::Sqrt => first.sqrt(),
                Function::Log => first.ln(),
            }
        }
    })
}

/// How deep parentheses nest (a function call's count as one level). Unbalanced ones are the
/// parser's to report.
fn paren_depth(tokens: &[Token]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for token in tokens {
        match token.kind {
            TokenKind::Open => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            TokenKind::Close => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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

fn syntax_error(text: &str, byte: usize, message: String) -> FormulaError {
    FormulaError::Syntax {
        formula: text.to_owned(),
        position: text[..byte].chars().count() + 1,
        message,
    }
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
                let value = literal.parse::<f64>().map_err(|_| {
                    syntax_error(text, start, format!("invalid number {literal:?}"))
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
                return Err(syntax_error(
                    text,
                    start,
                    format!("unexpected character {other:?}"),
                ))
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
    /// `^` whose exponent is being parsed: each is a level of recursion (and of the tree).
    open_powers: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn error_at(&self, byte: usize, message: String) -> FormulaError {
        syntax_error(self.text, byte, message)
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

    /// `operand (op operand)*` as one flat [`Expr::Chain`].
    fn chain(
        &mut self,
        ops: &[char],
        operand: fn(&mut Self) -> Result<Expr, FormulaError>,
    ) -> Result<Expr, FormulaError> {
        let first = operand(self)?;
        let mut rest = Vec::new();
        while let Some(op) = self.eat_op(ops) {
            let op = match op {
                '+' => Op::Add,
                '-' => Op::Sub,
                '*' => Op::Mul,
                _ => Op::Div,
            };
            rest.push((op, operand(self)?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Chain(Box::new(first), rest)
        })
    }

    fn expr(&mut self) -> Result<Expr, FormulaError> {
        self.chain(&['+', '-'], Self::term)
    }

    fn term(&mut self) -> Result<Expr, FormulaError> {
        self.chain(&['*', '/'], Self::unary)
    }

    /// A run of signs is read in a loop and folds into at most one negation (negating twice
    /// is exact in IEEE arithmetic), so `------…x` neither recurses nor nests.
    fn unary(&mut self) -> Result<Expr, FormulaError> {
        let mut negative = false;
        while let Some(sign) = self.eat_op(&['-', '+']) {
            negative ^= sign == '-';
        }
        let operand = self.power()?;
        Ok(if negative {
            Expr::Negate(Box::new(operand))
        } else {
            operand
        })
    }

    fn power(&mut self) -> Result<Expr, FormulaError> {
        let base = self.primary()?;
        let Some(caret) = self.peek().map(|t| t.start) else {
            return Ok(base);
        };
        if self.eat_op(&['^']).is_none() {
            return Ok(base);
        }
        if self.open_powers >= MAX_FORMULA_DEPTH {
            return Err(FormulaError::PowersTooDeep {
                position: self.text[..caret].chars().count() + 1,
                limit: MAX_FORMULA_DEPTH,
            });
        }
        self.open_powers += 1;
        let exponent = self.unary();
        self.open_powers -= 1;
        Ok(Expr::Pow(Box::new(base), Box::new(exponent?)))
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

    fn syntax(text: &str) -> (usize, String) {
        match Formula::parse(text) {
            Err(FormulaError::Syntax {
                position, message, ..
            }) => (position, message),
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors_name_position() {
        let err = Formula::parse("(a + b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "formula \"(a + b\": expected ')', found the end at character 7"
        );
        assert_eq!(syntax("a +* b").0, 4);
        assert!(syntax("pow(a, 2)")
            .1
            .starts_with("unknown function \"pow\""));
        assert!(syntax("abs(a, b)").1.contains("exactly one argument"));
        assert!(syntax("a $ b").1.contains("unexpected character"));
        assert!(Formula::parse("").is_err());
        assert!(Formula::parse("a b").is_err());
        assert!(Formula::parse("min()").is_err());
    }

    #[test]
    fn long_formulas_are_quoted_shortened_in_errors() {
        let text = format!("{} $", "a + ".repeat(100));
        let message = Formula::parse(&text).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("…"), "{message}");
    }

    /// Runs `f` on a thread with the default 2 MiB stack of spawned threads (HTTP handlers and
    /// rayon workers have no more), so unbounded recursion would abort the test process.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn nesting_is_limited_before_anything_recurses() {
        // Within the length limit, far over the depth limit.
        let deep = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
        let err = on_small_stack(move || Formula::parse(&deep)).unwrap_err();
        assert_eq!(
            err,
            FormulaError::TooDeep {
                depth: 2000,
                limit: MAX_FORMULA_DEPTH
            }
        );
        assert_eq!(
            err.to_string(),
            "the formula nests parentheses 2000 deep; the limit is 64"
        );
        let calls = format!("{}a{}", "abs(".repeat(800), ")".repeat(800));
        assert!(matches!(
            on_small_stack(move || Formula::parse(&calls)),
            Err(FormulaError::TooDeep { depth: 800, .. })
        ));
        let at_limit = format!("{}a{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(
            Formula::parse(&at_limit).unwrap().evaluate(&|_| Some(2.0)),
            Ok(2.0)
        );
    }

    #[test]
    fn long_formulas_are_refused_by_length() {
        let long = format!("{}a{}", "(".repeat(3000), ")".repeat(3000));
        let err = on_small_stack(move || Formula::parse(&long)).unwrap_err();
        assert_eq!(
            err,
            FormulaError::TooLong {
                bytes: 6001,
                limit: MAX_FORMULA_BYTES
            }
        );
        let just_over = format!("{}1", "1+".repeat(2048));
        assert!(matches!(
            Formula::parse(&just_over),
            Err(FormulaError::TooLong { bytes: 4097, .. })
        ));
        let just_under = format!("{}1", "1+".repeat(2047));
        assert_eq!(eval_with(&just_under, &[]), Ok(2048.0));
    }

    #[test]
    fn power_chains_are_limited() {
        let chain = format!("2{}", "^-1".repeat(1000));
        assert!(matches!(
            on_small_stack(move || Formula::parse(&chain)),
            Err(FormulaError::PowersTooDeep { limit: 64, .. })
        ));
        let ok = format!("1{}", "^1".repeat(64));
        assert_eq!(eval_with(&ok, &[]), Ok(1.0));
    }

    #[test]
    fn sign_runs_and_long_chains_stay_shallow() {
        // Signs fold into one negation; sums and products are flat: neither recurses per
        // operator, when parsing, evaluating, listing variables or dropping the tree.
        let signs = format!("{}x", "-".repeat(4000));
        let sum = format!("x{}", "+x".repeat(2040));
        let product = format!("x{}", "*x".repeat(2040));
        let (signs, sum, product) = on_small_stack(move || {
            let lookup = |_: &str| Some(1.0);
            let eval = |text: &str| {
                let formula = Formula::parse(text).unwrap();
                assert_eq!(formula.variables(), ["x"]);
                formula.evaluate(&lookup)
            };
            (eval(&signs), eval(&sum), eval(&product))
        });
        assert_eq!(signs, Ok(1.0));
        assert_eq!(sum, Ok(2041.0));
        assert_eq!(product, Ok(1.0));
        assert_eq!(eval_with("-+-3", &[]), Ok(3.0));
        assert_eq!(eval_with("---3", &[]), Ok(-3.0));
        assert_eq!(eval_with("10 - 4 - 3 + 1", &[]), Ok(4.0));
        assert_eq!(eval_with("8 / 4 * 2 / 8", &[]), Ok(0.5));
    }

    #[test]
    fn variables_are_listed_once_in_order() {
        assert_eq!(Formula::parse("b + a * b").unwrap().variables(), ["b", "a"]);
    }
}
