//! Prints the BackgroundPersistence CRD as YAML: `cargo run --bin bgpersist-crdgen > crds/backgroundpersistence.yaml`.
//! A test fails when the committed file differs from this output.

fn main() -> std::process::ExitCode {
    match bgpersist::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bgpersist-crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
