-- Notifications waiting to go out (issue 7 item 9). A job's notices are written in the same
-- transaction as its outcome, so a committed change is never left unannounced; the notifier
-- deletes a row once every channel took it, or marks it `dead` (and dead-letters it) when it
-- runs out of attempts. `notice` is JSON with ids and kinds only: never a note body.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    notice TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    webhook_done INTEGER NOT NULL DEFAULT 0,
    email_done INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX notifications_due ON notifications (state, due_at);

-- Registrations a partner started from its CRM (`dealsync_register`) and dealsync refused:
-- the reason, for `dealsync status`. Removed when the deal registers later.
CREATE TABLE refusals (
    partner TEXT NOT NULL,
    partner_deal_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (partner, partner_deal_id)
);
