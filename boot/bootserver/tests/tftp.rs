//! The TFTP server on loopback with raw UDP clients: no amplification before the peer proved
//! its address, RFC 1350 error codes, transfer slots per source and in all.

mod common;

use cerana_bootserver::config::TftpLimits;
use cerana_bootserver::events::EventLog;
use cerana_bootserver::tftp;
use common::pattern;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn start(limits: TftpLimits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("big.bin"), pattern(2_000_000)).unwrap();
    std::fs::write(root.join("small.bin"), pattern(70_001)).unwrap();
    std::fs::write(dir.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr = socket.local_addr().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handler = tftp::ReadOnlyDir::new(Path::new(&root), Arc::new(EventLog::new()), &limits).unwrap();
    runtime.spawn(async move {
        let server = tftp::server(socket, handler, &limits).await.unwrap();
        server.serve().await
    });
    Server { addr, _dir: dir, _runtime: runtime }
}

fn request(opcode: u16, name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = opcode.to_be_bytes().to_vec();
    for part in [name, "octet"].into_iter().chain(options.iter().flat_map(|(k, v)| [*k, *v])) {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

fn client(ip: Ipv4Addr) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    socket
}

fn opcode(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[0], packet[1]])
}

/// The next datagram within `limit`, with its sender.
fn next(socket: &UdpSocket, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            return Some((buf[..n].to_vec(), from));
        }
    }
    None
}

/// ERROR packet: (code, message).
fn error_of(packet: &[u8]) -> Option<(u16, String)> {
    (opcode(packet) == OP_ERROR).then(|| {
        let message = packet[4..].split(|b| *b == 0).next().unwrap_or_default();
        (u16::from_be_bytes([packet[2], packet[3]]), String::from_utf8_lossy(message).into_owned())
    })
}

/// OACK options as (name, value) pairs.
fn oack_options(packet: &[u8]) -> Vec<(String, String)> {
    let parts: Vec<String> = packet[2..].split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    parts.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_ascii_lowercase(), c[1].clone())).collect()
}

fn option(options: &[(String, String)], name: &str) -> Option<usize> {
    options.iter().find(|(k, _)| k == name).map(|(_, v)| v.parse().unwrap())
}

/// Reads `name` completely with the options the server granted, acknowledging the last block of
/// each window.
fn fetch(server: &Server, from: Ipv4Addr, name: &str, options: &[(&str, &str)]) -> Result<Vec<u8>, (u16, String)> {
    let socket = client(from);
    socket.send_to(&request(OP_RRQ, name, options), server.addr).unwrap();
    let (mut block_size, mut window) = (512, 1);
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    let mut in_window = 0;
    loop {
        let (packet, peer) = next(&socket, Duration::from_secs(10)).expect("the server answers");
        match opcode(&packet) {
            OP_OACK => {
                let granted = oack_options(&packet);
                block_size = option(&granted, "blksize").unwrap_or(512);
                window = option(&granted, "windowsize").unwrap_or(1);
                socket.send_to(&[0, OP_ACK as u8, 0, 0], peer).unwrap();
            }
            OP_DATA => {
                let block = u16::from_be_bytes([packet[2], packet[3]]);
                if block != expected {
                    continue;
                }
                data.extend_from_slice(&packet[4..]);
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = packet.len() - 4 < block_size;
                if last || in_window == window {
                    in_window = 0;
                    let ack = [&OP_ACK.to_be_bytes()[..], &block.to_be_bytes()[..]].concat();
                    socket.send_to(&ack, peer).unwrap();
                }
                if last {
                    return Ok(data);
                }
            }
            OP_ERROR => return Err(error_of(&packet).unwrap()),
            other => panic!("unexpected opcode {other}"),
        }
    }
}

#[test]
fn an_unverified_address_gets_a_few_oacks_and_no_data() {
    let limits = TftpLimits { timeout_secs: 1, max_retries: 2, ..TftpLimits::default() };
    let server = start(limits.clone());
    let attacker = client(Ipv4Addr::LOCALHOST);
    // 51 bytes asking for the largest window of the largest blocks, from an address nobody checked.
    let rrq = request(OP_RRQ, "big.bin", &[("windowsize", "65535"), ("blksize", "65464")]);
    attacker.send_to(&rrq, server.addr).unwrap();
    let (mut received, mut oacks, mut data_packets) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    // Never acknowledge; count until the server has been quiet for 2.5 s (it gave up).
    let mut gave_up = false;
    while start.elapsed() < Duration::from_secs(8) {
        let Some((packet, _)) = next(&attacker, Duration::from_millis(2500)) else {
            gave_up = true;
            break;
        };
        received += packet.len();
        oacks += usize::from(opcode(&packet) == OP_OACK);
        data_packets += usize::from(opcode(&packet) == OP_DATA);
    }
    assert_eq!(data_packets, 0, "{received} bytes sent to an address that never acknowledged");
    assert!(gave_up, "still sending after {:?}: {oacks} OACKs", start.elapsed());
    assert!(oacks <= 1 + limits.max_retries as usize, "{oacks} OACKs");
    assert!(received <= 512, "{received} bytes for a {}-byte request", rrq.len());
}

#[test]
fn the_window_is_capped_once_the_peer_acknowledged() {
    let server = start(TftpLimits::default());
    let peer = client(Ipv4Addr::LOCALHOST);
    // Room for all that comes (as root; else the kernel's default), so the count is what was sent.
    let _ = nix::sys::socket::setsockopt(&peer, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20));
    peer.send_to(&request(OP_RRQ, "big.bin", &[("windowsize", "65535"), ("blksize", "65464")]), server.addr).unwrap();
    let (oack, from) = next(&peer, Duration::from_secs(10)).expect("an OACK");
    assert_eq!(opcode(&oack), OP_OACK);
    let granted = oack_options(&oack);
    let (blksize, window) = (option(&granted, "blksize").unwrap_or(512), option(&granted, "windowsize").unwrap_or(1));
    peer.send_to(&[0, OP_ACK as u8, 0, 0], from).unwrap();
    // Acknowledge nothing more: what arrives before the first retransmission is one window.
    let mut received = 0;
    while let Some((packet, _)) = next(&peer, Duration::from_millis(1500)) {
        received += packet.len();
        if received > 4_000_000 {
            break;
        }
    }
    assert!(received <= 128 * 1024 + window * 4, "{received} bytes after one ACK");
    assert!(window * blksize <= 128 * 1024, "window of {window} blocks of {blksize} bytes");
}

#[test]
fn an_acknowledged_window_transfers_the_file() {
    let server = start(TftpLimits::default());
    let want = pattern(2_000_000);
    for options in [&[][..], &[("blksize", "1428")], &[("windowsize", "65535"), ("blksize", "8192"), ("tsize", "0")]] {
        let got =
            fetch(&server, Ipv4Addr::LOCALHOST, "big.bin", options).unwrap_or_else(|e| panic!("{options:?}: {e:?}"));
        assert!(got == want, "{options:?}: {} bytes, content differs", got.len());
    }
}

#[test]
fn refusals_carry_rfc_1350_error_codes() {
    let server = start(TftpLimits::default());
    for (name, code) in [("../secret", 2), ("/etc/passwd", 2), ("escape", 2), ("a\\b", 2), ("missing.bin", 1)] {
        let err = fetch(&server, Ipv4Addr::LOCALHOST, name, &[]).expect_err(name);
        assert_eq!(err.0, code, "{name}: {err:?}");
    }
    let socket = client(Ipv4Addr::LOCALHOST);
    socket.send_to(&request(OP_WRQ, "upload.bin", &[]), server.addr).unwrap();
    let (packet, _) = next(&socket, Duration::from_secs(10)).expect("an answer to a write request");
    assert_eq!(error_of(&packet).map(|e| e.0), Some(2), "{packet:?}");
}

#[test]
fn transfers_are_capped_per_source_and_in_all() {
    let limits = TftpLimits { max_transfers: 6, max_transfers_per_source: 4, ..TftpLimits::default() };
    let server = start(limits);
    // Transfers that wait for the ACK of their OACK hold their slots.
    let hold = |from: Ipv4Addr| {
        let socket = client(from);
        socket.send_to(&request(OP_RRQ, "small.bin", &[("blksize", "512")]), server.addr).unwrap();
        let (packet, _) = next(&socket, Duration::from_secs(10)).expect("an answer");
        (socket, packet)
    };
    let refusal = |packet: &[u8]| {
        let (code, message) = error_of(packet).unwrap_or_else(|| panic!("not refused: {packet:?}"));
        assert_eq!(code, 0, "{message}");
        message
    };
    let local = Ipv4Addr::LOCALHOST;
    let held: Vec<_> = (0..4).map(|_| hold(local)).collect();
    assert!(held.iter().all(|(_, p)| opcode(p) == OP_OACK));
    assert!(refusal(&hold(local).1).contains("from 127.0.0.1"));
    // Another address is still served in full.
    assert_eq!(fetch(&server, Ipv4Addr::new(127, 0, 0, 2), "small.bin", &[]).unwrap(), pattern(70_001));
    let more: Vec<_> = [2, 3].map(|n| hold(Ipv4Addr::new(127, 0, 0, n))).into_iter().collect();
    assert!(more.iter().all(|(_, p)| opcode(p) == OP_OACK));
    assert!(refusal(&hold(Ipv4Addr::new(127, 0, 0, 4)).1).contains("at most 6"));
}
