use super::*;
use std::collections::HashSet;

fn rec(pkey: &str, feature: &str, ts: i64, value: &str) -> OnlineRecord {
    OnlineRecord {
        namespace: "user".into(),
        pkey: pkey.into(),
        field: format!("user.{feature}"),
        observed_at_micros: ts,
        value_json: value.into(),
        ttl_seconds: 0,
    }
}

fn key(r: &OnlineRecord) -> String {
    format!("p:{}/{}", r.namespace, r.pkey)
}

/// Every record is answered for by exactly one entry.
fn covered_once(calls: &[Call], n: usize) {
    let mut seen = vec![0; n];
    for e in calls.iter().flatten() {
        for i in e.covers() {
            seen[i] += 1;
        }
    }
    assert_eq!(seen, vec![1; n]);
}

#[test]
fn slots_match_cluster_keyslot() {
    // Answers of CLUSTER KEYSLOT on Redis 7.
    for (key, want) in [
        ("foo", 12182),
        ("123456789", 12739),
        ("bench:w:user/42", 8630),
        ("a{user}/x", 5474),
        ("a{}b", 13694),
        ("{}{x}", 3257),
    ] {
        assert_eq!(Some(slot(key.as_bytes())), Slot::new(want), "{key}");
    }
    assert_eq!(slot(b"x{user}1"), slot(b"y{user}2"));
}

#[test]
fn standalone_calls_are_cut_by_entities() {
    let records: Vec<_> = (0..120)
        .flat_map(|e| {
            [
                rec(&e.to_string(), "a", 1, "1"),
                rec(&e.to_string(), "b", 1, "2"),
            ]
        })
        .collect();
    let calls = plan(&records, key, false);
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(sizes, [MAX_ENTITIES, MAX_ENTITIES, 120 - 2 * MAX_ENTITIES]);
    assert!(calls.iter().flatten().all(|e| e.written.len() == 2));
    covered_once(&calls, records.len());
}

#[test]
fn cluster_calls_share_a_slot_and_stay_bounded() {
    // Hash tags put many entities in a few slots.
    let records: Vec<_> = (0..600)
        .flat_map(|e| {
            let pkey = format!("{{t{}}}{e}", e % 3);
            [rec(&pkey, "a", e, "1"), rec(&pkey, "b", e, "2")]
        })
        .collect();
    let calls = plan(&records, key, true);
    for call in &calls {
        let slots: HashSet<Slot> = call.iter().map(|e| slot(e.key.as_bytes())).collect();
        assert_eq!(slots.len(), 1, "one slot per call");
        assert!(call.len() <= MAX_ENTITIES);
    }
    // 200 entities in each of 3 slots: 4 calls each.
    assert_eq!(calls.len(), 12);
    covered_once(&calls, records.len());
    // Without tags, neighbouring entities land in different slots.
    let plain: Vec<_> = (0..100).map(|e| rec(&e.to_string(), "a", 1, "1")).collect();
    let calls = plan(&plain, key, true);
    assert!(calls.len() > 90);
    for call in &calls {
        let slots: HashSet<Slot> = call.iter().map(|e| slot(e.key.as_bytes())).collect();
        assert_eq!(slots.len(), 1);
    }
}

#[test]
fn values_per_call_are_bounded() {
    // One entity with more fields than a call takes is split.
    let wide: Vec<_> = (0..2500)
        .map(|f| rec("w", &format!("f{f}"), 1, "1"))
        .collect();
    let calls = plan(&wide, key, false);
    let sizes: Vec<usize> = calls.iter().flatten().map(|e| e.written.len()).collect();
    assert_eq!(sizes, [MAX_VALUES, MAX_VALUES, 500]);
    assert!(calls.iter().all(|c| c.len() == 1));
    covered_once(&calls, wide.len());
}

#[test]
fn older_values_of_a_field_are_dropped_and_ties_kept_apart() {
    let records = vec![
        rec("e", "a", 5, "old"),
        rec("e", "a", 9, "\"x\""),
        rec("e", "b", 1, "1"),
        rec("e", "a", 9, "\"y\""),
        rec("e", "a", 7, "older"),
    ];
    let calls = plan(&records, key, false);
    let entries: Vec<&Entry> = calls.iter().flatten().collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // The newest of each field, then the tie in an entry of its own.
    assert_eq!(entries[0].written, [1, 2]);
    assert_eq!(entries[1].written, [3]);
    // The dropped ones are rejected with the first entry if the key is refused.
    let mut first: Vec<usize> = entries[0].covers().collect();
    first.sort();
    assert_eq!(first, [0, 1, 2, 4]);
    covered_once(&calls, records.len());
}

#[test]
fn times_are_compared_as_the_script_reads_them() {
    // Two times one apart above 2^53 are one double: a tie for the script,
    // so both go on to compare values there.
    let big = 1i64 << 54;
    let records = vec![rec("e", "a", big + 1, "1"), rec("e", "a", big, "2")];
    let entries: Vec<Entry> = plan(&records, key, false).into_iter().flatten().collect();
    assert_eq!(entries.len(), 2);
}

#[test]
fn encoding_lays_out_each_entity() -> Result<(), TooLong> {
    let mut records = vec![rec("e1", "a", 42, "\"v\""), rec("e2", "b", -3, "7")];
    records[1].ttl_seconds = 300;
    let calls = plan(&records, key, false);
    assert_eq!(calls.len(), 1);
    let bytes = encode(&calls[0], &records)?;
    let mut want = vec![0x90 | 14];
    for part in [
        &b"\xa2e1\x00\x01\xa6user.a\xa3\"v\"\xa9user.a_ts\xa242"[..],
        &b"\xa2e2\xcd\x01\x2c\x01\xa6user.b\xa17\xa9user.b_ts\xa2-3"[..],
    ] {
        want.extend_from_slice(part);
    }
    assert_eq!(bytes, want);
    Ok(())
}
