//! The decoder's KV cache: per-layer key and value buffers written in place.

use candle_core::Tensor;

/// Keys and values of the tokens seen so far, per layer: `(b, kv_heads, seen, head_dim)`.
///
/// Each layer keeps buffers with room for more positions than it has seen and writes new
/// keys and values in place; the capacity doubles when it runs out. Appending with
/// `Tensor::cat` instead copies the whole cache at every decode step, which is quadratic in
/// the completion length (7% of a 64-token decode at batch 64, most of a long one).
#[derive(Debug, Default)]
pub struct KvCache {
    pub(super) layers: Vec<Option<LayerCache>>,
    /// Positions each layer's buffers are allocated for at the prefill
    /// ([`KvCache::with_capacity`]): a sampler that knows its longest sequence allocates once
    /// instead of growing (a GPU pays for each allocation and copy).
    pub(super) capacity: usize,
}

/// One layer's buffers: `(b, kv_heads, capacity, head_dim)`, the first `len` positions filled.
#[derive(Debug)]
pub(crate) struct LayerCache {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
    pub(super) len: usize,
    /// Part of a training graph (a shared prompt's keys and values that the completions
    /// attend to): appended with `Tensor::cat`, which back-propagates, never written in place.
    pub(super) differentiable: bool,
}

impl LayerCache {
    /// Keys and values that stay in the autograd graph when appended to.
    pub(crate) fn differentiable(k: Tensor, v: Tensor) -> candle_core::Result<LayerCache> {
        let len = k.dim(2)?;
        Ok(LayerCache {
            k,
            v,
            len,
            differentiable: true,
        })
    }

    /// The filled part: views into the buffers, valid until the next append.
    pub(crate) fn filled(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Appends `(b, kv_heads, t, head_dim)` keys and values.
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let t = k.dim(2)?;
        if self.differentiable {
            let (past_k, past_v) = self.filled()?;
            self.k = Tensor::cat(&[&past_k, k], 2)?;
            self.v = Tensor::cat(&[&past_v, v], 2)?;
            self.len += t;
            return Ok(());
        }
        let capacity = self.k.dim(2)?;
        if self.len + t > capacity {
            self.grow_to((self.len + t).max(2 * capacity))?;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok(())
    }

    /// New buffers with room for `positions`, holding the filled part.
    pub(super) fn grow_to(&mut self, grown: usize) -> candle_core::Result<()> {
        {
            let grow = |buffer: &Tensor| -> candle_core::Result<Tensor> {
                let (b, h, _, d) = buffer.dims4()?;
                let fresh = Tensor::zeros((b, h, grown, d), buffer.dtype(), buffer.device())?;
                fresh.slice_set(&buffer.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                Ok(fresh)
            };
            self.k = grow(&self.k)?;
            self.v = grow(&self.v)?;
        }
        Ok(())
    }
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// An empty cache whose buffers are allocated for `positions` at the prefill, so a decode
    /// that stays within them never reallocates.
    pub fn with_capacity(positions: usize) -> KvCache {
        KvCache {
            layers: Vec::new(),
            capacity: positions,
        }
    }

    /// Positions the buffers have room for (the first layer's; 0 when empty).
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.k.dim(2).unwrap_or(0))
    }

    /// Tokens cached so far (0 when empty).
    pub fn seen(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
    }

    /// A deep copy. The buffers are written in place, so two caches must never share them
    /// (which is why `KvCache` is not `Clone`).
    pub fn try_clone(&self) -> candle_core::Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|l| {
                        let (k, v) = l.filled()?;
                        Ok(LayerCache {
                            k: k.copy()?,
                            v: v.copy()?,
                            len: l.len,
                            differentiable: false,
                        })
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            capacity: self.capacity,
        })
    }

    /// Keeps only the given batch rows (finished sequences leave the batch). The selection
    /// copies whole buffers (contiguous, as `index_select` needs), spare capacity included.
    pub fn select_rows(&self, rows: &Tensor) -> candle_core::Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|l| {
                        Ok(LayerCache {
                            k: l.k.index_select(rows, 0)?,
                            v: l.v.index_select(rows, 0)?,
                            len: l.len,
                            differentiable: l.differentiable,
                        })
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            capacity: self.capacity,
        })
    }
}
