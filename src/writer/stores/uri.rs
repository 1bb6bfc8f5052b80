//! Store URIs: every store family picks its store by the URI's scheme,
//! read here the same way for all of them.

/// The scheme, lowercased, and the rest after `://`; an empty scheme when
/// the URI has none.
pub fn split_scheme(uri: &str) -> (String, &str) {
    uri.trim()
        .split_once("://")
        .map(|(s, rest)| (s.to_ascii_lowercase(), rest))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::split_scheme;

    #[test]
    fn scheme_is_lowercased_and_the_rest_kept() {
        assert_eq!(
            split_scheme(" Redis://h:1/0 "),
            ("redis".to_string(), "h:1/0")
        );
        assert_eq!(split_scheme("features"), (String::new(), ""));
        assert_eq!(split_scheme(""), (String::new(), ""));
    }
}
