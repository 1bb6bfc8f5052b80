//! librdkafka's client errors, said for people: which broker, what failed,
//! what to check. The text is stable from one attempt to the next (no
//! "after 302ms in state AUTH_REQ", no suppressed-error counts), because the
//! operator copies it onto the resource's status, which must not change while
//! the failure does not.

/// A person-readable, stable description of one librdkafka error `raw`.
/// `sasl_user` names the identity when the client authenticates with SASL.
pub fn describe(raw: &str, sasl_user: Option<&str>) -> String {
    let raw = strip_volatile(raw.trim());
    let (broker, detail) = split_broker(raw);
    let at = broker
        .map(|b| format!(" at broker {b}"))
        .unwrap_or_default();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("sasl authentication error") || lower.contains("authentication failed") {
        let who = sasl_user
            .map(|u| format!(" for user '{u}'"))
            .unwrap_or_default();
        let detail = detail
            .split_once("SASL authentication error: ")
            .map_or(detail, |(_, d)| d);
        return format!(
            "SASL authentication failed{who}{at}: {detail}; check the Kafka secret's username and password and kafka_sasl_mechanism"
        );
    }
    if lower.contains("ssl handshake failed") {
        let detail = detail
            .split_once("SSL handshake failed: ")
            .map_or(detail, |(_, d)| d);
        return format!("TLS handshake failed{at}: {detail}");
    }
    if let Some(cause) = connect_failure(detail) {
        return match broker {
            Some(b) => format!("broker {b} unreachable: {cause}"),
            None => format!("broker unreachable: {cause}"),
        };
    }
    match broker {
        Some(b) => format!("broker {b}: {detail}"),
        None => detail.to_string(),
    }
}

/// Drops librdkafka's trailing "(after Nms in state X[, N identical error(s)
/// suppressed])", which changes on every attempt.
fn strip_volatile(raw: &str) -> &str {
    match raw.rfind(" (after ") {
        Some(i) if raw.ends_with(')') => &raw[..i],
        _ => raw,
    }
}

/// "sasl_ssl://10.0.0.1:9096/bootstrap: detail" → ("10.0.0.1:9096", "detail").
fn split_broker(raw: &str) -> (Option<&str>, &str) {
    let Some((head, detail)) = raw.split_once(": ") else {
        return (None, raw);
    };
    let address = head.split_once("://").map_or(head, |(_, rest)| rest);
    let address = address.split('/').next().unwrap_or(address);
    // A broker is host:port; anything else is not a broker prefix.
    let is_broker = !address.contains(' ')
        && address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if is_broker {
        (Some(address), detail)
    } else {
        (None, raw)
    }
}

/// "Connect to ipv4#127.0.0.1:19999 failed: Connection refused" → "Connection refused".
fn connect_failure(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("Connect to ")?;
    rest.split_once(" failed: ").map(|(_, cause)| cause)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn sasl_failure_names_user_and_broker_without_timings() {
        let raw = "sasl_ssl://127.0.0.1:19096/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 302ms in state AUTH_REQ, 4 identical error(s) suppressed)";
        assert_eq!(
            describe(raw, Some("svc")),
            "SASL authentication failed for user 'svc' at broker 127.0.0.1:19096: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512; check the Kafka secret's username and password and kafka_sasl_mechanism"
        );
        // The next attempt's timing differs; the description does not.
        let again = raw
            .replace("302ms", "5ms")
            .replace(", 4 identical", ", 9 identical");
        assert_eq!(describe(&again, Some("svc")), describe(raw, Some("svc")));
    }

    #[test]
    fn refused_connection_is_unreachable_broker() {
        let raw = "127.0.0.1:19999/bootstrap: Connect to ipv4#127.0.0.1:19999 failed: Connection refused (after 0ms in state CONNECT)";
        assert_eq!(
            describe(raw, None),
            "broker 127.0.0.1:19999 unreachable: Connection refused"
        );
    }

    #[test]
    fn tls_failure_keeps_librdkafka_advice() {
        let raw = "ssl://localhost:19093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured (after 4ms in state SSL_HANDSHAKE)";
        let d = describe(raw, None);
        assert!(
            d.starts_with("TLS handshake failed at broker localhost:19093: error:0A000086"),
            "{d}"
        );
        assert!(d.ends_with("correctly configured"), "{d}");
    }

    #[test]
    fn text_without_broker_prefix_is_kept() {
        assert_eq!(
            describe("1/1 brokers are down", None),
            "1/1 brokers are down"
        );
        assert_eq!(
            describe("Local: Broker transport failure: x", None),
            "Local: Broker transport failure: x"
        );
    }
}
