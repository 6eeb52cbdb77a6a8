-- Links between a partner deal and a HubSpot deal. A HubSpot deal may be linked to several
-- partners (best_partner_wins); a partner deal to exactly one HubSpot deal.
CREATE TABLE links (
    id INTEGER PRIMARY KEY,
    partner TEXT NOT NULL,
    partner_deal_id TEXT NOT NULL,
    hubspot_deal_id TEXT NOT NULL,
    deal_type TEXT NOT NULL DEFAULT 'channel',
    state TEXT NOT NULL DEFAULT 'active',
    -- hs_lastmodifieddate our own last write produced on each side: a poll that finds exactly
    -- this value is our echo and needs no job.
    partner_written_ms INTEGER,
    hubspot_written_ms INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (partner, partner_deal_id),
    UNIQUE (partner, hubspot_deal_id)
);
CREATE INDEX links_hubspot ON links (hubspot_deal_id);
CREATE INDEX links_state ON links (state);

-- The last value both sides agreed on, per link and field.
CREATE TABLE shadows (
    link_id INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    value TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (link_id, field)
) WITHOUT ROWID;

-- Messages, comments and files linked object by object (origin = portal:object id).
CREATE TABLE object_links (
    id INTEGER PRIMARY KEY,
    link_id INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    partner_object_id TEXT,
    hubspot_object_id TEXT,
    state TEXT NOT NULL DEFAULT 'active',
    note TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (link_id, kind, origin)
);

-- Poll cursors: the highest hs_lastmodifieddate seen per portal.
CREATE TABLE cursors (
    portal TEXT PRIMARY KEY,
    value_ms INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The durable queue: at most one job per link, so events coalesce. A change that arrives
-- while the job runs sets `rerun`, and the job runs again after it finishes.
CREATE TABLE jobs (
    link_id INTEGER PRIMARY KEY REFERENCES links (id) ON DELETE CASCADE,
    state TEXT NOT NULL DEFAULT 'pending',
    rerun INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    enqueued_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed_at INTEGER,
    last_error TEXT
);
CREATE INDEX jobs_due ON jobs (state, due_at);

CREATE TABLE conflicts (
    id INTEGER PRIMARY KEY,
    link_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    partner_value TEXT,
    hubspot_value TEXT,
    winner TEXT NOT NULL,
    policy TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX conflicts_link ON conflicts (link_id);

-- What happened to each link's jobs, for `status --deal`.
CREATE TABLE job_history (
    id INTEGER PRIMARY KEY,
    link_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX job_history_link ON job_history (link_id, at);

CREATE TABLE portal_health (
    portal TEXT PRIMARY KEY,
    last_poll_ok INTEGER,
    last_poll_error TEXT,
    last_poll_error_at INTEGER,
    last_webhook INTEGER,
    changes_seen INTEGER NOT NULL DEFAULT 0
);
