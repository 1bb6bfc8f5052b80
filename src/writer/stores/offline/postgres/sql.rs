//! The SQL the Postgres offline store sends. Every identifier is quoted
//! here, and names were already checked (`offline::ident`) before they get
//! this far: never interpolate a name anywhere else.

use super::types::ColumnPlan;
use crate::writer::stores::offline::drop_ratio::QUERY_LOG;

/// Loads recorded by idempotency key.
pub const LOADS_TABLE: &str = "bgpersist_loads";

/// `ident` as a quoted Postgres identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn column_list(columns: &[ColumnPlan]) -> String {
    columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column that makes rows of `table` unique, if its rows carry one:
/// `observation_id` (feature tables), else `operation_id` for `query_log`.
pub fn unique_key<'a>(table: &str, columns: &'a [ColumnPlan]) -> Option<&'a str> {
    let has = |n: &str| columns.iter().any(|c| c.name == n);
    if has("observation_id") {
        Some("observation_id")
    } else if table == QUERY_LOG && has("operation_id") {
        Some("operation_id")
    } else {
        None
    }
}

/// `CREATE TABLE` for rows shaped like `columns`, plus `inserted_at`
/// (defaulting to the load time) when the rows do not carry it.
pub fn create_table(table: &str, columns: &[ColumnPlan]) -> String {
    let key = unique_key(table, columns);
    let mut defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let not_null = if Some(c.name.as_str()) == key {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {}{not_null}", quote(&c.name), c.sql)
        })
        .collect();
    if !columns.iter().any(|c| c.name == "inserted_at") {
        defs.push("\"inserted_at\" timestamptz NOT NULL DEFAULT now()".into());
    }
    if let Some(k) = key {
        defs.push(format!("PRIMARY KEY ({})", quote(k)));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(table),
        defs.join(", ")
    )
}

/// One `ALTER TABLE` adding every column in `missing`.
pub fn add_columns(table: &str, missing: &[&ColumnPlan]) -> String {
    let adds: Vec<String> = missing
        .iter()
        .map(|c| format!("ADD COLUMN IF NOT EXISTS {} {}", quote(&c.name), c.sql))
        .collect();
    format!("ALTER TABLE {} {}", quote(table), adds.join(", "))
}

/// A temporary table holding one load's rows until the insert.
pub fn create_staging(stage: &str, columns: &[ColumnPlan]) -> String {
    let defs: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", quote(&c.name), sql_name(c)))
        .collect();
    format!(
        "CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP",
        quote(stage),
        defs.join(", ")
    )
}

/// The staging column's type: the wire type's SQL name.
fn sql_name(c: &ColumnPlan) -> String {
    if c.cast().is_some() {
        "text".into()
    } else {
        c.sql.clone()
    }
}

/// Binary COPY into `table` (the target itself, or a staging table).
pub fn copy_from_stdin(table: &str, columns: &[ColumnPlan]) -> String {
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        quote(table),
        column_list(columns)
    )
}

/// Moves the staged rows into the table; rows whose unique key is already
/// there (a replay) are skipped.
pub fn insert_from_staging(table: &str, stage: &str, columns: &[ColumnPlan]) -> String {
    let select: Vec<String> = columns
        .iter()
        .map(|c| match c.cast() {
            Some(cast) => format!("{}::{cast}", quote(&c.name)),
            None => quote(&c.name),
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING",
        quote(table),
        column_list(columns),
        select.join(", "),
        quote(stage)
    )
}

pub fn create_loads_table() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {LOADS_TABLE} (\
         table_name text NOT NULL, \
         idempotency_key text NOT NULL, \
         row_count bigint NOT NULL, \
         loaded_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (table_name, idempotency_key))"
    )
}

/// Records keys ($2, with row counts $3) for table $1; returns the keys that
/// were not recorded before (the loads to do now).
pub fn claim_keys() -> String {
    format!(
        "INSERT INTO {LOADS_TABLE} (table_name, idempotency_key, row_count) \
         SELECT $1, k, n FROM unnest($2::text[], $3::int8[]) AS u(k, n) \
         ON CONFLICT DO NOTHING RETURNING idempotency_key"
    )
}

/// Name, type OID and SQL type of every column of table $1 (a quoted name,
/// resolved on the search path); no rows when the table does not exist.
pub const COLUMNS_OF: &str = "SELECT a.attname::text, a.atttypid, \
     format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// Serialises DDL on one table across writer replicas ($1: lock name).
pub const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::Type;

    fn col(name: &str, wire: Type, sql: &str) -> ColumnPlan {
        ColumnPlan {
            name: name.into(),
            target: wire.clone(),
            wire,
            sql: sql.into(),
        }
    }

    fn feature_columns() -> Vec<ColumnPlan> {
        vec![
            col("observation_id", Type::TEXT, "text"),
            col("pkey", Type::TEXT, "text"),
            col("value", Type::INT8, "bigint"),
            col("observed_at", Type::TIMESTAMPTZ, "timestamptz"),
        ]
    }

    #[test]
    fn quoting_doubles_quotes_so_nothing_escapes() {
        assert_eq!(quote("user__age"), "\"user__age\"");
        assert_eq!(
            quote("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
    }

    #[test]
    fn feature_tables_are_keyed_by_observation_id() {
        assert_eq!(
            create_table("user__age", &feature_columns()),
            "CREATE TABLE IF NOT EXISTS \"user__age\" (\"observation_id\" text NOT NULL, \
             \"pkey\" text, \"value\" bigint, \"observed_at\" timestamptz, \
             \"inserted_at\" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (\"observation_id\"))"
        );
    }

    #[test]
    fn query_log_is_keyed_by_operation_id_and_other_tables_by_nothing() {
        let cols = vec![
            col("operation_id", Type::TEXT, "text"),
            col("inserted_at", Type::TIMESTAMP, "timestamp"),
        ];
        assert_eq!(
            create_table("query_log", &cols),
            "CREATE TABLE IF NOT EXISTS \"query_log\" (\"operation_id\" text NOT NULL, \
             \"inserted_at\" timestamp, PRIMARY KEY (\"operation_id\"))"
        );
        assert_eq!(unique_key("events", &cols), None);
        assert!(!create_table("events", &cols).contains("PRIMARY KEY"));
    }

    #[test]
    fn staging_copy_and_insert_statements() {
        let mut cols = feature_columns();
        cols.push(ColumnPlan {
            name: "price".into(),
            wire: Type::TEXT,
            sql: "numeric(10,2)".into(),
            target: Type::NUMERIC,
        });
        assert_eq!(
            create_staging("bgpersist_stage_0", &cols[2..]),
            "CREATE TEMPORARY TABLE \"bgpersist_stage_0\" (\"value\" bigint, \
             \"observed_at\" timestamptz, \"price\" text) ON COMMIT DROP"
        );
        assert_eq!(
            copy_from_stdin("bgpersist_stage_0", &cols[..2]),
            "COPY \"bgpersist_stage_0\" (\"observation_id\", \"pkey\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            insert_from_staging("user__age", "bgpersist_stage_0", &cols[3..]),
            "INSERT INTO \"user__age\" (\"observed_at\", \"price\") SELECT \"observed_at\", \
             \"price\"::numeric FROM \"bgpersist_stage_0\" ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            add_columns("t", &[&cols[1], &cols[2]]),
            "ALTER TABLE \"t\" ADD COLUMN IF NOT EXISTS \"pkey\" text, \
             ADD COLUMN IF NOT EXISTS \"value\" bigint"
        );
    }
}
