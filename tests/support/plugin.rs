//! Runs the `kubectl-bgpersist` binary this package builds, as a user would,
//! and keeps its exit code and output for the assertions.

use std::process::Command;

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `kubectl-bgpersist ARGS`, with no BGP_WRITER_IMAGE from the test's own
/// environment (an operator with no image of its own); `-1` as the code when
/// it was killed by a signal.
pub fn run(args: &[&str]) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-bgpersist"));
    cmd.env_remove("BGP_WRITER_IMAGE");
    output(cmd.args(args))
}

/// `run` told the operator's image the way the chart tells the operator
/// (`BGP_WRITER_IMAGE`), so it renders what the tests' operator applies.
pub fn run_as_chart(args: &[&str]) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-bgpersist"));
    cmd.env("BGP_WRITER_IMAGE", super::OPERATOR_IMAGE);
    output(cmd.args(args))
}

fn output(cmd: &mut Command) -> anyhow::Result<Outcome> {
    let out = cmd.output()?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `run` against the rig's API server.
pub fn on_rig(args: &[&str]) -> anyhow::Result<Outcome> {
    let kubeconfig = super::rig("k8s", "BGP_KUBECONFIG");
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    run_as_chart(&all)
}

/// The documents of a multi-document YAML text.
pub fn yaml_docs(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}
