//! The field names of a serde struct, read from its derived `Deserialize`.
//!
//! A derived `Deserialize` hands its field list to `deserialize_struct`; this
//! deserializer records that list and stops. The routing table uses it to
//! check, at start, that every `{placeholder}` it names is a real field.

use std::sync::{LazyLock, Mutex};

use serde::de::{self, Deserialize, Visitor};

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
