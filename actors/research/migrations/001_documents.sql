-- Documents a tenant ingests as research sources; searched with full-text search (title weighs more).
CREATE TABLE documents (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    title        text NOT NULL,
    content_type text NOT NULL,
    content      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    tsv          tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', content), 'B')
    ) STORED
);

CREATE INDEX documents_tsv ON documents USING gin (tsv);
CREATE INDEX documents_tenant ON documents (tenant, id);
