-- The mass-deletion guard: when too many of a portal's links look deleted within a window
-- (a broken token or a wiped portal can look like this), destructive changes for that portal
-- stop until an operator runs `dealsync resume --portal P`, which lets deletions through for
-- one window (the operator has checked they are real).
CREATE TABLE deletion_guards (
    portal TEXT PRIMARY KEY,
    tripped_at INTEGER NOT NULL,
    detail TEXT NOT NULL,
    released_at INTEGER
);
-- Links seen deleted (and acted on), per portal, for the guard's window.
CREATE TABLE deletion_events (
    portal TEXT NOT NULL,
    link_id INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX deletion_events_portal ON deletion_events (portal, at);
