//! The engine host: the one place a process loads base models and merged adapters, lends them
//! to whoever samples or trains (chat, Tinker's samplers and training clients, eval runs, the
//! readiness report, jobs), and keeps what is resident within one memory budget on one device.
//!
//! Before it, each of those loaded its own copy, so one base model could be resident nine
//! times and no budget saw more than one of them. Now a base model is loaded once per process
//! and lent as an [`Arc<Engine>`]; [`Engine::share`] gives a caller that needs an owned engine
//! (a `TrainingClient`) one that shares the same weights. What is resident is counted in bytes
//! (f32 weights, [`engine_bytes`]); past the budget the least recently used entry that nobody
//! borrows is dropped. An entry still lent is never dropped (its memory would not be freed),
//! so a load that cannot fit beside what is lent fails with [`ModelError::MemoryBudget`]
//! instead of growing the process until the kernel kills it; a lone model always loads.
//!
//! The host also owns the batch budget every sampler caller uses ([`plan_batches`]): a
//! prefill batch materialises `rows × heads × t × t` attention scores, so waiting requests
//! are grouped by prompt length into runs whose prefill and KV cache fit a byte budget,
//! instead of all at once.
//!
//! It is the seam a remote rollout engine plugs into: callers ask the host for a model by
//! name, never a file.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Device;

use crate::engine::Engine;
use crate::lora::LoraAdapter;
use crate::{CausalLm, ModelConfig, ModelError};

/// Bytes a prefill or a decode batch may take for attention scores and the KV cache, past
/// which waiting requests are split into several runs ([`plan_batches`]).
pub const DEFAULT_BATCH_BYTES: u64 = 1 << 30;

/// Unmerged adapters kept per host (a few MB each).
const MAX_ADAPTERS: usize = 16;

/// The memory a loaded model holds: its weights, dequantised to f32.
pub fn engine_bytes(config: &ModelConfig) -> u64 {
    let (h, i, v) = (
        config.hidden_size as u64,
        config.intermediate_size as u64,
        config.vocab_size as u64,
    );
    let q = (config.num_heads * config.head_dim) as u64;
    let kv = (config.num_kv_heads * config.head_dim) as u64;
    let layer = h * q * 2 + h * kv * 2 + 3 * h * i + 2 * h;
    let embeddings = v * h * if config.tie_word_embeddings { 1 } else { 2 };
    4 * (layer * config.num_layers as u64 + embeddings)
}

/// What the host holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStats {
    /// Base models resident.
    pub bases: usize,
    /// Merged snapshots and packed training copies resident.
    pub merged: usize,
    /// Unmerged adapters resident.
    pub adapters: usize,
    /// Bytes of everything resident.
    pub bytes: u64,
    /// Base model loads since the host started (a second borrower of a resident model adds
    /// none).
    pub loads: u64,
}

struct Resident<T> {
    key: String,
    value: Arc<T>,
    bytes: u64,
    used: u64,
}

#[derive(Default)]
struct State {
    bases: Vec<Resident<Engine>>,
    /// Merged snapshots and packed training copies.
    derived: Vec<Resident<CausalLm>>,
    adapters: Vec<Resident<LoraAdapter>>,
    clock: u64,
    loads: u64,
}

impl State {
    fn bytes(&self) -> u64 {
        self.bases.iter().map(|r| r.bytes).sum::<u64>()
            + self.derived.iter().map(|r| r.bytes).sum::<u64>()
            + self.adapters.iter().map(|r| r.bytes).sum::<u64>()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Drops least recently used entries nobody borrows until `extra` more bytes fit in
    /// `budget`; `Err` with what is lent when they cannot.
    fn make_room(&mut self, extra: u64, budget: u64) -> Result<(), ModelError> {
        while self.bytes() + extra > budget {
            // The least recently used entry nobody borrows, of any kind.
            let oldest = [
                oldest_unlent(&self.derived),
                oldest_unlent(&self.adapters),
                oldest_unlent(&self.bases),
            ]
            .into_iter()
            .enumerate()
            .filter_map(|(kind, c)| c.map(|(i, used)| (kind, i, used)))
            .min_by_key(|(_, _, used)| *used);
            match oldest {
                Some((0, i, _)) => {
                    let gone = self.derived.remove(i);
                    tracing::info!("engine host: dropped a merged or packed copy to make room");
                    drop(gone);
                }
                Some((1, i, _)) => {
                    self.adapters.remove(i);
                }
                Some((_, i, _)) => {
                    let gone = self.bases.remove(i);
                    tracing::info!(
                        "engine host: dropped the base model {} to make room",
                        gone.key
                    );
                }
                None if self.bytes() == 0 => return Ok(()),
                None => {
                    return Err(ModelError::MemoryBudget {
                        needed: extra,
                        resident: self.bytes(),
                        budget,
                    })
                }
            }
        }
        Ok(())
    }
}

/// The least recently used entry of `list` that nobody borrows: `(index, last use)`.
fn oldest_unlent<T>(list: &[Resident<T>]) -> Option<(usize, u64)> {
    list.iter()
        .enumerate()
        .filter(|(_, r)| Arc::strong_count(&r.value) == 1)
        .map(|(i, r)| (i, r.used))
        .min_by_key(|(_, used)| *used)
}

/// Loads base models and merged adapters once per process and lends them (module docs).
pub struct EngineHost {
    device: Device,
    budget: u64,
    state: Mutex<State>,
    /// Held while a model loads, so two callers asking for the same model at once load it
    /// once (the second finds it resident).
    loading: Mutex<()>,
}

impl std::fmt::Debug for EngineHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHost")
            .field("device", &self.device)
            .field("budget", &self.budget)
            .field("stats", &self.stats())
            .finish()
    }
}

impl EngineHost {
    /// A host on `device` keeping at most `budget` bytes resident.
    pub fn new(device: Device, budget: u64) -> EngineHost {
        EngineHost {
            device,
            budget,
            state: Mutex::new(State::default()),
            loading: Mutex::new(()),
        }
    }

    /// The device every model of this host lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The memory budget, bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bookkeeping behind: keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is resident now.
    pub fn stats(&self) -> HostStats {
        let state = self.state();
        HostStats {
            bases: state.bases.len(),
            merged: state.derived.len(),
            adapters: state.adapters.len(),
            bytes: state.bytes(),
            loads: state.loads,
        }
    }

    /// The base model `spec` (a name or path the caller has already allowed), loaded on first
    /// use and shared after.
    pub fn base(&self, spec: &str) -> Result<Arc<Engine>, ModelError> {
        if let Some(engine) = self.resident_base(spec) {
            return Ok(engine);
        }
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = self.resident_base(spec) {
            return Ok(engine);
        }
        // Room first, from the configuration alone: a load refused after the weights are in
        // memory would already have taken what the budget is there to protect.
        if let Some(bytes) = expected_bytes(spec) {
            self.state().make_room(bytes, self.budget)?;
        }
        let engine = Engine::load_base(spec, &self.device)?;
        self.insert_base(spec, engine)
    }

    /// Puts an engine built elsewhere (tests' tiny models, a caller's own load) under `spec`,
    /// counted like a loaded one; the resident one when `spec` is already there.
    pub fn insert_base(&self, spec: &str, engine: Engine) -> Result<Arc<Engine>, ModelError> {
        let bytes = engine_bytes(engine.model.config());
        let mut state = self.state();
        if let Some(engine) = find(&mut state, |s| &mut s.bases, spec) {
            return Ok(engine);
        }
        state.make_room(bytes, self.budget)?;
        let used = state.tick();
        let engine = Arc::new(engine);
        state.loads += 1;
        state.bases.push(Resident {
            key: spec.to_owned(),
            value: engine.clone(),
            bytes,
            used,
        });
        Ok(engine)
    }

    fn resident_base(&self, spec: &str) -> Option<Arc<Engine>> {
        find(&mut self.state(), |s| &mut s.bases, spec)
    }

    /// A PEFT adapter folder over `base`, unmerged (chat samples through it over the shared
    /// base weights), kept among the last few used.
    pub fn adapter(&self, base: &Engine, dir: &Path) -> Result<Arc<LoraAdapter>, ModelError> {
        let key = adapter_key(&base.base, dir);
        if let Some(adapter) = find(&mut self.state(), |s| &mut s.adapters, &key) {
            return Ok(adapter);
        }
        let adapter = Arc::new(LoraAdapter::load_peft(
            dir,
            base.model.config(),
            &self.device,
        )?);
        let mut state = self.state();
        if let Some(adapter) = find(&mut state, |s| &mut s.adapters, &key) {
            return Ok(adapter);
        }
        if state.adapters.len() >= MAX_ADAPTERS {
            if let Some((i, _)) = oldest_unlent(&state.adapters) {
                state.adapters.remove(i);
            }
        }
        let used = state.tick();
        state.adapters.push(Resident {
            key,
            value: adapter.clone(),
            // Small beside the weights; counted by number.
            bytes: 0,
            used,
        });
        Ok(adapter)
    }

    /// `base` with the PEFT adapter in `dir` folded into a copy of its weights and packed for
    /// decoding: what a sampler of a fixed snapshot runs, one matmul per projection per step.
    /// The copy counts twice the base's bytes (merged and packed). Refused for a base whose
    /// weights would round the adapter's update away (`CausalLm::merges_exactly`: bf16); its
    /// samplers apply the adapter unmerged ([`EngineHost::adapter`]).
    pub fn merged(&self, base: &Engine, dir: &Path) -> Result<Arc<CausalLm>, ModelError> {
        if !base.model.merges_exactly() {
            return Err(ModelError::Format(format!(
                "{} is held in {:?}: an adapter merged into it would be rounded away; apply it unmerged",
                base.base,
                base.model.weight_dtype()
            )));
        }
        self.derived(
            adapter_key(&base.base, dir),
            2 * engine_bytes(base.model.config()),
            || {
                let lora = LoraAdapter::load_peft(dir, base.model.config(), &self.device)?;
                base.model.merged(&lora)?.packed_for_sampling()
            },
        )
    }

    /// `base`'s weights packed for the training pass (`CausalLm::packed_for_training`): one
    /// copy per base for every training client of the process, counted at twice the base's
    /// bytes where packing happens (AVX-512 CPUs), nothing where the model stays dense.
    pub fn training_model(&self, base: &Engine) -> Result<Arc<CausalLm>, ModelError> {
        let bytes = if base.model.will_pack_for_training() {
            2 * engine_bytes(base.model.config())
        } else {
            0
        };
        self.derived(format!("{}\u{0}training", base.base), bytes, || {
            base.model.packed_for_training()
        })
    }

    /// A model derived from a base (merged, packed) under `key`: the resident one, or `build`'s,
    /// with room for `bytes` made before it is built (building allocates the copy).
    fn derived(
        &self,
        key: String,
        bytes: u64,
        build: impl FnOnce() -> Result<CausalLm, ModelError>,
    ) -> Result<Arc<CausalLm>, ModelError> {
        if let Some(model) = find(&mut self.state(), |s| &mut s.derived, &key) {
            return Ok(model);
        }
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = find(&mut self.state(), |s| &mut s.derived, &key) {
            return Ok(model);
        }
        self.state().make_room(bytes, self.budget)?;
        let model = Arc::new(build()?);
        let mut state = self.state();
        state.make_room(bytes, self.budget)?;
        let used = state.tick();
        state.derived.push(Resident {
            key,
            value: model.clone(),
            bytes,
            used,
        });
        Ok(model)
    }

    /// Drops every entry nobody borrows (after a panic left a caller unsure what it built).
    pub fn drop_unlent(&self) {
        let mut state = self.state();
        state.derived.retain(|r| Arc::strong_count(&r.value) > 1);
        state.adapters.retain(|r| Arc::strong_count(&r.value) > 1);
        state.bases.retain(|r| Arc::strong_count(&r.value) > 1);
    }
}

/// What loading `spec` will hold, read from its configuration (a GGUF header or
/// `config.json`) without its weights; `None` when that cannot be read (the load itself then
/// says why).
fn expected_bytes(spec: &str) -> Option<u64> {
    let config = match crate::hub::resolve_model(spec).ok()? {
        crate::hub::ModelLocation::HfDir(dir) => {
            let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
            ModelConfig::from_hf_json(&text).ok()?
        }
        crate::hub::ModelLocation::Gguf(path) => {
            let mut file = std::fs::File::open(path).ok()?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut file).ok()?;
            ModelConfig::from_gguf(&content).ok()?
        }
    };
    Some(engine_bytes(&config))
}

/// An adapter's key: its base, its folder and when its weights were written, so a folder
/// saved again under the same name (Tinker's `overwrite`) is loaded anew, not served stale.
fn adapter_key(base: &str, dir: &Path) -> String {
    let written = std::fs::metadata(dir.join("adapter_model.safetensors"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{base}\u{0}{}\u{0}{written}", dir.display())
}

/// The resident entry under `key`, marked used.
fn find<T>(
    state: &mut State,
    list: impl Fn(&mut State) -> &mut Vec<Resident<T>>,
    key: &str,
) -> Option<Arc<T>> {
    let now = state.tick();
    let entry = list(state).iter_mut().find(|r| r.key == key)?;
    entry.used = now;
    Some(entry.value.clone())
}

/// The shape of one waiting sampling request, as [`plan_batches`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestShape {
    /// Prompt tokens.
    pub prompt: usize,
    /// Samples.
    pub n: usize,
    /// Most new tokens per sample.
    pub max_tokens: usize,
}

/// Bytes one batch of `shapes` takes beyond the weights: the prefill's attention scores (every
/// prompt left-padded to the longest, `rows × heads × t × t` f32 values, twice for the
/// soft-max) and the KV cache of every sample at its longest.
pub fn batch_bytes(config: &ModelConfig, shapes: &[RequestShape]) -> u64 {
    let rows = shapes.len() as u64;
    let longest = shapes.iter().map(|s| s.prompt as u64).max().unwrap_or(0);
    let attention = 2 * 4 * rows * config.num_heads as u64 * longest * longest;
    let kv_per_token = 2 * 4 * (config.num_layers * config.num_kv_heads * config.head_dim) as u64;
    let longest_total = shapes
        .iter()
        .map(|s| (s.prompt + s.max_tokens) as u64)
        .max()
        .unwrap_or(0);
    let samples: u64 = shapes.iter().map(|s| s.n as u64).sum();
    attention + kv_per_token * samples * longest_total
}

/// Groups waiting requests into runs that each fit `max_bytes` ([`batch_bytes`]), shortest
/// prompts first so that little is padded; returns indices into `shapes`. A request that is
/// over the budget alone runs alone (the caller's per-request limits bound it).
pub fn plan_batches(
    config: &ModelConfig,
    shapes: &[RequestShape],
    max_bytes: u64,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.sort_by_key(|&i| (shapes[i].prompt, shapes[i].max_tokens));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_shapes: Vec<RequestShape> = Vec::new();
    for i in order {
        current_shapes.push(shapes[i]);
        if !current.is_empty() && batch_bytes(config, &current_shapes) > max_bytes {
            current_shapes.clear();
            current_shapes.push(shapes[i]);
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;
    use crate::tiny;

    fn tiny_engine(dir: &Path) -> Engine {
        tiny::write_tiny_model(dir, Architecture::Llama, 3).unwrap();
        Engine::load_base(dir.to_str().unwrap(), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_base_is_loaded_once_and_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        tiny::write_tiny_model(&dir, Architecture::Llama, 3).unwrap();
        let host = EngineHost::new(Device::Cpu, u64::MAX);
        let spec = dir.to_str().unwrap();
        let a = host.base(spec).unwrap();
        let b = host.base(spec).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(host.stats().loads, 1);
        assert_eq!(host.stats().bases, 1);
        assert_eq!(host.stats().bytes, engine_bytes(a.model.config()));
    }

    #[test]
    fn past_the_budget_unlent_entries_go_and_lent_ones_refuse_a_load() {
        let tmp = tempfile::tempdir().unwrap();
        let one = tiny_engine(&tmp.path().join("a"));
        let bytes = engine_bytes(one.model.config());
        // Room for one base model.
        let host = EngineHost::new(Device::Cpu, bytes + bytes / 2);
        let a = host.insert_base("a", one).unwrap();
        let two = tiny_engine(&tmp.path().join("b"));
        // "a" is lent: "b" does not fit beside it.
        let refused = host.insert_base("b", two).unwrap_err();
        assert!(
            matches!(refused, ModelError::MemoryBudget { .. }),
            "{refused}"
        );
        drop(a);
        // Returned: "a" is dropped to make room.
        let two = tiny_engine(&tmp.path().join("b"));
        host.insert_base("b", two).unwrap();
        let stats = host.stats();
        assert_eq!((stats.bases, stats.bytes), (1, bytes));
        // A lone model always loads, whatever the budget.
        let tiny_host = EngineHost::new(Device::Cpu, 1);
        tiny_host
            .insert_base("c", tiny_engine(&tmp.path().join("c")))
            .unwrap();
    }

    #[test]
    fn every_training_client_of_a_base_shares_one_packed_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        tiny::write_tiny_model(&dir, Architecture::Llama, 3).unwrap();
        let host = EngineHost::new(Device::Cpu, u64::MAX);
        let base = host.base(dir.to_str().unwrap()).unwrap();
        let first = host.training_model(&base.share()).unwrap();
        let second = host.training_model(&base.share()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let expected = if base.model.will_pack_for_training() {
            2 * engine_bytes(base.model.config())
        } else {
            0
        };
        assert_eq!(
            host.stats().bytes,
            engine_bytes(base.model.config()) + expected
        );
    }

    #[test]
    fn a_load_that_cannot_fit_is_refused_before_its_weights_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        tiny::write_tiny_model(&a, Architecture::Llama, 3).unwrap();
        tiny::write_tiny_model(&b, Architecture::Llama, 4).unwrap();
        let bytes = engine_bytes(&ModelConfig::tiny(Architecture::Llama));
        assert_eq!(expected_bytes(b.to_str().unwrap()), Some(bytes));
        let host = EngineHost::new(Device::Cpu, bytes + bytes / 2);
        let _lent = host.base(a.to_str().unwrap()).unwrap();
        // Unreadable weights: only a refusal before reading them passes this.
        std::fs::write(b.join("model.safetensors"), b"not weights").unwrap();
        let refused = host.base(b.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(refused, ModelError::MemoryBudget { .. }),
            "{refused}"
        );
        assert_eq!(host.stats().loads, 1);
    }

    #[test]
    fn batches_keep_to_the_byte_budget_sorted_by_length() {
        let config = ModelConfig {
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            num_layers: 30,
            ..ModelConfig::tiny(Architecture::Llama)
        };
        // Twelve 3,000-token prompts: all at once would need gigabytes of attention scores.
        let long = RequestShape {
            prompt: 3000,
            n: 1,
            max_tokens: 16,
        };
        let shapes = vec![long; 12];
        assert!(batch_bytes(&config, &shapes) > 4 << 30);
        let batches = plan_batches(&config, &shapes, DEFAULT_BATCH_BYTES);
        assert!(batches.len() > 1);
        for batch in &batches {
            let sub: Vec<RequestShape> = batch.iter().map(|&i| shapes[i]).collect();
            assert!(batch.len() == 1 || batch_bytes(&config, &sub) <= DEFAULT_BATCH_BYTES);
        }
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        // Short prompts share one run; mixed lengths are ordered shortest first.
        let short = RequestShape {
            prompt: 20,
            n: 8,
            max_tokens: 64,
        };
        let mixed = vec![long, short, short];
        let batches = plan_batches(&config, &mixed, DEFAULT_BATCH_BYTES);
        assert_eq!(batches[0], vec![1, 2]);
    }
}
