//! The backward pass of one decoder layer written out by hand, for checkpointed training.
//!
//! Why not candle's autograd: its backward walk creates a zero tensor for every node's gradient
//! and adds the node's contribution to it (`GradStore::or_insert`, then `add`), even when a node
//! has one consumer, and computes both operands' gradients of every product, tracked or not. A
//! decoder layer's graph has a few dozen activation-sized nodes (reshapes and transposes
//! included), so on the 135M model that zero-fill and add took about 6% of a GRPO step, and the
//! graph around the layer (a `sum(y · g)` surrogate to inject the incoming gradient) more. Here
//! the forward keeps exactly what the formulas need ([`PassTape`]), and the backward computes
//! each gradient once, in closed form, with the same frozen-weight products as the autograd path
//! ([`crate::ops`]). `completion_logprobs` keeps the autograd path, and the tests hold the two
//! to each other.
//!
//! A layer runs over a prompt group as training batches it: the prompt pass, then the fed pass
//! (the group's completions, `k` rows) attending to the prompt's keys and values repeated `k`
//! times. The fed pass's gradient to those keys and values flows back into the prompt pass.

use std::collections::HashMap;

use candle_core::{Tensor, TensorId};

use super::{CausalLm, Linear};
use crate::lora::{LoraAdapter, Projection};
use crate::model::repeat_batch;
use crate::ops;
use crate::ModelError;

/// One pass of a layer: its input `(b, t, hidden)`, rotary tables and additive mask.
pub(crate) struct PassInput<'a> {
    pub x: &'a Tensor,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub mask: Option<&'a Tensor>,
}

/// A projection's trainable LoRA matrices: values, and the ids their gradients go under.
struct TrainableLora {
    a: Tensor,
    b: Tensor,
    a_id: TensorId,
    b_id: TensorId,
    scale: f64,
}

/// The seven projections' adapters of one layer, by [`Projection::ALL`] order.
struct LayerLora([Option<TrainableLora>; 7]);

impl LayerLora {
    fn new(adapter: &LoraAdapter, layer: usize) -> LayerLora {
        LayerLora(Projection::ALL.map(|projection| {
            adapter.pair(layer, projection).map(|pair| TrainableLora {
                a: pair.a.as_detached_tensor(),
                b: pair.b.as_detached_tensor(),
                a_id: pair.a.as_tensor().id(),
                b_id: pair.b.as_tensor().id(),
                scale: adapter.scale(),
            })
        }))
    }

    fn get(&self, projection: Projection) -> Option<&TrainableLora> {
        let slot = Projection::ALL.iter().position(|p| *p == projection)?;
        self.0[slot].as_ref()
    }
}

/// What a projection's backward needs: its input and, with an adapter, `s·(x @ aᵀ)`.
struct LinearTape {
    x: Tensor,
    hidden: Option<Tensor>,
}

/// What one pass's backward needs from its forward.
struct PassTape {
    b: usize,
    t: usize,
    x: Tensor,
    q: LinearTape,
    k: LinearTape,
    v: LinearTape,
    /// Queries and keys before the per-head norms (Qwen3), `(b, heads, t, head_dim)`.
    q_unnormed: Option<Tensor>,
    k_unnormed: Option<Tensor>,
    /// Scaled, rotated queries folded for grouped attention: `(b, kv_heads, rep · t, head_dim)`.
    q_folded: Tensor,
    /// Keys and values attended to (repeated past, then own): `(b, kv_heads, s, head_dim)`.
    k_all: Tensor,
    v_all: Tensor,
    /// Attention weights, `(b, kv_heads, rep · t, s)`.
    probs: Tensor,
    o: LinearTape,
    /// The residual stream after attention, `(b · t, hidden)`.
    mid: Tensor,
    gate_proj: LinearTape,
    up_proj: LinearTape,
    /// The MLP's gate and up projections, `(b · t, intermediate)`.
    gate: Tensor,
    up: Tensor,
    down: LinearTape,
}

/// A pass's own rotated keys and values, `(b, kv_heads, t, head_dim)`, for a pass after it.
type KeysValues = (Tensor, Tensor);

fn accumulate(
    grads: &mut HashMap<TensorId, Tensor>,
    id: TensorId,
    grad: Tensor,
) -> candle_core::Result<()> {
    let sum = match grads.remove(&id) {
        Some(previous) => (previous + grad)?,
        None => grad,
    };
    grads.insert(id, sum);
    Ok(())
}

impl CausalLm {
    /// Re-runs layer `idx` over a prompt group and returns the gradients of its inputs, given
    /// the gradients of its outputs; the adapter's gradients are added into `lora_grads` by
    /// `Var` id. `fed` attends to `prompt`'s keys and values repeated over its rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn group_layer_backward(
        &self,
        idx: usize,
        adapter: &LoraAdapter,
        prompt: PassInput<'_>,
        fed: Option<PassInput<'_>>,
        grad_prompt: &Tensor,
        grad_fed: Option<&Tensor>,
        lora_grads: &mut HashMap<TensorId, Tensor>,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let lora = LayerLora::new(adapter, idx);
        let (prompt_tape, prompt_kv) = self.pass_forward(idx, &lora, &prompt, None)?;
        let (grad_fed_x, grad_prompt_kv) = match (fed, grad_fed) {
            (Some(fed), Some(grad)) => {
                let (tape, _) = self.pass_forward(idx, &lora, &fed, Some(&prompt_kv))?;
                let (dx, past) =
                    self.pass_backward(idx, &lora, &tape, &fed, grad, None, lora_grads)?;
                (Some(dx), past)
            }
            _ => (None, None),
        };
        let (dx, _) = self.pass_backward(
            idx,
            &lora,
            &prompt_tape,
            &prompt,
            grad_prompt,
            grad_prompt_kv,
            lora_grads,
        )?;
        Ok((dx, grad_fed_x))
    }

    fn linear_forward(
        linear: &Linear,
        x: &Tensor,
        lora: Option<&TrainableLora>,
    ) -> candle_core::Result<(Tensor, LinearTape)> {
        let weight = linear.frozen();
        let (value, hidden) = match lora {
            Some(l) => {
                let (value, hidden) =
                    ops::lora_linear_value(x, &weight, linear.bias.as_ref(), &l.a, &l.b, l.scale)?;
                (value, Some(hidden))
            }
            // An untracked input: `frozen_linear` returns the plain product.
            None => (ops::frozen_linear(x, &weight, linear.bias.as_ref())?, None),
        };
        Ok((
            value,
            LinearTape {
                x: x.clone(),
                hidden,
            },
        ))
    }

    fn linear_backward(
        linear: &Linear,
        tape: &LinearTape,
        lora: Option<&TrainableLora>,
        grad: &Tensor,
        lora_grads: &mut HashMap<TensorId, Tensor>,
    ) -> candle_core::Result<Tensor> {
        let weight = linear.frozen();
        match (lora, &tape.hidden) {
            (Some(l), Some(hidden)) => {
                let (dx, da, db) =
                    ops::lora_linear_grads(&weight, &tape.x, hidden, &l.a, &l.b, l.scale, grad)?;
                accumulate(lora_grads, l.a_id, da)?;
                accumulate(lora_grads, l.b_id, db)?;
                Ok(dx)
            }
            _ => weight.matmul(grad),
        }
    }

    /// One pass forward, keeping its tape; `past` is the earlier pass's keys and values, one
    /// row, repeated here over this pass's rows.
    fn pass_forward(
        &self,
        idx: usize,
        lora: &LayerLora,
        input: &PassInput<'_>,
        past: Option<&KeysValues>,
    ) -> Result<(PassTape, KeysValues), ModelError> {
        let layer = &self.layers[idx];
        let config = &self.config;
        let (n_heads, n_kv, head_dim) = (config.num_heads, config.num_kv_heads, config.head_dim);
        let n_rep = n_heads / n_kv;
        let eps = config.rms_norm_eps as f32;
        let (b, t, d) = input.x.dims3()?;
        let x = input.x.reshape((b * t, d))?;

        let normed = ops::rms_norm(&x, &layer.input_layernorm, eps)?;
        let heads = |flat: Tensor, count: usize| -> candle_core::Result<Tensor> {
            flat.reshape((b, t, count, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, q_tape) = Self::linear_forward(&layer.q_proj, &normed, lora.get(Projection::Q))?;
        let (k, k_tape) = Self::linear_forward(&layer.k_proj, &normed, lora.get(Projection::K))?;
        let (v, v_tape) = Self::linear_forward(&layer.v_proj, &normed, lora.get(Projection::V))?;
        let (q, k, v) = (heads(q, n_heads)?, heads(k, n_kv)?, heads(v, n_kv)?);
        let (q, k, q_unnormed, k_unnormed) = match (&layer.q_norm, &layer.k_norm) {
            (Some(q_norm), Some(k_norm)) => (
                ops::rms_norm(&q, q_norm, eps)?,
                ops::rms_norm(&k, k_norm, eps)?,
                Some(q),
                Some(k),
            ),
            _ => (q, k, None, None),
        };
        let q = ops::rope(&q, input.cos, input.sin)?;
        let k = ops::rope(&k, input.cos, input.sin)?;
        let (k_all, v_all) = match past {
            Some((past_k, past_v)) => (
                Tensor::cat(&[&repeat_batch(past_k, b)?, &k], 2)?,
                Tensor::cat(&[&repeat_batch(past_v, b)?, &v], 2)?,
            ),
            None => (k.clone(), v.clone()),
        };
        let s = k_all.dim(2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q_folded = (q * scale)?.reshape((b, n_kv, n_rep * t, head_dim))?;
        let scores = ops::matmul(&q_folded, &k_all.t()?)?.reshape((b, n_heads, t, s))?;
        let probs = ops::masked_softmax(&scores, input.mask)?.reshape((b, n_kv, n_rep * t, s))?;
        let attended = ops::matmul(&probs, &v_all)?
            .reshape((b, n_heads, t, head_dim))?
            .transpose(1, 2)?
            .reshape((b * t, n_heads * head_dim))?;
        let (o, o_tape) = Self::linear_forward(&layer.o_proj, &attended, lora.get(Projection::O))?;
        let mid = (x + o)?;

        let normed = ops::rms_norm(&mid, &layer.post_attention_layernorm, eps)?;
        let (gate, gate_tape) =
            Self::linear_forward(&layer.gate_proj, &normed, lora.get(Projection::Gate))?;
        let (up, up_tape) =
            Self::linear_forward(&layer.up_proj, &normed, lora.get(Projection::Up))?;
        let activated = ops::swiglu(&gate, &up)?;
        let (_, down_tape) =
            Self::linear_forward(&layer.down_proj, &activated, lora.get(Projection::Down))?;
        Ok((
            PassTape {
                b,
                t,
                x: input.x.clone(),
                q: q_tape,
                k: k_tape,
                v: v_tape,
                q_unnormed,
                k_unnormed,
                q_folded,
                k_all,
                v_all,
                probs,
                o: o_tape,
                mid,
                gate_proj: gate_tape,
                up_proj: up_tape,
                gate,
                up,
                down: down_tape,
            },
            (k, v),
        ))
    }

    /// One pass backward from the gradient of its output `(b, t, hidden)`; `own_kv_grad` is a
    /// later pass's gradient to this pass's keys and values. Returns the input's gradient and,
    /// when the pass attended to a past, the gradient of that past's (unrepeated) keys and
    /// values.
    #[allow(clippy::too_many_arguments)]
    fn pass_backward(
        &self,
        idx: usize,
        lora: &LayerLora,
        tape: &PassTape,
        input: &PassInput<'_>,
        grad: &Tensor,
        own_kv_grad: Option<KeysValues>,
        lora_grads: &mut HashMap<TensorId, Tensor>,
    ) -> Result<(Tensor, Option<KeysValues>), ModelError> {
        let layer = &self.layers[idx];
        let config = &self.config;
        let (n_heads, n_kv, head_dim) = (config.num_heads, config.num_kv_heads, config.head_dim);
        let n_rep = n_heads / n_kv;
        let eps = config.rms_norm_eps as f32;
        let (b, t) = (tape.b, tape.t);
        let d = grad.dim(2)?;
        let grad = grad.reshape((b * t, d))?;

        // MLP: y = mid + down(silu(gate) · up).
        let grad_activated = Self::linear_backward(
            &layer.down_proj,
            &tape.down,
            lora.get(Projection::Down),
            &grad,
            lora_grads,
        )?;
        let (grad_gate, grad_up) = ops::swiglu_grads(&tape.gate, &tape.up, &grad_activated)?;
        let grad_normed = (Self::linear_backward(
            &layer.gate_proj,
            &tape.gate_proj,
            lora.get(Projection::Gate),
            &grad_gate,
            lora_grads,
        )? + Self::linear_backward(
            &layer.up_proj,
            &tape.up_proj,
            lora.get(Projection::Up),
            &grad_up,
            lora_grads,
        )?)?;
        let grad_mid = (&grad
            + ops::rms_norm_grad(
                &tape.mid,
                &layer.post_attention_layernorm,
                eps,
                &grad_normed,
            )?)?;

        // Attention: mid = x + o(softmax(q kᵀ / √d + mask) v).
        let grad_attended = Self::linear_backward(
            &layer.o_proj,
            &tape.o,
            lora.get(Projection::O),
            &grad_mid,
            lora_grads,
        )?;
        let grad_out = grad_attended
            .reshape((b, t, n_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n_kv, n_rep * t, head_dim))?;
        let grad_v_all = ops::matmul(&tape.probs.t()?, &grad_out)?;
        let grad_probs = ops::matmul(&grad_out, &tape.v_all.t()?)?;
        let grad_scores = ops::softmax_grad(&tape.probs, &grad_probs)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let grad_q = (ops::matmul(&grad_scores, &tape.k_all)? * scale)?
            .reshape((b, n_heads, t, head_dim))?;
        let grad_k_all = ops::matmul(&grad_scores.t()?, &tape.q_folded)?;
        let s = tape.k_all.dim(2)?;
        let past_len = s - t;
        let (mut grad_k, mut grad_v) = (
            grad_k_all.narrow(2, past_len, t)?,
            grad_v_all.narrow(2, past_len, t)?,
        );
        if let Some((extra_k, extra_v)) = own_kv_grad {
            grad_k = grad_k.broadcast_add(&extra_k)?;
            grad_v = grad_v.broadcast_add(&extra_v)?;
        }
        let past_grad = if past_len > 0 {
            Some((
                grad_k_all.narrow(2, 0, past_len)?.sum_keepdim(0)?,
                grad_v_all.narrow(2, 0, past_len)?.sum_keepdim(0)?,
            ))
        } else {
            None
        };
        // A rotation's transpose is the rotation by the opposite angle.
        let minus_sin = input.sin.neg()?;
        let rotate_back =
            |g: &Tensor| candle_nn::rotary_emb::rope(&g.contiguous()?, input.cos, &minus_sin);
        let mut grad_q = rotate_back(&grad_q)?;
        let mut grad_k = rotate_back(&grad_k)?;
        if let (Some(q_norm), Some(k_norm), Some(q), Some(k)) = (
            &layer.q_norm,
            &layer.k_norm,
            &tape.q_unnormed,
            &tape.k_unnormed,
        ) {
            grad_q = ops::rms_norm_grad(q, q_norm, eps, &grad_q)?;
            grad_k = ops::rms_norm_grad(k, k_norm, eps, &grad_k)?;
        }
        let flat = |g: Tensor, count: usize| -> candle_core::Result<Tensor> {
            g.transpose(1, 2)?
                .contiguous()?
                .reshape((b * t, count * head_dim))
        };
        let grad_normed = ((Self::linear_backward(
            &layer.q_proj,
            &tape.q,
            lora.get(Projection::Q),
            &flat(grad_q, n_heads)?,
            lora_grads,
        )? + Self::linear_backward(
            &layer.k_proj,
            &tape.k,
            lora.get(Projection::K),
            &flat(grad_k, n_kv)?,
            lora_grads,
        )?)? + Self::linear_backward(
            &layer.v_proj,
            &tape.v,
            lora.get(Projection::V),
            &flat(grad_v, n_kv)?,
            lora_grads,
        )?)?;
        let x = tape.x.reshape((b * t, d))?;
        let grad_x =
            (grad_mid + ops::rms_norm_grad(&x, &layer.input_layernorm, eps, &grad_normed)?)?;
        Ok((grad_x.reshape((b, t, d))?, past_grad))
    }
}
