# Build: the jitgate binary, release profile.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin jitgate

# Run: slim Debian, non-root.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /etc/jitgate --shell /usr/sbin/nologin jitgate \
    && mkdir -p /etc/jitgate/certs /etc/jitgate/policies /etc/jitgate/state /var/lib/jitgate/audit \
    && chown -R jitgate:jitgate /etc/jitgate /var/lib/jitgate
COPY --from=build /src/target/release/jitgate /usr/local/bin/jitgate
COPY docker/jitgate.yaml /etc/jitgate/jitgate.yaml
COPY policies /etc/jitgate/policies
USER jitgate
WORKDIR /etc/jitgate
# Postgres listener, SSH bastion (inside TLS, for jitgate tunnel).
EXPOSE 6432 2222
# Config, certificates (CA, server cert and key, CRL), policies, state (the bastion's SSH
# host key), audit.
VOLUME ["/etc/jitgate", "/etc/jitgate/certs", "/etc/jitgate/policies", "/etc/jitgate/state", "/var/lib/jitgate/audit"]
HEALTHCHECK --interval=30s --timeout=5s CMD ["jitgate", "probe", "127.0.0.1:6432"]
ENTRYPOINT ["jitgate"]
CMD ["serve", "--config", "/etc/jitgate/jitgate.yaml"]
