//! Where the next page of an unfiltered list starts, remembered in the process, so an
//! IdP that walks a tenant page after page (`startIndex=1, 101, 201, ...`) gets each
//! page by a seek along the (tenant, created, id) index instead of skipping every
//! earlier user.
//!
//! After serving the page that ends at position `p`, a store remembers, for
//! (tenant, `p + 1`), the (created, id) key of the page's last user and the tenant's
//! `shifts` counter (see the `user_counts` migrations) read in the same snapshot. A
//! later request for `startIndex = p + 1` starts after that key only if `shifts` is
//! still the same: no user left the live set and none joined it anywhere but at its end,
//! so every user before the key is still at its position. Any other change (a delete on
//! another replica included) changes the counter in the database, and the store falls
//! back to counting off `p` users.
//!
//! The memory is bounded: two generations of at most [`GENERATION`] entries each; when
//! the young one is full it becomes the old one and the old one is dropped. A hit in the
//! old generation moves the entry to the young one, so entries in use stay.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries per generation: at most twice this many are kept.
pub const GENERATION: usize = 2048;

type Slot = (String, u64);

/// The start keys of next pages, per (tenant, startIndex).
#[derive(Debug)]
pub struct PageCursors<K> {
    inner: Mutex<Generations<K>>,
    generation: usize,
}

#[derive(Debug)]
struct Generations<K> {
    young: HashMap<Slot, (K, i64)>,
    old: HashMap<Slot, (K, i64)>,
}

impl<K: Clone> Default for PageCursors<K> {
    fn default() -> Self {
        Self::with_generation(GENERATION)
    }
}

impl<K: Clone> PageCursors<K> {
    /// Cursors kept in generations of `generation` entries (at least 1).
    pub fn with_generation(generation: usize) -> Self {
        Self {
            inner: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
            generation: generation.max(1),
        }
    }

    /// The key after which the page at `start` begins, if one was remembered while the
    /// tenant's shift counter had the value it has now.
    pub fn get(&self, tenant: &str, start: u64, shifts: i64) -> Option<K> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (tenant.to_string(), start);
        if let Some((key, at)) = g.young.get(&slot) {
            return (*at == shifts).then(|| key.clone());
        }
        let (key, at) = g.old.remove(&slot)?;
        if at != shifts {
            return None;
        }
        self.insert(&mut g, slot, key.clone(), at);
        Some(key)
    }

    /// Remember that the page at `start` begins after `key`, as of `shifts`.
    pub fn put(&self, tenant: &str, start: u64, key: K, shifts: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.insert(&mut g, (tenant.to_string(), start), key, shifts);
    }

    fn insert(&self, g: &mut Generations<K>, slot: Slot, key: K, shifts: i64) {
        if g.young.len() >= self.generation && !g.young.contains_key(&slot) {
            g.old = std::mem::take(&mut g.young);
        }
        g.old.remove(&slot);
        g.young.insert(slot, (key, shifts));
    }

    /// Entries held (for tests of the bound).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.young.len() + g.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_only_while_the_shift_counter_is_unchanged() {
        let c = PageCursors::<u32>::default();
        c.put("t", 101, 7, 3);
        assert_eq!(c.get("t", 101, 3), Some(7));
        assert_eq!(c.get("t", 101, 4), None);
        assert_eq!(c.get("t", 201, 3), None);
        assert_eq!(c.get("other", 101, 3), None);
    }

    #[test]
    fn memory_is_bounded_and_used_entries_stay() {
        let c = PageCursors::<u64>::with_generation(10);
        c.put("t", 0, 0, 0);
        for i in 1..1000u64 {
            c.put("t", i, i, 0);
            // Read in every round: it stays while the rest cycle through.
            assert_eq!(c.get("t", 0, 0), Some(0), "round {i}");
            assert!(c.len() <= 20, "{}", c.len());
        }
        assert_eq!(c.get("t", 1, 0), None, "an old entry was dropped");
        assert_eq!(c.get("t", 999, 0), Some(999));
    }
}
