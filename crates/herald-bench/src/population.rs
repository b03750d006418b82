//! Who is connected and what they publish: the seed's scenario of guests,
//! restaurant staff and admins, with deterministic ids so every run and
//! both servers see the same people.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

/// The seed scenario: 2,000 guests on their own cards, 20 restaurants × 5
/// staff on points_operations, 5 admins on system_events.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    pub guests: u64,
    pub restaurants: u64,
    pub staff_per_restaurant: u64,
    pub admins: u64,
}

impl Population {
    pub const SEED: Population = Population {
        guests: 2_000,
        restaurants: 20,
        staff_per_restaurant: 5,
        admins: 5,
    };

    /// A small crowd for the smoke run: every path, a fraction of the sockets.
    pub const SMOKE: Population = Population {
        guests: 100,
        restaurants: 4,
        staff_per_restaurant: 5,
        admins: 2,
    };

    pub fn sockets(&self) -> u64 {
        self.guests + self.restaurants * self.staff_per_restaurant + self.admins
    }

    /// Sockets one `points_added` reaches: its guest (in `guest:` and
    /// `user:`, counted once) and the restaurant's staff.
    pub fn receivers_per_event(&self) -> u64 {
        1 + self.staff_per_restaurant
    }

    /// Every socket: (token subject, role, restaurant, subscription).
    pub fn members(&self) -> Vec<(String, &'static str, Option<String>, Value)> {
        let mut all = Vec::with_capacity(self.sockets() as usize);
        for g in 0..self.guests {
            let id = guest_id(g);
            let sub = json!({ "type": "guest_card", "data": { "guestId": id } });
            all.push((id, "guest", None, sub));
        }
        for r in 0..self.restaurants {
            for s in 0..self.staff_per_restaurant {
                let role = if s == 0 { "restaurant" } else { "cashier" };
                let rid = restaurant_id(r);
                let sub = json!({ "type": "points_operations", "data": { "restaurantId": rid } });
                all.push((format!("staff-{r}-{s}"), role, Some(rid), sub));
            }
        }
        for a in 0..self.admins {
            let sub = json!({ "type": "system_events", "data": {} });
            all.push((format!("admin-{a}"), "admin", None, sub));
        }
        all
    }

    /// `points_added` number `seq`: its guest is `seq mod guests`, at that
    /// guest's restaurant. `newBalance` carries `seq`, so a receiver knows
    /// which publish it is looking at without a field of its own.
    pub fn points_added(&self, seq: u64) -> String {
        let g = seq % self.guests;
        let r = g % self.restaurants;
        format!(
            concat!(
                r#"{{"event":"points_added","data":{{"guestId":"{}","cardId":"{}","amount":100,"#,
                r#""newBalance":{},"restaurantId":"{}","restaurantName":"Пельменная №1","#,
                r#""transactionId":"{}","timestamp":1764000000000,"description":"Покупка на 1 000 ₽"}}}}"#
            ),
            guest_id(g),
            card_id(g),
            seq,
            restaurant_id(r),
            transaction_id(seq)
        )
    }

    /// A JSON array of `n` events from `first` on.
    pub fn points_added_batch(&self, first: u64, n: u64) -> String {
        let mut body = String::with_capacity(n as usize * 420 + 2);
        body.push('[');
        for seq in first..first + n {
            if seq > first {
                body.push(',');
            }
            body.push_str(&self.points_added(seq));
        }
        body.push(']');
        body
    }
}

pub fn guest_id(g: u64) -> String {
    format!("00000000-0000-4000-8000-{g:012x}")
}

fn card_id(g: u64) -> String {
    format!("00000000-0000-4000-9000-{g:012x}")
}

pub fn restaurant_id(r: u64) -> String {
    format!("00000000-0000-4000-a000-{r:012x}")
}

fn transaction_id(seq: u64) -> String {
    format!("00000000-0000-4000-b000-{seq:012x}")
}

/// The publish sequence number a `points_added` frame carries, read
/// without parsing the frame (the harness reads hundreds of thousands).
pub fn seq_of(frame: &str) -> Option<u64> {
    const KEY: &str = "\"newBalance\":";
    let at = frame.find(KEY)? + KEY.len();
    let digits = frame[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// An HS256 token valid for three hours, as the platform would mint it.
pub fn token(secret: &str, sub: &str, role: &str, restaurant: Option<&str>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3 * 3600;
    let mut claims = json!({ "sub": sub, "role": role, "exp": exp });
    if let Some(r) = restaurant {
        claims["restaurantId"] = json!(r);
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_and_carry_their_sequence() {
        let pop = Population::SEED;
        let one: Value = serde_json::from_str(&pop.points_added(4_321)).unwrap();
        assert_eq!(one["data"]["newBalance"], 4_321);
        assert_eq!(one["data"]["guestId"], guest_id(4_321 % 2_000));
        let batch: Vec<Value> = serde_json::from_str(&pop.points_added_batch(10, 3)).unwrap();
        assert_eq!(batch.len(), 3);
        let frame = format!(r#"["points_added",{}]"#, one["data"]);
        assert_eq!(seq_of(&frame), Some(4_321));
        assert_eq!(seq_of(r#"["x",{"newBalance": 7}]"#), Some(7));
        assert_eq!(seq_of(r#"["x",{}]"#), None);
    }

    #[test]
    fn the_seed_population_has_its_sockets() {
        let pop = Population::SEED;
        assert_eq!(pop.sockets(), 2_105);
        assert_eq!(pop.members().len(), 2_105);
        assert_eq!(pop.receivers_per_event(), 6);
    }
}
