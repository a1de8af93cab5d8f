//! Rendering a row's text values as the JSON the trigger's `to_jsonb` gives, in the relay, for
//! the types where that needs no server: the relay then writes the row image as it is, without
//! asking the server to read the values into the table's row type and back (which costs the
//! server a few microseconds per row, the most expensive part of a relay write after the insert).
//!
//! `to_jsonb` puts a value in one of a few categories, by its type: booleans become `true` and
//! `false`; integers, floats and `numeric` become numbers when their text is a JSON number (else
//! a string, as `NaN` and `Infinity`); `json` and `jsonb` are nested as JSON; `date`,
//! `timestamp` and `timestamptz` are written in ISO 8601 (`2026-12-03T10:11:12+00:00`); every
//! other type becomes its text output as a string. The text a type prints can depend on the
//! session (`DateStyle`, `TimeZone`, `extra_float_digits`), so the relay pins those settings on
//! the replication connection to the values its own sessions use (see [`session_options`]).
//!
//! Only built-in types whose rendering is settled by those settings are rendered here; a table
//! with a column of any other type (arrays, composites, enums, domains, intervals, `bytea`, or
//! a type with a cast to `json`) keeps the server's conversion, as does a table with columns the
//! stream does not send (generated columns).

use super::pgoutput::{Relation, Value};

/// How one column's text value becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    Bool,
    /// A JSON number when the text is one, else a string.
    Number,
    /// `json`: nested as JSON (checked: text that is not JSON stays a string), unless jsonb
    /// cannot hold it (see [`fits_jsonb`]): then it is kept as a string of its text.
    Json,
    /// `jsonb`: nested as JSON (checked as `json`; jsonb's own output always fits jsonb).
    Jsonb,
    /// `json` in a database whose encoding is not UTF-8, where jsonb also refuses a `\u` escape
    /// of a character the encoding lacks: as [`Render::Json`], and a value with any `\u` escape
    /// above U+007F is kept as a string (some of those would fit; none is lost).
    JsonNarrow,
    /// ISO 8601 with a `T` between date and time, and `+HH:MM` offsets.
    Timestamp,
    /// The text as a JSON string.
    Text,
}

impl Render {
    /// The rendering of a built-in type, `None` for types the server must convert.
    pub fn of(type_oid: u32) -> Option<Render> {
        Some(match type_oid {
            16 => Render::Bool,
            // int8, int2, int4, float4, float8, numeric
            20 | 21 | 23 | 700 | 701 | 1700 => Render::Number,
            114 => Render::Json,
            3802 => Render::Jsonb,
            1114 | 1184 => Render::Timestamp,
            // "char", name, text, oid, cidr, bit, varbit, inet, bpchar, varchar, date, time,
            // uuid, macaddr, macaddr8: their text output is what to_jsonb writes as a string
            // (date's ISO output is also its XSD form).
            18 | 19 | 25 | 26 | 650 | 1560 | 1562 | 869 | 1042 | 1043 | 1082 | 1083 | 2950
            | 829 | 774 => Render::Text,
            _ => return None,
        })
    }

    /// The text values for the server to read into the row type: json and jsonb nested as
    /// JSON, everything else as a string.
    pub fn for_server(relation: &Relation) -> Vec<Render> {
        relation
            .columns
            .iter()
            .map(|c| match Render::of(c.type_oid) {
                Some(r @ (Render::Json | Render::Jsonb)) => r,
                _ => Render::Text,
            })
            .collect()
    }

    /// The rendering in a database whose encoding is UTF-8 (`utf8`) or not.
    #[must_use]
    pub fn in_encoding(self, utf8: bool) -> Render {
        match self {
            Render::Json if !utf8 => Render::JsonNarrow,
            r => r,
        }
    }

    /// Every column's rendering when all of the relation's columns have one.
    pub fn all(relation: &Relation) -> Option<Vec<Render>> {
        relation
            .columns
            .iter()
            .map(|c| Render::of(c.type_oid))
            .collect()
    }
}

/// The replication connection's settings that fix how values print: ISO dates, the relay
/// sessions' time zone, and floats printed exactly. As the startup `options` parameter (values
/// with spaces or backslashes escaped as PostgreSQL reads them).
pub fn session_options(time_zone: &str) -> String {
    let mut tz = String::with_capacity(time_zone.len());
    for c in time_zone.chars() {
        if c == ' ' || c == '\\' {
            tz.push('\\');
        }
        tz.push(c);
    }
    format!("-c DateStyle=ISO -c TimeZone={tz} -c extra_float_digits=1")
}

/// A tuple as a JSON object, each column rendered as `renders` says. An unchanged TOAST value is
/// taken from `old` (the whole old row under `REPLICA IDENTITY FULL`); without it the column is
/// `null`, as the server's conversion leaves it. Also the names of the `json` columns kept as
/// strings because jsonb cannot hold their values (empty for nearly every row).
pub fn row(
    relation: &Relation,
    renders: &[Render],
    values: &[Value],
    old: Option<&[Value]>,
) -> (String, Vec<String>) {
    let mut out = Vec::with_capacity(128);
    let mut unfit = Vec::new();
    out.push(b'{');
    for (i, ((column, render), value)) in
        relation.columns.iter().zip(renders).zip(values).enumerate()
    {
        let value = match value {
            Value::Unchanged => match old.and_then(|o| o.get(i)) {
                Some(v @ (Value::Text(_) | Value::Null)) => v,
                _ => &Value::Null,
            },
            v => v,
        };
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, &column.name);
        out.push(b':');
        match value {
            Value::Text(text) => {
                if !value_json(&mut out, *render, text) {
                    unfit.push(column.name.clone());
                }
            }
            Value::Null | Value::Unchanged => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    // Every piece written is UTF-8 (JSON literals and text that was a `&str`).
    (String::from_utf8(out).unwrap_or_default(), unfit)
}

/// One value's JSON; false when it is a `json` value that jsonb cannot hold, written as a
/// string of its text instead.
pub fn value_json(out: &mut Vec<u8>, render: Render, text: &str) -> bool {
    match render {
        Render::Bool => out.extend_from_slice(if text == "t" { b"true" } else { b"false" }),
        Render::Number if is_json_number(text) => out.extend_from_slice(text.as_bytes()),
        Render::Json | Render::Jsonb | Render::JsonNarrow
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() =>
        {
            // jsonb's own output always fits; a json value is checked.
            if render != Render::Jsonb && !fits_jsonb(text, render == Render::JsonNarrow) {
                string(out, text);
                return false;
            }
            out.extend_from_slice(text.as_bytes());
        }
        Render::Timestamp => string(out, &iso_8601(text)),
        Render::Number | Render::Json | Render::Jsonb | Render::JsonNarrow | Render::Text => {
            string(out, text);
        }
    }
    true
}

/// Whether JSON `text` (valid JSON) also reads as `jsonb`. A `json` value can hold what jsonb
/// refuses: the escape `\u0000` (jsonb's strings are text, which holds no NUL) and numbers
/// beyond `numeric`'s range (see [`numeric_fits`]). With `ascii_escapes`, also any `\u` escape
/// above U+007F (for a database whose encoding is not UTF-8).
pub fn fits_jsonb(text: &str, ascii_escapes: bool) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return true,
                        Some(b'"') => break,
                        Some(b'\\') if b.get(i + 1) == Some(&b'u') => {
                            let code = text
                                .get(i + 2..i + 6)
                                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                            if code == Some(0) || (ascii_escapes && code.is_none_or(|c| c > 0x7F)) {
                                return false;
                            }
                            i += 6;
                        }
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    i += 1;
                }
                if !numeric_fits(&text[start..i]) {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// Whether a JSON number reads as `numeric`, as PostgreSQL's `numeric_in` decides: at most
/// 16,383 digits after the decimal point once the exponent is applied, a leading digit at most
/// 10^131071 (a weight of 32,767 base-10,000 digits), and an exponent below 2^30 in size.
fn numeric_fits(number: &str) -> bool {
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(e) => (&unsigned[..e], unsigned[e + 1..].parse::<i64>()),
        None => (unsigned, Ok(0)),
    };
    let Ok(exponent) = exponent else {
        return false;
    };
    if exponent.abs() >= i64::from(i32::MAX / 2) {
        return false;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let len = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let scale = (len(frac.len()) - exponent).max(0);
    if scale > 16_383 {
        return false;
    }
    match int.bytes().chain(frac.bytes()).position(|d| d != b'0') {
        // Zero: only its scale counts.
        None => true,
        // The leading digit's power of ten.
        Some(first) => len(int.len()) - 1 - len(first) + exponent <= 131_071,
    }
}

/// Appends `text` as a JSON string literal.
pub fn string(out: &mut Vec<u8>, text: &str) {
    // Writing a `&str` into a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. PostgreSQL's
/// `IsValidJsonNumber` decides the same way whether `to_jsonb` writes a number or a string.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int = digits(&mut i);
    if int == 0 || (int > 1 && b[i - int] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `DateStyle = ISO` output of a `timestamp` or `timestamptz` in the XSD form `to_jsonb` writes:
/// `T` between date and time, and an offset of whole hours as `+HH:00`. `infinity` and a ` BC`
/// suffix stay as they are.
fn iso_8601(text: &str) -> String {
    let (body, era) = match text.strip_suffix(" BC") {
        Some(body) => (body, " BC"),
        None => (text, ""),
    };
    let Some(space) = body.find(' ') else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str(&body[..space]);
    out.push('T');
    let time = &body[space + 1..];
    out.push_str(time);
    // The offset starts at the time part's sign (the time itself has no sign).
    if let Some(sign) = time.rfind(['+', '-'])
        && time.len() - sign == 3
    {
        out.push_str(":00");
    }
    out.push_str(era);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::pgoutput::Column;

    #[test]
    fn timestamps_take_the_xsd_form() {
        for (text, json) in [
            ("2026-12-03 08:11:12+00", "2026-12-03T08:11:12+00:00"),
            ("2026-12-03 13:41:12.5+05:30", "2026-12-03T13:41:12.5+05:30"),
            (
                "1850-01-01 00:00:00+05:53:28",
                "1850-01-01T00:00:00+05:53:28",
            ),
            ("0044-03-15 12:00:00-03 BC", "0044-03-15T12:00:00-03:00 BC"),
            ("12026-12-03 10:11:00", "12026-12-03T10:11:00"),
            ("2026-12-03 10:11:12.654321", "2026-12-03T10:11:12.654321"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
        ] {
            assert_eq!(iso_8601(text), json, "{text}");
        }
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for ok in [
            "0",
            "-0",
            "12345678901234567.89",
            "1e-30",
            "1.5e+20",
            "3.4028235e+38",
            "-7",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "1 ",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn rows_render_as_to_jsonb_with_unchanged_values_from_the_old_row() {
        let col = |name: &str, type_oid| Column {
            name: name.into(),
            type_oid,
            key: false,
        };
        let relation = Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: vec![
                col("id", 20),
                col("n", 1700),
                col("b", 16),
                col("j", 3802),
                col("at", 1184),
                col("s", 25),
                col("big", 25),
            ],
        };
        let renders = Render::all(&relation).unwrap();
        let text = |s: &str| Value::Text(s.into());
        let new = [
            text("7"),
            text("NaN"),
            text("f"),
            text("{\"a\": [1, 2.50]}"),
            text("2026-12-03 08:11:12+00"),
            text("say \"hi\"\n"),
            Value::Unchanged,
        ];
        let old = [
            text("7"),
            text("1"),
            text("t"),
            text("{}"),
            Value::Null,
            Value::Null,
            text("kept"),
        ];
        assert_eq!(
            row(&relation, &renders, &new, Some(&old)).0,
            r#"{"id":7,"n":"NaN","b":false,"j":{"a": [1, 2.50]},"at":"2026-12-03T08:11:12+00:00","s":"say \"hi\"\n","big":"kept"}"#
        );
        assert_eq!(
            row(&relation, &renders, &new, None).0,
            r#"{"id":7,"n":"NaN","b":false,"j":{"a": [1, 2.50]},"at":"2026-12-03T08:11:12+00:00","s":"say \"hi\"\n","big":null}"#
        );
        assert!(
            Render::of(1186).is_none(),
            "interval depends on IntervalStyle"
        );
        assert_eq!(
            session_options("America/New York"),
            "-c DateStyle=ISO -c TimeZone=America/New\\ York -c extra_float_digits=1"
        );
    }
}
