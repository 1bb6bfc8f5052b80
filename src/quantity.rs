//! Kubernetes quantities ("200m", "1Gi", "1.5", "2e3") as numbers, to compare
//! a request with its limit and a rendered value with what the API server
//! stored (it rewrites "1024Mi" as "1Gi").

/// The quantity's value in base units, or None when it is not a quantity
/// (or too large for a number).
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        // The number and its exponent parsed together: "0e310" is 0, where
        // 0 × 10^310 would be 0 × inf, NaN.
        e if e.starts_with(['e', 'E']) => {
            e[1..].parse::<i32>().ok()?;
            return s.parse::<f64>().ok().filter(|v| v.is_finite());
        }
        _ => return None,
    };
    Some(n * factor).filter(|v| v.is_finite())
}

/// Whether two quantity strings denote the same amount.
pub fn same(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(parse("200m"), Some(0.2));
        assert_eq!(parse("1"), Some(1.0));
        assert_eq!(parse("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1k"), Some(1000.0));
    }

    #[test]
    fn exponents_never_make_nan_or_infinity() {
        assert_eq!(parse("0e310"), Some(0.0));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1e400"), None);
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "abc", "1 cpu", "12Q", "Mi", "-", "1.2.3"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn server_rewrites_compare_equal() {
        assert!(same("1024Mi", "1Gi"));
        assert!(same("1000m", "1"));
        assert!(!same("1Gi", "1G"));
    }
}
