//! Image references: the admission pattern for the image fields a writer
//! always runs, and the full check of whichever image a writer resolves to.

/// The reference grammar of the container distribution spec
/// (`[domain[:port]/]path[:tag][@digest]`) as an OpenAPI pattern, for the
/// fields that are always used when set (`bus_writer_image_rust`,
/// `writers[].image`). The Go, Python and BSWL image fields are not held to
/// it at admission: the seed documents carry placeholders there that a Rust
/// image makes irrelevant; they are checked when a writer resolves to them.
pub const REFERENCE_PATTERN: &str = concat!(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])",
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
);

/// Why `image` is not a pullable reference, in the distribution spec's terms.
pub fn reference_problem(image: &str) -> Option<String> {
    image
        .parse::<oci_spec::distribution::Reference>()
        .err()
        .map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[&str] = &[
        "bgpersist:0.1.0",
        "bgpersist/writer:1",
        "ghcr.io/acme/bgpersist-writer:v0.3.1",
        "localhost:5000/a/b_c__d-e:latest",
        "registry.example.com/foo/bar:1.23.4@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "gcr.io/p/w@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];
    const BAD: &[&str] = &[
        "<go bus writer image>",
        "acme/writer :1",
        "acme/writer:",
        "acme/writer::1",
        "acme//writer",
        "-acme/writer",
        "acme/writer@sha256:short",
        "acme/writer:-tag",
    ];

    #[test]
    fn the_pattern_and_the_parser_agree() {
        let pattern = regex::Regex::new(REFERENCE_PATTERN).expect("pattern compiles");
        for s in GOOD {
            assert!(pattern.is_match(s), "pattern refuses {s:?}");
            assert_eq!(reference_problem(s), None, "parser refuses {s:?}");
        }
        for s in BAD {
            assert!(!pattern.is_match(s), "pattern accepts {s:?}");
            assert!(reference_problem(s).is_some(), "parser accepts {s:?}");
        }
    }
}
