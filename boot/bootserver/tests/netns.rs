//! The bootserver binary against real clients, each test in its own pair of network
//! namespaces (needs root; says why it skips otherwise).

mod common;

use cerana_bootserver::dhcp::client_message;
use cerana_protocol::tasks::boot::MacAddr;
use common::*;
use dhcproto::v4::{relay, Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FULL: &str = r#"mode = "full"
[dhcp.pool]
net = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.150"]
gateway = "10.77.0.1"
dns = ["10.77.0.1"]
lease_secs = 600"#;

const PROXY: &str = r#"mode = "proxy""#;

fn events_of(lab: &Lab, mac: &str) -> Vec<String> {
    lab.json(&format!("/events?mac={mac}"))["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["event"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

fn decode(data: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(data)).ok()
}

fn mac_of(lab: &Lab) -> String {
    let out = must(&["ip", "-n", &lab.cli, "-br", "link", "show", &lab.cli_if]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2).unwrap().to_string()
}

#[test]
fn udhcpc_gets_a_lease_and_renews_it() {
    require!("busybox", "curl");
    let mut lab = Lab::new(false);
    lab.start_server(&lab.config(FULL, ""));
    let script = lab.path("udhcpc.sh");
    let log = lab.path("udhcpc.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $ip $mask $router $lease\" >> {log}\ncase $1 in bound|renew) ip addr flush dev $interface; ip addr add $ip/$mask dev $interface;; esac\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.cli,
            "busybox",
            "udhcpc",
            "-f",
            "-i",
            &lab.cli_if,
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
            "-s",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    lab.adopt(child);
    let text = || String::from_utf8_lossy(&read(&log)).into_owned();
    let bound =
        wait_for(Duration::from_secs(15), || text().lines().find(|l| l.starts_with("bound ")).map(str::to_string));
    let bound = bound.unwrap_or_else(|| panic!("udhcpc got no lease: {}", text()));
    assert_eq!(bound, "bound 10.77.0.100 24 10.77.0.1 600");
    // SIGUSR1: renew (unicast REQUEST from the leased address).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGUSR1).unwrap();
    let renewed =
        wait_for(Duration::from_secs(10), || text().lines().find(|l| l.starts_with("renew ")).map(str::to_string));
    assert_eq!(renewed.unwrap_or_else(|| panic!("no renewal: {}", text())), "renew 10.77.0.100 24 10.77.0.1 600");
    let mac = mac_of(&lab);
    let events = events_of(&lab, &mac);
    assert!(events.iter().filter(|e| *e == "dhcp_ack").count() >= 2, "lease and renewal acknowledged: {events:?}");
    assert!(
        events.starts_with(&["dhcp_discover".into(), "dhcp_offer".into(), "dhcp_request".into(), "dhcp_ack".into()]),
        "{events:?}"
    );
    let leases = lab.json("/leases");
    assert_eq!(leases[0]["mac"], mac.as_str());
    let journal = String::from_utf8_lossy(&read(&lab.path("state/leases.jsonl"))).into_owned();
    assert!(journal.contains(&mac), "lease persisted: {journal}");
}

fn pxe_opts(arch: u16, ipxe: bool) -> Vec<DhcpOption> {
    let mut opts = vec![
        DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes()),
        DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        DhcpOption::ClientMachineIdentifier([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16].to_vec()),
    ];
    if ipxe {
        opts.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    opts
}

fn fname(m: &Message) -> String {
    m.fname_str().and_then(Result::ok).unwrap_or_default().trim_end_matches('\0').to_string()
}

#[test]
fn proxy_dhcp_answers_pxe_clients_on_67_and_4011() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(PROXY, ""));
    let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let cli_if = lab.cli_if.clone();
    let (offer, ack, plain) = lab.with_client_netns(|| {
        let s = udp(&cli_if, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        // A plain DHCP client is not answered by a proxy.
        let plain = client_message(MessageType::Discover, MacAddr([2, 0, 0, 0, 0, 9]), 99, vec![]);
        s.send_to(&plain.to_vec().unwrap(), (Ipv4Addr::BROADCAST, 67)).unwrap();
        let plain_reply = recv_matching(&s, Duration::from_millis(800), |d, _| decode(d).filter(|m| m.xid() == 99));
        let discover = client_message(MessageType::Discover, mac, 1, pxe_opts(7, false));
        s.send_to(&discover.to_vec().unwrap(), (Ipv4Addr::BROADCAST, 67)).unwrap();
        let offer = recv_matching(&s, Duration::from_secs(3), |d, _| decode(d).filter(|m| m.xid() == 1));
        // UEFI then asks the boot server on 4011 from its new address.
        let s4011 = udp(&cli_if, SocketAddrV4::new(CLIENT_IP, 4011));
        let mut request = client_message(MessageType::Request, mac, 2, pxe_opts(7, false));
        request.set_ciaddr(CLIENT_IP);
        s4011.send_to(&request.to_vec().unwrap(), (SERVER_IP, 4011)).unwrap();
        let ack = recv_matching(&s4011, Duration::from_secs(3), |d, from| {
            decode(d).filter(|m| m.xid() == 2).map(|m| (m, from))
        });
        (offer, ack, plain_reply)
    });
    assert!(plain.is_none(), "proxyDHCP must not answer non-PXE clients");
    let offer = offer.expect("proxy offer");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert!(offer.yiaddr().is_unspecified(), "a proxy hands out no address");
    assert_eq!((offer.siaddr(), fname(&offer).as_str()), (SERVER_IP, "snponly.efi"));
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(offer.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SERVER_IP)));
    let (ack, from) = ack.expect("ack on 4011");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 4011)));
    assert_eq!((ack.opts().msg_type(), fname(&ack)), (Some(MessageType::Ack), "snponly.efi".to_string()));
    let events = events_of(&lab, &mac.to_string());
    assert_eq!(events, ["dhcp_discover", "dhcp_offer", "dhcp_request", "dhcp_ack"]);
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    let mac = MacAddr([0x52, 0x54, 0, 0xaa, 0, 1]);
    let cli_if = lab.cli_if.clone();
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"rack1-port7".to_vec()));
    let (offer, ack) = lab.with_client_netns(|| {
        // The test plays the relay agent: it listens on 67 of its own address.
        let s = udp(&cli_if, SocketAddrV4::new(CLIENT_IP, 67));
        let mut discover = client_message(MessageType::Discover, mac, 11, pxe_opts(0, true));
        discover.set_giaddr(CLIENT_IP).set_hops(1);
        discover.opts_mut().insert(DhcpOption::RelayAgentInformation(info.clone()));
        s.send_to(&discover.to_vec().unwrap(), (SERVER_IP, 67)).unwrap();
        let offer =
            recv_matching(&s, Duration::from_secs(3), |d, from| decode(d).filter(|m| m.xid() == 11).map(|m| (m, from)));
        let ip = offer.as_ref().map(|(m, _)| m.yiaddr()).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut request = client_message(MessageType::Request, mac, 12, pxe_opts(0, true));
        request.set_giaddr(CLIENT_IP);
        request.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER_IP));
        s.send_to(&request.to_vec().unwrap(), (SERVER_IP, 67)).unwrap();
        let ack = recv_matching(&s, Duration::from_secs(3), |d, _| decode(d).filter(|m| m.xid() == 12));
        (offer, ack)
    });
    let (offer, from) = offer.expect("offer to the relay");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 67)));
    assert_eq!(offer.giaddr(), CLIENT_IP);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 100));
    assert_eq!(fname(&offer), "http://10.77.0.1/boot.ipxe", "iPXE gets the script URL");
    assert_eq!(offer.opts().get(OptionCode::RelayAgentInformation), Some(&DhcpOption::RelayAgentInformation(info)));
    let ack = ack.expect("ack to the relay");
    assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), Ipv4Addr::new(10, 77, 0, 100)));
}

#[test]
fn http_serves_scripts_images_with_ranges_and_records_the_timeline() {
    require!("curl");
    let mut lab = Lab::new(true);
    let machine = "[[machines]]\nmac = \"52:54:00:00:00:0d\"\nboot = \"disk\"\n";
    lab.start_server(&lab.config(FULL, machine));
    let initrd = pattern(1_000_003);
    let (kh, ih) = (sha256_hex(&pattern(100_000)), sha256_hex(&initrd));
    // The script iPXE is pointed at chains to the per-machine one.
    let chain = lab.get("/boot.ipxe");
    assert!(
        chain.starts_with("#!ipxe\n") && chain.contains("chain http://10.77.0.1/boot.ipxe?mac=${netX/mac:hexhyp}"),
        "{chain}"
    );
    let mac = "52:54:00:00:00:0c";
    let script = lab.get(&format!("/boot.ipxe?mac={}&uuid=&arch=x86_64", mac.replace(':', "%3A")));
    for want in [
        format!("kernel http://10.77.0.1/images/sha256-{kh}/vmlinuz?mac={mac} initrd=initrd console=ttyS0"),
        "cerana.boot_server=http://10.77.0.1/".to_string(),
        "cerana.cluster_ips=10.77.0.1,10.77.0.9".to_string(),
        format!("cerana.mgmt_mac={mac}"),
        format!("cerana.initrd_hash=sha256-{ih}"),
        "cerana.zfs_config=auto".to_string(),
        format!("initrd --name initrd http://10.77.0.1/images/sha256-{ih}/initrd?mac={mac}"),
        "\nboot\n".to_string(),
    ] {
        assert!(script.contains(&want), "missing {want:?} in\n{script}");
    }
    // A machine configured to boot from disk.
    let disk = lab.get("/boot.ipxe?mac=52:54:00:00:00:0d");
    assert!(disk.contains("\nexit\n") && !disk.contains("kernel"), "{disk}");
    // A bad MAC is a clear error.
    let bad = lab.curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://10.77.0.1/boot.ipxe?mac=nonsense"]);
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");

    let url = format!("http://10.77.0.1/images/sha256-{ih}/initrd?mac={mac}");
    let out = lab.curl(&["-sS", "-r", "1000-1999", "-D", "-", "-o", lab.path("part").to_str().unwrap(), &url]);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(head.contains("content-range: bytes 1000-1999/1000003"), "{head}");
    assert_eq!(read(&lab.path("part")), initrd[1000..2000]);
    let out = lab.curl(&["-sS", "-r", "-3", &url]);
    assert_eq!(out.stdout, initrd[initrd.len() - 3..]);
    let out = lab.curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "-r", "2000000-", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "416");
    let full = lab.curl(&["-sS", "--fail", &url]);
    assert_eq!(sha256_hex(&full.stdout), ih);
    let missing = lab.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://10.77.0.1/images/sha256-{}/initrd", "0".repeat(64)),
    ]);
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    let kernel = lab.curl(&["-sS", "--fail", &format!("http://10.77.0.1/images/sha256-{kh}/vmlinuz?mac={mac}")]);
    assert_eq!(kernel.stdout.len(), 100_000);

    // The booted node checks in.
    let body = format!("{{\"mac\":\"{mac}\",\"hostname\":\"node-c\"}}");
    let out = lab.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        "http://10.77.0.1/checkin",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
    let events = events_of(&lab, mac);
    assert_eq!(events.first().map(String::as_str), Some("http_script"));
    assert!(events.contains(&"http_kernel".to_string()) && events.contains(&"http_initrd".to_string()), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("checked_in"));
    let machines = lab.json("/machines");
    let m = machines["machines"].as_array().unwrap().iter().find(|m| m["mac"] == mac).cloned().unwrap();
    assert_eq!(m["stage"], "checked_in");
}

#[test]
fn http_bounds_huge_and_slow_requests() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    // Body over max_body_bytes (1024).
    let big = format!("{{\"mac\":\"52:54:00:00:00:01\",\"hostname\":\"{}\"}}", "x".repeat(5000));
    let out = lab.curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "--data", &big, "http://10.77.0.1/checkin"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    let out = lab.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data",
        "{\"mac\":\"52:54:00:00:00:01\",\"extra\":1}",
        "http://10.77.0.1/checkin",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "unknown fields refused");
    // Header larger than max_header_bytes: refused, the server stays up.
    let huge_header = format!("x-junk: {}", "y".repeat(40_000));
    let out = lab.curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &huge_header, "http://10.77.0.1/health"]);
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code == "431" || code == "000", "huge header answered {code}");
    lab.with_client_netns(|| {
        // A client that never finishes its request head is cut off after header_timeout_secs (2).
        let mut slow = TcpStream::connect((SERVER_IP, 80)).unwrap();
        slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let _ = slow.read_to_end(&mut buf);
        assert!(start.elapsed() < Duration::from_secs(6), "slow client held the connection {:?}", start.elapsed());
        // And a body that never arrives.
        let mut slow = TcpStream::connect((SERVER_IP, 80)).unwrap();
        slow.write_all(b"POST /checkin HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 64];
        let n = slow.read(&mut buf).unwrap_or(0);
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    });
    assert!(lab.curl(&["-sf", "--max-time", "2", "http://10.77.0.1/health"]).status.success(), "server still serves");
}

#[test]
fn tftp_serves_read_only_with_options_and_refuses_escapes() {
    require!("curl", "tftp");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    let out = lab.path("got");
    let o = out.to_str().unwrap();
    // curl negotiates blksize (and tsize).
    let r = lab.curl(&["-sS", "--max-time", "10", "--tftp-blksize", "1428", "-o", o, "tftp://10.77.0.1/undionly.kpxe"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(read(&out), pattern(70_001));
    let r = lab.curl(&["-sS", "--max-time", "10", "-o", o, "tftp://10.77.0.1/efi/snponly.efi"]);
    assert!(r.status.success());
    assert_eq!(read(&out), pattern(3000));
    // tftp-hpa: plain transfer, then a write request and escapes.
    std::fs::remove_file(&out).unwrap();
    let r = lab.in_client(&["tftp", "-m", "binary", "10.77.0.1", "-c", "get", "undionly.kpxe", o]);
    assert_eq!(read(&out), pattern(70_001), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::write(lab.path("upload"), b"data").unwrap();
    let put = lab.in_client(&[
        "tftp",
        "-m",
        "binary",
        "10.77.0.1",
        "-c",
        "put",
        lab.path("upload").to_str().unwrap(),
        "uploaded",
    ]);
    let said = format!("{}{}", String::from_utf8_lossy(&put.stdout), String::from_utf8_lossy(&put.stderr));
    assert!(said.contains("Error code 2"), "write request must be refused with an access violation: {said:?}");
    assert!(!lab.path("tftp/uploaded").exists());
    // RFC 1350: 2 is "Access violation", 1 "File not found".
    for (bad, code) in
        [("../secret", 2), ("escape", 2), ("/etc/passwd", 2), ("efi/../../secret", 2), ("missing.efi", 1)]
    {
        let target = lab.path("bad");
        let _ = std::fs::remove_file(&target);
        let r = lab.in_client(&["tftp", "-m", "binary", "10.77.0.1", "-c", "get", bad, target.to_str().unwrap()]);
        let said = format!("{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
        assert!(said.contains(&format!("Error code {code}")), "{bad}: {said:?}");
        assert!(!read(&target).starts_with(b"outside"), "{bad} leaked the file outside the root");
    }
    // Malformed TFTP datagrams are dropped; the server goes on serving.
    lab.with_client_netns(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for junk in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01noterminator",
            b"\x00\x09x\x00octet\x00",
            b"\x00\x01a\x00octet\x00blksize\x00huge\x00",
        ] {
            s.send_to(junk, (SERVER_IP, 69)).unwrap();
        }
    });
    let r = lab.curl(&["-sS", "--max-time", "10", "-o", o, "tftp://10.77.0.1/undionly.kpxe"]);
    assert!(r.status.success());
}

#[test]
fn dhcp_survives_malformed_packets_and_ignores_other_interfaces() {
    require!("curl");
    let mut lab = Lab::new(true);
    // A second link into the server namespace that the server is not bound to.
    let (other_srv, other_cli) = (format!("{}o", lab.srv_if), format!("{}o", lab.cli_if));
    must(&[
        "ip", "link", "add", &other_srv, "netns", &lab.srv, "type", "veth", "peer", "name", &other_cli, "netns",
        &lab.cli,
    ]);
    must(&["ip", "-n", &lab.srv, "addr", "add", "10.78.0.1/24", "dev", &other_srv]);
    must(&["ip", "-n", &lab.srv, "link", "set", &other_srv, "up"]);
    must(&["ip", "-n", &lab.cli, "link", "set", &other_cli, "up"]);
    lab.start_server(&lab.config(FULL, ""));
    let cli_if = lab.cli_if.clone();
    let stray = MacAddr([2, 0, 0, 0, 0, 0x77]);
    let (stray_reply, offer) = lab.with_client_netns(|| {
        let other = udp(&other_cli, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        other
            .send_to(
                &client_message(MessageType::Discover, stray, 5, vec![]).to_vec().unwrap(),
                (Ipv4Addr::BROADCAST, 67),
            )
            .unwrap();
        let stray_reply = recv_matching(&other, Duration::from_millis(1500), |d, _| decode(d).filter(|m| m.xid() == 5));
        drop(other);
        let s = udp(&cli_if, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        let good =
            client_message(MessageType::Discover, MacAddr([2, 0, 0, 0, 0, 1]), 6, pxe_opts(0, false)).to_vec().unwrap();
        let mut junk: Vec<Vec<u8>> = vec![vec![], vec![1; 10], good[..239].to_vec(), good[..good.len() - 3].to_vec()];
        let mut hlen = good.clone();
        hlen[2] = 200;
        junk.push(hlen);
        let mut optlen = good.clone();
        optlen[241] = 250; // first option's length runs past the end
        junk.push(optlen);
        let mut type_len = good[..240].to_vec();
        type_len.extend([53, 4, 1, 1, 1, 1, 255]);
        junk.push(type_len);
        junk.push(vec![0xff; 1400]);
        for j in &junk {
            s.send_to(j, (Ipv4Addr::BROADCAST, 67)).unwrap();
        }
        s.send_to(&good, (Ipv4Addr::BROADCAST, 67)).unwrap();
        let offer = recv_matching(&s, Duration::from_secs(3), |d, _| decode(d).filter(|m| m.xid() == 6));
        (stray_reply, offer)
    });
    assert!(stray_reply.is_none(), "a DISCOVER from another interface was answered");
    assert!(events_of(&lab, &stray.to_string()).is_empty());
    let offer = offer.expect("the server still answers after malformed packets");
    assert_eq!(fname(&offer), "undionly.kpxe");
    let log = lab.server_log();
    assert!(
        log.contains("DHCP packet dropped") && log.contains("malformed packet"),
        "malformed packets are logged:\n{log}"
    );
}

#[test]
fn router_advertisements_reach_the_segment() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    let cli_if = lab.cli_if.clone();
    let ra = lab.with_client_netns(|| {
        let s =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::RAW, Some(socket2::Protocol::ICMPV6)).unwrap();
        s.bind_device(Some(cli_if.as_bytes())).unwrap();
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        // Ask at once (router solicitation to ff02::2) rather than wait for the periodic one.
        let index = nix::net::if_::if_nametoindex(cli_if.as_str()).unwrap();
        let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let _ = s.send_to(&rs, std::net::SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, index));
        recv_matching(&s, Duration::from_secs(10), |d, _| (d.first() == Some(&134)).then(|| d.to_vec()))
    });
    let ra = ra.expect("a router advertisement within 10 s");
    assert_eq!(&ra[4..8], &[64, 0, 0, 0], "hop limit 64, no M/O flags, router lifetime 0");
}

#[test]
fn a_node_fetches_its_image_by_hash_to_serve_it_again() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    let initrd = pattern(1_000_003);
    let hash = format!("sha256-{}", sha256_hex(&initrd));
    let dest = lab.path("platform");
    let bin = env!("CARGO_BIN_EXE_cerana-bootserver");
    let out = lab.in_client(&[
        bin,
        "fetch",
        "--server",
        "http://10.77.0.1/",
        "--initrd-hash",
        &hash,
        "--dest",
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["initrd"], hash.as_str());
    assert_eq!(printed["cmdline"], "cerana.zfs_config=auto");
    assert_eq!(read(&dest.join(&hash).join("initrd")), initrd);
    assert_eq!(read(&dest.join(&hash).join("vmlinuz")), pattern(100_000));
    // An initrd the server does not have, and a malformed hash: clear errors, nothing written.
    let missing = format!("sha256-{}", "1".repeat(64));
    let out = lab.in_client(&[
        bin,
        "fetch",
        "--server",
        "http://10.77.0.1",
        "--initrd-hash",
        &missing,
        "--dest",
        dest.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.in_client(&[
        bin,
        "fetch",
        "--server",
        "http://10.77.0.1",
        "--initrd-hash",
        "sha256-xyz",
        "--dest",
        dest.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not sha256-"));
    assert!(!dest.join(&missing).exists());
}

/// `boot-dhcp`'s machinery: DHCP off answers nothing, full serves with imported leases honoured,
/// off again goes quiet, proxy answers PXE clients only — all in one running server.
#[test]
fn dhcp_switches_at_run_time_and_honours_imported_leases() {
    require!();
    use cerana_bootserver::config::{BootConfig, DhcpMode, PoolConfig};
    use cerana_bootserver::dhcp::BootFiles;
    use cerana_bootserver::dhcp_control::DhcpControl;
    use cerana_bootserver::lease::Lease;
    use std::sync::Arc;
    let lab = Lab::new(false);
    let pool: PoolConfig = toml::from_str(&FULL.replace("mode = \"full\"\n[dhcp.pool]\n", "")).unwrap();
    let events = Arc::new(cerana_bootserver::events::EventLog::new());
    let srv_if = lab.srv_if.clone();
    // Sockets are made on a thread inside the server namespace; the runtime's worker (started
    // there too) serves them.
    let (runtime, dhcp) = lab.with_server_netns(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let boot = BootFiles::new(&BootConfig::default(), SERVER_IP, 80);
        let dhcp = Arc::new(DhcpControl::new(srv_if, SERVER_IP, Some(pool), None, boot, events).0);
        (runtime, dhcp)
    });
    let switch = |mode: DhcpMode, imported: Vec<Lease>| {
        let (runtime, dhcp) = (&runtime, dhcp.clone());
        lab.with_server_netns(move || {
            let _guard = runtime.enter();
            dhcp.switch(mode, &imported).unwrap()
        })
    };
    let cli_if = lab.cli_if.clone();
    let discover = |xid: u32, mac: MacAddr, extra: Vec<DhcpOption>| {
        let cli_if = cli_if.clone();
        lab.with_client_netns(move || {
            let s = udp(&cli_if, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
            let m = client_message(MessageType::Discover, mac, xid, extra);
            s.send_to(&m.to_vec().unwrap(), (Ipv4Addr::BROADCAST, 67)).unwrap();
            recv_matching(&s, Duration::from_millis(1500), |d, _| decode(d).filter(|m| m.xid() == xid))
        })
    };
    let client = MacAddr([0x52, 0x54, 0, 0x77, 0, 1]);
    assert!(discover(1, client, vec![]).is_none(), "DHCP is off: no answer");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let imported = vec![
        Lease { mac: MacAddr([2, 0, 0, 0, 0, 1]), ip: Ipv4Addr::new(10, 77, 0, 100), expires: now + 600 },
        Lease { mac: MacAddr([2, 0, 0, 0, 0, 2]), ip: Ipv4Addr::new(10, 77, 0, 101), expires: now.saturating_sub(5) },
        Lease { mac: MacAddr([2, 0, 0, 0, 0, 3]), ip: Ipv4Addr::new(10, 77, 0, 200), expires: now + 600 },
    ];
    assert_eq!(switch(DhcpMode::Full, imported), (DhcpMode::Off, 1), "only the active lease inside the pool counts");
    assert_eq!(dhcp.mode(), DhcpMode::Full);
    let offer = discover(2, client, vec![]).expect("an offer once DHCP is full");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 77, 0, 101),
        ".100 is held by an imported lease; the expired .101 is free"
    );

    assert_eq!(switch(DhcpMode::Off, vec![]), (DhcpMode::Full, 0));
    assert!(discover(3, client, vec![]).is_none(), "off again: no answer");

    assert_eq!(switch(DhcpMode::Proxy, vec![]), (DhcpMode::Off, 0));
    assert!(discover(4, client, vec![]).is_none(), "a proxy ignores plain DHCP clients");
    let offer = discover(5, client, pxe_opts(0, false)).expect("a proxy offer to a PXE client");
    assert!(offer.yiaddr().is_unspecified() && fname(&offer) == "undionly.kpxe", "{offer:?}");
    drop(dhcp);
    runtime.shutdown_timeout(Duration::from_secs(2));
}

/// `cerana-bootserver join` in the client's namespace, with the image kept under the lab's
/// `replica` and `extra` arguments. The host name it reports is the host's, unless `hostname`
/// gives it one of its own (in a UTS namespace): as another machine, it must not share the
/// boot server's node's name.
fn join_in_client(
    lab: &Lab,
    hostname: Option<&str>,
    cmdline: &std::path::Path,
    output: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (cmdline, dest, output) = (path(cmdline), path(&lab.path("replica")), path(output));
    let rename = hostname.map(|h| format!("hostname {h} && exec \"$0\" \"$@\""));
    let mut args = match &rename {
        Some(script) => vec!["unshare", "--uts", "sh", "-c", script],
        None => vec![],
    };
    args.extend([env!("CARGO_BIN_EXE_cerana-bootserver"), "join", "--cmdline", &cmdline, "--dest", &dest]);
    args.extend(["--output", &output]);
    args.extend_from_slice(extra);
    lab.in_client(&args)
}

/// What a network-booted node does once up (`cerana-bootserver join`): keeps a checked copy of
/// its image, checks in, and serves that image itself, answering DHCP only when elected.
#[test]
fn a_joined_node_replicates_its_image_checks_in_and_serves_it() {
    require!("curl");
    let mut lab = Lab::new(true);
    lab.start_server(&lab.config(FULL, ""));
    let initrd_hash = format!("sha256-{}", sha256_hex(&pattern(1_000_003)));
    let mac = mac_of(&lab);
    let cmdline = lab.path("cmdline");
    std::fs::write(
        &cmdline,
        format!("console=ttyS0 cerana.boot_server=http://{SERVER_IP}/ cerana.mgmt_mac={mac} cerana.initrd_hash={initrd_hash} cerana.mgmt_ip={CLIENT_IP}/24 cerana.api_token=0123456789abcdef cerana.zfs_config=auto\n"),
    )
    .unwrap();
    let (dest, config, tftp) = (lab.path("replica"), lab.path("replica.toml"), lab.path("tftp"));
    let bin = env!("CARGO_BIN_EXE_cerana-bootserver");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let out = join_in_client(&lab, None, &cmdline, &config, &["--tftp-root", &path(&tftp)]);
    assert!(out.status.success(), "join failed: {}", String::from_utf8_lossy(&out.stderr));
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (joined["initrd"].as_str(), joined["checked_in"].as_bool()),
        (Some(initrd_hash.as_str()), Some(true)),
        "{joined}"
    );
    assert_eq!(read(&dest.join(&initrd_hash).join("initrd")), pattern(1_000_003));
    assert!(events_of(&lab, &mac).contains(&"checked_in".to_string()), "the boot server saw the check-in");
    assert!(joined["certificate"].is_null(), "a boot server without the cluster CA issues nothing: {joined}");

    // The replica's own server: same image, DHCP only while the cluster elects it the segment's
    // responder (without a coordinator, as here, never: the lab's server stays the only one).
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("mode = \"full\"\ncluster = true"), "{text}");
    let log = std::fs::File::create(lab.path("replica.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.cli, bin, "--config", &path(&config)])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    lab.adopt(child);
    let manifest_url = format!("http://{CLIENT_IP}/images/{initrd_hash}/manifest");
    let served = wait_for(Duration::from_secs(15), || {
        let out = lab.curl_from_server(&["-sf", "--max-time", "1", &manifest_url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let served = served.unwrap_or_else(|| {
        panic!("the replica does not serve its image: {}", String::from_utf8_lossy(&read(&lab.path("replica.log"))))
    });
    let manifest: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(manifest["initrd"], initrd_hash.as_str());
    assert_eq!(manifest["cmdline"], "cerana.zfs_config=auto", "the storage policy passed on, never a credential");

    // A node whose command line lacks what the boot server writes is told so; nothing written.
    std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
    let elsewhere = lab.path("elsewhere.toml");
    let out = join_in_client(&lab, None, &cmdline, &elsewhere, &[]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cerana.boot_server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!elsewhere.exists());
}

/// A machine booted from USB has no boot script and so no boot script's token: it checks in with
/// a join token an operator minted (`cerana node token create`), once, for its certificate.
#[test]
fn a_machine_booted_from_usb_joins_with_an_operators_token_once() {
    require!("curl");
    let mut lab = Lab::new(true);
    let ca_dir = lab.path("ca");
    cerana_pki::ClusterCa::load_or_create(&ca_dir).unwrap();
    let socket = lab.path("coordinator.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _coordinator =
        runtime.block_on(cerana_coordinator::Coordinator::start(cerana_coordinator::Config::new(&socket))).unwrap();
    let config = lab.config(FULL, "").replacen("\n[dhcp]\n", &format!("\nca_dir = {:?}\n[dhcp]\n", ca_dir), 1);
    lab.start_server_with(&config, &["--coordinator", socket.to_str().unwrap()]);
    let mac: MacAddr = mac_of(&lab).parse().unwrap();

    let created = runtime.block_on(async {
        let client = cerana_client::UnixClient::connect(&socket, "operator").await.unwrap();
        let args = cerana_protocol::tasks::boot::JoinTokenCreateArgs { ttl_seconds: 600, mac: Some(mac) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match client.run::<cerana_protocol::tasks::boot::BootJoinTokenCreate>(&args).await {
                Ok(created) => break created,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "boot-join-token-create never served: {e}\n{}",
                        lab.server_log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    assert!(created.cmdline.contains(&format!("cerana.boot_server=http://{SERVER_IP}/")), "{}", created.cmdline);

    let cmdline = lab.path("cmdline");
    std::fs::write(&cmdline, format!("console=ttyS0 {} cerana.mgmt_ip={CLIENT_IP}/24\n", created.cmdline)).unwrap();
    let join = |tls: &str| {
        let tls = lab.path(tls);
        let out = join_in_client(
            &lab,
            Some("cerana-usb"),
            &cmdline,
            &lab.path("replica.toml"),
            &["--tls-dir", tls.to_str().unwrap()],
        );
        assert!(out.status.success(), "join failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let joined = join("tls");
    assert_eq!(joined["checked_in"], true, "{joined}");
    assert!(joined["certificate"].is_string(), "the operator's token bought a certificate: {joined}");
    assert!(joined.get("initrd").is_none() && !lab.path("replica.toml").exists(), "no image to serve: {joined}");
    let pem = std::fs::read_to_string(cerana_pki::NodeTls::new(lab.path("tls")).cert()).unwrap_or_default();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");

    // The same token again, from the same machine with a new key: refused, and recorded.
    let again = join("tls-again");
    assert_eq!(again["checked_in"], false, "{again}");
    let why = again["check_in_error"].as_str().unwrap_or_default();
    assert!(why.contains("already used"), "{again}");
    let timeline = events_of(&lab, &mac.to_string());
    assert!(
        timeline.contains(&"certificate_issued".to_string()) && timeline.contains(&"certificate_refused".to_string()),
        "{timeline:?}"
    );
    drop(lab);
    runtime.shutdown_timeout(Duration::from_secs(2));
}
