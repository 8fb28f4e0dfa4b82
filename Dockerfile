# syntax=docker/dockerfile:1
# Parley broker image: compile TypeScript in a build stage, run the compiled JavaScript
# as the unprivileged `node` user in a slim runtime stage.
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: install all dependencies, compile to dist/, then drop the dev dependencies ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
# better-sqlite3 (the embedded message store) compiles from source when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY broker ./broker
COPY plugins ./plugins
COPY schemas ./schemas
COPY scripts ./scripts
COPY types ./types
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Code stays owned by root (read-only to the service user); only the data directory is writable.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
RUN mkdir -p /app/data && chown node:node /app/data
USER node
# MQTT/TCP, MQTT/TLS, MQTT/WebSocket, operations HTTP (/healthz, /readyz, /metrics)
EXPOSE 1883 8883 8080 9090
# The slim image has no curl: probe liveness with Node's own fetch.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/scripts/parley.js", "start"]
