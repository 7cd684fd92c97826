//! A serde `Deserializer` over the positioned node tree of [`crate::yaml`].
//!
//! It tracks the field path while descending, so every error a derived `Deserialize` impl raises
//! (type mismatch, unknown field, missing field, bad value) comes back with the exact path and
//! the line/column of the offending key or value. Scalars are typed by what the target asks for:
//! a `String` field takes any scalar's text, an integer field takes a plain integer literal
//! (decimal, `0x` hex, `0o` octal), a `bool` field takes `true`/`false`.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::fmt;

use crate::path::FieldPath;
use crate::yaml::{is_null_text, Entry, Node, Pos, Value};

/// A deserialization error; path and position are filled in by the innermost node that sees it.
#[derive(Debug)]
pub(crate) struct DeError {
    pub message: String,
    pub path: Option<FieldPath>,
    pub pos: Option<Pos>,
    /// Set for "missing field" errors: the path gets this field appended.
    missing: Option<&'static str>,
}

impl DeError {
    fn new(message: String) -> Self {
        DeError {
            message,
            path: None,
            pos: None,
            missing: None,
        }
    }

    fn locate(mut self, path: &FieldPath, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.path = Some(match self.missing {
                Some(field) => path.key(field),
                None => path.clone(),
            });
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

fn one_of(names: &[&str]) -> String {
    if names.is_empty() {
        return "none are allowed here".to_owned();
    }
    let v: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("expected one of {}", v.join(", "))
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(format!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(format!(
            "invalid value {}, expected {exp}",
            describe_unexpected(&unexp)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(format!("unknown value `{variant}` ({})", one_of(expected)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(format!("unknown field `{field}` ({})", one_of(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = DeError::new(format!("missing required field `{field}`"));
        e.missing = Some(field);
        e
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(format!("field `{field}` is given twice"))
    }
}

fn describe_unexpected(u: &de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match u {
        U::Bool(b) => format!("`{b}`"),
        U::Unsigned(n) => format!("integer {n}"),
        U::Signed(n) => format!("integer {n}"),
        U::Float(x) => format!("number {x}"),
        U::Str(s) => format!("string {s:?}"),
        U::Unit => "nothing (null)".to_owned(),
        U::Seq => "a list".to_owned(),
        U::Map => "a mapping".to_owned(),
        other => other.to_string(),
    }
}

/// Describes a node for "expected X, found Y" messages.
fn describe(node: &Node) -> String {
    match &node.value {
        Value::Seq(_) => "a list".to_owned(),
        Value::Map(_) => "a mapping".to_owned(),
        Value::Scalar { text, quoted: true } => format!("string {text:?}"),
        Value::Scalar {
            text,
            quoted: false,
        } => match resolve(text) {
            Plain::Null => "nothing (null)".to_owned(),
            Plain::Bool(b) => format!("`{b}`"),
            Plain::Int(n) => format!("integer {n}"),
            Plain::Float(_) => format!("number {text}"),
            Plain::Str => format!("string {text:?}"),
        },
    }
}

/// The YAML 1.2 core-schema reading of a plain scalar.
enum Plain {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

fn parse_int(text: &str) -> Option<i128> {
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = body.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = body.strip_prefix("0o") {
        (8, o)
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Hex and octal literals are unsigned in the core schema.
    if radix != 10 && text.len() != body.len() {
        return None;
    }
    let n = i128::from_str_radix(digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

fn parse_float(text: &str) -> Option<f64> {
    let body = text.trim_start_matches(['-', '+']);
    match body {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if text.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        ".nan" | ".NaN" | ".NAN" if body.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    let ok = !body.is_empty()
        && body.chars().any(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    if ok {
        text.parse().ok()
    } else {
        None
    }
}

fn resolve(text: &str) -> Plain {
    if is_null_text(text) {
        return Plain::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Plain::Int(n);
    }
    if let Some(x) = parse_float(text) {
        return Plain::Float(x);
    }
    Plain::Str
}

/// Deserializes one node; `path` is where it sits in the document.
pub(crate) struct NodeDe<'a> {
    pub node: &'a Node,
    pub path: FieldPath,
}

impl<'a> NodeDe<'a> {
    fn err(&self, message: String) -> DeError {
        DeError::new(message).locate(&self.path, self.node.pos)
    }

    fn expected(&self, what: &str) -> DeError {
        self.err(format!("expected {what}, found {}", describe(self.node)))
    }

    fn fix<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.locate(&self.path, self.node.pos))
    }

    fn plain(&self) -> Option<Plain> {
        match &self.node.value {
            Value::Scalar {
                text,
                quoted: false,
            } => Some(resolve(text)),
            _ => None,
        }
    }

    fn int(&self) -> Result<i128, DeError> {
        match self.plain() {
            Some(Plain::Int(n)) => Ok(n),
            _ => Err(self.expected("an integer")),
        }
    }

    fn visit_map<V: Visitor<'a>>(&self, entries: &'a [Entry], v: V) -> Result<V::Value, DeError> {
        let r = v.visit_map(MapDe {
            entries: entries.iter(),
            value: None,
            path: self.path.clone(),
        });
        self.fix(r)
    }

    fn visit_seq<V: Visitor<'a>>(&self, items: &'a [Node], v: V) -> Result<V::Value, DeError> {
        let r = v.visit_seq(SeqDe {
            items: items.iter().enumerate(),
            path: self.path.clone(),
        });
        self.fix(r)
    }
}

macro_rules! de_int {
    ($($method:ident $ty:ty => $visit:ident as $wide:ty;)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n = self.int()?;
            match <$ty>::try_from(n) {
                Ok(x) => {
                    let r = v.$visit(x as $wide);
                    self.fix(r)
                }
                Err(_) => Err(self.err(format!(
                    "integer {n} is out of range ({}..={})",
                    <$ty>::MIN,
                    <$ty>::MAX
                ))),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Map(entries) => return self.visit_map(entries, v),
            Value::Seq(items) => return self.visit_seq(items, v),
            Value::Scalar { text, quoted: true } => v.visit_str(text),
            Value::Scalar {
                text,
                quoted: false,
            } => match resolve(text) {
                Plain::Null => v.visit_unit(),
                Plain::Bool(b) => v.visit_bool(b),
                Plain::Int(n) => match (u64::try_from(n), i64::try_from(n)) {
                    (Ok(u), _) => v.visit_u64(u),
                    (_, Ok(i)) => v.visit_i64(i),
                    _ => v.visit_i128(n),
                },
                Plain::Float(x) => v.visit_f64(x),
                Plain::Str => v.visit_str(text),
            },
        };
        self.fix(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.plain() {
            Some(Plain::Bool(b)) => {
                let r = v.visit_bool(b);
                self.fix(r)
            }
            _ => Err(self.expected("`true` or `false`")),
        }
    }

    de_int! {
        deserialize_u8 u8 => visit_u64 as u64;
        deserialize_u16 u16 => visit_u64 as u64;
        deserialize_u32 u32 => visit_u64 as u64;
        deserialize_u64 u64 => visit_u64 as u64;
        deserialize_i8 i8 => visit_i64 as i64;
        deserialize_i16 i16 => visit_i64 as i64;
        deserialize_i32 i32 => visit_i64 as i64;
        deserialize_i64 i64 => visit_i64 as i64;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let x = match self.plain() {
            Some(Plain::Float(x)) => x,
            Some(Plain::Int(n)) => n as f64,
            _ => return Err(self.expected("a number")),
        };
        let r = v.visit_f64(x);
        self.fix(r)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => {
                let r = v.visit_str(text);
                self.fix(r)
            }
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            let r = v.visit_none();
            self.fix(r)
        } else {
            let (pos, path) = (self.node.pos, self.path.clone());
            v.visit_some(self)
                .map_err(|e: DeError| e.locate(&path, pos))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            let r = v.visit_unit();
            self.fix(r)
        } else {
            Err(self.expected("nothing (null)"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        let (pos, path) = (self.node.pos, self.path.clone());
        v.visit_newtype_struct(self)
            .map_err(|e: DeError| e.locate(&path, pos))
    }

    /// A list; an empty (null) value counts as an empty list.
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => self.visit_seq(items, v),
            _ if self.node.is_null() => self.visit_seq(&[], v),
            _ => Err(self.expected("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    /// A mapping; an empty (null) value counts as an empty mapping, so `discovery:` alone
    /// means "all defaults".
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => self.visit_map(entries, v),
            _ if self.node.is_null() => self.visit_map(&[], v),
            _ => Err(self.expected("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    /// Only unit variants, written as a plain string (`header_digest: required`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => {
                let r = v.visit_enum(text.as_str().into_deserializer());
                self.fix(r)
            }
            _ => Err(self.expected(&one_of(variants).replacen("expected ", "", 1))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = v.visit_unit();
        self.fix(r)
    }
}

/// Deserializes a mapping key (always a string) at its own position.
struct KeyDe<'a> {
    key: &'a str,
    path: FieldPath,
    pos: Pos,
}

impl<'de> de::Deserializer<'de> for KeyDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_borrowed_str(self.key)
            .map_err(|e: DeError| e.locate(&self.path, self.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, Entry>,
    value: Option<&'a Entry>,
    path: FieldPath,
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        seed.deserialize(KeyDe {
            key: &entry.key,
            path: self.path.key(&entry.key),
            pos: entry.key_pos,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(DeError::new(
                "internal error: value requested before key".to_owned(),
            ));
        };
        seed.deserialize(NodeDe {
            node: &entry.value,
            path: self.path.key(&entry.key),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: FieldPath,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => seed
                .deserialize(NodeDe {
                    node,
                    path: self.path.index(i),
                })
                .map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalar_resolution() {
        assert!(matches!(resolve("~"), Plain::Null));
        assert!(matches!(resolve("True"), Plain::Bool(true)));
        assert!(matches!(resolve("yes"), Plain::Str));
        assert!(matches!(resolve("0x10"), Plain::Int(16)));
        assert!(matches!(resolve("0o17"), Plain::Int(15)));
        assert!(matches!(resolve("-5"), Plain::Int(-5)));
        assert!(matches!(resolve("0001"), Plain::Int(1)));
        assert!(matches!(resolve("-0x10"), Plain::Str));
        assert!(matches!(resolve("1.5"), Plain::Float(_)));
        assert!(matches!(resolve("1e3"), Plain::Float(_)));
        assert!(matches!(resolve("4KiB"), Plain::Str));
        assert!(matches!(resolve("127.0.0.1"), Plain::Str));
        assert!(matches!(resolve("::1"), Plain::Str));
        assert!(matches!(resolve("-"), Plain::Str));
    }
}
