//! DHCPv4: full (address pool), proxyDHCP (boot information only) and relayed requests.
//!
//! [`DhcpService::handle`] turns one received datagram into at most one reply and does no I/O
//! of its own, so it is unit-tested and fuzzed directly; [`serve`] runs it on a socket bound
//! to one interface.

use crate::config::{BootConfig, DhcpMode, PoolConfig};
use crate::events::{EventLog, EventSource};
use crate::lease::{AllocError, Allocator};
use cerana_protocol::tasks::boot::{BootEventKind, DhcpClientInfo, MacAddr};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server port: UEFI firmware and iPXE send their proxyDHCP REQUEST here.
pub const PXE_PORT: u16 = 4011;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const HEADER_LEN: usize = 236;

/// Why a datagram is not a DHCP request we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0} bytes is shorter than a DHCP header with magic cookie (240)")]
    TooShort(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {htype} length {hlen}: only Ethernet (1, 6) is served")]
    Hardware { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie")]
    NoCookie,
    #[error("option {code} at offset {offset} runs past the end of the packet")]
    Truncated { code: u8, offset: usize },
    #[error("option {code} has length {len}, expected {expected}")]
    OptionLength { code: u8, len: usize, expected: &'static str },
    #[error("option {code} appears twice")]
    Duplicate { code: u8 },
    #[error("no DHCP message type (option 53): BOOTP is not served")]
    NoMessageType,
    #[error("the dhcproto codec refused it: {0}")]
    Codec(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("malformed packet: {0}")]
    Malformed(#[from] Malformed),
    #[error("lease store: {0}")]
    Store(AllocError),
    #[error("cannot encode the reply: {0}")]
    Encode(String),
}

/// Which socket a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Dhcp,
    Pxe,
}

/// A reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub to: SocketAddrV4,
    pub kind: MessageType,
}

/// What became of a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Reply(Reply),
    /// Nothing to send (the RFC says stay silent, or the request is not ours); the reason is logged.
    Ignored(String),
}

/// Options we read, validated on the raw bytes before the codec sees them (the codec trusts
/// lengths of fixed-size options and would misread the rest of the packet).
const KEPT_OPTIONS: &[u8] = &[12, 50, 53, 54, 55, 57, 60, 61, 77, 82, 93, 97];

/// What the raw pass found out about the client.
#[derive(Debug, Default, Clone)]
struct RawInfo {
    arch: Option<u16>,
    ipxe: bool,
    pxe: bool,
    guid: Option<Vec<u8>>,
}

/// Checks the fixed header and every option's framing and length; returns a copy of the
/// packet holding only the options in [`KEPT_OPTIONS`], which the codec can decode safely.
fn sanitize(data: &[u8]) -> Result<(Vec<u8>, RawInfo), Malformed> {
    if data.len() < HEADER_LEN + 4 {
        return Err(Malformed::TooShort(data.len()));
    }
    if data[0] != 1 {
        return Err(Malformed::NotRequest(data[0]));
    }
    if data[1] != 1 || data[2] != 6 {
        return Err(Malformed::Hardware { htype: data[1], hlen: data[2] });
    }
    if data[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(Malformed::NoCookie);
    }
    let mut out = data[..HEADER_LEN + 4].to_vec();
    let mut info = RawInfo::default();
    let mut seen = [false; 256];
    let mut i = HEADER_LEN + 4;
    while i < data.len() {
        let code = data[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = *data.get(i + 1).ok_or(Malformed::Truncated { code, offset: i })? as usize;
        let value = data.get(i + 2..i + 2 + len).ok_or(Malformed::Truncated { code, offset: i })?;
        i += 2 + len;
        let bad = |expected| Err(Malformed::OptionLength { code, len, expected });
        let ok = match code {
            53 | 52 => len == 1,
            1 | 50 | 51 | 54 | 58 | 59 => len == 4,
            57 => len == 2,
            3 | 6 => len >= 4 && len.is_multiple_of(4),
            93 => len >= 2 && len.is_multiple_of(2),
            97 => len == 17 && value[0] == 0,
            61 | 82 => len >= 2,
            12 | 55 | 60 | 77 => len >= 1,
            _ => true,
        };
        if !ok {
            return bad(match code {
                53 | 52 => "1",
                1 | 50 | 51 | 54 | 58 | 59 => "4",
                57 => "2",
                3 | 6 => "a multiple of 4",
                93 => "a multiple of 2",
                97 => "17 (type 0 + GUID)",
                _ => "at least 1 (2 for options 61 and 82)",
            });
        }
        if !KEPT_OPTIONS.contains(&code) {
            continue;
        }
        if std::mem::replace(&mut seen[code as usize], true) {
            return Err(Malformed::Duplicate { code });
        }
        match code {
            93 => info.arch = Some(u16::from_be_bytes([value[0], value[1]])),
            77 => info.ipxe = value.windows(4).any(|w| w == b"iPXE"),
            60 => info.pxe = value.starts_with(b"PXEClient"),
            97 => info.guid = Some(value.to_vec()),
            82 => {
                // Sub-options must tile the option exactly; the codec assumes they do.
                let mut j = 0;
                while j < value.len() {
                    let sub_len = *value.get(j + 1).ok_or(Malformed::OptionLength {
                        code,
                        len,
                        expected: "well-formed sub-options",
                    })? as usize;
                    j += 2 + sub_len;
                }
                if j != value.len() {
                    return bad("well-formed sub-options");
                }
            }
            _ => {}
        }
        out.extend_from_slice(&data[i - 2 - len..i]);
    }
    if !seen[53] {
        return Err(Malformed::NoMessageType);
    }
    out.push(255);
    Ok((out, info))
}

/// A decoded, validated request.
#[derive(Debug)]
struct Request {
    msg: Message,
    mac: MacAddr,
    kind: MessageType,
    info: RawInfo,
}

impl Request {
    fn parse(data: &[u8]) -> Result<Request, Malformed> {
        let (clean, info) = sanitize(data)?;
        let msg = Message::decode(&mut Decoder::new(&clean)).map_err(|e| Malformed::Codec(e.to_string()))?;
        let mac = MacAddr::from_slice(msg.chaddr()).ok_or(Malformed::Hardware { htype: 1, hlen: msg.hlen() })?;
        let kind = msg.opts().msg_type().ok_or(Malformed::NoMessageType)?;
        Ok(Request { msg, mac, kind, info })
    }

    fn ipv4_opt(&self, code: OptionCode) -> Option<Ipv4Addr> {
        match self.msg.opts().get(code)? {
            DhcpOption::RequestedIpAddress(ip) | DhcpOption::ServerIdentifier(ip) => Some(*ip),
            _ => None,
        }
    }

    fn relay(&self) -> Option<Ipv4Addr> {
        Some(self.msg.giaddr()).filter(|ip| !ip.is_unspecified())
    }

    fn client(&self) -> DhcpClientInfo {
        DhcpClientInfo { arch: self.info.arch, ipxe: self.info.ipxe, pxe: self.info.pxe, relay: self.relay() }
    }
}

/// Boot file names and the script URL handed to clients.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub bios: String,
    pub uefi: String,
    /// `http://<server>/boot.ipxe` for iPXE clients.
    pub script_url: String,
}

impl BootFiles {
    pub fn new(boot: &BootConfig, server_ip: Ipv4Addr, http_port: u16) -> Self {
        let host = if http_port == 80 { server_ip.to_string() } else { format!("{server_ip}:{http_port}") };
        BootFiles {
            bios: boot.bios_bootfile.clone(),
            uefi: boot.uefi_bootfile.clone(),
            script_url: format!("http://{host}/boot.ipxe"),
        }
    }

    /// None for a client that is not network-booting; an error for a firmware we have no loader for.
    fn for_client(&self, info: &RawInfo) -> Result<Option<&str>, String> {
        if info.ipxe {
            return Ok(Some(&self.script_url));
        }
        if !info.pxe {
            return Ok(None);
        }
        match info.arch.unwrap_or(0) {
            0 => Ok(Some(&self.bios)),
            7 | 9 => Ok(Some(&self.uefi)),
            other => Err(format!("no boot loader for client architecture {other} (option 93)")),
        }
    }
}

/// The DHCP logic of one server.
#[derive(Debug)]
pub struct DhcpService {
    server_ip: Ipv4Addr,
    mode: DhcpMode,
    pool: Option<PoolConfig>,
    allocator: Option<Mutex<Allocator>>,
    boot: BootFiles,
    events: Arc<EventLog>,
}

impl DhcpService {
    /// `allocator` is required in full mode and unused otherwise.
    pub fn new(
        server_ip: Ipv4Addr,
        mode: DhcpMode,
        allocator: Option<Allocator>,
        boot: BootFiles,
        events: Arc<EventLog>,
    ) -> Self {
        let pool = allocator.as_ref().map(|a| a.pool().clone());
        DhcpService { server_ip, mode, pool, allocator: allocator.map(Mutex::new), boot, events }
    }

    pub fn mode(&self) -> DhcpMode {
        self.mode
    }

    /// `cerana.mgmt_ip=` (and `cerana.mgmt_gw=`) for the MAC's lease in full mode, so a node
    /// booted from us keeps the address it was given (init configures it statically).
    pub fn mgmt_settings(&self, mac: MacAddr) -> Option<String> {
        let pool = self.pool.as_ref()?;
        let lease = self.lock(self.allocator.as_ref()?).lease_of(mac).ok()??;
        let mut s = format!("cerana.mgmt_ip={}/{}", lease.ip, pool.net.prefix_len());
        if let Some(gw) = pool.gateway {
            s.push_str(&format!(" cerana.mgmt_gw={gw}"));
        }
        Some(s)
    }

    /// The leases, for `/leases` and tests.
    pub fn leases(&self) -> Vec<crate::lease::Lease> {
        self.allocator.as_ref().and_then(|a| self.lock(a).leases().ok()).unwrap_or_default()
    }

    fn lock<'a>(&self, a: &'a Mutex<Allocator>) -> std::sync::MutexGuard<'a, Allocator> {
        a.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one datagram received from `from` on `port`; `now` is seconds since the epoch.
    pub fn handle(&self, data: &[u8], from: SocketAddrV4, port: Port, now: u64) -> Result<Handled, DhcpError> {
        let req = Request::parse(data)?;
        match (self.mode, port) {
            (DhcpMode::Off, _) => Ok(Handled::Ignored("DHCP is off".into())),
            (DhcpMode::Full, Port::Dhcp) => self.full(&req, now),
            (DhcpMode::Full, Port::Pxe) => Ok(Handled::Ignored("port 4011 is only served in proxy mode".into())),
            (DhcpMode::Proxy, _) => self.proxy(&req, from, port),
        }
    }

    fn record(&self, req: &Request, kind: BootEventKind) {
        self.events.record(EventSource::Dhcp, req.mac, kind);
    }

    fn full(&self, req: &Request, now: u64) -> Result<Handled, DhcpError> {
        let (Some(allocator), Some(pool)) = (&self.allocator, &self.pool) else {
            return Ok(Handled::Ignored("full mode without a pool".into()));
        };
        if let Some(relay) = req.relay() {
            if !pool.net.contains(relay) {
                return Ok(Handled::Ignored(format!("relay {relay} is outside the pool's network {}", pool.net)));
            }
        }
        let mac = req.mac;
        match req.kind {
            MessageType::Discover => {
                self.record(req, BootEventKind::DhcpDiscover { client: req.client() });
                let requested = req.ipv4_opt(OptionCode::RequestedIpAddress);
                let ip = match self.lock(allocator).offer(mac, requested, now) {
                    Ok(ip) => ip,
                    Err(AllocError::Store(e)) => return Err(DhcpError::Store(AllocError::Store(e))),
                    Err(e) => {
                        self.record(req, BootEventKind::DhcpIgnored { reason: e.to_string() });
                        return Ok(Handled::Ignored(e.to_string()));
                    }
                };
                let bootfile = self.bootfile(req);
                self.record(req, BootEventKind::DhcpOffer { ip: Some(ip), bootfile: bootfile.clone() });
                self.reply(req, MessageType::Offer, Some(ip), Some(pool), bootfile.as_deref())
            }
            MessageType::Request => {
                let server_id = req.ipv4_opt(OptionCode::ServerIdentifier);
                let requested = req.ipv4_opt(OptionCode::RequestedIpAddress);
                let ciaddr = Some(req.msg.ciaddr()).filter(|ip| !ip.is_unspecified());
                self.record(req, BootEventKind::DhcpRequest { client: req.client(), ip: requested.or(ciaddr) });
                if let Some(sid) = server_id {
                    if sid != self.server_ip {
                        self.lock(allocator).forget_offer(mac);
                        return Ok(Handled::Ignored(format!("client chose server {sid}")));
                    }
                }
                // SELECTING and INIT-REBOOT name the address in option 50, RENEWING and
                // REBINDING in ciaddr.
                let Some(ip) = requested.or(ciaddr) else {
                    return self.nak(req, "REQUEST names no address".into());
                };
                if !pool.net.contains(ip) {
                    return self.nak(req, format!("{ip} is not on network {}", pool.net));
                }
                let committed = self.lock(allocator).commit(mac, ip, now);
                match committed {
                    Ok(lease) => {
                        // What the lease has left: all of it, unless it was answered unchanged.
                        let left = u32::try_from(lease.expires.saturating_sub(now)).unwrap_or(u32::MAX);
                        let granted = PoolConfig { lease_secs: left.clamp(1, pool.lease_secs), ..pool.clone() };
                        let bootfile = self.bootfile(req);
                        self.record(
                            req,
                            BootEventKind::DhcpAck {
                                ip: Some(ip),
                                bootfile: bootfile.clone(),
                                lease_secs: Some(granted.lease_secs),
                            },
                        );
                        self.reply(req, MessageType::Ack, Some(ip), Some(&granted), bootfile.as_deref())
                    }
                    Err(AllocError::Store(e)) => Err(DhcpError::Store(AllocError::Store(e))),
                    Err(e @ AllocError::NotKnown { .. }) => {
                        self.record(req, BootEventKind::DhcpIgnored { reason: e.to_string() });
                        Ok(Handled::Ignored(e.to_string()))
                    }
                    Err(e) => self.nak(req, e.to_string()),
                }
            }
            MessageType::Release => {
                let ip = req.msg.ciaddr();
                self.record(req, BootEventKind::DhcpRelease { ip });
                let released = self.lock(allocator).release(mac, ip, now).map_err(DhcpError::Store)?;
                Ok(Handled::Ignored(if released {
                    format!("released {ip}")
                } else {
                    format!("release of {ip}, which {mac} does not hold")
                }))
            }
            MessageType::Decline => {
                let ip = req.ipv4_opt(OptionCode::RequestedIpAddress);
                self.record(req, BootEventKind::DhcpDecline { ip });
                if let Some(ip) = ip {
                    self.lock(allocator).decline(mac, ip, now).map_err(DhcpError::Store)?;
                }
                Ok(Handled::Ignored("decline recorded".into()))
            }
            MessageType::Inform => {
                let bootfile = self.bootfile(req);
                self.reply(req, MessageType::Ack, None, Some(pool), bootfile.as_deref())
            }
            other => Ok(Handled::Ignored(format!("{other:?} is not a client message"))),
        }
    }

    fn proxy(&self, req: &Request, from: SocketAddrV4, port: Port) -> Result<Handled, DhcpError> {
        if !req.info.pxe && !req.info.ipxe {
            return Ok(Handled::Ignored("not a PXE client; proxyDHCP answers only PXE clients".into()));
        }
        match (req.kind, port) {
            (MessageType::Discover, Port::Dhcp) => {
                self.record(req, BootEventKind::DhcpDiscover { client: req.client() });
                let bootfile = self.bootfile(req);
                if bootfile.is_none() {
                    return Ok(Handled::Ignored("no boot file for this client".into()));
                }
                self.record(req, BootEventKind::DhcpOffer { ip: None, bootfile: bootfile.clone() });
                self.reply(req, MessageType::Offer, None, None, bootfile.as_deref())
            }
            (MessageType::Request, Port::Pxe) => {
                self.record(req, BootEventKind::DhcpRequest { client: req.client(), ip: None });
                let bootfile = self.bootfile(req);
                if bootfile.is_none() {
                    return Ok(Handled::Ignored("no boot file for this client".into()));
                }
                self.record(req, BootEventKind::DhcpAck { ip: None, bootfile: bootfile.clone(), lease_secs: None });
                let mut handled = self.reply(req, MessageType::Ack, None, None, bootfile.as_deref())?;
                if let Handled::Reply(reply) = &mut handled {
                    if req.relay().is_none() {
                        reply.to = from;
                    }
                }
                Ok(handled)
            }
            (MessageType::Request, Port::Dhcp) => {
                // The client accepted the real server's offer; remember its address so its
                // TFTP and HTTP requests are attributed to it.
                let ip = req
                    .ipv4_opt(OptionCode::RequestedIpAddress)
                    .or(Some(req.msg.ciaddr()).filter(|ip| !ip.is_unspecified()));
                if let Some(ip) = ip {
                    self.events.learn_ip(ip, req.mac);
                }
                Ok(Handled::Ignored("REQUEST for the address server".into()))
            }
            (other, _) => Ok(Handled::Ignored(format!("{other:?} is not answered in proxy mode"))),
        }
    }

    fn bootfile(&self, req: &Request) -> Option<String> {
        match self.boot.for_client(&req.info) {
            Ok(file) => file.map(str::to_string),
            Err(reason) => {
                tracing::warn!(mac = %req.mac, %reason, "no boot file offered");
                self.record(req, BootEventKind::DhcpIgnored { reason });
                None
            }
        }
    }

    fn nak(&self, req: &Request, reason: String) -> Result<Handled, DhcpError> {
        self.record(req, BootEventKind::DhcpNak { reason: reason.clone() });
        tracing::info!(mac = %req.mac, %reason, "DHCPNAK");
        self.reply(req, MessageType::Nak, None, None, None)
    }

    fn reply(
        &self,
        req: &Request,
        kind: MessageType,
        yiaddr: Option<Ipv4Addr>,
        pool: Option<&PoolConfig>,
        bootfile: Option<&str>,
    ) -> Result<Handled, DhcpError> {
        let m = &req.msg;
        let mut r = Message::new_with_id(
            m.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::UNSPECIFIED,
            m.giaddr(),
            m.chaddr(),
        );
        r.set_opcode(Opcode::BootReply).set_flags(m.flags());
        if kind == MessageType::Ack {
            r.set_ciaddr(m.ciaddr());
        }
        let opts = r.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.server_ip));
        if kind != MessageType::Nak {
            if let Some(file) = bootfile {
                r.set_siaddr(self.server_ip).set_fname_str(file);
            }
            let opts = r.opts_mut();
            if let Some(pool) = pool {
                if yiaddr.is_some() {
                    opts.insert(DhcpOption::AddressLeaseTime(pool.lease_secs));
                    opts.insert(DhcpOption::Renewal(pool.lease_secs / 2));
                    opts.insert(DhcpOption::Rebinding(pool.lease_secs / 8 * 7));
                }
                opts.insert(DhcpOption::SubnetMask(pool.net.netmask()));
                if let Some(gw) = pool.gateway {
                    opts.insert(DhcpOption::Router(vec![gw]));
                }
                if !pool.dns.is_empty() {
                    opts.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
                }
            }
            if self.mode == DhcpMode::Proxy {
                // PXE spec: identify as a PXE server and tell the client to download the boot
                // file named here without boot-server discovery (PXE_DISCOVERY_CONTROL = 8).
                opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
                if let Some(guid) = &req.info.guid {
                    opts.insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
                }
            }
        }
        // RFC 3046: a relay agent's information is echoed back to it.
        if let Some(info) = m.opts().get(OptionCode::RelayAgentInformation) {
            r.opts_mut().insert(info.clone());
        }
        let bytes = r.to_vec().map_err(|e| DhcpError::Encode(e.to_string()))?;
        Ok(Handled::Reply(Reply { bytes, to: destination(m, kind), kind }))
    }
}

/// RFC 2131 4.1: to the relay if relayed; unicast to a client that has an address; otherwise
/// broadcast (the client cannot answer ARP for an address it does not have yet).
fn destination(m: &Message, kind: MessageType) -> SocketAddrV4 {
    if !m.giaddr().is_unspecified() {
        return SocketAddrV4::new(m.giaddr(), SERVER_PORT);
    }
    if kind != MessageType::Nak && !m.ciaddr().is_unspecified() {
        return SocketAddrV4::new(m.ciaddr(), CLIENT_PORT);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
}

/// Builds a request as a client would send it (tests, fuzz seeds, benchmarks).
pub fn client_message(kind: MessageType, mac: MacAddr, xid: u32, extra: Vec<DhcpOption>) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.octets(),
    );
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for opt in extra {
        m.opts_mut().insert(opt);
    }
    m
}

/// Receives on `socket` (bound to one interface) and answers until the socket fails.
pub async fn serve(service: Arc<DhcpService>, socket: tokio::net::UdpSocket, port: Port) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let std::net::SocketAddr::V4(from) = from else { continue };
        let now = crate::events::now_ms() / 1000;
        // A shared lease store answers over the network: off the runtime's threads.
        let (datagram, handler) = (buf[..len].to_vec(), service.clone());
        let handled = tokio::task::spawn_blocking(move || handler.handle(&datagram, from, port, now)).await;
        let handled = match handled {
            Ok(handled) => handled,
            Err(e) => {
                tracing::error!(%from, error = %e, "handling a DHCP packet panicked");
                continue;
            }
        };
        match handled {
            Ok(Handled::Reply(reply)) => {
                if let Err(e) = socket.send_to(&reply.bytes, reply.to).await {
                    tracing::warn!(to = %reply.to, error = %e, "cannot send DHCP reply");
                }
            }
            Ok(Handled::Ignored(reason)) => tracing::debug!(%from, %reason, "DHCP request not answered"),
            Err(e) => tracing::warn!(%from, len, error = %e, "DHCP packet dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::MemoryLeaseStore;
    use dhcproto::v4::Architecture;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);
    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

    fn pool() -> PoolConfig {
        PoolConfig {
            net: "10.5.0.0/24".parse().unwrap(),
            range: [Ipv4Addr::new(10, 5, 0, 100), Ipv4Addr::new(10, 5, 0, 110)],
            gateway: Some(SERVER),
            dns: vec![SERVER],
            lease_secs: 600,
        }
    }

    fn service(mode: DhcpMode) -> DhcpService {
        let alloc = Allocator::new(pool(), Box::new(MemoryLeaseStore::new()), vec![SERVER]);
        let boot = BootFiles::new(&BootConfig::default(), SERVER, 80);
        DhcpService::new(SERVER, mode, Some(alloc), boot, Arc::new(EventLog::new()))
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn send(s: &DhcpService, m: &Message, port: Port) -> Handled {
        s.handle(&m.to_vec().unwrap(), FROM, port, 1000).unwrap()
    }

    fn reply_msg(h: Handled) -> (Message, SocketAddrV4) {
        match h {
            Handled::Reply(r) => (Message::decode(&mut Decoder::new(&r.bytes)).unwrap(), r.to),
            Handled::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    fn pxe(arch: u16) -> Vec<DhcpOption> {
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        ]
    }

    #[test]
    fn dora_with_bios_pxe_then_ipxe() {
        let s = service(DhcpMode::Full);
        let (offer, to) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(1), 7, pxe(0)), Port::Dhcp));
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 7);
        assert_eq!(offer.fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
        assert_eq!(offer.siaddr(), SERVER);
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(10, 5, 0, 100));
        let mut req = pxe(0);
        req.push(DhcpOption::RequestedIpAddress(ip));
        req.push(DhcpOption::ServerIdentifier(SERVER));
        let (ack, _) = reply_msg(send(&s, &client_message(MessageType::Request, mac(1), 8, req), Port::Dhcp));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(ack.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(600)));
        // iPXE comes back: same address, the HTTP script as boot file.
        let mut ipxe = pxe(0);
        ipxe.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(1), 9, ipxe), Port::Dhcp));
        assert_eq!(offer.yiaddr(), ip);
        assert_eq!(offer.fname_str().unwrap().unwrap().trim_end_matches('\0'), "http://10.5.0.1/boot.ipxe");
    }

    #[test]
    fn uefi_gets_efi_loader_and_unknown_arch_none() {
        let s = service(DhcpMode::Full);
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(2), 1, pxe(7)), Port::Dhcp));
        assert_eq!(offer.fname_str().unwrap().unwrap().trim_end_matches('\0'), "snponly.efi");
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(3), 1, pxe(11)), Port::Dhcp));
        assert!(offer.fname().is_none(), "no loader for ARM64, still an address");
        // A plain client gets an address and no boot file.
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(4), 1, vec![]), Port::Dhcp));
        assert!(offer.fname().is_none());
        assert!(!offer.yiaddr().is_unspecified());
    }

    #[test]
    fn request_for_other_server_is_ignored_and_bad_address_naked() {
        let s = service(DhcpMode::Full);
        let other = vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 5, 0, 2)),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 5, 0, 100)),
        ];
        assert!(matches!(
            send(&s, &client_message(MessageType::Request, mac(1), 1, other), Port::Dhcp),
            Handled::Ignored(_)
        ));
        let wrong = vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 5))];
        let (nak, to) = reply_msg(send(&s, &client_message(MessageType::Request, mac(1), 1, wrong), Port::Dhcp));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(to.ip(), &Ipv4Addr::BROADCAST);
        // Someone else's address: NAK.
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(5), 1, vec![]), Port::Dhcp));
        let req = vec![DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(SERVER)];
        reply_msg(send(&s, &client_message(MessageType::Request, mac(5), 1, req.clone()), Port::Dhcp));
        let (nak, _) = reply_msg(send(&s, &client_message(MessageType::Request, mac(6), 1, req), Port::Dhcp));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn renewal_is_unicast_to_ciaddr() {
        let s = service(DhcpMode::Full);
        let (offer, _) = reply_msg(send(&s, &client_message(MessageType::Discover, mac(1), 1, vec![]), Port::Dhcp));
        let ip = offer.yiaddr();
        reply_msg(send(
            &s,
            &client_message(MessageType::Request, mac(1), 2, vec![DhcpOption::RequestedIpAddress(ip)]),
            Port::Dhcp,
        ));
        let mut renew = client_message(MessageType::Request, mac(1), 3, vec![]);
        renew.set_ciaddr(ip).set_flags(Flags::default());
        let (ack, to) = reply_msg(send(&s, &renew, Port::Dhcp));
        assert_eq!((ack.opts().msg_type(), to), (Some(MessageType::Ack), SocketAddrV4::new(ip, 68)));
        assert_eq!(ack.ciaddr(), ip);
    }

    #[test]
    fn relayed_discover_goes_back_to_relay_with_option_82() {
        let s = service(DhcpMode::Full);
        let mut m = client_message(MessageType::Discover, mac(1), 1, vec![]);
        m.set_giaddr(Ipv4Addr::new(10, 5, 0, 254));
        let mut info = dhcproto::v4::relay::RelayAgentInformation::default();
        info.insert(dhcproto::v4::relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
        m.opts_mut().insert(DhcpOption::RelayAgentInformation(info.clone()));
        let (offer, to) = reply_msg(send(&s, &m, Port::Dhcp));
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 254), 67));
        assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 5, 0, 254));
        assert_eq!(offer.opts().get(OptionCode::RelayAgentInformation), Some(&DhcpOption::RelayAgentInformation(info)));
        m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        assert!(matches!(send(&s, &m, Port::Dhcp), Handled::Ignored(_)));
    }

    #[test]
    fn proxy_mode_offers_boot_info_only() {
        let s = service(DhcpMode::Proxy);
        assert!(matches!(
            send(&s, &client_message(MessageType::Discover, mac(1), 1, vec![]), Port::Dhcp),
            Handled::Ignored(_)
        ));
        let mut opts = pxe(7);
        opts.push(DhcpOption::ClientMachineIdentifier([0u8; 17].to_vec()));
        let (offer, to) =
            reply_msg(send(&s, &client_message(MessageType::Discover, mac(1), 1, opts.clone()), Port::Dhcp));
        assert_eq!(to.ip(), &Ipv4Addr::BROADCAST);
        assert!(offer.yiaddr().is_unspecified());
        assert_eq!(offer.fname_str().unwrap().unwrap().trim_end_matches('\0'), "snponly.efi");
        assert_eq!(
            offer.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(offer.opts().get(OptionCode::ClientMachineIdentifier).is_some());
        assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
        let mut req = client_message(MessageType::Request, mac(1), 2, opts);
        req.set_ciaddr(Ipv4Addr::new(10, 5, 0, 77));
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 77), 4011);
        let h = s.handle(&req.to_vec().unwrap(), from, Port::Pxe, 0).unwrap();
        let Handled::Reply(r) = h else { panic!("no ack") };
        assert_eq!((r.kind, r.to), (MessageType::Ack, from));
    }

    fn raw_discover() -> Vec<u8> {
        client_message(MessageType::Discover, mac(1), 1, pxe(0)).to_vec().unwrap()
    }

    fn option_offset(pkt: &[u8], code: u8) -> usize {
        let mut i = 240;
        while pkt[i] != code {
            i += 2 + pkt[i + 1] as usize;
        }
        i
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        let s = service(DhcpMode::Full);
        let h = |d: &[u8]| s.handle(d, FROM, Port::Dhcp, 0);
        let good = raw_discover();
        assert!(matches!(h(&good[..100]), Err(DhcpError::Malformed(Malformed::TooShort(100)))));
        for cut in 241..good.len() - 1 {
            // Every truncation either still parses (cut between options) or is refused; none panics.
            let _ = h(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[2] = 20;
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(Malformed::Hardware { hlen: 20, .. }))));
        let mut bad = good.clone();
        bad[0] = 2;
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(Malformed::NotRequest(2)))));
        let mut bad = good.clone();
        bad[236] = 0;
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(Malformed::NoCookie))));
        let mut bad = good.clone();
        let at = option_offset(&bad, 53);
        bad[at + 1] = 2;
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(_))));
        let mut bad = good.clone();
        let at = option_offset(&bad, 93);
        bad[at + 1] = 3;
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(_))));
        let mut bad = good[..240].to_vec();
        bad.extend([12, 1, b'x', 255]);
        assert!(matches!(h(&bad), Err(DhcpError::Malformed(Malformed::NoMessageType))));
        let mut dup = good[..240].to_vec();
        dup.extend([53, 1, 1, 53, 1, 3, 255]);
        assert!(matches!(h(&dup), Err(DhcpError::Malformed(Malformed::Duplicate { code: 53 }))));
        let mut relay = good[..240].to_vec();
        relay.extend([53, 1, 1, 82, 4, 1, 5, 0, 0, 255]);
        assert!(matches!(h(&relay), Err(DhcpError::Malformed(_))));
    }
}
