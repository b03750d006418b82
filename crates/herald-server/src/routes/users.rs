//! Per-user settings: preferences, contact details, push devices.
//!
//! Preferences are the user's or an admin's to read and change. Contact
//! details and devices may also be set by a `service` (the platform
//! registering a phone number or an app's FCM token).
//!
//! A change an admin or a service makes to another user's data is audited
//! (`GET /v1/admin/audit`) in the transaction that makes it; a user's own
//! change is not.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::ids::DeviceId;
use herald_core::preferences::Contact;
use herald_core::{Locale, Preferences, Role, UserId, ValidationError};
use herald_store::directory::NewDevice;
use herald_store::{ContactRecord, DeviceKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath, from_value};
use crate::problem::ApiError;
use crate::routes::audit::auditor;
use crate::startup::AppState;

const MAX_TOKEN: usize = 4_096;

/// `GET /v1/users/{userId}/preferences`: the document plus the user's locale.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn get_preferences(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_self_or_admin(&user)?;
    preferences_view(&state, &UserId(user)).await.map(Json)
}

/// `PUT /v1/users/{userId}/preferences`: replaces the document. `locale`,
/// when present, is stored with the contact details (one place for it).
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn put_preferences(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    caller.require_self_or_admin(&user)?;
    let by = auditor(&caller, &user);
    let user = UserId(user);
    let mut body = body;
    let locale = match body.remove("locale") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Locale::parse(&s).ok_or_else(|| {
            ApiError::from(ValidationError::new(
                "locale",
                format!("`{s}` is not ru or en"),
            ))
        })?),
        Some(_) => return Err(ValidationError::new("locale", "must be a string").into()),
    };
    let prefs: Preferences = from_value(Value::Object(body))?;
    prefs.validate()?;
    state
        .store
        .put_preferences_by(&user, &prefs, locale, by.as_ref())
        .await?;
    preferences_view(&state, &user).await.map(Json)
}

async fn preferences_view(state: &AppState, user: &UserId) -> Result<Value, ApiError> {
    let prefs = state.store.preferences(user).await?;
    let locale = state
        .store
        .contact(user)
        .await?
        .and_then(|c| c.contact.locale);
    let mut view = serde_json::to_value(prefs).map_err(ApiError::internal)?;
    view["locale"] = json!(locale);
    Ok(view)
}

/// What `PUT …/contact` accepts. A field left out is cleared, except the
/// directory entry (`role`, `restaurantId`), which is kept.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    locale: Option<Locale>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    restaurant_id: Option<String>,
}

/// `GET /v1/users/{userId}/contact`.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<ContactRecord>, ApiError> {
    caller.require_self_or_operator(&user)?;
    Ok(Json(
        state
            .store
            .contact(&UserId(user))
            .await?
            .unwrap_or_default(),
    ))
}

/// `PUT /v1/users/{userId}/contact`. Users set their own details, and
/// their role and restaurant come from their token; a service or admin may
/// also set `role` and `restaurantId`, which put the user in the groups
/// routing addresses (`role:admin`, `staff:{restaurantId}`).
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn put_contact(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<ContactBody>,
) -> Result<Json<ContactRecord>, ApiError> {
    caller.require_self_or_operator(&user)?;
    let by = auditor(&caller, &user);
    let me = &caller.0;
    let operator = matches!(me.role, Role::Service | Role::Admin);
    if !operator && (body.role.is_some() || body.restaurant_id.is_some()) {
        let field = if body.role.is_some() {
            "role"
        } else {
            "restaurantId"
        };
        return Err(
            ApiError::forbidden("only a service or an admin may set a user's role").field(field),
        );
    }
    let user = UserId(user);
    let existing = state.store.contact(&user).await?.unwrap_or_default();
    let (role, restaurant_id) = if operator && me.user_id != user {
        (
            body.role.or(existing.role),
            body.restaurant_id.or(existing.restaurant_id),
        )
    } else {
        (
            body.role.or(Some(me.role)),
            body.restaurant_id.or_else(|| me.restaurant_id.clone()),
        )
    };
    if role.is_some_and(Role::is_staff) && restaurant_id.is_none() {
        return Err(
            ValidationError::new("restaurantId", "is required for restaurant staff").into(),
        );
    }
    let contact = Contact {
        email: body.email,
        phone: body.phone,
        locale: body.locale,
        timezone: body.timezone,
    };
    contact.validate()?;
    let record = ContactRecord {
        contact,
        role,
        restaurant_id,
    };
    state
        .store
        .put_contact_by(&user, &record, by.as_ref())
        .await?;
    Ok(Json(record))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceBody {
    kind: DeviceKind,
    /// FCM registration token.
    #[serde(default)]
    token: Option<String>,
    /// Web Push subscription, as the browser's `PushSubscription.toJSON()` gives it.
    #[serde(default)]
    subscription: Option<WebPushSubscription>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WebPushSubscription {
    endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiration_time: Option<i64>,
    keys: WebPushKeys,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct WebPushKeys {
    p256dh: String,
    auth: String,
}

/// `GET /v1/users/{userId}/devices`.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_self_or_operator(&user)?;
    let items = state.store.devices(&UserId(user)).await?;
    Ok(Json(json!({ "items": items })))
}

/// `POST /v1/users/{userId}/devices`: 201 for a new device, 200 when the
/// token was registered already.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user))]
pub async fn add_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<DeviceBody>,
) -> Result<Response, ApiError> {
    caller.require_self_or_operator(&user)?;
    let device = match body.kind {
        DeviceKind::Fcm => {
            if body.subscription.is_some() {
                return Err(ValidationError::new("subscription", "is for webpush devices").into());
            }
            let token = body
                .token
                .ok_or_else(|| ApiError::from(ValidationError::new("token", "is required")))?;
            check_text("token", &token)?;
            NewDevice {
                kind: DeviceKind::Fcm,
                token,
                subscription: None,
            }
        }
        DeviceKind::Webpush => {
            if body.token.is_some() {
                return Err(ValidationError::new("token", "is for fcm devices").into());
            }
            let sub = body.subscription.ok_or_else(|| {
                ApiError::from(ValidationError::new("subscription", "is required"))
            })?;
            if !sub.endpoint.starts_with("https://") {
                return Err(
                    ValidationError::new("subscription.endpoint", "must be an https URL").into(),
                );
            }
            check_text("subscription.endpoint", &sub.endpoint)?;
            check_text("subscription.keys.p256dh", &sub.keys.p256dh)?;
            check_text("subscription.keys.auth", &sub.keys.auth)?;
            NewDevice {
                kind: DeviceKind::Webpush,
                token: sub.endpoint.clone(),
                subscription: Some(serde_json::to_value(&sub).map_err(ApiError::internal)?),
            }
        }
    };
    let by = auditor(&caller, &user);
    let (device, created) = state
        .store
        .add_device_by(&UserId(user), &device, by.as_ref())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(device)).into_response())
}

/// `DELETE /v1/users/{userId}/devices/{id}`: 204.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, user = %user, device = %id))]
pub async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((user, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_self_or_operator(&user)?;
    let no_such = || ApiError::not_found("no such device");
    let id: DeviceId = id.parse().map_err(|_| no_such())?;
    let by = auditor(&caller, &user);
    if state
        .store
        .delete_device_by(&UserId(user), id, by.as_ref())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such())
    }
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.len() > MAX_TOKEN {
        return Err(ValidationError::new(field, format!("must be 1 to {MAX_TOKEN} bytes")).into());
    }
    Ok(())
}
