//! Reading a process's HTTP endpoints and its Prometheus/OpenMetrics text:
//! shared by the tests and the benchmarks.

use std::time::Duration;

/// A plain HTTP/1.1 GET on localhost (no client library: the answer is read
/// whole, headers included, which is all the samples need).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A sample line: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// A sample line split into name, labels and value.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// The value of sample `name` in a Prometheus/OpenMetrics text, whatever
/// the writer's own labels (resource, writer, type); the first when several.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_sample)
        .find_map(|(n, _, v)| (n == name).then_some(v))
}

/// Whether `text` holds the sample `expected` (`name{labels} value` or
/// `name value`): same name and value, with at least its labels.
pub fn has_sample(text: &str, expected: &str) -> bool {
    let Some((name, labels, value)) = parse_sample(expected) else {
        return false;
    };
    text.lines()
        .filter_map(parse_sample)
        .any(|(n, ls, v)| n == name && v == value && labels.iter().all(|l| ls.contains(l)))
}

/// How many observations of histogram `name` were at most `le`: its
/// `name_bucket{le=...}` sample, whatever the writer's own labels.
pub fn bucket_value(text: &str, name: &str, le: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    text.lines()
        .filter_map(parse_sample)
        .find_map(|(n, labels, v)| {
            let at = labels
                .iter()
                .find(|(k, _)| *k == "le")?
                .1
                .parse::<f64>()
                .ok()?;
            (n == bucket && at == le).then_some(v)
        })
}
