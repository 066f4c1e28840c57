//! The full profile's service table (the kvm provider's services), appended to the base table as
//! the image builder does, is one valid table for cerana-init: libvirt's setup, libvirtd and the
//! kvm provider, in order.

use cerana_init::cmdline::Settings;
use cerana_init::table::load;

#[test]
fn the_full_profile_table_appends_cleanly_to_the_base_table() {
    let init = env!("CARGO_MANIFEST_DIR");
    let base = std::fs::read_to_string(format!("{init}/services.base.toml")).unwrap();
    let full = std::fs::read_to_string(format!("{init}/services.full.toml")).unwrap();
    let table = load(&format!("{base}\n{full}"), &Settings::default());
    for name in ["libvirt-setup", "libvirtd", "kvm", "coordinator"] {
        assert!(table.get(name).is_some(), "{name} missing from the full table");
    }
    for p in &table.problems {
        // Binaries that exist only in the image are fine here.
        assert!(p.message.contains("does not exist") || p.message.contains("requires invalid service"), "{p}");
    }
}
