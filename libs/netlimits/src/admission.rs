//! Admission of connections: a total cap and a cap per source address, counted by permits
//! that give their slot back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Refusals are logged at most this often (with how many there were since), so a flood does
/// not become a flood of log lines.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How many connections a listener serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In all.
    pub total: usize,
    /// From one source address; at most `total`.
    pub per_source: usize,
}

impl ConnectionLimits {
    /// These limits with the total lowered to `total` (when that is lower) and the cap per
    /// source lowered in proportion, so one source still cannot take every slot.
    pub fn shrunk_to(self, total: usize) -> Self {
        if total >= self.total {
            return self;
        }
        let per_source = (self.per_source as u128 * total as u128 / self.total.max(1) as u128) as usize;
        Self { total, per_source: per_source.max(1) }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{limit} connections are open, the most this listener serves at once; try again later")]
    Total { limit: usize },
    #[error("{addr} has {limit} connections open, the most one address may hold; close some first")]
    PerSource { addr: IpAddr, limit: usize },
}

/// Counts the connections of one listener. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct Admission {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    name: &'static str,
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    /// Woken whenever a permit is dropped.
    released: Notify,
    refusals: AtomicU64,
    /// Refused connections kept open a moment after their answer (`listener::turn_away`).
    pub(crate) lingering: AtomicUsize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses holding at least one connection: never more entries than `total`.
    by_source: HashMap<IpAddr, usize>,
    reported: Option<Instant>,
    unreported: u64,
}

/// One admitted connection's slot, given back when dropped.
#[derive(Debug)]
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct Permit {
    shared: Arc<Shared>,
    source: Option<IpAddr>,
}

impl Admission {
    /// `name` says which listener this is in logs. Caps below 1 are raised to 1, and the cap
    /// per source is lowered to the total.
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Self {
        let total = limits.total.max(1);
        let limits = ConnectionLimits { total, per_source: limits.per_source.clamp(1, total) };
        let shared = Shared {
            name,
            limits,
            counts: Mutex::new(Counts::default()),
            released: Notify::new(),
            refusals: AtomicU64::new(0),
            lingering: AtomicUsize::new(0),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Which listener this is, for logs.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.shared.limits
    }

    /// Admits a connection from `source` if both caps allow it.
    pub fn admit(&self, source: IpAddr) -> Result<Permit, Refused> {
        self.admit_from(Some(source.to_canonical()))
    }

    /// Admits a connection that has no source address (a unix socket): only the total counts.
    pub fn admit_local(&self) -> Result<Permit, Refused> {
        self.admit_from(None)
    }

    fn admit_from(&self, source: Option<IpAddr>) -> Result<Permit, Refused> {
        let limits = self.shared.limits;
        let mut counts = self.shared.counts.lock().expect("admission lock");
        let refused = if counts.total >= limits.total {
            Some(Refused::Total { limit: limits.total })
        } else {
            match source {
                Some(addr) if counts.by_source.get(&addr).copied().unwrap_or(0) >= limits.per_source => {
                    Some(Refused::PerSource { addr, limit: limits.per_source })
                }
                _ => None,
            }
        };
        if let Some(refused) = refused {
            self.shared.refusals.fetch_add(1, Ordering::Relaxed);
            counts.unreported += 1;
            if counts.reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                tracing::warn!(
                    listener = self.shared.name,
                    refused = counts.unreported,
                    "refusing connections over the cap (latest: {refused})"
                );
                counts.reported = Some(Instant::now());
                counts.unreported = 0;
            }
            return Err(refused);
        }
        counts.total += 1;
        if let Some(addr) = source {
            *counts.by_source.entry(addr).or_default() += 1;
        }
        Ok(Permit { shared: self.shared.clone(), source })
    }

    /// Connections admitted and not yet dropped.
    pub fn in_use(&self) -> usize {
        self.shared.counts.lock().expect("admission lock").total
    }

    /// Connections `source` holds.
    pub fn held_by(&self, source: IpAddr) -> usize {
        let counts = self.shared.counts.lock().expect("admission lock");
        counts.by_source.get(&source.to_canonical()).copied().unwrap_or(0)
    }

    /// Connections refused since the start.
    pub fn refusals(&self) -> u64 {
        self.shared.refusals.load(Ordering::Relaxed)
    }

    /// Waits until the total cap has room (a listener that would rather leave connections
    /// waiting in the kernel's backlog than refuse them).
    pub async fn until_room(&self) {
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the check and the wait wakes it.
            released.as_mut().enable();
            if self.in_use() < self.shared.limits.total {
                return;
            }
            released.await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.shared.counts.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(addr) = self.source {
            if let Some(n) = counts.by_source.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    counts.by_source.remove(&addr);
                }
            }
        }
        drop(counts);
        self.shared.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn caps_each_source_and_the_total() {
        let admission = Admission::new("test", ConnectionLimits { total: 5, per_source: 2 });
        let a1 = admission.admit(ip(1)).unwrap();
        let _a2 = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Refused::PerSource { addr: ip(1), limit: 2 });
        let _b = [admission.admit(ip(2)).unwrap(), admission.admit(ip(2)).unwrap()];
        let _c = admission.admit(ip(3)).unwrap();
        assert_eq!(admission.admit(ip(4)).unwrap_err(), Refused::Total { limit: 5 });
        assert_eq!(admission.admit_local().unwrap_err(), Refused::Total { limit: 5 });
        assert_eq!((admission.in_use(), admission.held_by(ip(1)), admission.refusals()), (5, 2, 3));

        drop(a1);
        assert_eq!((admission.in_use(), admission.held_by(ip(1))), (4, 1));
        let _a3 = admission.admit(ip(1)).unwrap();
        assert!(admission.admit(ip(4)).is_err());
    }

    #[test]
    fn dropping_every_permit_forgets_the_source() {
        let admission = Admission::new("test", ConnectionLimits { total: 3, per_source: 3 });
        let permits: Vec<_> = (0..3).map(|_| admission.admit(ip(1)).unwrap()).collect();
        drop(permits);
        assert_eq!(admission.in_use(), 0);
        assert!(admission.shared.counts.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn local_connections_count_only_in_the_total() {
        let admission = Admission::new("test", ConnectionLimits { total: 2, per_source: 1 });
        let _l = [admission.admit_local().unwrap(), admission.admit_local().unwrap()];
        assert_eq!(admission.admit_local().unwrap_err(), Refused::Total { limit: 2 });
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_source() {
        let admission = Admission::new("test", ConnectionLimits { total: 4, per_source: 1 });
        let _p = admission.admit(ip(7)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert!(matches!(admission.admit(mapped), Err(Refused::PerSource { .. })));
        let _v6 = admission.admit(IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap();
    }

    #[test]
    fn shrinking_the_total_shrinks_the_cap_per_source_in_proportion() {
        let limits = ConnectionLimits { total: 512, per_source: 64 };
        assert_eq!(limits.shrunk_to(1024), limits);
        assert_eq!(limits.shrunk_to(256), ConnectionLimits { total: 256, per_source: 32 });
        assert_eq!(limits.shrunk_to(4), ConnectionLimits { total: 4, per_source: 1 });
    }

    #[test]
    fn caps_are_at_least_one_and_per_source_at_most_the_total() {
        let admission = Admission::new("test", ConnectionLimits { total: 0, per_source: 9 });
        assert_eq!(admission.limits(), ConnectionLimits { total: 1, per_source: 1 });
    }

    #[tokio::test]
    async fn until_room_waits_for_a_release() {
        let admission = Admission::new("test", ConnectionLimits { total: 1, per_source: 1 });
        admission.until_room().await;
        let permit = admission.admit(ip(1)).unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.until_room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(permit);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    }
}
