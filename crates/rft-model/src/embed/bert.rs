//! A BERT encoder for inference, written on candle-nn's layers: the `BertModel` of Hugging Face
//! `transformers` (absolute positions, post-layer-norm), without pooler or heads.
//!
//! It is written here rather than taken from `candle-transformers` to keep that crate (and its
//! many models) out of the build; sentence encoders need only this forward pass, no gradients.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` that a BERT forward pass reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) intermediate_size: usize,
    #[serde(default = "default_act")]
    pub(crate) hidden_act: String,
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub(crate) type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub(crate) layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub(crate) position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".to_owned()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Refuses configurations this forward pass would compute wrongly.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Activation::parse(&self.hidden_act).map(|_| ())
    }
}

/// The feed-forward activations of BERT checkpoints, named as in `transformers`' `ACT2FN`.
#[derive(Debug, Clone, Copy)]
enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Activation, String> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
            )),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// BERT's encoder stack: embeddings and `num_hidden_layers` transformer layers.
pub(crate) struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    activation: Activation,
    max_positions: usize,
}

impl BertModel {
    /// Builds the model from weights named as in `transformers`' `BertModel`
    /// (`embeddings.…`, `encoder.layer.N.…`), with or without a `bert.` prefix.
    pub(crate) fn load(vb: VarBuilder<'_>, config: &BertConfig) -> Result<BertModel, String> {
        config.check()?;
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let err = |e: candle_core::Error| e.to_string();
        let norm = |vb: VarBuilder<'_>| candle_nn::layer_norm(hidden, eps, vb).map_err(err);
        let linear = |i, o, vb: VarBuilder<'_>| candle_nn::linear(i, o, vb).map_err(err);
        let e = vb.pp("embeddings");
        let embeddings = Embeddings {
            word: candle_nn::embedding(config.vocab_size, hidden, e.pp("word_embeddings"))
                .map_err(err)?,
            position: candle_nn::embedding(
                config.max_position_embeddings,
                hidden,
                e.pp("position_embeddings"),
            )
            .map_err(err)?,
            token_type: candle_nn::embedding(
                config.type_vocab_size,
                hidden,
                e.pp("token_type_embeddings"),
            )
            .map_err(err)?,
            norm: norm(e.pp("LayerNorm"))?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for idx in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{idx}"));
            let inner = config.intermediate_size;
            layers.push(Layer {
                query: linear(hidden, hidden, l.pp("attention.self.query"))?,
                key: linear(hidden, hidden, l.pp("attention.self.key"))?,
                value: linear(hidden, hidden, l.pp("attention.self.value"))?,
                attention_out: linear(hidden, hidden, l.pp("attention.output.dense"))?,
                attention_norm: norm(l.pp("attention.output.LayerNorm"))?,
                intermediate: linear(hidden, inner, l.pp("intermediate.dense"))?,
                output: linear(inner, hidden, l.pp("output.dense"))?,
                output_norm: norm(l.pp("output.LayerNorm"))?,
            });
        }
        Ok(BertModel {
            embeddings,
            layers,
            heads: config.num_attention_heads,
            head_dim: hidden / config.num_attention_heads,
            activation: Activation::parse(&config.hidden_act)?,
            max_positions: config.max_position_embeddings,
        })
    }

    /// The longest sequence the position embeddings cover.
    pub(crate) fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The last hidden state `[batch, seq, hidden]` for token ids `[batch, seq]` (u32) and an
    /// attention mask `[batch, seq]` (f32, 1 for tokens, 0 for padding). All token types are 0,
    /// as for single sentences.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?;
        let types = Tensor::zeros(seq, DType::U32, device)?;
        let e = &self.embeddings;
        let mut hidden = e
            .word
            .forward(ids)?
            .broadcast_add(&e.position.forward(&positions)?)?
            .broadcast_add(&e.token_type.forward(&types)?)?;
        hidden = e.norm.forward(&hidden)?;
        // Padding keys get the most negative f32 added to their scores, as `transformers`
        // does, so their softmax weight is exactly 0 and a padded text embeds as it would alone.
        let bias = mask
            .affine(-1.0, 1.0)?
            .affine(f64::from(f32::MIN), 0.0)?
            .reshape((batch, 1, 1, seq))?;
        for layer in &self.layers {
            hidden = self.layer(layer, &hidden, &bias)?;
        }
        Ok(hidden)
    }

    fn layer(&self, layer: &Layer, hidden: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq, width) = hidden.dims3()?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(layer.query.forward(hidden)?)?;
        let k = heads(layer.key.forward(hidden)?)?;
        let v = heads(layer.value.forward(hidden)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = q
            .matmul(&k.t()?.contiguous()?)?
            .affine(scale, 0.0)?
            .broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq, width))?;
        let attended = layer
            .attention_norm
            .forward(&(layer.attention_out.forward(&context)? + hidden)?)?;
        let inner = self
            .activation
            .apply(&layer.intermediate.forward(&attended)?)?;
        layer
            .output_norm
            .forward(&(layer.output.forward(&inner)? + &attended)?)
    }
}

/// Mean of the token vectors where `mask` is 1, as sentence-transformers' `Pooling` with
/// `pooling_mode_mean_tokens` computes it (the count clamped at 1e-9).
pub(crate) fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let weights = mask.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1e-9f32, f32::MAX)?;
    summed.broadcast_div(&counts)
}

/// Each row divided by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub(crate) fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norms)
}
