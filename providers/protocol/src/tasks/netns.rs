//! `netns-*`, `firewall-*`, `namespace-set-user`: network namespaces, links, addresses, routes and per-bundle firewalls (issue #7).

crate::declare_tasks! {}
