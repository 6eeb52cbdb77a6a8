//! The SQLite store: links between partner and HubSpot deals, shadow values, object links,
//! per-portal cursors, the durable job queue, conflict records and portal health.
//!
//! One dedicated thread owns the connection; async code sends it closures through
//! [`Store::call`], so SQLite never blocks a runtime worker. The database runs in WAL mode so
//! `dealsync status` can read while the daemon writes. Schema changes are versioned
//! migrations keyed on `PRAGMA user_version`.
//!
//! The store never holds message bodies of private notes, access tokens or secrets; the one
//! exception is an OAuth install's refresh token (`oauth_installs`), which must survive a
//! restart, and never leaves the store except to HubSpot's token endpoint.

mod installs;
mod labels;
mod queries;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use installs::*;
pub use labels::*;
pub use queries::*;

/// Store failures. All of them are permanent for the job at hand except `Busy`, which the
/// caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}; check that the directory exists and is writable by dealsync")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store at {path} has schema version {found}, newer than this dealsync knows ({known}); upgrade dealsync")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Closed,
    #[error("store data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying later may help (a locked database), as opposed to a broken store.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Task>,
    path: PathBuf,
}

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The migrations, in order. `user_version` = number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
    include_str!("schema_v7.sql"),
];

impl Store {
    /// Opens (creating if needed) the store, applies migrations and recovers jobs that were
    /// running when the process stopped. Only the daemon may do this.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, true).await
    }

    /// Opens the store for a second process beside a daemon that may be running (`dealsync
    /// replay`): jobs marked running belong to that daemon and are left alone.
    pub async fn open_alongside(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, false).await
    }

    async fn open_with(path: &Path, recover: bool) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel::<Task>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("dealsync-store".into())
            .spawn(move || {
                let mut conn = match open_rw(&thread_path, recover) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(task) = rx.recv() {
                    task(&mut conn);
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the store thread: {e}")))?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Store { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn open_rw(path: &Path, recover: bool) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    restrict_permissions(path);
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    migrate(&conn, path)?;
    if recover {
        queries::recover_running_jobs(&conn)?;
    }
    Ok(conn)
}

/// Opens the store read-only (for `dealsync status` while the daemon runs).
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The store holds deal ids and shadow values: owner-only, like the dead-letter file.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) {}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
