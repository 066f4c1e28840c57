//! Node settings from the kernel command line (`cerana.*` keys).
//!
//! Parsing never fails: a key that is unknown, repeated or carries a malformed value is
//! recorded as a [`CmdlineProblem`] (init reports each on the console and as an event) and the
//! setting keeps its default, so a typo on the command line cannot stop a node from booting.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// Every `cerana.*` key init understands, in the order the README documents them.
pub const KNOWN_KEYS: &[&str] = &[
    "cerana.log",
    "cerana.rescue",
    "cerana.cluster_bootstrap",
    "cerana.cluster_ips",
    "cerana.boot_server",
    "cerana.mgmt_mac",
    "cerana.mgmt_ip",
    "cerana.mgmt_gw",
    "cerana.zfs_config",
    "cerana.initrd_hash",
    "cerana.api_token",
    "cerana.join_token",
    "cerana.hostname",
    "cerana.modules",
    "cerana.etcd_members",
    "cerana.etcd_grace",
];

/// Verbosity of init's own console messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" | "trace" => Ok(Self::Debug),
            _ => Err("expected error, warn, info or debug".into()),
        }
    }
}

/// How the local ZFS pool is set up: created/imported automatically or left to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZfsConfig {
    Auto,
    Manual,
}

impl FromStr for ZfsConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "manual" => Ok(Self::Manual),
            _ => Err("expected auto or manual".into()),
        }
    }
}

/// A MAC address, `aa:bb:cc:dd:ee:ff` (also accepts `-` separators), stored lower-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let malformed = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
        if parts.len() != 6 {
            return Err(malformed());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

/// An address with its prefix length, `172.16.10.2/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| format!("{s:?} has no /prefix (expected e.g. 172.16.10.2/16)"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix {prefix:?} is not a number from 0 to {max}"))?;
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<IpCidr> for String {
    fn from(c: IpCidr) -> String {
        c.to_string()
    }
}

/// The initrd's digest as the bootserver passes it: `sha256-<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitrdHash(String);

impl InitrdHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InitrdHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256-").ok_or_else(|| "expected sha256-<64 hex digits>".to_string())?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("expected sha256-<64 hex digits>".into());
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

/// The API bearer token. Its value never appears in `Debug` output or serialized settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken(<{} chars>)", self.0.len())
    }
}

impl Serialize for ApiToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl FromStr for ApiToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b);
        if s.len() < 16 || s.len() > 512 || !s.bytes().all(ok) {
            return Err("expected 16 to 512 token characters (letters, digits, -_.~+/=)".into());
        }
        Ok(Self(s.to_string()))
    }
}

/// A host name: 1-63 characters of letters, digits and inner hyphens (one DNS label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !valid {
            return Err("expected 1-63 letters, digits or inner hyphens".into());
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

/// A kernel module name as `modprobe` takes it (`-` and `_` are the same).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ModuleName(String);

impl ModuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModuleName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 55 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!("{s:?} is not a module name"));
        }
        Ok(Self(s.replace('-', "_")))
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why one command-line word was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CmdlineProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for CmdlineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every `cerana.*` setting; defaults apply where a key is absent or malformed.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Settings {
    pub log: LogLevel,
    pub rescue: bool,
    pub cluster_bootstrap: bool,
    pub cluster_ips: Vec<IpAddr>,
    pub boot_server: Option<String>,
    pub mgmt_mac: Option<MacAddr>,
    pub mgmt_ip: Option<IpCidr>,
    pub mgmt_gw: Option<IpAddr>,
    pub zfs_config: Option<ZfsConfig>,
    pub initrd_hash: Option<InitrdHash>,
    pub api_token: Option<ApiToken>,
    /// The boot script's one-time join token; `cerana-bootserver join` spends it on the node's
    /// certificate. Kept here only to be checked and redacted.
    pub join_token: Option<ApiToken>,
    pub hostname: Option<Hostname>,
    pub modules: Vec<ModuleName>,
    /// Voters of the cluster store's quorum: 1, 3 or 5 (cerana-quorum reads it too).
    pub etcd_members: Option<u8>,
    /// Seconds a voter may be unreachable before it is replaced (5 to 3600).
    pub etcd_grace: Option<u64>,
}

/// The settings and everything that was wrong with the command line they came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedCmdline {
    pub settings: Settings,
    pub problems: Vec<CmdlineProblem>,
}

/// Splits a command line into words the way the kernel does: whitespace separates words, and
/// double quotes group a value containing spaces (`key="a b"`); the quotes are removed.
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

fn parse_flag(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("1") | Some("true") | Some("yes") | Some("on") => Ok(true),
        Some("0") | Some("false") | Some("no") | Some("off") => Ok(false),
        Some(_) => Err("expected no value, or one of 1/0, true/false, yes/no, on/off".into()),
    }
}

fn parse_list<T: FromStr<Err = E>, E: fmt::Display>(value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| item.parse::<T>().map_err(|e| format!("item {item:?}: {e}")))
        .collect()
}

fn required(value: Option<&str>) -> Result<&str, String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err("needs a value (key=value)".into()),
    }
}

fn parse_value<T: FromStr>(value: Option<&str>) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    let v = required(value)?;
    v.parse::<T>().map_err(|e| format!("{v:?}: {e}"))
}

fn parse_boot_server(value: Option<&str>) -> Result<String, String> {
    let v = required(value)?;
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| format!("{v:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.chars().any(char::is_whitespace) {
        return Err(format!("{v:?} has no host"));
    }
    Ok(v.to_string())
}

impl Settings {
    /// Applies one `cerana.*` word; `value` is `None` for a bare key.
    fn apply(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        match key {
            "cerana.log" => self.log = parse_value(value)?,
            "cerana.rescue" => self.rescue = parse_flag(value)?,
            "cerana.cluster_bootstrap" => self.cluster_bootstrap = parse_flag(value)?,
            "cerana.cluster_ips" => self.cluster_ips = parse_list(required(value)?)?,
            "cerana.boot_server" => self.boot_server = Some(parse_boot_server(value)?),
            "cerana.mgmt_mac" => self.mgmt_mac = Some(parse_value(value)?),
            "cerana.mgmt_ip" => self.mgmt_ip = Some(parse_value(value)?),
            "cerana.mgmt_gw" => self.mgmt_gw = Some(parse_value(value)?),
            "cerana.zfs_config" => self.zfs_config = Some(parse_value(value)?),
            "cerana.initrd_hash" => self.initrd_hash = Some(parse_value(value)?),
            // The token's value is never echoed back in a problem message.
            "cerana.api_token" => {
                let v = required(value)?;
                self.api_token = Some(v.parse().map_err(|e: String| e)?);
            }
            "cerana.join_token" => {
                let v = required(value)?;
                self.join_token = Some(v.parse().map_err(|e: String| e)?);
            }
            "cerana.hostname" => self.hostname = Some(parse_value(value)?),
            "cerana.modules" => self.modules = parse_list(required(value)?)?,
            "cerana.etcd_members" => {
                let v = required(value)?;
                self.etcd_members =
                    Some(v.parse().ok().filter(|n| matches!(n, 1 | 3 | 5)).ok_or("expected 1, 3 or 5")?);
            }
            "cerana.etcd_grace" => {
                let v = required(value)?;
                let secs = v.trim_end_matches('s').parse().ok().filter(|s| (5..=3600).contains(s));
                self.etcd_grace = Some(secs.ok_or("expected seconds from 5 to 3600")?);
            }
            _ => return Err(unknown_key_message(key)),
        }
        Ok(())
    }

    /// Whether a table condition holds: `key` (flag set or value present), `!key`, or
    /// `key=value` (the value as written on the command line). Unknown keys never hold.
    pub fn condition_holds(&self, condition: &Condition) -> bool {
        let value = self.value_of(&condition.key);
        let holds = match (&condition.equals, value) {
            (None, Some(v)) => v != "false",
            (None, None) => false,
            (Some(want), Some(v)) => *want == v,
            (Some(_), None) => false,
        };
        holds != condition.negated
    }

    /// The setting's value in command-line spelling, `None` when unset.
    fn value_of(&self, key: &str) -> Option<String> {
        fn join<T: ToString>(items: &[T]) -> Option<String> {
            (!items.is_empty()).then(|| items.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
        }
        let flag = |b: bool| Some(b.to_string());
        match key {
            "cerana.log" => serde_json::to_value(self.log).ok().and_then(|v| v.as_str().map(str::to_string)),
            "cerana.rescue" => flag(self.rescue),
            "cerana.cluster_bootstrap" => flag(self.cluster_bootstrap),
            "cerana.cluster_ips" => join(&self.cluster_ips),
            "cerana.boot_server" => self.boot_server.clone(),
            "cerana.mgmt_mac" => self.mgmt_mac.map(|m| m.to_string()),
            "cerana.mgmt_ip" => self.mgmt_ip.map(|m| m.to_string()),
            "cerana.mgmt_gw" => self.mgmt_gw.map(|m| m.to_string()),
            "cerana.zfs_config" => self.zfs_config.map(|z| match z {
                ZfsConfig::Auto => "auto".to_string(),
                ZfsConfig::Manual => "manual".to_string(),
            }),
            "cerana.initrd_hash" => self.initrd_hash.as_ref().map(|h| h.0.clone()),
            "cerana.api_token" => self.api_token.as_ref().map(|_| "set".to_string()),
            "cerana.join_token" => self.join_token.as_ref().map(|_| "set".to_string()),
            "cerana.hostname" => self.hostname.as_ref().map(|h| h.0.clone()),
            "cerana.modules" => join(&self.modules),
            "cerana.etcd_members" => self.etcd_members.map(|n| n.to_string()),
            "cerana.etcd_grace" => self.etcd_grace.map(|s| s.to_string()),
            _ => None,
        }
    }
}

fn unknown_key_message(key: &str) -> String {
    let near = KNOWN_KEYS
        .iter()
        .find(|k| edit_distance(k, key) <= 2)
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    format!("unknown setting{near}")
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A condition on a setting, as written in the service table: `cerana.cluster_bootstrap`,
/// `!cerana.rescue` or `cerana.zfs_config=auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub negated: bool,
    pub key: String,
    pub equals: Option<String>,
}

impl FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (negated, rest) = match s.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (key, equals) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (rest, None),
        };
        if !KNOWN_KEYS.contains(&key) {
            return Err(format!("condition {s:?}: {}", unknown_key_message(key)));
        }
        Ok(Self { negated, key: key.to_string(), equals })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        if let Some(v) = &self.equals {
            write!(f, "={v}")?;
        }
        Ok(())
    }
}

/// Parses a whole kernel command line. Words not starting with `cerana.` belong to the kernel
/// and are ignored; a later occurrence of a key overrides an earlier one and is reported.
pub fn parse(cmdline: &str) -> ParsedCmdline {
    let mut parsed = ParsedCmdline::default();
    let mut seen: Vec<String> = Vec::new();
    for word in split_words(cmdline) {
        if !word.starts_with("cerana.") {
            continue;
        }
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        if let Err(message) = parsed.settings.apply(key, value) {
            parsed.problems.push(CmdlineProblem { key: key.to_string(), message });
            continue;
        }
        if seen.iter().any(|k| k == key) {
            parsed.problems.push(CmdlineProblem {
                key: key.to_string(),
                message: "given more than once; the last value wins".into(),
            });
        } else {
            seen.push(key.to_string());
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet cerana.rescue=0 cerana.cluster_bootstrap \
        cerana.cluster_ips=10.0.0.1,10.0.0.2 cerana.boot_server=http://10.0.0.1/ \
        cerana.mgmt_mac=52:54:00:AB:cd:01 cerana.mgmt_ip=172.16.10.2/16 cerana.mgmt_gw=172.16.0.1 \
        cerana.zfs_config=auto cerana.log=debug \
        cerana.initrd_hash=sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
        cerana.api_token=0123456789abcdef0123 cerana.hostname=Node-1 cerana.modules=zfs,virtio-net \
        cerana.etcd_members=5 cerana.etcd_grace=30s \
        cerana.join_token=cerana-join-0123456789ab-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_every_known_key() {
        let p = parse(GOOD);
        assert_eq!(p.problems, vec![]);
        let s = p.settings;
        assert!(s.cluster_bootstrap);
        assert!(!s.rescue);
        assert_eq!(s.log, LogLevel::Debug);
        assert_eq!(s.cluster_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
        assert_eq!(s.boot_server.as_deref(), Some("http://10.0.0.1/"));
        assert_eq!(s.mgmt_mac.unwrap().to_string(), "52:54:00:ab:cd:01");
        assert_eq!(s.mgmt_ip.unwrap().to_string(), "172.16.10.2/16");
        assert_eq!(s.mgmt_gw, Some("172.16.0.1".parse().unwrap()));
        assert_eq!(s.zfs_config, Some(ZfsConfig::Auto));
        assert!(s.initrd_hash.is_some());
        assert_eq!(s.api_token.unwrap().expose(), "0123456789abcdef0123");
        assert_eq!(s.hostname.unwrap().as_str(), "node-1");
        let modules: Vec<&str> = s.modules.iter().map(ModuleName::as_str).collect();
        assert_eq!(modules, ["zfs", "virtio_net"]);
        assert_eq!((s.etcd_members, s.etcd_grace), (Some(5), Some(30)));
    }

    #[test]
    fn every_documented_key_is_accepted() {
        for key in KNOWN_KEYS {
            assert!(GOOD.contains(key), "{key} is missing from the good command line");
        }
    }

    #[test]
    fn garbage_is_reported_and_never_fatal() {
        let p = parse(
            "cerana.mgmt_mac=zz:zz cerana.bogus=1 cerana.clustr_ips=1.2.3.4 cerana.zfs_config=maybe \
             cerana.cluster_ips=1.2.3.4,notanip cerana.mgmt_ip=10.0.0.1/40 cerana.mgmt_ip=10.0.0.1 \
             cerana.rescue=perhaps cerana.hostname=-bad- cerana.api_token=short cerana.log= \
             cerana.boot_server=ftp://x cerana.initrd_hash=md5-abc cerana.modules=a/b \
             cerana.etcd_members=2 cerana.etcd_grace=2h \
             \u{0}\u{1}== cerana. cerana.rescue",
        );
        let keys: Vec<&str> = p.problems.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cerana.mgmt_mac",
                "cerana.bogus",
                "cerana.clustr_ips",
                "cerana.zfs_config",
                "cerana.cluster_ips",
                "cerana.mgmt_ip",
                "cerana.mgmt_ip",
                "cerana.rescue",
                "cerana.hostname",
                "cerana.api_token",
                "cerana.log",
                "cerana.boot_server",
                "cerana.initrd_hash",
                "cerana.modules",
                "cerana.etcd_members",
                "cerana.etcd_grace",
                "cerana.",
            ]
        );
        assert!(p.problems[2].message.contains("did you mean cerana.cluster_ips"));
        // The good word after all the garbage still counts.
        assert!(p.settings.rescue);
        assert_eq!(p.settings.mgmt_mac, None);
        assert!(p.settings.cluster_ips.is_empty());
        // The rejected token is never echoed.
        assert!(p.problems.iter().all(|x| !x.message.contains("short")));
    }

    #[test]
    fn quotes_group_and_later_keys_win() {
        let p = parse(r#"foo="a b" cerana.hostname="n1" cerana.hostname=n2"#);
        assert_eq!(p.settings.hostname.unwrap().as_str(), "n2");
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.contains("more than once"));
        assert_eq!(split_words(r#"a "b c"  d="e f" "#), ["a", "b c", "d=e f"]);
    }

    #[test]
    fn flags_take_explicit_values() {
        assert!(!parse("cerana.rescue=0").settings.rescue);
        assert!(parse("cerana.rescue=yes").settings.rescue);
    }

    #[test]
    fn token_is_redacted_in_debug_and_json() {
        let s = parse("cerana.api_token=supersecrettoken123 cerana.join_token=cerana-join-0123456789ab-secretjoin")
            .settings;
        assert!(s.join_token.is_some());
        for shown in [format!("{s:?}"), serde_json::to_string(&s).unwrap()] {
            assert!(!shown.contains("supersecret") && !shown.contains("secretjoin"), "{shown}");
        }
    }

    #[test]
    fn conditions() {
        let s = parse("cerana.cluster_bootstrap cerana.zfs_config=manual").settings;
        let holds = |c: &str| s.condition_holds(&c.parse().unwrap());
        assert!(holds("cerana.cluster_bootstrap"));
        assert!(!holds("!cerana.cluster_bootstrap"));
        assert!(!holds("cerana.rescue"));
        assert!(holds("!cerana.rescue"));
        assert!(holds("cerana.zfs_config=manual"));
        assert!(!holds("cerana.zfs_config=auto"));
        assert!(!holds("cerana.boot_server"));
        assert!("cerana.nope".parse::<Condition>().is_err());
        assert_eq!("!cerana.zfs_config=auto".parse::<Condition>().unwrap().to_string(), "!cerana.zfs_config=auto");
    }
}
