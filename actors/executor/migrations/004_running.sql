-- The runs a tenant has running, counted against its `concurrent_runs` quota when a run begins.
CREATE INDEX runs_running ON runs (tenant) WHERE status = 'running';
