-- Repositories whose VCS sends webhooks to this server: one per provider and repository
-- (`repository_key` is the address reduced to what its spellings share). The secret a
-- delivery is signed with is derived from a sealed server secret and the webhook's id:
-- nothing of it is stored here.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    repository TEXT NOT NULL,
    repository_key TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (provider, repository_key)
);

-- What each delivery triggered, or why it was ignored. A delivery is known by the digest
-- of its body, which its signature covers (its id header is not signed): received again,
-- under any id, it keeps its first record.
CREATE TABLE webhook_deliveries (
    provider TEXT NOT NULL,
    digest TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    event TEXT NOT NULL,
    repository TEXT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    runs TEXT NOT NULL,
    PRIMARY KEY (provider, digest)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- A delivery triggers at most one run of each stack, however many times it is handled (a
-- redelivery, a crash before its record, two replicas).
CREATE UNIQUE INDEX runs_one_per_webhook_delivery ON runs (stack_id, triggered_by)
    WHERE triggered_by LIKE 'webhook:%';
