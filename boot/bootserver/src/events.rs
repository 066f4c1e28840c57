//! Per-MAC boot timelines, bounded in memory, and which address belongs to which MAC.
//!
//! Anyone on the segment can name any MAC (a DHCP chaddr, `?mac=`, a check-in), so the log is
//! bounded so that invented machines cannot push real ones out:
//!
//! - every machine record is charged to the source that created it: a peer's address (HTTP,
//!   TFTP) or the DHCP segment; one peer holds at most [`MAX_MACHINES_PER_PEER`] records and a
//!   new one past that evicts that peer's own oldest, never another source's;
//! - past [`MAX_MACHINES`] in all, machines that did no real boot work (no lease from us, no
//!   kernel or initrd fetched, no TFTP file completed) are evicted before those that did, the
//!   least recently seen first;
//! - of a timeline's [`EVENTS_PER_MACHINE`] events at most [`FOREIGN_EVENTS_PER_MACHINE`] come
//!   from peers other than the machine's own (DHCP-given) address, so a peer reporting about
//!   someone else's MAC cannot flush that machine's history.

use cerana_protocol::tasks::boot::{
    BootEvent, BootEventKind, BootEventsArgs, BootEventsResult, BootMachine, BootMachinesResult, MacAddr,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept per machine; older ones are dropped (the count still grows).
pub const EVENTS_PER_MACHINE: usize = 128;
/// Of those, events reported by a peer that is not the machine's own address.
pub const FOREIGN_EVENTS_PER_MACHINE: usize = 16;
/// Machines remembered in all.
pub const MAX_MACHINES: usize = 4096;
/// Machine records one peer address may have created (a real machine needs one: itself).
pub const MAX_MACHINES_PER_PEER: usize = 32;

/// Where an event was reported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSource {
    /// A DHCP packet on the segment (or from a relay): identified only by the MAC it names.
    Dhcp,
    /// The address of an HTTP or TFTP peer.
    Peer(IpAddr),
}

/// Eviction order: machines without boot work before those with, then the least recently seen.
type EvictionKey = (bool, u64, MacAddr);

#[derive(Debug)]
struct StoredEvent {
    event: BootEvent,
    /// Reported by a peer other than the machine's own address.
    foreign: bool,
}

#[derive(Debug)]
struct Timeline {
    events: VecDeque<StoredEvent>,
    summary: BootMachine,
    created_by: EventSource,
    /// Got a lease from us, fetched a kernel or initrd, or completed a TFTP file.
    did_boot_work: bool,
}

impl Timeline {
    fn eviction_key(&self) -> EvictionKey {
        (self.did_boot_work, self.summary.last_seen_ms, self.summary.mac)
    }

    fn push(&mut self, event: BootEvent, foreign: bool) {
        let foreign_held = if foreign { self.events.iter().filter(|e| e.foreign).count() } else { 0 };
        if foreign && foreign_held >= FOREIGN_EVENTS_PER_MACHINE {
            if let Some(oldest) = self.events.iter().position(|e| e.foreign) {
                self.events.remove(oldest);
            }
        } else if self.events.len() >= EVENTS_PER_MACHINE {
            self.events.pop_front();
        }
        self.events.push_back(StoredEvent { event, foreign });
    }
}

/// Who holds an address, and whether DHCP said so (a lease or a proxied REQUEST) rather than a
/// peer's unauthenticated check-in.
#[derive(Debug, Clone, Copy)]
struct Claim {
    mac: MacAddr,
    by_dhcp: bool,
}

#[derive(Debug, Default)]
struct Inner {
    machines: HashMap<MacAddr, Timeline>,
    /// Which MAC holds which address, so TFTP and HTTP requests (which carry no MAC) are attributed.
    by_ip: HashMap<Ipv4Addr, Claim>,
    /// The reverse of `by_ip`: a MAC holds one address, its newest.
    ip_of: HashMap<MacAddr, Ipv4Addr>,
    /// Every machine, in eviction order.
    eviction: BTreeSet<EvictionKey>,
    /// The machines each peer created, in eviction order.
    by_peer: HashMap<IpAddr, BTreeSet<EvictionKey>>,
}

impl Inner {
    /// `ip` now belongs to `mac` alone: the MAC's previous address and the address's previous
    /// holder are forgotten.
    fn claim(&mut self, ip: Ipv4Addr, mac: MacAddr, by_dhcp: bool) {
        if let Some(old) = self.ip_of.insert(mac, ip) {
            if old != ip && self.by_ip.get(&old).is_some_and(|c| c.mac == mac) {
                self.by_ip.remove(&old);
            }
        }
        if let Some(previous) = self.by_ip.insert(ip, Claim { mac, by_dhcp }) {
            if previous.mac != mac && self.ip_of.get(&previous.mac) == Some(&ip) {
                self.ip_of.remove(&previous.mac);
            }
        }
    }

    fn forget(&mut self, mac: MacAddr) {
        let Some(timeline) = self.machines.remove(&mac) else { return };
        let key = timeline.eviction_key();
        self.eviction.remove(&key);
        if let EventSource::Peer(peer) = timeline.created_by {
            if let Some(set) = self.by_peer.get_mut(&peer) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
        }
        if let Some(ip) = self.ip_of.remove(&mac) {
            if self.by_ip.get(&ip).is_some_and(|c| c.mac == mac) {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Evicts what must go before `source` creates a new machine record.
    fn make_room(&mut self, source: EventSource) {
        if let EventSource::Peer(peer) = source {
            let own = self.by_peer.get(&peer).filter(|set| set.len() >= MAX_MACHINES_PER_PEER);
            if let Some(&(_, _, mac)) = own.and_then(|set| set.first()) {
                self.forget(mac);
            }
        }
        if self.machines.len() >= MAX_MACHINES {
            if let Some(&(_, _, mac)) = self.eviction.first() {
                self.forget(mac);
            }
        }
    }

    fn reindex(&mut self, created_by: EventSource, old: EvictionKey, new: EvictionKey) {
        if old == new {
            return;
        }
        self.eviction.remove(&old);
        self.eviction.insert(new);
        if let EventSource::Peer(peer) = created_by {
            let set = self.by_peer.entry(peer).or_default();
            set.remove(&old);
            set.insert(new);
        }
    }
}

/// Whether the event shows the machine did real boot work with us.
fn is_boot_work(kind: &BootEventKind) -> bool {
    matches!(
        kind,
        BootEventKind::DhcpAck { ip: Some(_), .. }
            | BootEventKind::TftpFile { complete: true, .. }
            | BootEventKind::HttpKernel { .. }
            | BootEventKind::HttpInitrd { .. }
    )
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
    pub fn record(&self, source: EventSource, mac: MacAddr, kind: BootEventKind) {
        self.record_at(now_ms(), source, mac, kind)
    }

    pub fn record_at(&self, at_ms: u64, source: EventSource, mac: MacAddr, kind: BootEventKind) {
        // Debug formatting escapes control characters a peer may have put into strings.
        tracing::info!(target: "boot_event", %mac, ?source, event = ?kind);
        let ip = match &kind {
            BootEventKind::DhcpOffer { ip, .. } | BootEventKind::DhcpAck { ip, .. } => *ip,
            BootEventKind::CheckedIn { ip, .. } => *ip,
            _ => None,
        };
        let mut inner = self.lock();
        let foreign = match source {
            EventSource::Dhcp => false,
            EventSource::Peer(IpAddr::V4(peer)) => !inner.by_ip.get(&peer).is_some_and(|c| c.mac == mac && c.by_dhcp),
            EventSource::Peer(IpAddr::V6(_)) => true,
        };
        if let Some(ip) = ip {
            inner.claim(ip, mac, source == EventSource::Dhcp);
        }
        if !inner.machines.contains_key(&mac) {
            inner.make_room(source);
            let stage = kind.stage();
            let summary = BootMachine { mac, ip: None, stage, first_seen_ms: at_ms, last_seen_ms: at_ms, events: 0 };
            let timeline = Timeline { events: VecDeque::new(), summary, created_by: source, did_boot_work: false };
            let key = timeline.eviction_key();
            inner.eviction.insert(key);
            if let EventSource::Peer(peer) = source {
                inner.by_peer.entry(peer).or_default().insert(key);
            }
            inner.machines.insert(mac, timeline);
        }
        let Some(timeline) = inner.machines.get_mut(&mac) else { return };
        let old_key = timeline.eviction_key();
        timeline.did_boot_work |= is_boot_work(&kind);
        let summary = &mut timeline.summary;
        summary.events += 1;
        summary.last_seen_ms = summary.last_seen_ms.max(at_ms);
        let stage = kind.stage();
        // A new DISCOVER starts a new boot: the stage goes back to the beginning.
        if matches!(kind, BootEventKind::DhcpDiscover { .. }) || stage > summary.stage {
            summary.stage = stage;
        }
        if ip.is_some() {
            summary.ip = ip;
        }
        timeline.push(BootEvent { at_ms, mac, kind }, foreign);
        let (created_by, new_key) = (timeline.created_by, timeline.eviction_key());
        inner.reindex(created_by, old_key, new_key);
    }

    /// Remembers that DHCP gave `ip` to `mac` without recording an event.
    pub fn learn_ip(&self, ip: Ipv4Addr, mac: MacAddr) {
        self.lock().claim(ip, mac, true);
    }

    pub fn mac_for_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.lock().by_ip.get(&ip).map(|c| c.mac)
    }

    /// `boot-events`: oldest first, at most `limit` newest per machine.
    pub fn events(&self, args: &BootEventsArgs) -> BootEventsResult {
        let inner = self.lock();
        let limit = args.limit.map(|l| l as usize).unwrap_or(EVENTS_PER_MACHINE);
        let mut events: Vec<BootEvent> = inner
            .machines
            .iter()
            .filter(|(mac, _)| args.mac.is_none_or(|want| want == **mac))
            .flat_map(|(_, t)| t.events.iter().skip(t.events.len().saturating_sub(limit)).map(|e| e.event.clone()))
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

    const DHCP: EventSource = EventSource::Dhcp;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn peer(last: u8) -> EventSource {
        EventSource::Peer(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn invented(i: u64) -> MacAddr {
        MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])
    }

    fn checked_in(ip: Option<Ipv4Addr>) -> BootEventKind {
        BootEventKind::CheckedIn { hostname: None, ip }
    }

    fn ack(ip: Ipv4Addr) -> BootEventKind {
        BootEventKind::DhcpAck { ip: Some(ip), bootfile: None, lease_secs: Some(60) }
    }

    fn timeline_len(log: &EventLog, mac: MacAddr) -> usize {
        log.events(&BootEventsArgs { mac: Some(mac), limit: None }).events.len()
    }

    #[test]
    fn timeline_is_bounded_and_stage_advances() {
        let log = EventLog::new();
        log.record_at(1, DHCP, mac(1), BootEventKind::DhcpDiscover { client: DhcpClientInfo::default() });
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        log.record_at(2, DHCP, mac(1), ack(ip));
        assert_eq!(log.mac_for_ip(ip), Some(mac(1)));
        for i in 0..(EVENTS_PER_MACHINE as u64 + 10) {
            log.record_at(3 + i, peer(5), mac(1), BootEventKind::HttpKernel { hash: "h".into(), bytes: i });
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
            log.record_at(i, DHCP, invented(i), BootEventKind::DhcpRelease { ip: Ipv4Addr::LOCALHOST });
        }
        assert_eq!(log.machines().machines.len(), MAX_MACHINES);
        // The least recently seen went first.
        assert_eq!(timeline_len(&log, invented(0)), 0);
        assert_eq!(timeline_len(&log, invented(MAX_MACHINES as u64 + 4)), 1);
    }

    #[test]
    fn a_check_in_replaces_the_address_the_mac_held() {
        let log = EventLog::new();
        let (foreign, right) = (Ipv4Addr::new(10, 0, 0, 66), Ipv4Addr::new(10, 0, 0, 5));
        log.record_at(1, peer(66), mac(1), checked_in(Some(foreign)));
        log.record_at(2, peer(5), mac(1), checked_in(Some(right)));
        assert_eq!(log.mac_for_ip(right), Some(mac(1)));
        assert_eq!(log.mac_for_ip(foreign), None, "the stale address still points at the MAC");
        // An address claimed by another MAC is no longer the first one's.
        log.record_at(3, DHCP, mac(2), ack(right));
        assert_eq!(log.mac_for_ip(right), Some(mac(2)));
        log.record_at(4, peer(66), mac(1), checked_in(Some(foreign)));
        assert_eq!((log.mac_for_ip(foreign), log.mac_for_ip(right)), (Some(mac(1)), Some(mac(2))));
        // mac(2) taking mac(1)'s newest address leaves mac(1) with none.
        log.record_at(5, DHCP, mac(2), ack(foreign));
        assert_eq!((log.mac_for_ip(foreign), log.mac_for_ip(right)), (Some(mac(2)), None));
    }

    #[test]
    fn invented_machines_from_one_source_do_not_evict_real_ones() {
        let log = EventLog::new();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        log.record_at(1, DHCP, mac(1), BootEventKind::DhcpDiscover { client: DhcpClientInfo::default() });
        log.record_at(2, DHCP, mac(1), ack(ip));
        log.record_at(3, peer(5), mac(1), BootEventKind::HttpInitrd { hash: "sha256-x".into(), bytes: 10 });
        // A machine that only asked for DHCP so far (its boot stopped there) is real too.
        log.record_at(4, DHCP, mac(2), BootEventKind::DhcpDiscover { client: DhcpClientInfo::default() });
        for i in 0..(MAX_MACHINES as u64 + 500) {
            log.record_at(10 + i, peer(66), invented(i), checked_in(None));
        }
        assert_eq!(timeline_len(&log, mac(1)), 3, "the real machine's timeline is gone");
        assert_eq!(timeline_len(&log, mac(2)), 1);
        assert_eq!(log.mac_for_ip(ip), Some(mac(1)));
        assert_eq!(log.machines().machines.len(), 2 + MAX_MACHINES_PER_PEER);
        // The peer keeps its newest inventions.
        assert_eq!(timeline_len(&log, invented(MAX_MACHINES as u64 + 499)), 1);
    }

    #[test]
    fn when_full_machines_without_boot_work_go_first() {
        let log = EventLog::new();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        log.record_at(1, DHCP, mac(1), ack(ip));
        log.record_at(2, peer(9), mac(2), BootEventKind::TftpFile { path: "a".into(), bytes: 1, complete: true });
        // Many peers, each within its own bound, and a DHCP flood of invented MACs.
        for i in 0..(MAX_MACHINES as u64) {
            log.record_at(10 + i, peer(100 + (i % 100) as u8), invented(i), checked_in(None));
            log.record_at(10 + i, DHCP, invented(i + 1_000_000), BootEventKind::DhcpIgnored { reason: "x".into() });
        }
        assert_eq!(log.machines().machines.len(), MAX_MACHINES);
        assert_eq!((timeline_len(&log, mac(1)), timeline_len(&log, mac(2))), (1, 1));
        assert_eq!(log.mac_for_ip(ip), Some(mac(1)));
    }

    #[test]
    fn reports_from_other_peers_cannot_flush_a_timeline() {
        let log = EventLog::new();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        log.record_at(1, DHCP, mac(1), ack(ip));
        log.record_at(2, peer(5), mac(1), BootEventKind::HttpScript { image: Some("cerana".into()) });
        for i in 0..(EVENTS_PER_MACHINE as u64 * 3) {
            log.record_at(10 + i, peer(66), mac(1), checked_in(None));
        }
        let events = log.events(&BootEventsArgs { mac: Some(mac(1)), limit: None }).events;
        assert_eq!(events.len(), 2 + FOREIGN_EVENTS_PER_MACHINE);
        assert!(matches!(events[0].kind, BootEventKind::DhcpAck { .. }), "{:?}", events[0]);
        assert!(matches!(events[1].kind, BootEventKind::HttpScript { .. }), "{:?}", events[1]);
        // The machine's own events still fill the rest.
        for i in 0..(EVENTS_PER_MACHINE as u64) {
            log.record_at(1000 + i, peer(5), mac(1), BootEventKind::HttpScript { image: None });
        }
        assert_eq!(timeline_len(&log, mac(1)), EVENTS_PER_MACHINE);
    }
}
