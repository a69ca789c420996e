//! One row of the summariser's capped lists (egress, dns, execs, files): how
//! many events, in which steps, and what else its kind keeps (the payload).
//! Rows of two summarisers of one log fold into one, so parts of a log can be
//! summarised in parallel.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::hash::Hash;

use super::MAX_ENTRIES;

/// Seeded per process, so crafted log content cannot force collisions, and
/// several times faster than SipHash on the short keys looked up per event.
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What a kind keeps besides the count and steps of its row.
pub(super) trait Payload {
    /// Takes in the payload of the same row from another part of the log.
    fn fold(&mut self, other: Self);
}

pub(super) struct Tally<P> {
    pub(super) count: u64,
    /// Indices into the summariser's steps.
    pub(super) steps: BTreeSet<u16>,
    pub(super) payload: P,
}

impl<P: Payload> Tally<P> {
    fn bump(&mut self, step: Option<u16>) {
        self.count += 1;
        if let Some(s) = step {
            self.steps.insert(s);
        }
    }

    fn fold(&mut self, other: Self) {
        self.count += other.count;
        self.steps.extend(other.steps);
        self.payload.fold(other.payload);
    }
}

/// Rows by key, at most [`MAX_ENTRIES`]; the events of keys that did not fit
/// are counted in `overflow` (the predicate's `truncated`).
pub(super) struct Tallies<K, P> {
    rows: HashMap<K, Tally<P>>,
    overflow: u64,
}

// Derived, Default would ask K and P to be Default too.
impl<K, P> Default for Tallies<K, P> {
    fn default() -> Self {
        Self {
            rows: HashMap::default(),
            overflow: 0,
        }
    }
}

impl<K: Hash + Eq, P: Payload> Tallies<K, P> {
    /// Counts one event of `key` in `step`, then hands its payload to
    /// `update`. `new` gives the owned key and the payload of a new row, so
    /// the key is only copied for a row that is kept.
    pub(super) fn record<Q>(
        &mut self,
        key: &Q,
        step: Option<u16>,
        new: impl FnOnce() -> (K, P),
        update: impl FnOnce(&mut P),
    ) where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let full = self.rows.len() >= MAX_ENTRIES;
        let row = match self.rows.get_mut(key) {
            Some(row) => row,
            None if full => {
                self.overflow += 1;
                return;
            }
            None => {
                let (key, payload) = new();
                self.rows.entry(key).or_insert(Tally {
                    count: 0,
                    steps: BTreeSet::new(),
                    payload,
                })
            }
        };
        row.bump(step);
        update(&mut row.payload);
    }

    /// Folds in another summariser's rows, whose steps `renumber` maps into ours.
    pub(super) fn merge(
        &mut self,
        other: Self,
        renumber: &impl Fn(BTreeSet<u16>) -> BTreeSet<u16>,
    ) {
        for (key, mut row) in other.rows {
            row.steps = renumber(row.steps);
            let full = self.rows.len() >= MAX_ENTRIES;
            match self.rows.get_mut(&key) {
                Some(mine) => mine.fold(row),
                None if full => self.overflow += row.count,
                None => {
                    self.rows.insert(key, row);
                }
            }
        }
        self.overflow += other.overflow;
    }

    pub(super) fn overflow(&self) -> u64 {
        self.overflow
    }

    /// The rows, in no particular order.
    pub(super) fn into_rows(self) -> Vec<(K, Tally<P>)> {
        self.rows.into_iter().collect()
    }
}
