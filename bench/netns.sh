# Sourced by the benchmarks that run over capped links (bench/storm, bench/coldstart): network
# namespaces joined by veth pairs to one bridge, each link capped in both directions with
# `tc tbf`. Needs root and iproute2.
#
#   net_up TAG MBIT...   one namespace per MBIT: NS[i] (TAG-i) at IPS[i], its link capped at
#                        MBIT both ways; its inner device is DEVS[i]
#   net_down             removes the namespaces and the bridge

# A token bucket of 10 ms of traffic (at least 64 KiB) on one end of a link.
cap() { # mbit, then the command that takes the qdisc
  local mbit=$1; shift
  local burst=$(( mbit * 1000000 / 8 / 100 )); [ "$burst" -lt 65536 ] && burst=65536
  "$@" root tbf rate "${mbit}mbit" burst "$burst" latency 100ms
}

net_up() { # tag, then one rate per namespace
  local tag=$1; shift
  BR=${tag}br
  NET=10.233.$(( $$ % 200 + 1 ))
  NS=() IPS=() DEVS=()
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  local i=0 mbit
  for mbit in "$@"; do
    local ns=${tag}-$i outer=${tag}o$i inner=${tag}i$i ip=$NET.$((i + 2))
    NS+=("$ns") IPS+=("$ip") DEVS+=("$inner")
    ip netns add "$ns"
    ip link add "$outer" type veth peer name "$inner"
    ip link set "$outer" master "$BR" up
    ip link set "$inner" netns "$ns"
    ip netns exec "$ns" ip addr add "$ip/24" dev "$inner"
    ip netns exec "$ns" ip link set "$inner" up
    ip netns exec "$ns" ip link set lo up
    cap "$mbit" ip netns exec "$ns" tc qdisc replace dev "$inner"
    cap "$mbit" tc qdisc replace dev "$outer"
    i=$((i + 1))
  done
}

net_down() {
  local ns
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [ -n "${BR:-}" ] && ip link del "$BR" 2>/dev/null || true
}
