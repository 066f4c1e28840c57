//! The addressing planner's properties (issue #19) over generated histories: bundles declared
//! and deleted, replicas started, running, stopped, nodes going silent and coming back, with
//! each plan applied before the next. Throughout: no two bundles' subnets overlap, every subnet
//! is a subnet of the range, no address is held twice, every address lies in its bundle's
//! subnet, an address held by a replica on a silent node is never released, and a replica's
//! address never changes while it is held.

use cerana_planner::addresses::{plan_addresses, AddressAction, AddressState, BundleRange, Subnet};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

const NODES: usize = 4;

/// One step of history: which bundles (of 6) are declared with how many services, which nodes
/// report, what each reporting node runs, and which replicas are starting.
type Step = (u8, [u8; 6], u8, [u8; NODES], u32);

fn arb_history() -> impl Strategy<Value = (u8, Vec<Step>)> {
    let step = (any::<u8>(), any::<[u8; 6]>(), any::<u8>(), any::<[u8; NODES]>(), any::<u32>());
    (24u8..=27, prop::collection::vec(step, 1..12))
}

fn bundle(i: usize) -> String {
    format!("b{i}")
}

fn node(i: usize) -> String {
    format!("n{i}")
}

fn state_at(step: &Step, held: &AddressState) -> AddressState {
    let (declared, services, reporting, running, starting) = step;
    let bundles: BTreeMap<String, BTreeSet<String>> = (0..6)
        .filter(|i| declared & (1 << i) != 0)
        .map(|i| (bundle(i), (0..=services[i] % 4).map(|s| format!("s{s}")).collect()))
        .collect();
    let reporting: BTreeMap<String, BTreeSet<String>> = (0..NODES)
        .filter(|n| reporting & (1 << n) != 0)
        .map(|n| (node(n), (0..6).filter(|b| running[n] & (1 << b) != 0).map(bundle).collect()))
        .collect();
    let starting = (0..6)
        .flat_map(|b| (0..NODES).map(move |n| (b, n)))
        .filter(|(b, n)| starting & (1 << ((b * NODES + n) % 32)) != 0)
        .filter(|(b, _)| bundles.contains_key(&bundle(*b)))
        .map(|(b, n)| (bundle(b), node(n)))
        .collect();
    AddressState { bundles, reporting, starting, subnets: held.subnets.clone(), addresses: held.addresses.clone() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn addresses_are_unique_inside_their_subnets_and_kept_while_held((prefix, history) in arb_history()) {
        let range = BundleRange { range: "10.224.0.0/22".parse().unwrap(), prefix, management: None };
        let mut held = AddressState::default();
        for step in &history {
            let state = state_at(step, &held);
            let plan = plan_addresses(&range, &state);
            for action in &plan.actions {
                match action {
                    AddressAction::Assign { bundle, subnet } => {
                        prop_assert!(!held.subnets.contains_key(bundle), "{bundle} assigned twice");
                        held.subnets.insert(bundle.clone(), *subnet);
                    }
                    AddressAction::Bind { slot, ip } => {
                        prop_assert!(!held.addresses.contains_key(slot), "{slot:?} bound twice");
                        held.addresses.insert(slot.clone(), *ip);
                    }
                    AddressAction::Unbind { slot, ip } => {
                        let (b, n, s) = slot;
                        prop_assert_eq!(held.addresses.remove(slot), Some(*ip));
                        let declared = state.bundles.get(b).is_some_and(|services| services.contains(s));
                        // Released only when known unused: never from a silent node's replica.
                        prop_assert!(
                            !declared || state.reporting.contains_key(n),
                            "{slot:?} released while {n} is silent"
                        );
                    }
                    AddressAction::Release { bundle, subnet } => {
                        prop_assert!(!state.bundles.contains_key(bundle));
                        prop_assert_eq!(held.subnets.remove(bundle), Some(*subnet));
                    }
                }
            }
            let subnets: Vec<(&String, &Subnet)> = held.subnets.iter().collect();
            for (i, (a, x)) in subnets.iter().enumerate() {
                prop_assert!(range.range.covers(x), "{a}'s {x} outside the range");
                prop_assert_eq!(x.prefix_len(), prefix);
                for (b, y) in &subnets[i + 1..] {
                    prop_assert!(!x.overlaps(y), "{a}'s {x} overlaps {b}'s {y}");
                }
            }
            let mut seen: BTreeSet<Ipv4Addr> = BTreeSet::new();
            for ((b, _, _), ip) in &held.addresses {
                prop_assert!(seen.insert(*ip), "{ip} held twice");
                // Addresses of a deleted bundle go with its subnet, in the same plan.
                let subnet = held.subnets.get(b);
                prop_assert!(subnet.is_some_and(|s| s.contains(*ip)), "{ip} of {b} outside {subnet:?}");
            }
        }
    }
}
