//! Any datagram on port 67 or 4011, in full and in proxy mode: the handler must return a
//! reply, an "ignored" or an error, never panic; every reply must decode and answer the request.
#![no_main]

use cerana_bootserver::config::{BootConfig, DhcpMode, PoolConfig};
use cerana_bootserver::dhcp::{BootFiles, DhcpService, Handled, Port};
use cerana_bootserver::events::EventLog;
use cerana_bootserver::lease::{Allocator, MemoryLeaseStore};
use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);

fn service(mode: DhcpMode) -> DhcpService {
    let pool = PoolConfig {
        net: "10.5.0.0/24".parse().unwrap(),
        range: [Ipv4Addr::new(10, 5, 0, 100), Ipv4Addr::new(10, 5, 0, 103)],
        gateway: Some(SERVER),
        dns: vec![SERVER],
        lease_secs: 600,
    };
    let alloc = Allocator::new(pool, Box::new(MemoryLeaseStore::new()), vec![SERVER]);
    DhcpService::new(SERVER, mode, Some(alloc), BootFiles::new(&BootConfig::default(), SERVER, 80), Arc::new(EventLog::new()))
}

static SERVICES: OnceLock<[DhcpService; 2]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let services = SERVICES.get_or_init(|| [service(DhcpMode::Full), service(DhcpMode::Proxy)]);
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 77), 68);
    let now = data.first().map(|b| u64::from(*b) * 30).unwrap_or(0);
    for service in services {
        for port in [Port::Dhcp, Port::Pxe] {
            if let Ok(Handled::Reply(reply)) = service.handle(data, from, port, now) {
                let msg = Message::decode(&mut Decoder::new(&reply.bytes)).expect("our reply decodes");
                assert_eq!(&msg.xid().to_be_bytes()[..], &data[4..8], "reply answers the request's xid");
            }
        }
    }
});
