//! A YAML node tree that remembers where every key and value came from.
//!
//! The text is read with serde-saphyr's own YAML parser (`serde_saphyr::granit_parser`, re-exported by
//! serde-saphyr, so both always agree) as a stream of events with source spans. We keep each
//! scalar's original text and whether it was quoted, so types are decided by the field that
//! receives the value (`serial: 0001` stays the string `"0001"`, `port: 4420` is an integer), and
//! every node keeps its 1-based line and column for error messages.
//!
//! Supported beyond plain YAML: anchors and aliases (`&a` / `*a`), merge keys (`<<: *a`, explicit
//! keys win), the core `!!str` tag. Rejected with a message: several documents in one file,
//! non-scalar mapping keys, duplicate keys, custom tags.

use serde_saphyr::granit_parser::{Event, Marker, Options, Parser, ScalarStyle, Tag};
use std::collections::HashMap;

use crate::path::{FieldPath, Seg};

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `quoted` is true for quoted and block scalars and `!!str`: they are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A problem found while reading the YAML text itself.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub path: FieldPath,
    pub message: String,
}

/// Upper bound on nodes after alias expansion: a config is small, an "alias bomb" is not.
const MAX_NODES: usize = 200_000;

impl Node {
    /// An empty mapping (what an empty document means).
    pub(crate) fn empty_map(pos: Pos) -> Node {
        Node {
            pos,
            value: Value::Map(Vec::new()),
        }
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Scalar { .. } => 0,
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|e| e.value.size()).sum(),
        }
    }

    /// Whether this is a plain `~`, `null` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if is_null_text(text))
    }

    /// The node at `path`, if every step of it exists.
    pub(crate) fn get(&self, path: &FieldPath) -> Option<&Node> {
        self.walk(path)
            .filter(|(_, rest)| rest.is_empty())
            .map(|(n, _)| n)
    }

    /// Position of the key that ends `path` (for `Seg::Key` paths), or of the value.
    /// Where the path does not exist (a defaulted field), the nearest existing ancestor.
    pub(crate) fn locate(&self, path: &FieldPath, at_key: bool) -> Pos {
        let segs = path.segments();
        if at_key {
            if let Some((Seg::Key(last), parent)) = segs.split_last() {
                let parent_path = FieldPath::from_segments(parent);
                if let Some(Node {
                    value: Value::Map(entries),
                    ..
                }) = self.get(&parent_path)
                {
                    if let Some(e) = entries.iter().find(|e| &e.key == last) {
                        return e.key_pos;
                    }
                }
            }
        }
        match self.walk(path) {
            Some((node, _)) => node.pos,
            None => self.pos,
        }
    }

    /// Follows `path` as far as it exists; returns the deepest node and the unmatched rest.
    fn walk<'a, 'p>(&'a self, path: &'p FieldPath) -> Option<(&'a Node, &'p [Seg])> {
        let mut node = self;
        let segs = path.segments();
        for (i, seg) in segs.iter().enumerate() {
            let next = match (seg, &node.value) {
                (Seg::Key(k), Value::Map(entries)) => {
                    entries.iter().find(|e| &e.key == k).map(|e| &e.value)
                }
                (Seg::Index(n), Value::Seq(items)) => items.get(*n),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return Some((node, &segs[i..])),
            }
        }
        Some((node, &[]))
    }
}

impl FieldPath {
    pub(crate) fn from_segments(segs: &[Seg]) -> FieldPath {
        let mut p = FieldPath::root();
        for s in segs {
            p.push(s.clone());
        }
        p
    }
}

/// YAML 1.2 core schema null spellings (for plain scalars).
pub(crate) fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A container being filled while events arrive.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        /// The key read, waiting for its value: text, position, and whether it is a merge key.
        key: Option<(String, Pos, bool)>,
        /// Values of `<<` merge keys, applied when the mapping ends.
        merges: Vec<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
}

impl Builder {
    /// The path of the place the next node goes to. With `slot` false, the innermost list's
    /// next index is left out (for syntax errors, which may lie between items).
    fn path_at(&self, slot: bool) -> FieldPath {
        let mut p = FieldPath::root();
        let last = self.stack.len().saturating_sub(1);
        for (i, f) in self.stack.iter().enumerate() {
            match f {
                Frame::Seq { items, .. } => {
                    if slot || i != last {
                        p.push(Seg::Index(items.len()));
                    }
                }
                Frame::Map { key, .. } => {
                    if let Some((k, _, _)) = key {
                        p.push(Seg::Key(k.clone()));
                    }
                }
            }
        }
        p
    }

    fn error(&self, pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos,
            path: self.path_at(true),
            message: message.into(),
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.error(
                pos,
                format!("document too large (more than {MAX_NODES} values after alias expansion)"),
            ));
        }
        Ok(())
    }

    /// A complete node arrived: store it as anchor target if anchored, then place it.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.place(node)
    }

    fn place(&mut self, node: Node) -> Result<(), SyntaxError> {
        let err_key = |b: &Builder, node: &Node| {
            b.error(
                node.pos,
                "mapping keys must be plain strings, not lists or mappings",
            )
        };
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    return Err(self.error(node.pos, "unexpected second root value"));
                }
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let Value::Scalar { text, quoted } = node.value else {
                        return Err(err_key(self, &node));
                    };
                    let is_merge = !quoted && text == "<<";
                    if !is_merge {
                        if let Some(first) = entries.iter().find(|e| e.key == text) {
                            let first = first.key_pos;
                            let mut e = self.error(
                                node.pos,
                                format!(
                                    "duplicate key `{text}` (first given at line {}, column {})",
                                    first.line, first.column
                                ),
                            );
                            e.path = e.path.key(&text);
                            return Err(e);
                        }
                    }
                    *key = Some((text, node.pos, is_merge));
                }
                Some((k, key_pos, true)) => {
                    let ok = match &node.value {
                        Value::Map(_) => true,
                        Value::Seq(items) => items.iter().all(|n| matches!(n.value, Value::Map(_))),
                        Value::Scalar { .. } => false,
                    };
                    if !ok {
                        *key = Some((k, key_pos, true));
                        return Err(self.error(
                            node.pos,
                            "a merge key `<<` needs a mapping or a list of mappings",
                        ));
                    }
                    merges.push(node);
                }
                Some((k, key_pos, false)) => entries.push(Entry {
                    key: k,
                    key_pos,
                    value: node,
                }),
            },
        }
        Ok(())
    }

    fn end_map(&mut self) -> Result<(), SyntaxError> {
        let Some(Frame::Map {
            pos,
            anchor,
            mut entries,
            merges,
            ..
        }) = self.stack.pop()
        else {
            return Err(self.error(Pos::START, "internal error: unbalanced mapping end"));
        };
        // Explicit keys win over merged ones; among merges the first source wins.
        for m in merges {
            let sources = match m.value {
                Value::Map(es) => vec![es],
                Value::Seq(items) => items
                    .into_iter()
                    .filter_map(|n| match n.value {
                        Value::Map(es) => Some(es),
                        _ => None,
                    })
                    .collect(),
                Value::Scalar { .. } => Vec::new(),
            };
            for es in sources {
                for e in es {
                    if !entries.iter().any(|x| x.key == e.key) {
                        entries.push(e);
                    }
                }
            }
        }
        self.finish(
            Node {
                pos,
                value: Value::Map(entries),
            },
            anchor,
        )
    }

    fn end_seq(&mut self) -> Result<(), SyntaxError> {
        let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() else {
            return Err(self.error(Pos::START, "internal error: unbalanced sequence end"));
        };
        self.finish(
            Node {
                pos,
                value: Value::Seq(items),
            },
            anchor,
        )
    }

    /// Tags: `!!str` makes a scalar a string; other core-schema tags are accepted and change
    /// nothing; anything else is an error.
    fn check_tag(&self, tag: Option<&Tag>, pos: Pos) -> Result<bool, SyntaxError> {
        match tag {
            None => Ok(false),
            Some(t) if t.is_yaml_core_schema_tag("str") => Ok(true),
            Some(t) if t.is_yaml_core_schema() => Ok(false),
            Some(t) => Err(self.error(
                pos,
                format!("YAML tag `{}` is not supported here", t.original()),
            )),
        }
    }
}

/// Parses `text` into a node tree. An empty document is an empty mapping.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut options = Options::default();
    options.set_emit_comments(false);
    let parser = Parser::new_from_str_with_options(text, options);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        nodes: 0,
    };
    let mut documents = 0usize;
    for item in parser {
        let (event, span) = match item {
            Ok(x) => x,
            Err(e) => {
                let pos = Pos::from_marker(e.marker());
                let info = e.info();
                let message = if info.is_empty() {
                    "YAML syntax error".to_owned()
                } else {
                    format!("YAML syntax error: {info}")
                };
                return Err(SyntaxError {
                    pos,
                    path: b.path_at(false),
                    message,
                });
            }
        };
        let pos = Pos::from_marker(&span.start);
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        path: FieldPath::root(),
                        message:
                            "only one YAML document per file is supported (found a second `---`)"
                                .to_owned(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, pos)?;
                let tagged_str = b.check_tag(tag.as_deref(), pos)?;
                let quoted = tagged_str || !matches!(style, ScalarStyle::Plain);
                b.finish(
                    Node {
                        pos,
                        value: Value::Scalar {
                            text: text.into_owned(),
                            quoted,
                        },
                    },
                    anchor,
                )?;
            }
            Event::SequenceStart(_, anchor, tag) => {
                b.count(1, pos)?;
                b.check_tag(tag.as_deref(), pos)?;
                b.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(_, anchor, tag) => {
                b.count(1, pos)?;
                b.check_tag(tag.as_deref(), pos)?;
                b.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd => b.end_seq()?,
            Event::MappingEnd => b.end_map()?,
            Event::Alias(id) => {
                let Some(node) = b.anchors.get(&id).cloned() else {
                    return Err(b.error(pos, "alias refers to an unknown anchor"));
                };
                b.count(node.size(), pos)?;
                b.place(node)?;
            }
            Event::UnresolvedAlias(name) => {
                return Err(b.error(pos, format!("alias `*{name}` refers to an unknown anchor")));
            }
            _ => {}
        }
    }
    Ok(b.root.unwrap_or_else(|| Node::empty_map(Pos::START)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> (&str, bool) {
        match &n.value {
            Value::Scalar { text, quoted } => (text, *quoted),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn positions_and_styles() {
        let root = parse("a:\n  b: [1, \"x\"]\n  c: 0001\n").unwrap();
        let b = root.get(&FieldPath::root().key("a").key("b")).unwrap();
        assert_eq!(b.pos, Pos { line: 2, column: 6 });
        let x = root
            .get(&FieldPath::root().key("a").key("b").index(1))
            .unwrap();
        assert_eq!(scalar(x), ("x", true));
        assert_eq!(
            x.pos,
            Pos {
                line: 2,
                column: 10
            }
        );
        let c = root.get(&FieldPath::root().key("a").key("c")).unwrap();
        assert_eq!(scalar(c), ("0001", false));
        assert_eq!(
            root.locate(&FieldPath::root().key("a").key("c"), true),
            Pos { line: 3, column: 3 }
        );
        // A missing field locates at its nearest existing ancestor.
        assert_eq!(
            root.locate(&FieldPath::root().key("a").key("zz"), false),
            Pos { line: 2, column: 3 }
        );
    }

    #[test]
    fn anchors_and_merges() {
        let root = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").unwrap();
        let m = root.get(&FieldPath::root().key("m")).unwrap();
        let Value::Map(entries) = &m.value else {
            panic!()
        };
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["y", "x"]);
        assert_eq!(scalar(&entries[0].value), ("3", false));
    }

    #[test]
    fn empty_document_is_empty_map() {
        for t in ["", "# only a comment\n", "---\n"] {
            let root = parse(t).unwrap();
            assert!(
                matches!(&root.value, Value::Map(e) if e.is_empty()) || root.is_null(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn errors() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, column: 1 });
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("one YAML document"), "{}", e.message);
        let e = parse("a:\n  b: [1, 2\n").unwrap_err();
        assert!(e.message.starts_with("YAML syntax error"), "{}", e.message);
        let e = parse("a: !custom 3\n").unwrap_err();
        assert!(e.message.contains("tag"), "{}", e.message);
        let e = parse("a: &x [*x]\n").unwrap_err();
        assert!(e.message.contains("unknown anchor"), "{}", e.message);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut t = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            t.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&t).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
    }
}
