//! The scheduler: one OS thread owns the model and runs continuous batching.
//!
//! candle is synchronous, so the loop runs on a dedicated thread and talks to async
//! callers through channels (never blocking a tokio worker). Each iteration:
//!
//! 1. applies commands in arrival order (new requests, adapter / model swaps, cache
//!    clears), so a swap lands between two decode steps and running sequences carry on;
//! 2. drops sequences whose receiver is gone (cancellation frees their KV at once);
//! 3. admits waiting requests FIFO while the batch has room and the KV budget allows the
//!    request's worst case (prompt + `n * max_tokens` positions);
//! 4. runs one ragged forward ([`forward_ragged`]) over every active sequence (one token
//!    each) plus the next chunks of pending prompts (chunked prefill, reusing a cached
//!    prompt prefix when one matches), then samples each sequence's next token with its
//!    own seeded RNG. A prompt is prefilled once per request; when complete its KV is
//!    frozen and shared by the request's `n` samples without copying.
//!
//! Memory accounting is exact (bytes of live KV buffers via [`KvMemory`]); admission
//! reserves the worst-case growth of running sequences so nothing runs out of budget
//! mid-generation (no preemption needed).

use crate::error::EngineError;
use crate::params::{
    Allowed, Event, FinishReason, Output, Request, SamplingParams, StopMatch, TokenMask, Usage,
};
use crate::prefix::PrefixCache;
use crate::sampler::{pick, Pick};
use crate::stop::StopText;
use candle_core::{DType, Tensor};
use fc_chat::{IncrementalDecoder, Tokenizer};
use fc_model::batch::{forward_ragged, KvMemory, RaggedInput, SeqKv};
use fc_model::{LoraAdapter, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Engine settings (deserializable from a service's config file; missing fields default).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Most sequences decoded together (one forward per step).
    pub max_batch: usize,
    /// KV budget in bytes (allocated + reserved growth of running sequences).
    pub kv_cache_bytes: usize,
    /// Most requests waiting for admission; `submit` fails beyond it.
    pub max_waiting: usize,
    /// Prompt prefix cache entries; 0 disables cross-request prefix reuse (the `n`
    /// samples of one request always share their prefill).
    pub prefix_cache_entries: usize,
    /// Shortest prefix worth reusing.
    pub prefix_min_tokens: usize,
    /// Prompt tokens prefilled per step (chunked prefill): pending prompts are fed in
    /// chunks inside the same forward as the decode tokens, bounding how long a long
    /// prompt stalls running streams.
    pub max_prefill_tokens_per_step: usize,
    /// Seed of the generator that draws seeds for requests without one.
    pub seed: u64,
    /// Type the KV cache stores. `None` keeps the model's dtype, so log-probs match a full
    /// forward within float rounding. `Some(KvDtype::F16)` (llama.cpp's default cache
    /// type) halves the cache and the bytes each decode step reads from it; keys and
    /// values then carry f16 rounding (~5e-4 relative).
    pub kv_cache_dtype: Option<KvDtype>,
}

/// A value type for the KV cache ([`EngineConfig::kv_cache_dtype`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    fn dtype(self) -> DType {
        match self {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::Bf16 => DType::BF16,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 32,
            kv_cache_bytes: 4 << 30,
            max_waiting: 1024,
            prefix_cache_entries: 8,
            prefix_min_tokens: 32,
            max_prefill_tokens_per_step: 512,
            seed: 0x5eed,
            kv_cache_dtype: None,
        }
    }
}

/// Counters shared with handles (cheap to read from any thread).
#[derive(Debug, Default)]
struct StatsInner {
    active: AtomicUsize,
    waiting: AtomicUsize,
    prefill_calls: AtomicU64,
    prefill_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    decode_steps: AtomicU64,
    decode_tokens: AtomicU64,
    version: AtomicU64,
}

/// Snapshot of engine counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes of KV buffers alive (running sequences + prefix cache).
    pub kv_bytes: usize,
    pub active_sequences: usize,
    pub waiting_requests: usize,
    /// Prompts prefilled (one per admitted request, however many samples or chunks).
    pub prefill_calls: u64,
    /// Prompt tokens actually computed by prefills.
    pub prefill_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// Batched decode forwards run.
    pub decode_steps: u64,
    /// Sequence-steps decoded (sum of batch sizes).
    pub decode_tokens: u64,
    /// Current adapter/model version (0 at start, +1 per swap).
    pub version: u64,
}

enum Cmd {
    Submit {
        req: Request,
        tx: UnboundedSender<Event>,
    },
    SwapAdapter {
        adapter: Option<LoraAdapter>,
        version: u64,
    },
    SwapModel {
        model: Box<Model>,
        adapter: Option<LoraAdapter>,
        version: u64,
    },
    ClearPrefixCache,
    Shutdown,
}

/// The KV-relevant shape of a model; swaps must keep it so running caches stay valid.
#[derive(Debug, Clone, PartialEq)]
struct KvShape {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    dtype: DType,
}

/// A forward's logits `[S, vocab]` as a contiguous CPU f32 tensor (a CPU forward's own
/// output as it is), whose rows [`Worker::step`] reads in place.
fn host_logits(l: Tensor) -> candle_core::Result<Tensor> {
    let l = l.to_dtype(DType::F32)?;
    if l.device().is_cpu() {
        l.contiguous()
    } else {
        l.to_device(&candle_core::Device::Cpu)?.contiguous()
    }
}

fn kv_shape(m: &Model) -> KvShape {
    KvShape {
        layers: m.layers.len(),
        kv_heads: m.config.num_key_value_heads,
        head_dim: m.config.head_dim,
        vocab: m.config.vocab_size,
        dtype: m.dtype(),
    }
}

struct HandleInner {
    tx: std_mpsc::Sender<Cmd>,
    stats: Arc<StatsInner>,
    mem: KvMemory,
    next_version: AtomicU64,
    shape: KvShape,
    max_batch: usize,
    max_waiting: usize,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
    }
}

/// Cloneable handle to a running engine. The engine stops when the last handle drops.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Entry point: see [`Engine::start`].
pub struct Engine;

impl Engine {
    /// Starts the engine thread owning `model` (used with no adapter until one is swapped
    /// in) and returns a handle. A dense f32 CPU model is packed for the inference kernel
    /// first ([`Model::pack_for_inference`]).
    pub fn start(
        model: Model,
        tokenizer: Tokenizer,
        config: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        Self::start_with_adapter(model, None, tokenizer, config)
    }

    /// [`Engine::start`] with an initial (un-merged) LoRA adapter.
    pub fn start_with_adapter(
        mut model: Model,
        adapter: Option<LoraAdapter>,
        tokenizer: Tokenizer,
        config: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        if config.max_batch == 0 {
            return Err(EngineError::InvalidRequest("max_batch must be > 0".into()));
        }
        let mem = match config.kv_cache_dtype {
            None => KvMemory::new(),
            Some(d) => KvMemory::storing(d.dtype()),
        };
        model.pack_for_inference()?;
        let (tx, rx) = std_mpsc::channel();
        let stats = Arc::new(StatsInner::default());
        let shape = kv_shape(&model);
        let mut eos: Vec<u32> = tokenizer.eos_token_ids().to_vec();
        for &e in &model.config.eos_token_ids {
            if !eos.contains(&e) {
                eos.push(e);
            }
        }
        // Ids past the tokenizer's vocabulary are padding rows of the embedding: never emit.
        let vocab_limit = match tokenizer.vocab_size() {
            0 => model.config.vocab_size,
            n => n.min(model.config.vocab_size),
        };
        let inner = HandleInner {
            tx,
            stats: stats.clone(),
            mem: mem.clone(),
            next_version: AtomicU64::new(0),
            shape,
            max_batch: config.max_batch,
            max_waiting: config.max_waiting,
        };
        let bpp = mem.bytes_per_position(&model);
        let prefix = PrefixCache::new(config.prefix_cache_entries, config.prefix_min_tokens, 4);
        let mut worker = Worker {
            model,
            adapter,
            tokenizer,
            eos,
            vocab_limit,
            seeder: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            stats,
            mem,
            bpp,
            prefix,
            version: 0,
            waiting: VecDeque::new(),
            live: Vec::new(),
            active: Vec::new(),
            prefilling: Vec::new(),
            next_id: 0,
        };
        std::thread::Builder::new()
            .name("fc-engine".into())
            .spawn(move || worker.run(rx))?;
        Ok(EngineHandle {
            inner: Arc::new(inner),
        })
    }
}

impl EngineHandle {
    /// Queues a request; events stream on the returned receiver. Dropping the receiver
    /// cancels the request and frees its KV cache at the next step.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, EngineError> {
        req.params.validate().map_err(EngineError::InvalidRequest)?;
        if req.prompt_ids.is_empty() {
            return Err(EngineError::InvalidRequest("empty prompt".into()));
        }
        if req.n == 0 || req.n > self.inner.max_batch {
            return Err(EngineError::InvalidRequest(format!(
                "n = {} not in 1..={}",
                req.n, self.inner.max_batch
            )));
        }
        let vocab = self.inner.shape.vocab;
        if let Some(bad) = req.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} >= vocab size {vocab}"
            )));
        }
        let waiting = self.inner.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.inner.max_waiting {
            self.inner.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull(waiting));
        }
        let (tx, rx) = unbounded_channel();
        if self.inner.tx.send(Cmd::Submit { req, tx }).is_err() {
            self.inner.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Closed);
        }
        Ok(rx)
    }

    /// Submits and awaits all `n` samples (ordered by `seq_index`). Dropping the future
    /// cancels the request.
    pub async fn generate(&self, req: Request) -> Result<Vec<Output>, EngineError> {
        let n = req.n;
        let mut rx = self.submit(req)?;
        let mut outs = Vec::with_capacity(n);
        while let Some(ev) = rx.recv().await {
            if let Some(done) = collect(ev, &mut outs, n)? {
                return Ok(done);
            }
        }
        Err(EngineError::Closed)
    }

    /// Blocking [`EngineHandle::generate`] for synchronous callers (not from inside a
    /// tokio runtime).
    pub fn generate_blocking(&self, req: Request) -> Result<Vec<Output>, EngineError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(EngineError::BlockingInAsync);
        }
        let n = req.n;
        let mut rx = self.submit(req)?;
        let mut outs = Vec::with_capacity(n);
        while let Some(ev) = rx.blocking_recv() {
            if let Some(done) = collect(ev, &mut outs, n)? {
                return Ok(done);
            }
        }
        Err(EngineError::Closed)
    }

    /// Synchronous batch API (evaluator): one greedy/sampled completion per prompt, all
    /// submitted at once so they decode together; outputs in prompt order. With a seed,
    /// prompt `i` uses `seed + i` so equal prompts still get independent samples.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<Vec<Output>, EngineError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(EngineError::BlockingInAsync);
        }
        let mut rxs = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let mut params = params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            rxs.push(self.submit(Request::new(p.clone(), params))?);
        }
        let mut out = Vec::with_capacity(prompts.len());
        for mut rx in rxs {
            let mut outs = Vec::with_capacity(1);
            let mut done = None;
            while let Some(ev) = rx.blocking_recv() {
                if let Some(d) = collect(ev, &mut outs, 1)? {
                    done = Some(d);
                    break;
                }
            }
            let mut d = done.ok_or(EngineError::Closed)?;
            out.push(d.pop().ok_or(EngineError::Closed)?);
        }
        Ok(out)
    }

    /// Replaces the LoRA adapter (`None`: base model) between two decode steps; running
    /// sequences continue with the new weights (their earlier KV stays as computed).
    /// Returns the new version number, reported in token events from then on.
    pub fn swap_adapter(&self, adapter: Option<LoraAdapter>) -> Result<u64, EngineError> {
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner
            .tx
            .send(Cmd::SwapAdapter { adapter, version })
            .map_err(|_| EngineError::Closed)?;
        Ok(version)
    }

    /// Replaces the model (e.g. a merged checkpoint) between decode steps. It must have
    /// the same KV layout (layers, kv heads, head dim, vocab, dtype) so running sequences
    /// survive. The model is packed for inference here, on the caller's thread, so the
    /// running sequences do not wait for it.
    pub fn swap_model(
        &self,
        mut model: Model,
        adapter: Option<LoraAdapter>,
    ) -> Result<u64, EngineError> {
        let shape = kv_shape(&model);
        if shape != self.inner.shape {
            return Err(EngineError::IncompatibleModel(format!(
                "{shape:?} vs running {:?}",
                self.inner.shape
            )));
        }
        model.pack_for_inference()?;
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner
            .tx
            .send(Cmd::SwapModel {
                model: Box::new(model),
                adapter,
                version,
            })
            .map_err(|_| EngineError::Closed)?;
        Ok(version)
    }

    /// Drops all cached prompt prefixes (their memory is freed once no sequence uses them).
    pub fn clear_prefix_cache(&self) -> Result<(), EngineError> {
        self.inner
            .tx
            .send(Cmd::ClearPrefixCache)
            .map_err(|_| EngineError::Closed)
    }

    /// Stops the engine: running and waiting requests finish as cancelled.
    pub fn shutdown(&self) {
        let _ = self.inner.tx.send(Cmd::Shutdown);
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.stats;
        EngineStats {
            kv_bytes: self.inner.mem.bytes(),
            active_sequences: s.active.load(Ordering::Relaxed),
            waiting_requests: s.waiting.load(Ordering::Relaxed),
            prefill_calls: s.prefill_calls.load(Ordering::Relaxed),
            prefill_tokens: s.prefill_tokens.load(Ordering::Relaxed),
            cached_prompt_tokens: s.cached_prompt_tokens.load(Ordering::Relaxed),
            decode_steps: s.decode_steps.load(Ordering::Relaxed),
            decode_tokens: s.decode_tokens.load(Ordering::Relaxed),
            version: s.version.load(Ordering::Relaxed),
        }
    }
}

/// Accumulates `Finished` events; `Some` once all `n` arrived.
fn collect(
    ev: Event,
    outs: &mut Vec<Output>,
    n: usize,
) -> Result<Option<Vec<Output>>, EngineError> {
    match ev {
        Event::Token { .. } => Ok(None),
        Event::Error { message } => Err(EngineError::Failed(message)),
        Event::Finished { output, .. } => {
            outs.push(output);
            if outs.len() == n {
                let mut done = std::mem::take(outs);
                done.sort_by_key(|o| o.seq_index);
                Ok(Some(done))
            } else {
                Ok(None)
            }
        }
    }
}

/// A request that has been admitted (some of its samples may still run).
struct Live {
    id: u64,
    tx: UnboundedSender<Event>,
    params: SamplingParams,
    stop_ids: Vec<u32>,
    mask: Option<Arc<dyn TokenMask>>,
    prompt_len: usize,
    cached: usize,
    max_tokens: usize,
    running: usize,
}

/// Samples the next token of `s` from `logits` under its request's parameters and
/// token mask; `None` when the request is gone or the mask allowed no token.
fn pick_for(live: &[Live], vocab_limit: usize, s: &mut Seq, logits: &[f32]) -> Option<Pick> {
    let live = live.iter().find(|l| l.id == s.live)?;
    let allowed = match &live.mask {
        Some(m) => m.allowed(s.seq_index, &s.ids),
        None => Allowed::All,
    };
    pick(logits, &live.params, &allowed, vocab_limit, &mut s.rng)
}

/// One sample being decoded.
struct Seq {
    live: u64,
    seq_index: usize,
    cache: SeqKv,
    /// Token to feed at the next decode step.
    last: u32,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    sampling_logprobs: Vec<f32>,
    rng: ChaCha8Rng,
    detok: IncrementalDecoder,
    stop: StopText,
    versions: (u64, u64),
}

/// A request whose prompt is being prefilled (possibly over several steps).
struct Prefill {
    live: u64,
    cache: SeqKv,
    prompt: Vec<u32>,
    /// Prompt tokens reused from the prefix cache.
    cached: usize,
    n: usize,
    seed: u64,
    /// Weights version when the prefill started (a swap midway keeps the result out of
    /// the prefix cache).
    version: u64,
}

struct Waiting {
    req: Request,
    tx: UnboundedSender<Event>,
}

struct Worker {
    model: Model,
    adapter: Option<LoraAdapter>,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    vocab_limit: usize,
    seeder: ChaCha8Rng,
    config: EngineConfig,
    stats: Arc<StatsInner>,
    mem: KvMemory,
    bpp: usize,
    prefix: PrefixCache,
    version: u64,
    waiting: VecDeque<Waiting>,
    live: Vec<Live>,
    active: Vec<Seq>,
    prefilling: Vec<Prefill>,
    next_id: u64,
}

/// Outcome of trying to admit the head of the queue.
enum Admit {
    Done,
    Wait,
}

impl Worker {
    fn run(&mut self, rx: std_mpsc::Receiver<Cmd>) {
        loop {
            // Idle: block for the next command instead of spinning.
            if self.active.is_empty() && self.prefilling.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.apply(cmd) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.apply(cmd) {
                            stop = true;
                            break;
                        }
                    }
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            self.drop_cancelled();
            self.admit();
            if !self.active.is_empty() || !self.prefilling.is_empty() {
                self.step();
            }
            self.publish();
        }
        self.cancel_all();
        self.publish();
        tracing::debug!("fc-engine thread stopped");
    }

    /// Applies one command; false means shut down.
    fn apply(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Submit { req, tx } => self.waiting.push_back(Waiting { req, tx }),
            Cmd::SwapAdapter { adapter, version } => {
                self.adapter = adapter;
                self.swapped(version);
            }
            Cmd::SwapModel {
                model,
                adapter,
                version,
            } => {
                self.model = *model;
                self.adapter = adapter;
                self.swapped(version);
            }
            Cmd::ClearPrefixCache => self.prefix.clear(),
            Cmd::Shutdown => return false,
        }
        true
    }

    fn swapped(&mut self, version: u64) {
        // Cached prefixes were computed with the old weights.
        self.prefix.clear();
        self.version = version;
        self.stats.version.store(version, Ordering::Relaxed);
        tracing::info!(version, "engine weights swapped");
    }

    fn publish(&self) {
        self.stats
            .active
            .store(self.active.len(), Ordering::Relaxed);
        metrics::gauge!("fc_engine_active_sequences").set(self.active.len() as f64);
        metrics::gauge!("fc_engine_waiting_requests").set(self.waiting.len() as f64);
        metrics::gauge!("fc_engine_kv_bytes").set(self.mem.bytes() as f64);
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.tx.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.stats.waiting.fetch_sub(gone, Ordering::Relaxed);
        }
        let closed: Vec<u64> = self
            .live
            .iter()
            .filter(|l| l.tx.is_closed())
            .map(|l| l.id)
            .collect();
        if !closed.is_empty() {
            self.active.retain(|s| !closed.contains(&s.live));
            self.prefilling.retain(|p| !closed.contains(&p.live));
            self.live.retain(|l| !closed.contains(&l.id));
            metrics::counter!("fc_engine_cancelled_requests_total").increment(closed.len() as u64);
        }
    }

    fn cancel_all(&mut self) {
        let seqs = std::mem::take(&mut self.active);
        for s in seqs {
            self.finish(s, FinishReason::Cancelled, None, None);
        }
        let prefills = std::mem::take(&mut self.prefilling);
        for p in prefills {
            self.fail_prefill(p, FinishReason::Cancelled, None);
        }
        for w in self.waiting.drain(..) {
            let _ = w.tx.send(Event::Error {
                message: "engine shut down".into(),
            });
        }
        self.stats.waiting.store(0, Ordering::Relaxed);
        self.prefix.clear();
    }

    fn live_max_tokens(&self, id: u64) -> usize {
        self.live
            .iter()
            .find(|l| l.id == id)
            .map_or(0, |l| l.max_tokens)
    }

    /// Worst-case future KV growth of admitted work (running samples up to `max_tokens`,
    /// prefills up to their prompt plus their samples), in bytes.
    fn reserved_growth(&self) -> usize {
        let seqs: usize = self
            .active
            .iter()
            .map(|s| (self.live_max_tokens(s.live) * self.bpp).saturating_sub(s.cache.own_bytes()))
            .sum();
        let prefills: usize = self
            .prefilling
            .iter()
            .map(|p| {
                let prompt =
                    ((p.prompt.len() - p.cached) * self.bpp).saturating_sub(p.cache.own_bytes());
                prompt + p.n * self.live_max_tokens(p.live) * self.bpp
            })
            .sum();
        seqs + prefills
    }

    fn batch_slots(&self) -> usize {
        self.active.len() + self.prefilling.iter().map(|p| p.n).sum::<usize>()
    }

    fn admit(&mut self) {
        while let Some(w) = self.waiting.front() {
            if self.batch_slots() + w.req.n > self.config.max_batch {
                break;
            }
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            match self.try_admit(w) {
                Admit::Done => {
                    self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                Admit::Wait => break,
            }
        }
    }

    fn reject(&self, w: &Waiting, message: String) -> Admit {
        tracing::debug!(%message, "request rejected");
        let _ = w.tx.send(Event::Error { message });
        Admit::Done
    }

    /// Reserves KV for one request and queues its prefill, or puts it back when it must
    /// wait for running work to finish.
    fn try_admit(&mut self, w: Waiting) -> Admit {
        let plen = w.req.prompt_ids.len();
        let n = w.req.n;
        let max_pos = self.model.config.max_position_embeddings;
        if plen >= max_pos {
            return self.reject(
                &w,
                format!("prompt of {plen} tokens exceeds context {max_pos}"),
            );
        }
        let max_tokens = w.req.params.max_tokens.min(max_pos - plen);
        let hit = self.prefix.lookup(&w.req.prompt_ids);
        let cached = hit.as_ref().map_or(0, |h| h.len());
        let need = ((plen - cached) + n * max_tokens).saturating_mul(self.bpp);
        let cap = self.config.kv_cache_bytes;
        if need > cap {
            return self.reject(
                &w,
                format!("needs {need} bytes of KV cache, budget is {cap}"),
            );
        }
        let committed = |s: &Self| s.mem.bytes() + s.reserved_growth();
        while committed(self) + need > cap && self.prefix.evict_one() {}
        if committed(self) + need > cap {
            if !self.active.is_empty() || !self.prefilling.is_empty() {
                // Admitted work will finish and free its share.
                self.waiting.push_front(w);
                return Admit::Wait;
            }
            if cached > 0 {
                // Only the matched prefix is still held: retry without it (the prefix
                // cache is empty now, so this recursion happens at most once).
                drop(hit);
                return self.try_admit(w);
            }
            return self.reject(&w, format!("KV budget {cap} exhausted"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut cache = match hit {
            Some(p) => SeqKv::with_prefix(&self.model, &self.mem, p),
            None => SeqKv::new(&self.model, &self.mem),
        };
        cache.set_own_limit(plen - cached);
        let mut stop_ids = w.req.params.stop_token_ids.clone();
        if w.req.params.stop_at_eos {
            stop_ids.extend(self.eos.iter().copied());
        }
        let seed = match w.req.params.seed {
            Some(s) => s,
            None => rand::Rng::random(&mut self.seeder),
        };
        let Waiting { req, tx } = w;
        self.prefilling.push(Prefill {
            live: id,
            cache,
            prompt: req.prompt_ids,
            cached,
            n,
            seed,
            version: self.version,
        });
        self.live.push(Live {
            id,
            tx,
            stop_ids,
            mask: req.mask,
            prompt_len: plen,
            cached,
            max_tokens,
            running: n,
            params: req.params,
        });
        Admit::Done
    }

    /// One forward over every running sequence (one token each) plus the next chunks of
    /// pending prefills (up to `max_prefill_tokens_per_step` prompt tokens), then sampling.
    fn step(&mut self) {
        let mut budget = self.config.max_prefill_tokens_per_step.max(1);
        let mut chunks: Vec<(usize, usize)> = Vec::new(); // (prefill index, chunk length)
        for (i, p) in self.prefilling.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let done = p.cache.len();
            let take = (p.prompt.len() - done).min(budget);
            budget -= take;
            chunks.push((i, take));
        }
        let n_dec = self.active.len();
        let mut inputs: Vec<RaggedInput> = self
            .active
            .iter_mut()
            .map(|s| RaggedInput {
                tokens: std::slice::from_ref(&s.last),
                cache: &mut s.cache,
            })
            .collect();
        let mut ci = chunks.iter().peekable();
        for (i, p) in self.prefilling.iter_mut().enumerate() {
            let Some(&&(j, take)) = ci.peek() else {
                break;
            };
            if i != j {
                continue;
            }
            ci.next();
            let done = p.cache.len();
            inputs.push(RaggedInput {
                tokens: &p.prompt[done..done + take],
                cache: &mut p.cache,
            });
        }
        let started = std::time::Instant::now();
        let logits = forward_ragged(&self.model, self.adapter.as_ref(), &mut inputs)
            .and_then(|l| Ok(host_logits(l)?));
        let phase = match (n_dec > 0, chunks.is_empty()) {
            (true, true) => "decode",
            (false, _) => "prefill",
            (true, false) => "mixed",
        };
        metrics::histogram!("fc_engine_forward_duration_seconds", "phase" => phase)
            .record(started.elapsed().as_secs_f64());
        drop(inputs);
        let prefill_tokens: usize = chunks.iter().map(|c| c.1).sum();
        if n_dec > 0 {
            self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
            self.stats
                .decode_tokens
                .fetch_add(n_dec as u64, Ordering::Relaxed);
            metrics::histogram!("fc_engine_decode_batch_size").record(n_dec as f64);
        }
        self.stats
            .prefill_tokens
            .fetch_add(prefill_tokens as u64, Ordering::Relaxed);
        metrics::counter!("fc_engine_prefill_tokens_total").increment(prefill_tokens as u64);
        let mut seqs = std::mem::take(&mut self.active);
        let logits = match logits {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, decode = n_dec, prefill_tokens, "forward failed");
                let msg = format!("forward failed: {e}");
                for s in seqs {
                    self.finish(s, FinishReason::Error, None, Some(msg.clone()));
                }
                let touched: Vec<usize> = chunks.iter().map(|c| c.0).collect();
                let mut kept = Vec::new();
                for (i, p) in std::mem::take(&mut self.prefilling).into_iter().enumerate() {
                    if touched.contains(&i) {
                        self.fail_prefill(p, FinishReason::Error, Some(msg.clone()));
                    } else {
                        kept.push(p);
                    }
                }
                self.prefilling = kept;
                return;
            }
        };
        // The rows are read in place: copying a decode batch's 8 x 151936 logits out cost
        // ~0.7 ms of a ~40 ms step (a 2-core Xeon VM, the 0.6B model in Q8_0).
        let (storage, layout) = logits.storage_and_layout();
        let rows: Vec<&[f32]> = match (&*storage, layout.contiguous_offsets(), logits.dims2()) {
            (candle_core::Storage::Cpu(c), Some((a, b)), Ok((_, vocab))) if vocab > 0 => c
                .as_slice::<f32>()
                .ok()
                .and_then(|v| v.get(a..b))
                .map(|v| v.chunks_exact(vocab).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let n = seqs.len().min(rows.len());
        seqs.truncate(n);
        let picks = self.pick_batch(&mut seqs, &rows[..n]);
        let mut rows = rows.into_iter().skip(n);
        for (s, picked) in seqs.into_iter().zip(picks) {
            if let Some(s) = self.step_seq(s, picked) {
                self.active.push(s);
            }
        }
        // Prefills whose prompt is complete start their samples from the last row.
        let mut finished: Vec<(usize, &[f32])> = Vec::new();
        for &(i, _) in &chunks {
            let Some(row) = rows.next() else {
                break;
            };
            if self.prefilling[i].cache.len() == self.prefilling[i].prompt.len() {
                finished.push((i, row));
            }
        }
        for (i, row) in finished.into_iter().rev() {
            let p = self.prefilling.remove(i);
            self.start_samples(p, row);
        }
    }

    /// Freezes a completed prompt (shared by the request's samples and, when the weights
    /// did not change meanwhile, remembered in the prefix cache) and samples each
    /// sample's first token.
    fn start_samples(&mut self, mut p: Prefill, logits: &[f32]) {
        self.stats.prefill_calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .cached_prompt_tokens
            .fetch_add(p.cached as u64, Ordering::Relaxed);
        metrics::counter!("fc_engine_cached_prompt_tokens_total").increment(p.cached as u64);
        let prompt_kv = p.cache.freeze();
        drop(p.cache);
        if p.version == self.version {
            self.prefix.insert(p.prompt, prompt_kv.clone());
        }
        let Some(live) = self.live.iter().find(|l| l.id == p.live) else {
            return;
        };
        let max_tokens = live.max_tokens;
        let skip_special = live.params.skip_special_tokens;
        let stops = live.params.stop.clone();
        for i in 0..p.n {
            let mut kv = SeqKv::with_prefix(&self.model, &self.mem, prompt_kv.clone());
            kv.set_own_limit(max_tokens);
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            rng.set_stream(i as u64);
            let mut seq = Seq {
                live: p.live,
                seq_index: i,
                cache: kv,
                last: 0,
                ids: Vec::new(),
                logprobs: Vec::new(),
                sampling_logprobs: Vec::new(),
                rng,
                detok: self.tokenizer.incremental_decoder(skip_special),
                stop: StopText::new(stops.clone()),
                versions: (self.version, self.version),
            };
            let picked = pick_for(&self.live, self.vocab_limit, &mut seq, logits);
            if let Some(seq) = self.step_seq(seq, picked) {
                self.active.push(seq);
            }
        }
    }

    /// Ends every sample of a request whose prefill could not complete.
    fn fail_prefill(&mut self, p: Prefill, reason: FinishReason, error: Option<String>) {
        for i in 0..p.n {
            let seq = Seq {
                live: p.live,
                seq_index: i,
                cache: SeqKv::new(&self.model, &self.mem),
                last: 0,
                ids: Vec::new(),
                logprobs: Vec::new(),
                sampling_logprobs: Vec::new(),
                rng: ChaCha8Rng::seed_from_u64(0),
                detok: self.tokenizer.incremental_decoder(true),
                stop: StopText::default(),
                versions: (self.version, self.version),
            };
            self.finish(seq, reason, None, error.clone());
        }
    }

    /// The picks of a decode batch, one per sequence and row. Sequences sample
    /// independently (each has its own RNG, and a token mask must be `Sync`), so a batch
    /// picks across the pool: each pick reads a whole vocabulary row, a few hundred
    /// microseconds that a batch of 8 otherwise spent one after another on this thread.
    fn pick_batch(&self, seqs: &mut [Seq], rows: &[&[f32]]) -> Vec<Option<Pick>> {
        use rayon::prelude::*;
        let one = |(s, row): (&mut Seq, &&[f32])| pick_for(&self.live, self.vocab_limit, s, row);
        // One sequence stays on this thread: a hop into the pool would cost more.
        if seqs.len() > 1 {
            seqs.par_iter_mut().zip(rows).map(one).collect()
        } else {
            seqs.iter_mut().zip(rows).map(one).collect()
        }
    }

    /// Streams the token `picked` for `s` (from [`pick_for`]), and returns the sequence
    /// if it keeps running.
    fn step_seq(&mut self, mut s: Seq, picked: Option<Pick>) -> Option<Seq> {
        let li = self.live.iter().position(|l| l.id == s.live)?;
        let (stop_tok, at_len) = match &picked {
            Some(p) => {
                let live = &self.live[li];
                (live.stop_ids.contains(&p.id), s.ids.len() + 1 >= live.max_tokens)
            }
            None => (false, false),
        };
        let Some(Pick {
            id,
            logprob,
            sampling_logprob,
        }) = picked
        else {
            let msg = "token mask allowed no token".to_string();
            self.finish(s, FinishReason::Error, None, Some(msg));
            return None;
        };
        s.ids.push(id);
        s.logprobs.push(logprob);
        s.sampling_logprobs.push(sampling_logprob);
        s.last = id;
        if s.ids.len() == 1 {
            s.versions.0 = self.version;
        }
        s.versions.1 = self.version;
        let mut text = String::new();
        if !stop_tok {
            match s.detok.step(id) {
                Ok(t) => text = t,
                Err(e) => tracing::warn!(error = %e, id, "detokenization failed"),
            }
            if at_len {
                match s.detok.flush() {
                    Ok(t) => text.push_str(&t),
                    Err(e) => tracing::warn!(error = %e, "detokenizer flush failed"),
                }
            }
        }
        let fed = s.stop.feed(&text, stop_tok || at_len);
        let sent = self.live[li]
            .tx
            .send(Event::Token {
                seq_index: s.seq_index,
                id,
                text_delta: fed.delta,
                logprob,
                sampling_logprob,
                version: self.version,
            })
            .is_ok();
        metrics::counter!("fc_engine_generated_tokens_total").increment(1);
        if !sent {
            // Receiver gone: drop the sequence now (its KV is freed here).
            self.finish(s, FinishReason::Cancelled, None, None);
            return None;
        }
        if let Some(m) = fed.matched {
            self.finish(s, FinishReason::Stop, Some(StopMatch::String(m)), None);
            None
        } else if stop_tok {
            self.finish(s, FinishReason::Stop, Some(StopMatch::TokenId(id)), None);
            None
        } else if at_len {
            self.finish(s, FinishReason::Length, None, None);
            None
        } else {
            Some(s)
        }
    }

    /// Ends a sample: sends its output, releases its KV, retires the request when its
    /// last sample ends.
    fn finish(
        &mut self,
        s: Seq,
        reason: FinishReason,
        stop: Option<StopMatch>,
        error: Option<String>,
    ) {
        let Some(pos) = self.live.iter().position(|l| l.id == s.live) else {
            return;
        };
        let live = &mut self.live[pos];
        let output = Output {
            seq_index: s.seq_index,
            usage: Usage {
                prompt_tokens: live.prompt_len,
                completion_tokens: s.ids.len(),
                cached_prompt_tokens: live.cached,
            },
            token_ids: s.ids,
            logprobs: s.logprobs,
            sampling_logprobs: s.sampling_logprobs,
            text: s.stop.text().to_string(),
            finish_reason: reason,
            stop,
            versions: s.versions,
            error,
        };
        let _ = live.tx.send(Event::Finished {
            seq_index: s.seq_index,
            output,
        });
        live.running = live.running.saturating_sub(1);
        if live.running == 0 {
            self.live.swap_remove(pos);
        }
    }
}
