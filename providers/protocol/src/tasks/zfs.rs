//! `zfs-*`: datasets, snapshots, clones, send/receive and the pool, served by the `zfs` provider (issue #5).

crate::declare_tasks! {}
