//! `rft grader validate`: the checks of `graders/validate`, on a file.

use std::path::Path;
use std::process::ExitCode;

use super::read_grader;

pub(crate) fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let report = read_grader(path).and_then(|grader| {
        rft_grade::validate(&grader).map_err(|e| {
            anyhow::Error::new(e).context(format!("invalid grader in {}", path.display()))
        })?;
        Ok(grader)
    });
    match report {
        Ok(grader) => {
            outln!("{}", serde_json::to_string_pretty(&grader)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
