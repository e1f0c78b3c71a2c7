# Build: the same steps as .ci/run (cargo build --release --locked). rustls only: no OpenSSL.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
COPY docs docs
COPY examples examples
# The workspace's other members (the fake Salesforce, the test kit): cargo reads their
# manifests to resolve the workspace, though the service's binary does not link them.
COPY crates crates
RUN cargo build --release --locked --bin valo-oauth

# The fake Salesforce, for a trial without an org (docker-compose.yml builds this target;
# the default target below does not need it).
FROM build AS fake-build
RUN cargo build --release --locked -p fake-salesforce

FROM debian:bookworm-slim AS fake-salesforce
COPY --from=fake-build /src/target/release/fake-salesforce /usr/local/bin/fake-salesforce
USER 10001
EXPOSE 9999
ENTRYPOINT ["/usr/local/bin/fake-salesforce"]

# Run: the binary on a slim base, as a non-root user, in production mode.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin valo \
 && mkdir -p /app/data && chown 10001:10001 /app/data
COPY --from=build /src/target/release/valo-oauth /usr/local/bin/valo-oauth
COPY config /app/config
WORKDIR /app
USER 10001
# 8080 faces the internet (the callback); 8081 is the internal API, metrics and readiness.
ENV VALO_OAUTH_ENV=production \
    VALO_OAUTH_LISTEN=0.0.0.0:8080 \
    VALO_OAUTH_INTERNAL_LISTEN=0.0.0.0:8081
EXPOSE 8080 8081
# No shell tools needed: the binary checks its own /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/valo-oauth", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/valo-oauth"]
CMD ["serve"]
