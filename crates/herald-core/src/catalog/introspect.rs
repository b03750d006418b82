//! What the catalog's payload types say about themselves.
//!
//! - Field names, read from a derived `Deserialize`: it hands its field list
//!   to `deserialize_struct`; the probe deserializer records that list and
//!   stops. The routing table uses it to check, at start, that every
//!   `{placeholder}` it names is a real field.
//! - JSON Schemas, derived (`schemars`) from the same types that validate a
//!   publish, with the rules serde cannot express (`check`) added as
//!   constraints by field attributes, and Herald's rules for every JSON
//!   number and string ([`bound_numbers`], [`refuse_nul`]) applied
//!   throughout. `GET /openapi.json` publishes them; the server's own
//!   request bodies use the same building blocks ([`text_schema`],
//!   [`email_schema`]).

use std::sync::{LazyLock, Mutex};

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::{self, Deserialize, Visitor};
use serde_json::{Map, Value, json};

#[derive(Debug)]
struct Captured(&'static [&'static str]);

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field list captured")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Captured(&[])
    }
}

struct Probe;

impl<'de> de::Deserializer<'de> for Probe {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        Err(Captured(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The wire names of `T`'s fields (after `rename_all`).
pub(super) fn fields<'de, T: Deserialize<'de> + 'static>() -> &'static [&'static str] {
    // Cached per type: the list is static, but finding it costs a failed parse.
    type Fields = &'static [&'static str];
    static CACHE: LazyLock<Mutex<Vec<(std::any::TypeId, Fields)>>> =
        LazyLock::new(|| Mutex::new(Vec::new()));
    let id = std::any::TypeId::of::<T>();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, f)) = cache.iter().find(|(t, _)| *t == id) {
        return f;
    }
    let fields = match T::deserialize(Probe) {
        Err(Captured(fields)) => fields,
        Ok(_) => &[],
    };
    cache.push((id, fields));
    fields
}

/// The largest integer every JSON reader holds exactly (2^53 − 1, a
/// JavaScript `Number.MAX_SAFE_INTEGER`). Herald refuses integers beyond
/// ±this, so a payload reads the same in every client.
pub const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;

/// The characters Rust's `str::trim` strips (Unicode `White_Space`),
/// spelled out so a schema's reader (ECMA-262, Python …) cannot differ.
const WHITESPACE: &str =
    r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// JSON Schema of a string with no NUL character.
pub const NO_NUL: &str = r"^[^\x00]*$";

/// JSON Schema of the text a payload's free-text field accepts: not blank
/// (something besides whitespace), no NUL, at most `max_bytes` of UTF-8.
/// JSON Schema counts characters, so `maxLength` is the number of
/// characters that fit whatever they are (four bytes each at most).
pub fn text_schema(max_bytes: usize) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": max_bytes / 4,
        "pattern": format!(r"^[^\x00]*[^\x00{WHITESPACE}][^\x00]*$"),
        "description": format!("Not blank; at most {max_bytes} bytes of UTF-8."),
    })
}

/// JSON Schema of an email address as `preferences::looks_like_email`
/// accepts it: one `@` with something before it, a dot inside the domain,
/// no whitespace, at most 254 bytes. The pattern keeps to printable ASCII,
/// whose characters are a byte each, so `maxLength` is exact.
pub fn email_schema() -> Value {
    json!({
        "type": "string",
        "maxLength": 254,
        "pattern": r"^[!-?A-~]+@[!-\-/-?A-~][!-?A-~]*\.[!-?A-~]*[!-\-/-?A-~]$",
        "description": "An email address: one `@`, a dot in the domain (neither first nor last), no whitespace; at most 254 bytes.",
    })
}

/// The JSON Schema of what `T`'s derived `Deserialize` accepts, every
/// subschema inline, with [`bound_numbers`] and [`refuse_nul`] applied.
pub fn schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("title");
    }
    bound_numbers(&mut schema);
    refuse_nul(&mut schema);
    schema
}

/// Walks every subschema of `schema`, itself included.
fn walk(schema: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    match schema {
        Value::Object(object) => {
            f(object);
            for value in object.values_mut() {
                walk(value, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
        _ => {}
    }
}

fn has_type(object: &Map<String, Value>, ty: &str) -> bool {
    match object.get("type") {
        Some(Value::String(t)) => t == ty,
        Some(Value::Array(types)) => types.iter().any(|t| t == ty),
        _ => false,
    }
}

/// Every integer and number schema within `schema` gets the bounds Herald
/// enforces on JSON numbers, ±[`MAX_SAFE_INTEGER`], unless it is narrower.
pub fn bound_numbers(schema: &mut Value) {
    walk(schema, &mut |object| {
        if !(has_type(object, "integer") || has_type(object, "number")) {
            return;
        }
        // A Rust integer type's own range (schemars names it as a format),
        // within the safe one; the bounds then say it all.
        let (low, high) = match object.remove("format").as_ref().and_then(Value::as_str) {
            Some("int8") => (i64::from(i8::MIN), i64::from(i8::MAX)),
            Some("int16") => (i64::from(i16::MIN), i64::from(i16::MAX)),
            Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
            Some("uint8") => (0, i64::from(u8::MAX)),
            Some("uint16") => (0, i64::from(u16::MAX)),
            Some("uint32") => (0, i64::from(u32::MAX)),
            Some("uint" | "uint64") => (0, MAX_SAFE_INTEGER),
            _ => (-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
        };
        let given = |key: &str| object.get(key).and_then(Value::as_f64);
        // (Bounds are whole numbers of at most 2^53 here: the casts are exact.)
        let minimum = given("minimum").map_or(low, |m| (m.ceil() as i64).max(low));
        let maximum = given("maximum").map_or(high, |m| (m.floor() as i64).min(high));
        object.insert("minimum".into(), json!(minimum));
        object.insert("maximum".into(), json!(maximum));
    });
}

/// Every free string within `schema` (no `pattern`, `format`, `enum` or
/// `const` of its own) refuses NUL, as Herald does.
pub fn refuse_nul(schema: &mut Value) {
    walk(schema, &mut |object| {
        let free = has_type(object, "string")
            && !["pattern", "format", "enum", "const"]
                .iter()
                .any(|k| object.contains_key(*k));
        if free {
            object.insert("pattern".into(), json!(NO_NUL));
        }
    });
}

/// `#[schemars(transform = …)]` helpers for the catalog's fields: each
/// merges a schema above into the field's own, keeping its `null` when the
/// field is optional.
pub(super) mod fields {
    use schemars::Schema;
    use serde_json::Value;

    fn merge(schema: &mut Schema, with: Value) {
        let nullable = schema
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "null"));
        let object = schema.ensure_object();
        if let Value::Object(with) = with {
            object.extend(with);
        }
        if nullable {
            object.insert("type".into(), serde_json::json!(["string", "null"]));
        }
    }

    /// A free-text field (`super::super::MAX_TEXT`).
    pub fn text(schema: &mut Schema) {
        merge(schema, super::text_schema(super::super::MAX_TEXT));
    }

    /// An embedded blob (`super::super::MAX_BLOB`).
    pub fn blob(schema: &mut Schema) {
        merge(schema, super::text_schema(super::super::MAX_BLOB));
    }

    /// An email address.
    pub fn email(schema: &mut Schema) {
        merge(schema, super::email_schema());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{EventKind, ValidatedEvent};
    use super::*;

    fn property(kind: EventKind, name: &str) -> Value {
        kind.schema()["properties"][name].clone()
    }

    #[test]
    fn a_schema_names_the_payloads_fields_requires_the_required_and_refuses_others() {
        for &kind in EventKind::ALL {
            let schema = kind.schema();
            assert_eq!(schema["type"], "object", "{kind}");
            assert_eq!(schema["additionalProperties"], false, "{kind}");
            let mut named: Vec<&str> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut fields = kind.fields().to_vec();
            named.sort_unstable();
            fields.sort_unstable();
            assert_eq!(named, fields, "{kind}");
            // Each required field is one validation misses.
            for required in schema["required"].as_array().unwrap() {
                let mut data = kind.example();
                data.as_object_mut()
                    .unwrap()
                    .remove(required.as_str().unwrap());
                let err = ValidatedEvent::parse_kind(kind, data).unwrap_err();
                assert_eq!(err.field, format!("data.{}", required.as_str().unwrap()));
            }
        }
    }

    #[test]
    fn the_checks_serde_cannot_express_are_constraints() {
        let amount = property(EventKind::PointsAdded, "amount");
        assert_eq!(amount["minimum"], 0);
        assert_eq!(amount["maximum"], MAX_SAFE_INTEGER);
        assert_eq!(
            property(EventKind::RestaurantTransaction, "totalToday")["minimum"],
            0
        );
        let name = property(EventKind::PointsAdded, "restaurantName");
        assert_eq!(name["minLength"], 1);
        assert_eq!(name["maxLength"], 500);
        assert!(name["pattern"].as_str().unwrap().contains(r"\u3000"));
        let description = property(EventKind::PointsAdded, "description");
        assert_eq!(description["type"], json!(["string", "null"]));
        assert_eq!(description["maxLength"], 500);
        assert_eq!(
            property(EventKind::CardCreated, "qrCode")["maxLength"],
            16_384
        );
        assert_eq!(
            property(EventKind::GuestRegistered, "email")["maxLength"],
            254
        );
        let timestamp = property(EventKind::PointsAdded, "timestamp");
        assert_eq!(timestamp["minimum"], 0);
        assert_eq!(timestamp["maximum"], crate::input::MAX_INSTANT_MS);
        assert_eq!(
            property(EventKind::DeliveryFailed, "retryCount")["maximum"],
            u32::MAX
        );
        assert_eq!(
            property(EventKind::GuestCardUpdated, "changes")["minProperties"],
            1
        );
        assert_eq!(
            property(EventKind::SystemAlert, "level")["enum"],
            json!(["info", "warning", "error", "critical"])
        );
    }

    #[test]
    fn free_strings_refuse_nul_and_bounds_keep_the_narrower() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "note": { "type": "string" },
                "id": { "type": "string", "format": "uuid" },
                "count": { "type": "integer", "format": "uint8", "maximum": 10 },
                "big": { "type": ["integer", "null"], "minimum": -1e300 },
            }
        });
        refuse_nul(&mut schema);
        bound_numbers(&mut schema);
        let p = &schema["properties"];
        assert_eq!(p["note"]["pattern"], NO_NUL);
        assert!(p["id"].get("pattern").is_none());
        assert_eq!(
            (p["count"]["minimum"].clone(), p["count"]["maximum"].clone()),
            (json!(0), json!(10))
        );
        assert_eq!(p["big"]["minimum"], -MAX_SAFE_INTEGER);
        assert_eq!(p["big"]["maximum"], MAX_SAFE_INTEGER);
    }
}
