-- Kokoa control-plane schema, version 5: fleet health.
-- Same conventions as 0001 (TEXT ids, BIGINT milliseconds); same SQL on both engines.

-- A node's state as control's health checker judges it, with the reason and since when. It
-- replaces the `status` column of 0001 (pending/healthy/unhealthy), which stays in the table
-- (SQLite cannot change a column's CHECK in place) but is no longer read or written.
--   enrolling: created, has not connected yet (or not yet passed its first checks);
--   online:    connected, heart-beating, passing its checks;
--   degraded:  serving, but something needs attention (a failing check that does not stop
--              traffic, a rejected config, a tunnel peer or a service down);
--   offline:   not serving: its public listener fails its probes, or it stopped heart-beating;
--   draining:  shutting down or drained by an operator: takes no new traffic.
ALTER TABLE edge_nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'enrolling'
    CHECK (state IN ('enrolling', 'online', 'degraded', 'offline', 'draining'));
ALTER TABLE edge_nodes ADD COLUMN state_reason TEXT;
ALTER TABLE edge_nodes ADD COLUMN state_since BIGINT;
ALTER TABLE origins ADD COLUMN state TEXT NOT NULL DEFAULT 'enrolling'
    CHECK (state IN ('enrolling', 'online', 'degraded', 'offline', 'draining'));
ALTER TABLE origins ADD COLUMN state_reason TEXT;
ALTER TABLE origins ADD COLUMN state_since BIGINT;

-- An operator's drain of an edge: withdrawn from DNS, kept running (1) until undrained (0).
ALTER TABLE edge_nodes ADD COLUMN draining BIGINT NOT NULL DEFAULT 0 CHECK (draining IN (0, 1));
-- The edge's admin listener (host:port) control probes /healthz on, when it can reach it.
ALTER TABLE edge_nodes ADD COLUMN admin_address TEXT;

-- Health history rows now say what was checked: `public` (an edge's HTTPS listener at its
-- public address), `admin` (an edge's admin /healthz) or `service` (an origin's probe of one of
-- its services, reported in its heartbeats), and the probed URL or address. Service rows name
-- the origin too.
ALTER TABLE health_checks ADD COLUMN kind TEXT;
ALTER TABLE health_checks ADD COLUMN target TEXT;
ALTER TABLE health_checks ADD COLUMN origin_id TEXT REFERENCES origins (id) ON DELETE CASCADE;
-- Retention prunes by age.
CREATE INDEX health_checks_checked_at ON health_checks (checked_at);
