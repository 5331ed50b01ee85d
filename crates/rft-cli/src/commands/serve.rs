//! `rft serve`: the OpenAI-compatible API (see `rft-server` and docs/api.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `rft serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Without API keys only a loopback address is accepted.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub(crate) port: u16,
    /// The data folder: database, uploaded files, jobs and checkpoints (default: ~/.openrft/serve).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// An accepted API key (repeatable); every request then needs `Authorization: Bearer KEY`.
    /// Prefer the RFT_API_KEYS environment variable (comma-separated): a command line is
    /// visible to every user of the machine.
    #[arg(long = "api-key", value_delimiter = ',')]
    pub(crate) api_keys: Vec<String>,
    /// A base model clients may name, besides the default and the models folder
    /// (repeatable): a hub name, a path, or NAME=PATH. No other name or path is served.
    #[arg(long = "model", value_name = "MODEL")]
    pub(crate) models: Vec<String>,
    /// A host name accepted in the Host header without API keys, besides loopback names
    /// (repeatable).
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub(crate) allowed_hosts: Vec<String>,
    /// Chat requests that may wait for the model before new ones get HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub(crate) inference_queue: usize,
}

pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| rft_model::hub::rft_home().join("serve"));
    let mut config = rft_server::ServerConfig::new(data);
    if !args.api_keys.is_empty() {
        tracing::warn!(
            "--api-key puts the key on the command line, where every user of this machine can read it (ps); set RFT_API_KEYS instead"
        );
    }
    let from_env = std::env::var("RFT_API_KEYS").unwrap_or_default();
    config.api_keys = from_env
        .split(',')
        .chain(args.api_keys.iter().map(String::as_str))
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    config.inference_queue = args.inference_queue;
    config.models = args.models.clone();
    config.allowed_hosts = args.allowed_hosts.clone();
    rft_server::serve_blocking(config, SocketAddr::new(args.host, args.port))?;
    Ok(ExitCode::SUCCESS)
}
