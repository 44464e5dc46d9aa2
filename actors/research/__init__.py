"""The research actor: the sources research runs on (ingested documents, searched with PostgreSQL full-text search)."""
