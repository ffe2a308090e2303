//! The Gerrit query subset: a lexer and a recursive-descent parser to an AST.
//!
//! Grammar (as Gerrit's: `OR` binds loosest, then `AND` — also implicit by juxtaposition —,
//! then `NOT`/`-`):
//! ```text
//! query   := or? EOF
//! or      := and ("OR" and)*
//! and     := unary ("AND"? unary)*
//! unary   := ("NOT" | "-") unary | primary
//! primary := "(" or ")" | word | "quoted phrase" | field:value | field:"quoted value"
//! ```
//! The parser knows nothing of fields; `compile` checks them against the kind's schema.
//! Positions in errors are byte offsets into the query string, counted from 0.

use std::fmt;

/// A query the parser or the compiler rejects, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub message: String,
    /// Byte offset in the query where the problem is.
    pub position: usize,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

impl std::error::Error for QueryError {}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError {
        message: message.into(),
        position,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// The empty query: every live document.
    All,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Term {
        field: Option<String>,
        value: String,
        /// Written in quotes: a phrase over text fields, one exact value over raw fields.
        quoted: bool,
        pos: usize,
    },
}

impl Expr {
    /// How many nodes the tree has.
    pub(crate) fn size(&self) -> usize {
        match self {
            Expr::All | Expr::Term { .. } => 1,
            Expr::Not(e) => 1 + e.size(),
            Expr::And(v) | Expr::Or(v) => 1 + v.iter().map(Expr::size).sum::<usize>(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Minus,
    And,
    Or,
    Not,
    Term {
        field: Option<String>,
        value: String,
        quoted: bool,
    },
}

const MAX_QUERY_BYTES: usize = 8 * 1024;
const MAX_DEPTH: usize = 64;

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.as_bytes()[0].is_ascii_alphabetic()
}

/// Reads a quoted string whose opening quote is at `start`; returns it and the offset after it.
fn quoted(q: &str, start: usize) -> Result<(String, usize), QueryError> {
    let mut out = String::new();
    let mut chars = q[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + i + 1)),
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    err(start, "unterminated quote")
}

/// The one whitespace rule of the lexer: Unicode whitespace (a no-break space separates words
/// like a space does). The lexer advances by `char`, so every step consumes at least one.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Where a bare word starting at `start` ends: at whitespace, a parenthesis or a quote.
fn word_end(q: &str, start: usize) -> usize {
    q[start..]
        .find(|c: char| is_space(c) || c == '(' || c == ')' || c == '"')
        .map_or(q.len(), |n| start + n)
}

fn lex(q: &str) -> Result<Vec<(usize, Tok)>, QueryError> {
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(c) = q[i..].chars().next() {
        if is_space(c) {
            i += c.len_utf8();
            continue;
        }
        match c {
            '(' => {
                toks.push((i, Tok::LParen));
                i += 1;
            }
            ')' => {
                toks.push((i, Tok::RParen));
                i += 1;
            }
            '-' => {
                match q[i + 1..].chars().next() {
                    Some(n) if !is_space(n) && n != ')' => {}
                    _ => return err(i, "'-' must be followed by a term"),
                }
                toks.push((i, Tok::Minus));
                i += 1;
            }
            '"' => {
                let (value, end) = quoted(q, i)?;
                toks.push((
                    i,
                    Tok::Term {
                        field: None,
                        value,
                        quoted: true,
                    },
                ));
                i = end;
            }
            _ => {
                let start = i;
                let end = word_end(q, i);
                // `c` is none of the word's terminators, so the word holds at least `c`.
                debug_assert!(end > start);
                let (tok, after) = word(q, start, end)?;
                i = after;
                toks.push((start, tok));
            }
        }
    }
    Ok(toks)
}

/// The token for the bare word `q[start..end]` and the offset after it (past a quoted value
/// that follows `field:`).
fn word(q: &str, start: usize, end: usize) -> Result<(Tok, usize), QueryError> {
    let word = &q[start..end];
    let tok = match word {
        "AND" => Tok::And,
        "OR" => Tok::Or,
        "NOT" => Tok::Not,
        _ => match word.split_once(':') {
            Some((field, value)) if is_field_name(field) => {
                if value.is_empty() && q[end..].starts_with('"') {
                    let (v, after) = quoted(q, end)?;
                    let tok = Tok::Term {
                        field: Some(field.to_string()),
                        value: v,
                        quoted: true,
                    };
                    return Ok((tok, after));
                }
                if value.is_empty() {
                    return err(start, format!("missing value after '{field}:'"));
                }
                Tok::Term {
                    field: Some(field.to_string()),
                    value: value.to_string(),
                    quoted: false,
                }
            }
            _ => Tok::Term {
                field: None,
                value: word.to_string(),
                quoted: false,
            },
        },
    };
    Ok((tok, end))
}

fn describe(t: Option<&(usize, Tok)>) -> String {
    match t {
        None => "end of query".into(),
        Some((_, Tok::LParen)) => "'('".into(),
        Some((_, Tok::RParen)) => "')'".into(),
        Some((_, Tok::Minus)) => "'-'".into(),
        Some((_, Tok::And)) => "'AND'".into(),
        Some((_, Tok::Or)) => "'OR'".into(),
        Some((_, Tok::Not)) => "'NOT'".into(),
        Some((_, Tok::Term { value, .. })) => format!("'{value}'"),
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |(p, _)| *p)
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut items = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.at += 1;
                    items.push(self.unary()?);
                }
                Some(Tok::LParen | Tok::Minus | Tok::Not | Tok::Term { .. }) => {
                    items.push(self.unary()?)
                }
                _ => break,
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        match self.peek() {
            Some(Tok::Not | Tok::Minus) => {
                self.at += 1;
                self.nested(|p| p.unary()).map(|e| Expr::Not(Box::new(e)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        match self.toks.get(self.at).cloned() {
            Some((
                _,
                Tok::Term {
                    field,
                    value,
                    quoted,
                },
            )) => {
                self.at += 1;
                Ok(Expr::Term {
                    field,
                    value,
                    quoted,
                    pos,
                })
            }
            Some((_, Tok::LParen)) => {
                self.at += 1;
                if self.peek() == Some(&Tok::RParen) {
                    return err(pos, "empty parentheses");
                }
                let inner = self.nested(|p| p.or())?;
                if self.peek() != Some(&Tok::RParen) {
                    return err(
                        pos,
                        format!(
                            "unbalanced '(': missing ')', found {}",
                            describe(self.toks.get(self.at))
                        ),
                    );
                }
                self.at += 1;
                Ok(inner)
            }
            Some((_, Tok::RParen)) => err(pos, "unbalanced ')': no matching '('"),
            other => {
                let after = match self.at.checked_sub(1).and_then(|i| self.toks.get(i)) {
                    Some((_, t @ (Tok::And | Tok::Or | Tok::Not | Tok::Minus))) => {
                        format!(" after {}", describe(Some(&(0, t.clone()))))
                    }
                    _ => String::new(),
                };
                err(
                    pos,
                    format!("expected a term{after}, found {}", describe(other.as_ref())),
                )
            }
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Parser) -> Result<Expr, QueryError>,
    ) -> Result<Expr, QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(
                self.pos(),
                format!("query nested deeper than {MAX_DEPTH} levels"),
            );
        }
        let r = f(self);
        self.depth -= 1;
        r
    }
}

/// Parses a query string to its AST; the empty (or all-blank) query is [`Expr::All`].
pub(crate) fn parse(q: &str) -> Result<Expr, QueryError> {
    if q.len() > MAX_QUERY_BYTES {
        return err(
            MAX_QUERY_BYTES,
            format!("query longer than {MAX_QUERY_BYTES} bytes"),
        );
    }
    let toks = lex(q)?;
    if toks.is_empty() {
        return Ok(Expr::All);
    }
    let mut p = Parser {
        toks,
        at: 0,
        end: q.len(),
        depth: 0,
    };
    let e = p.or()?;
    match p.toks.get(p.at) {
        None => Ok(e),
        Some((pos, Tok::RParen)) => err(*pos, "unbalanced ')': no matching '('"),
        Some((pos, t)) => err(
            *pos,
            format!("unexpected {}", describe(Some(&(*pos, t.clone())))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(field: Option<&str>, value: &str, quoted: bool, pos: usize) -> Expr {
        Expr::Term {
            field: field.map(str::to_string),
            value: value.into(),
            quoted,
            pos,
        }
    }

    #[test]
    fn precedence_or_below_implicit_and_below_not() {
        let e = parse("a b OR -c:d").unwrap();
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::And(vec![t(None, "a", false, 0), t(None, "b", false, 2)]),
                Expr::Not(Box::new(t(Some("c"), "d", false, 8))),
            ])
        );
    }

    #[test]
    fn quoted_values_and_phrases() {
        let e = parse(r#"subject:"fix crash" "a \"b\"" NOT (x AND y)"#).unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                t(Some("subject"), "fix crash", true, 0),
                t(None, "a \"b\"", true, 20),
                Expr::Not(Box::new(Expr::And(vec![
                    t(None, "x", false, 35),
                    t(None, "y", false, 41)
                ]))),
            ])
        );
        assert_eq!(
            parse("project:tools/gerrit").unwrap(),
            t(Some("project"), "tools/gerrit", false, 0)
        );
        assert_eq!(parse("  ").unwrap(), Expr::All);
    }

    #[test]
    fn errors_name_the_problem_and_position() {
        let cases = [
            ("(a OR b", "unbalanced '('", 0),
            ("a b)", "unbalanced ')'", 3),
            (
                "a AND",
                "expected a term after 'AND', found end of query",
                5,
            ),
            ("OR a", "expected a term, found 'OR'", 0),
            ("a \"bc", "unterminated quote", 2),
            ("status:", "missing value after 'status:'", 0),
            ("a - b", "'-' must be followed by a term", 2),
            ("x ()", "empty parentheses", 2),
        ];
        for (q, msg, pos) in cases {
            let e = parse(q).expect_err(q);
            assert!(e.message.contains(msg), "{q}: {e}");
            assert_eq!(e.position, pos, "{q}: {e}");
        }
        let deep = "(".repeat(100) + "a" + &")".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    }
}
