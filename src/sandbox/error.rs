//! HubSpot-shaped error answers. Every error the sandbox sends has `status`, `message`,
//! `correlationId` and `category`, like HubSpot's, so clients are tested against real shapes.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// One error answer. Built by handlers, turned into a response with HubSpot's body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub category: &'static str,
    pub message: String,
    pub sub_category: Option<String>,
    pub errors: Vec<Value>,
    pub context: Option<Value>,
    /// Extra top-level fields (rate-limit answers carry `errorType` and `policyName`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            category,
            message: message.into(),
            sub_category: None,
            errors: Vec::new(),
            context: None,
            extra: Map::new(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and \
             you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        )
    }

    pub fn with_errors(mut self, errors: Vec<Value>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }

    pub fn with_sub_category(mut self, sub: impl Into<String>) -> Self {
        self.sub_category = Some(sub.into());
        self
    }

    /// A 429 with HubSpot's rate-limit body for the given policy.
    pub fn rate_limited(policy: &'static str, message: &str) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITS", message);
        e.extra.insert("errorType".into(), json!("RATE_LIMIT"));
        e.extra.insert("policyName".into(), json!(policy));
        e.extra
            .insert("requestId".into(), json!(uuid::Uuid::new_v4().to_string()));
        e
    }

    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), json!("error"));
        m.insert("message".into(), json!(self.message));
        m.insert(
            "correlationId".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
        m.insert("category".into(), json!(self.category));
        if let Some(s) = &self.sub_category {
            m.insert("subCategory".into(), json!(s));
        }
        if !self.errors.is_empty() {
            m.insert("errors".into(), Value::Array(self.errors.clone()));
        }
        if let Some(c) = &self.context {
            m.insert("context".into(), c.clone());
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// The per-input error form used inside batch answers (`StandardError`).
    pub fn standard_error(&self, context: Value) -> Value {
        json!({
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": context,
            "errors": self.errors,
            "links": {},
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=utf-8"),
        );
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The error for a property that does not exist, in HubSpot's `Property values were not valid`
/// frame.
pub fn invalid_properties(problems: Vec<PropertyProblem>) -> ApiError {
    let details: Vec<Value> = problems
        .iter()
        .map(|p| {
            json!({
                "isValid": false,
                "message": p.message,
                "error": p.code,
                "name": p.name,
                "localizedErrorMessage": p.message,
            })
        })
        .collect();
    let message = format!(
        "Property values were not valid: {}",
        serde_json::to_string(&details).unwrap_or_default()
    );
    let errors = problems
        .iter()
        .map(|p| {
            json!({
                "message": p.message,
                "code": p.code,
                "context": { "propertyName": [p.name] },
            })
        })
        .collect();
    ApiError::validation(message).with_errors(errors)
}

/// One invalid property value.
#[derive(Debug, Clone)]
pub struct PropertyProblem {
    pub name: String,
    pub code: &'static str,
    pub message: String,
}
