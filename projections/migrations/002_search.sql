-- Metamorph projections, version 2: search attributes and memo (API.md §6, §7).
--
-- search holds a workflow's search attributes as one flat JSON object (set at start, merged by
-- workflow.upsert_search); memo is shown, never filtered on. One JSONB column with a GIN index rather
-- than typed columns: attribute names are the users', not ours, so typed columns would need DDL per
-- attribute; jsonb_path_ops makes equality and `in` filters (containment, search @> '{"k": v}') index
-- lookups. Orderings (amount > 100) are answered by the created_at index walk with a filter, or inside the
-- rows an equality/status/type filter already selected. Both defaults are constants, so adding the columns
-- rewrites nothing on a large table.
ALTER TABLE workflows
    ADD COLUMN search jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN memo   jsonb NOT NULL DEFAULT '{}';
CREATE INDEX workflows_search ON workflows USING gin (search jsonb_path_ops);
