-- Kokoa control-plane schema, version 7: provisioned edges and their replacement.
-- Same conventions as 0001 (TEXT ids, BIGINT milliseconds); same SQL on both engines.

-- The machine a provisioner (local, digitalocean, vultr, hetzner) made for an edge. Not a
-- foreign key of edge_nodes: a row outlives its edge until the machine is destroyed, so a
-- control that stops between "edge deleted" and "machine destroyed" still knows what to clean.
--   creating:   the provider was (or is about to be) asked for it; instance_id may be unknown;
--   running:    the provider made it (instance_id known);
--   destroying: the provider was asked to destroy it;
--   destroyed:  gone (kept for the record until the edge row goes);
--   failed:     creating it failed (error says why); destroyed if anything was made.
CREATE TABLE edge_instances (
    edge_id TEXT PRIMARY KEY,
    edge_name TEXT NOT NULL,
    provider TEXT NOT NULL,
    instance_id TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('creating', 'running', 'destroying', 'destroyed', 'failed')),
    public_ip TEXT,
    region TEXT,
    size TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A replacement of an edge by a newly provisioned one, persisted at every step so a control
-- restart resumes it (or cleans up) instead of leaking a machine.
--   provisioning: the new edge is created in the store and its machine requested;
--   waiting:      the machine runs; waiting until the new edge serves (ACKed config, probes pass);
--   draining:     the new edge serves; the old one is drained (withdrawn from DNS);
--   destroying:   the old edge's machine is destroyed and its record removed;
--   done / failed: finished (failed: the new machine was destroyed, the old edge kept).
CREATE TABLE edge_replacements (
    id TEXT PRIMARY KEY,
    old_edge_id TEXT NOT NULL,
    old_edge_name TEXT NOT NULL,
    new_edge_id TEXT,
    new_edge_name TEXT,
    stage TEXT NOT NULL
        CHECK (stage IN ('provisioning', 'waiting', 'draining', 'destroying', 'done', 'failed')),
    cause TEXT NOT NULL CHECK (cause IN ('auto', 'manual')),
    reason TEXT NOT NULL,
    error TEXT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX edge_replacements_stage ON edge_replacements (stage);
