//! Which of the note features dealsync relies on a portal offers, set through
//! `PUT /_sandbox/portals/{name}/features`. HubSpot documents none of them for notes
//! (HUBSPOT-API.md §0), so the sandbox can play a portal with all of them (the default) or
//! without any, and `dealsync probe` and the messages suites run against both.
//!
//! The refusals are shaped like HubSpot's validation errors; their exact wording on a real
//! portal is unknown, and dealsync never matches on it (the probe reads the status only).

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::model::ObjectType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Features {
    /// Custom properties can be created on notes.
    pub note_properties: bool,
    /// A custom note property can have `hasUniqueValue` (the key batch upsert matches on).
    pub note_unique_properties: bool,
    /// `POST /crm/objects/{v}/notes/batch/upsert` is served.
    pub note_upsert: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            note_properties: true,
            note_unique_properties: true,
            note_upsert: true,
        }
    }
}

impl Features {
    /// None of the three: the portal dealsync must fall back on.
    pub fn without_note_features() -> Self {
        Features {
            note_properties: false,
            note_unique_properties: false,
            note_upsert: false,
        }
    }

    /// Whether a property of `t` (unique or not) may be created here.
    pub fn check_property(&self, t: ObjectType, unique: bool) -> Result<(), ApiError> {
        if t != ObjectType::Notes {
            return Ok(());
        }
        if !self.note_properties {
            return Err(ApiError::validation(
                "Custom properties are not supported for object type NOTE",
            )
            .with_sub_category("PropertyValidationError.OBJECT_TYPE_NOT_SUPPORTED"));
        }
        if unique && !self.note_unique_properties {
            return Err(ApiError::validation(
                "hasUniqueValue is not supported for properties of object type NOTE",
            )
            .with_sub_category("PropertyValidationError.UNIQUE_VALUE_NOT_SUPPORTED"));
        }
        Ok(())
    }

    /// Whether batch upsert of `t` is served.
    pub fn check_upsert(&self, t: ObjectType) -> Result<(), ApiError> {
        if t == ObjectType::Notes && !self.note_upsert {
            return Err(ApiError::validation(
                "Batch upsert is not supported for object type NOTE",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portal_without_note_features_refuses_only_on_notes() {
        let f = Features::without_note_features();
        assert!(f.check_property(ObjectType::Notes, false).is_err());
        assert!(f.check_upsert(ObjectType::Notes).is_err());
        assert!(f.check_property(ObjectType::Deals, true).is_ok());
        assert!(f.check_upsert(ObjectType::Deals).is_ok());
        let unique_only = Features {
            note_unique_properties: false,
            ..Features::default()
        };
        assert!(unique_only.check_property(ObjectType::Notes, false).is_ok());
        assert!(unique_only.check_property(ObjectType::Notes, true).is_err());
        assert!(Features::default()
            .check_property(ObjectType::Notes, true)
            .is_ok());
    }
}
