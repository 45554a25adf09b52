#!/bin/bash
# What nf_tables charges per commit, measured without the proxy (root; every step runs
# in a network namespace of its own, deleted at exit; the host's ruleset is untouched).
# Kernel time of a commit = time of the `sendmsg` that carries nft's batch (the kernel
# applies the batch inside it); kernel time of a dump = sum of its `recvmsg` calls.
#   1. one set element in a small table while another table holds N empty chains
#      (nf_tables_commit walks every chain of every table of the netns);
#   2. one element added to a verdict map of a "shard" of K chains reached from its base
#      chain: plain, `drop` and `goto` (a goto makes the kernel revalidate the table);
#   3. the chain dump (no table filter in the kernel, resumed by skipping) at N chains.
# Usage: netproxy/benches/commit_cost.sh  (needs nft, strace, ip)
set -euo pipefail
NS=nodelet-commitcost-$$
ip netns add "$NS"
TMP=$(mktemp -d)
trap 'ip netns del "$NS"; rm -rf "$TMP"' EXIT
X="ip netns exec $NS"
commit_s() { $X strace -f -T -e trace=sendmsg nft "$@" 2>&1 | grep -o '<[0-9.]*>$' | tr -d '<>' | sort -n | tail -1; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "1. one plain set element per commit, N empty chains elsewhere in the netns"
$X nft -f - <<E
table ip small { set s { type ipv4_addr; }; }
add table ip big
E
have=0
for N in 0 100000 300000; do
  if [ $N -gt $have ]; then
    seq $((have+1)) $N | sed 's/^/add chain ip big c/' > "$TMP/chains.nft"; have=$N
    $X nft -f "$TMP/chains.nft"
  fi
  v=""; for i in $(seq 1 15); do v="$v $(commit_s add element ip small s "{ 10.$((RANDOM%250)).$((i/250)).$((i%250+1)) }")"; done
  echo "   N=$N: median $(echo $v | median) s"
done
$X nft flush ruleset

echo "2. one element in the dispatch map of a shard of K chains (base chain -> vmap -> chains)"
for K in 0 2000 20000; do
  $X nft flush ruleset
  {
    echo "table ip sh { map m { type ipv4_addr : verdict; }; set s { type ipv4_addr; }; chain pre { type nat hook prerouting priority dstnat; ip daddr vmap @m; }; chain tgt { meta mark set 1; }; }"
    for i in $(seq 1 $K); do echo "add chain ip sh c$i"; echo "add rule ip sh c$i ip saddr 10.0.0.1 dnat to 10.1.0.1"; done
    [ $K -gt 0 ] && seq 1 $K | awk '{printf "add element ip sh m { 10.%d.%d.%d : goto c%d }\n", int($1/62500)+100, int($1/250)%250, $1%250+1, $1}'
  } > "$TMP/shard.nft"
  $X nft -f "$TMP/shard.nft"
  line="   K=$K:"
  for kind in plain drop goto; do
    v=""
    for i in $(seq 1 9); do
      ip=20.0.$((RANDOM%250)).$((i+1))
      case $kind in
        plain) v="$v $(commit_s add element ip sh s "{ $ip }")";;
        drop) v="$v $(commit_s add element ip sh m "{ $ip : drop }")";;
        goto) v="$v $(commit_s add element ip sh m "{ $ip : goto tgt }")";;
      esac
    done
    line="$line $kind $(echo $v | median) s;"
  done
  echo "$line"
done
$X nft flush ruleset

echo "3. the family-wide chain dump (nft list chains), N chains"
$X nft add table ip big
have=0
for N in 20000 100000 300000; do
  seq $((have+1)) $N | sed 's/^/add chain ip big c/' > "$TMP/chains.nft"; have=$N
  $X nft -f "$TMP/chains.nft"
  s=$($X strace -T -e trace=recvmsg nft list chains 2>&1 >/dev/null | grep -o '<[0-9.]*>$' | tr -d '<>' | awk '{s+=$1} END {print s}')
  echo "   N=$N: $s s in the kernel"
done
