//! This coordinator's own addresses: recognising a URL that names it, and the URL peers reach it
//! at (the node of its local streams when it forwards a task).

use cerana_protocol::NodeUrl;
pub use cerana_protocol::Origin;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;

/// How this coordinator tells a peer where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Advertise {
    /// The HTTP listen address, when it is a concrete address (not `0.0.0.0` or `[::]`).
    #[default]
    ListenAddress,
    /// This URL (`--advertise-url URL`).
    Url(NodeUrl),
    /// The listen address; when that is a wildcard, the local address of the route to each peer,
    /// i.e. the address the peer sees this node's connections come from (`--advertise-url auto`).
    Auto,
}

impl FromStr for Advertise {
    type Err = cerana_protocol::names::NameError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "auto" {
            Ok(Self::Auto)
        } else {
            NodeUrl::new(value).map(Self::Url)
        }
    }
}

/// Where this coordinator serves HTTP and what it advertises.
#[derive(Debug, Clone)]
pub struct OwnAddress {
    /// The bound HTTP address (`None`: no HTTP listener).
    pub listen: Option<SocketAddr>,
    pub https: bool,
    /// The listener takes both (a node-TLS coordinator: plain HTTP on loopback, and everywhere
    /// until the node has its certificate).
    pub dual: bool,
    pub advertise: Advertise,
}

impl OwnAddress {
    /// Whether `url` reaches this coordinator: its advertised URL, or its listen port on an
    /// address it listens on (any local address for a wildcard listener; `localhost`).
    pub fn is_own(&self, url: &NodeUrl) -> bool {
        let Some(origin) = Origin::of(url) else { return false };
        if let Advertise::Url(own) = &self.advertise {
            if Origin::of(own).as_ref() == Some(&origin) {
                return true;
            }
        }
        let Some(listen) = self.listen else { return false };
        if (origin.https != self.https && !self.dual) || origin.port != listen.port() {
            return false;
        }
        let Some(ip) = origin.ip() else { return false };
        let listen_ip = listen.ip();
        if listen_ip.is_unspecified() {
            // A `0.0.0.0` listener takes IPv4 only; `[::]` takes both.
            (ip.is_ipv4() || listen_ip.is_ipv6()) && is_local(ip)
        } else {
            ip == listen_ip || (ip.is_loopback() && listen_ip.is_loopback() && origin.host == "localhost")
        }
    }

    /// The URL a peer at `peer` reaches this coordinator at; `route_source` finds the local
    /// address of the route to the peer (only needed for [`Advertise::Auto`] on a wildcard).
    pub fn for_peer(
        &self,
        peer: IpAddr,
        route_source: impl FnOnce(IpAddr) -> std::io::Result<IpAddr>,
    ) -> Result<NodeUrl, String> {
        if let Advertise::Url(url) = &self.advertise {
            return Ok(url.clone());
        }
        let Some(listen) = self.listen else {
            return Err("this coordinator serves no HTTP, so a peer cannot reach its streams".into());
        };
        let ip = match (listen.ip().is_unspecified(), &self.advertise) {
            (false, _) => listen.ip(),
            (true, Advertise::Auto) => {
                route_source(peer).map_err(|e| format!("no local address routes to the peer {peer}: {e}"))?
            }
            (true, _) => {
                return Err(format!(
                    "this coordinator listens on {listen}, which names no address a peer can use: \
                     set --advertise-url (a URL, or auto)"
                ))
            }
        };
        Ok(Origin { https: self.https, host: ip.to_string(), port: listen.port() }.url())
    }
}

/// Whether `ip` is an address of this machine (binding to it works only then).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The local address the kernel would send from to reach `peer` (no packet is sent).
pub fn route_source(peer: IpAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = if peer.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(SocketAddr::new(peer, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> NodeUrl {
        NodeUrl::new(s).unwrap()
    }

    #[test]
    fn own_urls_are_recognised() {
        let concrete = OwnAddress {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            https: false,
            dual: false,
            advertise: Advertise::default(),
        };
        for own in ["http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://LOCALHOST:8080//"] {
            assert!(concrete.is_own(&url(own)), "{own}");
        }
        for other in ["http://127.0.0.1:8081", "https://127.0.0.1:8080", "http://127.0.0.2:8080", "http://n:8080"] {
            assert!(!concrete.is_own(&url(other)), "{other}");
        }
        let wildcard = OwnAddress { listen: Some("0.0.0.0:8080".parse().unwrap()), ..concrete.clone() };
        assert!(wildcard.is_own(&url("http://127.0.0.1:8080")));
        assert!(wildcard.is_own(&url("http://localhost:8080")));
        assert!(!wildcard.is_own(&url("http://192.0.2.1:8080")), "TEST-NET-1 is nobody's local address");
        assert!(!wildcard.is_own(&url("http://[::1]:8080")), "0.0.0.0 takes no IPv6");
        let advertised = OwnAddress { advertise: Advertise::Url(url("http://node-1.example:8080/")), ..wildcard };
        assert!(advertised.is_own(&url("http://NODE-1.example:8080")));
        let no_http = OwnAddress { listen: None, https: false, dual: false, advertise: Advertise::Auto };
        assert!(!no_http.is_own(&url("http://127.0.0.1:8080")));
        let node_tls = OwnAddress { dual: true, ..concrete.clone() };
        assert!(node_tls.is_own(&url("https://127.0.0.1:8080")) && node_tls.is_own(&url("http://127.0.0.1:8080")));
    }

    #[test]
    fn the_advertised_url_comes_from_the_listen_address_or_the_route() {
        let peer: IpAddr = "10.99.0.3".parse().unwrap();
        let route = |_| Ok("10.99.0.2".parse().unwrap());
        let concrete = OwnAddress {
            listen: Some("10.99.0.2:8080".parse().unwrap()),
            https: true,
            dual: false,
            advertise: Advertise::default(),
        };
        assert_eq!(concrete.for_peer(peer, route).unwrap().as_str(), "https://10.99.0.2:8080");
        let wildcard = OwnAddress { listen: Some("0.0.0.0:8080".parse().unwrap()), https: false, ..concrete.clone() };
        assert!(wildcard.for_peer(peer, route).unwrap_err().contains("--advertise-url"));
        let auto = OwnAddress { advertise: Advertise::Auto, ..wildcard.clone() };
        assert_eq!(auto.for_peer(peer, route).unwrap().as_str(), "http://10.99.0.2:8080");
        let fixed = OwnAddress { advertise: Advertise::Url(url("http://n1:9000")), ..wildcard };
        assert_eq!(fixed.for_peer(peer, route).unwrap().as_str(), "http://n1:9000");
        assert_eq!("auto".parse::<Advertise>().unwrap(), Advertise::Auto);
        assert!("ftp://x".parse::<Advertise>().is_err());
        assert_eq!(route_source("127.0.0.1".parse().unwrap()).unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
