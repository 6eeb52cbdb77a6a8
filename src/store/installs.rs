//! OAuth installs and the install links waiting to be used (schema v7).
//!
//! Invariants: a HubSpot portal id is bound to at most one configured portal (`hub_id` is
//! unique); a rotated refresh token is written here before the access token that came with
//! it is used, so a crash never leaves dealsync holding only a token HubSpot has retired.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, StoreError};

/// Whether an install can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallState {
    Active,
    /// HubSpot refused the refresh token: the app was uninstalled or the install revoked.
    Revoked,
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Active => "active",
            InstallState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> InstallState {
        match s {
            "active" => InstallState::Active,
            _ => InstallState::Revoked,
        }
    }
}

/// One portal's install. `Debug` leaves the refresh token out.
#[derive(Clone)]
pub struct Install {
    pub portal: String,
    pub hub_id: u64,
    pub refresh_token: String,
    pub scopes: String,
    pub state: InstallState,
    pub installed_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Install {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Install")
            .field("portal", &self.portal)
            .field("hub_id", &self.hub_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Why an install could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("HubSpot portal {hub_id} is already installed as {bound}; a portal can be only one configured portal (uninstall it there, or send {portal}'s install link to the right account)")]
    TakenBy {
        hub_id: u64,
        bound: String,
        portal: String,
    },
    #[error("{portal} is already installed from HubSpot portal {bound}, not {hub_id}; the install link was opened in the wrong account")]
    OtherPortal {
        portal: String,
        bound: u64,
        hub_id: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const COLUMNS: &str = "portal, hub_id, refresh_token, scopes, state, installed_at, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Install> {
    Ok(Install {
        portal: r.get(0)?,
        hub_id: r.get::<_, i64>(1)? as u64,
        refresh_token: r.get(2)?,
        scopes: r.get(3)?,
        state: InstallState::parse(&r.get::<_, String>(4)?),
        installed_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

pub fn install(c: &Connection, portal: &str) -> Result<Option<Install>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM oauth_installs WHERE portal = ?1"),
        [portal],
        row,
    )
    .optional()?)
}

pub fn installs(c: &Connection) -> Result<Vec<Install>, StoreError> {
    let mut st = c.prepare(&format!(
        "SELECT {COLUMNS} FROM oauth_installs ORDER BY portal"
    ))?;
    let rows = st.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Binds `hub_id` to `portal` with its refresh token. Re-installing the same portal from the
/// same account replaces the token (and lifts a revocation); anything else is refused.
pub fn bind_install(
    c: &mut Connection,
    portal: &str,
    hub_id: u64,
    refresh_token: &str,
    scopes: &str,
) -> Result<(), BindError> {
    let tx = c.transaction().map_err(StoreError::from)?;
    let holder: Option<String> = tx
        .query_row(
            "SELECT portal FROM oauth_installs WHERE hub_id = ?1",
            [hub_id as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    if let Some(bound) = holder.filter(|b| b != portal) {
        return Err(BindError::TakenBy {
            hub_id,
            bound,
            portal: portal.to_owned(),
        });
    }
    if let Some(existing) = install(&tx, portal)? {
        if existing.hub_id != hub_id && existing.state == InstallState::Active {
            return Err(BindError::OtherPortal {
                portal: portal.to_owned(),
                bound: existing.hub_id,
                hub_id,
            });
        }
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO oauth_installs (portal, hub_id, refresh_token, scopes, state, installed_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5)
         ON CONFLICT (portal) DO UPDATE SET hub_id = ?2, refresh_token = ?3, scopes = ?4,
             state = 'active', installed_at = ?5, updated_at = ?5",
        params![portal, hub_id as i64, refresh_token, scopes, now],
    )
    .map_err(StoreError::from)?;
    tx.commit().map_err(StoreError::from)?;
    Ok(())
}

/// Keeps a rotated refresh token.
pub fn set_refresh_token(c: &Connection, portal: &str, token: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE oauth_installs SET refresh_token = ?2, updated_at = ?3 WHERE portal = ?1",
        params![portal, token, now_ms()],
    )?;
    Ok(())
}

/// Marks an install revoked (HubSpot refused its refresh token).
pub fn revoke_install(c: &Connection, portal: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE oauth_installs SET state = 'revoked', updated_at = ?2 WHERE portal = ?1",
        params![portal, now_ms()],
    )?;
    Ok(())
}

/// How long an install link stays valid.
pub const PENDING_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// Records an install link handed out (and forgets links older than [`PENDING_TTL_MS`]).
pub fn add_pending(
    c: &Connection,
    state: &str,
    portal: &str,
    verifier: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    c.execute(
        "DELETE FROM oauth_pending WHERE created_at < ?1",
        [now - PENDING_TTL_MS],
    )?;
    c.execute(
        "INSERT INTO oauth_pending (state, portal, verifier, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![state, portal, verifier, now],
    )?;
    Ok(())
}

/// Takes (and forgets) an install link by its `state`: `(portal, verifier)`, or `None` when
/// the state is unknown, used already or expired.
pub fn take_pending(c: &Connection, state: &str) -> Result<Option<(String, String)>, StoreError> {
    let found: Option<(String, String, i64)> = c
        .query_row(
            "DELETE FROM oauth_pending WHERE state = ?1 RETURNING portal, verifier, created_at",
            [state],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(found
        .filter(|(_, _, at)| *at >= now_ms() - PENDING_TTL_MS)
        .map(|(p, v, _)| (p, v)))
}
