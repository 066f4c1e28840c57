//! `health-*`: uptime, file, TCP and HTTP checks, served by the `health` provider (issue #7).

crate::declare_tasks! {}
