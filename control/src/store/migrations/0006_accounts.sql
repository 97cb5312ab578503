-- Kokoa control-plane schema, version 6: dashboard accounts, login sessions, API token roles.
-- Same conventions as 0001 (TEXT ids, BIGINT milliseconds, sealed secrets); same SQL on both engines.

-- People who log in to control's web UI.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- Argon2id PHC string: $argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>.
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    -- The TOTP secret, AEAD-sealed; NULL while TOTP is off.
    totp_sealed TEXT,
    -- A TOTP secret being enrolled, sealed, until a code from it confirms it.
    totp_pending_sealed TEXT,
    -- The last 30-second time step a code was accepted for: a code is never accepted twice.
    totp_last_step BIGINT,
    -- Failed logins in the window that started at first_failure_at; too many lock the account
    -- until locked_until.
    failed_logins BIGINT NOT NULL DEFAULT 0,
    first_failure_at BIGINT,
    locked_until BIGINT,
    last_login_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Single-use recovery codes for a lost authenticator. Only the SHA-256 of a code is stored.
CREATE TABLE user_recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- Login sessions. The browser holds the secret in an HttpOnly cookie; only its SHA-256 is here.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'totp': password checked, second factor due; 'active': logged in.
    stage TEXT NOT NULL CHECK (stage IN ('totp', 'active')),
    address TEXT,
    user_agent TEXT,
    created_at BIGINT NOT NULL,
    -- The idle timeout counts from here.
    last_seen_at BIGINT NOT NULL,
    -- The absolute timeout.
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- What a token's requests may do. Tokens made before roles existed keep full rights.
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'viewer'));
