//! Limits every input obeys, whatever its shape: rules that hold for a
//! request body, a path segment or a token's claims alike, checked once at
//! the edge so no storage backend or client ever meets what it cannot take.
//!
//! - **No NUL character** (`U+0000`) in any text, key or value: PostgreSQL's
//!   `text` cannot hold it (`invalid byte sequence for encoding "UTF8": 0x00`)
//!   and no address, token or name legitimately carries it.
//! - **Integers within ±(2^53 − 1)** ([`MAX_SAFE_INTEGER`]): the range a
//!   JavaScript client (the console, the TypeScript client) reads exactly.
//!   Herald hands payloads back as it got them, so a larger integer would
//!   reach those clients altered.
//! - **Instants up to the end of year 9999** ([`MAX_INSTANT_MS`]): times are
//!   epoch milliseconds (seconds in a token's `exp`); past that horizon they
//!   no longer render as a date and their arithmetic nears overflow.

use serde_json::Value;

use crate::error::ValidationError;

/// The largest integer a JavaScript number holds exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The last millisecond of year 9999, UTC: the latest instant Herald accepts.
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

/// [`MAX_INSTANT_MS`] in whole seconds, for a token's `exp`.
pub const MAX_INSTANT_SECONDS: u64 = (MAX_INSTANT_MS / 1000) as u64;

const NUL_MESSAGE: &str = "must not contain a NUL character (\\u0000)";

/// A piece of text from outside: refused if it holds a NUL character.
pub fn check_text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.contains('\0') {
        return Err(ValidationError::new(field, NUL_MESSAGE));
    }
    Ok(())
}

/// An instant in epoch milliseconds: from 1970 to the end of year 9999.
pub fn check_instant(field: &str, ms: i64) -> Result<(), ValidationError> {
    if !(0..=MAX_INSTANT_MS).contains(&ms) {
        return Err(ValidationError::new(
            field,
            format!(
                "must be milliseconds since 1970-01-01 UTC, from 0 to {MAX_INSTANT_MS} (the end of year 9999)"
            ),
        ));
    }
    Ok(())
}

/// Writes every whole number a document spells as a float (`5.0`, `1e3`)
/// as the integer it is, within ±[`MAX_SAFE_INTEGER`]: JSON has one number
/// type, JavaScript clients send `5.0` for 5, and JSON Schema counts it as
/// an integer, so a field that takes an integer takes it too.
pub fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= MAX_SAFE_INTEGER as f64
            {
                // Exact: a whole number of at most 2^53 − 1.
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// Walks a JSON document once and names the first value (as a path from
/// the root: `data.restaurantName`, `[3].data.amount`) that breaks a rule
/// of this module. Nothing is allocated unless something is wrong.
pub fn check_json(value: &Value) -> Result<(), ValidationError> {
    match value {
        Value::String(s) => check_text("", s),
        Value::Number(n) => {
            let safe = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i),
                (None, Some(_)) => false,
                // A float: JavaScript reads it as Herald does.
                (None, None) => true,
            };
            if safe {
                Ok(())
            } else {
                Err(ValidationError::new(
                    "",
                    format!(
                        "is an integer beyond ±{MAX_SAFE_INTEGER} (2^53 − 1), which JavaScript cannot read exactly"
                    ),
                ))
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_json(item).map_err(|e| e.within(&format!("[{i}]")))),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                // The key itself is the field, its NUL written as JSON would.
                return Err(ValidationError::new(
                    key.replace('\0', "\\u0000"),
                    format!("is a key that {NUL_MESSAGE}"),
                ));
            }
            check_json(item).map_err(|e| e.within(key))
        }),
        Value::Null | Value::Bool(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_floats_become_integers_and_others_stay() {
        let mut doc =
            serde_json::json!({"a": 5.0, "b": [1e3, 2.5, -0.0], "c": 1.0e300, "d": "5.0"});
        super::whole_numbers_as_integers(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"a": 5, "b": [1000, 2.5, 0], "c": 1.0e300, "d": "5.0"})
        );
        assert!(doc["a"].is_i64());
    }

    use serde_json::json;

    use super::*;

    fn field(value: &Value) -> String {
        check_json(value).unwrap_err().field
    }

    #[test]
    fn a_nul_is_named_wherever_it_is() {
        assert_eq!(
            field(&json!({"data": {"restaurantName": "a\u{0}b"}})),
            "data.restaurantName"
        );
        assert_eq!(field(&json!([{}, {"id": "\u{0}"}])), "[1].id");
        assert_eq!(field(&json!({"a": [[1, "\u{0}"]]})), "a[0][1]");
        assert_eq!(field(&json!({"a": {"k\u{0}": 1}})), "a.k\\u0000");
        assert_eq!(field(&json!("\u{0}")), "");
        assert!(check_json(&json!({"name": "Пельменная №1", "emoji": "🚨"})).is_ok());
    }

    #[test]
    fn integers_stay_within_what_javascript_reads() {
        let max = MAX_SAFE_INTEGER;
        assert!(check_json(&json!({"a": max, "b": -max, "c": 1.5e300})).is_ok());
        assert_eq!(field(&json!({"data": {"amount": max + 1}})), "data.amount");
        assert_eq!(field(&json!({"t": i64::MIN})), "t");
        assert_eq!(field(&json!([u64::MAX])), "[0]");
    }

    #[test]
    fn instants_run_from_1970_to_the_end_of_year_9999() {
        assert!(check_instant("t", 0).is_ok());
        assert!(check_instant("t", MAX_INSTANT_MS).is_ok());
        assert_eq!(check_instant("t", -1).unwrap_err().field, "t");
        assert!(check_instant("t", MAX_INSTANT_MS + 1).is_err());
        let end = chrono::DateTime::from_timestamp_millis(MAX_INSTANT_MS).unwrap();
        assert_eq!(end.to_rfc3339(), "9999-12-31T23:59:59.999+00:00");
    }
}
