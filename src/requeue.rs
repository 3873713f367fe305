//! Far-off requeues, kept compactly.
//!
//! Nearly every SessionToken waits for an instant hours away (its renewal time). kube-runtime's
//! scheduler would hold each of those as a request in a hash map and in a delay queue, about
//! 750 bytes an object (7.5 MB of the heap at 10,000 SessionTokens, README "Benchmarks"). Here
//! a wait longer than [`FAR`] is one entry of about 160 bytes: the object's namespace and name
//! and its instant. When the instant comes the object is handed to the controller
//! (`Controller::reconcile_on`), which reconciles it as it would a requeue. Shorter waits
//! (retries, code reminders, test-sized sessions) stay with kube-runtime's scheduler.

use kube::runtime::reflector::ObjectRef;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::crd::SessionToken;

/// Waits longer than this are kept here rather than in kube-runtime's scheduler.
pub const FAR: Duration = Duration::from_secs(30);

struct Entry {
    at: Instant,
    namespace: Box<str>,
    name: Box<str>,
}

#[derive(Default)]
struct Table {
    /// hash of (namespace, name) → the one pending instant of that object
    by_object: HashMap<u64, Entry>,
    /// (instant, hash): the order they come in
    queue: BTreeSet<(Instant, u64)>,
}

/// The pending far-off requeues (at most one per object: a new one replaces it).
#[derive(Default)]
pub struct Requeues {
    table: Mutex<Table>,
    changed: tokio::sync::Notify,
}

fn key(namespace: &str, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish()
}

impl Requeues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object is to be reconciled at `at` (replacing any instant pending for it).
    pub fn schedule(&self, namespace: &str, name: &str, at: Instant) {
        let k = key(namespace, name);
        let earliest_before = {
            let mut t = self.lock();
            let earliest_before = t.queue.first().map(|(i, _)| *i);
            if let Some(old) = t.by_object.insert(
                k,
                Entry {
                    at,
                    namespace: namespace.into(),
                    name: name.into(),
                },
            ) {
                t.queue.remove(&(old.at, k));
            }
            t.queue.insert((at, k));
            earliest_before
        };
        if earliest_before.is_none_or(|e| at < e) {
            // The waiting task sleeps until the old earliest instant: wake it.
            self.changed.notify_one();
        }
    }

    /// Nothing is pending for the object any more (it was deleted, or waits a shorter time).
    pub fn cancel(&self, namespace: &str, name: &str) {
        let k = key(namespace, name);
        let mut t = self.lock();
        if let Some(old) = t.by_object.remove(&k) {
            t.queue.remove(&(old.at, k));
            if t.by_object.capacity() > 64 && t.by_object.len() < t.by_object.capacity() / 4 {
                t.by_object.shrink_to_fit();
            }
        }
    }

    /// Removes and returns the objects due at `now`, and the next instant after them.
    pub fn take_due(&self, now: Instant) -> (Vec<ObjectRef<SessionToken>>, Option<Instant>) {
        let mut t = self.lock();
        let mut due = Vec::new();
        while let Some(&(at, k)) = t.queue.first() {
            if at > now {
                return (due, Some(at));
            }
            t.queue.pop_first();
            if let Some(e) = t.by_object.remove(&k) {
                due.push(ObjectRef::new(&e.name).within(&e.namespace));
            }
        }
        (due, None)
    }

    pub fn len(&self) -> usize {
        self.lock().by_object.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands each object to `send` when its instant comes; runs until `send` fails (the
    /// controller is gone).
    pub async fn run(&self, mut send: impl FnMut(ObjectRef<SessionToken>) -> Result<(), ()>) {
        loop {
            // Registered before looking, so a schedule in between is not missed.
            let changed = self.changed.notified();
            let (due, next) = self.take_due(Instant::now());
            for object in due {
                if send(object).is_err() {
                    return;
                }
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_due_in_order_once_with_their_latest_instant() {
        let r = Requeues::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        r.schedule("a", "x", s(30));
        r.schedule("a", "y", s(10));
        r.schedule("b", "x", s(20));
        r.schedule("a", "x", s(40)); // replaces 30
        r.schedule("c", "z", s(5));
        r.cancel("c", "z");
        assert_eq!(r.len(), 3);
        let (due, next) = r.take_due(s(9));
        assert!(due.is_empty());
        assert_eq!(next, Some(s(10)));
        let (due, next) = r.take_due(s(35));
        let names: Vec<String> = due
            .iter()
            .map(|o| format!("{}/{}", o.namespace.clone().unwrap(), o.name))
            .collect();
        assert_eq!(names, ["a/y", "b/x"]);
        assert_eq!(next, Some(s(40)));
        let (due, next) = r.take_due(s(40));
        assert_eq!(due.len(), 1);
        assert_eq!(next, None);
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_sends_each_object_at_its_instant_and_wakes_for_earlier_ones() {
        let r = std::sync::Arc::new(Requeues::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = r.clone();
        tokio::spawn(async move { runner.run(|o| tx.send(o).map_err(|_| ())).await });
        let t0 = Instant::now();
        r.schedule("ns", "late", t0 + Duration::from_secs(3600));
        tokio::task::yield_now().await;
        // An earlier one, scheduled while the runner sleeps until the late one.
        r.schedule("ns", "soon", t0 + Duration::from_secs(60));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.name, "soon");
        assert!(Instant::now() >= t0 + Duration::from_secs(60));
        assert!(Instant::now() < t0 + Duration::from_secs(61));
        let second = rx.recv().await.unwrap();
        assert_eq!(second.name, "late");
        assert!(Instant::now() >= t0 + Duration::from_secs(3600));
    }
}
