//! A CEL evaluator for exactly the subset used by Istio's `x-kubernetes-validations` rules.
//!
//! Supported: literals (int, uint, double, string, bool, null, lists), `self` and macro
//! variables, field selection, `has()`, indexing, `!`/unary `-`, arithmetic, comparisons,
//! `==`/`!=`, `in`, `&&`/`||` with CEL's error-absorbing semantics, `?:`, the macros
//! `all`/`exists`/`exists_one`, and the functions `size`, `duration`, `contains`,
//! `startsWith`, `endsWith`, `matches` and `substring`. [`compile`] rejects anything else, and
//! the code generator calls it for every rule, so an unsupported rule fails generation instead
//! of going unchecked. Runtime error texts follow cel-go's (they appear in kube's messages as
//! `<error> evaluating rule: <message>`).

use super::table::{Node, Ty, NONE};
use regex::Regex;
use serde_json::Value;
use std::borrow::Cow;

/// A parsed rule.
#[derive(Debug)]
pub struct Program {
    expr: Expr,
}

#[derive(Debug)]
enum Expr {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Ident(String),
    Select(Box<Expr>, String),
    Has(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Call(Func, Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Macro(MacroKind, Box<Expr>, String, Box<Expr>),
}

#[derive(Debug)]
enum Func {
    Size,
    Duration,
    Contains,
    StartsWith,
    EndsWith,
    /// The regex is compiled once when the pattern is a literal.
    Matches(Option<Regex>),
    Substring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MacroKind {
    All,
    Exists,
    ExistsOne,
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Ident(String),
    Punct(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    const PUNCTS: &[&str] = &[
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "?", ":", "(", ")", "[", "]", "{", "}",
        ",", ".", "+", "-", "*", "/", "%",
    ];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            let mut is_float = false;
            if c == b'0' && matches!(b.get(i + 1), Some(b'x') | Some(b'X')) {
                i += 2;
                while i < b.len() && b[i].is_ascii_hexdigit() {
                    i += 1;
                }
                let v = i64::from_str_radix(&src[start + 2..i], 16)
                    .map_err(|e| format!("bad hex literal: {e}"))?;
                if b.get(i) == Some(&b'u') || b.get(i) == Some(&b'U') {
                    i += 1;
                    out.push(Tok::Uint(v as u64));
                } else {
                    out.push(Tok::Int(v));
                }
                continue;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                is_float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                is_float = true;
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &src[start..i];
            if is_float {
                out.push(Tok::Double(
                    text.parse()
                        .map_err(|e| format!("bad double literal {text:?}: {e}"))?,
                ));
            } else if i < b.len() && (b[i] == b'u' || b[i] == b'U') {
                i += 1;
                out.push(Tok::Uint(
                    text.parse()
                        .map_err(|e| format!("bad uint literal {text:?}: {e}"))?,
                ));
            } else {
                out.push(Tok::Int(
                    text.parse()
                        .map_err(|e| format!("bad int literal {text:?}: {e}"))?,
                ));
            }
            continue;
        }
        if c == b'"' || c == b'\'' {
            if b.get(i + 1) == Some(&c) && b.get(i + 2) == Some(&c) {
                return Err("triple-quoted strings are not supported".into());
            }
            i += 1;
            let mut s = String::new();
            loop {
                let ch = src[i..]
                    .chars()
                    .next()
                    .ok_or("unterminated string literal")?;
                i += ch.len_utf8();
                if ch as u32 == c as u32 {
                    break;
                }
                if ch == '\\' {
                    let e = src[i..].chars().next().ok_or("unterminated escape")?;
                    i += e.len_utf8();
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' => '\\',
                        '"' => '"',
                        '\'' => '\'',
                        '`' => '`',
                        '?' => '?',
                        'a' => '\x07',
                        'b' => '\x08',
                        'f' => '\x0c',
                        'v' => '\x0b',
                        other => return Err(format!("unsupported escape \\{other}")),
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push(Tok::Str(s));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &src[start..i];
            if (word == "r" || word == "R" || word == "b" || word == "B")
                && matches!(b.get(i), Some(b'"') | Some(b'\''))
            {
                return Err(format!("{word}-prefixed literals are not supported"));
            }
            out.push(Tok::Ident(word.to_string()));
            continue;
        }
        let rest = &src[i..];
        match PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            Some(p) => {
                out.push(Tok::Punct(p));
                i += p.len();
            }
            None => return Err(format!("unexpected character {:?}", rest.chars().next())),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parser (CEL grammar, restricted to the supported subset)

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }
    fn eat(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(format!(
                "expected {p:?} at token {}, found {:?}",
                self.pos,
                self.peek()
            ))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        let c = self.or()?;
        let r = if self.eat("?") {
            let a = self.or()?;
            self.expect(":")?;
            let b = self.expr()?;
            Expr::Cond(Box::new(c), Box::new(a), Box::new(b))
        } else {
            c
        };
        self.depth -= 1;
        Ok(r)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Expr::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.relation()?;
        while self.eat("&&") {
            let r = self.relation()?;
            l = Expr::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn relation(&mut self) -> Result<Expr, String> {
        let mut l = self.addition()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct("==")) => BinOp::Eq,
                Some(Tok::Punct("!=")) => BinOp::Ne,
                Some(Tok::Punct("<")) => BinOp::Lt,
                Some(Tok::Punct("<=")) => BinOp::Le,
                Some(Tok::Punct(">")) => BinOp::Gt,
                Some(Tok::Punct(">=")) => BinOp::Ge,
                Some(Tok::Ident(w)) if w == "in" => BinOp::In,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.addition()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
    }
    fn addition(&mut self) -> Result<Expr, String> {
        let mut l = self.multiplication()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else {
                return Ok(l);
            };
            let r = self.multiplication()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
    }
    fn multiplication(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinOp::Mul
            } else if self.eat("/") {
                BinOp::Div
            } else if self.eat("%") {
                BinOp::Mod
            } else {
                return Ok(l);
            };
            let r = self.unary()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
    }
    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        let r = if self.eat("!") {
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat("-") {
            match self.peek() {
                Some(Tok::Int(_)) | Some(Tok::Double(_)) => match self.member()? {
                    Expr::Int(i) => Expr::Int(-i),
                    Expr::Double(d) => Expr::Double(-d),
                    other => Expr::Neg(Box::new(other)),
                },
                _ => Expr::Neg(Box::new(self.unary()?)),
            }
        } else {
            self.member()?
        };
        self.depth -= 1;
        Ok(r)
    }
    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }
    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let name = match self.peek() {
                    Some(Tok::Ident(n)) => n.clone(),
                    other => {
                        return Err(format!("expected a field name after '.', found {other:?}"))
                    }
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args()?;
                    e = method(e, &name, args)?;
                } else {
                    e = Expr::Select(Box::new(e), name);
                }
            } else if self.eat("[") {
                let i = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let t = self.peek().cloned().ok_or("unexpected end of expression")?;
        self.pos += 1;
        match t {
            Tok::Int(i) => Ok(Expr::Int(i)),
            Tok::Uint(u) => Ok(Expr::Uint(u)),
            Tok::Double(d) => Ok(Expr::Double(d)),
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Punct("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                        if self.eat("]") {
                            break;
                        }
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                _ if self.eat("(") => {
                    let args = self.args()?;
                    global(&name, args)
                }
                _ => Ok(Expr::Ident(name)),
            },
            other => Err(format!("unexpected token {other:?}")),
        }
    }
}

fn global(name: &str, mut args: Vec<Expr>) -> Result<Expr, String> {
    match (name, args.len()) {
        ("has", 1) => match args.pop() {
            Some(Expr::Select(operand, field)) => Ok(Expr::Has(operand, field)),
            _ => Err("has() needs a field selection argument".into()),
        },
        ("size", 1) => Ok(Expr::Call(Func::Size, args)),
        ("duration", 1) => Ok(Expr::Call(Func::Duration, args)),
        _ => Err(format!("function {name}/{} is not supported", args.len())),
    }
}

fn method(target: Expr, name: &str, args: Vec<Expr>) -> Result<Expr, String> {
    let mut all = vec![target];
    match (name, args.len()) {
        ("all" | "exists" | "exists_one", 2) => {
            let mut it = args.into_iter();
            let var = match it.next() {
                Some(Expr::Ident(v)) => v,
                _ => return Err(format!("{name}() needs an identifier as first argument")),
            };
            let pred = it.next().ok_or("missing predicate")?;
            let kind = match name {
                "all" => MacroKind::All,
                "exists" => MacroKind::Exists,
                _ => MacroKind::ExistsOne,
            };
            let range = all.pop().ok_or("missing range")?;
            Ok(Expr::Macro(kind, Box::new(range), var, Box::new(pred)))
        }
        ("size", 0) => Ok(Expr::Call(Func::Size, all)),
        ("contains", 1)
        | ("startsWith", 1)
        | ("endsWith", 1)
        | ("matches", 1)
        | ("substring", 1)
        | ("substring", 2) => {
            let f = match name {
                "contains" => Func::Contains,
                "startsWith" => Func::StartsWith,
                "endsWith" => Func::EndsWith,
                "substring" => Func::Substring,
                _ => {
                    let re = match args.first() {
                        Some(Expr::Str(p)) => {
                            Some(Regex::new(p).map_err(|e| format!("invalid regex {p:?}: {e}"))?)
                        }
                        _ => None,
                    };
                    Func::Matches(re)
                }
            };
            all.extend(args);
            Ok(Expr::Call(f, all))
        }
        _ => Err(format!("method {name}/{} is not supported", args.len())),
    }
}

fn check_idents(e: &Expr, scope: &mut Vec<String>) -> Result<(), String> {
    match e {
        Expr::Ident(n) => {
            if n == "self" || scope.iter().any(|s| s == n) {
                Ok(())
            } else {
                Err(format!("undeclared reference to {n:?}"))
            }
        }
        Expr::Null
        | Expr::Bool(_)
        | Expr::Int(_)
        | Expr::Uint(_)
        | Expr::Double(_)
        | Expr::Str(_) => Ok(()),
        Expr::Select(a, _) | Expr::Has(a, _) | Expr::Not(a) | Expr::Neg(a) => {
            check_idents(a, scope)
        }
        Expr::Index(a, b) | Expr::Bin(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
            check_idents(a, scope)?;
            check_idents(b, scope)
        }
        Expr::Cond(a, b, c) => {
            check_idents(a, scope)?;
            check_idents(b, scope)?;
            check_idents(c, scope)
        }
        Expr::List(items) | Expr::Call(_, items) => {
            items.iter().try_for_each(|i| check_idents(i, scope))
        }
        Expr::Macro(_, range, var, pred) => {
            check_idents(range, scope)?;
            scope.push(var.clone());
            let r = check_idents(pred, scope);
            scope.pop();
            r
        }
    }
}

/// Parses a rule, refusing any construct outside the supported subset.
pub fn compile(rule: &str) -> Result<Program, String> {
    let toks = lex(rule)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let expr = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected trailing token {:?}", p.peek()));
    }
    check_idents(&expr, &mut Vec::new())?;
    Ok(Program { expr })
}

// ---------------------------------------------------------------------------------------------
// Values and evaluation

/// A CEL value; objects and arrays stay borrowed from the JSON being validated.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// Nanoseconds.
    Duration(i64),
    /// A JSON object or array with the schema node describing it ([`NONE`] if unknown).
    Json(&'a Value, u32),
    List(Vec<Val<'a>>),
}

type R<'a> = Result<Val<'a>, String>;

const NO_OVERLOAD: &str = "no such overload";

fn node(nodes: &[Node], i: u32) -> Option<&Node> {
    if i == NONE {
        None
    } else {
        nodes.get(i as usize)
    }
}

/// Converts JSON as kube's `UnstructuredToVal` does: integers under a `number` schema become
/// doubles; objects and arrays are wrapped lazily.
fn from_json<'a>(nodes: &[Node], v: &'a Value, n: u32) -> Val<'a> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(num) => {
            let is_number = node(nodes, n).is_some_and(|x| x.ty == Ty::Number);
            if let Some(i) = num.as_i64() {
                if is_number {
                    Val::Double(i as f64)
                } else {
                    Val::Int(i)
                }
            } else if let Some(u) = num.as_u64() {
                if is_number {
                    Val::Double(u as f64)
                } else {
                    Val::Uint(u)
                }
            } else {
                Val::Double(num.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Val::Str(Cow::Borrowed(s.as_str())),
        Value::Array(_) | Value::Object(_) => Val::Json(v, n),
    }
}

struct Env<'a> {
    nodes: &'a [Node],
    vars: Vec<(&'a str, Val<'a>)>,
}

/// Evaluates a compiled rule with `self` bound to `value` (described by schema node `n`).
/// `Ok(true/false)` is the rule's verdict; `Err` is a runtime error text as cel-go prints it.
pub fn evaluate<'a>(
    p: &'a Program,
    nodes: &'a [Node],
    value: &'a Value,
    n: u32,
) -> Result<bool, String> {
    let mut env = Env {
        nodes,
        vars: vec![("self", from_json(nodes, value, n))],
    };
    match eval(&p.expr, &mut env)? {
        Val::Bool(b) => Ok(b),
        _ => Err(NO_OVERLOAD.into()),
    }
}

fn items<'a>(nodes: &[Node], v: &Val<'a>) -> Result<Vec<Val<'a>>, String> {
    match v {
        Val::List(l) => Ok(l.clone()),
        Val::Json(Value::Array(a), n) => {
            let it = node(nodes, *n).map_or(NONE, |x| x.items);
            Ok(a.iter().map(|x| from_json(nodes, x, it)).collect())
        }
        Val::Json(Value::Object(m), _) => Ok(m
            .keys()
            .map(|k| Val::Str(Cow::Borrowed(k.as_str())))
            .collect()),
        _ => Err(NO_OVERLOAD.into()),
    }
}

fn num_cmp(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Uint(x), Val::Uint(y)) => Some(x.cmp(y)),
        (Val::Int(x), Val::Uint(y)) => Some(if *x < 0 {
            std::cmp::Ordering::Less
        } else {
            (*x as u64).cmp(y)
        }),
        (Val::Uint(x), Val::Int(y)) => Some(if *y < 0 {
            std::cmp::Ordering::Greater
        } else {
            x.cmp(&(*y as u64))
        }),
        (Val::Double(x), Val::Double(y)) => x.partial_cmp(y),
        (Val::Double(x), Val::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Int(x), Val::Double(y)) => (*x as f64).partial_cmp(y),
        (Val::Double(x), Val::Uint(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Uint(x), Val::Double(y)) => (*x as f64).partial_cmp(y),
        _ => None,
    }
}

fn equal(nodes: &[Node], a: &Val, b: &Val) -> bool {
    if let Some(o) = num_cmp(a, b) {
        return o == std::cmp::Ordering::Equal;
    }
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Duration(x), Val::Duration(y)) => x == y,
        (Val::Json(Value::Object(x), nx), Val::Json(Value::Object(y), ny)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.get(k).is_some_and(|w| {
                        let cx = node(nodes, *nx)
                            .and_then(|n| n.field_schema(k))
                            .unwrap_or(NONE);
                        let cy = node(nodes, *ny)
                            .and_then(|n| n.field_schema(k))
                            .unwrap_or(NONE);
                        equal(nodes, &from_json(nodes, v, cx), &from_json(nodes, w, cy))
                    })
                })
        }
        (
            Val::Json(Value::Array(_), _) | Val::List(_),
            Val::Json(Value::Array(_), _) | Val::List(_),
        ) => match (items(nodes, a), items(nodes, b)) {
            (Ok(x), Ok(y)) => {
                x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| equal(nodes, p, q))
            }
            _ => false,
        },
        _ => false,
    }
}

fn truth<'a>(v: &R<'a>) -> Option<bool> {
    match v {
        Ok(Val::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// CEL `&&`: false wins over errors, errors win over true.
fn and<'a>(l: R<'a>, r: R<'a>) -> R<'a> {
    if truth(&l) == Some(false) || truth(&r) == Some(false) {
        return Ok(Val::Bool(false));
    }
    match (l, r) {
        (Ok(Val::Bool(true)), Ok(Val::Bool(true))) => Ok(Val::Bool(true)),
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Err(NO_OVERLOAD.into()),
    }
}

/// CEL `||`: true wins over errors, errors win over false.
fn or<'a>(l: R<'a>, r: R<'a>) -> R<'a> {
    if truth(&l) == Some(true) || truth(&r) == Some(true) {
        return Ok(Val::Bool(true));
    }
    match (l, r) {
        (Ok(Val::Bool(false)), Ok(Val::Bool(false))) => Ok(Val::Bool(false)),
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Err(NO_OVERLOAD.into()),
    }
}

fn eval<'a>(e: &'a Expr, env: &mut Env<'a>) -> R<'a> {
    let nodes = env.nodes;
    match e {
        Expr::Null => Ok(Val::Null),
        Expr::Bool(b) => Ok(Val::Bool(*b)),
        Expr::Int(i) => Ok(Val::Int(*i)),
        Expr::Uint(u) => Ok(Val::Uint(*u)),
        Expr::Double(d) => Ok(Val::Double(*d)),
        Expr::Str(s) => Ok(Val::Str(Cow::Borrowed(s.as_str()))),
        Expr::Ident(n) => env
            .vars
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no such attribute: {n}")),
        Expr::Select(operand, field) => match eval(operand, env)? {
            Val::Json(Value::Object(m), n) => match m.get(field) {
                Some(v) => {
                    let c = node(nodes, n)
                        .and_then(|x| x.field_schema(field))
                        .unwrap_or(NONE);
                    Ok(from_json(nodes, v, c))
                }
                None => Err(format!("no such key: {field}")),
            },
            _ => Err(NO_OVERLOAD.into()),
        },
        Expr::Has(operand, field) => match eval(operand, env)? {
            Val::Json(Value::Object(m), _) => Ok(Val::Bool(m.contains_key(field))),
            _ => Err(NO_OVERLOAD.into()),
        },
        Expr::Index(operand, index) => {
            let o = eval(operand, env)?;
            let i = eval(index, env)?;
            match (&o, &i) {
                (Val::Json(Value::Object(m), n), Val::Str(k)) => match m.get(k.as_ref()) {
                    Some(v) => {
                        let c = node(nodes, *n)
                            .and_then(|x| x.field_schema(k))
                            .unwrap_or(NONE);
                        Ok(from_json(nodes, v, c))
                    }
                    None => Err(format!("no such key: {k}")),
                },
                (
                    Val::Json(Value::Array(_), _) | Val::List(_),
                    Val::Int(_) | Val::Uint(_) | Val::Double(_),
                ) => {
                    let list = items(nodes, &o)?;
                    let idx = match i {
                        Val::Int(x) => Some(x),
                        Val::Uint(x) => i64::try_from(x).ok(),
                        Val::Double(x) if x.fract() == 0.0 => Some(x as i64),
                        _ => None,
                    };
                    match idx {
                        Some(x) if x >= 0 && (x as usize) < list.len() => {
                            Ok(list[x as usize].clone())
                        }
                        Some(x) => Err(format!("index out of bounds: {x}")),
                        None => Err("unsupported index value".into()),
                    }
                }
                _ => Err(NO_OVERLOAD.into()),
            }
        }
        Expr::List(l) => {
            let mut out = Vec::with_capacity(l.len());
            for x in l {
                out.push(eval(x, env)?);
            }
            Ok(Val::List(out))
        }
        Expr::Not(a) => match eval(a, env)? {
            Val::Bool(b) => Ok(Val::Bool(!b)),
            _ => Err(NO_OVERLOAD.into()),
        },
        Expr::Neg(a) => match eval(a, env)? {
            Val::Int(i) => i
                .checked_neg()
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            Val::Double(d) => Ok(Val::Double(-d)),
            Val::Duration(d) => d
                .checked_neg()
                .map(Val::Duration)
                .ok_or_else(|| "integer overflow".into()),
            _ => Err(NO_OVERLOAD.into()),
        },
        Expr::And(a, b) => {
            let l = eval(a, env);
            if truth(&l) == Some(false) {
                return Ok(Val::Bool(false));
            }
            let r = eval(b, env);
            and(l, r)
        }
        Expr::Or(a, b) => {
            let l = eval(a, env);
            if truth(&l) == Some(true) {
                return Ok(Val::Bool(true));
            }
            let r = eval(b, env);
            or(l, r)
        }
        Expr::Cond(c, a, b) => match eval(c, env)? {
            Val::Bool(true) => eval(a, env),
            Val::Bool(false) => eval(b, env),
            _ => Err(NO_OVERLOAD.into()),
        },
        Expr::Bin(op, a, b) => {
            let l = eval(a, env)?;
            let r = eval(b, env)?;
            binary(nodes, *op, l, r)
        }
        Expr::Call(f, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, env)?);
            }
            call(nodes, f, vals)
        }
        Expr::Macro(kind, range, var, pred) => {
            let r = eval(range, env)?;
            let elems = items(nodes, &r)?;
            let var: &'a str = var.as_str();
            let mut acc: R<'a> = Ok(Val::Bool(*kind == MacroKind::All));
            let mut count = 0usize;
            for x in elems {
                match kind {
                    MacroKind::All if truth(&acc) == Some(false) => break,
                    MacroKind::Exists if truth(&acc) == Some(true) => break,
                    _ => {}
                }
                let p = with_var(env, var, x, pred);
                match kind {
                    MacroKind::All => acc = and(acc, p),
                    MacroKind::Exists => acc = or(acc, p),
                    MacroKind::ExistsOne => match p? {
                        Val::Bool(true) => count += 1,
                        Val::Bool(false) => {}
                        _ => return Err(NO_OVERLOAD.into()),
                    },
                }
            }
            if *kind == MacroKind::ExistsOne {
                Ok(Val::Bool(count == 1))
            } else {
                acc
            }
        }
    }
}

fn with_var<'a>(env: &mut Env<'a>, var: &'a str, x: Val<'a>, pred: &'a Expr) -> R<'a> {
    env.vars.push((var, x));
    let r = eval(pred, env);
    env.vars.pop();
    r
}

fn binary<'a>(nodes: &[Node], op: BinOp, l: Val<'a>, r: Val<'a>) -> R<'a> {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Eq => Ok(Val::Bool(equal(nodes, &l, &r))),
        BinOp::Ne => Ok(Val::Bool(!equal(nodes, &l, &r))),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&l, &r) {
                (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
                (Val::Duration(a), Val::Duration(b)) => Some(a.cmp(b)),
                (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
                _ => num_cmp(&l, &r),
            };
            let o = ord.ok_or(NO_OVERLOAD)?;
            Ok(Val::Bool(match op {
                BinOp::Lt => o == Less,
                BinOp::Le => o != Greater,
                BinOp::Gt => o == Greater,
                _ => o != Less,
            }))
        }
        BinOp::In => match &r {
            Val::Json(Value::Object(m), _) => match &l {
                Val::Str(k) => Ok(Val::Bool(m.contains_key(k.as_ref()))),
                _ => Ok(Val::Bool(false)),
            },
            Val::List(_) | Val::Json(Value::Array(_), _) => {
                let list = items(nodes, &r)?;
                Ok(Val::Bool(list.iter().any(|x| equal(nodes, &l, x))))
            }
            _ => Err(NO_OVERLOAD.into()),
        },
        BinOp::Add => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a
                .checked_add(b)
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            (Val::Uint(a), Val::Uint(b)) => a
                .checked_add(b)
                .map(Val::Uint)
                .ok_or_else(|| "unsigned integer overflow".into()),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a + b)),
            (Val::Str(a), Val::Str(b)) => Ok(Val::Str(Cow::Owned(format!("{a}{b}")))),
            (Val::Duration(a), Val::Duration(b)) => a
                .checked_add(b)
                .map(Val::Duration)
                .ok_or_else(|| "integer overflow".into()),
            (
                a @ (Val::List(_) | Val::Json(Value::Array(_), _)),
                b @ (Val::List(_) | Val::Json(Value::Array(_), _)),
            ) => {
                let mut x = items(nodes, &a)?;
                x.extend(items(nodes, &b)?);
                Ok(Val::List(x))
            }
            _ => Err(NO_OVERLOAD.into()),
        },
        BinOp::Sub => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a
                .checked_sub(b)
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            (Val::Uint(a), Val::Uint(b)) => a
                .checked_sub(b)
                .map(Val::Uint)
                .ok_or_else(|| "unsigned integer overflow".into()),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a - b)),
            (Val::Duration(a), Val::Duration(b)) => a
                .checked_sub(b)
                .map(Val::Duration)
                .ok_or_else(|| "integer overflow".into()),
            _ => Err(NO_OVERLOAD.into()),
        },
        BinOp::Mul => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a
                .checked_mul(b)
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            (Val::Uint(a), Val::Uint(b)) => a
                .checked_mul(b)
                .map(Val::Uint)
                .ok_or_else(|| "unsigned integer overflow".into()),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a * b)),
            _ => Err(NO_OVERLOAD.into()),
        },
        BinOp::Div => match (l, r) {
            (Val::Int(_), Val::Int(0)) | (Val::Uint(_), Val::Uint(0)) => {
                Err("division by zero".into())
            }
            (Val::Int(a), Val::Int(b)) => a
                .checked_div(b)
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            (Val::Uint(a), Val::Uint(b)) => Ok(Val::Uint(a / b)),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a / b)),
            _ => Err(NO_OVERLOAD.into()),
        },
        BinOp::Mod => match (l, r) {
            (Val::Int(_), Val::Int(0)) | (Val::Uint(_), Val::Uint(0)) => {
                Err("modulus by zero".into())
            }
            (Val::Int(a), Val::Int(b)) => a
                .checked_rem(b)
                .map(Val::Int)
                .ok_or_else(|| "integer overflow".into()),
            (Val::Uint(a), Val::Uint(b)) => Ok(Val::Uint(a % b)),
            _ => Err(NO_OVERLOAD.into()),
        },
    }
}

fn as_int(v: &Val) -> Option<i64> {
    match v {
        Val::Int(i) => Some(*i),
        _ => None,
    }
}

fn call<'a>(nodes: &[Node], f: &Func, args: Vec<Val<'a>>) -> R<'a> {
    match (f, args.as_slice()) {
        (Func::Size, [Val::Str(s)]) => Ok(Val::Int(s.chars().count() as i64)),
        (Func::Size, [v @ (Val::List(_) | Val::Json(..))]) => {
            Ok(Val::Int(items(nodes, v)?.len() as i64))
        }
        (Func::Duration, [Val::Str(s)]) => {
            parse_go_duration(s).map(Val::Duration).ok_or_else(|| {
                "type conversion error from 'string' to 'google.protobuf.Duration'".into()
            })
        }
        (Func::Duration, [Val::Duration(d)]) => Ok(Val::Duration(*d)),
        (Func::Contains, [Val::Str(s), Val::Str(t)]) => Ok(Val::Bool(s.contains(t.as_ref()))),
        (Func::StartsWith, [Val::Str(s), Val::Str(t)]) => Ok(Val::Bool(s.starts_with(t.as_ref()))),
        (Func::EndsWith, [Val::Str(s), Val::Str(t)]) => Ok(Val::Bool(s.ends_with(t.as_ref()))),
        (Func::Matches(Some(re)), [Val::Str(s), _]) => Ok(Val::Bool(re.is_match(s))),
        (Func::Matches(None), [Val::Str(s), Val::Str(p)]) => match Regex::new(p) {
            Ok(re) => Ok(Val::Bool(re.is_match(s))),
            Err(e) => Err(format!("error parsing regexp: {e}")),
        },
        (Func::Substring, [Val::Str(s), start]) => {
            let start = as_int(start).ok_or(NO_OVERLOAD)?;
            let len = s.chars().count() as i64;
            substring(s, start, len)
        }
        (Func::Substring, [Val::Str(s), start, end]) => {
            let start = as_int(start).ok_or(NO_OVERLOAD)?;
            let end = as_int(end).ok_or(NO_OVERLOAD)?;
            substring(s, start, end)
        }
        _ => Err(NO_OVERLOAD.into()),
    }
}

/// cel-go `ext.Strings` substring, by code points, with its error texts.
fn substring<'a>(s: &str, start: i64, end: i64) -> R<'a> {
    let runes: Vec<char> = s.chars().collect();
    let l = runes.len() as i64;
    if start > end {
        return Err(format!(
            "invalid substring range. start: {start}, end: {end}"
        ));
    }
    if start < 0 || start > l {
        return Err(format!("index out of range: {start}"));
    }
    if end > l {
        return Err(format!("index out of range: {end}"));
    }
    Ok(Val::Str(Cow::Owned(
        runes[start as usize..end as usize].iter().collect(),
    )))
}

/// Go's `time.ParseDuration`, returning nanoseconds, or `None` where Go returns an error.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let mut s = s;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    const LIMIT: u64 = 1 << 63;
    let mut d: u64 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return None;
        }
        // leading int
        let mut i = 0;
        let mut v: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if v > LIMIT / 10 {
                return None;
            }
            v = v * 10 + u64::from(b[i] - b'0');
            if v > LIMIT {
                return None;
            }
            i += 1;
        }
        let pre = i > 0;
        s = &s[i..];
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if s.starts_with('.') {
            s = &s[1..];
            let b = s.as_bytes();
            let mut j = 0;
            let mut overflow = false;
            while j < b.len() && b[j].is_ascii_digit() {
                if !overflow {
                    if f > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(b[j] - b'0');
                        if y > LIMIT {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                j += 1;
            }
            post = j > 0;
            s = &s[j..];
        }
        if !pre && !post {
            return None;
        }
        let unit_end = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_end == 0 {
            return None;
        }
        let unit: u64 = match &s[..unit_end] {
            "ns" => 1,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        s = &s[unit_end..];
        if v > LIMIT / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return None;
            }
        }
        d += v;
        if d > LIMIT {
            return None;
        }
    }
    if neg {
        return Some((d as i64).wrapping_neg());
    }
    if d > LIMIT - 1 {
        return None;
    }
    Some(d as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: &str, v: Value) -> Result<bool, String> {
        let p = compile(rule).map_err(|e| format!("compile: {e}"))?;
        evaluate(&p, &[], &v, NONE)
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1ms"), Some(1_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("1h2m3s"), Some(3_723_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("-5s"), Some(-5_000_000_000));
        assert_eq!(parse_go_duration(".5ms"), Some(500_000));
        assert_eq!(parse_go_duration("300"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("1d"), None);
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("99999999999999999999s"), None);
        assert_eq!(
            parse_go_duration("2562047h47m16.854775807s"),
            Some(i64::MAX)
        );
        assert_eq!(parse_go_duration("2562047h47m16.854775808s"), None);
    }

    #[test]
    fn istio_rules() {
        let d = "duration(self) >= duration('1ms')";
        assert_eq!(run(d, Value::from("5s")), Ok(true));
        assert_eq!(run(d, Value::from("0s")), Ok(false));
        assert_eq!(run(d, Value::from("999us")), Ok(false));
        assert_eq!(
            run(d, Value::from("abc")),
            Err("type conversion error from 'string' to 'google.protobuf.Duration'".into())
        );
        assert_eq!(run("0 < self && self <= 65535", Value::from(80)), Ok(true));
        assert_eq!(run("0 < self && self <= 65535", Value::from(0)), Ok(false));
        assert_eq!(
            run("0 < self && self <= 65535", Value::from(99999)),
            Ok(false)
        );
        let dup = "self.all(l1, self.exists_one(l2, l1.number == l2.number))";
        assert_eq!(
            run(dup, serde_json::json!([{"number": 1}, {"number": 2}])),
            Ok(true)
        );
        assert_eq!(
            run(dup, serde_json::json!([{"number": 1}, {"number": 1}])),
            Ok(false)
        );
        assert_eq!(
            run(dup, serde_json::json!([{"number": 1}, {}])),
            Err("no such key: number".into())
        );
        let cidr = r#"!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))"#;
        assert_eq!(
            run(
                cidr,
                serde_json::json!({"addresses": ["1.2.3.4/16"], "resolution": "DNS"})
            ),
            Ok(false)
        );
        assert_eq!(
            run(cidr, serde_json::json!({"addresses": ["1.2.3.4/16"]})),
            Ok(true)
        );
        let uds = r#"self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true"#;
        assert_eq!(run(uds, Value::from("unix:///a")), Ok(true));
        assert_eq!(run(uds, Value::from("unix://a")), Ok(false));
        assert_eq!(
            run(uds, Value::from("unix://")),
            Err("index out of range: 8".into())
        );
        let name = r#"self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))"#;
        assert_eq!(run(name, serde_json::json!({"http-a": 1})), Ok(true));
        assert_eq!(run(name, serde_json::json!({"-a": 1})), Ok(false));
        let one = "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1";
        assert_eq!(
            run(
                one,
                serde_json::json!({"workloadSelector": {}, "endpoints": []})
            ),
            Ok(false)
        );
        assert_eq!(run(one, serde_json::json!({"endpoints": []})), Ok(true));
        // Error absorption: false && error is false, true || error is true.
        assert_eq!(
            run("self.x == 1 && false", serde_json::json!({})),
            Ok(false)
        );
        assert_eq!(run("self.x == 1 || true", serde_json::json!({})), Ok(true));
        assert_eq!(
            run("self.x == 1 || false", serde_json::json!({})),
            Err("no such key: x".into())
        );
    }

    #[test]
    fn unsupported_is_refused() {
        assert!(compile("self.map(x, x)").is_err());
        assert!(compile("isIP(self)").is_err());
        assert!(compile("foo == 1").is_err());
        assert!(compile("self ==").is_err());
        assert!(compile(&"(".repeat(200)).is_err());
    }
}
