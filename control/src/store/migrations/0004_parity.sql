-- Kokoa control-plane schema, version 4: everything an edge can do from its file can be set
-- through control (raw TCP routes, an edge's [limits] defaults, tunnel settings), which object a
-- node's NACK names, and the listeners an edge reports.
-- Same conventions as 0001 (TEXT ids, BIGINT milliseconds, JSON as TEXT); same SQL on both
-- engines. Every JSON document here is a value of the shared config model (kokoa-model),
-- written by control after the model validated it.

-- A raw TCP route: public port `listen_port` on every edge serving the service's origin,
-- forwarded to the service as a byte stream. The port is unique across the fleet: an edge that
-- serves two origins binds the TCP routes of both.
CREATE TABLE tcp_routes (
    id TEXT PRIMARY KEY,
    listen_port BIGINT NOT NULL UNIQUE CHECK (listen_port BETWEEN 1 AND 65535),
    -- The address the edges listen on; NULL: each edge's HTTPS listener address.
    listen_ip TEXT,
    service_id TEXT NOT NULL REFERENCES origin_services (id) ON DELETE RESTRICT,
    proxy_protocol TEXT NOT NULL CHECK (proxy_protocol IN ('none', 'v2')),
    -- JSON arrays of client networks (CIDR) allowed and denied.
    allow TEXT NOT NULL,
    deny TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tcp_routes_service ON tcp_routes (service_id);

-- An edge's [limits] defaults (JSON, the model's EdgeLimits) and tunnel settings (JSON: mtu,
-- tcp_buffer). NULL: control does not set them and the edge keeps its bootstrap file's.
ALTER TABLE edge_nodes ADD COLUMN limits TEXT;
ALTER TABLE edge_nodes ADD COLUMN tunnel TEXT;
ALTER TABLE origins ADD COLUMN tunnel TEXT;

-- The edge's own TCP listeners as it last reported them (JSON array of {name, address});
-- NULL until it first connected.
ALTER TABLE edge_nodes ADD COLUMN listeners TEXT;

-- The object a node's last NACK names (JSON {kind, key, field}); NULL when it named none.
ALTER TABLE edge_nodes ADD COLUMN nack_object TEXT;
ALTER TABLE origins ADD COLUMN nack_object TEXT;
