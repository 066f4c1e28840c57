//! Self-validating names and identifiers used on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a name or identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong { kind: &'static str, value: String, max: usize },
    #[error("{kind} {value:?} has a character outside [a-z0-9-] or does not start with a letter")]
    BadCharacter { kind: &'static str, value: String },
    #[error("{kind} {value:?} is not a UUID")]
    NotUuid { kind: &'static str, value: String },
    #[error("node URL {value:?} must be http:// or https:// followed by a host")]
    BadUrl { value: String },
}

/// Longest task or provider name accepted.
pub const MAX_NAME_LEN: usize = 64;

pub(crate) fn check_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, value: value.to_owned(), max: MAX_NAME_LEN });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok {
        return Err(NameError::BadCharacter { kind, value: value.to_owned() });
    }
    Ok(())
}

/// Declares a string newtype checked on construction: `new`, `as_str`, `TryFrom<String>`,
/// `FromStr`, `Into<String>`, `Display`, `AsRef<str>`, `PartialEq<str>`, and serde through the
/// check (deserializing an invalid value fails with the check's error).
///
/// ```text
/// validated_name!(/** doc */ TaskName, "task name");               // check_name, NameError
/// validated_name!(/** doc */ VmName, VmNameError, check_vm_name);  // any check and error
/// ```
///
/// The check is a `fn(String) -> Result<String, Error>`: it returns the value to keep, so it
/// may normalise it (a node URL loses its trailing `/`).
macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $crate::names::validated_name!(
            $(#[$doc])* $name,
            $crate::names::NameError,
            |value: String| $crate::names::check_name($kind, &value).map(|()| value)
        );
    };
    ($(#[$doc:meta])* $name:ident, $error:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, $error> {
                let check: fn(String) -> Result<String, $error> = $check;
                check(value.into()).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(value: String) -> Result<Self, $error> {
                Self::new(value)
            }
        }
        impl std::str::FromStr for $name {
            type Err = $error;
            fn from_str(value: &str) -> Result<Self, $error> {
                Self::new(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}
pub(crate) use validated_name;

validated_name!(
    /// A task name such as `zfs-create`: lowercase letters, digits and dashes, starting with a
    /// letter, at most 64 characters.
    TaskName,
    "task name"
);
validated_name!(
    /// A provider's name, with the same rules as a task name.
    ProviderName,
    "provider name"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4())
            }
        }
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                uuid::Uuid::parse_str(value)
                    .map(Self)
                    .map_err(|_| NameError::NotUuid { kind: $kind, value: value.to_owned() })
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies one request end to end: chosen by the caller, unique (a UUID), and the key of
    /// the coordinator's journal entry.
    RequestId,
    "request id"
);
uuid_id!(
    /// Identifies one byte stream brokered by a coordinator.
    StreamId,
    "stream id"
);

validated_name!(
    /// The base URL of a node's coordinator HTTP API, e.g. `http://10.0.0.5:8080`.
    NodeUrl,
    NameError,
    check_node_url
);

/// `http://` or `https://` and a host; the trailing `/` is dropped.
fn check_node_url(value: String) -> Result<String, NameError> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| NameError::BadUrl { value: value.clone() })?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::BadUrl { value });
    }
    Ok(value.trim_end_matches('/').to_owned())
}

impl NodeUrl {
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// The server this URL reaches; `None` when its port is not a number.
    pub fn origin(&self) -> Option<Origin> {
        Origin::of(self)
    }
}

/// A URL's scheme, host and port: what says which server it reaches. Hosts compare without case
/// (IPv6 without brackets), a missing port is the scheme's, and a path does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of `url`; `None` when its port is not a number.
    pub fn of(url: &NodeUrl) -> Option<Self> {
        let https = url.is_https();
        let rest = url.as_str().split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            Some(port) => port.parse().ok()?,
            None if https => 443,
            None => 80,
        };
        Some(Self { https, host: host.to_ascii_lowercase(), port })
    }

    /// The host as an IP address, `localhost` as the loopback address.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        if self.host == "localhost" {
            return Some(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        self.host.parse().ok()
    }

    /// `host:port`, an IPv6 host in brackets: what a socket connects to.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`.
    pub fn url(&self) -> NodeUrl {
        let scheme = if self.https { "https" } else { "http" };
        NodeUrl::new(format!("{scheme}://{}", self.host_port())).expect("an origin is a valid node URL")
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.url().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_validated() {
        assert!(TaskName::new("zfs-create").is_ok());
        assert!(TaskName::new("node-info2").is_ok());
        assert!(matches!(TaskName::new(""), Err(NameError::Empty { .. })));
        assert!(matches!(TaskName::new("Zfs"), Err(NameError::BadCharacter { .. })));
        assert!(matches!(TaskName::new("-x"), Err(NameError::BadCharacter { .. })));
        assert!(matches!(TaskName::new("a/b"), Err(NameError::BadCharacter { .. })));
        assert!(matches!(TaskName::new("a".repeat(65)), Err(NameError::TooLong { .. })));
        let err = serde_json::from_str::<TaskName>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("outside [a-z0-9-]"), "{err}");
    }

    #[test]
    fn node_urls_are_validated() {
        assert_eq!(NodeUrl::new("http://10.0.0.5:8080/").unwrap().as_str(), "http://10.0.0.5:8080");
        assert!(NodeUrl::new("https://node").unwrap().is_https());
        assert!(NodeUrl::new("ftp://node").is_err());
        assert!(NodeUrl::new("http://").is_err());
        assert!(NodeUrl::new("http://a b").is_err());
        let url: NodeUrl = serde_json::from_str(r#""https://n1:8443/""#).unwrap();
        assert_eq!((url.as_ref(), url.to_string().as_str()), ("https://n1:8443", "https://n1:8443"));
        assert_eq!("http://n2".parse::<NodeUrl>().unwrap(), NodeUrl::new("http://n2").unwrap());
        let err = serde_json::from_str::<NodeUrl>(r#""ftp://node""#).unwrap_err();
        assert!(err.to_string().starts_with(&NodeUrl::new("ftp://node").unwrap_err().to_string()), "{err}");
    }

    #[test]
    fn origins_ignore_case_default_ports_and_paths() {
        let url = |s: &str| NodeUrl::new(s).unwrap();
        let origin = |s: &str| Origin::of(&url(s)).unwrap();
        assert_eq!(origin("http://Node-1:8080/"), origin("http://node-1:8080"));
        assert_eq!(origin("http://node-1/x/y"), origin("http://node-1:80"));
        assert_eq!(origin("https://node-1").port, 443);
        assert_eq!(origin("http://[::1]:8080").host, "::1");
        assert_eq!(origin("http://[::1]:8080").url().as_str(), "http://[::1]:8080");
        assert_eq!(origin("http://user@10.0.0.5:81?q").url().as_str(), "http://10.0.0.5:81");
        assert!(Origin::of(&url("http://node:port")).is_none());
        assert_ne!(origin("https://node:80"), origin("http://node:80"));
        assert_eq!(origin("http://[::1]").host_port(), "[::1]:80");
        assert_eq!(url("https://node").origin().unwrap().host_port(), "node:443");
    }

    #[test]
    fn request_ids_round_trip() {
        let id = RequestId::random();
        let text = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<RequestId>(&text).unwrap(), id);
        assert!("nope".parse::<RequestId>().is_err());
    }
}
