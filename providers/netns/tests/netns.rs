//! Host tests as root, through a real coordinator: namespaces, veth, bridges, addresses, routes,
//! firewalls with real TCP connects, bad inputs, and uid/gid maps. Everything lives in
//! namespaces these tests create (prefixed `cnt<pid>x<n>-`) and removed on drop.

mod common;

use cerana_protocol::tasks::netns::*;
use cerana_protocol::{ErrorCode, NoArgs};
use common::{can_run, in_netns, spawn_in, Harness, NetnsGuard};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn end(name: &str, netns: &str) -> VethEnd {
    VethEnd { name: name.into(), netns: Some(netns.into()) }
}

fn veth(a: (&str, &str), b: (&str, &str)) -> VethAddArgs {
    VethAddArgs { end: end(a.0, a.1), peer: end(b.0, b.1), up: true }
}

fn address(link: &str, netns: &str, address: &str) -> AddressArgs {
    AddressArgs { link: link.into(), netns: Some(netns.into()), address: address.into() }
}

/// Addresses other than the IPv6 link-local one each link gets by itself.
fn assigned(link: &LinkInfo) -> Vec<&str> {
    link.addresses.iter().map(String::as_str).filter(|a| !a.starts_with("fe80:")).collect()
}

fn ns(name: &str) -> NetnsArgs {
    NetnsArgs { name: name.into() }
}

async fn links_of(h: &Harness, netns: &str) -> Vec<LinkInfo> {
    h.ok::<NetnsLinkList>(&NetnsRef { netns: Some(netns.into()) }).await.links
}

/// Connects from inside `from` to `to`; true when the connection opened and echoed a byte.
fn tcp_connects(from: &str, to: SocketAddr) -> bool {
    in_netns(from, move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_millis(700)) else { return false };
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut byte = [0u8];
        stream.write_all(b"x").is_ok() && stream.read_exact(&mut byte).is_ok() && byte == *b"x"
    })
}

/// A listener inside `netns` echoing one byte per connection, for `accepts` connections.
fn echo_server(netns: &str, addr: SocketAddr, accepts: usize) -> std::thread::JoinHandle<()> {
    let listener = in_netns(netns, move || TcpListener::bind(addr).expect("bind"));
    spawn_in(netns, move || {
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(accepts) {
            let Ok(mut stream) = stream else { continue };
            let mut byte = [0u8];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_talk_over_a_veth_with_bridges_routes_and_moves() {
    if !can_run("two_namespaces_talk_over_a_veth", false) {
        return;
    }
    let names = NetnsGuard::new();
    let h = Harness::start().await;
    let (a, b) = (names.name("a"), names.name("b"));
    let created = h.ok::<NetnsCreate>(&ns(&a)).await;
    assert_eq!(created.path, names.path(&a).display().to_string());
    h.ok::<NetnsCreate>(&ns(&b)).await;
    let listed = h.ok::<NetnsList>(&NoArgs {}).await;
    assert!(listed.namespaces.iter().any(|n| n.name == a) && listed.namespaces.iter().any(|n| n.name == b));
    let lo = links_of(&h, &a).await.into_iter().find(|l| l.name == "lo").expect("lo");
    assert!(lo.up, "netns-create brings loopback up");

    let pair = h.ok::<NetnsVethAdd>(&veth(("va", &a), ("vb", &b))).await;
    assert_eq!((pair.end.kind.as_deref(), pair.end.up), (Some("veth"), true));
    assert_eq!(pair.peer.name, "vb");
    let with_address = h.ok::<NetnsAddressAdd>(&address("va", &a, "10.77.0.1/24")).await;
    assert_eq!(assigned(&with_address), ["10.77.0.1/24"]);
    h.ok::<NetnsAddressAdd>(&address("vb", &b, "10.77.0.2/24")).await;

    if std::process::Command::new("ping").arg("-V").output().is_ok() {
        let ping = std::process::Command::new("ip")
            .args(["netns", "exec", &a, "ping", "-c", "1", "-W", "2", "10.77.0.2"])
            .output()
            .expect("ping");
        assert!(ping.status.success(), "ping a -> b: {}", String::from_utf8_lossy(&ping.stdout));
    } else {
        eprintln!("no ping program (iputils-ping): checking TCP only");
    }
    let server = echo_server(&b, "10.77.0.2:7000".parse().unwrap(), 1);
    assert!(tcp_connects(&a, "10.77.0.2:7000".parse().unwrap()), "TCP a -> b over the veth");
    server.join().unwrap();

    // Routes: a default route through b, listed, then deleted.
    let route = RouteArgs {
        netns: Some(a.clone()),
        destination: "default".into(),
        gateway: Some("10.77.0.2".parse().unwrap()),
        link: None,
    };
    let routes = h.ok::<NetnsRouteAdd>(&route).await.routes;
    assert!(routes.iter().any(|r| r.destination == "default" && r.gateway == route.gateway), "{routes:?}");
    assert!(routes.iter().any(|r| r.destination == "10.77.0.0/24" && r.link.as_deref() == Some("va")), "{routes:?}");
    let routes = h.ok::<NetnsRouteDelete>(&route).await.routes;
    assert!(!routes.iter().any(|r| r.destination == "default"), "{routes:?}");
    h.fails::<NetnsRouteDelete>(&route, ErrorCode::NotFound, "route-not-found").await;

    // A bridge in a with a second veth as its port, set down and up, then detached.
    let bridge = h.ok::<NetnsBridgeAdd>(&BridgeAddArgs { name: "br0".into(), netns: Some(a.clone()), up: true }).await;
    assert_eq!((bridge.kind.as_deref(), bridge.up), (Some("bridge"), true));
    h.ok::<NetnsVethAdd>(&veth(("vp", &a), ("vq", &a))).await;
    let set = |master: Option<&str>, up: Option<bool>| LinkSetArgs {
        name: "vp".into(),
        netns: Some(a.clone()),
        up,
        mtu: Some(1400),
        master: master.map(str::to_owned),
    };
    let port = h.ok::<NetnsLinkSet>(&set(Some("br0"), Some(false))).await;
    assert_eq!((port.master.as_deref(), port.up, port.mtu), (Some("br0"), false, Some(1400)));
    let port = h.ok::<NetnsLinkSet>(&set(Some(""), Some(true))).await;
    assert_eq!((port.master, port.up), (None, true));

    // Move vq from a to b; it is gone from a and present in b.
    let moved =
        h.ok::<NetnsLinkMove>(&LinkMoveArgs { name: "vq".into(), netns: Some(a.clone()), to: Some(b.clone()) }).await;
    assert_eq!(moved.name, "vq");
    assert!(!links_of(&h, &a).await.iter().any(|l| l.name == "vq"));
    assert!(links_of(&h, &b).await.iter().any(|l| l.name == "vq"));
    h.ok::<NetnsLinkDelete>(&LinkRef { name: "vq".into(), netns: Some(b.clone()) }).await;
    assert!(!links_of(&h, &a).await.iter().any(|l| l.name == "vp"), "deleting one end removes its peer");

    let removed = h.ok::<NetnsAddressDelete>(&address("va", &a, "10.77.0.1/24")).await;
    assert!(assigned(&removed).is_empty());
    h.ok::<NetnsDelete>(&ns(&b)).await;
    assert!(!names.path(&b).exists());
    // The kernel dismantles a namespace (and its veth ends) in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while links_of(&h, &a).await.iter().any(|l| l.name == "va") {
        assert!(std::time::Instant::now() < deadline, "the veth never went with namespace b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_typed_errors_and_leave_nothing_behind() {
    if !can_run("bad_inputs_get_typed_errors", true) {
        return;
    }
    let names = NetnsGuard::new();
    let h = Harness::start().await;
    let (a, b) = (names.name("a"), names.name("b"));
    h.ok::<NetnsCreate>(&ns(&a)).await;
    h.ok::<NetnsCreate>(&ns(&b)).await;
    h.fails::<NetnsCreate>(&ns(&a), ErrorCode::AlreadyExists, "netns-exists").await;
    h.fails::<NetnsCreate>(&ns("../etc"), ErrorCode::InvalidArgument, "invalid-name").await;
    let before = links_of(&h, &a).await.len();

    // A veth name over 15 bytes.
    h.fails::<NetnsVethAdd>(&veth(("v0123456789abcdef", &a), ("vb", &b)), ErrorCode::NameTooLong, "link-name-too-long")
        .await;
    h.fails::<NetnsBridgeAdd>(
        &BridgeAddArgs { name: "bridge-name-too-long".into(), netns: Some(a.clone()), up: true },
        ErrorCode::NameTooLong,
        "link-name-too-long",
    )
    .await;
    // A namespace that does not exist, as the peer's: no end is left in a.
    let missing = names.name("missing");
    h.fails::<NetnsVethAdd>(&veth(("va", &a), ("vb", &missing)), ErrorCode::NotFound, "netns-not-found").await;
    h.fails::<NetnsLinkList>(&NetnsRef { netns: Some(missing.clone()) }, ErrorCode::NotFound, "netns-not-found").await;
    h.fails::<NetnsDelete>(&ns(&missing), ErrorCode::NotFound, "netns-not-found").await;
    // The peer's name taken in its namespace: refused, and the other end is not created.
    h.ok::<NetnsBridgeAdd>(&BridgeAddArgs { name: "taken".into(), netns: Some(b.clone()), up: false }).await;
    h.fails::<NetnsVethAdd>(&veth(("va", &a), ("taken", &b)), ErrorCode::AlreadyExists, "link-exists").await;
    assert_eq!(links_of(&h, &a).await.len(), before, "nothing half-created in a");
    h.fails::<NetnsLinkSet>(
        &LinkSetArgs { name: "nope".into(), netns: Some(a.clone()), up: Some(true), mtu: None, master: None },
        ErrorCode::NotFound,
        "link-not-found",
    )
    .await;

    // Overlapping addresses in one namespace.
    h.ok::<NetnsVethAdd>(&veth(("va", &a), ("vb", &b))).await;
    h.ok::<NetnsVethAdd>(&veth(("vc", &a), ("vd", &b))).await;
    h.ok::<NetnsAddressAdd>(&address("va", &a, "10.79.0.1/24")).await;
    for overlapping in ["10.79.0.1/24", "10.79.0.9/24", "10.79.0.0/16", "10.79.0.77/32"] {
        let err = h
            .fails::<NetnsAddressAdd>(&address("vc", &a, overlapping), ErrorCode::AlreadyExists, "address-overlap")
            .await;
        assert!(err.message.contains("10.79.0.1/24 on va"), "{err}");
    }
    assert!(assigned(links_of(&h, &a).await.iter().find(|l| l.name == "vc").unwrap()).is_empty());
    h.fails::<NetnsAddressAdd>(&address("vc", &a, "10.79.1.1/33"), ErrorCode::InvalidArgument, "invalid-address").await;
    h.fails::<NetnsAddressDelete>(&address("vc", &a, "10.79.2.1/24"), ErrorCode::NotFound, "address-not-found").await;
    // A route with neither gateway nor link, and a gateway of the wrong family.
    let route = |gateway: Option<&str>, link: Option<&str>| RouteArgs {
        netns: Some(a.clone()),
        destination: "10.80.0.0/16".into(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        link: link.map(str::to_owned),
    };
    h.fails::<NetnsRouteAdd>(&route(None, None), ErrorCode::InvalidArgument, "invalid-route").await;
    h.fails::<NetnsRouteAdd>(&route(Some("fd00::1"), None), ErrorCode::InvalidArgument, "invalid-route").await;

    // Firewall rules naming unknown bundles: refused, nothing installed.
    let firewall = FirewallApplyArgs {
        bundle: names.name("bundle-a"),
        netns: a.clone(),
        ports: vec![FirewallPort {
            port: 80,
            protocol: Protocol::Tcp,
            public: false,
            connected_bundles: vec!["no-such-bundle".into()],
        }],
        cluster: None,
    };
    let err = h.fails::<FirewallApply>(&firewall, ErrorCode::NotFound, "unknown-bundle").await;
    assert_eq!(err.details.unwrap()["bundles"][0], "no-such-bundle");
    h.fails::<FirewallGet>(&BundleRef { bundle: firewall.bundle.clone() }, ErrorCode::NotFound, "firewall-not-found")
        .await;
    let listing =
        std::process::Command::new("ip").args(["netns", "exec", &a, "nft", "list", "ruleset"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).trim().is_empty(), "no table was created");
    let in_missing = FirewallApplyArgs { bundle: "x".into(), netns: missing.clone(), ports: vec![], cluster: None };
    h.fails::<FirewallApply>(&in_missing, ErrorCode::NotFound, "netns-not-found").await;
    let zero = FirewallApplyArgs {
        ports: vec![FirewallPort { port: 0, protocol: Protocol::Udp, public: true, connected_bundles: vec![] }],
        ..in_missing
    };
    h.fails::<FirewallApply>(&zero, ErrorCode::InvalidArgument, "invalid-port").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_lets_connected_bundles_in_and_keeps_others_out() {
    if !can_run("firewall_lets_connected_bundles_in", true) {
        return;
    }
    let names = NetnsGuard::new();
    let h = Harness::start().await;
    // Bundle a serves; b is connected to it, c is not. a reaches b and c over two veths.
    let (a, b, c) = (names.name("a"), names.name("b"), names.name("c"));
    for n in [&a, &b, &c] {
        h.ok::<NetnsCreate>(&ns(n)).await;
    }
    h.ok::<NetnsVethAdd>(&veth(("ab", &a), ("ba", &b))).await;
    h.ok::<NetnsVethAdd>(&veth(("ac", &a), ("ca", &c))).await;
    h.ok::<NetnsAddressAdd>(&address("ab", &a, "10.81.1.1/24")).await;
    h.ok::<NetnsAddressAdd>(&address("ba", &b, "10.81.1.2/24")).await;
    h.ok::<NetnsAddressAdd>(&address("ac", &a, "10.81.2.1/24")).await;
    h.ok::<NetnsAddressAdd>(&address("ca", &c, "10.81.2.2/24")).await;
    let (bundle_a, bundle_b, bundle_c) = (names.name("web"), names.name("api"), names.name("other"));
    let apply = |bundle: &str, netns: &str, ports: Vec<FirewallPort>| FirewallApplyArgs {
        bundle: bundle.into(),
        netns: netns.into(),
        ports,
        cluster: None,
    };
    h.ok::<FirewallApply>(&apply(&bundle_b, &b, vec![])).await;
    h.ok::<FirewallApply>(&apply(&bundle_c, &c, vec![])).await;
    let ports = vec![
        FirewallPort { port: 8080, protocol: Protocol::Tcp, public: false, connected_bundles: vec![bundle_b.clone()] },
        FirewallPort { port: 8081, protocol: Protocol::Tcp, public: true, connected_bundles: vec![] },
    ];
    let applied = h.ok::<FirewallApply>(&apply(&bundle_a, &a, ports)).await;
    assert_eq!(applied.policy, "drop");
    let connected = applied.rules.iter().find(|r| r.kind == "connected").expect("a connected rule");
    assert_eq!((connected.port, connected.from_bundle.as_deref()), (Some(8080), Some(bundle_b.as_str())));
    assert_eq!(connected.sources, ["10.81.1.2".parse::<std::net::IpAddr>().unwrap()]);
    assert!(applied.rules.iter().any(|r| r.kind == "public" && r.port == Some(8081)));

    let private = echo_server(&a, "0.0.0.0:8080".parse().unwrap(), 2);
    let public = echo_server(&a, "0.0.0.0:8081".parse().unwrap(), 2);
    assert!(tcp_connects(&b, "10.81.1.1:8080".parse().unwrap()), "connected bundle b reaches a:8080");
    assert!(!tcp_connects(&c, "10.81.2.1:8080".parse().unwrap()), "unconnected bundle c is kept out of a:8080");
    assert!(tcp_connects(&c, "10.81.2.1:8081".parse().unwrap()), "public port a:8081 is open to c");
    assert!(tcp_connects(&b, "10.81.1.1:8081".parse().unwrap()), "public port a:8081 is open to b");

    // b gets another address: a's firewall follows.
    h.ok::<NetnsAddressAdd>(&address("ba", &b, "10.81.3.2/24")).await;
    let got = h.ok::<FirewallGet>(&BundleRef { bundle: bundle_a.clone() }).await;
    let sources = &got.rules.iter().find(|r| r.kind == "connected").unwrap().sources;
    assert_eq!(sources.len(), 2, "{sources:?}");

    // Listing, reading back after a provider restart, removal order.
    let all = h.ok::<FirewallList>(&NoArgs {}).await.firewalls;
    let bundles: Vec<&str> = all.iter().map(|f| f.bundle.as_str()).collect();
    for bundle in [&bundle_a, &bundle_b, &bundle_c] {
        assert!(bundles.contains(&bundle.as_str()), "{bundles:?}");
    }
    let restarted = cerana_netns::Netns::new(Harness::config(h.dir.path()));
    assert_eq!(restarted.get_firewall(BundleRef { bundle: bundle_a.clone() }).await.unwrap(), got);
    h.fails::<FirewallRemove>(&BundleRef { bundle: bundle_b.clone() }, ErrorCode::Busy, "bundle-referenced").await;
    h.fails::<NetnsDelete>(&ns(&a), ErrorCode::Busy, "netns-has-firewall").await;
    let taken = apply(&names.name("second"), &a, vec![]);
    h.fails::<FirewallApply>(&taken, ErrorCode::AlreadyExists, "netns-has-firewall").await;
    h.ok::<FirewallRemove>(&BundleRef { bundle: bundle_a.clone() }).await;
    assert!(tcp_connects(&c, "10.81.2.1:8080".parse().unwrap()), "without a firewall c reaches a:8080");
    h.ok::<FirewallRemove>(&BundleRef { bundle: bundle_b.clone() }).await;
    // A table deleted behind the provider's back is not listed, and listing still works.
    let deleted = std::process::Command::new("ip")
        .args(["netns", "exec", &c, "nft", "delete", "table", "inet", "cerana"])
        .status()
        .unwrap();
    assert!(deleted.success());
    let listed = h.ok::<FirewallList>(&NoArgs {}).await.firewalls;
    assert!(listed.iter().all(|f| f.bundle != bundle_c), "{listed:?}");
    h.ok::<FirewallRemove>(&BundleRef { bundle: bundle_c.clone() }).await;
    assert!(h.ok::<FirewallList>(&NoArgs {}).await.firewalls.iter().all(|f| f.bundle != bundle_a));
    private.join().unwrap();
    public.join().unwrap();
}

/// A process in a new user namespace, killed on drop.
struct UserNsChild(std::process::Child);

impl Drop for UserNsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_set_user_writes_maps_once_and_validates_them() {
    if !can_run("namespace_set_user", false) {
        return;
    }
    let h = Harness::start().await;
    let child = std::process::Command::new("unshare").args(["--user", "sleep", "30"]).spawn().expect("unshare --user");
    let child = UserNsChild(child);
    let pid = child.0.id();
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{pid}/ns/user")).map_or(true, |ns| ns == own) {
        assert!(std::time::Instant::now() < deadline, "the child never entered a new user namespace");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let range = |id, host_id, length| IdRange { id, host_id, length };
    let args = |uids: Vec<IdRange>, gids: Vec<IdRange>| SetUserArgs { pid, uids, gids };

    let err = h
        .fails::<NamespaceSetUser>(&args(vec![], vec![range(0, 1000, 1)]), ErrorCode::InvalidArgument, "invalid-id-map")
        .await;
    assert_eq!(err.details.unwrap()["errno"], 22);
    let six: Vec<IdRange> = (0..6).map(|i| range(i * 10, 200_000 + i * 10, 10)).collect();
    h.fails::<NamespaceSetUser>(&args(six.clone(), six[..1].to_vec()), ErrorCode::InvalidArgument, "invalid-id-map")
        .await;
    h.fails::<NamespaceSetUser>(
        &args(vec![range(0, 1000, 0)], vec![range(0, 1000, 1)]),
        ErrorCode::InvalidArgument,
        "invalid-id-map",
    )
    .await;
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap(), "", "refused maps write nothing");
    let no_such = SetUserArgs { pid: u32::MAX - 1, uids: vec![range(0, 1000, 1)], gids: vec![range(0, 1000, 1)] };
    h.fails::<NamespaceSetUser>(&no_such, ErrorCode::NotFound, "process-not-found").await;

    let maps = args(six[..5].to_vec(), vec![range(0, 100_000, 65536)]);
    let written = h.ok::<NamespaceSetUser>(&maps).await;
    let rows = |text: &str| -> Vec<Vec<u32>> {
        text.lines().map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect()).collect()
    };
    assert_eq!(rows(&written.uid_map), six[..5].iter().map(|r| vec![r.id, r.host_id, r.length]).collect::<Vec<_>>());
    assert_eq!(rows(&written.gid_map), [[0, 100_000, 65536]]);
    assert_eq!(rows(&std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap()).len(), 5);
    h.fails::<NamespaceSetUser>(&maps, ErrorCode::PermissionDenied, "id-map-refused").await;
}

fn route(netns: &str, destination: &str, gateway: Option<&str>, link: Option<&str>) -> RouteArgs {
    RouteArgs {
        netns: Some(netns.into()),
        destination: destination.into(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        link: link.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_on_a_link_can_be_the_gateway_of_the_default_route() {
    if !can_run("a_route_on_a_link_can_be_the_gateway", false) {
        return;
    }
    let names = NetnsGuard::new();
    let h = Harness::start().await;
    // As a bundle's namespace is wired: /32 addresses only, the gateway reached by a link route.
    let (node, inside) = (names.name("node"), names.name("inside"));
    h.ok::<NetnsCreate>(&ns(&node)).await;
    h.ok::<NetnsCreate>(&ns(&inside)).await;
    h.ok::<NetnsVethAdd>(&veth(("rn", &node), ("ri", &inside))).await;
    h.ok::<NetnsAddressAdd>(&address("rn", &node, "10.9.0.1/32")).await;
    h.ok::<NetnsAddressAdd>(&address("ri", &inside, "10.9.0.5/32")).await;
    let routes = h.ok::<NetnsRouteAdd>(&route(&inside, "10.9.0.1/32", None, Some("ri"))).await.routes;
    assert!(routes.iter().any(|r| r.destination == "10.9.0.1/32" && r.link.as_deref() == Some("ri")), "{routes:?}");
    let routes = h.ok::<NetnsRouteAdd>(&route(&inside, "default", Some("10.9.0.1"), None)).await.routes;
    let default = routes.iter().find(|r| r.destination == "default").expect("a default route");
    assert_eq!((default.gateway, default.link.as_deref()), (Some("10.9.0.1".parse().unwrap()), Some("ri")));
    h.ok::<NetnsRouteAdd>(&route(&node, "10.9.0.5/32", None, Some("rn"))).await;
    // The gateway over the link route, and an address of the node's beyond it (on its
    // loopback) through the default route.
    h.ok::<NetnsAddressAdd>(&address("lo", &node, "10.9.7.1/32")).await;
    let server = echo_server(&node, "0.0.0.0:7000".parse().unwrap(), 2);
    assert!(tcp_connects(&inside, "10.9.0.1:7000".parse().unwrap()), "inside reaches its gateway");
    assert!(tcp_connects(&inside, "10.9.7.1:7000".parse().unwrap()), "inside reaches beyond it by default");
    server.join().unwrap();
    let listing = std::process::Command::new("ip").args(["-n", &inside, "route", "show"]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let link_route = listing.lines().find(|l| l.starts_with("10.9.0.1 ")).unwrap_or_default();
    assert!(link_route.contains("dev ri") && link_route.contains("scope link"), "{listing}");
    h.ok::<NetnsRouteDelete>(&route(&inside, "default", Some("10.9.0.1"), None)).await;
    h.ok::<NetnsRouteDelete>(&route(&inside, "10.9.0.1/32", None, Some("ri"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_firewalls_take_sources_from_the_cluster() {
    if !can_run("cluster_mode_firewalls_take_sources_from_the_cluster", true) {
        return;
    }
    let names = NetnsGuard::new();
    let h = Harness::start().await;
    // web in a; api (connected, no firewall here at first) in b; other (inside the range, not
    // connected) in c; outside (not in the range) in d.
    let (a, b, c, d) = (names.name("a"), names.name("b"), names.name("c"), names.name("d"));
    for n in [&a, &b, &c, &d] {
        h.ok::<NetnsCreate>(&ns(n)).await;
    }
    for (i, (peer, there)) in [("ab", &b), ("ac", &c), ("ad", &d)].into_iter().enumerate() {
        let back = format!("{}a", &peer[1..]);
        h.ok::<NetnsVethAdd>(&veth((peer, &a), (&back, there))).await;
        let net = if peer == "ad" { "10.99.3".to_owned() } else { format!("10.84.{}", i + 1) };
        h.ok::<NetnsAddressAdd>(&address(peer, &a, &format!("{net}.1/24"))).await;
        h.ok::<NetnsAddressAdd>(&address(&back, there, &format!("{net}.2/24"))).await;
    }
    let (web, api) = (names.name("web"), names.name("api"));
    let cluster = ClusterSources {
        range: "10.84.0.0/16".into(),
        bundles: [(api.clone(), vec!["10.84.1.2".parse().unwrap()])].into_iter().collect(),
    };
    let port = |port, public| FirewallPort {
        port,
        protocol: Protocol::Tcp,
        public,
        connected_bundles: vec![api.clone(), names.name("unnamed")],
    };
    let args = FirewallApplyArgs {
        bundle: web.clone(),
        netns: a.clone(),
        ports: vec![port(8080, false), port(8081, true)],
        cluster: Some(cluster.clone()),
    };
    let applied = h.ok::<FirewallApply>(&args).await;
    let kinds: Vec<(&str, Option<u16>)> = applied.rules.iter().map(|r| (r.kind.as_str(), r.port)).collect();
    assert_eq!(
        kinds[3..],
        [("connected", Some(8080)), ("public", Some(8081)), ("public", Some(8081)), ("connected", Some(8081))],
        "{applied:?}"
    );
    for connected in applied.rules.iter().filter(|r| r.kind == "connected") {
        assert_eq!(connected.from_bundle.as_deref(), Some(api.as_str()));
        assert_eq!(connected.sources, ["10.84.1.2".parse::<std::net::IpAddr>().unwrap()]);
    }

    let private = echo_server(&a, "0.0.0.0:8080".parse().unwrap(), 1);
    let public = echo_server(&a, "0.0.0.0:8081".parse().unwrap(), 2);
    assert!(tcp_connects(&b, "10.84.1.1:8080".parse().unwrap()), "connected api reaches web:8080");
    assert!(tcp_connects(&b, "10.84.1.1:8081".parse().unwrap()), "connected api reaches web:8081");
    assert!(!tcp_connects(&c, "10.84.2.1:8080".parse().unwrap()), "other is kept out of web:8080");
    assert!(!tcp_connects(&c, "10.84.2.1:8081".parse().unwrap()), "inside the range, public is connected only");
    assert!(tcp_connects(&d, "10.99.3.1:8081".parse().unwrap()), "outside the range, public is open");
    assert!(!tcp_connects(&d, "10.99.3.1:8080".parse().unwrap()), "outside the range, 8080 stays closed");

    // api gets a local firewall and another address: web's rules keep the cluster's sources,
    // and api's firewall can go while web names it.
    h.ok::<FirewallApply>(&FirewallApplyArgs { bundle: api.clone(), netns: b.clone(), ports: vec![], cluster: None })
        .await;
    h.ok::<NetnsAddressAdd>(&address("ba", &b, "10.84.9.2/24")).await;
    let got = h.ok::<FirewallGet>(&BundleRef { bundle: web.clone() }).await;
    assert_eq!(got, applied, "a cluster-mode firewall is not refreshed from this node");
    h.ok::<FirewallRemove>(&BundleRef { bundle: api.clone() }).await;
    // The state file keeps the cluster's sources.
    let state: Vec<FirewallApplyArgs> =
        serde_json::from_slice(&std::fs::read(h.dir.path().join("firewalls.json")).unwrap()).unwrap();
    assert_eq!(state, [args]);
    let restarted = cerana_netns::Netns::new(Harness::config(h.dir.path()));
    assert_eq!(restarted.get_firewall(BundleRef { bundle: web.clone() }).await.unwrap(), got);
    let bad_range = FirewallApplyArgs {
        bundle: web.clone(),
        netns: a.clone(),
        ports: vec![],
        cluster: Some(ClusterSources { range: "10.84.0.0/40".into(), ..cluster }),
    };
    h.fails::<FirewallApply>(&bad_range, ErrorCode::InvalidArgument, "invalid-address").await;
    h.ok::<FirewallRemove>(&BundleRef { bundle: web.clone() }).await;
    private.join().unwrap();
    public.join().unwrap();
}

fn published(to: &str, external_port: u16, protocol: Protocol, port: u16) -> PublishedPort {
    PublishedPort { external_port, protocol, to: to.parse().unwrap(), port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_dnat_to_bundles_and_conflicts_are_refused() {
    if !can_run("published_ports_dnat_to_bundles", true) {
        return;
    }
    let names = NetnsGuard::new();
    // The "node" is a test namespace: nothing is published in the host's.
    let node = names.name("node");
    let publish_in = cerana_netns::names::NetnsName::new(&node).unwrap();
    let h = Harness::start_with(|c| c.publish_netns = Some(publish_in)).await;
    let (bundles, client) = (names.name("bundles"), names.name("client"));
    for n in [&node, &bundles, &client] {
        h.ok::<NetnsCreate>(&ns(n)).await;
    }
    h.ok::<NetnsVethAdd>(&veth(("nb", &node), ("bn", &bundles))).await;
    h.ok::<NetnsVethAdd>(&veth(("nc", &node), ("cn", &client))).await;
    h.ok::<NetnsAddressAdd>(&address("nb", &node, "10.82.1.1/24")).await;
    h.ok::<NetnsAddressAdd>(&address("bn", &bundles, "10.82.1.2/24")).await;
    h.ok::<NetnsAddressAdd>(&address("nc", &node, "10.82.2.1/24")).await;
    h.ok::<NetnsAddressAdd>(&address("cn", &client, "10.82.2.2/24")).await;
    h.ok::<NetnsRouteAdd>(&route(&bundles, "default", Some("10.82.1.1"), None)).await;
    in_netns(&node, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("forwarding in the node");

    let node_ip: std::net::IpAddr = "10.82.2.1".parse().unwrap();
    let (one, two) = (names.name("one"), names.name("two"));
    let first = PublishArgs {
        bundle: one.clone(),
        address: node_ip,
        ports: vec![published("10.82.1.2", 8080, Protocol::Tcp, 7100), published("10.82.1.2", 53, Protocol::Udp, 5353)],
    };
    let second = PublishArgs {
        bundle: two.clone(),
        address: node_ip,
        ports: vec![published("10.82.1.2", 8081, Protocol::Tcp, 7101)],
    };
    let info = h.ok::<PublishApply>(&first).await;
    assert_eq!((info.bundle.as_str(), info.address, &info.ports), (one.as_str(), node_ip, &first.ports));
    h.ok::<PublishApply>(&second).await;
    let list = h.ok::<PublishList>(&NoArgs {}).await.published;
    let expected = vec![
        PublishInfo { bundle: one.clone(), address: node_ip, ports: first.ports.clone() },
        PublishInfo { bundle: two.clone(), address: node_ip, ports: second.ports.clone() },
    ];
    assert_eq!(list, expected);

    // Real traffic: from another namespace through prerouting, from the node itself through output.
    let s1 = echo_server(&bundles, "0.0.0.0:7100".parse().unwrap(), 1);
    let s2 = echo_server(&bundles, "0.0.0.0:7101".parse().unwrap(), 1);
    assert!(tcp_connects(&client, "10.82.2.1:8080".parse().unwrap()), "client reaches one's port through DNAT");
    assert!(tcp_connects(&node, "10.82.2.1:8081".parse().unwrap()), "the node reaches two's port through DNAT");
    s1.join().unwrap();
    s2.join().unwrap();

    // Two taking one's port on the same address: refused, naming one; nothing changes.
    let mut taking = second.clone();
    taking.ports.push(published("10.82.1.2", 8080, Protocol::Tcp, 7200));
    let err = h.fails::<PublishApply>(&taking, ErrorCode::Conflict, "port-published").await;
    assert!(err.message.contains(&format!("bundle {one} publishes it already")), "{err}");
    assert_eq!(err.details.as_ref().unwrap()["bundle"], one.as_str());
    assert_eq!(h.ok::<PublishList>(&NoArgs {}).await.published, expected);
    // Bad requests.
    let v6 = PublishArgs { address: "fd00::1".parse().unwrap(), ..second.clone() };
    h.fails::<PublishApply>(&v6, ErrorCode::InvalidArgument, "ipv6-not-supported").await;
    let mut twice = second.clone();
    twice.ports.push(twice.ports[0].clone());
    h.fails::<PublishApply>(&twice, ErrorCode::InvalidArgument, "invalid-port").await;
    let zero = PublishArgs { ports: vec![published("10.82.1.2", 0, Protocol::Tcp, 80)], ..second.clone() };
    h.fails::<PublishApply>(&zero, ErrorCode::InvalidArgument, "invalid-port").await;

    // A restarted provider knows what is published (conflicts included).
    let mut config = Harness::config(h.dir.path());
    config.publish_netns = Some(cerana_netns::names::NetnsName::new(&node).unwrap());
    let restarted = cerana_netns::Netns::new(config);
    assert_eq!(restarted.list_published().await.unwrap().published, expected);
    assert_eq!(restarted.publish(taking).await.unwrap_err().code, ErrorCode::Conflict);

    // Removal: one's port is gone, two's stays; unknown bundles are no error.
    h.ok::<PublishRemove>(&BundleRef { bundle: one.clone() }).await;
    assert_eq!(h.ok::<PublishList>(&NoArgs {}).await.published, expected[1..]);
    assert!(!tcp_connects(&client, "10.82.2.1:8080".parse().unwrap()), "one's port is not forwarded any more");
    h.ok::<PublishRemove>(&BundleRef { bundle: names.name("never") }).await;
    // Publishing nothing removes two's too, and with it the table.
    let nothing = h.ok::<PublishApply>(&PublishArgs { ports: vec![], ..second }).await;
    assert!(nothing.ports.is_empty());
    assert!(h.ok::<PublishList>(&NoArgs {}).await.published.is_empty());
    let ruleset =
        std::process::Command::new("ip").args(["netns", "exec", &node, "nft", "list", "ruleset"]).output().unwrap();
    assert!(String::from_utf8_lossy(&ruleset.stdout).trim().is_empty(), "the table is gone");
}

/// A listener inside `netns` echoing one byte per connection until `stop` is set; answers how
/// many connections it accepted (so a test can tell a refused connect never reached it).
fn echo_until(
    netns: &str,
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let listener = in_netns(netns, move || TcpListener::bind(addr).expect("bind"));
    spawn_in(netns, move || {
        listener.set_nonblocking(true).unwrap();
        let mut accepted = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    accepted += 1;
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut byte = [0u8];
                    if stream.read_exact(&mut byte).is_ok() {
                        let _ = stream.write_all(&byte);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        accepted
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_confines_bundle_links_to_the_allowed_ranges() {
    if !can_run("the_guard_confines_bundle_links", true) {
        return;
    }
    let names = NetnsGuard::new();
    // The "node" is a test namespace: the guard goes there, not into the host's.
    let node = names.name("node");
    let guard_in = cerana_netns::names::NetnsName::new(&node).unwrap();
    let h = Harness::start_with(|c| c.guard_netns = Some(guard_in)).await;
    let (bundle, other, outside) = (names.name("bundle"), names.name("other"), names.name("outside"));
    for n in [&node, &bundle, &other, &outside] {
        h.ok::<NetnsCreate>(&ns(n)).await;
    }
    // Two bundles as the cluster makes them: the node end `cb…` holds the gateway as a /32, the
    // bundle's `eth0` its address, a link route to the gateway and the default route through it.
    for (link, there, net) in [("cbtest0001", &bundle, "10.77.0"), ("cbtest0002", &other, "10.77.1")] {
        h.ok::<NetnsVethAdd>(&veth((link, &node), ("eth0", there))).await;
        h.ok::<NetnsAddressAdd>(&address(link, &node, &format!("{net}.1/32"))).await;
        h.ok::<NetnsAddressAdd>(&address("eth0", there, &format!("{net}.2/32"))).await;
        h.ok::<NetnsRouteAdd>(&route(there, &format!("{net}.1/32"), None, Some("eth0"))).await;
        h.ok::<NetnsRouteAdd>(&route(there, "default", Some(&format!("{net}.1")), None)).await;
        h.ok::<NetnsRouteAdd>(&route(&node, &format!("{net}.2/32"), None, Some(link))).await;
    }
    // The management network: another namespace on the node's other link, routing the bundles
    // through the node.
    h.ok::<NetnsVethAdd>(&veth(("mgmt", &node), ("mgmt", &outside))).await;
    h.ok::<NetnsAddressAdd>(&address("mgmt", &node, "192.168.77.1/24")).await;
    h.ok::<NetnsAddressAdd>(&address("mgmt", &outside, "192.168.77.2/24")).await;
    h.ok::<NetnsRouteAdd>(&route(&outside, "10.77.0.0/16", Some("192.168.77.1"), None)).await;
    in_netns(&node, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("forwarding in the node");
    assert_eq!(h.ok::<GuardGet>(&NoArgs {}).await, GuardInfo::default(), "no guard yet");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_node = echo_until(&node, "0.0.0.0:7300".parse().unwrap(), stop.clone());
    let on_outside = echo_until(&outside, "192.168.77.2:7301".parse().unwrap(), stop.clone());
    let in_bundle = echo_until(&bundle, "0.0.0.0:7302".parse().unwrap(), stop.clone());
    let node_gateway: SocketAddr = "10.77.0.1:7300".parse().unwrap();
    let node_mgmt: SocketAddr = "192.168.77.1:7300".parse().unwrap();
    let management: SocketAddr = "192.168.77.2:7301".parse().unwrap();
    let the_bundle: SocketAddr = "10.77.0.2:7302".parse().unwrap();
    // Without the guard the bundle reaches the node and, forwarded, the management network.
    assert!(tcp_connects(&bundle, node_gateway), "unguarded: bundle -> node through its gateway");
    assert!(tcp_connects(&bundle, management), "unguarded: bundle -> management network");

    let args = GuardArgs { link_prefix: "cb".into(), allowed: vec!["10.77.0.0/16".into()] };
    let applied = h.ok::<GuardApply>(&args).await;
    assert_eq!(applied, GuardInfo { link_prefix: Some("cb".into()), allowed: vec!["10.77.0.0/16".into()] });
    assert_eq!(h.ok::<GuardGet>(&NoArgs {}).await, applied);
    assert!(!tcp_connects(&bundle, node_gateway), "guarded: nothing on the node through the gateway");
    assert!(!tcp_connects(&bundle, node_mgmt), "guarded: nor on the node's other addresses");
    assert!(!tcp_connects(&bundle, management), "guarded: nothing forwarded outside the range");
    assert!(tcp_connects(&outside, the_bundle), "connections to the bundle get their replies");
    assert!(tcp_connects(&other, the_bundle), "bundle -> bundle, inside the allowed range");
    assert!(tcp_connects(&outside, node_mgmt), "other links are not the guard's business");

    // Bad requests change nothing.
    let bad = |link_prefix: &str, allowed: &[&str]| GuardArgs {
        link_prefix: link_prefix.into(),
        allowed: allowed.iter().map(|a| (*a).to_owned()).collect(),
    };
    h.fails::<GuardApply>(&bad("cb*", &[]), ErrorCode::InvalidArgument, "invalid-name").await;
    h.fails::<GuardApply>(&bad("", &[]), ErrorCode::InvalidArgument, "invalid-name").await;
    h.fails::<GuardApply>(&bad("cb0123456789abc", &[]), ErrorCode::NameTooLong, "name-too-long").await;
    h.fails::<GuardApply>(&bad("cb", &["fd00::/8"]), ErrorCode::InvalidArgument, "ipv6-not-supported").await;
    h.fails::<GuardApply>(&bad("cb", &["10.77.0.0/33"]), ErrorCode::InvalidArgument, "invalid-address").await;
    h.fails::<GuardApply>(&bad("cb", &["10.77.0"]), ErrorCode::InvalidArgument, "invalid-address").await;
    let many: Vec<String> = (0..65).map(|i| format!("10.{i}.0.0/16")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    h.fails::<GuardApply>(&bad("cb", &many), ErrorCode::InvalidArgument, "too-many-ranges").await;
    assert_eq!(h.ok::<GuardGet>(&NoArgs {}).await, applied);

    // No ranges: bundles reach nothing new, not even each other; replies still flow.
    let closed = h.ok::<GuardApply>(&bad("cb", &[])).await;
    assert_eq!(closed, GuardInfo { link_prefix: Some("cb".into()), allowed: vec![] });
    assert!(!tcp_connects(&other, the_bundle), "no ranges: bundle -> bundle dropped");
    assert!(tcp_connects(&outside, the_bundle), "no ranges: replies still flow");
    // A restarted provider reads the kernel's guard.
    let mut config = Harness::config(h.dir.path());
    config.guard_netns = Some(cerana_netns::names::NetnsName::new(&node).unwrap());
    let restarted = cerana_netns::Netns::new(config);
    assert_eq!(restarted.get_guard().await.unwrap(), closed);
    let state: GuardArgs = serde_json::from_slice(&std::fs::read(h.dir.path().join("guard.json")).unwrap()).unwrap();
    assert_eq!(state, bad("cb", &[]));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(on_node.join().unwrap(), 2, "the node's listener: unguarded bundle and outside only");
    assert_eq!(on_outside.join().unwrap(), 1, "the management listener: the unguarded bundle only");
    assert_eq!(in_bundle.join().unwrap(), 3, "the bundle's listener: outside twice, the other bundle once");
}
