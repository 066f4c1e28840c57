//! Real firmware against the bootserver: QEMU guests (TCG) on a tap bridged, inside the
//! client namespace, to the server's veth. BIOS boots through the NIC's iPXE ROM; UEFI (OVMF)
//! through its own PXE stack, TFTP of Debian's snponly.efi, then iPXE. The "kernel" is a
//! stub with a valid bzImage header: the test follows the boot up to the downloads, which is
//! all the bootserver serves (the image and QEMU harness boot real kernels).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const FULL: &str = r#"mode = "full"
[dhcp.pool]
net = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.150"]
gateway = "10.77.0.1"
lease_secs = 600"#;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
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

struct Vm {
    lab: Lab,
    mac: String,
}

/// Where a built CeranaOS image is (vmlinuz, initrd.img), if one is.
fn built_image() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("CERANA_IMAGE_DIR").map(Into::into),
        std::env::var_os("OUT_DIR").map(|d| std::path::PathBuf::from(d).join("image/base")),
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../out/image/base")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("vmlinuz").is_file() && d.join("initrd.img").is_file())
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
    let serial = lab.path("serial.log");
    let mut qemu = Command::new("ip");
    qemu.args([
        "netns",
        "exec",
        &ns,
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
    if uefi {
        // No option ROM: OVMF's own virtio-net driver and PXE client do the first stage.
        qemu.args(["-bios", OVMF, "-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1")]);
    } else {
        qemu.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1")]);
    }
    if let Ok(dump) = std::env::var("BOOT_TEST_PCAP") {
        let tcpdump = Command::new("ip")
            .args(["netns", "exec", &lab.srv, "tcpdump", "-i", &lab.srv_if, "-w", &dump])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.adopt(tcpdump);
    }
    let child = qemu.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("qemu");
    lab.adopt(child);
    Vm { lab, mac: mac.to_string() }
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
    require!("curl", "qemu-system-x86_64");
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
    require!("curl", "qemu-system-x86_64");
    if !std::path::Path::new(OVMF).exists() || !std::path::Path::new(IPXE_DIR).join("snponly.efi").exists() {
        eprintln!("SKIP: needs {OVMF} (ovmf) and {IPXE_DIR}/snponly.efi (ipxe)");
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
    require!("curl", "qemu-system-x86_64");
    let Some(image) = built_image() else {
        eprintln!("SKIP: no built image (make image, or CERANA_IMAGE_DIR=dir with vmlinuz and initrd.img)");
        return;
    };
    let vm = boot_vm_with(false, true, "52:54:00:b0:00:02", Some(&image));
    let serial = vm.lab.path("serial.log");
    let ready = wait_for(Duration::from_secs(240), || {
        let text = String::from_utf8_lossy(&read(&serial)).into_owned();
        text.lines().any(|l| l.starts_with("CERANA-EVENT ") && l.contains("\"event\":\"node_ready\"")).then_some(())
    });
    let tail = String::from_utf8_lossy(&read(&serial)).lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        ready.is_some(),
        "the PXE-booted node never reported node_ready; serial (last lines, newest first):\n{tail}"
    );
    let events = timeline(&vm);
    let initrd = events.iter().find(|e| e["event"] == "http_initrd").expect("initrd served");
    assert_eq!(initrd["bytes"].as_u64(), Some(std::fs::metadata(vm.lab.path("initrd")).unwrap().len()));
}
