//! Compiled modules by the SHA-256 of their bytes, within a size budget (their WebAssembly
//! size); the least recently used go first.

use std::collections::HashMap;
use std::sync::Mutex;

use dimstore_proto::ModuleHash;

/// A cache of compiled modules of type `M` (cheap to clone: a handle).
#[derive(Debug)]
pub struct ModuleCache<M> {
    budget: u64,
    inner: Mutex<Inner<M>>,
}

#[derive(Debug)]
struct Inner<M> {
    entries: HashMap<ModuleHash, Entry<M>>,
    bytes: u64,
    /// Use clock: larger is more recent.
    clock: u64,
}

#[derive(Debug)]
struct Entry<M> {
    module: M,
    size: u64,
    used: u64,
}

impl<M: Clone> ModuleCache<M> {
    /// An empty cache holding at most `budget` bytes of modules.
    pub fn new(budget: u64) -> Self {
        ModuleCache {
            budget,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<M>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The module cached under `hash`, marked as just used.
    pub fn get(&self, hash: &ModuleHash) -> Option<M> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.entries.get_mut(hash).map(|e| {
            e.used = now;
            e.module.clone()
        })
    }

    /// Caches `module` (of `size` WebAssembly bytes) under `hash`, dropping the least
    /// recently used until it fits. A module larger than the whole budget is not kept.
    pub fn insert(&self, hash: ModuleHash, module: M, size: u64) {
        if size > self.budget {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&hash) {
            inner.bytes -= old.size;
        }
        while inner.bytes + size > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.size;
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += size;
        inner.entries.insert(hash, Entry { module, size, used });
    }

    /// Modules cached and their total size.
    pub fn size(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.entries.len() as u64, inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_go_first_within_the_budget() {
        let cache = ModuleCache::new(100);
        cache.insert([1; 32], "a", 40);
        cache.insert([2; 32], "b", 40);
        assert_eq!(cache.get(&[1; 32]), Some("a"));
        cache.insert([3; 32], "c", 40);
        assert_eq!(cache.get(&[2; 32]), None, "b was least recently used");
        assert_eq!(cache.get(&[1; 32]), Some("a"));
        assert_eq!(cache.get(&[3; 32]), Some("c"));
        assert_eq!(cache.size(), (2, 80));
    }

    #[test]
    fn a_module_over_the_budget_is_not_kept() {
        let cache = ModuleCache::new(10);
        cache.insert([1; 32], "big", 11);
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.size(), (0, 0));
    }
}
