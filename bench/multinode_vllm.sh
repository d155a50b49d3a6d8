#!/bin/bash
# One model over two "machines" for real: vLLM CPU with --nnodes 2 over two network
# namespaces, one `dx serve` in each (docs/FLEET.md, "Real vLLM and Ray over two namespaces").
# Needs root (ip netns), scripts/setup's .venvs/vllm and SmolLM2 in HF format
# (~/.cache/dx/smollm2-135m-hf). Not a CI test: one vLLM start takes minutes.
#   sudo bench/multinode_vllm.sh                # form, serve a chat, kill the worker's engine,
#                                               # poll until the leader serves again
#   LAUNCHER=ray sudo bench/multinode_vllm.sh   # the same with launcher: ray (needs Ray in
#                                               # .venvs/vllm; vLLM's CPU build refuses Ray)
#   KILL=0 / WAIT=900                           # no kill / seconds to wait for ready
# Output under /tmp/dx-multinode: dx0.log, dx1.log (leader, worker), s0/ s1/ (state, engine logs).
set -u
T=r17
A=dx17a-$T; B=dx17b-$T
cleanup() {
  for l in ha$T hb$T ga$T gb$T; do ip link del $l 2>/dev/null; done
  for ns in $A $B; do for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p 2>/dev/null; done; ip netns del $ns 2>/dev/null; done
}
trap cleanup EXIT
cleanup
ip netns add $A; ip netns add $B
ip link add ga$T type veth peer name gb$T
ip link add ha$T type veth peer name xa$T
ip link add hb$T type veth peer name xb$T
setup() { ns=$1 g=$2 x=$3 h=$4 hip=$5 nip=$6 gip=$7
  ip link set $g netns $ns; ip -n $ns link set $g name grp0; ip -n $ns addr add $gip/24 dev grp0
  ip link set $x netns $ns; ip -n $ns addr add $nip/30 dev $x
  for d in lo grp0 $x; do ip -n $ns link set $d up; done
  ip addr add $hip/30 dev $h; ip link set $h up; }
setup $A ga$T xa$T ha$T 10.79.1.1 10.79.1.2 10.77.0.1
setup $B gb$T xb$T hb$T 10.79.2.1 10.79.2.2 10.77.0.2
D=/tmp/dx-multinode
mkdir -p $D $D/rayA $D/rayB
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cat > $D/dx.yaml <<YAML
server: {host: "\${DX_HOST}", port: 11434, state_dir: "\${DX_STATE}", shutdown_timeout: 5}
models:
  smol:
    engine: vllm
    model: $HOME/.cache/dx/smollm2-135m-hf
    python: $ROOT/.venvs/vllm/bin/python
    context: 1024
    startup_timeout: 900
    args: [--pipeline-parallel-size, "2", --max-num-seqs, "4"]
    env: {VLLM_CPU_KVCACHE_SPACE: "1", RAY_TMPDIR: "\${RAY_TMPDIR}"}
    group:
      size: 2
      rank: \${DX_GROUP_RANK}
      leader: 10.77.0.1
      interface: grp0
      launcher: ${LAUNCHER:-vllm}
YAML
cd $ROOT
rm -rf $D/s0 $D/s1
DX_HOST=10.79.1.2 DX_STATE=$D/s0 DX_GROUP_RANK=0 RAY_TMPDIR=$D/rayA ip netns exec $A .venv/bin/python -m dxproxy serve --config $D/dx.yaml > $D/dx0.log 2>&1 &
DX_HOST=10.79.2.2 DX_STATE=$D/s1 DX_GROUP_RANK=1 RAY_TMPDIR=$D/rayB ip netns exec $B .venv/bin/python -m dxproxy serve --config $D/dx.yaml > $D/dx1.log 2>&1 &
t0=$(date +%s)
echo "start $(date -u +%T) load: $(cat /proc/loadavg)"
while true; do
  code=$(curl -s -o $D/ready0.json -w '%{http_code}' http://10.79.1.2:11434/ready)
  now=$(( $(date +%s) - t0 ))
  if [ "$code" = 200 ]; then echo "leader ready after ${now}s load: $(cat /proc/loadavg)"; break; fi
  if [ $now -gt ${WAIT:-600} ]; then echo "leader not ready after ${now}s"; cat $D/ready0.json; break; fi
  sleep 5
done
cat $D/ready0.json; echo; curl -s http://10.79.2.2:11434/ready; echo
K=$(cat $D/s0/api-key)
curl -s -m 120 http://10.79.1.2:11434/v1/chat/completions -H "Authorization: Bearer $K" -H 'Content-Type: application/json' \
  -d '{"model":"smol","temperature":0,"max_tokens":16,"messages":[{"role":"user","content":"What is the capital of France?"}]}'; echo
if [ "${KILL:-1}" = 1 ]; then
  echo "killing the worker's engine group at $(date -u +%T)"
  for p in $(ip netns pids $B); do if tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qE "headless|ray start"; then echo "pid $p: $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-120)"; kill -9 $p; fi; done
  for i in $(seq 1 150); do sleep 4; code=$(curl -s -o $D/r.json -w '%{http_code}' -m 20 http://10.79.1.2:11434/v1/chat/completions -H "Authorization: Bearer $K" -H 'Content-Type: application/json' -d '{"model":"smol","temperature":0,"max_tokens":8,"messages":[{"role":"user","content":"What is the capital of France?"}]}'); echo "$(date -u +%T) chat $code $(head -c 400 $D/r.json 2>/dev/null)"; rm -f $D/r.json; if [ "$code" = 200 ]; then echo "served again $(date -u +%T) load: $(cat /proc/loadavg)"; break; fi; done
fi
