//! The served interface and sockets bound to it.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("interface {0} has no IPv4 address; set server_ip or configure the interface")]
    NoAddress(String),
    #[error("cannot list interfaces: {0}")]
    List(nix::Error),
    #[error("cannot open {what} on {iface}: {source}")]
    Socket { what: &'static str, iface: String, source: std::io::Error },
}

/// The interface the server answers on.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Option<Ipv4Addr>,
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self, NetError> {
        let index = nix::net::if_::if_nametoindex(name).map_err(|_| NetError::NoInterface(name.to_string()))?;
        let ipv4 = nix::ifaddrs::getifaddrs()
            .map_err(NetError::List)?
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip())));
        Ok(Interface { name: name.to_string(), index, ipv4 })
    }
}

/// A UDP socket bound to `addr` that only sees traffic of `iface` (SO_BINDTODEVICE).
pub fn udp_on_interface(
    iface: &str,
    addr: SocketAddr,
    broadcast: bool,
    what: &'static str,
) -> Result<std::net::UdpSocket, NetError> {
    let err = |source| NetError::Socket { what, iface: iface.to_string(), source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind_device(Some(iface.as_bytes())).map_err(err)?;
    if broadcast {
        socket.set_broadcast(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// A TCP listener on `addr`.
pub fn tcp_listener(iface: &str, addr: SocketAddr) -> Result<std::net::TcpListener, NetError> {
    let err = |source| NetError::Socket { what: "HTTP listener", iface: iface.to_string(), source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}
