//! The image `hack/image` builds against the Dockerfile's final stage: the
//! same Debian release and packages, user, entrypoint and ports. A change to
//! either side that the other does not follow fails here.

use crate::cli::repo_path;
use crate::cluster::image_env;
use anyhow::{Context as _, bail};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// What the Dockerfile's last stage declares.
#[derive(Debug)]
struct RuntimeStage {
    release: String,
    packages: Vec<String>,
    uid: String,
    user: String,
    entrypoint: Vec<String>,
    ports: BTreeSet<String>,
}

fn runtime_stage(dockerfile: &str) -> anyhow::Result<RuntimeStage> {
    let release = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG DEBIAN_RELEASE="))
        .context("ARG DEBIAN_RELEASE")?
        .to_string();
    let last_from = dockerfile.rfind("\nFROM ").context("no FROM")?;
    let stage = &dockerfile[last_from..];
    // Continuation lines joined, so each instruction is one line.
    let joined = stage.replace("\\\n", " ");
    let words_after = |marker: &str| -> Option<Vec<String>> {
        let line = joined.lines().find(|l| l.contains(marker))?;
        let rest = &line[line.find(marker)? + marker.len()..];
        Some(rest.split_whitespace().map(str::to_string).collect())
    };
    let packages: Vec<String> = words_after("apt-get install -y --no-install-recommends")
        .context("apt-get install in the final stage")?
        .into_iter()
        .take_while(|w| w != "&&")
        .collect();
    let useradd = words_after("useradd").context("useradd in the final stage")?;
    let uid = useradd
        .iter()
        .skip_while(|w| *w != "--uid")
        .nth(1)
        .context("useradd --uid")?
        .clone();
    let instruction = |name: &str| {
        joined
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_string)
    };
    Ok(RuntimeStage {
        release,
        packages,
        uid,
        user: instruction("USER ").context("USER")?,
        entrypoint: serde_json::from_str(&instruction("ENTRYPOINT ").context("ENTRYPOINT")?)?,
        ports: instruction("EXPOSE ")
            .context("EXPOSE")?
            .split_whitespace()
            .map(|p| format!("{p}/tcp"))
            .collect(),
    })
}

fn tar(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("tar").args(args).output()?;
    if !out.status.success() {
        bail!("tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// A file of the image's root filesystem, searched in its layers, top first.
fn image_file(archive: &str, layers: &[String], dir: &Path, path: &str) -> anyhow::Result<String> {
    for (i, layer) in layers.iter().enumerate().rev() {
        let layer_file = dir.join(format!("layer-{i}.tar"));
        if !layer_file.exists() {
            std::fs::write(&layer_file, tar(&["-xOf", archive, layer])?)?;
        }
        let layer_file = layer_file.display().to_string();
        let names = String::from_utf8_lossy(&tar(&["-tf", &layer_file])?).into_owned();
        if let Some(name) = names.lines().find(|n| n.trim_start_matches("./") == path) {
            return Ok(String::from_utf8_lossy(&tar(&["-xOf", &layer_file, name])?).into_owned());
        }
    }
    bail!("{path} is in no layer of {archive}")
}

#[test]
fn image_has_the_dockerfiles_runtime_stage() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile"))?;
    let want = runtime_stage(&dockerfile)?;
    let archive = image_env("BGP_IMAGE_ARCHIVE");

    let manifest: Value = serde_json::from_slice(&tar(&["-xOf", &archive, "manifest.json"])?)?;
    let config_name = manifest[0]["Config"].as_str().context("manifest Config")?;
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .context("manifest Layers")?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    let config: Value = serde_json::from_slice(&tar(&["-xOf", &archive, config_name])?)?;
    let c = &config["config"];
    assert_eq!(c["User"].as_str(), Some(want.user.as_str()), "USER");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(want.entrypoint),
        "ENTRYPOINT"
    );
    let ports: BTreeSet<String> = c["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(ports, want.ports, "EXPOSE");

    let dir = std::env::temp_dir().join(crate::support::unique("image"));
    std::fs::create_dir_all(&dir)?;
    let file = |path: &str| image_file(&archive, &layers, &dir, path);
    // /etc/os-release is a symlink to this file.
    let os = file("usr/lib/os-release")?;
    assert!(
        os.lines()
            .any(|l| l == format!("VERSION_CODENAME={}", want.release)),
        "image is not Debian {}:\n{os}",
        want.release
    );
    let status = file("var/lib/dpkg/status")?;
    let installed: BTreeSet<&str> = status
        .split("\n\n")
        .filter(|p| p.contains("\nStatus: install ok installed"))
        .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    for p in &want.packages {
        assert!(
            installed.contains(p.as_str()),
            "package {p} not installed in the image"
        );
    }
    let passwd = file("etc/passwd")?;
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(want.uid.as_str())),
        "no user with uid {} in the image:\n{passwd}",
        want.uid
    );
    for bin in want.entrypoint.iter().take(1) {
        file(bin.trim_start_matches('/'))?;
    }
    file("usr/local/bin/bgpersist-operator")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn runtime_stage_reads_the_dockerfile() -> anyhow::Result<()> {
    let stage = runtime_stage(&std::fs::read_to_string(repo_path("Dockerfile"))?)?;
    assert_eq!(stage.entrypoint, vec!["/usr/local/bin/bgpersist-writer"]);
    assert_eq!(stage.user, "65532:65532");
    assert_eq!(stage.uid, "65532");
    assert!(stage.packages.contains(&"libssl3".to_string()), "{stage:?}");
    assert!(stage.ports.contains("9090/tcp"), "{stage:?}");
    Ok(())
}
