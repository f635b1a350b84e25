-- Identical source, target, toolchain and SDK give an identical binary: reuse it.
CREATE TABLE build_cache (
    key             TEXT PRIMARY KEY,
    artifact_digest TEXT NOT NULL,
    artifact_size   BIGINT NOT NULL,
    artifact_target TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
