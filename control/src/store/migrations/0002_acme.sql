-- Kokoa control-plane schema, version 2: ACME (automatic certificates).
-- Same conventions as 0001 (TEXT ids, BIGINT milliseconds, sealed secrets); same SQL on both engines.

-- One ACME account per directory URL (Let's Encrypt production, staging, any other CA). The
-- credentials (account URL + private key, instant-acme's AccountCredentials JSON) are AEAD-sealed.
CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    contact TEXT NOT NULL,
    credentials_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Challenges of orders in progress. Edges serving the name answer them, so adding or removing one
-- bumps the config version (they travel in the edges' snapshots).
CREATE TABLE acme_challenges (
    id TEXT PRIMARY KEY,
    certificate_id TEXT NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    -- The DNS name being validated.
    name TEXT NOT NULL,
    -- http-01: the token in /.well-known/acme-challenge/<token> and the response body.
    token TEXT UNIQUE,
    key_authorization TEXT,
    -- tls-alpn-01: the validation certificate (PEM) and its sealed private key.
    cert_pem TEXT,
    key_sealed TEXT,
    created_at BIGINT NOT NULL,
    -- Past this, edges stop answering it even if control never removed it (control crashed).
    expires_at BIGINT NOT NULL,
    CHECK ((kind = 'http-01' AND token IS NOT NULL AND key_authorization IS NOT NULL)
        OR (kind = 'tls-alpn-01' AND cert_pem IS NOT NULL AND key_sealed IS NOT NULL))
);
CREATE INDEX acme_challenges_certificate ON acme_challenges (certificate_id);
