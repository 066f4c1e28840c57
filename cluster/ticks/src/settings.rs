//! The ticks' intervals, from the kernel command line:
//!
//! | setting | default | range |
//! |---|---|---|
//! | `cerana.heartbeat_ms` | 1000 | 200 – 60,000: how often a node reports |
//! | `cerana.heartbeat_ttl_ms` | 3000 | 2 × the heartbeat – 300,000: how long a silent node counts as up |
//! | `cerana.tick_ms` | 5000 | 1000 – 600,000: how often the leader plans and acts |
//! | `cerana.dataset_grace_s` | 600 | 0 – 604,800: how long a copy nothing needs is kept |
//!
//! A value out of range or not a number is refused with the setting named, and its default is
//! used: a node with a typo in its command line still takes part.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat: Duration,
    pub heartbeat_ttl: Duration,
    pub tick: Duration,
    pub dataset_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(1000),
            heartbeat_ttl: Duration::from_millis(3000),
            tick: Duration::from_millis(5000),
            dataset_grace: Duration::from_secs(600),
        }
    }
}

impl Settings {
    /// The settings `cmdline` gives, and what was wrong with it.
    pub fn parse(cmdline: &str) -> (Self, Vec<String>) {
        let mut settings = Settings::default();
        let mut problems = Vec::new();
        let mut number = |name: &str, value: &str, range: std::ops::RangeInclusive<u64>| -> Option<u64> {
            match value.parse::<u64>() {
                Ok(n) if range.contains(&n) => Some(n),
                _ => {
                    problems.push(format!(
                        "{name}={value}: must be a whole number from {} to {}; the default is used",
                        range.start(),
                        range.end()
                    ));
                    None
                }
            }
        };
        let mut ttl = None;
        for word in cmdline.split_whitespace() {
            let Some((name, value)) = word.split_once('=') else { continue };
            match name {
                "cerana.heartbeat_ms" => {
                    if let Some(n) = number(name, value, 200..=60_000) {
                        settings.heartbeat = Duration::from_millis(n);
                    }
                }
                "cerana.heartbeat_ttl_ms" => ttl = number(name, value, 400..=300_000).map(|n| (n, value.to_owned())),
                "cerana.tick_ms" => {
                    if let Some(n) = number(name, value, 1000..=600_000) {
                        settings.tick = Duration::from_millis(n);
                    }
                }
                "cerana.dataset_grace_s" => {
                    if let Some(n) = number(name, value, 0..=604_800) {
                        settings.dataset_grace = Duration::from_secs(n);
                    }
                }
                _ => {}
            }
        }
        // The TTL is checked against the heartbeat wherever on the line either is.
        let least = settings.heartbeat * 2;
        match ttl {
            Some((n, _)) if Duration::from_millis(n) >= least => settings.heartbeat_ttl = Duration::from_millis(n),
            Some((_, value)) => {
                problems.push(format!(
                    "cerana.heartbeat_ttl_ms={value}: must be at least twice cerana.heartbeat_ms ({} ms); {} ms is used",
                    least.as_millis(),
                    least.max(settings.heartbeat_ttl).as_millis()
                ));
                settings.heartbeat_ttl = least.max(settings.heartbeat_ttl);
            }
            None => settings.heartbeat_ttl = settings.heartbeat_ttl.max(least),
        }
        (settings, problems)
    }

    /// The heartbeat TTL as etcd leases take it: whole seconds, rounded up.
    pub fn lease_secs(&self) -> i64 {
        self.heartbeat_ttl.as_millis().div_ceil(1000).max(1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_refusals() {
        let (s, problems) = Settings::parse("quiet cerana.mgmt_ip=10.0.0.2/24");
        assert_eq!(s, Settings::default());
        assert!(problems.is_empty());
        assert_eq!(s.lease_secs(), 3);

        let (s, problems) = Settings::parse("cerana.heartbeat_ms=500 cerana.heartbeat_ttl_ms=1500 cerana.tick_ms=2000");
        assert_eq!((s.heartbeat.as_millis(), s.heartbeat_ttl.as_millis(), s.tick.as_millis()), (500, 1500, 2000));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.lease_secs(), 2, "rounded up to whole seconds");

        let (s, problems) = Settings::parse("cerana.heartbeat_ms=fast cerana.tick_ms=10 cerana.dataset_grace_s=-1");
        assert_eq!(s, Settings::default());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("cerana.heartbeat_ms=fast: must be a whole number from 200"), "{problems:?}");

        // A TTL shorter than two beats would expire between them.
        let (s, problems) = Settings::parse("cerana.heartbeat_ttl_ms=1000 cerana.heartbeat_ms=2000");
        assert_eq!(s.heartbeat_ttl.as_millis(), 4000);
        assert!(problems[0].contains("at least twice cerana.heartbeat_ms (4000 ms)"), "{problems:?}");
        // A slower heartbeat alone lengthens the default TTL with it.
        let (s, _) = Settings::parse("cerana.heartbeat_ms=5000");
        assert_eq!(s.heartbeat_ttl.as_millis(), 10_000);
    }
}
