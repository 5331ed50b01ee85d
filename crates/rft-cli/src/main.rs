//! The `rft` binary: parses the command line and dispatches to `commands::*`.
//!
//! Data goes to stdout, logs and errors to stderr; errors print with their causes (`{:#}`).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// `print!` that returns the write's error instead of panicking: a reader that has gone
/// (`rft bench learn --replot | head`) ends the command quietly through `main`'s broken-pipe
/// check, and a full disk is an error that says so, rather than a panic and, under
/// `RUST_BACKTRACE`, a backtrace.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        anyhow::Context::context(
            write!(std::io::stdout().lock(), $($arg)*),
            "cannot write to standard output",
        )?
    }};
}

/// `println!`'s counterpart of `out!`.
macro_rules! outln {
    () => {
        out!("\n")
    };
    ($($arg:tt)*) => {
        out!("{}\n", format_args!($($arg)*))
    };
}

mod cli;
mod commands;
mod embedder;

fn main() -> ExitCode {
    // candle 0.11 sizes its matmul thread pool by parsing /proc/cpuinfo on every matmul unless
    // RAYON_NUM_THREADS is set (hundreds of reads per decode step); set it once, before any
    // thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
    // candle runs element-wise ops on a barrier pool of this many threads, shared by the whole
    // process: the engine's shards (rft_model::parallel) would queue on its lock, and its
    // spinning workers take cycles from the shards' matmuls. One thread keeps every op on the
    // thread that asked for it (measured: batch-64 decode 5-10% faster even without shards).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let args = cli::Cli::parse();
    init_logging(args.verbose);
    // Engines read the precision from the environment wherever a command loads one; set it
    // here, checked, before any thread starts.
    for (name, value) in [
        ("RFT_DTYPE", &args.dtype),
        ("RFT_SAMPLER_DTYPE", &args.sampler_dtype),
    ] {
        let Some(value) = value else { continue };
        match rft_model::Precision::parse(value) {
            Ok(precision) => std::env::set_var(name, precision.name()),
            Err(err) => {
                // clap took the flag or the variable: name both.
                let flag = name[4..].to_ascii_lowercase().replace('_', "-");
                eprintln!("error: --{flag} (or {name}): {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
