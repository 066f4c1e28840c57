//! `metrics-*`: CPU, memory, disk, network and host facts, served by the `metrics` provider (issue #7).

crate::declare_tasks! {}
