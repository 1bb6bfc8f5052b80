//! `render`: offline, with the operator's validation, and the same objects
//! the operator applies.

use crate::Applied;
use crate::support::plugin::{run, run_as_chart, yaml_docs};
use crate::support::{self, json_merge};
use bgpersist::operator::apply::contains;
use bgpersist::operator::render::CONFIG_HASH_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use serde_json::{Value, json};

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/examples/seed-example.yaml"
);

fn kinds_and_names(docs: &[Value]) -> Vec<(String, String)> {
    docs.iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Writes `value` as JSON to a fresh temporary file.
fn temp_json(value: &Value) -> anyhow::Result<std::path::PathBuf> {
    let file = std::env::temp_dir().join(format!("{}.json", support::unique("render")));
    std::fs::write(&file, serde_json::to_vec(value)?)?;
    Ok(file)
}

#[test]
fn render_prints_the_seed_offline_and_names_what_it_leaves_out() -> anyhow::Result<()> {
    // No cluster: a kubeconfig that does not exist must not matter.
    let out = run_as_chart(&["--kubeconfig", "/nonexistent/kubeconfig", "render", SEED])?;
    assert_eq!(out.code, 0, "{out}");
    let docs = yaml_docs(&out.stdout)?;
    let r = "background-persistence";
    assert_eq!(
        kinds_and_names(&docs),
        [
            ("Namespace", r.to_string()),
            ("ServiceAccount", format!("{r}-sa")),
            // One replica each: no PodDisruptionBudgets.
            ("Deployment", format!("{r}-go-metrics-bus-writer")),
            ("Deployment", format!("{r}-go-result-bus-metrics-writer")),
        ]
        .map(|(k, n)| (k.to_string(), n)),
        "{out}"
    );
    assert_eq!(
        docs[2]["spec"]["template"]["spec"]["containers"][0]["image"],
        crate::support::OPERATOR_IMAGE,
        "the operator's own image: the seed's image fields are placeholders"
    );
    // Without it, a writer would run the placeholder: refused, naming the field.
    let bare = run(&["render", SEED])?;
    assert_eq!(bare.code, 1, "{bare}");
    assert!(
        bare.stderr.contains(
            "spec.common_persistence_specs.bus_writer_image_go: writer go-metrics-bus-writer: \"<go bus writer image>\" is not an image reference"
        ),
        "{bare}"
    );
    assert!(
        out.stderr.contains(&format!(
            "left out: Secret {r}/{r}-kafka-sasl (spec.kafka_sasl_secret"
        )),
        "{out}"
    );
    Ok(())
}

#[test]
fn render_reads_json_as_it_reads_yaml() -> anyhow::Result<()> {
    let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(SEED)?)?;
    let file = temp_json(&yaml)?;
    let from_json = run_as_chart(&["render", &file.display().to_string()])?;
    let from_yaml = run_as_chart(&["render", SEED])?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(from_json.code, 0, "{from_json}");
    assert!(!from_json.stdout.is_empty());
    assert_eq!(from_json.stdout, from_yaml.stdout);
    Ok(())
}

#[test]
fn render_lists_each_problem_with_its_field_and_exits_1() -> anyhow::Result<()> {
    let mut bp: Value = serde_yaml::from_str(&std::fs::read_to_string(SEED)?)?;
    json_merge(
        &mut bp["spec"],
        &json!({"kafka_bootstrap_servers": null, "common_persistence_specs": {"bus_writer_image_go": null}}),
    );
    let file = temp_json(&bp)?;
    let path = file.display().to_string();
    let out = run(&["render", &path])?;
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("spec.kafka_bootstrap_servers: required when bus_backend is KAFKA"),
        "{out}"
    );
    assert!(
        out.stdout.is_empty(),
        "a spec-level problem renders nothing: {out}"
    );

    // Only the images missing: each writer is refused, naming its field;
    // the operator's own image (--writer-image, as its chart sets it) fixes it.
    json_merge(
        &mut bp["spec"],
        &json!({"kafka_bootstrap_servers": "k:9092"}),
    );
    std::fs::write(&file, serde_json::to_vec(&bp)?)?;
    let out = run(&["render", &path])?;
    assert_eq!(out.code, 1, "{out}");
    for w in ["go-metrics-bus-writer", "go-result-bus-metrics-writer"] {
        assert!(
            out.stderr.contains(&format!("writer {w}: spec.writers[")),
            "{out}"
        );
    }
    let out = run(&[
        "render",
        &path,
        "--writer-image",
        "registry.example/bgpersist:9",
    ])?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.code, 0, "{out}");
    let images: Vec<Value> = yaml_docs(&out.stdout)?
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .collect();
    assert_eq!(images, vec![json!("registry.example/bgpersist:9"); 2]);

    let missing = run(&["render", "/nonexistent/bp.yaml"])?;
    assert_eq!(missing.code, 2, "{missing}");
    Ok(())
}

/// The objects the operator applied hold every field `render` prints for the
/// same file, but for what render cannot know offline: the resource's uid
/// and the synced Secret's version in the config hash.
#[tokio::test]
async fn render_prints_what_the_operator_applies() -> anyhow::Result<()> {
    let applied = Applied::new("render").await?;
    let out = run_as_chart(&["render", &applied.file.display().to_string()])?;
    assert_eq!(out.code, 0, "{out}");
    let uid = applied.bps.get(&applied.name).await?.metadata.uid;
    let (c, ns) = (applied.client.clone(), applied.ns.as_str());
    let docs = yaml_docs(&out.stdout)?;
    assert_eq!(docs.len(), 6, "{out}");
    for mut doc in docs {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(refs) = doc["metadata"]["ownerReferences"].as_array_mut() {
            refs[0]["uid"] = json!(uid);
        }
        let live = match doc["kind"].as_str().unwrap_or_default() {
            "Namespace" => {
                serde_json::to_value(Api::<Namespace>::all(c.clone()).get(&name).await?)?
            }
            "ServiceAccount" => serde_json::to_value(
                Api::<ServiceAccount>::namespaced(c.clone(), ns)
                    .get(&name)
                    .await?,
            )?,
            "Deployment" => {
                let annotations = &mut doc["spec"]["template"]["metadata"]["annotations"];
                annotations
                    .as_object_mut()
                    .and_then(|a| a.remove(CONFIG_HASH_ANNOTATION))
                    .ok_or_else(|| anyhow::anyhow!("{name}: no config hash rendered"))?;
                serde_json::to_value(
                    Api::<Deployment>::namespaced(c.clone(), ns)
                        .get(&name)
                        .await?,
                )?
            }
            "PodDisruptionBudget" => serde_json::to_value(
                Api::<PodDisruptionBudget>::namespaced(c.clone(), ns)
                    .get(&name)
                    .await?,
            )?,
            other => anyhow::bail!("render printed an unexpected kind {other}"),
        };
        assert!(
            contains(&live, &doc),
            "{name}: the operator's object lacks rendered fields\n--- rendered\n{}\n--- live\n{}",
            serde_yaml::to_string(&doc)?,
            serde_yaml::to_string(&live)?
        );
    }
    // The one object render leaves out, and says so, is the synced Secret.
    let secret = format!("{}-kafka-sasl", applied.name);
    Api::<Secret>::namespaced(c.clone(), ns)
        .get(&secret)
        .await?;
    assert!(
        out.stderr.contains(&format!("Secret {ns}/{secret}")),
        "{out}"
    );
    applied.cleanup().await;
    Ok(())
}
