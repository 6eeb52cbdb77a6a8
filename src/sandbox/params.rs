//! Request parsing that answers bad input the way HubSpot does (a JSON 400 or 413), never with
//! a framework's plain-text rejection or a panic.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::model::ObjectType;

/// Query parameters in order. Repeated keys and comma-separated values are both accepted for
/// list parameters, as HubSpot accepts both.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::validation(format!(
                "Unable to process request: {key}={v} is not a boolean (use true or false)"
            ))),
        }
    }

    /// A `limit` parameter with HubSpot's default and maximum.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::validation(format!(
                    "limit must be a whole number between 1 and {max}, got {v}"
                ))),
            },
        }
    }
}

/// A JSON body parsed into `T`; malformed JSON, wrong types and oversized bodies become
/// HubSpot-shaped 400 and 413 answers.
pub struct Json<T>(pub T);

/// Largest body a JSON endpoint reads (set from the sandbox config at router build).
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(3 * 1024 * 1024);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large(limit))?;
        parse_json(&bytes).map(Json)
    }
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "VALIDATION_ERROR",
        format!(
            "Request body is larger than the limit of {limit} bytes; send fewer inputs per call"
        ),
    )
}

pub fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::validation(
            "Invalid input JSON: the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::validation(format!("Invalid input JSON: {e}"))
        } else {
            ApiError::validation(format!(
                "Invalid input JSON on line {}, column {}: {e}",
                e.line(),
                e.column()
            ))
        }
    })
}

/// Parses an object type path segment, answering HubSpot's 400 for unknown types.
pub fn object_type(s: &str) -> Result<ObjectType, ApiError> {
    ObjectType::parse(s).ok_or_else(|| {
        ApiError::validation(format!(
            "Unable to infer object type from: {s}; the sandbox serves contacts, companies, deals, notes, tasks and quotes"
        ))
    })
}
