//! The CeranaOS image builder: a RAM-resident node image assembled from Debian packages and the
//! workspace's binaries into a deterministic, compressed initramfs plus Debian's kernel.
//! See image/README.md.

pub mod apt;
pub mod build;
pub mod cpio;
pub mod elf;
pub mod manifest;
pub mod modules;
pub mod rootfs;
