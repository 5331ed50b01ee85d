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
    /// Accepted API keys, comma-separated; every request then needs `Authorization: Bearer KEY`.
    #[arg(
        long = "api-key",
        env = "RFT_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,
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
    config.api_keys = args
        .api_keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    config.inference_queue = args.inference_queue;
    rft_server::serve_blocking(config, SocketAddr::new(args.host, args.port))?;
    Ok(ExitCode::SUCCESS)
}
