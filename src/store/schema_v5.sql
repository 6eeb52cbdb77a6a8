-- Partners added on HubSpot's side whose invitation is not complete yet (issue 7 item 3):
-- what is missing, for `dealsync status`. Removed once the partner deal exists.
CREATE TABLE invitations (
    hubspot_deal_id TEXT PRIMARY KEY,
    partner TEXT,
    missing TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
