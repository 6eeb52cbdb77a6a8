//! Errors from HubSpot calls, classified once: transient (retry later) or permanent (dead
//! letter). Messages carry the portal, the call and HubSpot's own message, never a token.

use std::time::Duration;

use serde::Serialize;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Permanent,
    /// Waiting for an operator, not failing: the portal's OAuth install is missing or was
    /// revoked. Work is kept and retried slowly, never dead-lettered.
    Held,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CrmError {
    /// HubSpot answered with an error status.
    #[error("{portal}: {call} answered {status} {category}: {message}")]
    Http {
        portal: String,
        call: String,
        status: u16,
        category: String,
        message: String,
        /// How long HubSpot asks us to wait (429), when known.
        retry_after: Option<Duration>,
    },
    #[error("{portal}: {call} timed out")]
    Timeout { portal: String, call: String },
    #[error("{portal}: {call} could not connect: {detail}")]
    Connect {
        portal: String,
        call: String,
        detail: String,
    },
    #[error("{portal}: {call} returned a body dealsync cannot read: {detail}")]
    Decode {
        portal: String,
        call: String,
        detail: String,
    },
    /// The portal's OAuth install is missing or revoked (the detail says what to do).
    #[error("{detail}")]
    AuthRevoked { portal: String, detail: String },
}

impl CrmError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CrmError::Http { status, .. } if *status == 429 || *status >= 500 => {
                ErrorClass::Transient
            }
            // 408 (request timeout) and 423 (locked) are HubSpot's way of saying "later".
            CrmError::Http {
                status: 408 | 423, ..
            } => ErrorClass::Transient,
            CrmError::Http { .. } => ErrorClass::Permanent,
            CrmError::Timeout { .. } | CrmError::Connect { .. } => ErrorClass::Transient,
            // A garbled body is usually a proxy's error page: worth another try.
            CrmError::Decode { .. } => ErrorClass::Transient,
            CrmError::AuthRevoked { .. } => ErrorClass::Held,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CrmError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}
