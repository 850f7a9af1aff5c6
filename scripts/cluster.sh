#!/usr/bin/env bash
# The real steps of taking a raykd study to the AWS A100 cluster of cluster.yaml.
#
#   scripts/cluster.sh up                 # ray up (asks before creating instances)
#   scripts/cluster.sh dashboard          # SSH tunnel: dashboard on http://127.0.0.1:8265 (token: ~/.ray/auth_token)
#   scripts/cluster.sh submit [CONFIG] [--storage s3://BUCKET/raykd] [-- extra raykd.tune args]
#   scripts/cluster.sh tensorboard [EXPERIMENT_URI]   # TensorBoard on the head, tunnelled to 127.0.0.1:6006
#   scripts/cluster.sh report EXPERIMENT_URI          # raykd.report on the head, copied back to ./reports/
#   scripts/cluster.sh down
#
# Before `up`: set the SSH CIDR in cluster.yaml to your own network, have AWS credentials, and a Ray
# auth token in ~/.ray/auth_token (`ray get-auth-token --generate` creates one); it is mounted on
# every node and nothing but SSH is reachable from outside. Needs `ray` (same version as the image).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER_YAML:-cluster.yaml}
cmd=${1:-help}
shift || true

need_token() {
  if [[ ! -s "$HOME/.ray/auth_token" ]]; then
    echo "error: no Ray auth token at ~/.ray/auth_token (create one: ray get-auth-token --generate)" >&2
    exit 2
  fi
}

case "$cmd" in
  up)
    need_token
    if grep -q "203.0.113.0/24" "$CLUSTER"; then
      echo "error: $CLUSTER still allows SSH from the documentation range 203.0.113.0/24; set your network's CIDR" >&2
      exit 2
    fi
    ray up "$CLUSTER" "$@"
    ;;
  dashboard)
    echo "dashboard: http://127.0.0.1:8265  (the page asks for the token: $(tr -d '\n' < "$HOME/.ray/auth_token" | cut -c1-6)… from ~/.ray/auth_token)"
    echo "its Metrics view embeds Grafana (http://127.0.0.1:3000, raykd's dashboard: 'raykd — trials live'); Prometheus http://127.0.0.1:9090"
    ray exec "$CLUSTER" 'sleep infinity' --port-forward=3000 --port-forward=9090 > /dev/null 2>&1 &
    tunnel=$!
    trap 'kill $tunnel 2>/dev/null' EXIT
    ray dashboard "$CLUSTER" "$@"
    ;;
  submit)
    need_token
    config=${1:-search_spaces/paper.yaml}
    shift || true
    storage=""
    if [[ "${1:-}" == "--storage" ]]; then storage="--storage $2"; shift 2; fi
    [[ "${1:-}" == "--" ]] && shift
    # multi-node checkpoints need shared storage: without --storage, experiment.storage of the YAML is used
    exec ray exec "$CLUSTER" "cd ~/raykd && python -m raykd.tune --address auto --config $config $storage $*" \
      --tmux
    ;;
  tensorboard)
    logdir=${1:-/home/ray/raykd/.raykd/experiments}
    ray exec "$CLUSTER" "tmux new -d -s tb 'tensorboard --logdir $logdir --host 127.0.0.1 --port 6006' || true"
    echo "TensorBoard: http://127.0.0.1:6006 (tunnel open while this runs; Ctrl-C to close)"
    exec ray attach "$CLUSTER" -p 6006 --no-config-cache < /dev/null
    ;;
  report)
    exp=${1:?usage: scripts/cluster.sh report EXPERIMENT_URI_OR_PATH}
    name=$(basename "$exp")
    ray exec "$CLUSTER" "cd ~/raykd && python -m raykd.report $exp --out /tmp/raykd-report-$name"
    mkdir -p reports
    ray rsync-down "$CLUSTER" "/tmp/raykd-report-$name/" "reports/$name/"
    echo "report: reports/$name/table.md"
    ;;
  down)
    exec ray down "$CLUSTER" "$@"
    ;;
  *)
    sed -n '2,14p' "$0"
    ;;
esac
