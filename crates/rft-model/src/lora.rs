//! LoRA adapters in PEFT's layout: the trainable part of every OpenRFT model.
//!
//! An adapter adds `scale · B·A` to a frozen projection `W` (`A: (r, in)`, `B: (out, r)`), with
//! `scale = alpha / r` (or `alpha / √r` with rsLoRA). Initialisation follows PEFT: `A` is
//! Kaiming-uniform with `a = √5` (so uniform in ±1/√in), `B` is zero, so a fresh adapter
//! changes nothing. Adapters are kept apart from the base model: several adapters can share one
//! base in memory, and the frozen weights never become `Var`s.
//!
//! Files are PEFT's: `adapter_config.json` and `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, which PEFT, vLLM and
//! OpenRFT itself load.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rft_types::paths::{persist, temp_path, write_atomic};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::ModelError;

/// A projection of a decoder layer that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Projection {
    /// Every projection, in the order of a layer.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The module name PEFT's `target_modules` uses.
    pub fn module_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The path inside a decoder layer (`self_attn.q_proj`).
    pub fn path(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
    }

    /// Parses a PEFT module name (`q_proj`) or OpenRFT's short names (`q`, `gate`).
    pub fn parse(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| {
            p.module_name() == name
                || p.path() == name
                || p.module_name().trim_end_matches("_proj") == name
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `(in_features, out_features)` of this projection in a model of `config`.
    pub fn shape(self, config: &ModelConfig) -> (usize, usize) {
        let hidden = config.hidden_size;
        let q = config.num_heads * config.head_dim;
        let kv = config.num_kv_heads * config.head_dim;
        match self {
            Projection::Q => (hidden, q),
            Projection::K | Projection::V => (hidden, kv),
            Projection::O => (q, hidden),
            Projection::Gate | Projection::Up => (hidden, config.intermediate_size),
            Projection::Down => (config.intermediate_size, hidden),
        }
    }
}

/// How an adapter is shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r` (`alpha / √r` with rsLoRA).
    pub alpha: f64,
    /// Which projections carry an adapter, in every layer.
    pub targets: Vec<Projection>,
    /// Rank-stabilised scaling.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// Rank 16, alpha 32, every attention and MLP projection: the common choice for RL on small
    /// models (and what Tinker and ART default to in spirit: all linear layers).
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            targets: Projection::ALL.to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// One adapted projection: `A: (r, in)`, `B: (out, r)`, both trainable.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// The down-projection.
    pub a: Var,
    /// The up-projection.
    pub b: Var,
}

/// A LoRA adapter over every layer of one base model.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    config: LoraConfig,
    /// `layers[i][projection.index()]`
    layers: Vec<[Option<LoraPair>; 7]>,
}

/// PEFT's `adapter_config.json`, the fields OpenRFT reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: TargetModules,
    #[serde(default = "default_bias")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
}

fn default_bias() -> String {
    "none".into()
}

/// PEFT writes `target_modules` as a list (or, from some tools, a regex string).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    Pattern(String),
}

const ADAPTER_CONFIG: &str = "adapter_config.json";
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

impl LoraAdapter {
    /// A fresh adapter with PEFT's initialisation (`B = 0`: the model is unchanged).
    pub fn new(
        model: &ModelConfig,
        config: LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<LoraAdapter, ModelError> {
        if config.rank == 0 {
            return Err(ModelError::Format("LoRA rank must be at least 1".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_layers);
        for _ in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &target in &config.targets {
                let (fan_in, fan_out) = target.shape(model);
                // kaiming_uniform_(a=√5): bound = √(6 / ((1 + a²)·fan_in)) = 1/√fan_in
                let bound = 1.0 / (fan_in as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * fan_in)
                    .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, fan_in), device)?;
                let b = Tensor::zeros((fan_out, config.rank), DType::F32, device)?;
                slots[target.index()] = Some(LoraPair {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter { config, layers })
    }

    /// The adapter's shape.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    /// The adapted pair of one projection, if targeted.
    pub fn pair(&self, layer: usize, projection: Projection) -> Option<&LoraPair> {
        self.layers.get(layer)?[projection.index()].as_ref()
    }

    /// Number of decoder layers the adapter covers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Every trainable tensor with its PEFT name, in a stable order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (idx, slots) in self.layers.iter().enumerate() {
            for projection in Projection::ALL {
                if let Some(pair) = &slots[projection.index()] {
                    let prefix = peft_prefix(idx, projection);
                    out.push((format!("{prefix}.lora_A.weight"), &pair.a));
                    out.push((format!("{prefix}.lora_B.weight"), &pair.b));
                }
            }
        }
        out
    }

    /// Every trainable tensor (for the optimizer).
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars()
            .into_iter()
            .map(|(_, var)| var.clone())
            .collect()
    }

    /// Trainable parameter count.
    pub fn num_parameters(&self) -> usize {
        self.named_vars()
            .iter()
            .map(|(_, var)| var.as_tensor().elem_count())
            .sum()
    }

    /// An independent copy (new `Var`s with the same values): a snapshot or a reference policy.
    pub fn deep_clone(&self) -> Result<LoraAdapter, ModelError> {
        self.rebuild(|t| t.copy())
    }

    /// An independent copy in another dtype (f64 for gradient checks, bf16 on GPUs).
    pub fn to_dtype(&self, dtype: DType) -> Result<LoraAdapter, ModelError> {
        self.rebuild(|t| t.to_dtype(dtype)?.copy())
    }

    fn rebuild(
        &self,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<LoraAdapter, ModelError> {
        let layers = self
            .layers
            .iter()
            .map(|slots| -> Result<[Option<LoraPair>; 7], ModelError> {
                let mut out: [Option<LoraPair>; 7] = Default::default();
                for (slot, pair) in out.iter_mut().zip(slots) {
                    if let Some(pair) = pair {
                        *slot = Some(LoraPair {
                            a: Var::from_tensor(&f(&pair.a.as_detached_tensor())?)?,
                            b: Var::from_tensor(&f(&pair.b.as_detached_tensor())?)?,
                        });
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoraAdapter {
            config: self.config.clone(),
            layers,
        })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// needed). Each file is written under a temporary name and renamed, so a crash never leaves
    /// a half-written adapter behind.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut modules: Vec<Projection> = self.config.targets.clone();
        modules.sort();
        modules.dedup();
        let config = PeftConfig {
            base_model_name_or_path: Some(base_model.to_owned()),
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: self.config.rank,
            lora_alpha: self.config.alpha,
            lora_dropout: 0.0,
            target_modules: TargetModules::List(
                modules.iter().map(|p| p.module_name().to_owned()).collect(),
            ),
            bias: "none".into(),
            fan_in_fan_out: false,
            use_rslora: self.config.use_rslora,
            use_dora: false,
            inference_mode: true,
            modules_to_save: None,
            layers_to_transform: None,
        };
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| ModelError::Format(format!("adapter config: {e}")))?;
        let config_path = dir.join(ADAPTER_CONFIG);
        write_atomic(&config_path, &json).map_err(io_error(&config_path))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_detached_tensor()))
            .collect();
        let target = dir.join(ADAPTER_WEIGHTS);
        let temp = temp_path(&target);
        candle_core::safetensors::save(&tensors, &temp)?;
        persist(&temp, &target).map_err(io_error(&target))?;
        Ok(())
    }

    /// Loads a PEFT adapter folder for a model of shape `model`.
    pub fn load_peft(
        dir: &Path,
        model: &ModelConfig,
        device: &Device,
    ) -> Result<LoraAdapter, ModelError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile {
                path: config_path.clone(),
                hint:
                    "a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors"
                        .into(),
            },
            _ => ModelError::Io {
                path: config_path.clone(),
                source,
            },
        })?;
        let peft: PeftConfig = serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let unsupported = |what: &str| {
            Err(ModelError::Unsupported(format!(
                "{}: {what}; OpenRFT loads plain LoRA adapters",
                config_path.display()
            )))
        };
        if peft.peft_type != "LORA" {
            return unsupported(&format!("peft_type {:?}", peft.peft_type));
        }
        if peft.use_dora {
            return unsupported("use_dora = true");
        }
        if peft.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true");
        }
        if peft.bias != "none" {
            return unsupported(&format!("bias {:?}", peft.bias));
        }
        if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save");
        }
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.exists() {
            return Err(ModelError::MissingFile {
                path: weights_path,
                hint: "a PEFT adapter folder holds adapter_model.safetensors".into(),
            });
        }
        let mut tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
            ModelError::Corrupt {
                path: weights_path.clone(),
                message: e.to_string(),
            }
        })?;
        // Which projections are adapted is read off the tensors themselves: PEFT may have
        // expanded a regex `target_modules`, or targeted a subset of layers.
        let mut targets = Vec::new();
        let mut layers = Vec::with_capacity(model.num_layers);
        for idx in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for projection in Projection::ALL {
                let prefix = peft_prefix(idx, projection);
                let a = take_adapter_tensor(&mut tensors, &prefix, "lora_A");
                let b = take_adapter_tensor(&mut tensors, &prefix, "lora_B");
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let (fan_in, fan_out) = projection.shape(model);
                        let (a_rank, a_in) = a.dims2()?;
                        let (b_out, b_rank) = b.dims2()?;
                        if a_in != fan_in || b_out != fan_out || a_rank != b_rank {
                            return Err(ModelError::Corrupt {
                                path: weights_path.clone(),
                                message: format!(
                                    "{prefix}: lora_A is {a_rank}x{a_in} and lora_B {b_out}x{b_rank}, \
                                     but the base model's projection is {fan_out}x{fan_in}: \
                                     was this adapter trained for another model?"
                                ),
                            });
                        }
                        if !targets.contains(&projection) {
                            targets.push(projection);
                        }
                        slots[projection.index()] = Some(LoraPair {
                            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                        });
                    }
                    (None, None) => {}
                    _ => {
                        return Err(ModelError::Corrupt {
                            path: weights_path.clone(),
                            message: format!("{prefix}: lora_A without lora_B or the reverse"),
                        })
                    }
                }
            }
            layers.push(slots);
        }
        if let Some(name) = tensors.keys().min() {
            return Err(ModelError::Corrupt {
                path: weights_path,
                message: format!(
                    "unexpected tensor {name}: the adapter does not fit a {} model with {} layers",
                    model.architecture.as_str(),
                    model.num_layers
                ),
            });
        }
        targets.sort();
        Ok(LoraAdapter {
            config: LoraConfig {
                rank: peft.r,
                alpha: peft.lora_alpha,
                targets,
                use_rslora: peft.use_rslora,
            },
            layers,
        })
    }
}

fn peft_prefix(layer: usize, projection: Projection) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}",
        projection.path()
    )
}

/// PEFT names tensors `...lora_A.weight`; older versions wrote `...lora_A.default.weight`.
fn take_adapter_tensor(
    tensors: &mut HashMap<String, Tensor>,
    prefix: &str,
    which: &str,
) -> Option<Tensor> {
    tensors
        .remove(&format!("{prefix}.{which}.weight"))
        .or_else(|| tensors.remove(&format!("{prefix}.{which}.default.weight")))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}
