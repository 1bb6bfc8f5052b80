//! The committed CRD YAML must be exactly what `bgpersist-crdgen` prints.

#[test]
fn committed_crd_matches_the_generator() {
    let generated = bgpersist::crd::crd_yaml().unwrap_or_else(|e| panic!("crd yaml: {e}"));
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/backgroundpersistence.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/backgroundpersistence.yaml is stale: run `cargo run --bin bgpersist-crdgen > crds/backgroundpersistence.yaml`"
    );
}
