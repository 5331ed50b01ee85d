//! `rft generate`: sample completions from a model, as text or as JSON with token log-probs.

use std::process::ExitCode;

use anyhow::Context;
use rft_model::constrain::ResponseFormat;
use rft_model::engine::Engine;
use rft_model::sample::SamplingParams;
use serde_json::{json, Value};

use crate::cli::GenerateArgs;

pub(crate) fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let messages: Vec<Value> = match (&args.prompt, &args.messages) {
        (Some(prompt), _) => vec![json!({"role": "user", "content": prompt})],
        (None, Some(text)) => serde_json::from_str(text)
            .context("--messages must be a JSON array of {\"role\", \"content\"} objects")?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --messages JSON"),
    };
    let response_format = match &args.response_format {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Some(
                ResponseFormat::from_value(&value)
                    .with_context(|| format!("invalid response format in {}", path.display()))?,
            )
        }
        None => None,
    };
    let engine = Engine::load(&args.model, &rft_model::device::from_env()?)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let prompt_ids = engine.chat_prompt(&messages, None)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_tokens: args.max_tokens,
        stop_strings: args.stop.clone(),
        seed: args.seed,
        ..SamplingParams::default()
    };
    let request = engine.request(
        prompt_ids.clone(),
        args.n.max(1),
        params,
        response_format.as_ref(),
    )?;
    let completions = engine.sampler().run(&[request])?.pop().unwrap_or_default();
    for completion in completions {
        let text = completion.text.clone().unwrap_or_default();
        if args.json {
            outln!(
                "{}",
                json!({
                    "text": text,
                    "prompt_ids": prompt_ids,
                    "ids": completion.ids,
                    "logprobs": completion.logprobs,
                    "finish_reason": completion.finish_reason.as_str(),
                })
            );
        } else {
            outln!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
