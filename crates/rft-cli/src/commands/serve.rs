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
    /// The data folder: database, uploaded files, jobs and checkpoints (default:
    /// $RFT_HOME/serve, that is ~/.cache/openrft/serve). With --database and --blobs, this
    /// process's local working copy.
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
    /// Most new tokens one request may ask for: `n × max_tokens` for chat, prompts × `n` ×
    /// `max_tokens` for completions (a rollout worker serving large groups raises it).
    #[arg(long, value_name = "TOKENS", default_value_t = 65_536)]
    pub(crate) max_request_tokens: usize,
    /// Memory every model of the server together may take, in GiB: base models (each loaded
    /// once for chat, Tinker, evals and jobs) and merged adapters. Past it the least recently
    /// used model nobody is using is dropped; a load that cannot fit gets HTTP 503.
    #[arg(
        long,
        value_name = "GIB",
        default_value_t = 8.0,
        env = "RFT_MAX_MODEL_GIB"
    )]
    pub(crate) max_model_gib: f64,
    /// The device models run on: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "RFT_DEVICE")]
    pub(crate) device: String,
    /// Serve as a rollout worker: the folder `/v1/load_lora_adapter` loads adapters from (a
    /// folder the trainer writes its versions to); nothing outside it can be loaded. Without
    /// it those endpoints answer 404.
    #[arg(long, value_name = "DIR")]
    pub(crate) adapter_root: Option<PathBuf>,
    /// Sample the jobs' rollouts on a rollout fleet (vLLM or `rft serve --adapter-root`
    /// workers): a completions base URL (repeatable). Needs --rollout-adapter-dir, or --blobs
    /// s3://… shared with `rft serve` replicas started with the same --blobs.
    #[arg(long = "rollout-url", value_name = "URL")]
    pub(crate) rollout_urls: Vec<String>,
    /// Every replica's admin base URL (repeatable; default: the --rollout-url ones).
    #[arg(long = "rollout-admin-url", value_name = "URL")]
    pub(crate) rollout_admin_urls: Vec<String>,
    /// The folder the jobs' adapters are published to, at the same path on every replica.
    #[arg(long, value_name = "DIR")]
    pub(crate) rollout_adapter_dir: Option<PathBuf>,
    /// The database: a postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL, shared by every API
    /// process and worker (default: SQLite in the data folder, one machine). Prefer the
    /// environment variable: a password on the command line is visible to every user.
    #[arg(
        long,
        value_name = "URL",
        env = "RFT_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) database: Option<String>,
    /// Where files, checkpoints and adapters are kept: s3://BUCKET[/PREFIX] on any
    /// S3-compatible store, configured by the usual AWS variables (AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) (default: the
    /// data folder).
    #[arg(long, value_name = "URL", env = "RFT_BLOBS")]
    pub(crate) blobs: Option<String>,
    /// Serve the API only and leave the jobs to `rft worker` processes (on this machine or
    /// others, sharing --database and --blobs).
    #[arg(long)]
    pub(crate) no_worker: bool,
    /// How long a worker's claim on a job lasts without a heartbeat: after a worker dies,
    /// another takes its job over this long after its last heartbeat.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub(crate) lease_seconds: f64,
}

/// Arguments of `rft worker`: those of `rft serve` that concern running jobs (the address,
/// API keys and rollout-worker options are not used).
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `rft worker`: claims queued jobs from the shared database and runs them, until SIGTERM or
/// Ctrl-C (the running job is then paused at its next step boundary and requeued).
pub(crate) fn worker(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args.serve)?;
    anyhow::ensure!(
        !args.serve.no_worker,
        "--no-worker makes no sense for rft worker"
    );
    let settings = rft_server::WorkerSettings::new(config.lease);
    rft_server::run_worker(&config, settings)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = config(args)?;
    rft_server::serve_blocking(config, SocketAddr::new(args.host, args.port))?;
    Ok(ExitCode::SUCCESS)
}

fn config(args: &ServeArgs) -> anyhow::Result<rft_server::ServerConfig> {
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
    anyhow::ensure!(
        args.max_request_tokens >= 1,
        "--max-request-tokens must be at least 1"
    );
    config.max_request_tokens = args.max_request_tokens;
    if !(args.max_model_gib.is_finite() && args.max_model_gib > 0.0) {
        anyhow::bail!("--max-model-gib must be a positive number of GiB");
    }
    config.max_loaded_model_bytes = (args.max_model_gib * f64::from(1u32 << 30)) as u64;
    config.device = args.device.clone();
    config.adapter_root = args.adapter_root.clone();
    if !args.rollout_urls.is_empty() {
        let shared_blobs = args
            .blobs
            .as_deref()
            .is_some_and(|b| b.trim().starts_with("s3://"));
        anyhow::ensure!(
            args.rollout_adapter_dir.is_some() || shared_blobs,
            "--rollout-url needs --rollout-adapter-dir (a folder every replica reads) or --blobs s3://… (which `rft serve` replicas share; vLLM replicas need the folder)"
        );
        config.rollout = Some(rft_server::RolloutSettings {
            urls: args.rollout_urls.clone(),
            admin_urls: args.rollout_admin_urls.clone(),
            adapter_dir: args.rollout_adapter_dir.clone(),
            api_key: std::env::var("RFT_ROLLOUT_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        });
    }
    config.models = args.models.clone();
    config.allowed_hosts = args.allowed_hosts.clone();
    config.database = args.database.clone().filter(|d| !d.trim().is_empty());
    config.blobs = args.blobs.clone().filter(|b| !b.trim().is_empty());
    config.run_jobs = !args.no_worker;
    anyhow::ensure!(
        args.lease_seconds.is_finite() && (1.0..=3600.0).contains(&args.lease_seconds),
        "--lease-seconds must be from 1 to 3600"
    );
    config.lease = std::time::Duration::from_secs_f64(args.lease_seconds);
    Ok(config)
}
