//! The one expression language of Neronet (SPEC §5): CLI selections, `abort_when` rules and
//! notification rules. Parsing keeps the column of every token so errors point at the character;
//! `Display` prints an expression that parses back to the same tree.
//!
//! Grammar, loosest first: `a,b` (union) · `a||b` · `a&&b` · `!a` · `(a)`, `field OP value`,
//! `lo-hi` (id range, either end may be negative: `-5--3`), a bare number or word (an id, a state
//! name, or `all`). A rule ([`parse_rule`]) is made of comparisons only.
//!
//! Durations have one grammar, here, for rules and for `neronet.yaml` alike ([`parse_duration`]).
//! Field names resolve one way everywhere ([`resolve_name`]): the exact spelling first, else the
//! one name equal but for case; two such names are an error, never a silent pick.

use std::fmt;

/// The states a run can be in (SPEC §4); a bare word equal to one of these selects by state.
pub const STATE_NAMES: &[&str] = &[
    "defined",
    "submitted",
    "queued",
    "running",
    "finished",
    "crashed",
    "aborted",
    "timeout",
    "lost",
    "preempted",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a,b,c`: any of them.
    Union(Vec<Expr>),
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(Comparison),
    /// `124-186`, inclusive, on integer ids.
    IdRange(i64, i64),
    /// A bare number or word that is not a state name: an experiment id.
    Id(String),
    State(String),
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub field: String,
    pub op: CmpOp,
    pub value: Value,
    /// Compiled once at parse time for `=~`.
    pub regex: Option<Pattern>,
    /// 1-based column of the field name in the source text (0 when built by hand).
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Match,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Match => "=~",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
}

impl Unit {
    fn from_char(c: char) -> Option<Unit> {
        Some(match c {
            's' => Unit::Seconds,
            'm' => Unit::Minutes,
            'h' => Unit::Hours,
            'd' => Unit::Days,
            'w' => Unit::Weeks,
            _ => return None,
        })
    }
    fn seconds(self) -> f64 {
        match self {
            Unit::Seconds => 1.0,
            Unit::Minutes => 60.0,
            Unit::Hours => 3600.0,
            Unit::Days => 86400.0,
            Unit::Weeks => 604800.0,
        }
    }
    fn suffix(self) -> char {
        match self {
            Unit::Seconds => 's',
            Unit::Minutes => 'm',
            Unit::Hours => 'h',
            Unit::Days => 'd',
            Unit::Weeks => 'w',
        }
    }
}

#[derive(Debug, Clone)]
pub enum Value {
    /// A number; `nan`, `inf` and `-inf` included (`loss==nan` catches a diverged run).
    Num(f64),
    /// A number with a unit; compares as seconds. `1h30m` is kept as `90m`.
    Duration(f64, Unit),
    Text(String),
}

/// Trees compare equal when they print the same: `nan` equals `nan` here.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &f64, b: &f64| a == b || (a.is_nan() && b.is_nan());
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => same(a, b),
            (Value::Duration(a, u), Value::Duration(b, v)) => same(a, b) && u == v,
            (Value::Text(a), Value::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// The numeric reading of the literal: numbers as they are, durations in seconds.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Duration(n, u) => Some(n * u.seconds()),
            Value::Text(t) => t.trim().parse().ok(),
        }
    }
}

/// A compiled regex that compares by its source text, so trees stay comparable.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// What a row or run offers to an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Num(f64),
    Text(String),
}

pub trait Fields {
    fn id(&self) -> &str;
    /// The current state name, if the experiment has one.
    fn state(&self) -> Option<&str>;
    /// Any other field (`runtime`, `cluster`, a parameter, a metric); `Ok(None)` when this row
    /// lacks it. Implementations find names with [`resolve_name`].
    fn field(&self, name: &str) -> Result<Option<FieldValue>, AmbiguousName>;
}

/// A field name that matches several names, none exactly, only ignoring case (`LOSS` where a
/// job printed both `Loss:` and `Average loss:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbiguousName {
    pub field: String,
    pub matches: Vec<String>,
}

impl fmt::Display for AmbiguousName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.matches.iter().map(|m| format!("{m:?}")).collect();
        write!(
            f,
            "field {:?} is ambiguous: it matches {} (names differing only in case); write one exactly",
            self.field,
            names.join(" and ")
        )
    }
}

impl std::error::Error for AmbiguousName {}

/// Which name `name` means among groups of names tried in order (metrics before parameters):
/// an exact spelling wins, in the earlier group first; else the one name equal to it ignoring
/// case, in the earlier group first. Two such names in one group are ambiguous. Returns the
/// group's index and the name.
pub fn resolve_name<'a>(
    name: &str,
    groups: &[&[&'a str]],
) -> Result<Option<(usize, &'a str)>, AmbiguousName> {
    for (g, names) in groups.iter().enumerate() {
        if let Some(n) = names.iter().find(|n| **n == name) {
            return Ok(Some((g, n)));
        }
    }
    for (g, names) in groups.iter().enumerate() {
        let mut found: Vec<&'a str> = names
            .iter()
            .copied()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .collect();
        found.sort_unstable();
        found.dedup();
        match found.len() {
            0 => continue,
            1 => return Ok(Some((g, found[0]))),
            _ => {
                return Err(AmbiguousName {
                    field: name.to_string(),
                    matches: found.into_iter().map(String::from).collect(),
                })
            }
        }
    }
    Ok(None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based character column in the source.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64, Option<Unit>, String),
    Word(String),
    Str(String),
    Op(CmpOp),
    And,
    Or,
    Not,
    Comma,
    Minus,
    LParen,
    RParen,
}

struct Lexed {
    tok: Tok,
    column: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '#'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '#'
}

fn lex(src: &str) -> Result<Vec<Lexed>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, m: String| ParseError {
        column: i + 1,
        message: m,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let two = |a: char, b: char| c == a && chars.get(i + 1) == Some(&b);
        let tok = if c.is_whitespace() {
            i += 1;
            continue;
        } else if two('&', '&') {
            i += 2;
            Tok::And
        } else if two('|', '|') {
            i += 2;
            Tok::Or
        } else if two('<', '=') {
            i += 2;
            Tok::Op(CmpOp::Le)
        } else if two('>', '=') {
            i += 2;
            Tok::Op(CmpOp::Ge)
        } else if two('=', '=') {
            i += 2;
            Tok::Op(CmpOp::Eq)
        } else if two('!', '=') {
            i += 2;
            Tok::Op(CmpOp::Ne)
        } else if two('=', '~') {
            i += 2;
            Tok::Op(CmpOp::Match)
        } else if c == '<' || c == '>' || c == '!' || c == ',' || c == '-' || c == '(' || c == ')' {
            i += 1;
            match c {
                '<' => Tok::Op(CmpOp::Lt),
                '>' => Tok::Op(CmpOp::Gt),
                '!' => Tok::Not,
                ',' => Tok::Comma,
                '-' => Tok::Minus,
                '(' => Tok::LParen,
                _ => Tok::RParen,
            }
        } else if c == '=' {
            return Err(err(i, "single '=': write '==' to compare".into()));
        } else if c == '&' || c == '|' {
            return Err(err(i, format!("single '{c}': write '{c}{c}'")));
        } else if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(err(start, "unterminated string".into())),
                    Some('\\') if matches!(chars.get(i + 1), Some(q) if *q == quote || *q == '\\') =>
                    {
                        s.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(q) if *q == quote => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            Tok::Str(s)
        } else if starts_number(&chars, i) {
            let (q, end) = scan_quantity(&chars, i)?;
            i = end;
            Tok::Num(q.value, q.unit, q.text)
        } else if is_word_start(c) {
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            Tok::Word(chars[start..i].iter().collect())
        } else {
            return Err(err(i, format!("unexpected character '{c}'")));
        };
        out.push(Lexed {
            tok,
            column: start + 1,
        });
    }
    Ok(out)
}

fn starts_number(chars: &[char], i: usize) -> bool {
    chars.get(i).is_some_and(char::is_ascii_digit)
        || (chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit))
}

/// A number, a number with a unit (`90s`, `1.5h`, `2e3s`), or a duration of several parts in
/// falling units (`1h30m`, `1d12h`), kept in its smallest unit (`90m`).
struct Quantity {
    value: f64,
    unit: Option<Unit>,
    /// The number as written (for ids); only meaningful without a unit.
    text: String,
}

/// The one grammar of numbers and durations, for rules and for `neronet.yaml` alike. `start`
/// is at a digit (or `.` and a digit); returns the quantity and where it ends.
fn scan_quantity(chars: &[char], start: usize) -> Result<(Quantity, usize), ParseError> {
    let err = |i: usize, m: String| ParseError {
        column: i + 1,
        message: m,
    };
    let number = |mut i: usize| -> Result<(f64, String, usize), ParseError> {
        let from = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        // Exponent: 1e-3, 2E5.
        if i < chars.len()
            && (chars[i] == 'e' || chars[i] == 'E')
            && (chars.get(i + 1).is_some_and(char::is_ascii_digit)
                || (matches!(chars.get(i + 1), Some('+') | Some('-'))
                    && chars.get(i + 2).is_some_and(char::is_ascii_digit)))
        {
            i += 2;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
        let text: String = chars[from..i].iter().collect();
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok((n, text, i)),
            Ok(_) => Err(err(from, format!("number '{text}' is too large"))),
            Err(_) => Err(err(from, format!("bad number '{text}'"))),
        }
    };
    // A unit letter counts when no word goes on after it (`3ms` is not 3 minutes), or when the
    // next part of a duration follows (`1h30m`).
    let unit_at = |i: usize| -> Option<Unit> {
        let u = chars.get(i).copied().and_then(Unit::from_char)?;
        let next = chars.get(i + 1).copied();
        (next.is_none_or(|c| !is_word_char(c)) || starts_number(chars, i + 1)).then_some(u)
    };
    let (mut value, text, mut i) = number(start)?;
    let mut unit = unit_at(i);
    if unit.is_some() {
        i += 1;
    }
    while let Some(prev) = unit {
        if !starts_number(chars, i) {
            break;
        }
        let (n, part, end) = number(i)?;
        let Some(next) = unit_at(end) else {
            return Err(err(
                end,
                format!("'{part}' needs a unit: in a duration of several parts each has one (like 1h30m)"),
            ));
        };
        if next.seconds() >= prev.seconds() {
            return Err(err(
                end,
                format!(
                    "'{}' after '{}': the parts of a duration go from the largest unit to the smallest (like 1h30m)",
                    next.suffix(),
                    prev.suffix()
                ),
            ));
        }
        value = value * (prev.seconds() / next.seconds()) + n;
        unit = Some(next);
        i = end + 1;
    }
    if chars
        .get(i)
        .copied()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
    {
        return Err(err(
            i,
            format!(
                "unexpected '{}' after number (units: s, m, h, d, w)",
                chars[i]
            ),
        ));
    }
    if !(value * unit.map_or(1.0, Unit::seconds)).is_finite() {
        let written: String = chars[start..i].iter().collect();
        return Err(err(start, format!("duration '{written}' is too large")));
    }
    Ok((Quantity { value, unit, text }, i))
}

/// A duration in seconds, as `neronet.yaml` writes them (`grace: 10s`, `digest: 1h30m`) and
/// with exactly the forms a rule accepts after `runtime>`: a number (seconds) with an optional
/// unit `s` `m` `h` `d` `w`, decimals and exponents allowed (`1.5h`, `2e3s`), parts in falling
/// units (`1h30m`). No sign, no spaces inside, nothing infinite. The error says why.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    const FORMS: &str =
        "a number of seconds or a number with a unit s, m, h, d, w, like 90s, 30m, 1.5h, 1h30m";
    let chars: Vec<char> = text.trim().chars().collect();
    if !starts_number(&chars, 0) {
        return Err(format!("not a duration ({FORMS})"));
    }
    let (q, end) = scan_quantity(&chars, 0).map_err(|e| format!("{} ({FORMS})", e.message))?;
    if end != chars.len() {
        let rest: String = chars[end..].iter().collect();
        return Err(format!("unexpected '{rest}' after the duration ({FORMS})"));
    }
    Ok(q.value * q.unit.map_or(1.0, Unit::seconds))
}

struct Parser {
    toks: Vec<Lexed>,
    pos: usize,
    end_column: usize,
    /// Nesting of `(` and `!`: bounded so hostile input cannot overflow the stack.
    depth: usize,
    /// Parsing a rule: ids, ranges, states and `all` are refused (they are not conditions).
    rule: bool,
}

/// Deeper nesting than this is refused (no real selection or rule comes close).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|l| &l.tok)
    }
    fn column(&self) -> usize {
        self.toks
            .get(self.pos)
            .map_or(self.end_column, |l| l.column)
    }
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|l| l.tok.clone());
        self.pos += 1;
        t
    }

    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.or()?];
        while self.peek() == Some(&Tok::Comma) {
            self.pos += 1;
            items.push(self.or()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Union(items)
        })
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.unary()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        let result = if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        result
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Tok::LParen) => {
                let inner = self.union()?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.fail("expected ')'");
                }
                self.pos += 1;
                Ok(inner)
            }
            // A negative id: `-3`, or the start of a range `-5--3`.
            Some(Tok::Minus) if matches!(self.peek(), Some(Tok::Num(..))) => {
                let Some(Tok::Num(n, unit, text)) = self.next() else {
                    unreachable!("peeked a number")
                };
                self.id_or_range(-n, unit, format!("-{text}"), column)
            }
            Some(Tok::Num(n, unit, text)) => self.id_or_range(n, unit, text, column),
            // A word or a quoted name before an operator is a field (`"learning rate"<0.1`).
            Some(Tok::Word(w) | Tok::Str(w)) if matches!(self.peek(), Some(Tok::Op(_))) => {
                self.comparison(w, column)
            }
            Some(Tok::Word(w)) => {
                self.not_in_rule(&w, column)?;
                let lower = w.to_ascii_lowercase();
                if lower == "all" {
                    Ok(Expr::All)
                } else if STATE_NAMES.contains(&lower.as_str()) {
                    Ok(Expr::State(lower))
                } else {
                    Ok(Expr::Id(w))
                }
            }
            Some(Tok::Str(s)) => {
                self.not_in_rule(&literal(&Value::Text(s.clone())), column)?;
                Ok(Expr::Id(s))
            }
            None => Err(ParseError {
                column,
                message: "expected an id, a state, `all` or `field OP value`, found the end".into(),
            }),
            Some(_) => Err(ParseError {
                column,
                message: "expected an id, a state, `all`, `field OP value` or '('".into(),
            }),
        }
    }

    /// A rule must be a condition: an id, a range, a state or `all` in it could never stop a
    /// run (or would stop every one), so it is an error at its column.
    fn not_in_rule(&self, written: &str, column: usize) -> Result<(), ParseError> {
        if !self.rule {
            return Ok(());
        }
        Err(ParseError {
            column,
            message: format!(
                "'{written}' is not a condition: a rule needs a comparison (field OP value), like loss>5"
            ),
        })
    }

    /// After an id that is a number (`n`, written `text`): the id, or a range `n-hi`.
    fn id_or_range(
        &mut self,
        n: f64,
        unit: Option<Unit>,
        text: String,
        column: usize,
    ) -> Result<Expr, ParseError> {
        if unit.is_some() || n.fract() != 0.0 || text.contains(['.', 'e', 'E']) {
            return Err(ParseError {
                column,
                message: format!("'{text}' is not an id (ids are whole numbers or words)"),
            });
        }
        if self.peek() == Some(&Tok::Minus) {
            self.pos += 1;
            let hi_col = self.column();
            let negative = self.peek() == Some(&Tok::Minus);
            if negative {
                self.pos += 1;
            }
            match self.next() {
                Some(Tok::Num(hi, None, hi_text)) if !hi_text.contains(['.', 'e', 'E']) => {
                    let (lo, hi) = (n as i64, if negative { -hi } else { hi } as i64);
                    self.not_in_rule(&format!("{lo}-{hi}"), column)?;
                    if hi < lo {
                        return Err(ParseError {
                            column: hi_col,
                            message: format!("range {lo}-{hi} is empty (end before start)"),
                        });
                    }
                    Ok(Expr::IdRange(lo, hi))
                }
                _ => Err(ParseError {
                    column: hi_col,
                    message: "expected the end of an id range (e.g. 124-186, -5--3)".into(),
                }),
            }
        } else if matches!(self.peek(), Some(Tok::Op(_))) {
            self.fail("a comparison needs a field name on the left")
        } else {
            self.not_in_rule(&text, column)?;
            Ok(Expr::Id(text))
        }
    }

    /// `field OP value`, with the operator next.
    fn comparison(&mut self, field: String, column: usize) -> Result<Expr, ParseError> {
        let Some(Tok::Op(op)) = self.next() else {
            return self.fail("expected a comparison operator");
        };
        let value = self.value()?;
        let regex = if op == CmpOp::Match {
            let text = match &value {
                Value::Text(t) => t.clone(),
                other => literal(other),
            };
            match regex::Regex::new(&text) {
                Ok(r) => Some(Pattern(r)),
                Err(e) => {
                    self.pos -= 1;
                    return self.fail(format!("bad regex: {e}"));
                }
            }
        } else {
            None
        };
        Ok(Expr::Cmp(Comparison {
            field,
            op,
            value,
            regex,
            column,
        }))
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let negative = if self.peek() == Some(&Tok::Minus) {
            self.pos += 1;
            true
        } else {
            false
        };
        match self.next() {
            Some(Tok::Num(n, unit, _)) => {
                let n = if negative { -n } else { n };
                Ok(match unit {
                    Some(u) => Value::Duration(n, u),
                    None => Value::Num(n),
                })
            }
            // `nan` and `inf` are numbers (`loss==nan`); quoted, they are text.
            Some(Tok::Word(w)) if non_finite(&w).is_some() => {
                let n = non_finite(&w).unwrap_or(f64::NAN);
                Ok(Value::Num(if negative { -n } else { n }))
            }
            Some(Tok::Word(w)) if !negative => Ok(Value::Text(w)),
            Some(Tok::Str(s)) if !negative => Ok(Value::Text(s)),
            _ => {
                self.pos -= 1;
                self.fail("expected a value (number, duration like 30m, or string)")
            }
        }
    }
}

/// The value of a bare `nan`, `inf` or `infinity` (any case).
fn non_finite(word: &str) -> Option<f64> {
    match word.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "infinity" => Some(f64::INFINITY),
        _ => None,
    }
}

/// Parse an expression; the error names the 1-based column of the offending character.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    parse_as(src, false)
}

/// Parse an auto-termination rule: an expression of comparisons only. An id (`16` typed into
/// `abort_when`), a range, a state name or `all` is an error naming its column.
pub fn parse_rule(src: &str) -> Result<Expr, ParseError> {
    parse_as(src, true)
}

fn parse_as(src: &str, rule: bool) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(ParseError {
            column: 1,
            message: "empty expression".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end_column: src.chars().count() + 1,
        depth: 0,
        rule,
    };
    let e = p.union()?;
    if p.pos < p.toks.len() {
        return p.fail(match p.peek() {
            Some(Tok::RParen) => "unmatched ')'",
            _ => "unexpected text after the expression (join parts with && , or ||)",
        });
    }
    Ok(e)
}

fn literal(v: &Value) -> String {
    match v {
        Value::Num(n) if n.is_nan() => "nan".into(),
        Value::Num(n) if n.is_infinite() => (if *n > 0.0 { "inf" } else { "-inf" }).into(),
        Value::Num(n) => format_number(*n),
        Value::Duration(n, u) => format!("{}{}", format_number(*n), u.suffix()),
        Value::Text(t) => {
            let mut s = String::from('"');
            for c in t.chars() {
                if c == '"' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
            s
        }
    }
}

/// Shortest text that parses back to the same f64.
pub fn format_number(n: f64) -> String {
    if n.is_nan() {
        // As the tables and `status --json` show it (and `=~nan` matches it); Rust says "NaN".
        "nan".into()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join(f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str, level: u8) -> fmt::Result {
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                // Parenthesize any child that binds as loosely as this node or looser.
                if e.level() <= level {
                    write!(f, "({e})")?;
                } else {
                    write!(f, "{e}")?;
                }
            }
            Ok(())
        }
        match self {
            Expr::Union(v) => join(f, v, ",", 0),
            Expr::Or(v) => join(f, v, "||", 1),
            Expr::And(v) => join(f, v, "&&", 2),
            Expr::Not(e) => {
                if e.level() <= 2 {
                    write!(f, "!({e})")
                } else {
                    write!(f, "!{e}")
                }
            }
            Expr::Cmp(c) => {
                let plain = c.field.chars().next().is_some_and(is_word_start)
                    && c.field.chars().all(is_word_char);
                if plain {
                    f.write_str(&c.field)?;
                } else {
                    f.write_str(&literal(&Value::Text(c.field.clone())))?;
                }
                write!(f, "{}{}", c.op.as_str(), literal(&c.value))
            }
            Expr::IdRange(lo, hi) => write!(f, "{lo}-{hi}"),
            Expr::Id(id) => {
                let digits = id.strip_prefix('-').unwrap_or(id);
                let plain = digits.chars().all(|c| c.is_ascii_digit()) && !digits.is_empty()
                    || (id.chars().next().is_some_and(is_word_start)
                        && id.chars().all(is_word_char)
                        && !STATE_NAMES.contains(&id.to_ascii_lowercase().as_str())
                        && !id.eq_ignore_ascii_case("all"));
                if plain {
                    f.write_str(id)
                } else {
                    f.write_str(&literal(&Value::Text(id.clone())))
                }
            }
            Expr::State(s) => f.write_str(s),
            Expr::All => f.write_str("all"),
        }
    }
}

impl Expr {
    fn level(&self) -> u8 {
        match self {
            Expr::Union(_) => 0,
            Expr::Or(_) => 1,
            Expr::And(_) => 2,
            _ => 3,
        }
    }

    /// Does this row match? A comparison on an ambiguous field name never makes it match
    /// (see [`Expr::evaluate`]).
    pub fn matches(&self, row: &dyn Fields) -> bool {
        self.evaluate(row, &mut |_| {}) == Some(true)
    }

    /// Three-valued: `None` (unknown) where a comparison names an ambiguous field, so that
    /// neither it nor its negation can match; `a||b` is still true when `b` is, `a&&b` still
    /// false when `b` is. `ambiguous` hears every such field met.
    pub fn evaluate(
        &self,
        row: &dyn Fields,
        ambiguous: &mut dyn FnMut(AmbiguousName),
    ) -> Option<bool> {
        self.evaluate_with(row, false, ambiguous)
    }

    /// As a rule evaluates while the job runs: a comparison on a field the run has not reported
    /// (yet) is unknown too, not false, so `!(acc>0.1)` does not fire before the job printed
    /// any `acc` (it fired at once when a missing field made the comparison false).
    pub fn evaluate_rule(
        &self,
        row: &dyn Fields,
        ambiguous: &mut dyn FnMut(AmbiguousName),
    ) -> Option<bool> {
        self.evaluate_with(row, true, ambiguous)
    }

    fn evaluate_with(
        &self,
        row: &dyn Fields,
        missing_unknown: bool,
        ambiguous: &mut dyn FnMut(AmbiguousName),
    ) -> Option<bool> {
        let mut all = |v: &[Expr], stop: bool| {
            // Every child is evaluated, so every ambiguous name is heard (no allocation: a
            // rule runs every round of the kid).
            let (mut decided, mut unknown) = (false, false);
            for e in v {
                match e.evaluate_with(row, missing_unknown, ambiguous) {
                    Some(b) if b == stop => decided = true,
                    None => unknown = true,
                    Some(_) => {}
                }
            }
            if decided {
                Some(stop)
            } else if unknown {
                None
            } else {
                Some(!stop)
            }
        };
        match self {
            Expr::Union(v) | Expr::Or(v) => all(v, true),
            Expr::And(v) => all(v, false),
            Expr::Not(e) => e.evaluate_with(row, missing_unknown, ambiguous).map(|b| !b),
            Expr::All => Some(true),
            Expr::State(s) => Some(row.state().is_some_and(|st| st.eq_ignore_ascii_case(s))),
            Expr::IdRange(lo, hi) => Some(
                row.id()
                    .trim()
                    .parse::<i64>()
                    .is_ok_and(|n| *lo <= n && n <= *hi),
            ),
            Expr::Id(id) => Some(id_equal(id, row.id())),
            Expr::Cmp(c) => match c.evaluate_field(row) {
                Ok(Some(b)) => Some(b),
                Ok(None) => (!missing_unknown).then_some(false),
                Err(e) => {
                    ambiguous(e);
                    None
                }
            },
        }
    }

    /// Every comparison in the tree (to check field names against what is known).
    pub fn comparisons(&self) -> Vec<&Comparison> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Cmp(c) = e {
                out.push(c);
            }
        });
        out
    }

    /// Every comparison in the tree, to change (a selection resolves its field names once
    /// for the whole project).
    pub fn comparisons_mut(&mut self) -> Vec<&mut Comparison> {
        fn walk<'a>(e: &'a mut Expr, out: &mut Vec<&'a mut Comparison>) {
            match e {
                Expr::Union(v) | Expr::Or(v) | Expr::And(v) => {
                    v.iter_mut().for_each(|e| walk(e, out))
                }
                Expr::Not(e) => walk(e, out),
                Expr::Cmp(c) => out.push(c),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// Every bare id named in the tree.
    pub fn ids(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Id(id) = e {
                out.push(id.as_str());
            }
        });
        out
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        f(self);
        match self {
            Expr::Union(v) | Expr::Or(v) | Expr::And(v) => v.iter().for_each(|e| e.walk(f)),
            Expr::Not(e) => e.walk(f),
            _ => {}
        }
    }
}

fn id_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Comparison {
    /// Does this row's field compare true? `Ok(false)` when the row lacks the field; an error
    /// when the name matches several of the row's fields only ignoring case.
    pub fn evaluate(&self, row: &dyn Fields) -> Result<bool, AmbiguousName> {
        Ok(self.evaluate_field(row)?.unwrap_or(false))
    }

    /// `Ok(None)` when the row lacks the field.
    fn evaluate_field(&self, row: &dyn Fields) -> Result<Option<bool>, AmbiguousName> {
        let name = self.field.as_str();
        let is = |word: &str| name.eq_ignore_ascii_case(word);
        let got = if is("id") {
            Some(FieldValue::Text(row.id().to_string()))
        } else if is("status") || is("state") {
            row.state().map(|s| FieldValue::Text(s.to_string()))
        } else {
            row.field(name)?
        };
        let Some(got) = got else { return Ok(None) };
        if self.op == CmpOp::Match {
            let text = match &got {
                FieldValue::Num(n) => format_number(*n),
                FieldValue::Text(t) => t.clone(),
            };
            return Ok(Some(
                self.regex.as_ref().is_some_and(|r| r.0.is_match(&text)),
            ));
        }
        let numbers = match (&got, &self.value) {
            (FieldValue::Num(g), v) => match v.as_number() {
                Some(w) => (*g, w),
                None => return Ok(Some(self.op == CmpOp::Ne)),
            },
            (FieldValue::Text(g), Value::Text(w)) => {
                match (g.trim().parse::<f64>(), w.parse::<f64>()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Ok(Some(self.op.holds(g.as_str().cmp(w.as_str())))),
                }
            }
            (FieldValue::Text(g), v) => match g.trim().parse::<f64>() {
                Ok(a) => (a, v.as_number().unwrap_or(f64::NAN)),
                Err(_) => return Ok(Some(self.op == CmpOp::Ne)),
            },
        };
        Ok(Some(compare_numbers(numbers.0, self.op, numbers.1)))
    }
}

/// IEEE order, except that NaN equals NaN: `loss==nan` is true for a diverged loss and
/// `loss!=nan` is its negation; `<`, `<=`, `>`, `>=` with a NaN on either side are false.
/// Infinities are numbers: `loss>5` holds for `inf`.
fn compare_numbers(g: f64, op: CmpOp, w: f64) -> bool {
    if g.is_nan() || w.is_nan() {
        let same = g.is_nan() && w.is_nan();
        return match op {
            CmpOp::Eq => same,
            CmpOp::Ne => !same,
            _ => false,
        };
    }
    g.partial_cmp(&w).is_some_and(|ord| op.holds(ord))
}

impl CmpOp {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            // `=~` is decided on text before any ordering.
            CmpOp::Match => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Row {
        id: &'static str,
        state: Option<&'static str>,
        fields: HashMap<&'static str, FieldValue>,
    }
    impl Fields for Row {
        fn id(&self) -> &str {
            self.id
        }
        fn state(&self) -> Option<&str> {
            self.state
        }
        fn field(&self, name: &str) -> Result<Option<FieldValue>, AmbiguousName> {
            let names: Vec<&str> = self.fields.keys().copied().collect();
            Ok(resolve_name(name, &[&names])?.map(|(_, n)| self.fields[n].clone()))
        }
    }
    fn row(id: &'static str, state: &'static str, f: &[(&'static str, f64)]) -> Row {
        Row {
            id,
            state: Some(state),
            fields: f.iter().map(|(k, v)| (*k, FieldValue::Num(*v))).collect(),
        }
    }
    fn sel(src: &str, rows: &[Row]) -> Vec<&'static str> {
        let e = parse(src).unwrap();
        rows.iter()
            .filter(|r| e.matches(*r))
            .map(|r| r.id)
            .collect()
    }

    #[test]
    fn seed_examples_select_correctly() {
        let rows = vec![
            row("124", "finished", &[("runtime", 10.0)]),
            row("144", "crashed", &[]),
            row("147", "running", &[("runtime", 8000.0), ("errorrate", 0.5)]),
            row("150", "running", &[("runtime", 8000.0), ("errorrate", 0.2)]),
            row("170", "finished", &[("tmod", 120.0)]),
            row("175", "queued", &[("tmod", 7200.0)]),
            row("186", "crashed", &[]),
            row("190", "running", &[("runtime", 100.0), ("errorrate", 0.9)]),
        ];
        assert_eq!(
            sel("124-186", &rows),
            ["124", "144", "147", "150", "170", "175", "186"]
        );
        assert_eq!(
            sel("crashed,144-149,170,175", &rows),
            ["144", "147", "170", "175", "186"]
        );
        assert_eq!(sel("tmod<1h", &rows), ["170"]);
        assert_eq!(sel("runtime>7200&&errorrate>0.40", &rows), ["147"]);
        assert_eq!(
            sel("runtime > 2h || !(errorrate<=0.5) && runtime<200", &rows),
            ["124", "147", "150", "190"]
        );
        assert_eq!(sel("all", &rows).len(), rows.len());
        assert_eq!(sel("id=~'^1[78]'", &rows), ["170", "175", "186"]);
        assert_eq!(sel("status==running&&runtime<30m", &rows), ["190"]);
        assert_eq!(
            sel("(crashed||queued),170", &rows),
            ["144", "170", "175", "186"]
        );
    }

    #[test]
    fn missing_field_makes_comparison_false() {
        let rows = vec![row("1", "running", &[])];
        assert!(sel("loss>1", &rows).is_empty());
        assert!(sel("loss<1", &rows).is_empty());
        assert_eq!(sel("!loss>1", &rows), ["1"]);
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = parse("runtime>7200&&").unwrap_err();
        assert_eq!(e.column, 15, "{e}");
        let e = parse("runtime>>3").unwrap_err();
        assert_eq!(e.column, 9, "{e}");
        let e = parse("a=3").unwrap_err();
        assert_eq!(e.column, 2);
        let e = parse("(crashed").unwrap_err();
        assert_eq!(e.column, 9);
        let e = parse("186-124").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = parse("lr=~'('").unwrap_err();
        assert!(e.message.contains("bad regex"), "{e}");
        assert_eq!(parse("x>3q").unwrap_err().column, 4);
    }

    /// Regression: 5,000 nested parentheses overflowed the stack (an abort, not an error).
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep)
            .unwrap_err()
            .message
            .contains("nested more than"));
        assert!(parse(&format!("{}1", "!".repeat(20000))).is_err());
        let fine = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        assert_eq!(parse(&fine).unwrap(), Expr::Id("1".into()));
    }

    #[test]
    fn quoted_field_names() {
        let r = Row {
            id: "1",
            state: None,
            fields: [("learning rate", FieldValue::Num(0.05))]
                .into_iter()
                .collect(),
        };
        let e = parse("\"learning rate\"<0.1").unwrap();
        assert!(e.matches(&r));
        assert_eq!(e.to_string(), "\"learning rate\"<0.1");
        assert_eq!(
            parse("'learning rate'>=1").unwrap().comparisons()[0].field,
            "learning rate"
        );
    }

    #[test]
    fn units_are_seconds() {
        let rows = vec![row("1", "running", &[("runtime", 5400.0)])];
        assert_eq!(sel("runtime>89m", &rows), ["1"]);
        assert!(sel("runtime>2h", &rows).is_empty());
        assert_eq!(sel("runtime<1d&&runtime>=90s", &rows), ["1"]);
    }

    #[test]
    fn text_parameters_compare_as_text() {
        let r = Row {
            id: "a-1",
            state: None,
            fields: [("optimizer", FieldValue::Text("adam".into()))]
                .into_iter()
                .collect(),
        };
        assert!(parse("optimizer==adam").unwrap().matches(&r));
        assert!(parse("optimizer!=\"sgd\"").unwrap().matches(&r));
        assert!(parse("a-1").unwrap().matches(&r));
        assert!(!parse("running").unwrap().matches(&r));
    }

    fn nums(f: &[(&'static str, f64)]) -> Row {
        row("1", "running", f)
    }

    /// Regression: a diverged run printed `Loss: nan`; every comparison with NaN was false, so
    /// `Loss>5 || Loss==nan` never fired.
    #[test]
    fn nan_is_caught_by_eq_nan() {
        let r = nums(&[("Loss", f64::NAN)]);
        let m = |src: &str| parse(src).unwrap().matches(&r);
        assert!(m("Loss>5 || Loss==nan"));
        assert!(m("Loss==NaN") && m("Loss=='nan'"));
        assert!(!m("Loss!=nan"));
        // Orders with NaN are false, `!=` a number is true (IEEE).
        assert!(!m("Loss>5") && !m("Loss<5") && !m("Loss<=5") && !m("Loss>=5"));
        assert!(m("Loss!=5") && !m("Loss==5"));
        let finite = nums(&[("Loss", 0.5)]);
        assert!(!parse("Loss==nan").unwrap().matches(&finite));
        assert!(parse("Loss!=nan").unwrap().matches(&finite));
    }

    /// Infinity is a number: above every bound, and equal to `inf`.
    #[test]
    fn infinity_compares_as_a_number() {
        let r = nums(&[("loss", f64::INFINITY), ("grad", f64::NEG_INFINITY)]);
        let m = |src: &str| parse(src).unwrap().matches(&r);
        assert!(m("loss>5") && m("loss==inf") && m("loss==Infinity") && m("loss>=inf"));
        assert!(!m("loss<5") && !m("loss==nan"));
        assert!(m("grad==-inf") && m("grad<-1e300") && !m("grad==inf"));
    }

    #[test]
    fn nan_and_inf_print_and_parse_back() {
        for (src, printed) in [
            ("loss == NaN", "loss==nan"),
            ("loss==INF", "loss==inf"),
            ("loss==-inf", "loss==-inf"),
            ("loss=='nan'", "loss==\"nan\""),
        ] {
            let e = parse(src).unwrap();
            assert_eq!(e.to_string(), printed);
            assert_eq!(parse(printed).unwrap(), e);
        }
    }

    /// Regression: `Loss` and `loss` both existed and `LOSS>1` silently meant one of them.
    #[test]
    fn names_resolve_exactly_first_and_never_pick_between_cases() {
        let both = nums(&[("Loss", 2.3), ("loss", 0.05)]);
        assert!(parse("Loss>1").unwrap().matches(&both));
        assert!(!parse("loss>1").unwrap().matches(&both));
        let e = parse("LOSS>1").unwrap();
        let mut heard = Vec::new();
        assert_eq!(e.evaluate(&both, &mut |a| heard.push(a)), None);
        assert_eq!(heard.len(), 1);
        assert_eq!(heard[0].matches, ["Loss", "loss"]);
        let text = heard[0].to_string();
        assert!(
            text.contains("\"LOSS\"") && text.contains("\"Loss\" and \"loss\""),
            "{text}"
        );
        // Unknown is neither true nor false: its negation does not match either...
        assert!(!parse("!(LOSS>1)").unwrap().matches(&both));
        // ...but it cannot hide a branch that decides alone.
        assert!(parse("LOSS>1 || Loss>2").unwrap().matches(&both));
        assert!(!parse("LOSS>1 && Loss>2").unwrap().matches(&both));
        assert_eq!(
            parse("LOSS>1 && Loss>9")
                .unwrap()
                .evaluate(&both, &mut |_| {}),
            Some(false)
        );
        // One name in another case is no ambiguity.
        assert!(parse("LOSS>2").unwrap().matches(&nums(&[("loss", 2.21)])));
    }

    #[test]
    fn resolve_name_order() {
        let (metrics, params) = (["LR", "Loss", "loss"], ["lr", "width"]);
        let r = |n: &str| resolve_name(n, &[&metrics, &params]);
        assert_eq!(
            r("lr"),
            Ok(Some((1, "lr"))),
            "an exact parameter beats a metric in another case"
        );
        assert_eq!(r("LR"), Ok(Some((0, "LR"))));
        assert_eq!(r("Lr"), Ok(Some((0, "LR"))), "else the metric wins");
        assert_eq!(r("WIDTH"), Ok(Some((1, "width"))));
        assert_eq!(r("depth"), Ok(None));
        assert_eq!(r("LOSS").unwrap_err().matches, ["Loss", "loss"]);
    }

    /// Regression: `abort_when: 16` (an id typed into the rule cell) was accepted and never
    /// fired; `all` or a state would fire at once or never.
    #[test]
    fn a_rule_must_be_a_condition() {
        for (src, column) in [
            ("16", 1),
            ("all", 1),
            ("running", 1),
            ("3-5", 1),
            ("-3", 1),
            ("loss>1 || 16", 11),
            ("loss>1, crashed", 9),
            ("!(baseline)", 3),
            ("'odd id'", 1),
        ] {
            let e = parse_rule(src).expect_err(src);
            assert_eq!(e.column, column, "{src}: {e}");
            assert!(
                e.message
                    .contains("is not a condition: a rule needs a comparison"),
                "{src}: {e}"
            );
            assert!(parse(src).is_ok(), "{src} is a fine selection");
        }
        for src in [
            "loss>1",
            "epoch>=3 && (loss>3 || loss==nan)",
            "!(acc<0.5), runtime>2h",
            "id==16",
            "status==running",
        ] {
            assert_eq!(parse_rule(src).unwrap(), parse(src).unwrap(), "{src}");
        }
    }

    /// Regression: a negative id could only be selected as `id==-3`.
    #[test]
    fn negative_ids_and_ranges() {
        let rows = vec![
            row("-7", "finished", &[]),
            row("-3", "finished", &[]),
            row("0", "finished", &[]),
            row("3", "finished", &[]),
        ];
        assert_eq!(sel("-3", &rows), ["-3"]);
        assert_eq!(sel("-3,3", &rows), ["-3", "3"]);
        assert_eq!(sel("-7--3", &rows), ["-7", "-3"]);
        assert_eq!(sel("-3-3", &rows), ["-3", "0", "3"]);
        assert_eq!(sel("!-3&&!0", &rows), ["-7", "3"]);
        for (src, printed) in [
            ("-3", "-3"),
            ("-7--3", "-7--3"),
            ("-3-0", "-3-0"),
            ("- 3", "-3"),
        ] {
            let e = parse(src).unwrap();
            assert_eq!(e.to_string(), printed, "{src}");
            assert_eq!(parse(printed).unwrap(), e);
        }
        assert!(parse("-3--7").unwrap_err().message.contains("empty"));
        assert!(parse("-3.5").is_err());
        assert!(parse("-3-").is_err());
        assert!(parse("--3").is_err());
    }

    /// Regression: `runtime>1h30m` was an error in rules while neronet.yaml had its own
    /// duration parser (no weeks there): one grammar now, [`parse_duration`].
    #[test]
    fn durations_have_one_grammar() {
        let rule_seconds = |d: &str| -> Option<f64> {
            match parse(&format!("runtime<{d}")).ok()? {
                Expr::Cmp(Comparison {
                    value: v @ (Value::Num(_) | Value::Duration(..)),
                    ..
                }) => v.as_number(),
                _ => None,
            }
        };
        for (d, secs) in [
            ("90", 90.0),
            ("90s", 90.0),
            ("1.5m", 90.0),
            (".5h", 1800.0),
            ("2d", 172800.0),
            ("1w", 604800.0),
            ("1h30m", 5400.0),
            ("1d2h3m4s", 93784.0),
            ("2e3s", 2000.0),
            ("0", 0.0),
            ("5.", 5.0),
        ] {
            assert_eq!(parse_duration(d), Ok(secs), "{d}");
            assert_eq!(rule_seconds(d), Some(secs), "{d}");
            assert_eq!(parse_duration(&format!(" {d} ")), Ok(secs), "{d}");
        }
        for d in [
            "", "s", "10 s", "1h30", "30m1h", "1h1h", "3ms", "1.2.3", "+2s", "1e400", "1e308d",
            "1H", "10x", "1h 30m",
        ] {
            let e = parse_duration(d).expect_err(d);
            assert!(e.contains("like 90s"), "{d}: {e}");
            assert_eq!(rule_seconds(d), None, "{d}");
        }
        assert_eq!(parse("runtime>1h30m").unwrap().to_string(), "runtime>90m");
        // A rule's value may be negative (`x>-2s`, the sign is the value's); a time in
        // neronet.yaml may not.
        // `nan` and `inf` are numbers in a rule (`loss==nan`), never a time.
        for d in ["-2s", "inf", "nan"] {
            assert!(parse_duration(d).is_err(), "{d}");
        }
    }
}
