//! How many SMS segments a text costs.
//!
//! Texts that fit the GSM 03.38 alphabet go as GSM-7: 160 characters in
//! one segment, 153 per segment when split (the rest is the concatenation
//! header); characters of the extension table (`€ [ ] { } | ~ ^ \`) take
//! two. Anything else — Cyrillic included — goes as UCS-2: 70 UTF-16 units
//! in one segment, 67 per segment when split.

/// The encoding a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// What a text costs to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub count: usize,
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Counts the segments `text` needs.
pub fn segments(text: &str) -> Segments {
    let mut septets = 0;
    let mut gsm = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, multi) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    // An empty text still costs one message.
    let count = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    Segments {
        encoding,
        units,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_texts() {
        let s = segments(&"a".repeat(160));
        assert_eq!((s.encoding, s.count), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        // Extension characters take two septets.
        let s = segments(&"€".repeat(80));
        assert_eq!((s.units, s.count), (160, 1));
        assert_eq!(segments(&"€".repeat(81)).count, 2);
    }

    #[test]
    fn cyrillic_is_ucs2() {
        let s = segments("Списано 200 баллов");
        assert_eq!((s.encoding, s.units, s.count), (Encoding::Ucs2, 18, 1));
        assert_eq!(segments(&"б".repeat(70)).count, 1);
        assert_eq!(segments(&"б".repeat(71)).count, 2);
        assert_eq!(segments(&"б".repeat(134)).count, 2);
        assert_eq!(segments(&"б".repeat(135)).count, 3);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("🚨").units, 2);
    }
}
