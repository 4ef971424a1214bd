#!/usr/bin/env bash
# Two "hosts" on one machine: network namespaces cg_a (10.77.0.1) and cg_b (10.77.0.2)
# joined by a veth pair; Open MPI's TCP transport between them; the remote daemon
# started with `ip netns exec` by a tiny rsh agent instead of ssh. Runs the ping-pong
# (if built) and 20 steps of a tiny model, compares the weights with one process,
# and removes the namespaces. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
cleanup() { ip netns del cg_a 2>/dev/null || true; ip netns del cg_b 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
cleanup; tmp=$(mktemp -d)
ip netns add cg_a; ip netns add cg_b
ip link add cg_va type veth peer name cg_vb
ip link set cg_va netns cg_a; ip link set cg_vb netns cg_b
ip -n cg_a addr add 10.77.0.1/24 dev cg_va; ip -n cg_b addr add 10.77.0.2/24 dev cg_vb
for n in a b; do ip -n cg_$n link set lo up; done
ip -n cg_a link set cg_va up; ip -n cg_b link set cg_vb up
cat > "$tmp/agent.sh" <<'AGENT'
#!/bin/sh
host=$1; shift
case $host in 10.77.0.1) ns=cg_a;; 10.77.0.2) ns=cg_b;; *) echo "agent: unknown host $host" >&2; exit 1;; esac
exec ip netns exec $ns sh -c "$*"
AGENT
chmod +x "$tmp/agent.sh"
mpi=(ip netns exec cg_a mpirun --allow-run-as-root --oversubscribe --bind-to none --mca plm_rsh_agent "$tmp/agent.sh"
     --host 10.77.0.1,10.77.0.2 -np 2 --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24
     --mca oob_tcp_if_include 10.77.0.0/24)
"${mpi[@]}" sh -c 'echo "rank $OMPI_COMM_WORLD_RANK in namespace $(ip netns identify $$)"'
[ -x build/chargpt_mpi_pingpong ] && timeout 300 "${mpi[@]}" build/chargpt_mpi_pingpong
python3 -c "
import random; random.seed(5); w='to be or not the king shall love thee and night'.split()
open('$tmp/c.txt','w').write(''.join(random.choice(w)+('.\n' if random.random()<0.11 else ' ') for _ in range(3000)))"
flags=(train --data "$tmp/c.txt" --n-layer 2 --n-head 2 --n-embd 32 --block-size 16 --batch-size 7 --shard-size 2
       --steps 20 --threads 1 --eval-interval 0 --eval-iters 2)
build/chargpt "${flags[@]}" --out "$tmp/one.safetensors" > /dev/null
"${mpi[@]}" build/chargpt "${flags[@]}" --out "$tmp/two.safetensors" | tail -1
cmp "$tmp/one.safetensors" "$tmp/two.safetensors" && echo "2 namespaces over TCP: weights identical to one process"
