//! Who people are and how to reach them: contacts (with the role and
//! restaurant that group recipients expand through), preferences and push
//! devices. Also the two look-ups routing needs before it can plan, and
//! their cache (`cache`): every write here names what it changed, so the
//! cache (this node's and, on PostgreSQL, every other's) drops it.

pub mod cache;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use herald_core::ids::DeviceId;
use herald_core::preferences::Contact;
use herald_core::routing::{Profile, Selector};
use herald_core::{Locale, Preferences, Role, UserId};
use serde_json::Value;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};

use crate::audit::{self, Actor, AuditKind, Change};
use crate::records::{ContactRecord, Device, DeviceKind};
use crate::{Error, Result, Store, now_ms, parse_named, placeholders};
use cache::Change as DirectoryChange;

/// One recorded change to a user's preferences.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceChange {
    pub at: i64,
    /// `unsubscribe`.
    pub source: String,
    /// The category (or event) overridden.
    pub scope: String,
    pub channel: String,
    pub enabled: bool,
    /// The message whose link made the change.
    pub delivery_id: Option<String>,
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub kind: DeviceKind,
    pub token: String,
    pub subscription: Option<serde_json::Value>,
}

impl Store {
    pub async fn contact(&self, user: &UserId) -> Result<Option<ContactRecord>> {
        let row = sqlx::query_as::<_, ContactRow>(
            "SELECT email, phone, locale, timezone, role, restaurant_id FROM contacts WHERE user_id = $1",
        )
        .bind(user.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(ContactRow::record))
    }

    /// Replaces a user's contact record.
    pub async fn put_contact(&self, user: &UserId, record: &ContactRecord) -> Result<()> {
        self.put_contact_by(user, record, None).await
    }

    /// Replaces a user's contact record; with `by`, an admin or a service
    /// changing someone else's, audited in the same transaction with the
    /// record before and after.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
    pub async fn put_contact_by(
        &self,
        user: &UserId,
        record: &ContactRecord,
        by: Option<&Actor>,
    ) -> Result<()> {
        let c = &record.contact;
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let before = match by {
            Some(_) => contact_in(&mut tx, user).await?,
            None => None,
        };
        sqlx::query(
            "INSERT INTO contacts (user_id, email, phone, locale, timezone, role, restaurant_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id) DO UPDATE SET email = $2, phone = $3, locale = $4, timezone = $5, \
             role = $6, restaurant_id = $7, updated_at = $8",
        )
        .bind(user.as_str())
        .bind(c.email.clone())
        .bind(c.phone.clone())
        .bind(c.locale.map(|l| l.as_str()))
        .bind(c.timezone.clone())
        .bind(record.role.map(|r| r.as_str()))
        .bind(record.restaurant_id.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(actor) = by {
            let before = before.map(|b| to_json(&b));
            let after = to_json(record);
            let change = Change {
                target: Some(user),
                kind: AuditKind::Contact,
                action: "update",
                before: before.as_ref(),
                after: Some(&after),
            };
            audit::record(&mut tx, actor, change, now).await?;
        }
        // The role or restaurant may have changed: group membership too.
        self.commit_change(tx, &DirectoryChange::membership(user))
            .await
    }

    /// A user's preferences; defaults when they never set any.
    pub async fn preferences(&self, user: &UserId) -> Result<Preferences> {
        let row = sqlx::query("SELECT document FROM preferences WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await?;
        match row {
            None => Ok(Preferences::default()),
            Some(r) => parse_preferences(&r.try_get::<String, _>("document")?),
        }
    }

    pub async fn put_preferences(&self, user: &UserId, prefs: &Preferences) -> Result<()> {
        self.put_preferences_by(user, prefs, None, None).await
    }

    /// Replaces a user's preferences and, when given, the locale of their
    /// contact details, in one transaction. With `by` (an admin changing
    /// someone else's) the change is audited in it too, before and after
    /// as `GET …/preferences` shows them (the document and the locale).
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
    pub async fn put_preferences_by(
        &self,
        user: &UserId,
        prefs: &Preferences,
        locale: Option<Locale>,
        by: Option<&Actor>,
    ) -> Result<()> {
        let doc = serde_json::to_string(prefs).expect("preferences serialise");
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let before = match by {
            Some(_) => Some(preferences_view_in(&mut tx, user).await?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO preferences (user_id, document, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET document = $2, updated_at = $3",
        )
        .bind(user.as_str())
        .bind(doc)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(locale) = locale {
            sqlx::query(
                "INSERT INTO contacts (user_id, locale, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET locale = $2, updated_at = $3",
            )
            .bind(user.as_str())
            .bind(locale.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(actor) = by {
            let after = preferences_view_in(&mut tx, user).await?;
            let change = Change {
                target: Some(user),
                kind: AuditKind::Preferences,
                action: "update",
                before: before.as_ref(),
                after: Some(&after),
            };
            audit::record(&mut tx, actor, change, now).await?;
        }
        self.commit_change(tx, &DirectoryChange::user(user)).await
    }

    /// Turns `scope` (an event category) × `channel` off in `user`'s
    /// preferences, as their unsubscribe link asks: the category's
    /// override becomes `false`, and an event override that would keep the
    /// channel on for an event of the category goes. Recorded in
    /// `preference_changes` and, when `delivery` is the user's, in that
    /// delivery's trace. Returns whether anything changed (a second click
    /// changes nothing and records nothing).
    ///
    /// Read, change, write by compare-and-set on the stored document, so a
    /// concurrent `PUT` of the preferences is not overwritten.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user, scope, channel = %channel))]
    pub async fn opt_out(
        &self,
        user: &UserId,
        scope: &str,
        channel: herald_core::ChannelKind,
        delivery: Option<herald_core::DeliveryId>,
        now: i64,
    ) -> Result<bool> {
        loop {
            let mut tx = self.write.begin().await?;
            let stored: Option<String> =
                sqlx::query("SELECT document FROM preferences WHERE user_id = $1")
                    .bind(user.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("document"))
                    .transpose()?;
            let mut prefs = match &stored {
                Some(doc) => parse_preferences(doc)?,
                None => Preferences::default(),
            };
            let before = prefs.clone();
            prefs
                .overrides
                .entry(scope.to_owned())
                .or_default()
                .insert(channel, false);
            for (key, channels) in &mut prefs.overrides {
                if herald_core::EventKind::parse(key).is_some_and(|k| k.category() == scope) {
                    channels.remove(&channel);
                }
            }
            prefs.overrides.retain(|_, channels| !channels.is_empty());
            if prefs == before {
                tx.rollback().await?;
                return Ok(false);
            }
            let doc = serde_json::to_string(&prefs).expect("preferences serialise");
            let written = match &stored {
                Some(old) => sqlx::query(
                    "UPDATE preferences SET document = $1, updated_at = $2 \
                     WHERE user_id = $3 AND document = $4",
                )
                .bind(&doc)
                .bind(now)
                .bind(user.as_str())
                .bind(old)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO preferences (user_id, document, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user.as_str())
                .bind(&doc)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if written == 0 {
                // Changed under us: read again.
                tx.rollback().await?;
                continue;
            }
            let delivery = delivery.map(|d| d.to_string());
            sqlx::query(
                "INSERT INTO preference_changes \
                 (user_id, at, source, scope, channel, enabled, delivery_id) \
                 VALUES ($1, $2, 'unsubscribe', $3, $4, 0, $5)",
            )
            .bind(user.as_str())
            .bind(now)
            .bind(scope)
            .bind(channel.as_str())
            .bind(delivery.as_deref())
            .execute(&mut *tx)
            .await?;
            if let Some(delivery) = &delivery {
                sqlx::query(
                    "INSERT INTO delivery_trace \
                     (delivery_id, at, attempt, n, step, provider, outcome, detail, actor) \
                     SELECT id, $1, 0, 0, 'unsubscribe', NULL, NULL, $2, 'recipient' \
                     FROM deliveries WHERE id = $3 AND recipient_id = $4",
                )
                .bind(now)
                .bind(format!(
                    "{scope} × {channel} turned off by the message's unsubscribe link"
                ))
                .bind(delivery)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
            }
            self.commit_change(tx, &DirectoryChange::user(user)).await?;
            return Ok(true);
        }
    }

    /// The changes made to `user`'s preferences other than through the
    /// preferences API (unsubscribe links), oldest first.
    pub async fn preference_changes(&self, user: &UserId) -> Result<Vec<PreferenceChange>> {
        let rows = sqlx::query(
            "SELECT at, source, scope, channel, enabled, delivery_id FROM preference_changes \
             WHERE user_id = $1 ORDER BY at",
        )
        .bind(user.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PreferenceChange {
                    at: r.try_get("at")?,
                    source: r.try_get("source")?,
                    scope: r.try_get("scope")?,
                    channel: r.try_get("channel")?,
                    enabled: r.try_get::<i64, _>("enabled")? != 0,
                    delivery_id: r.try_get("delivery_id")?,
                })
            })
            .collect()
    }

    pub async fn devices(&self, user: &UserId) -> Result<Vec<Device>> {
        let users = BTreeSet::from([user.clone()]);
        Ok(self
            .devices_of(&users)
            .await?
            .remove(user)
            .unwrap_or_default())
    }

    /// The devices of each of `users` (those with none are absent), oldest
    /// first: one query for a batch of deliveries.
    pub async fn devices_of(
        &self,
        users: &BTreeSet<UserId>,
    ) -> Result<HashMap<UserId, Vec<Device>>> {
        let mut out: HashMap<UserId, Vec<Device>> = HashMap::new();
        let ids: Vec<&UserId> = users.iter().collect();
        for chunk in ids.chunks(1_000) {
            let sql = format!(
                "SELECT user_id, id, kind, token, subscription, created_at FROM devices \
                 WHERE user_id IN ({}) ORDER BY created_at, id",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for user in chunk {
                query = query.bind(user.as_str());
            }
            for r in query.fetch_all(&self.read).await? {
                let kind: String = r.try_get("kind")?;
                let subscription: Option<String> = r.try_get("subscription")?;
                let device = Device {
                    id: parse_named(&r, "id")?,
                    kind: device_kind(&kind)?,
                    token: r.try_get("token")?,
                    subscription: subscription
                        .map(|s| serde_json::from_str(&s))
                        .transpose()
                        .map_err(|e| Error::Corrupt(format!("device subscription: {e}")))?,
                    created_at: r.try_get("created_at")?,
                };
                out.entry(UserId(r.try_get("user_id")?))
                    .or_default()
                    .push(device);
            }
        }
        Ok(out)
    }

    /// Registers a device; registering the same token again returns the
    /// existing device (with its subscription refreshed).
    pub async fn add_device(&self, user: &UserId, device: &NewDevice) -> Result<(Device, bool)> {
        self.add_device_by(user, device, None).await
    }

    /// As [`Store::add_device`]; with `by` (an admin or a service adding
    /// someone else's device) audited in the same transaction, the device
    /// masked ([`audit::mask_device`]): `add` for a new device, `update`
    /// for a token registered already.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(user = %user, kind = device.kind.as_str())
    )]
    pub async fn add_device_by(
        &self,
        user: &UserId,
        device: &NewDevice,
        by: Option<&Actor>,
    ) -> Result<(Device, bool)> {
        let now = now_ms();
        let id = DeviceId::new();
        let subscription = device.subscription.as_ref().map(|s| s.to_string());
        let mut tx = self.write.begin().await?;
        let before = match by {
            Some(_) => sqlx::query(
                "SELECT id, kind, created_at FROM devices WHERE user_id = $1 AND token = $2",
            )
            .bind(user.as_str())
            .bind(device.token.clone())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| -> Result<Device> {
                Ok(Device {
                    id: parse_named(&r, "id")?,
                    kind: device_kind(&r.try_get::<String, _>("kind")?)?,
                    token: device.token.clone(),
                    subscription: None,
                    created_at: r.try_get("created_at")?,
                })
            })
            .transpose()?,
            None => None,
        };
        let row = sqlx::query(
            "INSERT INTO devices (id, user_id, kind, token, subscription, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, token) DO UPDATE SET subscription = $5 \
             RETURNING id, created_at",
        )
        .bind(id.to_string())
        .bind(user.as_str())
        .bind(device.kind.as_str())
        .bind(device.token.clone())
        .bind(subscription)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let stored: DeviceId = parse_named(&row, "id")?;
        let added = Device {
            id: stored,
            kind: device.kind,
            token: device.token.clone(),
            subscription: device.subscription.clone(),
            created_at: row.try_get("created_at")?,
        };
        let created = stored == id;
        if let Some(actor) = by {
            let before = before.as_ref().map(audit::mask_device);
            let after = audit::mask_device(&added);
            let change = Change {
                target: Some(user),
                kind: AuditKind::Devices,
                action: if created { "add" } else { "update" },
                before: before.as_ref(),
                after: Some(&after),
            };
            audit::record(&mut tx, actor, change, now).await?;
        }
        self.commit_change(tx, &DirectoryChange::user(user)).await?;
        Ok((added, created))
    }

    pub async fn delete_device(&self, user: &UserId, id: DeviceId) -> Result<bool> {
        self.delete_device_by(user, id, None).await
    }

    /// Removes a device; with `by` (an admin or a service removing someone
    /// else's) audited in the same transaction, the device masked. `false`
    /// when there was no such device (nothing is audited then).
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user, device = %id))]
    pub async fn delete_device_by(
        &self,
        user: &UserId,
        id: DeviceId,
        by: Option<&Actor>,
    ) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM devices WHERE id = $1 AND user_id = $2 \
             RETURNING id, kind, token, created_at",
        )
        .bind(id.to_string())
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = gone else {
            tx.commit().await?;
            return Ok(false);
        };
        if let Some(actor) = by {
            let device = Device {
                id: parse_named(&row, "id")?,
                kind: device_kind(&row.try_get::<String, _>("kind")?)?,
                token: row.try_get("token")?,
                subscription: None,
                created_at: row.try_get("created_at")?,
            };
            let before = audit::mask_device(&device);
            let change = Change {
                target: Some(user),
                kind: AuditKind::Devices,
                action: "remove",
                before: Some(&before),
                after: None,
            };
            audit::record(&mut tx, actor, change, now_ms()).await?;
        }
        self.commit_change(tx, &DirectoryChange::user(user)).await?;
        Ok(true)
    }

    /// Removes the device a provider reported gone (an unregistered FCM
    /// token, an expired Web Push endpoint), returning its id if it was
    /// still there.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
    pub async fn delete_device_by_token(
        &self,
        user: &UserId,
        token: &str,
    ) -> Result<Option<DeviceId>> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND token = $2 RETURNING id")
            .bind(user.as_str())
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let id = parse_named(&row, "id")?;
        self.commit_change(tx, &DirectoryChange::user(user)).await?;
        Ok(Some(id))
    }

    /// Expands group selectors (`role:admin`, `staff:{restaurant}`) to users,
    /// from the contacts directory.
    pub async fn members<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a Selector>,
    ) -> Result<HashMap<Selector, Vec<UserId>>> {
        let mut out = HashMap::new();
        for selector in groups {
            if out.contains_key(selector) {
                continue;
            }
            let rows = match selector {
                Selector::User(_) => continue,
                Selector::Role(role) => {
                    sqlx::query("SELECT user_id FROM contacts WHERE role = $1 ORDER BY user_id")
                        .bind(role.as_str())
                        .fetch_all(&self.read)
                        .await?
                }
                Selector::Staff(restaurant) => sqlx::query(
                    "SELECT user_id FROM contacts WHERE role IN ($1, $2) AND restaurant_id = $3 \
                         ORDER BY user_id",
                )
                .bind(Role::Restaurant.as_str())
                .bind(Role::Cashier.as_str())
                .bind(restaurant.clone())
                .fetch_all(&self.read)
                .await?,
            };
            let users = rows
                .iter()
                .map(|r| r.try_get::<String, _>("user_id").map(UserId))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert(selector.clone(), users);
        }
        Ok(out)
    }

    /// What routing needs to know of each user: preferences, contact
    /// details, whether a push device exists. A user known only by a
    /// registered device counts too (push reaches them). Users Herald has
    /// never heard of are left out (routing treats them as defaults with no
    /// address).
    pub async fn profiles(&self, users: &BTreeSet<UserId>) -> Result<HashMap<UserId, Profile>> {
        let mut out: HashMap<UserId, Profile> = HashMap::new();
        let ids: Vec<&UserId> = users.iter().collect();
        // Bounded IN lists: PostgreSQL allows 65,535 parameters, SQLite 32,766.
        for chunk in ids.chunks(1_000) {
            let list = placeholders(1, chunk.len());
            let sql = format!(
                "SELECT c.user_id, c.email, c.phone, c.locale, c.timezone, p.document, \
                        (SELECT COUNT(*) FROM devices d WHERE d.user_id = c.user_id) AS devices \
                 FROM contacts c LEFT JOIN preferences p ON p.user_id = c.user_id \
                 WHERE c.user_id IN ({list}) \
                 UNION ALL \
                 SELECT p.user_id, NULL, NULL, NULL, NULL, p.document, \
                        (SELECT COUNT(*) FROM devices d WHERE d.user_id = p.user_id) \
                 FROM preferences p \
                 WHERE p.user_id IN ({list}) \
                   AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.user_id = p.user_id) \
                 UNION ALL \
                 SELECT d.user_id, NULL, NULL, NULL, NULL, NULL, COUNT(*) \
                 FROM devices d \
                 WHERE d.user_id IN ({list}) \
                   AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.user_id = d.user_id) \
                   AND NOT EXISTS (SELECT 1 FROM preferences p WHERE p.user_id = d.user_id) \
                 GROUP BY d.user_id"
            );
            let mut query = sqlx::query_as::<_, ProfileRow>(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            for row in query.fetch_all(&self.read).await? {
                out.insert(
                    UserId(row.user_id),
                    Profile {
                        preferences: row
                            .document
                            .as_deref()
                            .map(parse_preferences)
                            .transpose()?
                            .unwrap_or_default(),
                        contact: Contact {
                            email: row.email,
                            phone: row.phone,
                            locale: row.locale.as_deref().and_then(Locale::parse),
                            timezone: row.timezone,
                        },
                        has_device: row.devices > 0,
                    },
                );
            }
        }
        Ok(out)
    }

    /// [`Store::members`] through the directory cache: only groups it does
    /// not hold are read (one query each), and offered back to it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn cached_members<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a Selector>,
    ) -> Result<HashMap<Selector, Vec<UserId>>> {
        let wanted: BTreeSet<Selector> = groups.into_iter().cloned().collect();
        let (mut found, missing, ticket) = self.directory.members(&wanted);
        if !missing.is_empty() {
            let read = self.members(&missing).await?;
            self.directory.offer_members(ticket, &read);
            found.extend(read);
        }
        Ok(found)
    }

    /// [`Store::profiles`] through the directory cache: only users it does
    /// not hold are read (one query), and offered back to it. Ingest plans
    /// with these; the delivery worker reads [`Store::profiles`] again
    /// before it sends.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn cached_profiles(
        &self,
        users: &BTreeSet<UserId>,
    ) -> Result<HashMap<UserId, Profile>> {
        let (mut found, missing, ticket) = self.directory.profiles(users);
        if !missing.is_empty() {
            let read = self.profiles(&missing).await?;
            self.directory.offer_profiles(ticket, &missing, &read);
            found.extend(read);
        }
        Ok(found)
    }

    /// Ends a transaction that changed the directory: announces `change`
    /// in it (other nodes hear it when it commits), commits, and applies
    /// it to this node's cache. Applied even when the commit fails: a
    /// commit whose answer was lost may have happened.
    pub(crate) async fn commit_change(
        &self,
        mut tx: Transaction<'_, Any>,
        change: &DirectoryChange,
    ) -> Result<()> {
        cache::announce(&mut tx, change).await?;
        let done = tx.commit().await;
        self.directory.invalidate(change);
        done?;
        Ok(())
    }
}

/// A contact as [`Store::contact`] reads it.
#[derive(Debug, sqlx::FromRow)]
struct ContactRow {
    email: Option<String>,
    phone: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    role: Option<String>,
    restaurant_id: Option<String>,
}

impl ContactRow {
    fn record(self) -> ContactRecord {
        ContactRecord {
            contact: Contact {
                email: self.email,
                phone: self.phone,
                locale: self.locale.as_deref().and_then(Locale::parse),
                timezone: self.timezone,
            },
            role: self.role.as_deref().and_then(Role::parse),
            restaurant_id: self.restaurant_id,
        }
    }
}

/// A user as [`Store::profiles`] reads them; the union's column names are
/// its first branch's.
#[derive(Debug, sqlx::FromRow)]
struct ProfileRow {
    user_id: String,
    email: Option<String>,
    phone: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    document: Option<String>,
    devices: i64,
}

fn device_kind(kind: &str) -> Result<DeviceKind> {
    match kind {
        "fcm" => Ok(DeviceKind::Fcm),
        "webpush" => Ok(DeviceKind::Webpush),
        other => Err(Error::Corrupt(format!("device kind `{other}`"))),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("records serialise")
}

/// A contact record read inside a transaction.
async fn contact_in(tx: &mut Transaction<'_, Any>, user: &UserId) -> Result<Option<ContactRecord>> {
    let row = sqlx::query_as::<_, ContactRow>(
        "SELECT email, phone, locale, timezone, role, restaurant_id FROM contacts WHERE user_id = $1",
    )
    .bind(user.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(ContactRow::record))
}

/// A user's preferences as `GET …/preferences` shows them (the document,
/// defaults when never set, and the locale), read inside a transaction.
async fn preferences_view_in(tx: &mut Transaction<'_, Any>, user: &UserId) -> Result<Value> {
    let doc = sqlx::query("SELECT document FROM preferences WHERE user_id = $1")
        .bind(user.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get::<String, _>("document"))
        .transpose()?;
    let prefs = doc
        .as_deref()
        .map(parse_preferences)
        .transpose()?
        .unwrap_or_default();
    let locale = contact_in(tx, user)
        .await?
        .and_then(|c| c.contact.locale)
        .map(Locale::as_str);
    let mut view = to_json(&prefs);
    view["locale"] = Value::from(locale);
    Ok(view)
}

fn parse_preferences(doc: &str) -> Result<Preferences> {
    serde_json::from_str(doc).map_err(|e| Error::Corrupt(format!("preferences: {e}")))
}

/// Gives `user` the email address an event named when Herald has none for
/// them; an address on file, set by the user or the platform, is never
/// overwritten. Written in ingest's transaction; returns whether it filled
/// one (the directory changed).
pub(crate) async fn fill_email_in(
    conn: &mut AnyConnection,
    user: &UserId,
    email: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO contacts (user_id, email, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET email = $2, updated_at = $3 \
         WHERE contacts.email IS NULL OR contacts.email = ''",
    )
    .bind(user.as_str())
    .bind(email)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
