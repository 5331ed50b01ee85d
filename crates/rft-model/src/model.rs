//! The decoder-only transformer shared by Llama, Qwen2 and Qwen3, on the inference path.
//!
//! One implementation serves all three families: they differ only in q/k/v biases (Qwen2) and
//! per-head q/k RMS norms (Qwen3), which are optional fields here. The reference is Hugging Face
//! `transformers`' `modeling_llama.py` / `modeling_qwen2.py` / `modeling_qwen3.py`: pre-norm
//! residual blocks, rotate-half RoPE, grouped-query attention, SwiGLU MLP.
//!
//! This path uses candle's fused kernels (RMS norm, RoPE, soft-max), which record no gradient:
//! it is for sampling, where nothing is differentiated. Rows of a batch may have different
//! lengths: prompts are left-padded, `positions` gives each token its own position, and
//! `key_mask` hides the padding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::config::ModelConfig;
use crate::lora::{LoraAdapter, Projection};
use crate::ops::{self, FrozenWeight};
use crate::packed::PackedWeight;
use crate::precision::Precision;
use crate::weights::{self, Weights};
use crate::ModelError;

mod cache;
mod layer_grad;

pub use cache::KvCache;
pub(crate) use cache::LayerCache;

pub(crate) use layer_grad::PassInput;

/// A loaded causal language model. Cloning shares the weights.
#[derive(Debug, Clone)]
pub struct CausalLm {
    config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `lm_head` packed for decoding ([`CausalLm::packed_for_sampling`]) or training.
    lm_head_packed: Option<Arc<PackedWeight>>,
    /// `lm_headᵀ` packed for training's backward ([`CausalLm::packed_for_training`]).
    lm_head_packed_t: Option<Arc<PackedWeight>>,
    inv_freq: Tensor,
    /// The type of the residual stream, the norms' scales and the biases: the weights' type,
    /// except bf16 weights on the CPU, which multiply f32 activations ([`crate::precision`]).
    activation_dtype: DType,
    device: Device,
}

#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The same values as `weight`, packed for decoding ([`CausalLm::packed_for_sampling`]) or
    /// training.
    packed: Option<Arc<PackedWeight>>,
    /// `weightᵀ` packed, for the input gradient of training ([`CausalLm::packed_for_training`]).
    packed_t: Option<Arc<PackedWeight>>,
}

impl Linear {
    /// The weight with its packed copies, as the products of training and sampling take it.
    fn frozen(&self) -> FrozenWeight {
        FrozenWeight::with_packed(&self.weight, self.packed.as_ref(), self.packed_t.as_ref())
    }

    /// xs: (b, t, in) -> (b, t, out), plus the LoRA update when one is given.
    fn forward(&self, xs: &Tensor, lora: Option<&LoraWeights>) -> candle_core::Result<Tensor> {
        let (b, t, d_in) = xs.dims3()?;
        let flat = xs.reshape((b * t, d_in))?;
        // Untracked inputs without an adapter (sampling) take `frozen_linear`'s plain product,
        // on the packed copy where there is one.
        let weight = self.frozen();
        let out = match lora {
            Some(lora) => ops::lora_linear(
                &flat,
                &weight,
                self.bias.as_ref(),
                &lora.a,
                &lora.b,
                lora.scale,
            )?,
            None => ops::frozen_linear(&flat, &weight, self.bias.as_ref())?,
        };
        out.reshape((b, t, ()))
    }
}

/// The LoRA matrices of one projection as the forward pass uses them.
struct LoraWeights {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// How a forward pass uses an adapter.
#[derive(Clone, Copy)]
pub(crate) enum AdapterUse<'a> {
    None,
    /// Adapter values only: nothing is recorded (sampling with an unmerged adapter).
    Frozen(&'a LoraAdapter),
    /// The adapter's `Var`s: the pass records a graph for backward.
    Trainable(&'a LoraAdapter),
}

impl AdapterUse<'_> {
    fn weights(&self, layer: usize, projection: Projection) -> Option<LoraWeights> {
        let (adapter, trainable) = match *self {
            AdapterUse::None => return None,
            AdapterUse::Frozen(adapter) => (adapter, false),
            AdapterUse::Trainable(adapter) => (adapter, true),
        };
        let pair = adapter.pair(layer, projection)?;
        let (a, b) = if trainable {
            (pair.a.as_tensor().clone(), pair.b.as_tensor().clone())
        } else {
            (pair.a.as_detached_tensor(), pair.b.as_detached_tensor())
        };
        Some(LoraWeights {
            a,
            b,
            scale: adapter.scale(),
        })
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl DecoderLayer {
    fn projection(&self, projection: Projection) -> &Linear {
        match projection {
            Projection::Q => &self.q_proj,
            Projection::K => &self.k_proj,
            Projection::V => &self.v_proj,
            Projection::O => &self.o_proj,
            Projection::Gate => &self.gate_proj,
            Projection::Up => &self.up_proj,
            Projection::Down => &self.down_proj,
        }
    }

    fn projection_mut(&mut self, projection: Projection) -> &mut Linear {
        match projection {
            Projection::Q => &mut self.q_proj,
            Projection::K => &mut self.k_proj,
            Projection::V => &mut self.v_proj,
            Projection::O => &mut self.o_proj,
            Projection::Gate => &mut self.gate_proj,
            Projection::Up => &mut self.up_proj,
            Projection::Down => &mut self.down_proj,
        }
    }
}

/// (b, ...) -> (b * n, ...), each row repeated `n` times consecutively.
pub(crate) fn repeat_batch(xs: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(xs.clone());
    }
    let dims = xs.dims().to_vec();
    let mut expanded = vec![dims[0], n];
    expanded.extend(&dims[1..]);
    let mut target = vec![dims[0] * n];
    target.extend(&dims[1..]);
    xs.unsqueeze(1)?
        .broadcast_as(expanded)?
        .contiguous()?
        .reshape(target)
}

/// Which positions the forward pass turns into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `(b, t, vocab)`.
    All,
    /// Only the last position of each row: `(b, 1, vocab)`; what sampling needs.
    Last,
}

impl CausalLm {
    /// Loads a model from a GGUF file or a Hugging Face folder, in the precision
    /// [`Precision::resolve`] picks for `device` (`RFT_DTYPE`, else bf16 on a GPU, f32 on the
    /// CPU).
    pub fn load(path: &Path, device: &Device) -> Result<CausalLm, ModelError> {
        CausalLm::load_with(path, device, Precision::resolve(device)?)
    }

    /// Loads a model from a GGUF file or a Hugging Face folder in `precision`.
    pub fn load_with(
        path: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<CausalLm, ModelError> {
        CausalLm::load_f32(path, device)?.with_precision(precision)
    }

    fn load_f32(path: &Path, device: &Device) -> Result<CausalLm, ModelError> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ModelError::MissingFile {
                    path: config_path.clone(),
                    hint: "a Hugging Face model folder needs config.json, *.safetensors and tokenizer.json".into(),
                },
                _ => ModelError::Io {
                    path: config_path.clone(),
                    source: e,
                },
            })?;
            let config = ModelConfig::from_hf_json(&text)?;
            let weights = weights::load_safetensors_dir(path, device)?;
            CausalLm::from_weights(config, weights, device)
        } else {
            let (_, config, weights) = weights::load_gguf(path, device)?;
            CausalLm::from_weights(config, weights, device)
        }
    }

    /// Assembles a model from named weights (Hugging Face names).
    pub fn from_weights(
        config: ModelConfig,
        mut weights: Weights,
        device: &Device,
    ) -> Result<CausalLm, ModelError> {
        let arch = config.architecture;
        let embed_tokens = weights.take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for idx in 0..config.num_layers {
            let p = format!("model.layers.{idx}");
            let mut linear = |name: &str, bias: bool| -> Result<Linear, ModelError> {
                Ok(Linear {
                    weight: weights.take(&format!("{p}.{name}.weight"))?,
                    bias: if bias {
                        Some(weights.take(&format!("{p}.{name}.bias"))?)
                    } else {
                        None
                    },
                    packed: None,
                    packed_t: None,
                })
            };
            let qkv_bias = arch.has_qkv_bias();
            let q_proj = linear("self_attn.q_proj", qkv_bias)?;
            let k_proj = linear("self_attn.k_proj", qkv_bias)?;
            let v_proj = linear("self_attn.v_proj", qkv_bias)?;
            let o_proj = linear("self_attn.o_proj", false)?;
            let gate_proj = linear("mlp.gate_proj", false)?;
            let up_proj = linear("mlp.up_proj", false)?;
            let down_proj = linear("mlp.down_proj", false)?;
            let (q_norm, k_norm) = if arch.has_qk_norm() {
                (
                    Some(weights.take(&format!("{p}.self_attn.q_norm.weight"))?),
                    Some(weights.take(&format!("{p}.self_attn.k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                input_layernorm: weights.take(&format!("{p}.input_layernorm.weight"))?,
                post_attention_layernorm: weights
                    .take(&format!("{p}.post_attention_layernorm.weight"))?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = weights.take("model.norm.weight")?;
        let embed_tokens_dtype = embed_tokens.dtype();
        let lm_head = match weights.take_optional("lm_head.weight") {
            Some(head) if !config.tie_word_embeddings => head,
            _ => embed_tokens.clone(),
        };
        let half = config.head_dim / 2;
        // Computed like transformers: base ** (2i / d) in f32, then its reciprocal.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / config.head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        Ok(CausalLm {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_packed: None,
            lm_head_packed_t: None,
            inv_freq,
            activation_dtype: embed_tokens_dtype,
            device: device.clone(),
        })
    }

    /// This model in `precision` on its device ([`crate::precision`]): the frozen weights in
    /// `precision`'s weight type, the activations in its type for the device. Packed copies
    /// are dropped (pack again for the new weights).
    pub fn with_precision(&self, precision: Precision) -> Result<CausalLm, ModelError> {
        self.with_dtypes(
            precision.weight_dtype(),
            precision.activation_dtype(&self.device),
        )
    }

    /// This model with its frozen weights (projections, embeddings, output head) in
    /// `weights` and its activations (and norm scales, biases) in `activations`.
    /// [`CausalLm::with_precision`] picks the pair a device runs; any pair runs everywhere,
    /// so bf16 activations, a GPU's path, can be checked on the CPU.
    pub fn with_dtypes(&self, weights: DType, activations: DType) -> Result<CausalLm, ModelError> {
        let mut model = self.clone();
        let tied = self.lm_head.id() == self.embed_tokens.id();
        model.embed_tokens = self.embed_tokens.to_dtype(weights)?;
        model.lm_head = if tied {
            model.embed_tokens.clone()
        } else {
            self.lm_head.to_dtype(weights)?
        };
        model.lm_head_packed = None;
        model.lm_head_packed_t = None;
        model.norm = self.norm.to_dtype(activations)?;
        for layer in &mut model.layers {
            layer.input_layernorm = layer.input_layernorm.to_dtype(activations)?;
            layer.post_attention_layernorm =
                layer.post_attention_layernorm.to_dtype(activations)?;
            for norm in [&mut layer.q_norm, &mut layer.k_norm].into_iter().flatten() {
                *norm = norm.to_dtype(activations)?;
            }
            for projection in Projection::ALL {
                let linear = layer.projection_mut(projection);
                linear.weight = linear.weight.to_dtype(weights)?;
                linear.bias = linear
                    .bias
                    .as_ref()
                    .map(|bias| bias.to_dtype(activations))
                    .transpose()?;
                linear.packed = None;
                linear.packed_t = None;
            }
        }
        model.activation_dtype = activations;
        Ok(model)
    }

    /// Whether an adapter merged into these weights keeps its update ([`CausalLm::merged`]):
    /// f32 weights do to rounding; bf16 ones would lose every update smaller than half a bf16
    /// step of the weight, so samplers of a bf16 model apply adapters unmerged.
    pub fn merges_exactly(&self) -> bool {
        matches!(self.weight_dtype(), DType::F32 | DType::F64)
    }

    /// The type the frozen weights are held in.
    pub fn weight_dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The type of the activations.
    pub fn activation_dtype(&self) -> DType {
        self.activation_dtype
    }

    /// A model with random weights (normal, std 0.1; norm scales near 1): tests and benchmarks
    /// build their own small models this way.
    pub fn random(
        config: ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<CausalLm, ModelError> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = std::collections::HashMap::new();
        let mut add =
            |name: String, shape: Vec<usize>, around_one: bool| -> Result<(), ModelError> {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        // Sum of uniforms: a cheap, bounded, roughly normal draw.
                        let z: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 0.17;
                        if around_one {
                            1.0 + z
                        } else {
                            z
                        }
                    })
                    .collect();
                let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
                tensors.insert(name, tensor);
                Ok(())
            };
        let c = &config;
        add(
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, c.hidden_size],
            false,
        )?;
        add("model.norm.weight".into(), vec![c.hidden_size], true)?;
        if !c.tie_word_embeddings {
            add(
                "lm_head.weight".into(),
                vec![c.vocab_size, c.hidden_size],
                false,
            )?;
        }
        for idx in 0..c.num_layers {
            let p = format!("model.layers.{idx}");
            add(
                format!("{p}.input_layernorm.weight"),
                vec![c.hidden_size],
                true,
            )?;
            add(
                format!("{p}.post_attention_layernorm.weight"),
                vec![c.hidden_size],
                true,
            )?;
            for projection in Projection::ALL {
                let (fan_in, fan_out) = projection.shape(c);
                add(
                    format!("{p}.{}.weight", projection.path()),
                    vec![fan_out, fan_in],
                    false,
                )?;
                let biased = matches!(projection, Projection::Q | Projection::K | Projection::V);
                if biased && c.architecture.has_qkv_bias() {
                    add(
                        format!("{p}.{}.bias", projection.path()),
                        vec![fan_out],
                        false,
                    )?;
                }
            }
            if c.architecture.has_qk_norm() {
                add(
                    format!("{p}.self_attn.q_norm.weight"),
                    vec![c.head_dim],
                    true,
                )?;
                add(
                    format!("{p}.self_attn.k_norm.weight"),
                    vec![c.head_dim],
                    true,
                )?;
            }
        }
        CausalLm::from_weights(
            config,
            Weights::from_tensors(tensors, "random weights".into()),
            device,
        )
    }

    /// Every weight under its Hugging Face name (the tied output head is not repeated).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (
                "model.embed_tokens.weight".to_owned(),
                self.embed_tokens.clone(),
            ),
            ("model.norm.weight".to_owned(), self.norm.clone()),
        ];
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_owned(), self.lm_head.clone()));
        }
        for (idx, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{idx}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.clone(),
            ));
            for projection in Projection::ALL {
                let linear = layer.projection(projection);
                out.push((
                    format!("{p}.{}.weight", projection.path()),
                    linear.weight.clone(),
                ));
                if let Some(bias) = &linear.bias {
                    out.push((format!("{p}.{}.bias", projection.path()), bias.clone()));
                }
            }
            if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), q_norm.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), k_norm.clone()));
            }
        }
        out
    }

    /// A copy of this model with `adapter` merged into its weights (`W + scale·B·A`): the
    /// fastest way to sample with an adapter, and what `rft export --merged` writes. Weights the
    /// adapter does not touch are shared, not copied.
    pub fn merged(&self, adapter: &LoraAdapter) -> Result<CausalLm, ModelError> {
        if adapter.num_layers() != self.layers.len() {
            return Err(ModelError::Format(format!(
                "the adapter has {} layers, the model {}",
                adapter.num_layers(),
                self.layers.len()
            )));
        }
        let mut merged = self.clone();
        for (idx, layer) in merged.layers.iter_mut().enumerate() {
            for projection in Projection::ALL {
                if let Some(pair) = adapter.pair(idx, projection) {
                    let linear = layer.projection_mut(projection);
                    let dtype = linear.weight.dtype();
                    let delta = (pair
                        .b
                        .as_detached_tensor()
                        .matmul(&pair.a.as_detached_tensor())?
                        * adapter.scale())?;
                    linear.weight =
                        (linear.weight.to_dtype(delta.dtype())? + delta)?.to_dtype(dtype)?;
                    linear.packed = None;
                    linear.packed_t = None;
                }
            }
        }
        Ok(merged)
    }

    /// This model with every projection and the output head also packed for decoding
    /// ([`crate::packed`]): for a rollout's fixed weights, at the cost of a second copy of
    /// them. Unchanged where the packed kernel does not apply (not an f32 CPU model, no
    /// AVX2/FMA). Passes with an adapter or that record a gradient keep using the dense
    /// weights; the packed ones serve inputs without either (sampling).
    pub fn packed_for_sampling(&self) -> Result<CausalLm, ModelError> {
        self.pack_for_decoding(PackedWeight::pack)
    }

    /// The weights a sampler in `precision` decodes with, whatever this model's own: on the
    /// CPU a copy packed for decoding in `precision` (bf16 panels of f32 weights: half the
    /// bytes per token, f32 activations as before); on a GPU a copy converted to it. A
    /// sampler in another precision than the trainer's samples a slightly different policy:
    /// its log-probs differ from the trainer's, which the loss's importance ratio (or
    /// `rollout_correction`) accounts for, and its hidden states must not stand in for the
    /// trainer's forward.
    pub fn for_sampling_in(&self, precision: Precision) -> Result<CausalLm, ModelError> {
        if !self.device.is_cpu() {
            if self.weight_dtype() == precision.weight_dtype() {
                return Ok(self.clone());
            }
            return self.with_precision(precision);
        }
        match precision {
            Precision::F32 if self.weight_dtype() != DType::F32 => {
                self.with_precision(Precision::F32)?.packed_for_sampling()
            }
            Precision::F32 => self.packed_for_sampling(),
            Precision::Bf16 => self.pack_for_decoding(PackedWeight::pack_bf16),
        }
    }

    fn pack_for_decoding(
        &self,
        pack: impl Fn(&Tensor) -> Result<Option<PackedWeight>, ModelError>,
    ) -> Result<CausalLm, ModelError> {
        let mut packed = self.clone();
        if !crate::packed::available() || !self.device.is_cpu() {
            return Ok(packed);
        }
        for layer in &mut packed.layers {
            for projection in Projection::ALL {
                let linear = layer.projection_mut(projection);
                linear.packed = pack(&linear.weight)?.map(Arc::new);
            }
        }
        packed.lm_head_packed = pack(&packed.lm_head)?.map(Arc::new);
        Ok(packed)
    }

    /// This model with every frozen weight (projections, output head) also packed in both
    /// orientations, so the training pass's large products (`x @ Wᵀ` forward, `g @ W` for the
    /// input's gradient) run on the packed kernel, at the cost of two more copies of the base
    /// weights.
    ///
    /// Only with the AVX-512 kernel: on AVX2 alone candle's `gemm` is as fast or faster at the
    /// training pass's row counts (`rft bench matmul`: 0.78–0.95x for the packed AVX2 kernel at
    /// 256–2,400 rows, against 1.2–1.6x for AVX-512), so the model is returned unchanged there.
    ///
    /// Also unchanged when the two copies would take more than half the memory the system
    /// reports available (`MemAvailable`, Linux): a larger model trains on the dense weights
    /// rather than risk running out of memory for a speed-up.
    pub fn packed_for_training(&self) -> Result<CausalLm, ModelError> {
        let mut packed = self.clone();
        if !self.will_pack_for_training() {
            return Ok(packed);
        }
        let both = |weight: &Tensor| -> Result<_, ModelError> {
            Ok((
                PackedWeight::pack(weight)?.map(Arc::new),
                PackedWeight::pack(&weight.t()?)?.map(Arc::new),
            ))
        };
        for layer in &mut packed.layers {
            for projection in Projection::ALL {
                let linear = layer.projection_mut(projection);
                (linear.packed, linear.packed_t) = both(&linear.weight)?;
            }
        }
        (packed.lm_head_packed, packed.lm_head_packed_t) = both(&packed.lm_head)?;
        Ok(packed)
    }

    /// Whether [`CausalLm::packed_for_training`] packs (an AVX-512 CPU, and room for the two
    /// copies in half the available memory) or returns the dense model.
    pub fn will_pack_for_training(&self) -> bool {
        if crate::packed::Kernel::detect() != Some(crate::packed::Kernel::Avx512)
            || !self.device.is_cpu()
        {
            return false;
        }
        let weights: usize = self
            .layers
            .iter()
            .flat_map(|layer| Projection::ALL.map(|p| layer.projection(p).weight.elem_count()))
            .sum::<usize>()
            + self.lm_head.elem_count();
        let copies = 2 * weights * self.weight_dtype().size_in_bytes();
        let available = available_memory_bytes();
        if !copies_fit(copies, available) {
            tracing::info!(
                "training on the dense weights: packing them would take {} MB of the {} MB available",
                copies >> 20,
                available.unwrap_or(0) >> 20
            );
            return false;
        }
        true
    }

    /// The output projection as training multiplies by it (packed where
    /// [`CausalLm::packed_for_training`] packed it).
    pub(crate) fn lm_head_frozen(&self) -> FrozenWeight {
        FrozenWeight::with_packed(
            &self.lm_head,
            self.lm_head_packed.as_ref(),
            self.lm_head_packed_t.as_ref(),
        )
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One forward pass over new tokens, extending `cache`.
    ///
    /// - `input_ids`: (b, t) u32, the new tokens;
    /// - `positions`: (b, t) u32, each token's position in its own sequence;
    /// - `key_mask`: (b, seen + t) f32, 0 for real tokens and -inf for padding, or `None`
    ///   when no row is padded.
    ///
    /// Returns logits `(b, t, vocab)` or `(b, 1, vocab)` per `logits`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor, ModelError> {
        self.forward_with(input_ids, positions, key_mask, cache, logits, None)
    }

    /// [`CausalLm::forward`] with a LoRA adapter applied (unmerged; nothing is recorded for
    /// backward, so sampling with it keeps no graph alive).
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: &mut KvCache,
        logits: Logits,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Tensor, ModelError> {
        self.forward_recording(input_ids, positions, key_mask, cache, logits, adapter, None)
    }

    /// [`CausalLm::forward_with`] that also pushes onto `record` the residual stream entering
    /// every layer and leaving the last one (`layers + 1` tensors of `(b, t, hidden)`): the
    /// states the training forward would compute for these tokens.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_recording(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: &mut KvCache,
        logits: Logits,
        adapter: Option<&LoraAdapter>,
        record: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor, ModelError> {
        let adapter = adapter.map_or(AdapterUse::None, AdapterUse::Frozen);
        let xs = self.decoder(input_ids, positions, key_mask, cache, adapter, record)?;
        let t = xs.dim(1)?;
        let xs = match logits {
            Logits::All => xs,
            Logits::Last => xs.narrow(1, t - 1, 1)?,
        };
        let xs = self.final_norm(&xs)?;
        let (b, t_out, d) = xs.dims3()?;
        let flat = xs.reshape((b * t_out, d))?;
        let out = self.lm_head_frozen().matmul_t(&flat)?;
        Ok(out.reshape((b, t_out, self.config.vocab_size))?)
    }

    /// The output projection `(vocab, hidden)` (the embedding matrix when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The residual stream after the last decoder layer, before the final norm.
    fn decoder(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: &mut KvCache,
        adapter: AdapterUse<'_>,
        mut record: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = input_ids.dims2()?;
        let seen = cache.seen();
        if cache.layers.len() != self.layers.len() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut xs = self.embed(input_ids)?;
        let (cos, sin) = self.rotary(positions)?;
        let mask = self.attention_mask(b, t, seen, key_mask)?;
        let capacity = cache.capacity;
        for (idx, slot) in cache.layers.iter_mut().enumerate() {
            if let Some(record) = record.as_deref_mut() {
                record.push(xs.clone());
            }
            let prefill = slot.is_none();
            xs = self.layer_forward(idx, &xs, &cos, &sin, mask.as_ref(), Some(slot), adapter)?;
            if let (true, Some(layer)) = (prefill, slot.as_mut()) {
                if !layer.differentiable && layer.k.dim(2)? < capacity {
                    layer.grow_to(capacity)?;
                }
            }
        }
        if let Some(record) = record {
            record.push(xs.clone());
        }
        Ok(xs)
    }

    /// The token embeddings `(b, t, hidden)` of `input_ids` (no gradient: the table is frozen).
    pub(crate) fn embed(&self, input_ids: &Tensor) -> Result<Tensor, ModelError> {
        let (b, t) = input_ids.dims2()?;
        Ok(self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .to_dtype(self.activation_dtype)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    /// The final RMS norm.
    pub(crate) fn final_norm(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        Ok(ops::rms_norm(
            xs,
            &self.norm,
            self.config.rms_norm_eps as f32,
        )?)
    }

    /// Number of decoder layers.
    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// One decoder layer: pre-norm attention and SwiGLU MLP, each with its residual.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_forward(
        &self,
        idx: usize,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        slot: Option<&mut Option<LayerCache>>,
        adapter: AdapterUse<'_>,
    ) -> Result<Tensor, ModelError> {
        let layer = &self.layers[idx];
        let eps = self.config.rms_norm_eps as f32;
        let lora = |projection| adapter.weights(idx, projection);
        let normed = ops::rms_norm(xs, &layer.input_layernorm, eps)?;
        let attn = self.attention(idx, layer, &normed, cos, sin, mask, slot, adapter)?;
        let xs = (xs + attn)?;
        let normed = ops::rms_norm(&xs, &layer.post_attention_layernorm, eps)?;
        let gate = candle_nn::ops::silu(
            &layer
                .gate_proj
                .forward(&normed, lora(Projection::Gate).as_ref())?,
        )?;
        let up = layer
            .up_proj
            .forward(&normed, lora(Projection::Up).as_ref())?;
        let mlp = layer
            .down_proj
            .forward(&(gate * up)?, lora(Projection::Down).as_ref())?;
        Ok((xs + mlp)?)
    }

    pub(crate) fn rotary(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let freqs = positions
            .to_dtype(DType::F32)?
            .reshape((b * t, 1))?
            .broadcast_mul(&self.inv_freq)?;
        let half = self.config.head_dim / 2;
        let dtype = self.activation_dtype;
        Ok((
            freqs.cos()?.reshape((b, t, half))?.to_dtype(dtype)?,
            freqs.sin()?.reshape((b, t, half))?.to_dtype(dtype)?,
        ))
    }

    /// Additive mask (b, 1, t, seen + t): causal within the new tokens, padding hidden.
    pub(crate) fn attention_mask(
        &self,
        b: usize,
        t: usize,
        seen: usize,
        key_mask: Option<&Tensor>,
    ) -> candle_core::Result<Option<Tensor>> {
        let total = seen + t;
        let causal = if t > 1 {
            let values: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j <= seen + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            Some(
                Tensor::from_vec(values, (1, 1, t, total), &self.device)?
                    .to_dtype(self.activation_dtype)?,
            )
        } else {
            None
        };
        let padding = key_mask
            .map(|m| m.reshape((b, 1, 1, total))?.to_dtype(self.activation_dtype))
            .transpose()?;
        let Some(padding) = padding else {
            return Ok(causal);
        };
        // A padding query sees only padding keys, and an all -inf row soft-maxes to NaN, which
        // the next layer carries into the real tokens through that position's keys and values.
        // Every query may see itself (real queries already do), so such rows stay finite.
        let own: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j == seen + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let own = Tensor::from_vec(own, (1, 1, t, total), &self.device)?
            .to_dtype(self.activation_dtype)?;
        let mask = match causal {
            Some(c) => c.broadcast_add(&padding)?,
            None => padding,
        };
        Ok(Some(mask.broadcast_maximum(&own)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        idx: usize,
        layer: &DecoderLayer,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<LayerCache>>,
        adapter: AdapterUse<'_>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (n_heads, n_kv, head_dim) = (
            self.config.num_heads,
            self.config.num_kv_heads,
            self.config.head_dim,
        );
        let eps = self.config.rms_norm_eps as f32;
        let split = |proj: &Linear, projection, heads: usize| -> candle_core::Result<Tensor> {
            proj.forward(xs, adapter.weights(idx, projection).as_ref())?
                .reshape((b, t, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let mut q = split(&layer.q_proj, Projection::Q, n_heads)?;
        let mut k = split(&layer.k_proj, Projection::K, n_kv)?;
        let v = split(&layer.v_proj, Projection::V, n_kv)?;
        if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
            q = ops::rms_norm(&q, q_norm, eps)?;
            k = ops::rms_norm(&k, k_norm, eps)?;
        }
        let q = ops::rope(&q, cos, sin)?;
        let k = ops::rope(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(slot) => match slot {
                Some(layer) => {
                    layer.append(&k, &v)?;
                    layer.filled()?
                }
                None => {
                    // The prefill's keys and values become the buffers; the decoder makes
                    // room for the cache's capacity, else the first decode step grows them.
                    let layer = LayerCache {
                        k: k.contiguous()?,
                        v: v.contiguous()?,
                        len: k.dim(2)?,
                        differentiable: false,
                    };
                    let filled = layer.filled()?;
                    *slot = Some(layer);
                    filled
                }
            },
            None => (k, v),
        };
        // Grouped-query attention without repeating k and v: the `n_rep` query heads that share
        // a kv head are consecutive, so they fold into the query-length axis of one matmul.
        let n_rep = n_heads / n_kv;
        let s = k.dim(2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = (q * scale)?.reshape((b, n_kv, n_rep * t, head_dim))?;
        let scores = ops::matmul(&q, &k.t()?)?.reshape((b, n_heads, t, s))?;
        let probs = ops::masked_softmax(&scores, mask)?;
        let out = ops::matmul(&probs.reshape((b, n_kv, n_rep * t, s))?, &v)?
            .reshape((b, n_heads, t, head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, n_heads * head_dim))?;
        layer
            .o_proj
            .forward(&out, adapter.weights(idx, Projection::O).as_ref())
    }

    /// Greedy decoding of one prompt: the reference path for parity tests.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, ModelError> {
        let mut cache = KvCache::new();
        let mut out = Vec::new();
        let mut input: Vec<u32> = prompt.to_vec();
        let mut position = 0u32;
        for _ in 0..max_new_tokens {
            let n = input.len();
            let ids = Tensor::from_vec(input.clone(), (1, n), &self.device)?;
            let positions: Vec<u32> = (position..position + n as u32).collect();
            let positions = Tensor::from_vec(positions, (1, n), &self.device)?;
            let logits = self.forward(&ids, &positions, None, &mut cache, Logits::Last)?;
            let next = logits
                .flatten_all()?
                .argmax(D::Minus1)?
                .to_scalar::<u32>()?;
            position += n as u32;
            out.push(next);
            if stop.contains(&next) {
                break;
            }
            input = vec![next];
        }
        Ok(out)
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes; `None` where it cannot be read.
fn available_memory_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Whether `copies` bytes of packed weights fit in half of `available` (unknown: assume so).
fn copies_fit(copies: usize, available: Option<usize>) -> bool {
    available.is_none_or(|available| copies <= available / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_training_copies_take_at_most_half_the_available_memory() {
        assert!(copies_fit(1 << 30, Some(4 << 30)));
        assert!(copies_fit(2 << 30, Some(4 << 30)));
        assert!(!copies_fit((2 << 30) + 1, Some(4 << 30)));
        assert!(copies_fit(1 << 40, None));
        // This machine's figure is read and plausible where /proc/meminfo exists.
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(available_memory_bytes().is_some_and(|bytes| bytes > 1 << 20));
        }
    }

    #[test]
    fn a_cache_with_capacity_never_regrows_and_decodes_the_same() {
        let config = ModelConfig::tiny(crate::Architecture::Llama);
        let model = CausalLm::random(config, 2, DType::F32, &Device::Cpu).unwrap();
        let decode = |mut cache: KvCache| -> (Vec<f32>, Vec<usize>) {
            let mut capacities = Vec::new();
            let ids = Tensor::new(&[[4u32, 9, 2, 7, 1]], &Device::Cpu).unwrap();
            let positions = Tensor::new(&[[0u32, 1, 2, 3, 4]], &Device::Cpu).unwrap();
            let mut logits = model
                .forward(&ids, &positions, None, &mut cache, Logits::Last)
                .unwrap();
            capacities.push(cache.capacity());
            for step in 0..12u32 {
                let ids = Tensor::new(&[[step % 50]], &Device::Cpu).unwrap();
                let positions = Tensor::new(&[[5 + step]], &Device::Cpu).unwrap();
                logits = model
                    .forward(&ids, &positions, None, &mut cache, Logits::Last)
                    .unwrap();
                capacities.push(cache.capacity());
            }
            (logits.flatten_all().unwrap().to_vec1().unwrap(), capacities)
        };
        let (grown, grown_caps) = decode(KvCache::new());
        let (reserved, reserved_caps) = decode(KvCache::with_capacity(17));
        assert_eq!(grown, reserved);
        assert!(reserved_caps.iter().all(|&c| c == 17), "{reserved_caps:?}");
        assert!(grown_caps.first() == Some(&5) && grown_caps.last() > Some(&17));
    }
}
