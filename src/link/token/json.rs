//! JSON objects whose member names are unique, at every depth.
//!
//! RFC 7515 §5.2 and RFC 7519 §4 let a JWT parser either reject duplicate member names or keep
//! the lexically last one. serde_json (like most parsers) keeps the last one silently, so
//! `{"sub":"alice","sub":"bob"}` would be bob here while a parser that keeps the first (HQ's,
//! the app's, a log viewer's) reads alice: one signature, two users. The gateway therefore
//! rejects: a header or claims set with a duplicate name anywhere is `malformed`. Names are
//! compared after unescaping, so `"s\u0075b"` is a second `sub`.
//!
//! serde_json's own `Value` cannot be told to refuse, hence this small visitor that builds the
//! same `Value` and errors on a second insert. serde_json's nesting limit (128) still applies:
//! it is enforced by the deserializer, not by the visitor.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The object `bytes` hold, or `None` if they are not exactly one JSON object with unique
/// member names at every depth.
pub(super) fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Unique>(bytes) {
        Ok(Unique(Value::Object(map))) => Some(map),
        _ => None,
    }
}

/// A JSON value read with [`UniqueVisitor`].
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON with unique member names")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Unique, E> {
        // JSON text has no NaN or infinity, so the conversion cannot fail on parsed input.
        Number::from_f64(v)
            .map(|n| Unique(Value::Number(n)))
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_owned())))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }

    fn visit_unit<E: Error>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Unique(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Unique, A::Error> {
        let mut map = Map::new();
        while let Some(name) = members.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(A::Error::custom(format_args!("duplicate member {name:?}")));
            }
            let Unique(value) = members.next_value()?;
            map.insert(name, value);
        }
        Ok(Unique(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_serde_json_reads_when_names_are_unique() {
        let text =
            r#"{"a":1,"b":[true,null,-2,3.5,"x"],"c":{"d":{"e":"f"}},"g":18446744073709551615}"#;
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(Value::Object(parse_object(text.as_bytes()).unwrap()), want);
    }

    #[test]
    fn refuses_a_duplicate_at_any_depth_and_anything_but_one_object() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":[{"b":1,"b":2}]}"#,
            r#"{"x":{"y":{"z":1,"z":1}}}"#,
            r#"[1]"#,
            r#""s""#,
            r#"{"a":1} {}"#,
            r#"{"a":1"#,
        ] {
            assert_eq!(parse_object(text.as_bytes()), None, "{text}");
        }
        assert_eq!(
            parse_object(br#"{"a":{"b":1},"c":{"b":2}}"#).map(Value::Object),
            Some(json!({"a":{"b":1},"c":{"b":2}})),
            "the same name in different objects is fine"
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_object(deep.as_bytes()), None);
    }
}
