//! Table and column names arrive in bus messages: they are checked here, once,
//! before any store sees them. A name is 1 to 63 ASCII letters, digits or
//! underscores, not starting with a digit (63 bytes is Postgres' limit, the
//! tightest of the offline stores), and names starting with `bgpersist_` are
//! reserved for the writers' own bookkeeping tables.

/// The longest identifier every offline store keeps intact.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Prefix of the tables the writers keep for themselves.
pub const RESERVED_PREFIX: &str = "bgpersist_";

/// Why `name` cannot be a table name, if it cannot.
pub fn check_table(name: &str) -> Result<(), String> {
    check("table", name)?;
    if name.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "table name {name:?} is refused: names starting with {RESERVED_PREFIX:?} are reserved"
        ));
    }
    Ok(())
}

/// Why `name` cannot be a column name, if it cannot.
pub fn check_column(name: &str) -> Result<(), String> {
    check("column", name)
}

fn check(what: &str, name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(80).collect();
    if name.is_empty() {
        return Err(format!("{what} name is empty"));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "{what} name {shown:?} is refused: longer than {MAX_IDENTIFIER_BYTES} bytes"
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{what} name {shown:?} is refused: only ASCII letters, digits and '_' are allowed, not starting with a digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for ok in ["query_log", "user__age", "_x", "T1", &"a".repeat(63)] {
            assert_eq!(check_table(ok), Ok(()), "{ok}");
            assert_eq!(check_column(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hostile_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "1abc",
            "users; DROP TABLE users",
            "a\"b",
            "x--",
            "sch.table",
            "tab le",
            "naïve",
            "a\0b",
            &"a".repeat(64),
        ] {
            let err = check_table(bad).err().unwrap_or_default();
            assert!(err.contains("table name"), "{bad:?}: {err}");
            assert!(check_column(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bookkeeping_tables_are_reserved() {
        let err = check_table("BGPersist_loads").err().unwrap_or_default();
        assert!(err.contains("reserved"), "{err}");
        assert_eq!(check_column("bgpersist_note"), Ok(()));
    }
}
