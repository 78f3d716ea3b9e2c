//! The one expression language of Neronet (SPEC §5): CLI selections, `abort_when` rules and
//! notification rules. Parsing keeps the column of every token so errors point at the character;
//! `Display` prints an expression that parses back to the same tree.
//!
//! Grammar, loosest first: `a,b` (union) · `a||b` · `a&&b` · `!a` · `(a)`, `field OP value`,
//! `lo-hi` (id range), a bare number or word (an id, a state name, or `all`).

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

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Num(f64),
    /// A number with a unit; compares as seconds.
    Duration(f64, Unit),
    Text(String),
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
    /// Any other field (`runtime`, `cluster`, a parameter, a metric); `None` when this row lacks it.
    fn field(&self, name: &str) -> Option<FieldValue>;
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
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
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
            let text: String = chars[start..i].iter().collect();
            let n: f64 = text
                .parse()
                .map_err(|_| err(start, format!("bad number '{text}'")))?;
            let mut unit = None;
            if let Some(u) = chars.get(i).copied().and_then(Unit::from_char) {
                if !chars.get(i + 1).copied().is_some_and(is_word_char) {
                    unit = Some(u);
                    i += 1;
                }
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
            Tok::Num(n, unit, text)
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

struct Parser {
    toks: Vec<Lexed>,
    pos: usize,
    end_column: usize,
    /// Nesting of `(` and `!`: bounded so hostile input cannot overflow the stack.
    depth: usize,
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
            Some(Tok::Num(n, unit, text)) => {
                if unit.is_some() || n.fract() != 0.0 || text.contains(['.', 'e', 'E']) {
                    self.pos -= 1;
                    return self.fail(format!(
                        "'{text}' is not an id (ids are whole numbers or words)"
                    ));
                }
                if self.peek() == Some(&Tok::Minus) {
                    self.pos += 1;
                    let hi_col = self.column();
                    match self.next() {
                        Some(Tok::Num(hi, None, hi_text)) if !hi_text.contains(['.', 'e', 'E']) => {
                            let (lo, hi) = (n as i64, hi as i64);
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
                            message: "expected the end of an id range (e.g. 124-186)".into(),
                        }),
                    }
                } else if matches!(self.peek(), Some(Tok::Op(_))) {
                    self.fail("a comparison needs a field name on the left")
                } else {
                    Ok(Expr::Id(text))
                }
            }
            // A word or a quoted name before an operator is a field (`"learning rate"<0.1`).
            Some(Tok::Word(w) | Tok::Str(w)) if matches!(self.peek(), Some(Tok::Op(_))) => {
                self.comparison(w, column)
            }
            Some(Tok::Word(w)) => {
                let lower = w.to_ascii_lowercase();
                if lower == "all" {
                    Ok(Expr::All)
                } else if STATE_NAMES.contains(&lower.as_str()) {
                    Ok(Expr::State(lower))
                } else {
                    Ok(Expr::Id(w))
                }
            }
            Some(Tok::Str(s)) => Ok(Expr::Id(s)),
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
            Some(Tok::Word(w)) if !negative => Ok(Value::Text(w)),
            Some(Tok::Str(s)) if !negative => Ok(Value::Text(s)),
            _ => {
                self.pos -= 1;
                self.fail("expected a value (number, duration like 30m, or string)")
            }
        }
    }
}

/// Parse an expression; the error names the 1-based column of the offending character.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
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
    if n.fract() == 0.0 && n.abs() < 1e15 {
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
                let plain = id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty()
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

    /// Does this row match?
    pub fn matches(&self, row: &dyn Fields) -> bool {
        match self {
            Expr::Union(v) | Expr::Or(v) => v.iter().any(|e| e.matches(row)),
            Expr::And(v) => v.iter().all(|e| e.matches(row)),
            Expr::Not(e) => !e.matches(row),
            Expr::All => true,
            Expr::State(s) => row.state().is_some_and(|st| st.eq_ignore_ascii_case(s)),
            Expr::IdRange(lo, hi) => row
                .id()
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| *lo <= n && n <= *hi),
            Expr::Id(id) => id_equal(id, row.id()),
            Expr::Cmp(c) => c.matches(row),
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
    pub fn matches(&self, row: &dyn Fields) -> bool {
        let name = self.field.as_str();
        let got = match name.to_ascii_lowercase().as_str() {
            "id" => Some(FieldValue::Text(row.id().to_string())),
            "status" | "state" => row.state().map(|s| FieldValue::Text(s.to_string())),
            _ => row.field(name),
        };
        let Some(got) = got else { return false };
        if self.op == CmpOp::Match {
            let text = match &got {
                FieldValue::Num(n) => format_number(*n),
                FieldValue::Text(t) => t.clone(),
            };
            return self.regex.as_ref().is_some_and(|r| r.0.is_match(&text));
        }
        let ord = match (&got, &self.value) {
            (FieldValue::Num(g), v) => match v.as_number() {
                Some(w) => g.partial_cmp(&w),
                None => return self.op == CmpOp::Ne,
            },
            (FieldValue::Text(g), Value::Text(w)) => {
                match (g.trim().parse::<f64>(), w.parse::<f64>()) {
                    (Ok(a), Ok(b)) => a.partial_cmp(&b),
                    _ => Some(g.as_str().cmp(w.as_str())),
                }
            }
            (FieldValue::Text(g), v) => match g.trim().parse::<f64>() {
                Ok(a) => a.partial_cmp(&v.as_number().unwrap_or(f64::NAN)),
                Err(_) => return self.op == CmpOp::Ne,
            },
        };
        let Some(ord) = ord else { return false };
        use std::cmp::Ordering::*;
        match self.op {
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Match => unreachable!("handled above"),
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
        fn field(&self, name: &str) -> Option<FieldValue> {
            self.fields.get(name).cloned()
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
}
