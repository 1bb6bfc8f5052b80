//! kubectl-bgpersist: the kubectl plugin (`kubectl bgpersist ...` once the
//! binary is on PATH). Flags and wiring only; the logic is `bgpersist::plugin`.

use bgpersist::operator::model::{Defaults, ENV_WRITER_IMAGE};
use bgpersist::plugin::{self, KubeOptions, Output, PluginError, status::EXIT_NOT_READY};
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kubectl-bgpersist",
    bin_name = "kubectl bgpersist",
    version,
    about = "Look into BackgroundPersistence resources: their writers' health, what the operator renders, and what it would change.",
    after_help = "Exit codes: 0 success; 1 `render`: validation problems, `diff`: differences; \
                  2 an error (unreadable file, API server, kubeconfig); 3 `status`: some writer is not ready. \
                  See docs/kubectl-plugin.md."
)]
struct Cli {
    /// Path to the kubeconfig file (else KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The writers' namespace; the resource is cluster-scoped and names it,
    /// so a namespace given must be that one.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Per writer: replicas, readiness, consumer lag, dead-letter and retry
    /// rates (from its pods' /metrics through the API server's pod proxy)
    /// and the last error.
    #[command(
        after_help = "Exit codes: 0 every writer ready; 3 some writer not ready; 2 error. \
                            Needs get on the resource, get deployments, list pods and get pods/proxy \
                            in the writers' namespace."
    )]
    Status {
        /// The BackgroundPersistence.
        name: String,
        /// Time between the two scrapes the rates come from (e.g. 5s, 500ms).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        window: Duration,
        /// table, or json for scripts.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// What the operator would apply for a resource file (YAML or JSON),
    /// offline: validated and rendered by the operator's own code, as
    /// multi-document YAML. Secrets synced from secret managers are not
    /// read; stderr names what is left out.
    #[command(
        after_help = "Exit codes: 0 rendered; 1 validation problems (each on stderr with its \
                            field path; the writers without problems are still printed); 2 error."
    )]
    Render {
        /// A file holding a BackgroundPersistence (other documents are skipped).
        file: PathBuf,
        #[command(flatten)]
        defaults: DefaultsArgs,
    },
    /// What the operator would change for the live resource: each rendered
    /// object server-side applied as a dry run with the operator's field
    /// manager and compared with the live one; objects it would create or prune.
    #[command(
        after_help = "Exit codes (as kubectl diff): 0 no differences; 1 differences; \
                            2 error. Needs get on the resource, get/patch (dry run) on what it renders \
                            and list on the kinds it prunes."
    )]
    Diff {
        /// The BackgroundPersistence.
        name: String,
        #[command(flatten)]
        defaults: DefaultsArgs,
    },
}

#[derive(clap::Args)]
struct DefaultsArgs {
    /// The image writers run when the resource names none: the operator's
    /// own, which its chart sets as BGP_WRITER_IMAGE.
    #[arg(long, env = ENV_WRITER_IMAGE, value_name = "IMAGE")]
    writer_image: Option<String>,
    /// The OTLP endpoint the operator hands its writers (the chart's
    /// `tracing.otlpEndpoint`), so the render matches what it applies.
    #[arg(long, value_name = "URL")]
    writer_otlp_endpoint: Option<String>,
}

impl DefaultsArgs {
    fn defaults(self) -> Defaults {
        Defaults {
            writer_image: self.writer_image.filter(|s| !s.trim().is_empty()),
            otlp_endpoint: self.writer_otlp_endpoint.filter(|s| !s.trim().is_empty()),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: k8s_openapi::jiff::SignedDuration = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from(d).map_err(|e| format!("{e}"))
}

fn main() -> ExitCode {
    let cli = match Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return match e.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(2),
            };
        }
        Err(e) => {
            eprintln!("kubectl-bgpersist: {}", bgpersist::cli::one_line(&e));
            return ExitCode::from(2);
        }
    };
    bgpersist::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubectl-bgpersist: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = KubeOptions {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
        namespace: cli.namespace,
    };
    match runtime.block_on(run(cli.command, &opts)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let PluginError::Invalid { problems } = &e {
                for p in problems {
                    eprintln!("kubectl-bgpersist: {p}");
                }
            }
            eprintln!("kubectl-bgpersist: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command, opts: &KubeOptions) -> Result<u8, PluginError> {
    match command {
        Command::Status {
            name,
            window,
            output,
        } => {
            let client = opts.client().await?;
            let report = plugin::status::status(&client, opts, &name, window).await?;
            match to_output(output) {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", plugin::status::table(&report)),
            }
            Ok(if report.all_ready() {
                0
            } else {
                EXIT_NOT_READY
            })
        }
        Command::Render { file, defaults } => {
            let defaults = defaults.defaults();
            let mut problems = Vec::new();
            for bp in plugin::render::read_file(&file)? {
                opts.check_namespace(&bp)?;
                let r = plugin::render::render(bp, &defaults)?;
                for note in &r.notes {
                    eprintln!("kubectl-bgpersist: note: {note}");
                }
                print!("{}", plugin::render::to_yaml(&r.objects)?);
                problems.extend(r.problems);
            }
            if problems.is_empty() {
                Ok(0)
            } else {
                Err(PluginError::Invalid { problems })
            }
        }
        Command::Diff { name, defaults } => {
            let client = opts.client().await?;
            let report = plugin::diff::diff(&client, opts, &name, &defaults.defaults()).await?;
            for note in &report.notes {
                eprintln!("kubectl-bgpersist: note: {note}");
            }
            print!("{}", report.text());
            Ok(if report.entries.is_empty() { 0 } else { 1 })
        }
    }
}

fn to_output(f: Format) -> Output {
    match f {
        Format::Table => Output::Table,
        Format::Json => Output::Json,
    }
}
