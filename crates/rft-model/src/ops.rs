//! Differentiable versions of the transformer's hot ops, each with a hand-written backward.
//!
//! candle's fused kernels (`rms_norm`, `rope`, `softmax_last_dim`) record no gradient, and its
//! matmul backward always materialises the gradient of the (frozen) weight. Composite versions
//! that do record gradients keep several `[tokens, hidden]` or `[b, h, t, t]` intermediates alive
//! per layer until backward ends. So every op here follows one pattern ([`attach_backward`]):
//!
//! 1. compute the result with the fast kernel on a *detached* input (no graph at all);
//! 2. wrap it in a custom op whose forward hands that value over and whose `bwd` computes the
//!    input gradient in closed form, keeping only what the formula needs (often just the result).
//!
//! Both halves are ordinary tensor ops, so the same code runs on every device candle supports;
//! only the hand-over copy in [`WithBackward`] touches a backend. When the input does not track
//! a gradient (sampling, evaluation) the ops return the fast kernel's result unchanged: one code
//! path serves inference and training.
//!
//! Only the *input* gets a gradient. Weights passed here are frozen by construction (the trainable
//! parameters are LoRA matrices, which use ordinary candle ops, see `lora.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout,
    Result, Shape, Storage, Tensor, D,
};

use crate::packed::PackedWeight;

type BackwardFn = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// A custom op that hands over a precomputed value and owns the gradient formula.
struct WithBackward {
    name: &'static str,
    /// Taken (not cloned) by the forward, so the precomputed value does not outlive the op's
    /// result: the graph keeps one copy of each activation, not two.
    value: Mutex<Option<Tensor>>,
    /// `(input, result, grad_result) -> grad_input`.
    backward: Box<BackwardFn>,
}

/// Takes the precomputed value out of its slot (each op's forward runs once).
fn take_value(name: &str, value: &Mutex<Option<Tensor>>) -> Result<Tensor> {
    let mut slot = value
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{name}: poisoned value")))?;
    match slot.take() {
        Some(value) => Ok(value),
        None => bail!("{name}: forward ran twice"),
    }
}

fn hand_over_cpu(name: &str, value: &Mutex<Option<Tensor>>) -> Result<(CpuStorage, Shape)> {
    let value = take_value(name, value)?;
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok((exact_cpu_copy(cpu, layout)?, layout.shape().clone())),
        _ => bail!("{name}: value is not on the CPU"),
    }
}

fn hand_over_cuda(name: &str, value: &Mutex<Option<Tensor>>) -> Result<(CudaStorage, Shape)> {
    // Values are handed over contiguous from offset 0 and own their storage (see
    // `contiguous_value`), so cloning the buffer is an exact copy.
    let value = take_value(name, value)?;
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cuda(cuda) => Ok((cuda.try_clone(layout)?, layout.shape().clone())),
        _ => bail!("{name}: value is not on a CUDA device"),
    }
}

impl CustomOp1 for WithBackward {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        hand_over_cpu(self.name, &self.value)
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        hand_over_cuda(self.name, &self.value)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // The gradient formulas are built from detached tensors: nothing they create may join
        // the graph being walked.
        let grad = (self.backward)(&arg.detach(), &res.detach(), &grad_res.detach())?;
        Ok(Some(grad))
    }
}

/// The elements of a contiguous CPU tensor, copied into fresh storage of exactly that size.
fn exact_cpu_copy(storage: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("attach_backward: value is not contiguous");
    };
    Ok(match storage {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        other => bail!(
            "attach_backward: unsupported dtype {:?}",
            BackendStorage::dtype(other)
        ),
    })
}

/// Returns `value` as a function of `input` whose gradient is `backward(input, value, grad)`.
///
/// `value` must have been computed from `input` without tracking (from `input.detach()`). When
/// `input` tracks no gradient, `value` is returned as is.
pub fn attach_backward(
    name: &'static str,
    input: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    input.apply_op1(WithBackward {
        name,
        value: Mutex::new(Some(contiguous_value(value)?)),
        backward: Box::new(backward),
    })
}

/// `value` contiguous from offset 0, as the hand-over copies expect.
fn contiguous_value(value: Tensor) -> Result<Tensor> {
    if value.is_contiguous() && value.layout().start_offset() == 0 {
        Ok(value)
    } else {
        value.copy()?.contiguous()
    }
}

type Backward3Fn =
    dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor, Tensor)> + Send + Sync;

/// [`WithBackward`] over three inputs.
struct WithBackward3 {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    /// `(arg1, arg2, arg3, grad_result) -> the three input gradients`.
    backward: Box<Backward3Fn>,
}

impl CustomOp3 for WithBackward3 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        hand_over_cpu(self.name, &self.value)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        hand_over_cuda(self.name, &self.value)
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        arg3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g1, g2, g3) = (self.backward)(
            &arg1.detach(),
            &arg2.detach(),
            &arg3.detach(),
            &grad_res.detach(),
        )?;
        Ok((Some(g1), Some(g2), Some(g3)))
    }
}

/// Reductions (norms, soft-max sums) run in f32 for half-precision activations, f64 for f64.
fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `a @ b` in `a`'s type, whatever `b`'s: the one product every mixed-precision matmul of the
/// engine goes through (activations by bf16 or f32 weights; attention in bf16).
///
/// On a GPU `b` is converted to `a`'s type (a no-op when they match, the usual case). candle's
/// CPU backend has no half-precision product, so there a bf16 or f16 operand is widened to f32
/// and the result narrowed back: f32 accumulation, what a GPU's bf16 matmul does, which lets the
/// CPU run (and test) the GPU's bf16 path.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = a.dtype();
    let half = |t: &Tensor| matches!(t.dtype(), DType::BF16 | DType::F16);
    if a.device().is_cpu() && (half(a) || half(b)) {
        return a
            .to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(out);
    }
    a.matmul(&b.to_dtype(out)?)
}

/// A frozen `(out, in)` weight with the two products training needs, `x @ Wᵀ` (forward) and
/// `g @ W` (the input's gradient), each through a packed copy of the weight where one was made
/// ([`crate::packed`]: on AVX-512 CPUs twice the vector width of candle's kernels on stable
/// Rust), else through candle. Cloning shares the weights.
#[derive(Debug, Clone)]
pub struct FrozenWeight {
    dense: Tensor,
    /// `dense` packed for `x @ Wᵀ`.
    packed: Option<Arc<PackedWeight>>,
    /// `denseᵀ` packed, for `g @ W = g @ (Wᵀ)ᵀ`.
    packed_t: Option<Arc<PackedWeight>>,
}

impl FrozenWeight {
    /// Candle's matmul for both products.
    pub fn dense(weight: &Tensor) -> FrozenWeight {
        FrozenWeight {
            dense: weight.clone(),
            packed: None,
            packed_t: None,
        }
    }

    /// Uses the packed copies given (each must hold `weight`'s values, `packed_t` transposed).
    pub(crate) fn with_packed(
        weight: &Tensor,
        packed: Option<&Arc<PackedWeight>>,
        packed_t: Option<&Arc<PackedWeight>>,
    ) -> FrozenWeight {
        FrozenWeight {
            dense: weight.clone(),
            packed: packed.cloned(),
            packed_t: packed_t.cloned(),
        }
    }

    /// The weight itself.
    pub fn tensor(&self) -> &Tensor {
        &self.dense
    }

    /// `x @ Wᵀ` for `x: (n, in)`, in `x`'s type; no gradient.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Some(packed) if x.dtype() == DType::F32 && x.device().is_cpu() => {
                packed.matmul_t(x).map_err(candle_core::Error::wrap)
            }
            _ => matmul(x, &self.dense.t()?),
        }
    }

    /// `g @ W` for `g: (n, out)`, in `g`'s type; no gradient.
    pub fn matmul(&self, g: &Tensor) -> Result<Tensor> {
        match &self.packed_t {
            Some(packed) if g.dtype() == DType::F32 && g.device().is_cpu() => {
                packed.matmul_t(g).map_err(candle_core::Error::wrap)
            }
            _ => matmul(g, &self.dense),
        }
    }
}

/// `x @ weightᵀ + bias` for `x: (n, in)`, `weight: (out, in)`, `bias: (out)`; gradient to `x` only.
pub fn frozen_linear(x: &Tensor, weight: &FrozenWeight, bias: Option<&Tensor>) -> Result<Tensor> {
    let value = weight.matmul_t(&x.detach())?;
    let value = match bias {
        Some(bias) => value.broadcast_add(bias)?,
        None => value,
    };
    let weight = weight.clone();
    attach_backward("frozen-linear", x, value, move |_, _, grad| {
        weight.matmul(grad)
    })
}

/// A frozen linear layer with a LoRA update: `x @ weightᵀ + bias + scale · (x @ aᵀ) @ bᵀ` for
/// `x: (n, in)`, `weight: (out, in)`, `a: (r, in)`, `b: (out, r)`; gradients to `x`, `a` and `b`.
///
/// One node instead of the six of the composite (two matmuls, a scale, a matmul, a transpose,
/// an add): the backward reuses the scaled `x @ aᵀ` of the forward, computes `x`'s two gradient
/// terms without an intermediate graph sum, and keeps no full-width update tensor alive.
pub fn lora_linear(
    x: &Tensor,
    weight: &FrozenWeight,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (value, hidden) =
        lora_linear_value(&x.detach(), weight, bias, &a.detach(), &b.detach(), scale)?;
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return Ok(value);
    }
    let weight = weight.clone();
    x.apply_op3(
        a,
        b,
        WithBackward3 {
            name: "lora-linear",
            value: Mutex::new(Some(contiguous_value(value)?)),
            backward: Box::new(move |x, a, b, grad| {
                lora_linear_grads(&weight, x, &hidden, a, b, scale, grad)
            }),
        },
    )
}

/// The value of [`lora_linear`] without a graph, and the scaled `s·(x @ aᵀ)` its gradients
/// reuse.
pub(crate) fn lora_linear_value(
    x: &Tensor,
    weight: &FrozenWeight,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let base = weight.matmul_t(x)?;
    let base = match bias {
        Some(bias) => base.broadcast_add(bias)?,
        None => base,
    };
    // The adapter's path runs in the adapter's type (f32) whatever the activations', so its
    // small update is not rounded away before it meets the base product.
    let hidden = (x.to_dtype(a.dtype())?.matmul(&a.t()?)? * scale)?;
    let update = hidden.matmul(&b.t()?)?;
    let value = if base.dtype() == update.dtype() {
        (base + update)?
    } else {
        (base.to_dtype(update.dtype())? + update)?.to_dtype(base.dtype())?
    };
    Ok((value, hidden))
}

/// The gradients of [`lora_linear`] to `x`, `a` and `b`, given the incoming `grad` and the
/// forward's `hidden` ([`lora_linear_value`]).
pub(crate) fn lora_linear_grads(
    weight: &FrozenWeight,
    x: &Tensor,
    hidden: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    // With h = s·(x aᵀ): dh = s·(g b), dx = g·W + dh·a, da = dhᵀ·x, db = gᵀ·h. The adapter's
    // gradients are taken in its type (f32) from activations of any type.
    let lora_dtype = a.dtype();
    let grad_lora = grad.to_dtype(lora_dtype)?;
    let grad_hidden = (grad_lora.matmul(b)? * scale)?;
    let dx = (weight.matmul(grad)? + grad_hidden.matmul(a)?.to_dtype(grad.dtype())?)?;
    let da = grad_hidden.t()?.matmul(&x.to_dtype(lora_dtype)?)?;
    let db = grad_lora.t()?.matmul(hidden)?;
    Ok((dx, da, db))
}

/// RMS norm over the last dimension with a frozen scale: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let detached = x.detach().contiguous()?;
    let value = if x.dtype() == DType::F64 {
        // The fused kernel has no f64 version; f64 is what the gradient checks run in.
        let r = (detached.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
            .sqrt()?
            .recip()?;
        detached.broadcast_mul(&r)?.broadcast_mul(weight)?
    } else {
        candle_nn::ops::rms_norm(&detached, weight, eps)?
    };
    let weight = weight.clone();
    attach_backward("rms-norm", x, value, move |x, _, grad| {
        rms_norm_grad(x, &weight, eps, grad)
    })
}

/// The gradient of [`rms_norm`] to `x`, given the incoming `grad`.
pub(crate) fn rms_norm_grad(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    grad: &Tensor,
) -> Result<Tensor> {
    // With r = (mean(x²) + eps)^-½ and x̂ = x·r:  dx = r·(g·w − x̂·mean(g·w·x̂)).
    // Computed in f32 whatever the activation dtype, like the forward kernel.
    let dtype = x.dtype();
    let x = x.to_dtype(accumulation_dtype(dtype))?;
    let grad = grad.to_dtype(accumulation_dtype(dtype))?;
    let weight = weight.to_dtype(accumulation_dtype(dtype))?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
        .sqrt()?
        .recip()?;
    let x_hat = x.broadcast_mul(&r)?;
    let gw = grad.broadcast_mul(&weight)?;
    let dot = (&gw * &x_hat)?.mean_keepdim(D::Minus1)?;
    (gw - x_hat.broadcast_mul(&dot)?)?
        .broadcast_mul(&r)?
        .to_dtype(dtype)
}

/// Rotary position embedding in Hugging Face's rotate-half layout.
///
/// `x: (b, heads, t, head_dim)`, `cos`/`sin`: `(b, t, head_dim / 2)`. A rotation's transpose is
/// the rotation by the opposite angle, so the backward is the same kernel with `-sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let value = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let cos = cos.clone();
    let minus_sin = sin.neg()?;
    attach_backward("rope", x, value, move |_, _, grad| {
        candle_nn::rotary_emb::rope(&grad.contiguous()?, &cos, &minus_sin)
    })
}

/// `softmax(scores + mask)` over the last dimension; the mask is a constant (no gradient, and
/// none stored, unlike a plain `broadcast_add`).
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let detached = scores.detach();
    let value = match mask {
        Some(mask) => candle_nn::ops::softmax_last_dim(&detached.broadcast_add(mask)?)?,
        None => candle_nn::ops::softmax_last_dim(&detached.contiguous()?)?,
    };
    attach_backward("masked-softmax", scores, value, |_, probs, grad| {
        softmax_grad(probs, grad)
    })
}

/// The gradient of a soft-max over the last dimension to its input, from its output `probs`.
pub(crate) fn softmax_grad(probs: &Tensor, grad: &Tensor) -> Result<Tensor> {
    // dx = y·(g − Σ g·y)
    let dot = (grad * probs)?.sum_keepdim(D::Minus1)?;
    probs * grad.broadcast_sub(&dot)?
}

/// The SwiGLU product `silu(gate) · up`, without a graph: one fused pass over contiguous f32
/// CPU tensors, candle's ops otherwise.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() == up.shape() {
        let fused = with_f32_slice(gate, |gate_values| {
            with_f32_slice(up, |up_values| {
                gate_values
                    .iter()
                    .zip(up_values)
                    .map(|(&x, &u)| x / (1.0 + (-x).exp()) * u)
                    .collect::<Vec<f32>>()
            })
        });
        if let Some(values) = fused.flatten() {
            return Tensor::from_vec(values, gate.shape(), gate.device());
        }
    }
    candle_nn::ops::silu(&gate.detach())? * up.detach()
}

/// The gradients of the SwiGLU product `silu(gate) · up` to `gate` and `up`, given the
/// incoming `grad` (all of one shape).
///
/// Contiguous f32 CPU tensors take one fused pass (the composite below makes ten passes over
/// these `(tokens, intermediate)` tensors, about 3% of a GRPO step on the 135M model).
pub(crate) fn swiglu_grads(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    if gate.shape() == up.shape() && gate.shape() == grad.shape() {
        let fused = with_f32_slice(gate, |gate_values| {
            with_f32_slice(up, |up_values| {
                with_f32_slice(grad, |grad_values| {
                    let mut grad_gate = Vec::with_capacity(gate_values.len());
                    let mut grad_up = Vec::with_capacity(gate_values.len());
                    for ((&x, &u), &g) in gate_values.iter().zip(up_values).zip(grad_values) {
                        let sigmoid = 1.0 / (1.0 + (-x).exp());
                        let silu = x * sigmoid;
                        grad_up.push(g * silu);
                        grad_gate.push(g * u * (sigmoid + silu * (1.0 - sigmoid)));
                    }
                    (grad_gate, grad_up)
                })
            })
        });
        if let Some((grad_gate, grad_up)) = fused.flatten().flatten() {
            return Ok((
                Tensor::from_vec(grad_gate, gate.shape(), gate.device())?,
                Tensor::from_vec(grad_up, gate.shape(), gate.device())?,
            ));
        }
    }
    swiglu_grads_composite(gate, up, grad)
}

/// [`swiglu_grads`] as tensor ops, for every dtype and device.
fn swiglu_grads_composite(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let sigmoid = (gate.neg()?.exp()? + 1.0)?.recip()?;
    let silu = (gate * &sigmoid)?;
    let grad_up = (grad * &silu)?;
    // silu'(x) = σ(x)·(1 + x·(1 − σ(x))) = σ(x) + silu(x)·(1 − σ(x)).
    let slope = (&sigmoid + (&silu * sigmoid.affine(-1.0, 1.0)?)?)?;
    let grad_gate = ((grad * up)? * slope)?;
    Ok((grad_gate, grad_up))
}

/// `f` over the elements of a contiguous f32 CPU tensor; `None` for any other tensor.
fn with_f32_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(values)) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(f(&values[start..end]))
}

/// How many logits one chunk of [`token_logprobs`] materialises at most (32 MiB of f32).
const LOGPROB_CHUNK_ELEMENTS: usize = 1 << 23;

/// `log_softmax(hidden @ lm_headᵀ)[target]` for each row: the log-prob of each target token.
///
/// `hidden: (n, d)`, `lm_head: (vocab, d)`, `targets: (n)` u32 → `(n)` f32. Rows are processed in
/// chunks, so at most [`LOGPROB_CHUNK_ELEMENTS`] logits exist at once, instead of the several
/// `(n, vocab)` copies a composite log-softmax keeps alive.
///
/// When `hidden` tracks a gradient, the forward also computes what the backward needs, while the
/// chunk's logits are at hand: with `p = softmax(hidden_i @ lm_headᵀ)`, the gradient of
/// `log p(target_i)` with respect to `hidden_i` is `lm_head[target_i] − pᵀ·lm_head`, one `(n, d)`
/// tensor. The backward is then a row scaling, and the vocabulary-sized matmuls run twice (the
/// logits, the expected embedding) instead of three times (the logits again in the backward).
pub fn token_logprobs(hidden: &Tensor, lm_head: &FrozenWeight, targets: &Tensor) -> Result<Tensor> {
    let (vocab, _) = lm_head.tensor().dims2()?;
    token_logprobs_chunked(
        hidden,
        lm_head,
        targets,
        (LOGPROB_CHUNK_ELEMENTS / vocab.max(1)).max(1),
    )
}

fn token_logprobs_chunked(
    hidden: &Tensor,
    lm_head: &FrozenWeight,
    targets: &Tensor,
    rows_per_chunk: usize,
) -> Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    if targets.dims1()? != n {
        bail!(
            "token_logprobs: {} targets for {n} hidden rows",
            targets.dims1()?
        );
    }
    let with_gradient = hidden.track_op();
    let acc = accumulation_dtype(hidden.dtype());
    let detached = hidden.detach();
    let mut pieces = Vec::with_capacity(n.div_ceil(rows_per_chunk));
    let mut expected = Vec::new();
    for start in (0..n).step_by(rows_per_chunk) {
        let len = rows_per_chunk.min(n - start);
        let logits = lm_head
            .matmul_t(&detached.narrow(0, start, len)?)?
            .to_dtype(acc)?;
        let chunk_targets = targets.narrow(0, start, len)?;
        let picked = logits.gather(&chunk_targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        if let Some(stats) = SoftmaxStats::of_f32(&logits, with_gradient) {
            let device = logits.device();
            if with_gradient {
                let vocab = logits.dim(1)?;
                let unnormalised = Tensor::from_vec(stats.exps, (len, vocab), device)?;
                let inv_sum = Tensor::from_vec(stats.inv_sums, (len, 1), device)?;
                expected.push(
                    lm_head
                        .matmul(&unnormalised)?
                        .to_dtype(acc)?
                        .broadcast_mul(&inv_sum)?,
                );
            }
            pieces.push((picked - Tensor::from_vec(stats.log_norms, len, device)?)?);
            continue;
        }
        let log_norm = logits.log_sum_exp(D::Minus1)?;
        if with_gradient {
            let probs = logits.broadcast_sub(&log_norm.unsqueeze(1)?)?.exp()?;
            expected.push(
                lm_head
                    .matmul(&probs.to_dtype(hidden.dtype())?)?
                    .to_dtype(acc)?,
            );
        }
        pieces.push((picked - log_norm)?);
    }
    let value = if pieces.is_empty() {
        Tensor::zeros(0, acc, hidden.device())?
    } else {
        Tensor::cat(&pieces, 0)?
    };
    if !with_gradient || n == 0 {
        return Ok(value);
    }
    // d log p(target) / d hidden, per row.
    let direction =
        (lm_head.tensor().index_select(targets, 0)?.to_dtype(acc)? - Tensor::cat(&expected, 0)?)?;
    attach_backward("token-logprobs", hidden, value, move |hidden, _, grad| {
        direction
            .broadcast_mul(&grad.to_dtype(direction.dtype())?.unsqueeze(1)?)?
            .to_dtype(hidden.dtype())
    })
}

/// A soft-max's statistics per row of logits `(n, vocab)`.
struct SoftmaxStats {
    /// The log of each row's normaliser, `n`.
    log_norms: Vec<f32>,
    /// With weights: the reciprocal of each row's sum of `exps`, `n`.
    inv_sums: Vec<f32>,
    /// With weights: `exp(l − max)` of every logit, `n · vocab`; times `inv_sums`, the soft-max.
    exps: Vec<f32>,
}

impl SoftmaxStats {
    /// The statistics of contiguous f32 CPU logits; `None` for any other tensor (the caller's
    /// composite then runs).
    ///
    /// Why by hand: `log_sum_exp` and the soft-max after it make seven passes and two
    /// exponentials per logit over `(chunk, 49,152)` tensors (about 4% of a GRPO step on the
    /// 135M model); this makes two passes and one exponential, and leaves the normalisation to
    /// the `(n, d)` product.
    fn of_f32(logits: &Tensor, weights: bool) -> Option<SoftmaxStats> {
        let (n, vocab) = logits.dims2().ok()?;
        with_f32_slice(logits, |values| {
            let mut stats = SoftmaxStats {
                log_norms: Vec::with_capacity(n),
                inv_sums: Vec::with_capacity(n),
                exps: Vec::with_capacity(if weights { n * vocab } else { 0 }),
            };
            for row in values.chunks_exact(vocab.max(1)) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // Sums in f64: 49,152 terms in f32 lose about four digits.
                let sum: f64 = if weights {
                    let before = stats.exps.len();
                    stats.exps.extend(row.iter().map(|&l| (l - max).exp()));
                    stats.exps[before..].iter().map(|&e| e as f64).sum()
                } else {
                    row.iter().map(|&l| (l - max).exp() as f64).sum()
                };
                stats.log_norms.push(max + sum.ln() as f32);
                stats.inv_sums.push((1.0 / sum) as f32);
            }
            stats
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each op against f64 central finite differences of a random linear functional of its
    //! output, and against the same formula written with candle's differentiable composites.

    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_swiglu_and_its_gradients_equal_the_composites() {
        let f32s = |seed| {
            (random(&[37, 19], seed) * 4.0)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let (gate, up, grad) = (f32s(1), f32s(2), f32s(3));
        let (fused_gate, fused_up) = swiglu_grads(&gate, &up, &grad).unwrap();
        let (gate_ref, up_ref) = swiglu_grads_composite(&gate, &up, &grad).unwrap();
        for (fused, reference) in [(fused_gate, gate_ref), (fused_up, up_ref)] {
            let diff = (fused - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "fused and composite differ by {diff}");
        }
        let product = swiglu(&gate, &up).unwrap();
        let expected = (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap();
        let diff = (product - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // A transposed (non-contiguous) input takes the composite.
        let (t_gate, _) =
            swiglu_grads(&gate.t().unwrap(), &up.t().unwrap(), &grad.t().unwrap()).unwrap();
        let expected = swiglu_grads_composite(&gate, &up, &grad)
            .unwrap()
            .0
            .t()
            .unwrap();
        let diff = (t_gate - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6);
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Checks d(Σ probe·f(x))/dx from backward against central differences.
    fn check_gradient(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, seed: u64) {
        let var = Var::from_tensor(x).unwrap();
        let out = f(var.as_tensor()).unwrap();
        let probe = random(out.dims(), seed);
        let loss = (out * &probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .expect("the input got no gradient")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        let eval = |values: &[f64]| -> f64 {
            let t = Tensor::from_vec(values.to_vec(), x.dims(), &Device::Cpu).unwrap();
            (f(&t).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        for idx in 0..base.len() {
            let mut plus = base.clone();
            plus[idx] += h;
            let mut minus = base.clone();
            minus[idx] -= h;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
            let err = (numeric - analytic[idx]).abs() / numeric.abs().max(1.0);
            assert!(
                err < 1e-7,
                "element {idx}: analytic {} numeric {numeric}",
                analytic[idx]
            );
        }
    }

    #[test]
    fn frozen_linear_gradient() {
        let w = random(&[5, 4], 1);
        let b = random(&[5], 2);
        let w = FrozenWeight::dense(&w);
        check_gradient(|x| frozen_linear(x, &w, Some(&b)), &random(&[3, 4], 3), 4);
    }

    #[test]
    fn lora_linear_gradients() {
        let (w, bias) = (random(&[5, 4], 1), random(&[5], 2));
        let (x, a, b) = (random(&[3, 4], 3), random(&[2, 4], 5), random(&[5, 2], 6));
        let s = 1.7;
        let frozen = FrozenWeight::dense(&w);
        check_gradient(|x| lora_linear(x, &frozen, Some(&bias), &a, &b, s), &x, 7);
        check_gradient(|a| lora_linear(&x, &frozen, Some(&bias), a, &b, s), &a, 8);
        check_gradient(|b| lora_linear(&x, &frozen, Some(&bias), &a, b, s), &b, 9);
        // The value is the composite's.
        let composite = (x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            + (x.matmul(&a.t().unwrap()).unwrap() * s)
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap())
        .unwrap();
        let fused = lora_linear(&x, &frozen, Some(&bias), &a, &b, s).unwrap();
        let diff = (composite - fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "{diff}");
    }

    #[test]
    fn frozen_linear_gives_the_weight_no_gradient() {
        let w = Var::from_tensor(&random(&[5, 4], 1)).unwrap();
        let x = Var::from_tensor(&random(&[3, 4], 3)).unwrap();
        let loss = frozen_linear(x.as_tensor(), &FrozenWeight::dense(w.as_tensor()), None)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(w.as_tensor()).is_none());
    }

    #[test]
    fn rms_norm_gradient() {
        let w = (random(&[6], 5) + 1.0).unwrap();
        check_gradient(|x| rms_norm(x, &w, 1e-5), &random(&[2, 3, 6], 6), 7);
    }

    #[test]
    fn rope_gradient() {
        let cos = random(&[2, 3, 4], 8);
        let sin = random(&[2, 3, 4], 9);
        check_gradient(|x| rope(x, &cos, &sin), &random(&[2, 2, 3, 8], 10), 11);
    }

    #[test]
    fn masked_softmax_gradient() {
        let mask = Tensor::from_vec(
            vec![0f64, 0.0, f64::NEG_INFINITY, 0.0, 0.0, 0.0],
            (1, 2, 3),
            &Device::Cpu,
        )
        .unwrap();
        check_gradient(
            |x| masked_softmax(x, Some(&mask)),
            &random(&[2, 2, 3], 12),
            13,
        );
        check_gradient(|x| masked_softmax(x, None), &random(&[2, 5], 14), 15);
    }

    #[test]
    fn token_logprobs_gradient_and_value() {
        let head_values = random(&[11, 4], 16);
        let head = FrozenWeight::dense(&head_values);
        let targets = Tensor::from_vec(vec![3u32, 0, 10, 7, 7], 5, &Device::Cpu).unwrap();
        let hidden = random(&[5, 4], 17);
        check_gradient(|h| token_logprobs(h, &head, &targets), &hidden, 18);
        check_gradient(
            |h| token_logprobs_chunked(h, &head, &targets, 2),
            &hidden,
            18,
        );
        // Against the composite log_softmax + gather.
        let value = token_logprobs(&hidden, &head, &targets).unwrap();
        let logits = hidden.matmul(&head_values.t().unwrap()).unwrap();
        let expected = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let diff = (value - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "{diff}");
    }

    /// The f32 path's fused soft-max statistics give the f64 composite's log-probs and
    /// gradient, to f32 rounding.
    #[test]
    fn f32_token_logprobs_match_the_f64_composite() {
        let head64 = (random(&[300, 6], 30) * 3.0).unwrap();
        let hidden64 = (random(&[7, 6], 31) * 3.0).unwrap();
        let targets =
            Tensor::from_vec(vec![3u32, 0, 299, 150, 150, 7, 42], 7, &Device::Cpu).unwrap();
        let run = |dtype: DType| {
            let head = FrozenWeight::dense(&head64.to_dtype(dtype).unwrap());
            let hidden = Var::from_tensor(&hidden64.to_dtype(dtype).unwrap()).unwrap();
            let value = token_logprobs_chunked(hidden.as_tensor(), &head, &targets, 3).unwrap();
            let weights =
                Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0, 1.0, -1.0, 2.0], 7, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
            let grads = (&value * weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = grads
                .get(hidden.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            (value.to_dtype(DType::F64).unwrap(), grad)
        };
        let (value32, grad32) = run(DType::F32);
        let (value64, grad64) = run(DType::F64);
        let worst = |a: Tensor, b: Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(worst(value32, value64) < 1e-4);
        assert!(worst(grad32, grad64) < 1e-4);
    }

    /// The packed products give the dense ones' values and gradients, to f32 rounding.
    #[test]
    fn packed_frozen_weights_match_dense_ones() {
        let f32_random = |shape: &[usize], seed: u64| random(shape, seed).to_dtype(DType::F32);
        let w = f32_random(&[40, 70], 21).unwrap();
        let Some(packed) = PackedWeight::pack(&w).unwrap() else {
            return;
        };
        let packed_t = PackedWeight::pack(&w.t().unwrap()).unwrap().unwrap();
        let fast =
            FrozenWeight::with_packed(&w, Some(&Arc::new(packed)), Some(&Arc::new(packed_t)));
        let slow = FrozenWeight::dense(&w);
        let (a, b) = (
            f32_random(&[3, 70], 22).unwrap(),
            f32_random(&[40, 3], 23).unwrap(),
        );
        let head = f32_random(&[50, 70], 24).unwrap();
        let targets =
            Tensor::from_vec(vec![1u32, 49, 7, 7, 0, 33, 2, 11, 40], 9, &Device::Cpu).unwrap();
        let run = |frozen: &FrozenWeight, head: &FrozenWeight| {
            let x = Var::from_tensor(&f32_random(&[9, 70], 25).unwrap()).unwrap();
            let hidden = lora_linear(x.as_tensor(), frozen, None, &a, &b, 0.5).unwrap();
            let hidden = frozen_linear(
                &hidden,
                &FrozenWeight::dense(&w.t().unwrap().contiguous().unwrap()),
                None,
            )
            .unwrap();
            let logprobs = token_logprobs(&hidden, head, &targets).unwrap();
            let grads = logprobs.sum_all().unwrap().backward().unwrap();
            let dx = grads.get(x.as_tensor()).unwrap().clone();
            (logprobs, dx)
        };
        let head_packed = FrozenWeight::with_packed(
            &head,
            Some(&Arc::new(PackedWeight::pack(&head).unwrap().unwrap())),
            Some(&Arc::new(
                PackedWeight::pack(&head.t().unwrap()).unwrap().unwrap(),
            )),
        );
        let (value_fast, grad_fast) = run(&fast, &head_packed);
        let (value_slow, grad_slow) = run(&slow, &FrozenWeight::dense(&head));
        let worst = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let scale = grad_slow
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(worst(&value_fast, &value_slow) < 1e-3);
        assert!(worst(&grad_fast, &grad_slow) < 1e-4 * scale.max(1.0));
    }

    #[test]
    fn untracked_inputs_take_the_fast_path() {
        let x = random(&[2, 6], 19);
        let w = random(&[6], 20);
        let y = rms_norm(&x, &w, 1e-6).unwrap();
        assert!(!y.track_op());
    }
}
