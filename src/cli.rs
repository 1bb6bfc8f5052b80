//! Command-line plumbing shared by the binaries: the log format flag, the
//! environment seam in front of clap, and one-line parse errors.

use clap::Command;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// `--log-format` / `BGP_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The flag both binaries share.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log lines as JSON or text.
    #[arg(
        long,
        env = "BGP_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Json
    )]
    pub log_format: LogFormat,
}

impl LogFormat {
    pub fn is_json(self) -> bool {
        self == LogFormat::Json
    }
}

/// Reads every argument's `env` variable through `env` as well as through
/// clap, which reads the process while the command is built.
///
/// An empty variable counts as unset (Deployments template them empty) where
/// clap would take `""` as the value; and tests hand in a table, since they
/// cannot set the process's environment (`set_var` is unsafe in edition 2024).
/// A set variable becomes the argument's default: flags still beat it, and in
/// the binary clap's own reading of the same variable is the same value.
pub fn with_env(cmd: Command, env: impl Fn(&str) -> Option<String>) -> Command {
    cmd.mut_args(|arg| {
        let value = arg.get_env().and_then(|name| name.to_str()).map(&env);
        match value {
            Some(Some(value)) if value.is_empty() => arg.env(None),
            // --help shows the value under [env: ...] already.
            Some(Some(value)) => arg.default_value(value).hide_default_value(true),
            _ => arg,
        }
    })
}

/// A parse error as one line, for `<binary>: <line>` on stderr; clap's own
/// rendering spans several lines (usage, tips).
pub fn one_line(error: &clap::Error) -> String {
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let message = match (error.kind(), text(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(arg)) => {
            let head = if arg.starts_with('-') {
                format!("unknown flag {arg}")
            } else {
                format!("unexpected argument '{arg}'")
            };
            match text(ContextKind::SuggestedArg) {
                Some(similar) => format!("{head} (did you mean {similar}?)"),
                None => head,
            }
        }
        _ => {
            // The first line is the error; an [possible values: ...] line may
            // follow, then usage and tips, which --help covers.
            let rendered = error.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            match lines.next().filter(|l| l.starts_with("[possible values")) {
                Some(values) => format!("{first} {values}"),
                None => first.to_string(),
            }
        }
    };
    format!("{message} (see --help)")
}
