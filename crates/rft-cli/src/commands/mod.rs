//! One module per subcommand; `run` dispatches.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rft_types::Grader;

use crate::cli::{BenchCommand, Cli, Command, GraderCommand, ModelsCommand, SetupCommand};

mod bench;
pub(crate) mod bench_decode;
pub(crate) mod bench_grpo;
pub(crate) mod bench_learn;
pub(crate) mod bench_matmul;
pub(crate) mod bench_serve;
pub(crate) mod bench_storage;
pub(crate) mod bench_train;
pub(crate) mod check_device;
pub(crate) mod eval;
pub(crate) mod example;
mod generate;
mod grade;
mod grader;
mod models;
pub(crate) mod serve;
mod setup;
mod train;

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Grade(args) => grade::run(&args),
        Command::Grader {
            command: GraderCommand::Validate { grader: path },
        } => grader::validate(&path),
        Command::Eval(args) => eval::run(&args, eval::Mode::Eval),
        Command::Doctor(args) => eval::run(&args, eval::Mode::Doctor),
        Command::Generate(args) => generate::run(&args),
        Command::Train(args) => train::train(&args),
        Command::Quickstart(args) => train::quickstart(&args),
        Command::Example { command } => example::run(&command),
        Command::Export(args) => train::export(&args),
        Command::Models {
            command: ModelsCommand::List,
        } => models::list(),
        Command::Models {
            command: ModelsCommand::Pull { name },
        } => models::pull(&name),
        Command::Setup {
            command: SetupCommand::Python { tag, python },
        } => setup::python(&tag, &python),
        Command::Serve(args) => serve::serve(&args),
        Command::Worker(args) => serve::worker(&args),
        Command::CheckDevice(args) => check_device::check(&args),
        Command::Bench {
            command: BenchCommand::Graders(args),
        } => bench::graders(&args),
        Command::Bench {
            command: BenchCommand::Python(args),
        } => bench::python(&args),
        Command::Bench {
            command: BenchCommand::Decode(args),
        } => bench_decode::decode(&args),
        Command::Bench {
            command: BenchCommand::TrainMemory(args),
        } => bench_train::train_memory(&args),
        Command::Bench {
            command: BenchCommand::Grpo(args),
        } => bench_grpo::grpo(&args),
        Command::Bench {
            command: BenchCommand::Learn(args),
        } => bench_learn::learn(&args),
        Command::Bench {
            command: BenchCommand::Serve(args),
        } => bench_serve::serve(&args),
        Command::Bench {
            command: BenchCommand::Matmul(args),
        } => bench_matmul::matmul(&args),
        Command::Bench {
            command: BenchCommand::Storage(args),
        } => bench_storage::storage(&args),
    }
}

/// Reads and parses a grader spec file; errors name the file and the JSON path.
pub(crate) fn read_grader(path: &Path) -> anyhow::Result<Grader> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read grader file {}", path.display()))?;
    Grader::from_json_str(&text).with_context(|| format!("invalid grader in {}", path.display()))
}
