//! `ssl_keystore_location` (seed 000) and `ssl_truststore_location`: a
//! keystore and a CA bundle kept in object storage, named by `s3://` or
//! `gs://` URI. Fetched once at start into the pod's `/tmp` (an emptyDir;
//! the root filesystem is read-only) and handed to librdkafka as
//! `ssl.keystore.location` and `ssl.ca.location`. librdkafka reads PKCS#12
//! keystores and PEM CA files only: a Java KeyStore is refused with the
//! conversion command.

use crate::writer::config::KafkaSettings;
use crate::writer::stores::objects::{open_bucket, parse_uri};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("{setting} {uri}: {reason}")]
    Fetch {
        setting: &'static str,
        uri: String,
        reason: String,
    },
    #[error("{setting} {uri}: {reason}")]
    Format {
        setting: &'static str,
        uri: String,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Keystores and CA bundles are small; anything larger is not one.
const MAX_BYTES: u64 = 1024 * 1024;
const JKS_MAGIC: [u8; 4] = [0xFE, 0xED, 0xFE, 0xED];

/// Fetches the keystore and truststore `settings` name, if any, and points
/// librdkafka at the local copies.
pub async fn fetch_remote_tls(settings: &mut KafkaSettings) -> Result<(), KeystoreError> {
    let wanted = [
        (
            "ssl_keystore_location",
            settings.keystore_location.clone(),
            "ssl.keystore.location",
            "keystore.p12",
        ),
        (
            "ssl_truststore_location",
            settings.truststore_location.clone(),
            "ssl.ca.location",
            "truststore.pem",
        ),
    ];
    for (setting, uri, property, file) in wanted {
        let Some(uri) = uri else { continue };
        let bytes = fetch(setting, &uri).await?;
        check_format(setting, &uri, &bytes)?;
        let path = write_private(file, &bytes)?;
        settings
            .properties
            .push((property.into(), path.display().to_string()));
    }
    Ok(())
}

async fn fetch(setting: &'static str, uri: &str) -> Result<Vec<u8>, KeystoreError> {
    let err = |reason: String| KeystoreError::Fetch {
        setting,
        uri: uri.to_string(),
        reason,
    };
    let (scheme, bucket, key) = parse_uri(uri).map_err(err)?;
    let store = open_bucket(scheme, &bucket).map_err(err)?;
    let got = store
        .get_opts(&Path::from(key.as_str()), GetOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    if got.meta.size > MAX_BYTES {
        return Err(err(format!(
            "{} bytes; a keystore or CA bundle is at most {MAX_BYTES}",
            got.meta.size
        )));
    }
    Ok(got.bytes().await.map_err(|e| err(e.to_string()))?.to_vec())
}

fn check_format(setting: &'static str, uri: &str, bytes: &[u8]) -> Result<(), KeystoreError> {
    let refuse = |reason: &str| {
        Err(KeystoreError::Format {
            setting,
            uri: uri.to_string(),
            reason: reason.to_string(),
        })
    };
    let pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if setting == "ssl_keystore_location" {
        if bytes.starts_with(&JKS_MAGIC) {
            return refuse(
                "a Java KeyStore (JKS); librdkafka reads PKCS#12: convert it with \
                 keytool -importkeystore -srckeystore in.jks -destkeystore out.p12 -deststoretype PKCS12",
            );
        }
        // PKCS#12 is DER: one SEQUENCE.
        if bytes.first() != Some(&0x30) || pem {
            return refuse("not a PKCS#12 keystore");
        }
    } else if !pem {
        return refuse(
            "not a PEM CA bundle; librdkafka reads PEM: export the CA with \
             keytool -exportcert -rfc -alias <ca> -keystore <truststore>",
        );
    }
    Ok(())
}

/// Writes `bytes` to a file only this user can read.
fn write_private(name: &str, bytes: &[u8]) -> Result<PathBuf, KeystoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("bgpersist-kafka-tls-{}", std::process::id()));
    let path = dir.join(name);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(bytes)
    };
    write().map_err(|source| KeystoreError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_librdkafka_cannot_read_are_refused_with_the_fix() {
        let jks = [0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2];
        let e = check_format("ssl_keystore_location", "s3://b/k.jks", &jks)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("Java KeyStore") && e.contains("keytool -importkeystore"),
            "{e}"
        );
        assert!(
            check_format(
                "ssl_keystore_location",
                "s3://b/k",
                b"-----BEGIN CERTIFICATE-----"
            )
            .is_err()
        );
        assert!(check_format("ssl_keystore_location", "s3://b/k", &[0x30, 0x82, 1, 2]).is_ok());
        let e = check_format("ssl_truststore_location", "s3://b/t.jks", &jks)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("not a PEM CA bundle") && e.contains("-exportcert -rfc"),
            "{e}"
        );
        assert!(
            check_format(
                "ssl_truststore_location",
                "s3://b/ca.pem",
                b"-----BEGIN CERTIFICATE-----\n"
            )
            .is_ok()
        );
    }
}
