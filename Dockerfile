# Build: docker build -t mixer .
# Run:   docker run --rm -p 8080:8080 -v $PWD/secret.key:/run/secrets/mixer-key:ro \
#            -e MIXER_AUTH_KEY_FILE=/run/secrets/mixer-key mixer
# It listens on 0.0.0.0, so without a key (README "Access tokens") it refuses to start unless
# run with -e MIXER_INSECURE_NO_AUTH=1 (anyone who reaches it may then join and moderate).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mixer && cp target/release/mixer /usr/local/bin/mixer

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 mixer
COPY --from=build /usr/local/bin/mixer /usr/local/bin/mixer
USER mixer
ENV MIXER_LISTEN=0.0.0.0:8080 \
    MIXER_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" >&3 && grep -q "200 OK" <&3'
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mixer"]
CMD ["serve"]
