//! `kvm-*`: virtual machines through libvirt, served by the `kvm` provider (issue #8).

crate::declare_tasks! {}
