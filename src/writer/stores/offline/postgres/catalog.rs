//! What the writer knows of each table's columns, and the DDL that creates a
//! table or adds the columns a load brings. DDL runs under a per-table
//! advisory lock so replicas evolving the same table do not collide.

use super::sql;
use super::types::ColumnPlan;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_postgres::GenericClient;

/// An existing column: type OID and SQL type (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub oid: u32,
    pub sql: String,
}

/// Columns of one table, by name.
pub type Shape = HashMap<String, Existing>;

#[derive(Default)]
pub struct Catalog {
    tables: Mutex<HashMap<String, Arc<Shape>>>,
}

impl Catalog {
    /// Drops what is known of `table` (it changed behind our back).
    pub fn forget(&self, table: &str) {
        if let Ok(mut t) = self.tables.lock() {
            t.remove(table);
        }
    }

    fn cached(&self, table: &str) -> Option<Arc<Shape>> {
        self.tables.lock().ok()?.get(table).cloned()
    }

    /// The table's columns, after creating it or adding whatever `columns`
    /// it lacks. Types of existing columns are left as they are.
    pub async fn ensure(
        &self,
        client: &mut tokio_postgres::Client,
        table: &str,
        columns: &[ColumnPlan],
    ) -> Result<Arc<Shape>, tokio_postgres::Error> {
        if let Some(shape) = self.cached(table)
            && columns.iter().all(|c| shape.contains_key(&c.name))
        {
            return Ok(shape);
        }
        let mut shape = read(client, table).await?;
        if shape.is_empty() || columns.iter().any(|c| !shape.contains_key(&c.name)) {
            let tx = client.transaction().await?;
            tx.execute(sql::DDL_LOCK, &[&format!("bgpersist.offline.{table}")])
                .await?;
            // Another replica may have done it while we waited for the lock.
            let current = read(&tx, table).await?;
            if current.is_empty() {
                tx.batch_execute(&sql::create_table(table, columns)).await?;
            } else {
                let missing: Vec<&ColumnPlan> = columns
                    .iter()
                    .filter(|c| !current.contains_key(&c.name))
                    .collect();
                if !missing.is_empty() {
                    tracing::info!(table, columns = ?missing.iter().map(|c| &c.name).collect::<Vec<_>>(), "adding columns");
                    tx.batch_execute(&sql::add_columns(table, &missing)).await?;
                }
            }
            tx.commit().await?;
            shape = read(client, table).await?;
        }
        let shape = Arc::new(shape);
        if let Ok(mut t) = self.tables.lock() {
            t.insert(table.to_string(), shape.clone());
        }
        Ok(shape)
    }
}

async fn read(client: &impl GenericClient, table: &str) -> Result<Shape, tokio_postgres::Error> {
    let rows = client.query(sql::COLUMNS_OF, &[&sql::quote(table)]).await?;
    let mut shape = Shape::new();
    for row in rows {
        let name: String = row.try_get(0)?;
        let oid: u32 = row.try_get(1)?;
        let sql: String = row.try_get(2)?;
        shape.insert(name, Existing { oid, sql });
    }
    Ok(shape)
}
