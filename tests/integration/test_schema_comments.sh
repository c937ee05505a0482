#!/usr/bin/env bash
# test_schema_comments.sh -- every table, view and column of schema needletrace has a comment
# (issue 11, point 8; collector/sql/014_comments.sql):
#   1. the check itself finds what lacks a comment: in a scratch schema, a table, a partitioned
#      table's partition, a view and a materialized view, and their columns (a dropped column
#      does not count);
#   2. after `needletrace migrate`, no table (relkind r, p), partition, view (v, m) of schema
#      needletrace, nor any of their columns, lacks a comment; each one that does is named;
#   3. needletrace.comment_partitions() gives partitions the comments of their parent: the
#      table's when they have none, the columns' always.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_migrate

# uncommented SCHEMA: one line per relation or column of SCHEMA without a comment (a comment of
# blanks only counts as none), sorted: "table S.T", "partition S.T (of S.P)", "column S.T.C"...
uncommented() {
    nt_sql "
    WITH rel AS (
        SELECT c.oid, c.relispartition,
               CASE WHEN c.relispartition THEN 'partition'
                    ELSE CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                                        WHEN 'v' THEN 'view' ELSE 'materialized view' END
               END AS what,
               quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = '$1' AND c.relkind IN ('r', 'p', 'v', 'm')
    )
    SELECT line FROM (
        SELECT rel.what || ' ' || rel.name
               || CASE WHEN rel.relispartition
                       THEN ' (of ' || (SELECT i.inhparent::regclass::text FROM pg_inherits i
                                         WHERE i.inhrelid = rel.oid) || ')'
                       ELSE '' END AS line
          FROM rel
         WHERE coalesce(btrim(obj_description(rel.oid, 'pg_class')), '') = ''
        UNION ALL
        SELECT 'column ' || rel.name || '.' || quote_ident(a.attname)
          FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid
         WHERE a.attnum > 0 AND NOT a.attisdropped
           AND coalesce(btrim(col_description(rel.oid, a.attnum)), '') = ''
    ) x ORDER BY line"
}

# ---- 1. the check finds what lacks a comment ----------------------------------------------------
nt_sql "CREATE SCHEMA nt_probe;
    CREATE TABLE nt_probe.t (a int, b int, gone int);
    ALTER TABLE nt_probe.t DROP COLUMN gone;
    COMMENT ON TABLE nt_probe.t IS 'commented';
    COMMENT ON COLUMN nt_probe.t.a IS 'commented';
    COMMENT ON COLUMN nt_probe.t.b IS '  ';
    CREATE TABLE nt_probe.p (k int, v int) PARTITION BY RANGE (k);
    COMMENT ON TABLE nt_probe.p IS 'commented';
    COMMENT ON COLUMN nt_probe.p.k IS 'commented';
    CREATE TABLE nt_probe.p1 PARTITION OF nt_probe.p FOR VALUES FROM (0) TO (10);
    COMMENT ON COLUMN nt_probe.p1.v IS 'commented';
    CREATE VIEW nt_probe.v AS SELECT a FROM nt_probe.t;
    COMMENT ON COLUMN nt_probe.v.a IS 'commented';
    CREATE MATERIALIZED VIEW nt_probe.m AS SELECT 1 AS one;
    COMMENT ON MATERIALIZED VIEW nt_probe.m IS 'commented';" >/dev/null
expected="column nt_probe.m.one,column nt_probe.p.v,column nt_probe.p1.k,column nt_probe.t.b,"
expected+="partition nt_probe.p1 (of nt_probe.p),view nt_probe.v"
nt_expect_eq "what the check finds in a scratch schema" "$expected" \
    "$(uncommented nt_probe | paste -sd, -)"
nt_sql "DROP SCHEMA nt_probe CASCADE" >/dev/null

# ---- 2. schema needletrace ---------------------------------------------------------------------
read -r nrel ncol <<<"$(nt_sql "SELECT count(DISTINCT c.oid), count(*) FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE n.nspname = 'needletrace' AND c.relkind IN ('r', 'p', 'v', 'm')" | tr '|' ' ')"
nt_log "schema needletrace: $nrel tables and views, $ncol columns"
nt_expect_true "the check sees the schema's tables, views and columns ($nrel, $ncol)" \
    test "$nrel" -ge 30 -a "$ncol" -ge 300
missing=$(uncommented needletrace)
while IFS= read -r line; do
    [[ -n $line ]] && printf 'FAIL no comment: %s\n' "$line"
done <<<"$missing"
nt_expect_eq "tables, partitions, views and columns of needletrace without a comment" 0 \
    "$(grep -c . <<<"$missing" || true)"

# ---- 3. comment_partitions ---------------------------------------------------------------------
nt_sql "CREATE TABLE needletrace.nt_probe_p (k int, v int) PARTITION BY RANGE (k);
    COMMENT ON TABLE needletrace.nt_probe_p IS 'probe';
    COMMENT ON COLUMN needletrace.nt_probe_p.k IS 'probe k';
    COMMENT ON COLUMN needletrace.nt_probe_p.v IS 'probe v';
    CREATE TABLE needletrace.nt_probe_p1 PARTITION OF needletrace.nt_probe_p
        FOR VALUES FROM (0) TO (10) PARTITION BY RANGE (k);
    CREATE TABLE needletrace.nt_probe_p11 PARTITION OF needletrace.nt_probe_p1
        FOR VALUES FROM (0) TO (5);
    COMMENT ON COLUMN needletrace.nt_probe_p11.v IS 'stale'" >/dev/null
nt_expect_eq "comments comment_partitions() writes" 6 \
    "$(nt_sql "SELECT needletrace.comment_partitions()")"
nt_expect_eq "comments a second run writes" 0 "$(nt_sql "SELECT needletrace.comment_partitions()")"
nt_expect_eq "partitions (and sub-partitions) without a comment afterwards" "" \
    "$(uncommented needletrace | grep nt_probe || true)"
expected="Partition of needletrace.nt_probe_p1: Partition of needletrace.nt_probe_p: probe"
nt_expect_eq "a sub-partition's comments" "$expected|probe k|probe v" \
    "$(nt_sql "SELECT obj_description('needletrace.nt_probe_p11'::regclass, 'pg_class') || '|'
                      || col_description('needletrace.nt_probe_p11'::regclass, 1) || '|'
                      || col_description('needletrace.nt_probe_p11'::regclass, 2)")"
nt_sql "DROP TABLE needletrace.nt_probe_p" >/dev/null
nt_finish
