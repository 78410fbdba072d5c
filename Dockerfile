# syntax=docker/dockerfile:1
# infergate: multi-stage build, small non-root runtime image.
#   docker build -t infergate:dev .
#   docker run --rm -p 8080:8080 -v $PWD/gateway.toml:/etc/infergate/infergate.toml infergate:dev

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/classify.rs && cp benches/classify.rs benches/policies.rs \
    && cargo build --release --locked --bin infergate \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin infergate \
    && strip target/release/infergate

# distroless/cc: glibc, CA certificates and a non-root user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/infergate /usr/local/bin/infergate
USER 65532:65532
EXPOSE 8080 9002 9090
ENTRYPOINT ["/usr/local/bin/infergate"]
CMD ["serve", "--config", "/etc/infergate/infergate.toml"]
