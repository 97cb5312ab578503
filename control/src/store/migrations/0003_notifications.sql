-- Kokoa control-plane schema: notifications (webhooks and Slack-compatible incoming webhooks fed
-- from the audit trail). Same conventions as 0001_initial.sql (TEXT ids, BIGINT milliseconds,
-- JSON as TEXT, CHECKs). Nothing else refers to this file's version number.

-- Where notifications go. The URL is sealed with the master key (a Slack incoming-webhook URL is
-- itself the credential) and shown only as `url_shown` (scheme, host and port). `events` is a
-- JSON array of event-kind patterns (`edge.status_changed`, `edge.*`, `*.config_rejected`);
-- empty means every kind.
CREATE TABLE notification_targets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'slack')),
    url_sealed TEXT NOT NULL,
    url_shown TEXT NOT NULL,
    -- The webhook signing secret, sealed with the master key (NULL for Slack).
    secret_sealed TEXT,
    events TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One notification to one target: the queue the sender works from (`pending`), and its record
-- afterwards. Pending rows per target are capped (the oldest become `dropped`) and finished rows
-- are pruned to a per-target count, so a dead endpoint cannot grow this table without bound.
CREATE TABLE notification_deliveries (
    id TEXT PRIMARY KEY,
    target_id TEXT NOT NULL REFERENCES notification_targets (id) ON DELETE CASCADE,
    -- The audit event that caused it, and its kind (`entity.action`).
    event_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    -- The event as JSON; the body is rendered for the target's kind at send time.
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'dropped')),
    attempts BIGINT NOT NULL CHECK (attempts >= 0),
    last_status BIGINT,
    last_error TEXT,
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (target_id, event_id)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_target ON notification_deliveries (target_id, status, event_id);

-- How far a background job has read the audit trail (the notifier: the last event id it turned
-- into deliveries), so a restart or a new leader neither repeats nor skips notifications.
CREATE TABLE job_cursors (
    job TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
