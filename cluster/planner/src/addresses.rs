//! Bundle addressing (issue #19): every bundle gets a subnet of the cluster's inter-bundle range
//! (its DHCP bucket), unique across the cluster and released when the bundle goes; every service
//! of a replica gets an address in it, kept while the replica stays on its node.
//!
//! Safety first: an address is released only when its replica is known to be gone — the bundle
//! or the service is no longer declared, or the node reports and does not run the bundle (and
//! is not about to). A silent node may still run its replicas (a partition), so its addresses
//! stay bound and are never handed to another replica. A subnet outside the range (the range was
//! changed) stays with its bundle, said as a problem, rather than renumber running services.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network: `base/len`, host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    len: u8,
}

impl Subnet {
    /// `base/len`; `None` when host bits are set or `len` is over 32.
    pub fn new(base: Ipv4Addr, len: u8) -> Option<Self> {
        let base = u32::from(base);
        (len <= 32 && base & !Self::mask_of(len) == 0).then_some(Self { base, len })
    }

    fn mask_of(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    pub fn base(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    fn last(&self) -> u32 {
        (u64::from(self.base) + self.size() - 1) as u32
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.len) == self.base
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    /// Whether `other` lies wholly inside.
    pub fn covers(&self, other: &Subnet) -> bool {
        other.len >= self.len && self.contains(other.base())
    }

    /// The addresses a service may get: not the network, not the broadcast, not the first
    /// host (the bundle's gateway).
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (u64::from(self.base) + 2, u64::from(self.last()));
        (first..last).map(|ip| Ipv4Addr::from(ip as u32))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base(), self.len)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 network (a.b.c.d/len, host bits clear)");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Subnet::new(ip, len).ok_or_else(bad)
    }
}

/// Where bundles' subnets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleRange {
    pub range: Subnet,
    /// Each bundle's subnet is a `/prefix` of the range.
    pub prefix: u8,
    /// The management network, which no bundle subnet may overlap.
    pub management: Option<Subnet>,
}

impl BundleRange {
    /// Why the range cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if !(self.range.len..=28).contains(&self.prefix) {
            return Some(format!(
                "bundle subnets of /{} do not fit the range {} (from /{} to /28)",
                self.prefix, self.range, self.range.len
            ));
        }
        match self.management {
            Some(m) if m.overlaps(&self.range) => {
                Some(format!("the bundle range {} overlaps the management network {m}", self.range))
            }
            _ => None,
        }
    }

    fn subnets(&self) -> impl Iterator<Item = Subnet> {
        let (range, prefix) = (self.range, self.prefix);
        let count = 1u64 << (prefix - range.len);
        let step = 1u64 << (32 - u32::from(prefix));
        (0..count).map(move |i| Subnet { base: (u64::from(range.base) + i * step) as u32, len: prefix })
    }
}

/// A service of a replica: (bundle, node, service).
pub type Slot = (String, String, String);

/// What the addressing is planned from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressState {
    /// Declared bundles and their services.
    pub bundles: BTreeMap<String, BTreeSet<String>>,
    /// Nodes that report now, with the bundles they run.
    pub reporting: BTreeMap<String, BTreeSet<String>>,
    /// Replicas about to start (bundle, node).
    pub starting: BTreeSet<(String, String)>,
    /// Subnets held, by bundle.
    pub subnets: BTreeMap<String, Subnet>,
    /// Addresses held.
    pub addresses: BTreeMap<Slot, Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressAction {
    /// The bundle gets `subnet`.
    Assign { bundle: String, subnet: Subnet },
    /// A service of a replica gets `ip`.
    Bind { slot: Slot, ip: Ipv4Addr },
    /// A replica's service let go of `ip`.
    Unbind { slot: Slot, ip: Ipv4Addr },
    /// The bundle is gone: its subnet is free.
    Release { bundle: String, subnet: Subnet },
}

impl fmt::Display for AddressAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressAction::Assign { bundle, subnet } => write!(f, "+ subnet {subnet} for {bundle}"),
            AddressAction::Bind { slot: (b, n, s), ip } => write!(f, "+ {ip} for {b}/{s} on {n}"),
            AddressAction::Unbind { slot: (b, n, s), ip } => write!(f, "- {ip} of {b}/{s} on {n}"),
            AddressAction::Release { bundle, subnet } => write!(f, "- subnet {subnet} of {bundle} (bundle gone)"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPlan {
    /// Assignments and binds first (before starts), then unbinds and releases.
    pub actions: Vec<AddressAction>,
    /// What cannot be addressed, and why.
    pub problems: Vec<String>,
}

impl AddressPlan {
    /// The actions to take before the tick's starts (assignments, binds) and after its stops.
    pub fn before_and_after(&self) -> (Vec<&AddressAction>, Vec<&AddressAction>) {
        self.actions.iter().partition(|a| matches!(a, AddressAction::Assign { .. } | AddressAction::Bind { .. }))
    }
}

/// The addressing to do; see the module docs.
pub fn plan_addresses(range: &BundleRange, state: &AddressState) -> AddressPlan {
    let mut plan = AddressPlan::default();
    let usable = match range.problem() {
        Some(problem) => {
            plan.problems.push(problem);
            false
        }
        None => true,
    };
    // Where each bundle's services need addresses: replicas reported and replicas starting.
    let mut wanted: BTreeSet<Slot> = BTreeSet::new();
    for (bundle, services) in &state.bundles {
        let nodes = state
            .reporting
            .iter()
            .filter(|(_, running)| running.contains(bundle))
            .map(|(node, _)| node)
            .chain(state.starting.iter().filter(|(b, _)| b == bundle).map(|(_, node)| node));
        for node in nodes {
            wanted.extend(services.iter().map(|s| (bundle.clone(), node.clone(), s.clone())));
        }
    }
    // Subnets: kept where held (a stray one said), assigned lowest-free to bundles that need one.
    let mut taken: BTreeSet<Subnet> = state.subnets.values().copied().collect();
    let mut subnets = BTreeMap::new();
    for (bundle, subnet) in state.subnets.iter().filter(|(b, _)| state.bundles.contains_key(*b)) {
        if !range.range.covers(subnet) || subnet.len != range.prefix {
            plan.problems.push(format!(
                "bundle {bundle}'s subnet {subnet} is not a /{} of the range {}: kept until the bundle goes",
                range.prefix, range.range
            ));
        }
        subnets.insert(bundle.clone(), *subnet);
    }
    let mut free = if usable { Some(range.subnets()) } else { None };
    for bundle in state.bundles.keys() {
        if subnets.contains_key(bundle) || !wanted.iter().any(|(b, _, _)| b == bundle) {
            continue;
        }
        let next = free.as_mut().and_then(|f| f.find(|s| !taken.iter().any(|t| t.overlaps(s))));
        match next {
            Some(subnet) => {
                taken.insert(subnet);
                subnets.insert(bundle.clone(), subnet);
                plan.actions.push(AddressAction::Assign { bundle: bundle.clone(), subnet });
            }
            None if usable => plan.problems.push(format!(
                "bundle {bundle}: no free /{} left in {} ({} held)",
                range.prefix,
                range.range,
                taken.len()
            )),
            None => plan.problems.push(format!("bundle {bundle}: no subnet while the bundle range is unusable")),
        }
    }
    // Addresses: kept where held, bound lowest-free for new slots.
    let mut in_use: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for ((bundle, _, _), ip) in &state.addresses {
        in_use.entry(bundle.as_str()).or_default().insert(*ip);
    }
    // A replica's services are bound together or not at all.
    let mut missing: BTreeMap<(&str, &str), Vec<&Slot>> = BTreeMap::new();
    for slot in wanted.iter().filter(|s| !state.addresses.contains_key(*s)) {
        missing.entry((slot.0.as_str(), slot.1.as_str())).or_default().push(slot);
    }
    for ((bundle, node), slots) in missing {
        let Some(subnet) = subnets.get(bundle) else { continue };
        let used = in_use.entry(bundle).or_default();
        let free: Vec<Ipv4Addr> = subnet.hosts().filter(|ip| !used.contains(ip)).take(slots.len()).collect();
        if free.len() < slots.len() {
            plan.problems.push(format!(
                "bundle {bundle}: its subnet {subnet} has {} free addresses, its replica on {node} needs {}",
                free.len(),
                slots.len()
            ));
            continue;
        }
        for (slot, ip) in slots.into_iter().zip(free) {
            used.insert(ip);
            plan.actions.push(AddressAction::Bind { slot: slot.clone(), ip });
        }
    }
    // Releases: only what is known to be unused.
    for (slot, ip) in &state.addresses {
        let (bundle, node, service) = slot;
        let declared = state.bundles.get(bundle).is_some_and(|services| services.contains(service));
        let stopped_here = state.reporting.get(node).is_some_and(|running| !running.contains(bundle))
            && !state.starting.contains(&(bundle.clone(), node.clone()));
        if !declared || stopped_here {
            plan.actions.push(AddressAction::Unbind { slot: slot.clone(), ip: *ip });
        }
    }
    for (bundle, subnet) in &state.subnets {
        if !state.bundles.contains_key(bundle) {
            plan.actions.push(AddressAction::Release { bundle: bundle.clone(), subnet: *subnet });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn range() -> BundleRange {
        BundleRange { range: net("10.224.0.0/22"), prefix: 24, management: Some(net("10.99.0.0/24")) }
    }

    fn slot(b: &str, n: &str, s: &str) -> Slot {
        (b.into(), n.into(), s.into())
    }

    fn state() -> AddressState {
        AddressState {
            bundles: BTreeMap::from([("web".into(), ["a".into(), "b".into()].into())]),
            reporting: BTreeMap::from([("n1".into(), BTreeSet::new()), ("n2".into(), BTreeSet::new())]),
            starting: [("web".into(), "n1".into()), ("web".into(), "n2".into())].into(),
            ..Default::default()
        }
    }

    fn apply(state: &mut AddressState, plan: &AddressPlan) {
        for action in &plan.actions {
            match action {
                AddressAction::Assign { bundle, subnet } => drop(state.subnets.insert(bundle.clone(), *subnet)),
                AddressAction::Bind { slot, ip } => drop(state.addresses.insert(slot.clone(), *ip)),
                AddressAction::Unbind { slot, .. } => drop(state.addresses.remove(slot)),
                AddressAction::Release { bundle, .. } => drop(state.subnets.remove(bundle)),
            }
        }
    }

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(net("10.224.0.0/12").to_string(), "10.224.0.0/12");
        for bad in ["10.224.0.1/24", "10.224.0.0", "10.224.0.0/33", "x/24", "10.224.0.0/-1"] {
            assert!(bad.parse::<Subnet>().unwrap_err().contains("is not an IPv4 network"), "{bad}");
        }
        assert!(net("10.0.0.0/8").covers(&net("10.224.0.0/24")));
        assert!(!net("10.224.0.0/24").covers(&net("10.0.0.0/8")));
        assert!(net("10.0.0.0/8").overlaps(&net("10.224.0.0/24")));
        assert!(!net("10.224.1.0/24").overlaps(&net("10.224.0.0/24")));
        assert_eq!(net("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn a_new_bundle_gets_a_subnet_and_each_replica_service_an_address_then_all_go_with_it() {
        let mut s = state();
        let plan = plan_addresses(&range(), &s);
        let text: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "+ subnet 10.224.0.0/24 for web",
                "+ 10.224.0.2 for web/a on n1",
                "+ 10.224.0.3 for web/b on n1",
                "+ 10.224.0.4 for web/a on n2",
                "+ 10.224.0.5 for web/b on n2",
            ]
        );
        assert!(plan.problems.is_empty());
        apply(&mut s, &plan);
        // Running now: nothing changes (stable across ticks and restarts).
        s.starting.clear();
        for n in ["n1", "n2"] {
            s.reporting.get_mut(n).unwrap().insert("web".into());
        }
        assert_eq!(plan_addresses(&range(), &s), AddressPlan::default());
        // A second bundle gets the next subnet.
        s.bundles.insert("db".into(), ["m".into()].into());
        s.starting.insert(("db".into(), "n2".into()));
        let plan = plan_addresses(&range(), &s);
        assert_eq!(plan.actions[0], AddressAction::Assign { bundle: "db".into(), subnet: net("10.224.1.0/24") });
        apply(&mut s, &plan);
        // web deleted: its addresses and subnet go; db's stay.
        s.bundles.remove("web");
        let plan = plan_addresses(&range(), &s);
        let text: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:?}");
        assert_eq!(text[4], "- subnet 10.224.0.0/24 of web (bundle gone)");
        apply(&mut s, &plan);
        assert_eq!(s.subnets.keys().collect::<Vec<_>>(), ["db"]);
        assert_eq!(s.addresses.keys().collect::<Vec<_>>(), [&slot("db", "n2", "m")]);
    }

    #[test]
    fn a_silent_node_keeps_its_addresses_and_a_stopped_replica_lets_go() {
        let mut s = state();
        let plan = plan_addresses(&range(), &s);
        apply(&mut s, &plan);
        s.starting.clear();
        s.reporting.get_mut("n1").unwrap().insert("web".into());
        // n2 is silent (a partition, maybe): its replica may run on; nothing is released, and
        // its replacement on n3 gets new addresses.
        s.reporting.remove("n2");
        s.reporting.insert("n3".into(), BTreeSet::new());
        s.starting.insert(("web".into(), "n3".into()));
        let plan = plan_addresses(&range(), &s);
        assert!(plan.actions.iter().all(|a| matches!(a, AddressAction::Bind { .. })), "{plan:?}");
        assert_eq!(plan.actions.len(), 2);
        let taken: BTreeSet<Ipv4Addr> = s.addresses.values().copied().collect();
        assert!(plan.actions.iter().all(|a| matches!(a, AddressAction::Bind { ip, .. } if !taken.contains(ip))));
        apply(&mut s, &plan);
        // n2 reports again without the bundle (stopped as surplus): its addresses go.
        s.starting.clear();
        s.reporting.get_mut("n3").unwrap().insert("web".into());
        s.reporting.insert("n2".into(), BTreeSet::new());
        let plan = plan_addresses(&range(), &s);
        let text: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["- 10.224.0.4 of web/a on n2", "- 10.224.0.5 of web/b on n2"]);
        // A service dropped from the bundle lets go of its addresses everywhere.
        apply(&mut s, &plan);
        s.bundles.insert("web".into(), ["a".into()].into());
        let plan = plan_addresses(&range(), &s);
        assert!(plan.actions.iter().all(|a| matches!(a, AddressAction::Unbind { slot, .. } if slot.2 == "b")));
        assert_eq!(plan.actions.len(), 2);
    }

    #[test]
    fn an_exhausted_or_unusable_range_is_explained_and_nothing_is_half_assigned() {
        let mut s = state();
        let small = BundleRange { range: net("10.224.0.0/24"), prefix: 24, management: None };
        let plan = plan_addresses(&small, &s);
        apply(&mut s, &plan);
        s.bundles.insert("db".into(), ["m".into()].into());
        s.starting.insert(("db".into(), "n1".into()));
        let plan = plan_addresses(&small, &s);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.problems, ["bundle db: no free /24 left in 10.224.0.0/24 (1 held)"]);
        let overlapping = BundleRange { management: Some(net("10.224.0.128/25")), ..small };
        assert!(plan_addresses(&overlapping, &s).problems[0].contains("overlaps the management network"));
        let misfit = BundleRange { prefix: 16, ..small };
        assert!(plan_addresses(&misfit, &s).problems[0].contains("do not fit the range"));
        // A subnet held outside a changed range stays, said.
        let moved = BundleRange { range: net("10.225.0.0/16"), prefix: 24, management: None };
        let plan = plan_addresses(&moved, &s);
        assert!(plan.problems[0].contains("web's subnet 10.224.0.0/24 is not a /24 of the range 10.225.0.0/16"));
        assert!(!plan.actions.iter().any(|a| matches!(a, AddressAction::Release { .. })));
        // A /28 holds 13 services (network, gateway, broadcast excluded).
        let tiny = BundleRange { range: net("10.224.0.0/28"), prefix: 28, management: None };
        let mut s = state();
        s.bundles.insert("web".into(), (0..7).map(|i| format!("s{i}")).collect());
        let plan = plan_addresses(&tiny, &s);
        // Two replicas of 7 services: the first is bound, the second not at all.
        let bound: BTreeSet<&str> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                AddressAction::Bind { slot, .. } => Some(slot.1.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(bound, BTreeSet::from(["n1"]));
        assert_eq!(plan.actions.len(), 8, "the subnet and 7 addresses: {plan:?}");
        assert_eq!(
            plan.problems,
            ["bundle web: its subnet 10.224.0.0/28 has 6 free addresses, its replica on n2 needs 7"]
        );
    }
}
