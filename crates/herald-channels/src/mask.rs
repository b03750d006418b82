//! Addresses in logs are masked: enough to tell two apart, not enough to
//! harvest.

use herald_core::channel::Address;

/// `anna@example.com` → `a***@example.com`; `+79161234567` → `+7916***4567`;
/// push tokens and endpoints keep their first 8 characters.
pub fn mask(address: &Address) -> String {
    match address {
        Address::Email { email } => match email.split_once('@') {
            Some((local, domain)) => {
                format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
            }
            None => "***".to_owned(),
        },
        Address::Phone { phone } => {
            let chars: Vec<char> = phone.chars().collect();
            if chars.len() <= 8 {
                "***".to_owned()
            } else {
                let head: String = chars[..5].iter().collect();
                let tail: String = chars[chars.len() - 4..].iter().collect();
                format!("{head}***{tail}")
            }
        }
        Address::Fcm { token } => format!("{}***", token.chars().take(8).collect::<String>()),
        Address::WebPush { endpoint, .. } => {
            format!("{}***", endpoint.chars().take(24).collect::<String>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked() {
        assert_eq!(
            mask(&Address::Email {
                email: "anna@example.com".into()
            }),
            "a***@example.com"
        );
        assert_eq!(
            mask(&Address::Phone {
                phone: "+79161234567".into()
            }),
            "+7916***4567"
        );
        assert_eq!(
            mask(&Address::Fcm {
                token: "abcdefghijklmnop".into()
            }),
            "abcdefgh***"
        );
    }
}
