//! IPv6 router advertisements that end iPXE's IPv6 autoconfiguration at once.
//!
//! iPXE configures IPv6 and DHCPv4 together and waits for both; with no router on the segment it
//! waits for its router solicitations to time out (~13 s) before booting. An advertisement with
//! router lifetime 0 (not a default router), no prefix and neither the M nor the O flag tells it
//! "no IPv6 configuration here" and it goes on immediately. We answer solicitations and also
//! advertise every few seconds.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;
pub const PERIOD: Duration = Duration::from_secs(4);

/// The advertisement (the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets).
pub fn advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[4] = 64; // current hop limit
                // flags (M, O) = 0, router lifetime = 0, reachable time = 0, retrans timer = 0
    ra
}

/// Opens the ICMPv6 socket on `iface` (index `index`).
pub fn socket(iface: &str, index: u32) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, index)?;
    s.set_nonblocking(true)?;
    // A raw socket is used through the datagram API only (send_to/recv_from).
    Ok(s.into())
}

/// Sends advertisements until the socket fails; `socket` comes from [`socket`].
pub async fn serve(socket: std::net::UdpSocket, index: u32) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let to = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    let ra = advertisement();
    let mut tick = tokio::time::interval(PERIOD);
    let mut buf = [0u8; 1500];
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            received = socket.recv_from(&mut buf) => {
                match received {
                    // Raw ICMPv6 sockets deliver the ICMPv6 message without the IPv6 header.
                    Ok((n, _)) if n >= 8 && buf[0] == ROUTER_SOLICITATION => {}
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        match socket.send_to(&ra, to).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                // Typically: the interface has no IPv6 link-local address yet (DAD) or IPv6 is off.
                tracing::warn!(error = %e, "cannot send router advertisement");
                warned = true;
            }
            Err(_) => {}
        }
    }
}
