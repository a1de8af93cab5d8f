//! Exact JSON numbers. serde_json is built with `arbitrary_precision`, so a number keeps the
//! digits PostgreSQL's `to_jsonb` wrote (`12345678901234567.89`, `1e400` spelled out, 18
//! decimals) from the change log to every receiver. This module holds what that needs: the
//! per-action `numbers` option, a serializer that writes every number as a string, numeric (not
//! textual) equality, and the one lossy conversion to `f64` that conditions use.

use std::fmt;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

/// How an action writes the numbers of its JSON body: `"exact"` (the default: JSON numbers with
/// every digit PostgreSQL wrote) or `"string"` (every number as a JSON string with those same
/// digits, for receivers whose JSON parsers read numbers as doubles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NumberFormat {
    #[default]
    Exact,
    String,
}

impl fmt::Display for NumberFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberFormat::Exact => "exact",
            NumberFormat::String => "string",
        })
    }
}

impl<'de> Deserialize<'de> for NumberFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "exact" => Ok(NumberFormat::Exact),
            "string" => Ok(NumberFormat::String),
            other => Err(serde::de::Error::custom(format!(
                "numbers = `{other}` is not a number format; expected \"exact\" (JSON numbers with every digit, the default) or \"string\" (every number as a JSON string)"
            ))),
        }
    }
}

/// Serializes a JSON value with every number written as a JSON string of its exact digits.
#[derive(Debug, Clone, Copy)]
pub struct StringNumbers<'a>(pub &'a Value);

impl Serialize for StringNumbers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(n) => serializer.serialize_str(n.as_str()),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&StringNumbers(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, &StringNumbers(value))?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Deserializes a typed value (an event, a queued action) out of a JSON value without changing
/// any number's spelling. `serde_json::from_value` hands a number that a double round-trips
/// over as that double, so `1797…000` (309 digits) would come back as `1.7976931348623157e+308`;
/// reading the value's text keeps every number as written. For stored payloads (jobs, DLQ
/// items, search documents), never on the change-log read path.
pub fn from_json<T: serde::de::DeserializeOwned>(value: &Value) -> serde_json::Result<T> {
    serde_json::from_str(&value.to_string())
}

/// Equality as PostgreSQL's jsonb has it: numbers by value (`100.0` equals `100.00` and `1e2`),
/// everything else as usual. Used for the field-level changes, so they agree with the trigger's
/// `changed` column.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Two numbers are equal when their decimal values are, whatever their spelling.
pub fn same_number(a: &Number, b: &Number) -> bool {
    let (a, b) = (a.as_str(), b.as_str());
    a == b
        || match (Decimal::parse(a), Decimal::parse(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
}

/// The nearest `f64`: beyond the double range that is ±infinity (`1e400` is `inf`), never NaN;
/// digits beyond a double's 15–17 significant ones are rounded.
pub fn to_f64(n: &Number) -> f64 {
    n.as_str().parse().unwrap_or(f64::NAN)
}

/// A decimal in canonical form: sign, significant digits without leading or trailing zeros,
/// and the position of the decimal point relative to the first digit. Zero has no digits.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    point: i128,
}

impl Decimal {
    fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all: String = [int, frac].concat();
        let significant = all.trim_start_matches('0');
        let leading_zeros = all.len() - significant.len();
        let digits = significant.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: String::new(),
                point: 0,
            });
        }
        let point = i128::try_from(int.len()).ok()? - i128::try_from(leading_zeros).ok()?
            + i128::from(exponent);
        Some(Decimal {
            negative,
            digits: digits.to_owned(),
            point,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Number {
        text.parse().unwrap()
    }

    #[test]
    fn numbers_are_equal_by_decimal_value() {
        let cases = [
            ("100", "100.0", true),
            ("100.0", "100.00", true),
            ("1e2", "100", true),
            ("1E+2", "100.000", true),
            ("0.001", "1e-3", true),
            ("0", "-0", true),
            ("0.0", "0e10", true),
            ("-1.50", "-1.5", true),
            ("12345678901234567.89", "12345678901234567.88", false),
            ("1.123456789012345678", "1.123456789012345679", false),
            ("1", "-1", false),
            ("10", "1", false),
            ("0.1", "0.01", false),
            ("1e400", "1e401", false),
        ];
        for (a, b, equal) in cases {
            assert_eq!(same_number(&num(a), &num(b)), equal, "{a} vs {b}");
            assert_eq!(same_number(&num(b), &num(a)), equal, "{b} vs {a}");
        }
    }

    #[test]
    fn json_equality_compares_nested_numbers_by_value() {
        assert!(same_json(
            &json!({"a": [num("1.0"), {"b": num("2.50")}]}),
            &json!({"a": [1, {"b": num("2.5")}]})
        ));
        assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same_json(&json!([1, 2]), &json!([2, 1])));
        assert!(!same_json(&json!("1"), &json!(1)));
    }

    #[test]
    fn digits_survive_parse_and_serialize() {
        // Keys in order (serde_json's maps are sorted); numbers as to_jsonb writes numeric and
        // float8 values.
        let text = r#"{"a":12345678901234567.89,"b":1.123456789012345678,"c":1e+300,"d":-9223372036854775808,"e":18446744073709551616,"f":1.5e-07,"g":-1.7976931348623157e+308,"h":0.000000000000000000000000000001,"i":100.000}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
    }

    #[test]
    fn from_json_keeps_the_spelling_that_from_value_changes() {
        #[derive(Deserialize)]
        struct Row {
            n: Value,
        }
        let max = format!("17976931348623157{}", "0".repeat(292));
        let value: Value = serde_json::from_str(&format!(r#"{{"n": {max}}}"#)).unwrap();
        let lossy: Row = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            lossy.n.to_string(),
            "1.7976931348623157e+308",
            "serde_json's behaviour"
        );
        let exact: Row = from_json(&value).unwrap();
        assert_eq!(exact.n.to_string(), max);
    }

    #[test]
    fn string_numbers_quote_every_number_and_nothing_else() {
        let value: Value =
            serde_json::from_str(r#"{"n":12345678901234567.89,"l":[1,"x",null,true,{"f":-0.5}]}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&StringNumbers(&value)).unwrap(),
            r#"{"l":["1","x",null,true,{"f":"-0.5"}],"n":"12345678901234567.89"}"#
        );
    }

    #[test]
    fn to_f64_saturates_instead_of_failing() {
        assert!(to_f64(&num("1e400")).is_infinite());
        assert!(to_f64(&num("-1e400")) < f64::MIN);
        assert!((to_f64(&num("12345678901234567.89")) - 1.234_567_890_123_456_8e16).abs() < 1.0);
    }

    #[test]
    fn number_format_names_the_accepted_values() {
        #[derive(Deserialize)]
        struct T {
            numbers: NumberFormat,
        }
        let t: T = toml::from_str(r#"numbers = "string""#).unwrap();
        assert_eq!(t.numbers, NumberFormat::String);
        let err = toml::from_str::<T>(r#"numbers = "float""#)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`float`") && err.contains("\"exact\""),
            "{err}"
        );
    }
}
