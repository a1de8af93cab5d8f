//! Making remote text storable: PostgreSQL rejects NUL in `text` (and `\u0000` in `jsonb`)
//! and any invalid UTF-8, so text that came from outside (response bodies, error texts, rows)
//! passes through here before it is written. A NUL becomes U+FFFD, the character lossy UTF-8
//! decoding already puts in place of bytes that are not UTF-8, so the text keeps its length
//! in characters and nothing else changes.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What a NUL byte becomes.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `s` with every NUL replaced by U+FFFD; borrowed when there is none (the common case).
pub fn storable(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Bytes of unknown encoding as storable text: invalid UTF-8 sequences and NULs become U+FFFD.
pub fn storable_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => storable(s),
        Cow::Owned(s) => Cow::Owned(storable_owned(s)),
    }
}

/// Like [`storable`], reusing the string when it holds no NUL.
pub fn storable_owned(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// Whether a JSON value holds a NUL in any string or object key (what `jsonb` rejects).
pub fn json_has_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if s.contains('\0') {
                    return true;
                }
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('\0') {
                        return true;
                    }
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    false
}

/// Replaces NUL with U+FFFD in every string and object key of `value`, in place; returns
/// whether anything changed. Iterative, so no nesting depth can overflow the stack. A key
/// whose replacement collides with an existing key gets further U+FFFD appended until it is
/// unique, so no member is lost.
pub fn make_json_storable(value: &mut Value) -> bool {
    if !json_has_nul(value) {
        return false;
    }
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if s.contains('\0') {
                    *s = s.replace('\0', "\u{FFFD}");
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    rekey(map);
                }
                stack.extend(map.values_mut());
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    true
}

/// `value` made storable (see [`make_json_storable`]).
#[must_use]
pub fn storable_json(mut value: Value) -> Value {
    make_json_storable(&mut value);
    value
}

fn rekey(map: &mut Map<String, Value>) {
    let bad: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
    for key in bad {
        let Some(v) = map.remove(&key) else { continue };
        let mut fixed = key.replace('\0', "\u{FFFD}");
        while map.contains_key(&fixed) {
            fixed.push(NUL_REPLACEMENT);
        }
        map.insert(fixed, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_cases() {
        let cases: [(&str, &str); 5] = [
            ("", ""),
            ("plain", "plain"),
            ("\0", "\u{FFFD}"),
            ("a\0b\0\0c", "a\u{FFFD}b\u{FFFD}\u{FFFD}c"),
            ("é\0ü", "é\u{FFFD}ü"),
        ];
        for (input, want) in cases {
            assert_eq!(storable(input), want, "{input:?}");
            assert_eq!(storable_owned(input.to_owned()), want, "{input:?}");
            assert_eq!(storable_bytes(input.as_bytes()), want, "{input:?}");
        }
        assert!(matches!(storable("no nul"), Cow::Borrowed(_)));
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        assert_eq!(
            storable_bytes(b"ok \xff\xfe\0 end"),
            "ok \u{FFFD}\u{FFFD}\u{FFFD} end"
        );
        assert_eq!(
            storable_bytes(b"\xe2\x82"),
            "\u{FFFD}",
            "a truncated sequence"
        );
    }

    #[test]
    fn json_strings_and_keys_anywhere() {
        let mut v = json!({
            "a\0": ["x\0", 1, null, {"deep\0": {"k": "v\0"}}],
            "clean": "yes",
            "n": 1.5,
        });
        assert!(json_has_nul(&v));
        assert!(make_json_storable(&mut v));
        assert!(!json_has_nul(&v));
        assert_eq!(
            v,
            json!({
                "a\u{FFFD}": ["x\u{FFFD}", 1, null, {"deep\u{FFFD}": {"k": "v\u{FFFD}"}}],
                "clean": "yes",
                "n": 1.5,
            })
        );
        assert!(!make_json_storable(&mut v), "already storable");
        assert_eq!(storable_json(json!("\0")), json!("\u{FFFD}"));
    }

    #[test]
    fn a_colliding_key_keeps_both_members() {
        let mut v = json!({"k\0": 1, "k\u{FFFD}": 2});
        make_json_storable(&mut v);
        let map = v.as_object().unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["k\u{FFFD}"], json!(2));
        assert_eq!(map["k\u{FFFD}\u{FFFD}"], json!(1));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut v = json!("\0");
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        assert!(make_json_storable(&mut v));
        assert!(!json_has_nul(&v));
        // Dropping a 100 000-deep value recurses in serde_json; unwind it by hand.
        let mut cur = v;
        while let Value::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Value::Null);
        }
        assert_eq!(cur, json!("\u{FFFD}"));
    }
}
