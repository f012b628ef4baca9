//! Where a page of an unfiltered list starts, remembered in the process, so an IdP that
//! walks a tenant page after page (`startIndex=1, 101, 201, ...`), or jumps to any
//! position, gets each page by a seek along the (tenant, created, id) index instead of
//! skipping every earlier user.
//!
//! A remembered key is the (created, id) key of the user at some position `p` of the
//! tenant's live users in that order, with the tenant's `shifts` counter (see the
//! `user_counts` migrations) read in the same snapshot. A later request uses it only if
//! `shifts` is still the same: no user left the live set and none joined it anywhere
//! but at its end, so every user up to the key is still at its position. Any other
//! change (a delete on another replica included) changes the counter in the database,
//! and the key is not used.
//!
//! Two kinds of keys are kept:
//! - Page starts, per (tenant, startIndex): the key of the user just before the page
//!   (the last user of the page before it in a walk, or of the position a jump reached).
//!   Two generations of at most [`GENERATION`] entries each; when the young one is full
//!   it becomes the old one and the old one is dropped. A hit in the old generation
//!   moves the entry to the young one, so entries in use stay.
//! - Anchors, per tenant: the keys of the users at positions `every`, `2 * every`, ...
//!   (a prefix of them, read once by one scan of the index), so a jump to any position
//!   skips fewer than `every` keys after the nearest anchor. At most [`ANCHORS`] keys
//!   are held over all tenants; the tenant used longest ago goes first. One request
//!   at a time reads a tenant's anchors ([`PageCursors::reading_anchors`]): the jumps
//!   that arrive meanwhile wait for them instead of each scanning the same keys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Page starts per generation: at most twice this many are kept.
pub const GENERATION: usize = 2048;

/// Users between two anchors.
pub const ANCHOR_EVERY: u64 = 1000;

/// Anchors held over all tenants (32 million users' worth at [`ANCHOR_EVERY`]).
pub const ANCHORS: usize = 32 * 1024;

type Slot = (String, u64);

/// Locks that let one request at a time read a tenant's anchors; tenants share them by
/// the hash of their name.
const READERS: usize = 64;

/// How an unfiltered page was found: a seek after the remembered key of the user at
/// position `after` (0: from the tenant's first user), then `skipped` keys passed over
/// along the index. `skipped` is below the anchor spacing unless anchors were read on
/// the way (and then remembered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRead {
    pub after: u64,
    pub skipped: u64,
}

impl PageRead {
    /// The answer to a request for no users (`count=0`): the total alone, nothing read.
    pub fn total_only(total: u64) -> (super::Page, PageRead) {
        let page = super::Page {
            total,
            users: vec![],
        };
        (
            page,
            PageRead {
                after: 0,
                skipped: 0,
            },
        )
    }
}

/// The remembered keys of unfiltered pages.
#[derive(Debug)]
pub struct PageCursors<K> {
    inner: Mutex<Generations<K>>,
    generation: usize,
    anchors: Mutex<AnchorSet<K>>,
    every: u64,
    anchor_bound: usize,
    readers: Vec<Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug)]
struct Generations<K> {
    young: HashMap<Slot, (K, i64)>,
    old: HashMap<Slot, (K, i64)>,
}

#[derive(Debug)]
struct AnchorSet<K> {
    tenants: HashMap<String, Anchored<K>>,
    /// Keys held over all tenants.
    held: usize,
    /// Advances on every use, for choosing the tenant to drop.
    clock: u64,
}

#[derive(Debug)]
struct Anchored<K> {
    shifts: i64,
    /// The keys at positions `every`, `2 * every`, ...
    keys: Vec<K>,
    used: u64,
}

impl<K: Clone> Default for PageCursors<K> {
    fn default() -> Self {
        Self::new(GENERATION, ANCHOR_EVERY, ANCHORS)
    }
}

impl<K: Clone> PageCursors<K> {
    /// Page starts kept in generations of `generation` entries, anchors every `every`
    /// users, at most `anchor_bound` anchors over all tenants (each at least 1).
    pub fn new(generation: usize, every: u64, anchor_bound: usize) -> Self {
        Self {
            inner: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
            generation: generation.max(1),
            anchors: Mutex::new(AnchorSet {
                tenants: HashMap::new(),
                held: 0,
                clock: 0,
            }),
            every: every.max(1),
            anchor_bound: anchor_bound.max(1),
            readers: (0..READERS).map(|_| Default::default()).collect(),
        }
    }

    /// Wait for the turn to read the tenant's anchors, and hold it until they are
    /// remembered: a request that finds its anchors missing takes it, then looks again
    /// ([`Self::before`]), since another request may have read them meanwhile.
    pub async fn reading_anchors(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        let lock = &self.readers[(h.finish() % READERS as u64) as usize];
        lock.clone().lock_owned().await
    }

    /// Page starts kept in generations of `generation` entries (at least 1).
    pub fn with_generation(generation: usize) -> Self {
        Self::new(generation, ANCHOR_EVERY, ANCHORS)
    }

    /// Users between two anchors.
    pub fn anchor_every(&self) -> u64 {
        self.every
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

    /// The nearest remembered key at or before the user just before the page at `start`
    /// (position `start - 1`), valid as of `shifts`: its position and the key, or
    /// `(0, None)` when the page is to be found from the tenant's first user.
    pub fn before(&self, tenant: &str, start: u64, shifts: i64) -> (u64, Option<K>) {
        let start = start.max(1);
        if start == 1 {
            return (0, None);
        }
        if let Some(key) = self.get(tenant, start, shifts) {
            return (start - 1, Some(key));
        }
        let mut a = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        let AnchorSet {
            tenants,
            held,
            clock,
        } = &mut *a;
        let Some(t) = tenants.get_mut(tenant) else {
            return (0, None);
        };
        if t.shifts != shifts {
            // Older than this snapshot: stale for good, as the counter only grows.
            if t.shifts < shifts {
                *held -= t.keys.len();
                tenants.remove(tenant);
            }
            return (0, None);
        }
        *clock += 1;
        t.used = *clock;
        let i = ((start - 1) / self.every).min(t.keys.len() as u64);
        match i {
            0 => (0, None),
            _ => (i * self.every, Some(t.keys[i as usize - 1].clone())),
        }
    }

    /// Remember anchors read as of `shifts`: `keys` are those at positions
    /// `from + every`, `from + 2 * every`, ... (`from` a multiple of `every`). They add
    /// to the tenant's anchors when these reach `from`; anchors of another shift count
    /// are replaced by ones that start at the first user.
    pub fn put_anchors(&self, tenant: &str, shifts: i64, from: u64, keys: Vec<K>) {
        if keys.is_empty() || !from.is_multiple_of(self.every) {
            return;
        }
        let first = usize::try_from(from / self.every).unwrap_or(usize::MAX);
        let mut a = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        let AnchorSet {
            tenants,
            held,
            clock,
        } = &mut *a;
        let had = match tenants.get(tenant) {
            Some(t) if t.shifts == shifts => t.keys.len(),
            _ => 0,
        };
        if first > had {
            // A gap: these do not follow the anchors held (or there are none).
            return;
        }
        *clock += 1;
        let t = tenants.entry(tenant.to_string()).or_insert(Anchored {
            shifts,
            keys: vec![],
            used: 0,
        });
        if t.shifts != shifts {
            *held -= t.keys.len();
            t.keys.clear();
            t.shifts = shifts;
        }
        t.used = *clock;
        // Never more than the bound for one tenant.
        let room = self.anchor_bound.saturating_sub(first);
        t.keys.extend(keys.into_iter().take(room).skip(had - first));
        *held += t.keys.len() - had;
        // Over the bound: drop whole tenants, the one used longest ago first.
        while *held > self.anchor_bound {
            let Some(oldest) = tenants
                .iter()
                .filter(|(name, _)| name.as_str() != tenant)
                .min_by_key(|(_, t)| t.used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            *held -= tenants.remove(&oldest).map_or(0, |t| t.keys.len());
        }
    }

    /// Page starts held (for tests of the bound).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.young.len() + g.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Anchors held over all tenants (for tests of the bound).
    pub fn anchors_held(&self) -> usize {
        self.anchors.lock().unwrap_or_else(|e| e.into_inner()).held
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

    /// Keys are the positions they stand for, so a test reads off what it got.
    fn anchors(from: u64, to: u64, every: u64) -> Vec<u64> {
        (from / every + 1..=to / every).map(|i| i * every).collect()
    }

    #[test]
    fn a_jump_starts_after_the_nearest_anchor_at_or_before_it() {
        let c = PageCursors::<u64>::new(16, 10, 1000);
        assert_eq!(c.before("t", 55, 0), (0, None), "nothing remembered");
        c.put_anchors("t", 0, 0, anchors(0, 50, 10));
        assert_eq!(c.anchors_held(), 5);
        assert_eq!(c.before("t", 1, 0), (0, None));
        assert_eq!(c.before("t", 10, 0), (0, None), "position 9 is before 10");
        assert_eq!(c.before("t", 11, 0), (10, Some(10)));
        assert_eq!(c.before("t", 35, 0), (30, Some(30)));
        assert_eq!(
            c.before("t", 999, 0),
            (50, Some(50)),
            "past the last anchor"
        );
        // An exact page start wins over the anchor.
        c.put("t", 35, 34, 0);
        assert_eq!(c.before("t", 35, 0), (34, Some(34)));
        // Another tenant has none.
        assert_eq!(c.before("u", 35, 0), (0, None));
    }

    #[test]
    fn anchors_grow_from_the_last_one_and_go_when_the_counter_moves() {
        let c = PageCursors::<u64>::new(16, 10, 1000);
        c.put_anchors("t", 4, 0, anchors(0, 30, 10));
        // A later scan from the last anchor adds to them; one from an earlier anchor
        // (a concurrent reader) adds only what is new.
        c.put_anchors("t", 4, 30, anchors(30, 60, 10));
        c.put_anchors("t", 4, 20, anchors(20, 80, 10));
        assert_eq!(c.anchors_held(), 8);
        assert_eq!(c.before("t", 81, 4), (80, Some(80)));
        // Not after a gap.
        c.put_anchors("t", 4, 100, anchors(100, 120, 10));
        assert_eq!(c.before("t", 121, 4), (80, Some(80)));
        // Not at a position that is no anchor's.
        c.put_anchors("t", 4, 85, vec![95]);
        assert_eq!(c.anchors_held(), 8);
        // Anchors of another counter value: not used, and dropped.
        assert_eq!(c.before("t", 81, 5), (0, None));
        assert_eq!(c.anchors_held(), 0);
        // Anchors of an older counter value do not replace newer ones unless they start
        // at the first user.
        c.put_anchors("t", 6, 0, anchors(0, 20, 10));
        c.put_anchors("t", 5, 20, anchors(20, 40, 10));
        assert_eq!(c.before("t", 41, 6), (20, Some(20)));
        c.put_anchors("t", 7, 0, vec![100]);
        assert_eq!(c.anchors_held(), 1);
        assert_eq!(c.before("t", 41, 7), (10, Some(100)));
    }

    #[test]
    fn anchors_are_bounded_over_all_tenants_and_tenants_in_use_keep_theirs() {
        let c = PageCursors::<u64>::new(16, 10, 100);
        // One tenant alone never holds more than the bound.
        c.put_anchors("big", 0, 0, anchors(0, 5000, 10));
        assert_eq!(c.anchors_held(), 100);
        assert_eq!(c.before("big", 4001, 0), (1000, Some(1000)));
        for i in 0..50 {
            let tenant = format!("t{i}");
            c.put_anchors(&tenant, 0, 0, anchors(0, 300, 10));
            // "t0" is read in every round: it stays while the others come and go.
            assert_eq!(c.before("t0", 301, 0), (300, Some(300)), "round {i}");
            assert!(c.anchors_held() <= 100, "{}", c.anchors_held());
        }
        assert_eq!(c.before("big", 4001, 0), (0, None), "dropped");
        assert_eq!(c.before("t47", 301, 0), (0, None), "dropped");
        assert_eq!(c.before("t48", 301, 0), (300, Some(300)));
        assert_eq!(c.before("t49", 301, 0), (300, Some(300)));
    }
}
