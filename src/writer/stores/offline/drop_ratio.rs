//! `query_table_write_drop_ratio`: the share of `query_log` rows dropped
//! instead of written. The choice is a hash of the row's `operation_id`, not a
//! coin toss, so a replayed batch drops exactly the rows it dropped before and
//! every replica agrees.

use arrow_array::cast::AsArray;
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_schema::DataType;
use sha2::{Digest, Sha256};

/// The table the drop ratio applies to.
pub const QUERY_LOG: &str = "query_log";

/// Whether the row of `operation_id` is written at `ratio` (0.0 keeps all,
/// 1.0 drops all).
pub fn keeps(operation_id: &str, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return true;
    }
    if ratio >= 1.0 {
        return false;
    }
    let digest = Sha256::digest(operation_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // A uniform point in [0, 1): rows below the ratio are dropped.
    let point = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
    point >= ratio
}

/// Which rows of a `query_log` batch to write, or `None` to write them all
/// (ratio 0, or no text `operation_id` column to sample on). Rows with a null
/// operation id are kept.
pub fn mask(batch: &RecordBatch, ratio: f64) -> Option<BooleanArray> {
    if ratio <= 0.0 {
        return None;
    }
    let column = batch.column_by_name("operation_id")?;
    let keep = |id: Option<&str>| Some(id.is_none_or(|id| keeps(id, ratio)));
    let mask: BooleanArray = match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().iter().map(keep).collect(),
        DataType::LargeUtf8 => column.as_string::<i64>().iter().map(keep).collect(),
        DataType::Utf8View => column.as_string_view().iter().map(keep).collect(),
        _ => return None,
    };
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::StringArray;
    use std::sync::Arc;

    #[test]
    fn the_ends_keep_all_or_nothing() {
        for id in ["", "op-1", "op-2"] {
            assert!(keeps(id, 0.0));
            assert!(!keeps(id, 1.0));
        }
    }

    #[test]
    fn the_choice_is_stable_and_near_the_ratio() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("op-{i}")).collect();
        let kept = ids.iter().filter(|id| keeps(id, 0.3)).count();
        assert!((6_700..7_300).contains(&kept), "{kept}");
        let again = ids.iter().filter(|id| keeps(id, 0.3)).count();
        assert_eq!(kept, again);
        // A higher ratio only ever drops more: a row kept at 0.5 is kept at 0.3.
        assert!(ids.iter().all(|id| !keeps(id, 0.5) || keeps(id, 0.3)));
    }

    #[test]
    fn mask_follows_the_operation_id_column() -> Result<(), arrow_schema::ArrowError> {
        let ids = StringArray::from(vec![Some("a"), None, Some("b")]);
        let batch = RecordBatch::try_from_iter([("operation_id", Arc::new(ids) as _)])?;
        assert!(mask(&batch, 0.0).is_none());
        let all_dropped = mask(&batch, 1.0).map(|m| m.iter().collect::<Vec<_>>());
        assert_eq!(
            all_dropped,
            Some(vec![Some(false), Some(true), Some(false)])
        );
        let other =
            RecordBatch::try_from_iter([("id", Arc::new(StringArray::from(vec!["a"])) as _)])?;
        assert!(mask(&other, 1.0).is_none());
        Ok(())
    }
}
