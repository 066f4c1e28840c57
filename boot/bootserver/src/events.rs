//! Per-MAC boot timelines, bounded in memory.

use cerana_protocol::tasks::boot::{
    BootEvent, BootEventKind, BootEventsArgs, BootEventsResult, BootMachine, BootMachinesResult, MacAddr,
};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept per machine; older ones are dropped (the count still grows).
pub const EVENTS_PER_MACHINE: usize = 128;
/// Machines remembered; the one seen longest ago is forgotten first.
pub const MAX_MACHINES: usize = 4096;

#[derive(Debug)]
struct Timeline {
    events: VecDeque<BootEvent>,
    summary: BootMachine,
}

#[derive(Debug, Default)]
struct Inner {
    machines: HashMap<MacAddr, Timeline>,
    /// Which MAC holds which address, so TFTP and HTTP requests (which carry no MAC) are attributed.
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

/// The boot event log shared by the DHCP, TFTP and HTTP servers.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent in a harmful way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event now.
    pub fn record(&self, mac: MacAddr, kind: BootEventKind) {
        self.record_at(now_ms(), mac, kind)
    }

    pub fn record_at(&self, at_ms: u64, mac: MacAddr, kind: BootEventKind) {
        tracing::info!(target: "boot_event", %mac, event = ?kind);
        let ip = match &kind {
            BootEventKind::DhcpOffer { ip, .. } | BootEventKind::DhcpAck { ip, .. } => *ip,
            BootEventKind::CheckedIn { ip, .. } => *ip,
            _ => None,
        };
        let mut inner = self.lock();
        if let Some(ip) = ip {
            inner.by_ip.insert(ip, mac);
        }
        if !inner.machines.contains_key(&mac) && inner.machines.len() >= MAX_MACHINES {
            let oldest = inner.machines.iter().min_by_key(|(_, t)| t.summary.last_seen_ms).map(|(m, _)| *m);
            if let Some(oldest) = oldest {
                inner.machines.remove(&oldest);
                inner.by_ip.retain(|_, m| *m != oldest);
            }
        }
        let stage = kind.stage();
        let timeline = inner.machines.entry(mac).or_insert_with(|| Timeline {
            events: VecDeque::new(),
            summary: BootMachine { mac, ip: None, stage, first_seen_ms: at_ms, last_seen_ms: at_ms, events: 0 },
        });
        let summary = &mut timeline.summary;
        summary.events += 1;
        summary.last_seen_ms = summary.last_seen_ms.max(at_ms);
        // A new DISCOVER starts a new boot: the stage goes back to the beginning.
        if matches!(kind, BootEventKind::DhcpDiscover { .. }) || stage > summary.stage {
            summary.stage = stage;
        }
        if ip.is_some() {
            summary.ip = ip;
        }
        if timeline.events.len() == EVENTS_PER_MACHINE {
            timeline.events.pop_front();
        }
        timeline.events.push_back(BootEvent { at_ms, mac, kind });
    }

    /// Remembers that `ip` belongs to `mac` without recording an event.
    pub fn learn_ip(&self, ip: Ipv4Addr, mac: MacAddr) {
        self.lock().by_ip.insert(ip, mac);
    }

    pub fn mac_for_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.lock().by_ip.get(&ip).copied()
    }

    /// `boot-events`: oldest first, at most `limit` newest per machine.
    pub fn events(&self, args: &BootEventsArgs) -> BootEventsResult {
        let inner = self.lock();
        let limit = args.limit.map(|l| l as usize).unwrap_or(EVENTS_PER_MACHINE);
        let mut events: Vec<BootEvent> = inner
            .machines
            .iter()
            .filter(|(mac, _)| args.mac.is_none_or(|want| want == **mac))
            .flat_map(|(_, t)| t.events.iter().skip(t.events.len().saturating_sub(limit)).cloned())
            .collect();
        events.sort_by_key(|e| e.at_ms);
        BootEventsResult { events }
    }

    /// `boot-machines`: sorted by MAC.
    pub fn machines(&self) -> BootMachinesResult {
        let inner = self.lock();
        let mut machines: Vec<BootMachine> = inner.machines.values().map(|t| t.summary.clone()).collect();
        machines.sort_by_key(|m| m.mac);
        BootMachinesResult { machines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::boot::{BootStage, DhcpClientInfo};

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn timeline_is_bounded_and_stage_advances() {
        let log = EventLog::new();
        log.record_at(1, mac(1), BootEventKind::DhcpDiscover { client: DhcpClientInfo::default() });
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        log.record_at(2, mac(1), BootEventKind::DhcpAck { ip: Some(ip), bootfile: None, lease_secs: Some(60) });
        assert_eq!(log.mac_for_ip(ip), Some(mac(1)));
        for i in 0..(EVENTS_PER_MACHINE as u64 + 10) {
            log.record_at(3 + i, mac(1), BootEventKind::HttpKernel { hash: "h".into(), bytes: i });
        }
        let all = log.events(&BootEventsArgs::default());
        assert_eq!(all.events.len(), EVENTS_PER_MACHINE);
        let m = &log.machines().machines[0];
        assert_eq!((m.stage, m.ip, m.events), (BootStage::Kernel, Some(ip), EVENTS_PER_MACHINE as u64 + 12));
        let two = log.events(&BootEventsArgs { mac: Some(mac(1)), limit: Some(2) });
        assert_eq!(two.events.len(), 2);
        assert!(log.events(&BootEventsArgs { mac: Some(mac(2)), limit: None }).events.is_empty());
    }

    #[test]
    fn machine_count_is_bounded() {
        let log = EventLog::new();
        for i in 0..(MAX_MACHINES as u64 + 5) {
            let m = MacAddr([0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            log.record_at(i, m, BootEventKind::DhcpRelease { ip: Ipv4Addr::LOCALHOST });
        }
        assert_eq!(log.machines().machines.len(), MAX_MACHINES);
    }
}
