//! The config file as a spanned TOML document, so that every problem is reported at its own key.
//!
//! Each part of the file (a top-level table, one `[[device]]`) is deserialized on its own, and a
//! key that fails is reported and left out before the part is tried again: one mistake hides no
//! other, and a part with a mistake still gets its remaining keys checked. Problems name a path
//! (`device[2].baud`, `mqtt.tls.ca`); the document turns a path into the line and column where
//! that key is written.

use std::fmt::Write as _;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::Problem;

pub(super) type Node<'a> = Spanned<DeValue<'a>>;

/// A parsed config file.
pub(super) struct Doc<'a> {
    text: &'a str,
    pub root: Node<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl<'a> Doc<'a> {
    /// Parses the TOML. On syntax errors, every one of them and nothing else: what follows a
    /// broken line cannot be trusted, and checking it would report mistakes that are not there.
    pub fn parse(text: &'a str) -> Result<Doc<'a>, Vec<Problem>> {
        let (root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            // The parser recovers to report independent mistakes; past one on a line it mostly
            // reports that mistake's consequences.
            let mut lines = Vec::new();
            return Err(errors
                .iter()
                .filter(|e| {
                    let line = e.span().map(|s| position(text, s.start).0);
                    let first = !lines.contains(&line);
                    lines.push(line);
                    first
                })
                .map(|e| {
                    let (line, col) = e.span().map(|s| position(text, s.start)).unzip();
                    Problem {
                        line,
                        col,
                        field: "-".into(),
                        message: e.message().trim().replace('\n', " "),
                    }
                })
                .collect());
        }
        let span = root.span();
        Ok(Doc {
            text,
            root: Spanned::new(span, DeValue::Table(root.into_inner())),
        })
    }

    /// The value written at `path`, if it is written.
    pub fn get(&self, path: &str) -> Option<&Node<'a>> {
        let mut node = &self.root;
        for seg in segments(path) {
            node = child(node, &seg)?.1;
        }
        Some(node)
    }

    /// A problem about `path`, placed on its key, or on the nearest part of it that is written
    /// (a device's `[[device]]` line for a key it lacks).
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        let mut node = &self.root;
        let mut at = None;
        for seg in segments(path) {
            let Some((span, next)) = child(node, &seg) else {
                break;
            };
            at = Some(span);
            node = next;
        }
        let (line, col) = at.map(|s| position(self.text, s.start)).unzip();
        Problem {
            line,
            col,
            field: path.into(),
            message: message.into(),
        }
    }

    /// Deserializes `node`, written at `path`, into `T`, pushing a problem for every key that
    /// does not fit. A failing key is reported and left out, and the rest tried again; a
    /// required key that failed or is missing is reported and given a stand-in value (of the
    /// first type that fits), so the table's other keys are still checked: the caller reports
    /// nothing more about a key that already has a problem (`Validator::problem`). `None`, with
    /// its problems pushed, when no stand-in fits.
    pub fn take<T: DeserializeOwned>(
        &self,
        path: &str,
        node: &Node<'a>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let mut node = node.clone();
        let mut left_out: Vec<Vec<Seg>> = Vec::new();
        // Each stand-in's key, and the value tried there.
        let mut stand_ins: Vec<(Vec<Seg>, DeValue<'a>)> = Vec::new();
        for _ in 0..MAX_TRIES {
            let e = match T::deserialize(ValueDeserializer::from(node.clone())) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let at = e.span().and_then(|s| find(&node, &s)).unwrap_or_default();
            if let Some(field) = e.message().strip_prefix("missing field ") {
                let mut missing = at;
                missing.push(Seg::Key(field.trim_matches('`').into()));
                // A key reported as failing is not reported again as missing.
                if !left_out.contains(&missing) {
                    problems.push(self.problem(&join(path, &missing), "is required"));
                    left_out.push(missing.clone());
                }
                // A stand-in that was left out in its turn: nothing fits there.
                let first = DeValue::String("".into());
                if stand_ins.iter().any(|(k, _)| *k == missing)
                    || !insert(&mut node, &missing, stand_ins.len(), first.clone())
                {
                    return None;
                }
                stand_ins.push((missing, first));
                continue;
            }
            if let Some((key, tried)) = stand_ins.iter_mut().find(|(k, _)| at.starts_with(k)) {
                let next = next_stand_in(tried, e.message())?;
                *tried = next.clone();
                let key = key.clone();
                let n = stand_ins
                    .iter()
                    .position(|(k, _)| *k == key)
                    .unwrap_or_default();
                insert(&mut node, &key, n, next);
                continue;
            }
            problems.push(self.problem(&join(path, &at), human(e.message())));
            // Leave out the whole key the mistake is in (an array with one bad element too).
            let key = at.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
            let at = at[..=key].to_vec();
            if !remove(&mut node, &at) {
                return None;
            }
            left_out.push(at);
        }
        problems.push(self.problem(
            path,
            format!("more than {MAX_TRIES} mistakes; fix these first"),
        ));
        None
    }
}

/// Tries at one part of the file: each leaves out a key or tries a stand-in, so a part
/// needs this many only when it is more mistakes than content.
const MAX_TRIES: usize = 256;

/// Where the `n`th stand-in is: in no file (spans are byte ranges of the file), and not
/// where another stand-in is, so an error about one names it.
fn nowhere(n: usize) -> Range<usize> {
    let at = usize::MAX - n;
    at..at
}

/// The stand-in to try after `tried` did not fit: a name the message says is expected (an
/// enum's first variant), else the next type in a fixed order. `None`: nothing fits.
fn next_stand_in<'a>(tried: &DeValue<'a>, message: &str) -> Option<DeValue<'a>> {
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.split('`').nth(3)?;
        return Some(DeValue::String(expected.to_string().into()));
    }
    match tried {
        DeValue::String(_) => Some(DeValue::Integer(Default::default())),
        DeValue::Integer(_) => Some(DeValue::Boolean(false)),
        DeValue::Boolean(_) => Some(DeValue::Array(toml::de::DeArray::new())),
        DeValue::Array(_) => Some(DeValue::Table(DeTable::new())),
        _ => None,
    }
}

fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            out.push(Seg::Key(key.into()));
        }
        out.extend(pieces.filter_map(|i| i.trim_end_matches(']').parse().ok().map(Seg::Index)));
    }
    out
}

fn join(base: &str, segs: &[Seg]) -> String {
    let mut path = base.to_string();
    for seg in segs {
        match seg {
            Seg::Key(k) if path.is_empty() => path.push_str(k),
            Seg::Key(k) => write!(path, ".{k}").expect("a String takes writes"),
            Seg::Index(i) => write!(path, "[{i}]").expect("a String takes writes"),
        }
    }
    path
}

/// The child of `node` at `seg`, with the span to point at: a key's name, an element's value.
fn child<'n, 'a>(node: &'n Node<'a>, seg: &Seg) -> Option<(Range<usize>, &'n Node<'a>)> {
    match (node.get_ref(), seg) {
        (DeValue::Table(t), Seg::Key(k)) => t
            .get_key_value(k.as_str())
            .map(|(key, value)| (key.span(), value)),
        (DeValue::Array(a), Seg::Index(i)) => a.get(*i).map(|v| (v.span(), v)),
        _ => None,
    }
}

/// The path, below `node`, of the deepest key or element whose name or value holds `span`.
fn find(node: &Node<'_>, span: &Range<usize>) -> Option<Vec<Seg>> {
    let holds = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let children: Vec<(Seg, Range<usize>, &Node<'_>)> = match node.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| (Seg::Key(k.get_ref().to_string()), k.span(), v))
            .collect(),
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (Seg::Index(i), v.span(), v))
            .collect(),
        _ => return None,
    };
    children.into_iter().find_map(|(seg, name, value)| {
        if let Some(mut below) = find(value, span) {
            below.insert(0, seg);
            Some(below)
        } else if holds(name) || holds(value.span()) {
            Some(vec![seg])
        } else {
            None
        }
    })
}

/// Removes the key at `path` (which ends with a key) from `node`.
fn remove(node: &mut Node<'_>, path: &[Seg]) -> bool {
    match path.split_last() {
        Some((Seg::Key(key), parents)) => {
            table_mut(node, parents).is_some_and(|t| t.remove(key.as_str()).is_some())
        }
        _ => false,
    }
}

/// Sets the key at `path` (which ends with a key) in `node` to the `n`th stand-in, `value`.
fn insert<'a>(node: &mut Node<'a>, path: &[Seg], n: usize, value: DeValue<'a>) -> bool {
    let Some((Seg::Key(key), parents)) = path.split_last() else {
        return false;
    };
    let Some(table) = table_mut(node, parents) else {
        return false;
    };
    table.remove(key.as_str());
    let key = Spanned::new(nowhere(n), key.clone().into());
    table.insert(key, Spanned::new(nowhere(n), value));
    true
}

/// The table at `path` below `node`.
fn table_mut<'n, 'a>(node: &'n mut Node<'a>, path: &[Seg]) -> Option<&'n mut DeTable<'a>> {
    let mut node = node;
    for seg in path {
        node = match (node.get_mut(), seg) {
            (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str())?,
            (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match node.get_mut() {
        DeValue::Table(t) => Some(t),
        _ => None,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// `unknown key`, with the likeliest meant one, or the ones that exist when none is close.
pub(super) fn unknown(word: &str, known: &[&str], what: &str) -> String {
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .min()
        .filter(|(d, k)| *d <= 2.max(k.len() / 3));
    match closest {
        Some((_, k)) => format!("unknown {what} `{word}`; did you mean `{k}`?"),
        None if known.is_empty() => format!("unknown {what} `{word}`; this table takes none"),
        None => format!("unknown {what} `{word}` (known: {})", known.join(", ")),
    }
}

/// serde's message, in the words of the file's reader: TOML types, no Rust type names.
fn human(message: &str) -> String {
    let message = message.trim().replace('\n', " ");
    let quoted = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let words = quoted(rest);
        let known: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        return unknown(&words[0], &known, "key");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let words = quoted(rest);
        let known: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        return match unknown(&words[0], &known, "value") {
            m if m.contains("did you mean") => m,
            _ => format!("\"{}\" is not one of: {}", words[0], known.join(", ")),
        };
    }
    if message == "wanted string or table" {
        return "expected a string".into();
    }
    for (prefix, what) in [("invalid type: ", "type"), ("invalid value: ", "value")] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|r| r.split_once(", expected "))
        {
            let expected = expectation(expected);
            return match (what, found.strip_prefix("integer ")) {
                ("value", Some(n)) => format!(
                    "{} is out of range: expected {expected}",
                    n.trim_matches('`')
                ),
                _ => format!("expected {expected}, found {}", toml_type(found)),
            };
        }
    }
    message
}

/// What serde says it expected, in TOML words.
fn expectation(expected: &str) -> String {
    let number = |max: &str| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => number("255"),
        "u16" => number("65535"),
        "u32" => number("4294967295"),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "path string" | "a string" | "a borrowed string" => "a string".into(),
        "a duration" => "a duration such as \"500ms\", \"30s\" or \"7d\"".into(),
        "a sequence" => "an array".into(),
        e if e.starts_with("struct ") || e == "a map" => "a table".into(),
        e if e.starts_with("enum ") || e.starts_with("internally tagged enum") => {
            "one of its names, as a string".into()
        }
        e => e.trim_matches('`').into(),
    }
}

/// serde's name of what it found (`integer \`5\``, `string "x"`, `map`), in TOML words.
fn toml_type(found: &str) -> String {
    let value = |rest: &str| rest.trim_matches('`').to_string();
    if let Some(n) = found.strip_prefix("integer ") {
        format!("the number {}", value(n))
    } else if let Some(f) = found.strip_prefix("floating point ") {
        format!("the number {}", value(f))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        value(b)
    } else if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else {
        match found {
            "map" => "a table".into(),
            "sequence" => "an array".into(),
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        let segs = segments("device[2].baud");
        assert_eq!(
            segs,
            [
                Seg::Key("device".into()),
                Seg::Index(2),
                Seg::Key("baud".into())
            ]
        );
        assert_eq!(join("", &segs), "device[2].baud");
    }

    #[test]
    fn messages_have_no_rust_names() {
        assert_eq!(
            human("invalid type: string \"fast\", expected u32"),
            "expected a whole number from 0 to 4294967295, found the string \"fast\""
        );
        assert_eq!(
            human("invalid value: integer `300`, expected u8"),
            "300 is out of range: expected a whole number from 0 to 255"
        );
        assert_eq!(
            human("unknown field `buad`, expected one of `id`, `port`, `baud`"),
            "unknown key `buad`; did you mean `baud`?"
        );
        assert_eq!(
            human("unknown variant `semicolon`, expected one of `cr`, `lf`, `crlf`"),
            "\"semicolon\" is not one of: cr, lf, crlf"
        );
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(position("a\nbé = 1", 6), (2, 4));
        assert_eq!(position("x", 0), (1, 1));
    }
}
