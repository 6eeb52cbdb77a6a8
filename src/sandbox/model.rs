//! The sandbox's in-memory CRM: object types, property definitions, records with history,
//! associations, pipelines, owners and files for one portal.
//!
//! Everything here is plain data plus the rules HubSpot enforces on it (validation, unique
//! values, pipelines). It does no I/O, so every rule is testable without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The CRM object types the sandbox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Contacts,
    Companies,
    Deals,
    Notes,
    Tasks,
    Quotes,
}

impl ObjectType {
    pub const ALL: [ObjectType; 6] = [
        ObjectType::Contacts,
        ObjectType::Companies,
        ObjectType::Deals,
        ObjectType::Notes,
        ObjectType::Tasks,
        ObjectType::Quotes,
    ];

    /// Accepts the plural name, the singular name or the type id (`deals`, `deal`, `0-3`).
    pub fn parse(s: &str) -> Option<ObjectType> {
        let s = s.to_ascii_lowercase();
        ObjectType::ALL
            .into_iter()
            .find(|t| t.name() == s || t.singular() == s || t.type_id() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
            ObjectType::Notes => "notes",
            ObjectType::Tasks => "tasks",
            ObjectType::Quotes => "quotes",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contact",
            ObjectType::Companies => "company",
            ObjectType::Deals => "deal",
            ObjectType::Notes => "note",
            ObjectType::Tasks => "task",
            ObjectType::Quotes => "quote",
        }
    }

    pub fn type_id(self) -> &'static str {
        match self {
            ObjectType::Contacts => "0-1",
            ObjectType::Companies => "0-2",
            ObjectType::Deals => "0-3",
            ObjectType::Notes => "0-46",
            ObjectType::Tasks => "0-27",
            ObjectType::Quotes => "0-14",
        }
    }

    /// The properties a read returns when the caller names none.
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Deals => &[
                "dealname",
                "amount",
                "closedate",
                "pipeline",
                "dealstage",
                "createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
            ],
            ObjectType::Contacts => &[
                "email",
                "firstname",
                "lastname",
                "createdate",
                "lastmodifieddate",
                "hs_object_id",
            ],
            ObjectType::Companies => &[
                "name",
                "domain",
                "createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
            ],
            ObjectType::Notes => &[
                "hs_timestamp",
                "hs_createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
            ],
            ObjectType::Tasks => &[
                "hs_task_subject",
                "hs_task_status",
                "hs_timestamp",
                "hs_createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
            ],
            ObjectType::Quotes => &[
                "hs_title",
                "hs_expiration_date",
                "hs_createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
            ],
        }
    }

    /// Properties matched by a search's free-text `query`.
    pub fn query_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Deals => &["dealname"],
            ObjectType::Contacts => &["firstname", "lastname", "email", "phone", "company"],
            ObjectType::Companies => &["name", "domain", "website", "phone"],
            ObjectType::Notes => &["hs_note_body"],
            ObjectType::Tasks => &["hs_task_subject", "hs_task_body"],
            ObjectType::Quotes => &["hs_title"],
        }
    }
}

/// Association category, as HubSpot spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AssocCategory {
    #[serde(rename = "HUBSPOT_DEFINED")]
    HubspotDefined,
    #[serde(rename = "USER_DEFINED")]
    UserDefined,
    #[serde(rename = "INTEGRATOR_DEFINED")]
    IntegratorDefined,
}

impl AssocCategory {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HUBSPOT_DEFINED" => Some(AssocCategory::HubspotDefined),
            "USER_DEFINED" => Some(AssocCategory::UserDefined),
            "INTEGRATOR_DEFINED" => Some(AssocCategory::IntegratorDefined),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AssocCategory::HubspotDefined => "HUBSPOT_DEFINED",
            AssocCategory::UserDefined => "USER_DEFINED",
            AssocCategory::IntegratorDefined => "INTEGRATOR_DEFINED",
        }
    }
}

/// One HubSpot-defined association type: `from -> to` with `type_id`, whose reverse direction
/// is `inverse`. `label` is `Some("Primary")` for the primary-company flavours.
pub struct AssocDef {
    pub from: ObjectType,
    pub to: ObjectType,
    pub type_id: i32,
    pub inverse: i32,
    pub label: Option<&'static str>,
}

use ObjectType as T;
/// HubSpot's own type ids, per direction. The first unlabeled entry for a pair is its default type.
pub const ASSOC_DEFS: &[AssocDef] = &[
    AssocDef {
        from: T::Contacts,
        to: T::Companies,
        type_id: 279,
        inverse: 280,
        label: None,
    },
    AssocDef {
        from: T::Companies,
        to: T::Contacts,
        type_id: 280,
        inverse: 279,
        label: None,
    },
    AssocDef {
        from: T::Contacts,
        to: T::Companies,
        type_id: 1,
        inverse: 2,
        label: Some("Primary"),
    },
    AssocDef {
        from: T::Companies,
        to: T::Contacts,
        type_id: 2,
        inverse: 1,
        label: Some("Primary"),
    },
    AssocDef {
        from: T::Deals,
        to: T::Contacts,
        type_id: 3,
        inverse: 4,
        label: None,
    },
    AssocDef {
        from: T::Contacts,
        to: T::Deals,
        type_id: 4,
        inverse: 3,
        label: None,
    },
    AssocDef {
        from: T::Deals,
        to: T::Companies,
        type_id: 341,
        inverse: 342,
        label: None,
    },
    AssocDef {
        from: T::Companies,
        to: T::Deals,
        type_id: 342,
        inverse: 341,
        label: None,
    },
    AssocDef {
        from: T::Deals,
        to: T::Companies,
        type_id: 5,
        inverse: 6,
        label: Some("Primary"),
    },
    AssocDef {
        from: T::Companies,
        to: T::Deals,
        type_id: 6,
        inverse: 5,
        label: Some("Primary"),
    },
    AssocDef {
        from: T::Deals,
        to: T::Notes,
        type_id: 213,
        inverse: 214,
        label: None,
    },
    AssocDef {
        from: T::Notes,
        to: T::Deals,
        type_id: 214,
        inverse: 213,
        label: None,
    },
    AssocDef {
        from: T::Deals,
        to: T::Tasks,
        type_id: 215,
        inverse: 216,
        label: None,
    },
    AssocDef {
        from: T::Tasks,
        to: T::Deals,
        type_id: 216,
        inverse: 215,
        label: None,
    },
    AssocDef {
        from: T::Deals,
        to: T::Quotes,
        type_id: 63,
        inverse: 64,
        label: None,
    },
    AssocDef {
        from: T::Quotes,
        to: T::Deals,
        type_id: 64,
        inverse: 63,
        label: None,
    },
    AssocDef {
        from: T::Notes,
        to: T::Contacts,
        type_id: 202,
        inverse: 201,
        label: None,
    },
    AssocDef {
        from: T::Contacts,
        to: T::Notes,
        type_id: 201,
        inverse: 202,
        label: None,
    },
    AssocDef {
        from: T::Notes,
        to: T::Companies,
        type_id: 190,
        inverse: 189,
        label: None,
    },
    AssocDef {
        from: T::Companies,
        to: T::Notes,
        type_id: 189,
        inverse: 190,
        label: None,
    },
    AssocDef {
        from: T::Tasks,
        to: T::Contacts,
        type_id: 204,
        inverse: 203,
        label: None,
    },
    AssocDef {
        from: T::Contacts,
        to: T::Tasks,
        type_id: 203,
        inverse: 204,
        label: None,
    },
    AssocDef {
        from: T::Tasks,
        to: T::Companies,
        type_id: 192,
        inverse: 191,
        label: None,
    },
    AssocDef {
        from: T::Companies,
        to: T::Tasks,
        type_id: 191,
        inverse: 192,
        label: None,
    },
    AssocDef {
        from: T::Quotes,
        to: T::Contacts,
        type_id: 69,
        inverse: 70,
        label: None,
    },
    AssocDef {
        from: T::Contacts,
        to: T::Quotes,
        type_id: 70,
        inverse: 69,
        label: None,
    },
    AssocDef {
        from: T::Quotes,
        to: T::Companies,
        type_id: 71,
        inverse: 72,
        label: None,
    },
    AssocDef {
        from: T::Companies,
        to: T::Quotes,
        type_id: 72,
        inverse: 71,
        label: None,
    },
    // Within one type (changelog 2018-09-11): 13 leads from a parent to its child, 14 back.
    // The label names what the target is to the source, as HubSpot's labels endpoint does.
    AssocDef {
        from: T::Companies,
        to: T::Companies,
        type_id: 13,
        inverse: 14,
        label: Some("Child Company"),
    },
    AssocDef {
        from: T::Companies,
        to: T::Companies,
        type_id: 14,
        inverse: 13,
        label: Some("Parent Company"),
    },
];

pub fn assoc_def(from: ObjectType, to: ObjectType, type_id: i32) -> Option<&'static AssocDef> {
    ASSOC_DEFS
        .iter()
        .find(|d| d.from == from && d.to == to && d.type_id == type_id)
}

/// The unlabeled type of a pair; parent/child companies have none, so no default either.
pub fn default_assoc(from: ObjectType, to: ObjectType) -> Option<&'static AssocDef> {
    ASSOC_DEFS
        .iter()
        .find(|d| d.from == from && d.to == to && d.label.is_none())
}

/// The `deal_to_note` style name HubSpot uses in v3 association listings.
pub fn assoc_type_name(from: ObjectType, to: ObjectType) -> String {
    format!("{}_to_{}", from.singular(), to.singular())
}

/// Who made a change, as recorded in property history (`sourceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "INTEGRATION")]
    Integration,
    #[serde(rename = "CRM_UI")]
    CrmUi,
    #[serde(rename = "API")]
    Api,
    #[serde(rename = "IMPORT")]
    Import,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Integration => "INTEGRATION",
            Source::CrmUi => "CRM_UI",
            Source::Api => "API",
            Source::Import => "IMPORT",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "INTEGRATION" => Some(Source::Integration),
            "CRM_UI" => Some(Source::CrmUi),
            "API" => Some(Source::Api),
            "IMPORT" => Some(Source::Import),
            _ => None,
        }
    }
}

/// One historical value of a property. The current value is the last entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hist {
    pub value: String,
    pub ts: i64,
    pub source: Source,
}

/// A CRM record. Computed properties (`hs_object_id`, `createdate`, `hs_lastmodifieddate`, …)
/// are derived from the fields here rather than stored, which keeps 100,000 deals small.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Object {
    pub id: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived_ms: Option<i64>,
    pub props: BTreeMap<Arc<str>, Vec<Hist>>,
}

impl Object {
    pub fn is_archived(&self) -> bool {
        self.archived_ms.is_some()
    }

    /// The value of a stored property as it was at `at` (inclusive); `None` when unset.
    pub fn stored_at(&self, name: &str, at: i64) -> Option<&str> {
        self.props
            .get(name)?
            .iter()
            .rev()
            .find(|h| h.ts <= at)
            .map(|h| h.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The current value of any property, computed ones included; `None` when unset.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_at(name, i64::MAX)
    }

    /// The value of any property as of `at`. Computed timestamps use the latest write at or
    /// before `at`, which is what a lagging search index would show.
    pub fn get_at(&self, name: &str, at: i64) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.to_string()),
            "createdate" | "hs_createdate" => Some(iso(self.created_ms)),
            "hs_lastmodifieddate" | "lastmodifieddate" => {
                Some(iso(self.last_write_at(at).unwrap_or(self.created_ms)))
            }
            _ => self.stored_at(name, at).map(str::to_owned),
        }
    }

    /// A date property HubSpot keeps itself, in ms, as it was at `at`: what search compares
    /// and sorts by without formatting and parsing it back for every record (at 100,000 deals
    /// that round trip was most of a search's time).
    pub fn time_at(&self, name: &str, at: i64) -> Option<i64> {
        match name {
            "createdate" | "hs_createdate" => Some(self.created_ms),
            "hs_lastmodifieddate" | "lastmodifieddate" => {
                Some(self.last_write_at(at).unwrap_or(self.created_ms))
            }
            _ => None,
        }
    }

    /// `updatedAt` as it was at `at`.
    pub fn updated_at(&self, at: i64) -> i64 {
        self.last_write_at(at).unwrap_or(self.created_ms)
    }

    fn last_write_at(&self, at: i64) -> Option<i64> {
        if at >= self.updated_ms {
            return Some(self.updated_ms);
        }
        self.props
            .values()
            .flat_map(|h| h.iter().map(|e| e.ts))
            .filter(|ts| *ts <= at)
            .max()
    }

    /// History of a property, newest first, as `propertiesWithHistory` lists it.
    pub fn history(&self, name: &str) -> Vec<&Hist> {
        self.props
            .get(name)
            .map(|h| h.iter().rev().collect())
            .unwrap_or_default()
    }
}

pub use crate::time::{iso, parse_time_ms};

/// A property definition (`/crm/v3/properties`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PropertyDef {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub ptype: String,
    pub field_type: String,
    pub group_name: String,
    pub description: String,
    pub options: Vec<OptionDef>,
    pub has_unique_value: bool,
    pub hubspot_defined: bool,
    pub read_only_value: bool,
    pub display_order: i64,
    pub hidden: bool,
    pub form_field: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptionDef {
    pub label: String,
    pub value: String,
    pub hidden: bool,
    pub display_order: i64,
    pub description: String,
}

/// The (type, fieldType) pairs HubSpot accepts.
pub fn valid_type_pair(ptype: &str, field_type: &str) -> bool {
    matches!(
        (ptype, field_type),
        (
            "string",
            "text" | "textarea" | "html" | "phonenumber" | "file"
        ) | ("number", "number" | "calculation_equation")
            | ("date" | "datetime", "date")
            | (
                "enumeration",
                "select" | "radio" | "checkbox" | "booleancheckbox"
            )
            | ("bool", "booleancheckbox" | "calculation_equation")
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupDef {
    pub name: String,
    pub label: String,
    pub display_order: i64,
    pub archived: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: String,
    pub label: String,
    pub display_order: i64,
    pub archived: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub id: String,
    pub label: String,
    pub display_order: i64,
    pub metadata: BTreeMap<String, String>,
    pub archived: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub user_id: i64,
    pub created_ms: i64,
}

/// An uploaded file. Content is kept in memory (and in the state file, base64) — the sandbox
/// is a test bed, not a file store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRec {
    pub id: u64,
    pub name: String,
    pub extension: String,
    pub path: String,
    pub folder_path: String,
    pub access: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived_ms: Option<i64>,
    #[serde(with = "b64")]
    pub content: bytes::Bytes,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(bytes::Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// The (category, type id) pairs of one association.
pub type AssocTypes = Vec<(AssocCategory, i32)>;

/// Key of one side of an association.
pub type ObjKey = (ObjectType, u64);

/// All CRM data of one portal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalData {
    pub next_id: u64,
    pub objects: BTreeMap<ObjectType, BTreeMap<u64, Object>>,
    pub properties: BTreeMap<ObjectType, BTreeMap<String, PropertyDef>>,
    pub groups: BTreeMap<ObjectType, BTreeMap<String, GroupDef>>,
    pub pipelines: BTreeMap<ObjectType, Vec<Pipeline>>,
    pub owners: Vec<Owner>,
    pub files: BTreeMap<u64, FileRec>,
    /// Directed edges: `from -> to -> {(category, typeId)}`. Both directions are stored.
    #[serde(with = "assoc_serde")]
    pub assoc: HashMap<ObjKey, BTreeMap<ObjKey, BTreeSet<(AssocCategory, i32)>>>,
    /// Unique-value index: (type, property) -> value -> object id.
    #[serde(skip)]
    pub unique: HashMap<(ObjectType, String), HashMap<String, u64>>,
    #[serde(skip)]
    pub interned: HashMap<String, Arc<str>>,
}

mod assoc_serde {
    use super::*;
    use serde::{Deserializer, Serializer};
    type Edge = (ObjKey, ObjKey, AssocCategory, i32);
    type Map = HashMap<ObjKey, BTreeMap<ObjKey, BTreeSet<(AssocCategory, i32)>>>;
    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        let mut edges: Vec<Edge> = Vec::new();
        for (from, tos) in m {
            for (to, types) in tos {
                for (c, t) in types {
                    edges.push((*from, *to, *c, *t));
                }
            }
        }
        edges.sort();
        edges.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let edges: Vec<Edge> = Vec::deserialize(d)?;
        let mut m: Map = HashMap::new();
        for (from, to, c, t) in edges {
            m.entry(from)
                .or_default()
                .entry(to)
                .or_default()
                .insert((c, t));
        }
        Ok(m)
    }
}
