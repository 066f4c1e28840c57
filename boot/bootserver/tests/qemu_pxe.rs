//! Real firmware against the bootserver: QEMU guests (TCG) on a tap bridged, inside the
//! client namespace, to the server's veth. BIOS boots through the NIC's iPXE ROM; UEFI (OVMF)
//! through its own PXE stack, TFTP of Debian's snponly.efi, then iPXE. The "kernel" is a
//! stub with a valid bzImage header: the test follows the boot up to the downloads, which is
//! all the bootserver serves (the image and QEMU harness boot real kernels).

mod common;

use cerana_testbed::qemu::OVMF_BIOS;
use cerana_testbed::{default_log_dir, Boot, Firmware, Network, VmConfig, QEMU_SYSTEM};
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const FULL: &str = r#"mode = "full"
[dhcp.pool]
net = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.150"]
gateway = "10.77.0.1"
lease_secs = 600"#;

const IPXE_DIR: &str = "/usr/lib/ipxe";

/// A file iPXE accepts as a bzImage (boot flag, "HdrS", protocol 2.15, loaded high).
fn stub_bzimage() -> Vec<u8> {
    let mut image = pattern(100_000);
    image[0x1f1] = 4;
    image[0x1fe] = 0x55;
    image[0x1ff] = 0xaa;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206] = 0x0f;
    image[0x207] = 0x02;
    image[0x211] = 0x01;
    image
}

/// A firmware guest and the lab it boots from; the guest goes first, before its network.
struct Vm {
    guest: cerana_testbed::Vm,
    lab: Lab,
    mac: String,
}

/// Starts the server (with or without router advertisements) and one VM; `image` replaces the
/// stub kernel and initrd with a real image's.
fn boot_vm(uefi: bool, router_advertisements: bool, mac: &str) -> Vm {
    boot_vm_with(uefi, router_advertisements, mac, None)
}

fn boot_vm_with(uefi: bool, router_advertisements: bool, mac: &str, image: Option<&std::path::Path>) -> Vm {
    let mut lab = Lab::new(false);
    let (br, tap) = (format!("{}b", lab.cli_if), format!("{}t", lab.cli_if));
    let ns = lab.cli.clone();
    must(&["ip", "-n", &ns, "link", "add", &br, "type", "bridge"]);
    must(&["ip", "-n", &ns, "link", "set", &lab.cli_if, "master", &br]);
    must(&["ip", "-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
    must(&["ip", "-n", &ns, "link", "set", &tap, "master", &br]);
    must(&["ip", "-n", &ns, "link", "set", &tap, "up"]);
    must(&["ip", "-n", &ns, "link", "set", &br, "up"]);
    let config = lab
        .config(FULL, "")
        .replace(&format!("tftp_root = \"{}\"", lab.path("tftp").display()), &format!("tftp_root = \"{IPXE_DIR}\""));
    // TCG guests are slow: the stricter limits of the other tests would cut iPXE off.
    let config = config.replace("header_timeout_secs = 2", "header_timeout_secs = 10");
    let config = if router_advertisements { config } else { format!("router_advertisements = false\n{config}") };
    std::fs::write(lab.path("vmlinuz"), stub_bzimage()).unwrap();
    if let Some(dir) = image {
        std::fs::remove_file(lab.path("vmlinuz")).unwrap();
        std::fs::remove_file(lab.path("initrd")).unwrap();
        // Copies, not links: the image may be rebuilt while the test runs.
        std::fs::copy(dir.join("vmlinuz"), lab.path("vmlinuz")).unwrap();
        std::fs::copy(dir.join("initrd.img"), lab.path("initrd")).unwrap();
    }
    lab.start_server(&config);
    if let Ok(dump) = std::env::var("BOOT_TEST_PCAP") {
        let tcpdump = Command::new("ip")
            .args(["netns", "exec", &lab.srv, "tcpdump", "-i", &lab.srv_if, "-w", &dump])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.adopt(tcpdump);
    }
    let firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
    let mut config = VmConfig::new(&format!("pxe-{}", mac.replace(':', "")), Boot::Pxe(firmware), default_log_dir());
    config.network = Network::Tap { netns: ns, ifname: tap, mac: mac.into() };
    // As a firmware-only client: QEMU's default machine, one vCPU, 1 GiB.
    (config.machine, config.cpus, config.memory_mib) = (None, 1, 1024);
    let guest = cerana_testbed::Vm::boot(&config).expect("QEMU starts");
    Vm { guest, lab, mac: mac.to_string() }
}

fn timeline(vm: &Vm) -> Vec<serde_json::Value> {
    vm.lab.json(&format!("/events?mac={}", vm.mac))["events"].as_array().cloned().unwrap_or_default()
}

fn wait_for_event(vm: &Vm, event: &str, limit: Duration) -> Vec<serde_json::Value> {
    let found = wait_for(limit, || {
        let events = timeline(vm);
        events.iter().any(|e| e["event"] == event).then_some(events)
    });
    found.unwrap_or_else(|| panic!("no {event} within {limit:?}; timeline: {:#?}", timeline(vm)))
}

/// Milliseconds from iPXE's first DISCOVER to its script request.
fn ipxe_dhcp_to_script_ms(events: &[serde_json::Value]) -> u64 {
    let discover =
        events.iter().find(|e| e["event"] == "dhcp_discover" && e["client"]["ipxe"] == true).expect("iPXE DISCOVER");
    let script = events.iter().find(|e| e["event"] == "http_script").expect("script");
    script["at_ms"].as_u64().unwrap() - discover["at_ms"].as_u64().unwrap()
}

#[test]
fn bios_ipxe_rom_boots_through_dhcp_script_kernel_and_initrd() {
    require!("curl", QEMU_SYSTEM);
    let vm = boot_vm(false, true, "52:54:00:b0:00:01");
    let events = wait_for_event(&vm, "http_initrd", Duration::from_secs(240));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let order =
        ["dhcp_discover", "dhcp_offer", "dhcp_request", "dhcp_ack", "http_script", "http_kernel", "http_initrd"];
    let mut at = 0;
    for want in order {
        at += kinds[at..]
            .iter()
            .position(|k| *k == want)
            .unwrap_or_else(|| panic!("{want} missing or out of order: {kinds:?}"));
    }
    let initrd = events.iter().find(|e| e["event"] == "http_initrd").unwrap();
    assert_eq!(initrd["bytes"], 1_000_003);
    let ms = ipxe_dhcp_to_script_ms(&events);
    eprintln!("iPXE DHCP DISCOVER -> script request: {ms} ms (router advertisements on)");
    assert!(ms < 8_000, "iPXE took {ms} ms from DHCP to its script: is it waiting for IPv6?");
}

#[test]
fn uefi_pxe_fetches_snponly_by_tftp_then_chains_to_ipxe() {
    require!("curl", QEMU_SYSTEM);
    if !std::path::Path::new(OVMF_BIOS).exists() || !std::path::Path::new(IPXE_DIR).join("snponly.efi").exists() {
        cerana_testbed::require::missing(
            "uefi_pxe",
            &format!("needs {OVMF_BIOS} (ovmf) and {IPXE_DIR}/snponly.efi (ipxe)"),
        );
        return;
    }
    let vm = boot_vm(true, true, "52:54:00:e0:00:01");
    let events = wait_for_event(&vm, "http_kernel", Duration::from_secs(300));
    let firmware = events.iter().find(|e| e["event"] == "dhcp_offer").expect("offer to the firmware");
    assert_eq!(firmware["bootfile"], "snponly.efi");
    let tftp = events.iter().find(|e| e["event"] == "tftp_file").expect("TFTP transfer");
    assert_eq!((tftp["path"].as_str(), tftp["complete"].as_bool()), (Some("snponly.efi"), Some(true)));
    let arch = events.iter().find(|e| e["event"] == "dhcp_discover").unwrap()["client"]["arch"].as_u64();
    assert!(matches!(arch, Some(7) | Some(9)), "UEFI x86-64 architecture in option 93: {arch:?}");
    assert!(
        events.iter().any(|e| e["event"] == "dhcp_discover" && e["client"]["ipxe"] == true),
        "iPXE came up from snponly.efi"
    );
}

#[test]
fn a_built_cerana_image_pxe_boots_to_node_ready() {
    require!("curl", QEMU_SYSTEM);
    let image = cerana_testbed::require_ok!(cerana_testbed::image_dir());
    let mut vm = boot_vm_with(false, true, "52:54:00:b0:00:02", Some(&image));
    vm.guest.wait_for_event("node_ready", Duration::from_secs(240)).unwrap_or_else(|e| panic!("{e}"));
    let events = timeline(&vm);
    let initrd = events.iter().find(|e| e["event"] == "http_initrd").expect("initrd served");
    assert_eq!(initrd["bytes"].as_u64(), Some(std::fs::metadata(vm.lab.path("initrd")).unwrap().len()));
}
