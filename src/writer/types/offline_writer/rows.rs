//! A message's rows, stored compactly: the message's strings back to back in
//! one buffer, each row holding spans of it. A batch keeps its rows until it
//! commits, and a string allocated per field per row was the largest part of
//! the writer's heap (docs/benchmarks.md).

use std::sync::Arc;

/// The rows of one message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultItem {
    /// Every string of the rows, back to back.
    text: String,
    /// Shared by the rows of the message.
    deployment_id: Option<Arc<str>>,
    rows: Vec<StoredRow>,
}

/// Where a string lies in [`ResultItem::text`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct StoredRow {
    /// Shared by every row of the table.
    table: Arc<str>,
    observation_id: Span,
    pkey: Span,
    value: StoredCell,
    observed_at_micros: Option<i64>,
    resolver_fqn: Option<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StoredCell {
    Int(i64),
    Double(f64),
    Text(Span),
    Bool(bool),
    Json(Span),
}

/// One observation bound for its feature table, as stored in its item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureRow<'a> {
    pub table: &'a Arc<str>,
    pub observation_id: &'a str,
    pub pkey: &'a str,
    pub value: FeatureCell<'a>,
    pub observed_at_micros: Option<i64>,
    pub resolver_fqn: Option<&'a str>,
    pub deployment_id: Option<&'a Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureCell<'a> {
    Int(i64),
    Double(f64),
    Text(&'a str),
    Bool(bool),
    /// Compact JSON text.
    Json(&'a str),
}

impl FeatureCell<'_> {
    /// Rows of one table and kind share a load.
    pub fn kind(&self) -> u8 {
        match self {
            FeatureCell::Int(_) => 0,
            FeatureCell::Double(_) => 1,
            FeatureCell::Text(_) => 2,
            FeatureCell::Bool(_) => 3,
            FeatureCell::Json(_) => 4,
        }
    }
}

impl ResultItem {
    /// An item for `rows` rows whose strings take about `text` bytes.
    pub fn with_capacity(deployment_id: Option<Arc<str>>, rows: usize, text: usize) -> Self {
        ResultItem {
            text: String::with_capacity(text),
            deployment_id,
            rows: Vec::with_capacity(rows),
        }
    }

    /// Adds a row (its deployment is the item's), copying its strings.
    pub fn push(&mut self, row: FeatureRow<'_>) -> Result<(), String> {
        let value = match row.value {
            FeatureCell::Int(n) => StoredCell::Int(n),
            FeatureCell::Double(d) => StoredCell::Double(d),
            FeatureCell::Bool(b) => StoredCell::Bool(b),
            FeatureCell::Text(s) => StoredCell::Text(self.store(s)?),
            FeatureCell::Json(s) => StoredCell::Json(self.store(s)?),
        };
        let stored = StoredRow {
            table: row.table.clone(),
            observation_id: self.store(row.observation_id)?,
            pkey: self.store(row.pkey)?,
            value,
            observed_at_micros: row.observed_at_micros,
            resolver_fqn: row.resolver_fqn.map(|s| self.store(s)).transpose()?,
        };
        self.rows.push(stored);
        Ok(())
    }

    fn store(&mut self, s: &str) -> Result<Span, String> {
        let too_large = || "the message's strings exceed 4 GiB".to_string();
        let start = u32::try_from(self.text.len()).map_err(|_| too_large())?;
        let len = u32::try_from(s.len()).map_err(|_| too_large())?;
        start.checked_add(len).ok_or_else(too_large)?;
        self.text.push_str(s);
        Ok(Span { start, len })
    }

    fn text(&self, span: Span) -> &str {
        let start = span.start as usize;
        self.text
            .get(start..start + span.len as usize)
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`; `None` past the last.
    pub fn row(&self, i: usize) -> Option<FeatureRow<'_>> {
        let r = self.rows.get(i)?;
        Some(FeatureRow {
            table: &r.table,
            observation_id: self.text(r.observation_id),
            pkey: self.text(r.pkey),
            value: match r.value {
                StoredCell::Int(n) => FeatureCell::Int(n),
                StoredCell::Double(d) => FeatureCell::Double(d),
                StoredCell::Bool(b) => FeatureCell::Bool(b),
                StoredCell::Text(s) => FeatureCell::Text(self.text(s)),
                StoredCell::Json(s) => FeatureCell::Json(self.text(s)),
            },
            observed_at_micros: r.observed_at_micros,
            resolver_fqn: r.resolver_fqn.map(|s| self.text(s)),
            deployment_id: self.deployment_id.as_ref(),
        })
    }

    pub fn rows(&self) -> impl Iterator<Item = FeatureRow<'_>> {
        (0..self.rows.len()).filter_map(|i| self.row(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_what_was_pushed() -> Result<(), String> {
        let table: Arc<str> = Arc::from("user__name");
        let dep: Arc<str> = Arc::from("dep-1");
        let mut item = ResultItem::with_capacity(Some(dep.clone()), 2, 0);
        let first = FeatureRow {
            table: &table,
            observation_id: "o-1",
            pkey: "k",
            value: FeatureCell::Text("é"),
            observed_at_micros: Some(5),
            resolver_fqn: None,
            deployment_id: Some(&dep),
        };
        let second = FeatureRow {
            observation_id: "o-2",
            value: FeatureCell::Json("[1]"),
            resolver_fqn: Some("r.x"),
            observed_at_micros: None,
            ..first
        };
        item.push(first)?;
        item.push(second)?;
        assert_eq!(item.len(), 2);
        assert_eq!(item.rows().collect::<Vec<_>>(), [first, second]);
        assert_eq!(item.row(2), None);
        Ok(())
    }
}
