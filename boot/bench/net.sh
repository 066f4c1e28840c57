#!/usr/bin/env bash
# make bench-boot-net: the bootserver against its peers, inside two network namespaces joined by a
# veth pair that this script creates and removes (nothing touches the machine's interfaces).
#   DHCP: perfdhcp (kea-admin) DORA/s against cerana-bootserver, dnsmasq and Kea, same pool,
#         leases persisted by each, logging at warning level; dnsmasq with --no-ping (none of
#         the others probes an address before offering it).
#   TFTP: curl (blksize 1468) fetching the same initrd from cerana-bootserver and tftpd-hpa.
#   HTTP: curl downloading the same initrd from cerana-bootserver and nginx.
# Each DHCP server is offered several rates (a fresh server and lease file each time) and keeps
# its best completed DORA/s: past its capacity a server drops most requests and scores far lower.
# Usage: net.sh BOOTSERVER_BINARY   (env: DHCP_SECS, DHCP_RATES, INITRD_MB, RUNS, TMPDIR)
set -euo pipefail
BIN=${1:?usage: net.sh path/to/cerana-bootserver}
DHCP_SECS=${DHCP_SECS:-5}
DHCP_RATES=${DHCP_RATES:-"1000 3000 6000 10000 20000"}
INITRD_MB=${INITRD_MB:-64}
RUNS=${RUNS:-5}
# file: every server persists its leases (its default way); memory: none does.
LEASES=${LEASES:-file}
# Which comparisons to run.
PARTS=${PARTS:-dhcp tftp http}
has() { [[ " $PARTS " == *" $1 "* ]]; }

[ "$(id -u)" = 0 ] || { echo "bench-boot-net: needs root (network namespaces)"; exit 1; }
for t in ip perfdhcp kea-dhcp4 dnsmasq in.tftpd nginx curl; do
	command -v "$t" >/dev/null || { echo "bench-boot-net: needs $t (make deps installs it)"; exit 1; }
done

ID=$$
SRV=cbsb-$ID-srv; CLI=cbsb-$ID-cli; VS=bsb${ID}s; VC=bsb${ID}c
SERVER_IP=10.88.0.1; CLIENT_IP=10.88.0.2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cerana-bench-boot.XXXXXX")
PIDS=()
# Every process still in one of the namespaces (a server that forked or daemonised, a client
# cut off) is killed before the namespace goes: nothing outlives the benchmark.
kill_netns() {
	local pids
	pids=$(ip netns pids "$1" 2>/dev/null) || return 0
	[ -n "$pids" ] || return 0
	kill $pids 2>/dev/null || true
	for _ in $(seq 50); do [ -z "$(ip netns pids "$1" 2>/dev/null)" ] && return 0; sleep 0.1; done
	kill -9 $(ip netns pids "$1" 2>/dev/null) 2>/dev/null || true
}
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	kill_netns "$SRV"; kill_netns "$CLI"
	ip netns del "$SRV" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$SRV"; ip netns add "$CLI"
ip link add "$VS" netns "$SRV" type veth peer name "$VC" netns "$CLI"
ip -n "$SRV" link set lo up; ip -n "$CLI" link set lo up
ip -n "$SRV" addr add $SERVER_IP/16 dev "$VS"; ip -n "$CLI" addr add $CLIENT_IP/16 dev "$VC"
ip -n "$SRV" link set "$VS" up; ip -n "$CLI" link set "$VC" up
in_srv() { ip netns exec "$SRV" "$@"; }
in_cli() { ip netns exec "$CLI" "$@"; }

mkdir -p "$WORK/tftp" "$WORK/www" "$WORK/state"
head -c $((INITRD_MB * 1024 * 1024)) /dev/urandom > "$WORK/tftp/initrd"
head -c 1048576 /dev/urandom > "$WORK/vmlinuz"
HASH=$(sha256sum "$WORK/tftp/initrd" | cut -d' ' -f1)
mkdir -p "$WORK/www/images/sha256-$HASH"
ln "$WORK/tftp/initrd" "$WORK/www/images/sha256-$HASH/initrd"

# Runs "$@" in the server namespace in the background and waits until UDP/TCP port $1 listens.
start_srv() {
	local port=$1; shift
	# Not through in_srv: a function run in the background is a subshell, and killing it
	# would leave the server running. `ip netns exec` execs the server itself.
	ip netns exec "$SRV" "$@" > "$WORK/server.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do
		in_srv ss -lnu -H "sport = :$port" | grep -q . && return 0
		in_srv ss -lnt -H "sport = :$port" | grep -q . && return 0
		sleep 0.1
	done
	echo "server on port $port did not start:"; cat "$WORK/server.log"; exit 1
}
stop_srv() {
	local p=${PIDS[-1]}
	kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
	unset 'PIDS[-1]'
	kill_netns "$SRV"
}

cat > "$WORK/bootserver.toml" <<CONF
interface = "$VS"
tftp_root = "$WORK/tftp"
$( [ "$LEASES" = file ] && echo "state_dir = \"$WORK/state/cerana\"" )
router_advertisements = false
[dhcp]
mode = "full"
[dhcp.pool]
net = "10.88.0.0/16"
range = ["10.88.1.0", "10.88.250.255"]
gateway = "10.88.0.1"
dns = ["10.88.0.1"]
lease_secs = 3600
[images.cerana]
kernel = "$WORK/vmlinuz"
initrd = "$WORK/tftp/initrd"
CONF

cat > "$WORK/kea.json" <<CONF
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "$VS" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": $( [ "$LEASES" = file ] && echo true || echo false ), "name": "$WORK/state/kea-leases.csv", "lfc-interval": 0 },
  "valid-lifetime": 3600,
  "subnet4": [ { "subnet": "10.88.0.0/16", "pools": [ { "pool": "10.88.1.0 - 10.88.250.255" } ],
                 "option-data": [ { "name": "routers", "data": "10.88.0.1" }, { "name": "domain-name-servers", "data": "10.88.0.1" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "stderr" } ], "severity": "WARN" } ] } }
CONF

# perfdhcp acts as a relay (giaddr = its address) and unicasts to the server: the same path
# for all three servers. Prints completed 4-way exchanges per second at rate $2.
perf() {
	# perfdhcp exits non-zero when packets were dropped, which is expected near a server's limit.
	in_cli perfdhcp -4 -l "$VC" -r "$2" -R 60000 -p "$DHCP_SECS" $SERVER_IP > "$WORK/perf.out" 2>&1 || true
	cp "$WORK/perf.out" "/tmp/cerana-bench-boot-perfdhcp-$1-$2.out"
	awk '/^Rate:/ {print $2; found=1; exit} END {if (!found) print 0}' "$WORK/perf.out"
}

# best_dora NAME COMMAND...: the best rate over DHCP_RATES, each against a fresh server.
best_dora() {
	local name=$1 best=0 got; shift
	for rate in $DHCP_RATES; do
		rm -rf "$WORK/state"; mkdir -p "$WORK/state"
		start_srv 67 "$@"
		got=$(perf "$name" "$rate"); stop_srv
		echo "   $name at $rate/s: $got" >&2
		best=$(awk -v a="$got" -v b="$best" 'BEGIN { print (a > b ? a : b) }')
	done
	echo "$best"
}

declare -A DORA TFTP HTTP
if has dhcp; then
echo "== DHCP: perfdhcp ${DHCP_SECS}s at each of $DHCP_RATES/s, pool 10.88.1.0-10.88.250.255, leases in $LEASES"
DORA[cerana-bootserver]=$(best_dora cerana "$BIN" --config "$WORK/bootserver.toml" --log warn)
DORA[dnsmasq]=$(best_dora dnsmasq dnsmasq -d -k --conf-file=/dev/null --port=0 --interface="$VS" --bind-interfaces \
	--dhcp-range=10.88.1.0,10.88.250.255,255.255.0.0,1h --dhcp-option=3,10.88.0.1 --dhcp-option=6,10.88.0.1 \
	$( [ "$LEASES" = file ] && echo --dhcp-leasefile="$WORK/state/dnsmasq.leases" || echo --leasefile-ro ) --dhcp-lease-max=70000 --quiet-dhcp --log-facility=- --no-ping)
DORA[kea]=$(best_dora kea env KEA_PIDFILE_DIR="$WORK" KEA_LOCKFILE_DIR="$WORK" kea-dhcp4 -c "$WORK/kea.json")
fi

# Median of RUNS values of curl's %{speed_download} (bytes/s) for URL, as MB/s.
median_mbps() {
	local url=$1; shift
	for _ in $(seq "$RUNS"); do
		in_cli curl -sS --max-time 120 -o /dev/null -w '%{speed_download}\n' "$@" "$url"
	done | sort -g | awk '{v[NR]=$1} END {printf "%.1f\n", v[int((NR+1)/2)] / 1048576}'
}

if has tftp || has http; then
echo "== TFTP: ${INITRD_MB} MiB initrd, curl --tftp-blksize 1468, median of $RUNS"
start_srv 69 "$BIN" --config "$WORK/bootserver.toml" --log warn
TFTP[cerana-bootserver]=$(median_mbps "tftp://$SERVER_IP/initrd" --tftp-blksize 1468)
echo "== HTTP: ${INITRD_MB} MiB initrd, curl, median of $RUNS"
HTTP[cerana-bootserver]=$(median_mbps "http://$SERVER_IP/images/sha256-$HASH/initrd")
stop_srv
start_srv 69 in.tftpd -L -s "$WORK/tftp" -a $SERVER_IP:69
TFTP[tftpd-hpa]=$(median_mbps "tftp://$SERVER_IP/initrd" --tftp-blksize 1468)
stop_srv
cat > "$WORK/nginx.conf" <<CONF
daemon off; worker_processes 2; pid $WORK/nginx.pid; error_log stderr warn;
events { worker_connections 256; }
http { access_log off; sendfile on; tcp_nopush on;
       client_body_temp_path $WORK/nginx-tmp; proxy_temp_path $WORK/nginx-tmp; fastcgi_temp_path $WORK/nginx-tmp;
       uwsgi_temp_path $WORK/nginx-tmp; scgi_temp_path $WORK/nginx-tmp;
       server { listen $SERVER_IP:80; root $WORK/www; } }
CONF
mkdir -p "$WORK/nginx-tmp"
start_srv 80 nginx -c "$WORK/nginx.conf" -e stderr
HTTP[nginx]=$(median_mbps "http://$SERVER_IP/images/sha256-$HASH/initrd")
stop_srv
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "| what | cerana-bootserver | peer | ratio |"
echo "|---|---|---|---|"
if has dhcp; then
best_peer=$(printf '%s\n' "${DORA[dnsmasq]}" "${DORA[kea]}" | sort -g | tail -1)
echo "| DHCP DORA/s (perfdhcp) | ${DORA[cerana-bootserver]} | dnsmasq ${DORA[dnsmasq]}, Kea ${DORA[kea]} | $(ratio "${DORA[cerana-bootserver]}" "$best_peer") vs best (leases in $LEASES) |"
fi
if has tftp || has http; then
echo "| TFTP initrd MB/s | ${TFTP[cerana-bootserver]} | tftpd-hpa ${TFTP[tftpd-hpa]} | $(ratio "${TFTP[cerana-bootserver]}" "${TFTP[tftpd-hpa]}") |"
echo "| HTTP initrd MB/s | ${HTTP[cerana-bootserver]} | nginx ${HTTP[nginx]} | $(ratio "${HTTP[cerana-bootserver]}" "${HTTP[nginx]}") |"
fi
