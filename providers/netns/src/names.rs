//! Self-validating names and addresses: a value of these types is always acceptable to the kernel.

use std::fmt;
use std::net::IpAddr;

/// Why a name or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {name:?} is {len} bytes, over the {max} allowed")]
    TooLong { what: &'static str, name: String, len: usize, max: usize },
    #[error("{what} {name:?} is not valid: {why}")]
    Invalid { what: &'static str, name: String, why: &'static str },
}

impl NameError {
    /// The stable reason code sent in error details.
    pub fn reason(&self) -> &'static str {
        match self {
            NameError::TooLong { what: "link name", .. } => "link-name-too-long",
            NameError::TooLong { .. } => "name-too-long",
            NameError::Invalid { what: "address", .. } => "invalid-address",
            NameError::Invalid { .. } => "invalid-name",
        }
    }
}

fn check_name(what: &'static str, name: &str, max: usize, extra_ok: &[char]) -> Result<(), NameError> {
    let invalid = |why| Err(NameError::Invalid { what, name: name.to_owned(), why });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > max {
        return Err(NameError::TooLong { what, name: name.to_owned(), len: name.len(), max });
    }
    if name == "." || name == ".." {
        return invalid("it is a path component");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || extra_ok.contains(&c)) {
        return invalid("only ASCII letters, digits and the characters - _ . are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub const MAX_LEN: usize = $max;

            pub fn new(name: &str) -> Result<Self, NameError> {
                check_name($what, name, $max, $extra)?;
                Ok(Self(name.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A named network namespace: the file name under /run/netns (room for a cluster
    /// bundle's, `bundle-` and an id of up to 64 bytes).
    NetnsName, "namespace name", 80, &['-', '_', '.']
);
name_type!(
    /// A network interface name: at most IFNAMSIZ - 1 = 15 bytes.
    LinkName, "link name", 15, &['-', '_', '.']
);
name_type!(
    /// The start of link names (the guard's `PREFIX*`): at most 14 bytes, so that a link name
    /// of 15 can carry at least one more character.
    LinkPrefix, "link name prefix", 14, &['-', '_', '.']
);
name_type!(
    /// A bundle id as the cluster names bundles.
    BundleId, "bundle id", 64, &['-', '_', '.', ':']
);

/// An address with its prefix length (`10.0.0.1/24`), host bits allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, NameError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(NameError::Invalid {
                what: "address",
                name: format!("{addr}/{prefix}"),
                why: "the prefix length exceeds the address size",
            });
        }
        Ok(Self { addr, prefix })
    }

    /// Parses `ADDR/LEN`; a bare address is a host route (/32 or /128).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let bad = |why| NameError::Invalid { what: "address", name: text.to_owned(), why };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("expected an IPv4 or IPv6 address, e.g. 10.0.0.1/24"))?;
        let prefix = match prefix {
            Some(p) => p.parse().map_err(|_| bad("the prefix length is not a number"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn network_bits(&self, prefix: u8) -> u128 {
        let host_bits = u32::from(self.width() - prefix);
        Self::bits(self.addr).checked_shr(host_bits).unwrap_or(0)
    }

    /// Whether the two networks share any address (same family, one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        self.network_bits(shorter) == other.network_bits(shorter)
    }

    /// fe80::/10, which every IPv6 link has on its own.
    pub fn is_link_local(&self) -> bool {
        matches!(self.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
    }

    /// The network itself (host bits cleared), for routes.
    pub fn network(&self) -> Cidr {
        let host_bits = u32::from(self.width() - self.prefix);
        let bits = Self::bits(self.addr).checked_shr(host_bits).unwrap_or(0).checked_shl(host_bits).unwrap_or(0);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Cidr { addr, prefix: self.prefix }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_longer_than_15_bytes_are_refused_with_their_reason() {
        assert!(LinkName::new("veth-0123456789").is_ok());
        let err = LinkName::new("veth-0123456789a").unwrap_err();
        assert_eq!(err.reason(), "link-name-too-long");
        assert!(err.to_string().contains("16 bytes, over the 15"), "{err}");
        for bad in ["", ".", "..", "a/b", "a b", "eth0:1"] {
            assert_eq!(LinkName::new(bad).unwrap_err().reason(), "invalid-name", "{bad:?}");
        }
        assert!(NetnsName::new("../etc").is_err());
        assert!(NetnsName::new(&"n".repeat(80)).is_ok());
        assert!(NetnsName::new(&"n".repeat(81)).is_err());
        assert!(BundleId::new("web:frontend").is_ok());
        assert!(LinkPrefix::new("cb").is_ok() && LinkPrefix::new(&"p".repeat(14)).is_ok());
        assert_eq!(LinkPrefix::new(&"p".repeat(15)).unwrap_err().reason(), "name-too-long");
        for bad in ["", "cb*", "c b", "cb/"] {
            assert_eq!(LinkPrefix::new(bad).unwrap_err().reason(), "invalid-name", "{bad:?}");
        }
    }

    #[test]
    fn cidrs_parse_and_overlap_by_network() {
        let a = Cidr::parse("10.1.0.1/24").unwrap();
        assert_eq!(a.to_string(), "10.1.0.1/24");
        assert_eq!(a.network().to_string(), "10.1.0.0/24");
        assert!(a.overlaps(&Cidr::parse("10.1.0.200/24").unwrap()));
        assert!(a.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(Cidr::parse("10.0.0.0/8").unwrap().overlaps(&a));
        assert!(!a.overlaps(&Cidr::parse("10.1.1.1/24").unwrap()));
        assert!(!a.overlaps(&Cidr::parse("fd00::1/64").unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().overlaps(&a));
        assert!(Cidr::parse("fd00::1/64").unwrap().overlaps(&Cidr::parse("fd00::2/128").unwrap()));
        assert!(Cidr::parse("fe80::1/64").unwrap().is_link_local());
        assert_eq!(Cidr::parse("10.0.0.1").unwrap().prefix(), 32);
        for bad in ["10.0.0.1/33", "fd00::/129", "10.0.0/24", "x/1", "10.0.0.1/a"] {
            assert_eq!(Cidr::parse(bad).unwrap_err().reason(), "invalid-address", "{bad}");
        }
    }
}
