//! A model ready to serve: weights, tokenizer, chat template, optional LoRA adapter, and the
//! structured-output compiler, loaded from whatever a user wrote as a model.
//!
//! A model spec is a known name (`smollm2-135m-instruct`), a GGUF file, a Hugging Face folder,
//! a cached hub id, or a **LoRA adapter folder** (`adapter_config.json`, as OpenRFT's checkpoints
//! and PEFT write it), whose `base_model_name_or_path` names the base model by any of the former.
//! Every command that takes a model (`rft generate`, `rft eval`, jobs, the server) goes through
//! [`Engine::load`], so they all accept the same things.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use serde_json::Value;

use crate::constrain::{ConstraintCompiler, ResponseFormat};
use crate::hub::{resolve_model, ModelLocation};
use crate::lora::LoraAdapter;
use crate::sample::{SampleRequest, Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::tool_calls::ToolCallFormat;
use crate::{CausalLm, ModelError};

/// A loaded model with everything needed to sample from chat messages.
pub struct Engine {
    /// The base model's spec as given (a name or a path).
    pub base: String,
    /// Where the base model's files are.
    pub base_path: PathBuf,
    /// The base model.
    pub model: CausalLm,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// The adapter the spec named, if any.
    pub adapter: Option<LoraAdapter>,
    constraints: OnceLock<Arc<ConstraintCompiler>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("base", &self.base)
            .field("adapter", &self.adapter.is_some())
            .finish()
    }
}

/// The base model an adapter folder names.
pub fn adapter_base(dir: &Path) -> Result<String, ModelError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let config: Value = serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match config
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
    {
        Some(base) if !base.is_empty() => {
            // A relative path is relative to the adapter folder (PEFT writes `..` for an
            // adapter saved inside its model's folder).
            let relative = dir.join(base);
            if Path::new(base).is_relative() && relative.exists() {
                Ok(relative.to_string_lossy().into_owned())
            } else {
                Ok(base.to_owned())
            }
        }
        _ => Err(ModelError::Format(format!(
            "{}: no base_model_name_or_path; load the base model and pass the adapter separately",
            path.display()
        ))),
    }
}

impl Engine {
    /// Loads a model spec (see the module docs).
    pub fn load(spec: &str, device: &Device) -> Result<Engine, ModelError> {
        let as_path = Path::new(spec);
        if as_path.join("adapter_config.json").is_file() {
            let base = adapter_base(as_path)?;
            let mut engine = Engine::load_base(&base, device)?;
            engine.adapter = Some(LoraAdapter::load_peft(
                as_path,
                engine.model.config(),
                device,
            )?);
            return Ok(engine);
        }
        Engine::load_base(spec, device)
    }

    /// Loads a base model (no adapter).
    pub fn load_base(spec: &str, device: &Device) -> Result<Engine, ModelError> {
        let path = match resolve_model(spec)? {
            ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path,
        };
        let model = CausalLm::load(&path, device)?;
        let tokenizer = Tokenizer::load(&path)?;
        Ok(Engine {
            base: spec.to_owned(),
            base_path: path,
            model,
            tokenizer,
            adapter: None,
            constraints: OnceLock::new(),
        })
    }

    /// Another engine over the same base weights (tensors are shared, not copied) and
    /// tokenizer, without this one's adapter: what a caller that must own an engine (a
    /// `TrainingClient`) gets from a base model the [`crate::host::EngineHost`] lends.
    pub fn share(&self) -> Engine {
        Engine {
            base: self.base.clone(),
            base_path: self.base_path.clone(),
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            adapter: None,
            constraints: self.constraints.clone(),
        }
    }

    /// An engine from parts already loaded (tests build tiny models this way).
    pub fn from_parts(base: String, model: CausalLm, tokenizer: Tokenizer) -> Engine {
        Engine {
            base_path: PathBuf::from(&base),
            base,
            model,
            tokenizer,
            adapter: None,
            constraints: OnceLock::new(),
        }
    }

    /// Renders chat messages (and tools) with the model's chat template and tokenizes them,
    /// ready for the assistant's turn; tools reach templates that ignore them through a system
    /// prompt ([`crate::tokenizer::ChatTemplate::render_prompt`]).
    pub fn chat_prompt(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
    ) -> Result<Vec<u32>, ModelError> {
        let text = self
            .tokenizer
            .chat_template()?
            .render_prompt(messages, tools)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// The syntax this model's prompts ask it to call tools in (see [`crate::tool_calls`]).
    pub fn tool_call_format(&self) -> ToolCallFormat {
        self.tokenizer
            .chat_template()
            .map_or(ToolCallFormat::Hermes, |t| t.tool_call_format())
    }

    /// A sampler over this engine's model, adapter and tokenizer.
    pub fn sampler(&self) -> Sampler<'_> {
        Sampler {
            model: &self.model,
            adapter: self.adapter.as_ref(),
            tokenizer: Some(&self.tokenizer),
        }
    }

    /// The structured-output compiler for this tokenizer, built on first use.
    pub fn constraint_compiler(&self) -> Result<Arc<ConstraintCompiler>, ModelError> {
        if let Some(compiler) = self.constraints.get() {
            return Ok(compiler.clone());
        }
        let compiler = Arc::new(ConstraintCompiler::new(&self.tokenizer)?);
        Ok(self.constraints.get_or_init(|| compiler).clone())
    }

    /// A sampling request for `prompt`: stops at the tokenizer's end-of-turn tokens, constrained
    /// by `response_format` when given.
    pub fn request(
        &self,
        prompt: Vec<u32>,
        n: usize,
        mut params: SamplingParams,
        response_format: Option<&ResponseFormat>,
    ) -> Result<SampleRequest, ModelError> {
        for &eos in self.tokenizer.eos_token_ids() {
            if !params.stop_ids.contains(&eos) {
                params.stop_ids.push(eos);
            }
        }
        let constraint = match response_format {
            Some(format) => self.constraint_compiler()?.constraint(format)?,
            None => None,
        };
        Ok(SampleRequest {
            prompt,
            n,
            params,
            constraint,
        })
    }
}
