//! `service-*`: services in containers, served by the `service` provider (issue #7).

crate::declare_tasks! {}
