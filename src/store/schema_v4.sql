-- Shared messages and their files, object by object (issue 5). For a message the origin is
-- the original note (`portal:id`); for a file, the original file, with `parent` naming the
-- origin of the message it belongs to. `shadow` is the SHA-256 of the body both sides last
-- agreed on (a hash, so the store never holds message text); `partner_ms`/`hubspot_ms` are
-- each side's hs_lastmodifieddate when last synced, which lets polling recognise our own
-- writes and lets a job skip reading bodies that did not change.
ALTER TABLE object_links ADD COLUMN parent TEXT;
ALTER TABLE object_links ADD COLUMN shadow TEXT;
ALTER TABLE object_links ADD COLUMN partner_ms INTEGER;
ALTER TABLE object_links ADD COLUMN hubspot_ms INTEGER;
CREATE INDEX object_links_partner ON object_links (partner_object_id);
CREATE INDEX object_links_hubspot ON object_links (hubspot_object_id);
