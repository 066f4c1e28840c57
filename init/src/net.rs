//! The management interface from the command line: `cerana.mgmt_mac` picks the NIC (default:
//! the first physical Ethernet interface), `cerana.mgmt_ip` gives its address and prefix,
//! `cerana.mgmt_gw` the default route. IPv4 through the classic interface ioctls, so init
//! needs no netlink library.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmdline::{IpCidr, MacAddr};

/// Why the management interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no network interface with MAC {0}")]
    NoInterfaceWithMac(MacAddr),
    #[error("no physical Ethernet interface")]
    NoInterface,
    #[error("IPv6 management addresses are not supported yet ({0})")]
    Ipv6(IpAddr),
    #[error("gateway {gateway} is not in {cidr}")]
    GatewayOutside { gateway: IpAddr, cidr: IpCidr },
    #[error("{what} on {interface}: {source}")]
    Ioctl { what: &'static str, interface: String, source: io::Error },
}

/// Interface names under `sys_class_net` (e.g. /sys/class/net), sorted.
fn interfaces(sys_class_net: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The interface whose hardware address is `mac`.
pub fn interface_with_mac(sys_class_net: &Path, mac: &MacAddr) -> Option<String> {
    let want = mac.to_string();
    interfaces(sys_class_net).into_iter().find(|name| {
        std::fs::read_to_string(sys_class_net.join(name).join("address"))
            .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&want))
    })
}

/// The first Ethernet interface backed by a device (not lo, bridges, veths or tunnels).
pub fn first_physical_ethernet(sys_class_net: &Path) -> Option<String> {
    interfaces(sys_class_net).into_iter().find(|name| {
        let dir = sys_class_net.join(name);
        let ether = std::fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1");
        ether && dir.join("device").exists()
    })
}

/// The netmask of an IPv4 prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    Ipv4Addr::from(bits)
}

fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::from(netmask(prefix));
    u32::from(addr) & mask == u32::from(net) & mask
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in
    // because of sin_family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

struct Ioctls {
    sock: OwnedFd,
    interface: String,
}

impl Ioctls {
    fn new(interface: &str) -> io::Result<Self> {
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Self { sock, interface: interface.to_string() })
    }

    fn open(interface: &str) -> Result<Self, NetError> {
        Self::new(interface).map_err(|source| NetError::Ioctl {
            what: "socket",
            interface: interface.to_string(),
            source,
        })
    }

    fn call<T>(&self, what: &'static str, request: libc::Ioctl, arg: &mut T) -> Result<(), NetError> {
        // SAFETY: `arg` is the struct this request reads/writes (ifreq or rtentry), owned by
        // the caller for the duration of the call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), request, arg as *mut T) };
        if rc < 0 {
            return Err(NetError::Ioctl {
                what,
                interface: self.interface.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self) -> Result<(), NetError> {
        let mut req = ifreq(&self.interface);
        self.call("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        self.call("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
    }

    fn address(&self, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut req = ifreq(&self.interface);
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.call("SIOCSIFADDR", libc::SIOCSIFADDR, &mut req)?;
        let mut req = ifreq(&self.interface);
        req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix));
        self.call("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut req)
    }

    fn default_route(&self, gateway: Ipv4Addr) -> Result<(), NetError> {
        let mut dev: Vec<u8> = self.interface.bytes().chain([0]).collect();
        // SAFETY: rtentry is plain old data; all zeroes is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = dev.as_mut_ptr() as *mut libc::c_char;
        match self.call("SIOCADDRT", libc::SIOCADDRT, &mut rt) {
            Err(NetError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

/// What was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtConfig {
    pub interface: String,
    pub address: IpCidr,
    pub gateway: Option<IpAddr>,
}

/// Brings `interface` up; for `lo` the kernel then gives it 127.0.0.1/8 and ::1.
pub fn link_up(interface: &str) -> Result<(), NetError> {
    Ioctls::open(interface)?.up()
}

/// Finds the management interface, waiting up to `wait` for its driver to create it.
pub fn find_mgmt_interface(sys_class_net: &Path, mac: Option<&MacAddr>, wait: Duration) -> Result<String, NetError> {
    let deadline = Instant::now() + wait;
    loop {
        let found = match mac {
            Some(mac) => interface_with_mac(sys_class_net, mac),
            None => first_physical_ethernet(sys_class_net),
        };
        if let Some(name) = found {
            return Ok(name);
        }
        if Instant::now() >= deadline {
            return Err(match mac {
                Some(mac) => NetError::NoInterfaceWithMac(*mac),
                None => NetError::NoInterface,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Brings `interface` up with `address` and, when given, a default route via `gateway`.
pub fn configure(interface: &str, address: IpCidr, gateway: Option<IpAddr>) -> Result<MgmtConfig, NetError> {
    let IpAddr::V4(v4) = address.addr else {
        return Err(NetError::Ipv6(address.addr));
    };
    let gw = match gateway {
        None => None,
        Some(IpAddr::V6(g)) => return Err(NetError::Ipv6(IpAddr::V6(g))),
        Some(IpAddr::V4(g)) if !in_subnet(g, v4, address.prefix) => {
            return Err(NetError::GatewayOutside { gateway: IpAddr::V4(g), cidr: address })
        }
        Some(IpAddr::V4(g)) => Some(g),
    };
    let io = Ioctls::open(interface)?;
    io.address(v4, address.prefix)?;
    io.up()?;
    if let Some(g) = gw {
        io.default_route(g)?;
    }
    Ok(MgmtConfig { interface: interface.to_string(), address, gateway })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert!(in_subnet(Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15), 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 3, 2), Ipv4Addr::new(10, 0, 2, 15), 24));
    }

    fn fake_sysfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let iface = |name: &str, mac: &str, kind: &str, device: bool| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            if device {
                std::fs::create_dir_all(d.join("device")).unwrap();
            }
        };
        iface("lo", "00:00:00:00:00:00", "772", false);
        iface("br0", "52:54:00:00:00:99", "1", false);
        iface("ens4", "52:54:00:ce:7a:02", "1", true);
        iface("ens3", "52:54:00:ce:7a:01", "1", true);
        dir
    }

    #[test]
    fn the_interface_is_found_by_mac_or_as_the_first_physical_nic() {
        let sys = fake_sysfs();
        let mac: MacAddr = "52:54:00:CE:7A:02".parse().unwrap();
        assert_eq!(interface_with_mac(sys.path(), &mac).as_deref(), Some("ens4"));
        assert_eq!(first_physical_ethernet(sys.path()).as_deref(), Some("ens3"));
        let absent: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let err = find_mgmt_interface(sys.path(), Some(&absent), Duration::ZERO).unwrap_err();
        assert_eq!(err.to_string(), "no network interface with MAC 52:54:00:00:00:01");
    }

    #[test]
    fn bad_addresses_are_refused_before_touching_the_kernel() {
        let v6: IpCidr = "fd00::2/64".parse().unwrap();
        assert!(matches!(configure("x", v6, None), Err(NetError::Ipv6(_))));
        let v4: IpCidr = "10.0.2.15/24".parse().unwrap();
        let err = configure("x", v4, Some("10.9.9.1".parse().unwrap())).unwrap_err();
        assert_eq!(err.to_string(), "gateway 10.9.9.1 is not in 10.0.2.15/24");
    }
}
