//! Image references: the admission pattern for the image fields a writer
//! always runs, and the full check of whichever image a writer resolves to.

use std::sync::OnceLock;

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
    if plainly_valid(image) {
        return None;
    }
    image
        .parse::<oci_spec::distribution::Reference>()
        .err()
        .map(|e| e.to_string())
}

/// Whether oci-spec certainly accepts `image`: it matches the ASCII
/// [`REFERENCE_PATTERN`] (a subset of oci-spec's pattern), is short enough
/// that its repository is too, and has no digest or one of a known length.
/// oci-spec's own pattern repeats Unicode `\w` 128 times and compiles into
/// about 5 MiB the operator would hold for its life (heaptrack, issue 18);
/// this one is small. Whatever it does not accept, oci-spec decides.
fn plainly_valid(image: &str) -> bool {
    static PATTERN: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let Some(pattern) = PATTERN.get_or_init(|| regex::Regex::new(REFERENCE_PATTERN).ok()) else {
        return false;
    };
    let digest_ok = match image
        .split_once('@')
        .map(|(_, digest)| digest.split_once(':'))
    {
        None => true,
        Some(Some(("sha256", hex))) => hex.len() == 64,
        Some(Some(("sha384", hex))) => hex.len() == 96,
        Some(Some(("sha512", hex))) => hex.len() == 128,
        Some(_) => false,
    };
    image.len() <= NAME_TOTAL_LENGTH_MAX && digest_ok && pattern.is_match(image)
}

/// oci-spec's limit on a repository name, which a whole reference of at
/// most this length cannot exceed.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

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

    #[test]
    fn the_short_check_accepts_only_what_the_parser_accepts() {
        for s in GOOD {
            assert!(plainly_valid(s), "short check refuses {s:?}");
        }
        // Matches the pattern, but oci-spec refuses the digest's length or
        // the repository's: the short check hands them over.
        let short_digest = "acme/w@sha256:0123456789abcdef0123456789abcdef";
        let long_name = format!("acme/{}:1", "w".repeat(300));
        for s in BAD
            .iter()
            .copied()
            .chain([short_digest, long_name.as_str()])
        {
            assert!(!plainly_valid(s), "short check accepts {s:?}");
            let parsed = s.parse::<oci_spec::distribution::Reference>();
            assert_eq!(
                reference_problem(s),
                parsed.err().map(|e| e.to_string()),
                "{s:?}"
            );
        }
        assert!(reference_problem(short_digest).is_some());
        assert!(reference_problem(&long_name).is_some());
    }
}
