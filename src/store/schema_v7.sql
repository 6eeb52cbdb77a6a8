-- OAuth installs of the operator's project app (issue 15 item 3). One row per configured
-- portal that has installed the app: HubSpot's portal id (hub_id) it is bound to and its
-- refresh token, the only secret the store holds (the file is owner-only). `state` is
-- `active` or `revoked` (HubSpot refused the refresh token: the app was uninstalled or the
-- install revoked); a revoked portal's jobs wait until it is installed again.
CREATE TABLE oauth_installs (
    portal TEXT PRIMARY KEY,
    hub_id INTEGER NOT NULL UNIQUE,
    refresh_token TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'active',
    installed_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Install links handed out and not yet used: the `state` parameter, the portal it installs
-- and the PKCE verifier its code must be exchanged with. Single use; old ones are refused.
CREATE TABLE oauth_pending (
    state TEXT PRIMARY KEY,
    portal TEXT NOT NULL,
    verifier TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
