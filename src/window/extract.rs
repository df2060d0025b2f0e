//! Declared fields out of an event's `data` / `metadata` JSON, in one streaming pass (no
//! JSON tree): the one-pass scanner ([`crate::decode::scan`]) walks the object along a path
//! tree of the declared fields; where it declines (an escaped key, `-0`, …) serde's walk
//! decides. Both give the same values (tested on random objects).

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::decode::scan::{Declined, Scan, Scanner, Token};

/// A path tree over the declared fields: `data.a.b` and `data.c` share the `data` node.
#[derive(Debug, Default)]
pub(super) struct Node {
    pub children: Vec<(String, Node)>,
    slot: Option<usize>,
}

impl Node {
    pub fn insert(&mut self, path: &[String], slot: usize) {
        match path.split_first() {
            None => self.slot = Some(slot),
            Some((head, rest)) => {
                let i = match self.children.iter().position(|(k, _)| k == head) {
                    Some(i) => i,
                    None => {
                        self.children.push((head.clone(), Node::default()));
                        self.children.len() - 1
                    }
                };
                self.children[i].1.insert(rest, slot);
            }
        }
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// Sets every slot under this node to missing.
    fn clear(&self, out: &mut [Val<'_>]) {
        if let Some(s) = self.slot {
            out[s] = Val::Missing;
        }
        for (_, c) in &self.children {
            c.clear(out);
        }
    }
}

/// A scalar found at a field's path.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val<'a> {
    Missing,
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    Bool(bool),
}

/// Fills `out` from the JSON object `text` along the paths of `node`; bad JSON leaves
/// the slots missing (the decoder already accepted the event's envelope).
pub(super) fn extract<'a>(text: &'a str, node: &Node, out: &mut [Val<'a>]) {
    let mut sc = Scanner::new(text);
    if scan_walk(&mut sc, node, out).and_then(|_| sc.end()).is_ok() {
        return;
    }
    // The scanner declined (an escaped key, `-0`, …): serde's walk decides.
    node.clear(out);
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Walk { node, out }.deserialize(&mut de);
}

/// [`Walk`] on the one-pass scanner.
fn scan_walk<'a>(sc: &mut Scanner<'a>, node: &Node, out: &mut [Val<'a>]) -> Scan<()> {
    if sc.peek()? != b'{' {
        return sc.skip();
    }
    sc.object(|sc, key| match node.child(key) {
        Some(child) if child.children.is_empty() => {
            let v = scalar(sc.token()?)?;
            if let Some(slot) = child.slot {
                out[slot] = v;
            }
            Ok(())
        }
        Some(child) => {
            if let Some(slot) = child.slot {
                out[slot] = Val::Missing;
            }
            scan_walk(sc, child, out)
        }
        None => sc.skip(),
    })
}

/// A token as [`Scalar`] reads it. Integers as serde_json types them (i64, else f64 for
/// larger unsigned ones); decimals with Rust's correctly rounded parser.
fn scalar(t: Token<'_>) -> Scan<Val<'_>> {
    Ok(match t {
        Token::Str { .. } => Val::Str(t.string().ok_or(Declined)?),
        Token::Bool(b) => Val::Bool(b),
        Token::Null | Token::Nested => Val::Missing,
        Token::Num(n) if n.bytes().all(|c| c.is_ascii_digit()) => {
            let v: u64 = n.parse().map_err(|_| Declined)?;
            i64::try_from(v).map_or(Val::F64(v as f64), Val::I64)
        }
        Token::Num(n) if n.starts_with('-') && n[1..].bytes().all(|c| c.is_ascii_digit()) => match n.parse::<i64>() {
            Ok(v) if v != 0 => Val::I64(v),
            _ => return Err(Declined),
        },
        Token::Num(n) => Val::F64(n.parse().map_err(|_| Declined)?),
    })
}

struct Walk<'n, 'o, 'a> {
    node: &'n Node,
    out: &'o mut [Val<'a>],
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Walk<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Walk<'_, '_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.node.child(&key) {
                Some(child) if child.children.is_empty() => {
                    let v = map.next_value_seed(Scalar)?;
                    if let Some(slot) = child.slot {
                        self.out[slot] = v;
                    }
                }
                Some(child) => {
                    if let Some(slot) = child.slot {
                        // Both a leaf and a prefix: the leaf is an object here, not a scalar.
                        self.out[slot] = Val::Missing;
                    }
                    map.next_value_seed(Walk { node: child, out: &mut *self.out })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    // Anything other than an object at a prefix: nothing to extract below it.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

struct Scalar;

impl<'de> DeserializeSeed<'de> for Scalar {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::F64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(i64::try_from(v).map_or(Val::F64(v as f64), Val::I64))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Missing)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Missing)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(paths: &[&str]) -> Node {
        let mut n = Node::default();
        for (i, p) in paths.iter().enumerate() {
            let parts: Vec<String> = p.split('.').map(str::to_string).collect();
            n.insert(&parts, i);
        }
        n
    }

    #[test]
    fn extracts_nested_paths_in_one_pass() {
        let n = node(&["amount", "customer.id", "tags", "flag"]);
        let mut out = vec![Val::Missing; 4];
        extract(
            r#"{"x":[1,{"a":2}],"amount":12.5,"customer":{"id":"c\"1","n":{"deep":1}},"tags":["a"],"flag":true}"#,
            &n,
            &mut out,
        );
        assert_eq!(out[0], Val::F64(12.5));
        assert_eq!(out[1], Val::Str(Cow::Owned("c\"1".into())));
        assert_eq!(out[2], Val::Missing, "arrays are not scalars");
        assert_eq!(out[3], Val::Bool(true));
    }

    /// Random objects (nested paths, every scalar type, escapes, duplicates): the scanner's
    /// walk gives serde's values wherever it does not decline, and declines rarely.
    #[test]
    fn scanner_walk_agrees_with_serde() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let n = node(&["amount", "customer_id", "c.id", "c.n.deep", "flag", "qty"]);
        let keys = ["amount", "customer_id", "c", "id", "n", "deep", "flag", "qty", "other", r"x\u0041"];
        let scalars = [
            "12.5",
            "-3",
            "0",
            "-0",
            "1e3",
            "18446744073709551615",
            "9223372036854775808",
            "-9223372036854775809",
            r#""s""#,
            r#""e\\s\"c\u00e9""#,
            "true",
            "false",
            "null",
            r#"[1,{"a":2}]"#,
            "{}",
            "0.1",
            "123456789.123456789",
            r#""""#,
        ];
        fn object(rng: &mut rand::rngs::SmallRng, keys: &[&str], scalars: &[&str], depth: u32) -> String {
            let mut out = String::from("{");
            for i in 0..rng.random_range(0..6) {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{}\":", keys[rng.random_range(0..keys.len())]));
                if depth < 3 && rng.random_bool(0.3) {
                    out.push_str(&object(rng, keys, scalars, depth + 1));
                } else {
                    out.push_str(scalars[rng.random_range(0..scalars.len())]);
                }
            }
            out.push('}');
            out
        }
        let (mut fast, total) = (0, 3000);
        for _ in 0..total {
            let text = object(&mut rng, &keys, &scalars, 0);
            let mut slow = vec![Val::Missing; 6];
            let _ = Walk { node: &n, out: &mut slow }.deserialize(&mut serde_json::Deserializer::from_str(&text));
            let mut quick = vec![Val::Missing; 6];
            let mut sc = Scanner::new(&text);
            if scan_walk(&mut sc, &n, &mut quick).and_then(|_| sc.end()).is_ok() {
                fast += 1;
                assert_eq!(quick, slow, "{text}");
            }
            let mut both = vec![Val::Missing; 6];
            extract(&text, &n, &mut both);
            assert_eq!(both, slow, "{text}");
        }
        assert!(fast * 2 > total, "the scanner took only {fast} of {total}");
    }

    #[test]
    fn malformed_json_leaves_missing_values() {
        let n = node(&["amount"]);
        let mut out = vec![Val::Missing; 1];
        extract("{\"amount\":", &n, &mut out);
        assert_eq!(out[0], Val::Missing);
        extract("[1,2]", &n, &mut out);
        assert_eq!(out[0], Val::Missing);
    }
}
