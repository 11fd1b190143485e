-- Sender domains and their DKIM keys.
CREATE TABLE domains (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- One row per selector. A retired key (active = 0) no longer signs but is
-- kept, so its DNS record stays meaningful until the operator removes it.
CREATE TABLE dkim_keys (
    domain      TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL,           -- rsa2048 | ed25519
    private_key TEXT NOT NULL,           -- base64 DER: PKCS#1 (RSA), PKCS#8 (Ed25519)
    public_key  TEXT NOT NULL,           -- base64, as published in p=
    created_at  BIGINT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (domain, selector)
);
