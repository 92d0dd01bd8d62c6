#!/usr/bin/env bash
# Start the whole hospital on this machine: gunicorn, RQ workers per queue, the DICOM server and
# the scheduler, against the PostgreSQL and Redis in DATABASE_URL / REDIS_URL. Ctrl-C or SIGTERM
# stops everything. Run only some roles on a machine with ROLES (see README "Running in production").
#
#   DATABASE_URL=postgresql+psycopg://hospital@db/hospital REDIS_URL=redis://cache:6379/0 \
#   SECRET_KEY=... DICOM_STORAGE_DIR=/srv/dicom deploy/run-production.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATABASE_URL:?set DATABASE_URL to the shared PostgreSQL}"
if [ -z "${REDIS_URL:-}" ] && [ -z "${REDIS_SENTINELS:-}" ]; then
    echo "set REDIS_URL to the shared Redis, or REDIS_SENTINELS (and REDIS_SENTINEL_MASTER) to its sentinels" >&2
    exit 1
fi
: "${SECRET_KEY:?set SECRET_KEY (the same on every machine)}"
: "${DICOM_STORAGE_DIR:?set DICOM_STORAGE_DIR to storage every machine sees (shared volume)}"
ROLES="${ROLES:-migrate web ai billing notify dicom scheduler}"
AI_WORKERS="${AI_WORKERS:-1}"            # the AI model is CPU/GPU-heavy: one per core or GPU
BILLING_WORKERS="${BILLING_WORKERS:-2}"
NOTIFY_WORKERS="${NOTIFY_WORKERS:-1}"    # notify + default queues
HOSPITAL="${HOSPITAL:-hospital}"
GUNICORN="${GUNICORN:-gunicorn}"
# Every process on this machine (gunicorn workers, RQ work horses, the DICOM node) writes its
# metrics here and /metrics adds them up (prometheus-client multiprocess mode). Emptied at each
# start: the files of a previous run's processes would otherwise be counted again.
PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/hospital-metrics}"
LOG_FORMAT="${LOG_FORMAT:-json}"          # one JSON object per line, with request_id, for the log shipper
for name in REDIS_URL REDIS_SENTINELS REDIS_SENTINEL_MASTER; do
    if [ -n "${!name:-}" ]; then export "$name"; fi
done
export DATABASE_URL SECRET_KEY DICOM_STORAGE_DIR PROMETHEUS_MULTIPROC_DIR LOG_FORMAT
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

pids=()
stop() {
    trap - INT TERM
    echo "stopping ${#pids[@]} process(es)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait || true
}
trap stop INT TERM

has_role() { [[ " $ROLES " == *" $1 "* ]]; }
start() {  # start NAME COMMAND...: run in the background, prefix its output with NAME
    local name=$1; shift
    ( exec "$@" ) > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=($!)
}

mkdir -p "$DICOM_STORAGE_DIR"
if has_role migrate; then
    "$HOSPITAL" db upgrade   # idempotent; safe on every start of every machine
fi
if has_role web; then
    start web "$GUNICORN" -c deploy/gunicorn.conf.py 'hospital.wsgi:app'
fi
for role_queues in "ai:ai:$AI_WORKERS" "billing:billing:$BILLING_WORKERS" "notify:notify default:$NOTIFY_WORKERS"; do
    IFS=: read -r role queues count <<<"$role_queues"
    has_role "$role" || continue
    args=(); for q in $queues; do args+=(--queue "$q"); done
    for ((i = 1; i <= count; i++)); do
        start "$role-worker-$i" "$HOSPITAL" worker "${args[@]}"
    done
done
if has_role dicom; then
    start dicom "$HOSPITAL" dicom --host "${DICOM_HOST:-0.0.0.0}" --port "${DICOM_PORT:-11112}"
fi
if has_role scheduler; then
    start scheduler "$HOSPITAL" scheduler   # exactly one per installation
fi

echo "started: $ROLES (${#pids[@]} processes)"
# If any process dies, stop the rest so a supervisor (systemd, Kubernetes) restarts the unit whole.
wait -n "${pids[@]}" || true
stop
exit 1
