//! The Snowflake offline store against FakeSnowflake. These show the SQL API
//! requests the store makes (statements, bindings, requestIds, auth headers)
//! and how it handles the documented answers; they do not show that real
//! Snowflake compiles the statements or casts values as the fake does.

use super::fake_snowflake::FakeSnowflake;
use super::{
    feature_rows, json_feature_rows, keyless_rows, query_log_rows, split_inserted_at,
    text_value_rows, with_column,
};
use crate::support::unique;
use base64::Engine;
use bgpersist::writer::runtime::sink::{Rejected, WriterError};
use bgpersist::writer::stores::offline::OfflineStore;
use bgpersist::writer::stores::offline::snowflake::{SnowflakeStore, parse_uri};
use serde_json::{Value, json};
use sha2::Digest;
use std::path::PathBuf;
use std::process::Command;

fn store(fake: &FakeSnowflake, params: &str) -> anyhow::Result<SnowflakeStore> {
    let uri =
        format!("snowflake://loader@xy12345.eu-west-1/DB/SCH?warehouse=WH&role=LOADER{params}");
    let (target, auth) = parse_uri(&uri, Some(fake.url.as_str()))?;
    Ok(SnowflakeStore::new(target, auth)?)
}

fn retriable(result: Result<Vec<Rejected>, WriterError>) -> String {
    match result {
        Err(WriterError::Retriable(reason)) => reason,
        Err(other) => format!("unexpected {} error: {other}", other.label()),
        Ok(r) => format!("unexpected success: {r:?}"),
    }
}

fn merges(fake: &FakeSnowflake) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.body["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("MERGE"))
        })
        .map(|r| r.body)
        .collect()
}

/// The rows a MERGE request bound, parsed.
fn bound_rows(body: &Value) -> anyhow::Result<Vec<Value>> {
    let text = body["bindings"]["1"]["value"].as_str().unwrap_or("");
    Ok(serde_json::from_str(text)?)
}

fn column(rows: &[std::collections::BTreeMap<String, Value>], name: &str) -> Vec<Value> {
    rows.iter()
        .map(|r| r.get(name).cloned().unwrap_or(Value::Null))
        .collect()
}

/// FakeSnowflake: the store creates each table (CREATE TABLE IF NOT
/// EXISTS), learns its columns and MERGEs the rows bound as one JSON text,
/// keyed on observation_id / operation_id / bgpersist_row_key. A key seen
/// twice in one load is sent once (the fake, like Snowflake, would insert
/// both), and a replay, by the same or a restarted store, adds no rows.
#[tokio::test]
async fn fake_snowflake_merge_loads_rows_and_a_replay_adds_nothing() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    fake.require("t0k", "OAUTH");
    let sf = store(&fake, "&token=t0k")?;
    let rows = vec![
        feature_rows("user__age", &[("o1", 30), ("o2", 41)])?,
        feature_rows("user__age", &[("o2", 41), ("o3", 7)])?,
        query_log_rows(&["op-1"])?,
        keyless_rows("events", "msg-7", &[5, 5])?,
    ];
    assert_eq!(sf.load(&rows).await?, vec![]);
    let statements = fake.statements();
    assert_eq!(
        statements[0],
        "CREATE TABLE IF NOT EXISTS \"USER__AGE\" (\"OBSERVATION_ID\" VARCHAR, \"PKEY\" VARCHAR, \
         \"VALUE\" NUMBER(38,0), \"OBSERVED_AT\" TIMESTAMP_TZ, \"RESOLVER_FQN\" VARCHAR, \"INSERTED_AT\" TIMESTAMP_TZ)"
    );
    assert!(statements[1].starts_with("SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS"));
    assert!(statements[2].starts_with("MERGE INTO \"USER__AGE\" AS t USING"));
    assert!(
        statements[2].contains(
            "ON t.\"OBSERVATION_ID\" = s.\"OBSERVATION_ID\" WHEN NOT MATCHED THEN INSERT"
        )
    );
    let merge = &merges(&fake)[0];
    assert_eq!(merge["bindings"]["1"]["type"], "TEXT");
    let (bound, stamps) = split_inserted_at(bound_rows(merge)?);
    assert!(
        stamps.iter().all(|s| s.len() == 27 && s.ends_with('Z')),
        "{stamps:?}"
    );
    assert_eq!(
        bound,
        vec![
            json!({"observation_id": "o1", "pkey": "u1", "value": 30,
                "observed_at": "2023-11-14T22:13:20.000000Z", "resolver_fqn": "user.age"}),
            json!({"observation_id": "o2", "pkey": "u1", "value": 41,
                "observed_at": "2023-11-14T22:13:20.000000Z", "resolver_fqn": "user.age"}),
            json!({"observation_id": "o3", "pkey": "u1", "value": 7,
                "observed_at": "2023-11-14T22:13:20.000000Z", "resolver_fqn": "user.age"}),
        ]
    );
    for (field, want) in [
        ("database", "DB"),
        ("schema", "SCH"),
        ("warehouse", "WH"),
        ("role", "LOADER"),
    ] {
        assert_eq!(merge[field], want, "{field}");
    }
    assert_eq!(merge["timeout"], 120);
    let ids = column(&fake.rows("user__age"), "OBSERVATION_ID");
    assert_eq!(ids, [json!("o1"), json!("o2"), json!("o3")]);
    assert_eq!(
        column(&fake.rows("user__age"), "VALUE"),
        [json!(30), json!(41), json!(7)]
    );
    assert_eq!(
        column(&fake.rows("query_log"), "OPERATION_ID"),
        [json!("op-1")]
    );
    assert_eq!(
        fake.columns("query_log")[1],
        ("VALUE_TABLES".to_string(), "ARRAY".to_string())
    );
    assert_eq!(
        column(&fake.rows("query_log"), "VALUE_TABLES"),
        [json!(["user__age", "user__score"])]
    );
    let keys = column(&fake.rows("events"), "BGPERSIST_ROW_KEY");
    assert_eq!(keys, [json!("msg-7/0"), json!("msg-7/1")]);
    let stored = fake.rows("user__age");

    assert_eq!(sf.load(&rows).await?, vec![]);
    let restarted = store(&fake, "&token=t0k")?;
    assert_eq!(restarted.load(&rows).await?, vec![]);
    assert_eq!(fake.rows("user__age"), stored, "replays changed nothing");
    assert_eq!(fake.rows("query_log").len(), 1);
    assert_eq!(fake.rows("events").len(), 2);
    let all = merges(&fake);
    assert_eq!(all.len(), 9);
    // The same rows each time; only `inserted_at` (the load time) differs.
    let bound_plain = |m: &Value| {
        bound_rows(m)
            .map(|r| split_inserted_at(r).0)
            .unwrap_or_default()
    };
    assert!(
        all.iter()
            .step_by(3)
            .all(|m| bound_plain(m) == bound_plain(&all[0]))
    );
    assert_eq!(bound_plain(&all[0]).len(), 3);
    // Every request was authenticated and carried a fresh UUID requestId.
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer t0k")
                && r.token_type.as_deref() == Some("OAUTH"))
    );
    let mut request_ids: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.query["requestId"].clone())
        .collect();
    let sent = request_ids.len();
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(request_ids.len(), sent);
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}

/// FakeSnowflake: a JSON feature (text tagged `arrow.json`) goes to a
/// VARIANT column through PARSE_JSON, so it is stored as JSON, not text.
#[tokio::test]
async fn fake_snowflake_json_values_go_to_a_variant_column() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, "")?;
    let rows = vec![json_feature_rows(
        "user__tags",
        &[("t1", r#"{"n":1,"tags":["a"]}"#)],
    )?];
    assert_eq!(sf.load(&rows).await?, vec![]);
    assert_eq!(
        fake.columns("user__tags")[1],
        ("VALUE".to_string(), "VARIANT".to_string())
    );
    assert!(fake.statements()[2].contains("PARSE_JSON(f.value:\"value\"::VARCHAR) AS \"VALUE\""));
    assert_eq!(
        column(&fake.rows("user__tags"), "VALUE"),
        [json!({"n": 1, "tags": ["a"]})]
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}

/// FakeSnowflake: a column the table lacks is added with ALTER TABLE ...
/// ADD COLUMN IF NOT EXISTS before the MERGE that fills it; a restarted
/// store reads the columns and alters nothing.
#[tokio::test]
async fn fake_snowflake_new_column_is_added_with_alter() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, "")?;
    sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
        .await?;
    let wider = with_column(
        feature_rows("user__age", &[("o2", 31)])?,
        "source",
        vec!["batch"],
    )?;
    assert_eq!(sf.load(std::slice::from_ref(&wider)).await?, vec![]);
    let statements = fake.statements();
    assert_eq!(statements.len(), 5, "{statements:#?}");
    assert_eq!(
        statements[3],
        "ALTER TABLE \"USER__AGE\" ADD COLUMN IF NOT EXISTS \"SOURCE\" VARCHAR"
    );
    assert!(statements[4].starts_with("MERGE"));
    assert_eq!(
        fake.columns("user__age").last().map(|c| c.0.as_str()),
        Some("SOURCE")
    );
    assert_eq!(
        column(&fake.rows("user__age"), "SOURCE"),
        [Value::Null, json!("batch")]
    );

    let restarted = store(&fake, "")?;
    assert_eq!(restarted.load(&[wider]).await?, vec![]);
    let later = &fake.statements()[5..];
    assert_eq!(later.len(), 3, "{later:#?}");
    assert!(later[0].starts_with("CREATE TABLE IF NOT EXISTS"));
    assert!(later[1].starts_with("SELECT COLUMN_NAME"));
    assert!(later[2].starts_with("MERGE"));
    assert_eq!(fake.rows("user__age").len(), 2);
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}

/// FakeSnowflake: an answer lost after the statement ran (503) is fetched by
/// resubmitting with the same requestId and `retry=true`, which the fake
/// (as Snowflake documents) answers without running the statement again.
/// 503s that persist, 429, 500 and a refused token (401) make the load
/// Retriable for the runtime.
#[tokio::test]
async fn fake_snowflake_retries_keep_the_request_id() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, "")?;
    sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
        .await?;

    fake.lose_next_answers(1);
    let ran_before = fake.executed().len();
    assert_eq!(
        sf.load(&[feature_rows("user__age", &[("o2", 31)])?])
            .await?,
        vec![]
    );
    assert_eq!(fake.executed().len(), ran_before + 1, "the MERGE ran once");
    let posts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let (first, resubmit) = (&posts[posts.len() - 2], &posts[posts.len() - 1]);
    assert_eq!(first.query["requestId"], resubmit.query["requestId"]);
    assert_eq!(first.query.get("retry"), None);
    assert_eq!(
        resubmit.query.get("retry").map(String::as_str),
        Some("true")
    );
    assert_eq!(fake.rows("user__age").len(), 2);

    let next = vec![feature_rows("user__age", &[("o3", 32)])?];
    fake.fail_next(&[503, 503, 503]);
    let posts_before = fake.statements().len();
    let lost = retriable(sf.load(&next).await);
    assert!(lost.contains("HTTP 503"), "{lost}");
    assert_eq!(
        fake.statements().len(),
        posts_before + 3,
        "sent, then resubmitted twice"
    );
    fake.fail_next(&[429]);
    assert!(retriable(sf.load(&next).await).contains("HTTP 429"));
    fake.fail_next(&[500]);
    assert!(retriable(sf.load(&next).await).contains("HTTP 500"));
    assert_eq!(fake.rows("user__age").len(), 2);
    assert_eq!(sf.load(&next).await?, vec![]);
    assert_eq!(fake.rows("user__age").len(), 3);

    fake.require("other", "OAUTH");
    let refused = retriable(sf.load(&next).await);
    assert!(refused.contains("HTTP 401 390303"), "{refused}");
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}

/// FakeSnowflake: a MERGE answered 202 (still running) is followed with
/// GET /api/v2/statements/{statementHandle} until it ends.
#[tokio::test]
async fn fake_snowflake_async_statements_are_polled() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, "")?;
    fake.run_next_merges_async(1);
    assert_eq!(
        sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
            .await?,
        vec![]
    );
    let polls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(polls.len(), 2, "one 202, then the answer");
    assert!(polls[0].path.starts_with("/api/v2/statements/"));
    assert_eq!(polls[0].path, polls[1].path);
    assert_eq!(fake.rows("user__age").len(), 1);
    Ok(())
}

/// FakeSnowflake: a MERGE refused for its data (422, SQL state 22018) is
/// split per entry; only the entry at fault is Rejected, with Snowflake's
/// message, and the others land.
#[tokio::test]
async fn fake_snowflake_data_errors_reject_only_the_bad_entry() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, "")?;
    sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
        .await?;
    let rows = vec![
        feature_rows("user__age", &[("o2", 31)])?,
        text_value_rows("user__age", "o3", "abc")?,
        feature_rows("user__age", &[("o4", 33)])?,
    ];
    let rejected = sf.load(&rows).await?;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].record, 1);
    assert!(
        rejected[0]
            .reason
            .contains("Numeric value 'abc' is not recognized"),
        "{rejected:?}"
    );
    assert_eq!(
        column(&fake.rows("user__age"), "OBSERVATION_ID"),
        [json!("o1"), json!("o2"), json!("o4")]
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}

fn openssl(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("openssl").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// FakeSnowflake: with a private key (file or inline) the store sends a
/// key-pair JWT as `Authorization: Bearer` with token type KEYPAIR_JWT; the
/// test checks its claims against the key's fingerprint (computed here from
/// openssl's public key) and its RS256 signature with openssl. Not shown:
/// that Snowflake accepts it (clock skew, a key registered on the user).
#[tokio::test]
async fn fake_snowflake_key_pair_jwt_is_signed_and_sent_as_bearer() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("bgp-sf-key"));
    std::fs::create_dir_all(&dir)?;
    let path = |name: &str| dir.join(name).display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("key.p8"),
    ])?;
    let public_der = openssl(&["pkey", "-in", &path("key.p8"), "-pubout", "-outform", "DER"])?;
    openssl(&[
        "pkey",
        "-in",
        &path("key.p8"),
        "-pubout",
        "-out",
        &path("pub.pem"),
    ])?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fingerprint = format!("SHA256:{}", b64.encode(sha2::Sha256::digest(&public_der)));

    let fake = FakeSnowflake::start().await?;
    let sf = store(&fake, &format!("&private_key_file={}", path("key.p8")))?;
    assert_eq!(
        sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
            .await?,
        vec![]
    );
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.token_type.as_deref() == Some("KEYPAIR_JWT"))
    );
    let token = requests[0]
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {token}")))
    );
    let parts: Vec<&str> = token.split('.').collect();
    anyhow::ensure!(parts.len() == 3, "not a JWT: {token}");
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64url.decode(parts[0])?)?;
    let claims: Value = serde_json::from_slice(&b64url.decode(parts[1])?)?;
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    assert_eq!(claims["iss"], format!("XY12345.LOADER.{fingerprint}"));
    assert_eq!(claims["sub"], "XY12345.LOADER");
    let lifetime = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(u64::MAX);
    assert!(lifetime > 0 && lifetime <= 3600, "{claims}");
    std::fs::write(dir.join("input"), format!("{}.{}", parts[0], parts[1]))?;
    std::fs::write(dir.join("sig"), b64url.decode(parts[2])?)?;
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &path("pub.pem"),
        "-signature",
        &path("sig"),
        &path("input"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&verified).trim(), "Verified OK");

    // The same key inline, as base64 PKCS#8 DER with its '+' left unescaped.
    let der = openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &path("key.p8"),
        "-outform",
        "DER",
    ])?;
    let inline = store(&fake, &format!("&private_key={}", b64.encode(&der)))?;
    let seen = fake.requests().len();
    inline
        .load(&[feature_rows("user__age", &[("o2", 31)])?])
        .await?;
    let later = &fake.requests()[seen];
    let token = later
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&b64url.decode(token.split('.').nth(1).unwrap_or(""))?)?;
    assert_eq!(claims["iss"], format!("XY12345.LOADER.{fingerprint}"));
    assert_eq!(fake.rows("user__age").len(), 2);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// FakeSnowflake: a token file is read on every request, so a token
/// rotated in place is used at once, with its token type.
#[tokio::test]
async fn fake_snowflake_token_file_is_reread() -> anyhow::Result<()> {
    let file: PathBuf = std::env::temp_dir().join(unique("bgp-sf-token"));
    std::fs::write(&file, "tok-1\n")?;
    let fake = FakeSnowflake::start().await?;
    fake.require("tok-1", "PROGRAMMATIC_ACCESS_TOKEN");
    let sf = store(
        &fake,
        &format!(
            "&token_file={}&token_type=PROGRAMMATIC_ACCESS_TOKEN",
            file.display()
        ),
    )?;
    assert_eq!(
        sf.load(&[feature_rows("user__age", &[("o1", 30)])?])
            .await?,
        vec![]
    );
    std::fs::write(&file, "tok-2")?;
    fake.require("tok-2", "PROGRAMMATIC_ACCESS_TOKEN");
    assert_eq!(
        sf.load(&[feature_rows("user__age", &[("o2", 31)])?])
            .await?,
        vec![]
    );
    assert_eq!(fake.rows("user__age").len(), 2);
    std::fs::remove_file(&file)?;
    Ok(())
}
