//! How many connections a process can hold: every one is a file descriptor, and a process out
//! of descriptors cannot accept, open a file or make a pipe, so one flooded listener would stop
//! all the others. Connection caps are fitted below the soft `RLIMIT_NOFILE`.

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};

/// Descriptors always kept back for what is not a listener's connection (files, pipes,
/// outgoing connections, the runtime's own), however small the limit.
pub const MIN_RESERVE: u64 = 64;
/// Share of the limit kept back, when that is more than [`MIN_RESERVE`].
pub const RESERVE_DIVISOR: u64 = 4;

/// The descriptors a process's listeners may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft `RLIMIT_NOFILE` (`u64::MAX` when unlimited or unreadable).
    pub soft_limit: u64,
    /// Kept back for everything else.
    pub reserve: u64,
}

impl DescriptorBudget {
    /// The budget of a process whose soft limit is `soft_limit`.
    pub fn with_soft_limit(soft_limit: u64) -> Self {
        Self { soft_limit, reserve: MIN_RESERVE.max(soft_limit / RESERVE_DIVISOR) }
    }

    /// This process's budget, from its soft `RLIMIT_NOFILE` as it is now.
    pub fn of_this_process() -> Self {
        let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) if soft != RLIM_INFINITY => soft,
            Ok(_) => u64::MAX,
            Err(e) => {
                tracing::warn!("cannot read RLIMIT_NOFILE ({e}); connection caps stay as configured");
                u64::MAX
            }
        };
        Self::with_soft_limit(soft)
    }

    /// Descriptors the listeners may use between them (at least 2).
    pub fn available(&self) -> usize {
        usize::try_from(self.soft_limit.saturating_sub(self.reserve)).unwrap_or(usize::MAX).max(2)
    }

    /// The caps `wanted`, shrunk in proportion when together they exceed [`available`]; none
    /// below 1 unless it wanted 0.
    ///
    /// [`available`]: Self::available
    pub fn fit<const N: usize>(&self, wanted: [usize; N]) -> [usize; N] {
        let available = self.available();
        let sum = wanted.iter().fold(0usize, |sum, w| sum.saturating_add(*w));
        if sum <= available {
            return wanted;
        }
        wanted.map(|w| {
            if w == 0 {
                0
            } else {
                // In u128: `w * available` may not fit in usize.
                ((w as u128 * available as u128 / sum as u128) as usize).max(1)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_stay_as_configured() {
        let budget = DescriptorBudget::with_soft_limit(1024);
        assert_eq!((budget.reserve, budget.available()), (256, 768));
        assert_eq!(budget.fit([512, 256]), [512, 256]);
        assert_eq!(DescriptorBudget::with_soft_limit(u64::MAX).fit([4096, 1]), [4096, 1]);
    }

    #[test]
    fn caps_that_do_not_fit_shrink_in_proportion() {
        let budget = DescriptorBudget::with_soft_limit(1024);
        assert_eq!(budget.fit([1024, 512]), [512, 256]);
        assert_eq!(budget.fit([5000]), [768]);
        assert_eq!(budget.fit([0, 10_000]), [0, 768]);
        assert_eq!(budget.fit([usize::MAX, 1]), [768, 1]);
    }

    #[test]
    fn a_tiny_limit_keeps_the_minimum_reserve_and_some_room() {
        let budget = DescriptorBudget::with_soft_limit(100);
        assert_eq!((budget.reserve, budget.available()), (64, 36));
        assert_eq!(DescriptorBudget::with_soft_limit(10).available(), 2);
    }

    #[test]
    fn this_process_has_a_budget() {
        let budget = DescriptorBudget::of_this_process();
        assert!(budget.available() >= 2);
        assert!(budget.reserve >= MIN_RESERVE);
    }
}
