-- The webhook inbox: one row per accepted event, written in the same transaction as the jobs
-- it queues and before the listener answers 2xx. The primary key drops HubSpot's retries of
-- an event already accepted. No property values are kept (a value may be a note body).
CREATE TABLE webhook_events (
    portal TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    subscription_type TEXT NOT NULL,
    object_id TEXT,
    occurred_at INTEGER,
    -- queued | echo | unlinked | ignored
    outcome TEXT NOT NULL,
    PRIMARY KEY (portal, event_id)
) WITHOUT ROWID;
CREATE INDEX webhook_events_received ON webhook_events (received_at);

ALTER TABLE portal_health ADD COLUMN last_poll_change INTEGER;
ALTER TABLE portal_health ADD COLUMN webhook_events INTEGER NOT NULL DEFAULT 0;
