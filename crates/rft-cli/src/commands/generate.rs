//! `rft generate`: sample completions from a model, as text or as JSON with token log-probs.

use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use rft_model::hub::{resolve_model, ModelLocation};
use rft_model::sample::{sample, SamplingParams};
use rft_model::tokenizer::Tokenizer;
use rft_model::CausalLm;
use serde_json::{json, Value};

use crate::cli::GenerateArgs;

pub(crate) fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    if args.response_format.is_some() {
        anyhow::bail!("--response-format (structured outputs) is not supported yet; it arrives with constrained decoding");
    }
    let messages: Vec<Value> = match (&args.prompt, &args.messages) {
        (Some(prompt), _) => vec![json!({"role": "user", "content": prompt})],
        (None, Some(text)) => serde_json::from_str(text)
            .context("--messages must be a JSON array of {\"role\", \"content\"} objects")?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --messages JSON"),
    };
    let location = resolve_model(&args.model)?;
    let path = match &location {
        ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path.clone(),
    };
    let device = Device::Cpu;
    let model = CausalLm::load(&path, &device)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let tokenizer = Tokenizer::load(&path)?;
    let text = tokenizer.chat_template()?.render(&messages, None, true)?;
    let prompt_ids = tokenizer.encode(&text, false)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_tokens: args.max_tokens,
        stop_ids: tokenizer.eos_token_ids().to_vec(),
        seed: args.seed,
    };
    let completions = sample(&model, &prompt_ids, args.n.max(1), &params)?;
    for completion in completions {
        let text = tokenizer.decode(&completion.ids, true)?;
        if args.json {
            println!(
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
            println!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
