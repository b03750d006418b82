//! One-click unsubscribe tokens (RFC 8058 links).
//!
//! A token names one recipient, one event category and one channel, the
//! message it came with, and when it stops working. It is signed with
//! HMAC-SHA256 under a server key, so following it needs no sign-in and
//! nobody can make one for someone else: a token whose signature does not
//! verify is [`TokenError::Forged`], one past its time
//! [`TokenError::Expired`].
//!
//! Compact, because it travels in SMS too: a few bytes of binary fields
//! (version, expiry in seconds, channel, a UUID user id in 16 bytes), then
//! a 128-bit tag, base64url without padding — about 80 characters for a
//! UUID user.
//!
//! ```text
//! version(1) expires(4, seconds, BE) channel(1) flags(1) category_len(1)
//! category  [delivery(16)]  user(16 if a UUID, else UTF-8)  tag(16)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::channel::ChannelKind;
use crate::ids::{DeliveryId, UserId};

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const HAS_DELIVERY: u8 = 1;
const UUID_USER: u8 = 2;

/// What a token allows: turning `category` × `channel` off for `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub user: UserId,
    pub category: String,
    pub channel: ChannelKind,
    /// The message whose link it is.
    pub delivery: Option<DeliveryId>,
    /// When it stops working (epoch seconds).
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not one of ours: malformed, or its signature does not verify.
    #[error("this link is not valid")]
    Forged,
    /// Ours, but past its time.
    #[error("this link has expired")]
    Expired(Unsubscribe),
}

/// Signs and checks tokens with a key derived from a server secret.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

impl Signer {
    /// A signer keyed by `secret`. The key is derived for this use alone,
    /// so a secret shared with another purpose (the JWT secret) never signs
    /// anything here that could pass there, or the other way round.
    pub fn new(secret: &[u8]) -> Signer {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(b"herald unsubscribe v1");
        Signer {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key")
    }

    /// The token for `u`, URL-safe.
    pub fn sign(&self, u: &Unsubscribe) -> String {
        let category = u.category.as_bytes();
        let category = &category[..category.len().min(255)];
        let user = Uuid::parse_str(u.user.as_str())
            .ok()
            .filter(|id| id.hyphenated().to_string() == u.user.as_str());
        let mut flags = 0;
        if u.delivery.is_some() {
            flags |= HAS_DELIVERY;
        }
        if user.is_some() {
            flags |= UUID_USER;
        }
        let expires = u32::try_from(u.expires_at.max(0)).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(64);
        bytes.push(VERSION);
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.push(channel_code(u.channel));
        bytes.push(flags);
        bytes.push(category.len() as u8);
        bytes.extend_from_slice(category);
        if let Some(d) = u.delivery {
            bytes.extend_from_slice(d.0.as_bytes());
        }
        match user {
            Some(id) => bytes.extend_from_slice(id.as_bytes()),
            None => bytes.extend_from_slice(u.user.as_str().as_bytes()),
        }
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// What `token` allows, if it is ours and not past its time at `now`
    /// (epoch seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Unsubscribe, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Forged)?;
        if bytes.len() < 8 + TAG_LEN {
            return Err(TokenError::Forged);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| TokenError::Forged)?;
        let u = parse(body).ok_or(TokenError::Forged)?;
        if now >= u.expires_at {
            return Err(TokenError::Expired(u));
        }
        Ok(u)
    }
}

fn channel_code(c: ChannelKind) -> u8 {
    match c {
        ChannelKind::Email => b'e',
        ChannelKind::Sms => b's',
        ChannelKind::Push => b'p',
        ChannelKind::InApp => b'i',
        ChannelKind::Realtime => b'r',
    }
}

fn parse(body: &[u8]) -> Option<Unsubscribe> {
    if body[0] != VERSION {
        return None;
    }
    let expires = u32::from_be_bytes(body[1..5].try_into().ok()?);
    let channel = ChannelKind::ALL
        .into_iter()
        .find(|c| channel_code(*c) == body[5])?;
    let flags = body[6];
    let len = usize::from(body[7]);
    let rest = body.get(8..)?;
    let category = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
    let mut rest = &rest[len..];
    let delivery = if flags & HAS_DELIVERY != 0 {
        let id = Uuid::from_slice(rest.get(..16)?).ok()?;
        rest = &rest[16..];
        Some(DeliveryId(id))
    } else {
        None
    };
    let user = if flags & UUID_USER != 0 {
        if rest.len() != 16 {
            return None;
        }
        Uuid::from_slice(rest).ok()?.hyphenated().to_string()
    } else {
        std::str::from_utf8(rest).ok()?.to_owned()
    };
    if user.is_empty() {
        return None;
    }
    Some(Unsubscribe {
        user: UserId(user),
        category,
        channel,
        delivery,
        expires_at: i64::from(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: &str) -> Unsubscribe {
        Unsubscribe {
            user: UserId(user.to_owned()),
            category: "points".into(),
            channel: ChannelKind::Email,
            delivery: Some(DeliveryId::new()),
            expires_at: 2_000_000_000,
        }
    }

    #[test]
    fn a_token_round_trips_and_is_short() {
        let signer = Signer::new(b"a server secret of some length");
        for user in [
            "8d1f0a52-4c6e-4d0b-9a3f-2b7f1c9e0a11",
            "pager.duty@ops",
            "Ω",
        ] {
            let u = token(user);
            let t = signer.sign(&u);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(signer.verify(&t, 1_900_000_000), Ok(u));
        }
        let uuid = signer.sign(&token("8d1f0a52-4c6e-4d0b-9a3f-2b7f1c9e0a11"));
        assert!(uuid.len() <= 84, "{} characters", uuid.len());
    }

    #[test]
    fn a_changed_token_or_another_key_is_forged_and_an_old_one_expired() {
        let signer = Signer::new(b"a server secret of some length");
        let u = token("8d1f0a52-4c6e-4d0b-9a3f-2b7f1c9e0a11");
        let t = signer.sign(&u);
        let other = Signer::new(b"another secret");
        assert_eq!(other.verify(&t, 0), Err(TokenError::Forged));
        // Flip each character in turn: never accepted.
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered != t {
                assert!(signer.verify(&tampered, 0).is_err(), "position {i}");
            }
        }
        assert_eq!(signer.verify("", 0), Err(TokenError::Forged));
        assert_eq!(signer.verify("not a token!", 0), Err(TokenError::Forged));
        assert_eq!(
            signer.verify(&t, 2_000_000_000),
            Err(TokenError::Expired(u))
        );
    }
}
