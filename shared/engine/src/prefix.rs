//! Small LRU of frozen prompt KV caches keyed by their token ids.
//!
//! The tools system prompt is long and identical across requests, and GRPO resubmits the
//! same prompts. A new prompt reuses the entry sharing its longest common token prefix
//! (causal attention makes the KV of a common prefix identical), as long as that prefix
//! is at least `min_tokens` long; only the rest is prefilled. Entries are dropped on
//! adapter / model swaps (their KV was computed with the old weights).

use fc_model::batch::KvPrefix;

#[derive(Debug)]
struct Entry {
    ids: Vec<u32>,
    kv: KvPrefix,
    last_used: u64,
}

#[derive(Debug)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    capacity: usize,
    min_tokens: usize,
    max_segments: usize,
    clock: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(capacity: usize, min_tokens: usize, max_segments: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            capacity,
            min_tokens: min_tokens.max(1),
            max_segments: max_segments.max(1),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest reusable prefix of `prompt`, leaving at least one token to prefill
    /// (its logits start the generation).
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<KvPrefix> {
        if self.capacity == 0 || prompt.len() < 2 {
            return None;
        }
        let limit = prompt.len() - 1;
        let (idx, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.ids, prompt).min(limit).min(e.kv.len())))
            .max_by_key(|&(i, l)| (l, std::cmp::Reverse(i)))?;
        if len < self.min_tokens {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[idx];
        e.last_used = self.clock;
        let kv = e.kv.truncated(len);
        // Chains grow by one segment per reuse; cap them so attention stays a few matmuls.
        (kv.num_segments() < self.max_segments).then_some(kv)
    }

    /// Remembers `kv` (covering exactly `ids`), evicting the least recently used entry.
    pub fn insert(&mut self, ids: Vec<u32>, kv: KvPrefix) {
        if self.capacity == 0 || ids.len() < self.min_tokens || kv.len() != ids.len() {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.ids == ids) {
            e.kv = kv;
            e.last_used = self.clock;
            return;
        }
        // An entry that is a strict prefix of the new one adds nothing.
        self.entries
            .retain(|e| !(e.ids.len() < ids.len() && ids.starts_with(&e.ids)));
        if self.entries.len() >= self.capacity {
            self.evict_one();
        }
        self.entries.push(Entry {
            ids,
            kv,
            last_used: self.clock,
        });
    }

    /// Drops the least recently used entry; false when empty.
    pub fn evict_one(&mut self) -> bool {
        let Some((i, _)) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
        else {
            return false;
        };
        self.entries.swap_remove(i);
        true
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
