//! The one place that knows HubSpot's URL paths: an [`Op`] (what dealsync asks for) becomes a
//! path under the API version configured for its [`Surface`].
//!
//! Since 2026-03-30 HubSpot's REST API is date-versioned (`/crm/objects/2026-09/deals`); the
//! v4 associations paths are unsupported from 2027-03-30 and every v1–v3 path from September
//! 2027 (developer changelog "Legacy APIs and Apps: What's Going Unsupported and When"; docs
//! "Legacy API migration guide"). [`ApiVersion::Legacy`] keeps the v3/v4 paths for a portal
//! during its migration window and nothing else.
//!
//! Invariant: no other module of the client spells a path. Callers append query strings only.

use std::collections::BTreeMap;
use std::fmt;

/// One version of one API surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiVersion {
    /// The v3 (objects, properties, pipelines, owners, files) and v4 (associations) paths.
    Legacy,
    V2026_03,
    V2026_09,
}

impl ApiVersion {
    /// Every version dealsync knows, oldest first.
    pub const ALL: [ApiVersion; 3] = [
        ApiVersion::Legacy,
        ApiVersion::V2026_03,
        ApiVersion::V2026_09,
    ];

    pub fn parse(s: &str) -> Option<ApiVersion> {
        ApiVersion::ALL.into_iter().find(|v| v.as_str() == s.trim())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::Legacy => "legacy",
            ApiVersion::V2026_03 => "2026-03",
            ApiVersion::V2026_09 => "2026-09",
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group of endpoints HubSpot versions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Surface {
    /// CRM objects: CRUD, batch, search.
    Objects,
    Associations,
    Properties,
    Pipelines,
    Owners,
    Files,
}

impl Surface {
    pub const ALL: [Surface; 6] = [
        Surface::Objects,
        Surface::Associations,
        Surface::Properties,
        Surface::Pipelines,
        Surface::Owners,
        Surface::Files,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Surface::Objects => "objects",
            Surface::Associations => "associations",
            Surface::Properties => "properties",
            Surface::Pipelines => "pipelines",
            Surface::Owners => "owners",
            Surface::Files => "files",
        }
    }

    /// Why a version cannot serve this surface for dealsync, if it cannot: the 2026-09 files
    /// API has no upload and no signed URL (only `files-2026-03.json` documents them).
    fn lacks(self, v: ApiVersion) -> Option<&'static str> {
        match (self, v) {
            (Surface::Files, ApiVersion::V2026_09) => Some(
                "HubSpot's 2026-09 files API has no upload or signed-URL endpoint; use 2026-03",
            ),
            _ => None,
        }
    }

    /// The newest version with every endpoint dealsync calls on this surface.
    fn newest(self) -> ApiVersion {
        ApiVersion::ALL
            .into_iter()
            .rev()
            .find(|v| self.lacks(*v).is_none())
            .unwrap_or(ApiVersion::Legacy)
    }
}

/// The version each surface is called at, for one portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersions {
    pub objects: ApiVersion,
    pub associations: ApiVersion,
    pub properties: ApiVersion,
    pub pipelines: ApiVersion,
    pub owners: ApiVersion,
    pub files: ApiVersion,
}

impl Default for ApiVersions {
    /// The newest version of each surface that has every endpoint dealsync needs.
    fn default() -> Self {
        ApiVersions::resolve(ApiVersion::V2026_09, &BTreeMap::new())
            .unwrap_or_else(|_| ApiVersions::all(ApiVersion::Legacy))
    }
}

/// A version setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct VersionError {
    pub key: String,
    pub why: String,
}

impl ApiVersions {
    /// Every surface at one version.
    pub fn all(v: ApiVersion) -> ApiVersions {
        ApiVersions {
            objects: v,
            associations: v,
            properties: v,
            pipelines: v,
            owners: v,
            files: v,
        }
    }

    /// The versions for `api_version` (each surface at that version, or at the newest older
    /// one that has every endpoint dealsync needs), then `overrides` (surface name -> version
    /// text) applied on top. An override naming a version that lacks an endpoint is an error.
    pub fn resolve(
        api_version: ApiVersion,
        overrides: &BTreeMap<String, String>,
    ) -> Result<ApiVersions, VersionError> {
        let mut out = ApiVersions::all(api_version);
        for s in Surface::ALL {
            if s.lacks(api_version).is_some() {
                out.set(s, s.newest().min(api_version));
            }
        }
        for (name, text) in overrides {
            let key = format!("api_versions.{name}");
            let surface = Surface::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| VersionError {
                    key: key.clone(),
                    why: format!("unknown API surface; use one of {}", surface_names()),
                })?;
            let v = parse_version(&key, text)?;
            if let Some(why) = surface.lacks(v) {
                return Err(VersionError {
                    key,
                    why: why.into(),
                });
            }
            out.set(surface, v);
        }
        Ok(out)
    }

    pub fn get(&self, s: Surface) -> ApiVersion {
        match s {
            Surface::Objects => self.objects,
            Surface::Associations => self.associations,
            Surface::Properties => self.properties,
            Surface::Pipelines => self.pipelines,
            Surface::Owners => self.owners,
            Surface::Files => self.files,
        }
    }

    fn set(&mut self, s: Surface, v: ApiVersion) {
        match s {
            Surface::Objects => self.objects = v,
            Surface::Associations => self.associations = v,
            Surface::Properties => self.properties = v,
            Surface::Pipelines => self.pipelines = v,
            Surface::Owners => self.owners = v,
            Surface::Files => self.files = v,
        }
    }

    /// Whether any surface still uses the paths HubSpot retires.
    pub fn uses_legacy(&self) -> bool {
        Surface::ALL
            .into_iter()
            .any(|s| self.get(s) == ApiVersion::Legacy)
    }

    /// "objects 2026-09, …, files 2026-03", for status and logs.
    pub fn describe(&self) -> String {
        Surface::ALL
            .into_iter()
            .map(|s| format!("{} {}", s.name(), self.get(s)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The path of one operation (no query string).
    pub fn path(&self, op: &Op<'_>) -> String {
        let v = self.get(op.surface());
        match *op {
            Op::Objects { object } => objects(v, object),
            Op::Object { object, id } => format!("{}/{id}", objects(v, object)),
            Op::Batch { object, action } => {
                format!("{}/batch/{}", objects(v, object), action.as_str())
            }
            Op::Search { object } => format!("{}/search", objects(v, object)),
            Op::AssociationBatch { from, to, action } => {
                let base = match v {
                    ApiVersion::Legacy => format!("/crm/v4/associations/{from}/{to}"),
                    v => format!("/crm/associations/{v}/{from}/{to}"),
                };
                format!("{base}/batch/{}", action.as_str())
            }
            Op::Properties { object } => properties(v, object),
            Op::Property { object, name } => format!("{}/{name}", properties(v, object)),
            Op::PropertyGroups { object } => format!("{}/groups", properties(v, object)),
            Op::Pipeline { object, id } => match v {
                ApiVersion::Legacy => format!("/crm/v3/pipelines/{object}/{id}"),
                v => format!("/crm/pipelines/{v}/{object}/{id}"),
            },
            Op::Owners => match v {
                ApiVersion::Legacy => "/crm/v3/owners".into(),
                v => format!("/crm/owners/{v}"),
            },
            Op::Files => files(v),
            Op::File { id } => format!("{}/{id}", files(v)),
            Op::FileSignedUrl { id } => format!("{}/{id}/signed-url", files(v)),
        }
    }
}

fn parse_version(key: &str, text: &str) -> Result<ApiVersion, VersionError> {
    ApiVersion::parse(text).ok_or_else(|| VersionError {
        key: key.to_owned(),
        why: format!(
            "unknown API version {text:?}; use one of {}",
            ApiVersion::ALL.map(ApiVersion::as_str).join(", ")
        ),
    })
}

fn surface_names() -> String {
    Surface::ALL.map(Surface::name).join(", ")
}

fn objects(v: ApiVersion, object: &str) -> String {
    match v {
        ApiVersion::Legacy => format!("/crm/v3/objects/{object}"),
        v => format!("/crm/objects/{v}/{object}"),
    }
}

fn properties(v: ApiVersion, object: &str) -> String {
    match v {
        ApiVersion::Legacy => format!("/crm/v3/properties/{object}"),
        v => format!("/crm/properties/{v}/{object}"),
    }
}

fn files(v: ApiVersion) -> String {
    match v {
        ApiVersion::Legacy => "/files/v3/files".into(),
        v => format!("/files/{v}/files"),
    }
}

/// A batch operation on CRM objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAction {
    Read,
    Create,
    Update,
    Upsert,
    Archive,
}

impl BatchAction {
    fn as_str(self) -> &'static str {
        match self {
            BatchAction::Read => "read",
            BatchAction::Create => "create",
            BatchAction::Update => "update",
            BatchAction::Upsert => "upsert",
            BatchAction::Archive => "archive",
        }
    }
}

/// A batch operation on associations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssocAction {
    Read,
    AssociateDefault,
    Archive,
}

impl AssocAction {
    fn as_str(self) -> &'static str {
        match self {
            AssocAction::Read => "read",
            AssocAction::AssociateDefault => "associate/default",
            AssocAction::Archive => "archive",
        }
    }
}

/// What dealsync asks HubSpot for; [`ApiVersions::path`] spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// List (GET) or create (POST) objects of a type.
    Objects {
        object: &'a str,
    },
    /// Read, update or archive one object.
    Object {
        object: &'a str,
        id: &'a str,
    },
    Batch {
        object: &'a str,
        action: BatchAction,
    },
    Search {
        object: &'a str,
    },
    AssociationBatch {
        from: &'a str,
        to: &'a str,
        action: AssocAction,
    },
    Properties {
        object: &'a str,
    },
    Property {
        object: &'a str,
        name: &'a str,
    },
    PropertyGroups {
        object: &'a str,
    },
    Pipeline {
        object: &'a str,
        id: &'a str,
    },
    Owners,
    /// Upload (POST).
    Files,
    File {
        id: &'a str,
    },
    FileSignedUrl {
        id: &'a str,
    },
}

impl Op<'_> {
    pub fn surface(&self) -> Surface {
        match self {
            Op::Objects { .. } | Op::Object { .. } | Op::Batch { .. } | Op::Search { .. } => {
                Surface::Objects
            }
            Op::AssociationBatch { .. } => Surface::Associations,
            Op::Properties { .. } | Op::Property { .. } | Op::PropertyGroups { .. } => {
                Surface::Properties
            }
            Op::Pipeline { .. } => Surface::Pipelines,
            Op::Owners => Surface::Owners,
            Op::Files | Op::File { .. } | Op::FileSignedUrl { .. } => Surface::Files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op<'static>> {
        vec![
            Op::Objects { object: "deals" },
            Op::Object {
                object: "notes",
                id: "7",
            },
            Op::Batch {
                object: "deals",
                action: BatchAction::Read,
            },
            Op::Batch {
                object: "notes",
                action: BatchAction::Upsert,
            },
            Op::Search { object: "deals" },
            Op::AssociationBatch {
                from: "deals",
                to: "notes",
                action: AssocAction::Read,
            },
            Op::AssociationBatch {
                from: "notes",
                to: "deals",
                action: AssocAction::AssociateDefault,
            },
            Op::Properties { object: "deals" },
            Op::Property {
                object: "notes",
                name: crate::properties::ORIGIN,
            },
            Op::PropertyGroups { object: "deals" },
            Op::Pipeline {
                object: "deals",
                id: "default",
            },
            Op::Owners,
            Op::Files,
            Op::File { id: "9" },
            Op::FileSignedUrl { id: "9" },
        ]
    }

    #[test]
    fn default_is_2026_09_with_files_at_2026_03() {
        let v = ApiVersions::default();
        let paths: Vec<String> = ops().iter().map(|o| v.path(o)).collect();
        assert_eq!(
            paths,
            [
                "/crm/objects/2026-09/deals",
                "/crm/objects/2026-09/notes/7",
                "/crm/objects/2026-09/deals/batch/read",
                "/crm/objects/2026-09/notes/batch/upsert",
                "/crm/objects/2026-09/deals/search",
                "/crm/associations/2026-09/deals/notes/batch/read",
                "/crm/associations/2026-09/notes/deals/batch/associate/default",
                "/crm/properties/2026-09/deals",
                "/crm/properties/2026-09/notes/dealsync_origin",
                "/crm/properties/2026-09/deals/groups",
                "/crm/pipelines/2026-09/deals/default",
                "/crm/owners/2026-09",
                "/files/2026-03/files",
                "/files/2026-03/files/9",
                "/files/2026-03/files/9/signed-url",
            ]
        );
        assert!(!v.uses_legacy());
    }

    #[test]
    fn legacy_keeps_the_v3_and_v4_paths() {
        let v = ApiVersions::resolve(ApiVersion::Legacy, &BTreeMap::new()).unwrap();
        let paths: Vec<String> = ops().iter().map(|o| v.path(o)).collect();
        assert_eq!(paths[0], "/crm/v3/objects/deals");
        assert_eq!(paths[5], "/crm/v4/associations/deals/notes/batch/read");
        assert_eq!(
            paths[6],
            "/crm/v4/associations/notes/deals/batch/associate/default"
        );
        assert_eq!(paths[10], "/crm/v3/pipelines/deals/default");
        assert_eq!(paths[11], "/crm/v3/owners");
        assert_eq!(paths[14], "/files/v3/files/9/signed-url");
        assert!(v.uses_legacy());
        // Every legacy path is a v3 or v4 one: nothing new leaks into a migrating portal.
        assert!(paths
            .iter()
            .all(|p| p.contains("/v3/") || p.contains("/v4/")));
    }

    #[test]
    fn overrides_apply_per_surface_and_refuse_missing_endpoints() {
        let o = BTreeMap::from([("associations".to_owned(), "legacy".to_owned())]);
        let v = ApiVersions::resolve(ApiVersion::V2026_09, &o).unwrap();
        assert_eq!(v.associations, ApiVersion::Legacy);
        assert_eq!(v.objects, ApiVersion::V2026_09);

        let bad = BTreeMap::from([("files".to_owned(), "2026-09".to_owned())]);
        let e = ApiVersions::resolve(ApiVersion::V2026_09, &bad).unwrap_err();
        assert_eq!(e.key, "api_versions.files");
        assert!(e.why.contains("2026-03"), "{e}");

        let unknown = BTreeMap::from([("files".to_owned(), "2025-01".to_owned())]);
        let e = ApiVersions::resolve(ApiVersion::V2026_09, &unknown).unwrap_err();
        assert!(e.why.contains("legacy, 2026-03, 2026-09"), "{e}");

        let surface = BTreeMap::from([("deals".to_owned(), "2026-09".to_owned())]);
        let e = ApiVersions::resolve(ApiVersion::V2026_09, &surface).unwrap_err();
        assert!(e.why.contains("objects, associations"), "{e}");
    }

    #[test]
    fn an_older_dated_version_is_used_as_is() {
        let v = ApiVersions::resolve(ApiVersion::V2026_03, &BTreeMap::new()).unwrap();
        assert_eq!(v, ApiVersions::all(ApiVersion::V2026_03));
    }
}
