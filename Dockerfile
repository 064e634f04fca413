# lending-grpc container image. Build: docker build -t lending-grpc:0.1.0 .
#
# Two stages: the first installs the package and its dependencies into a
# virtualenv, the second copies only that virtualenv onto a clean slim base
# and runs it as an unprivileged user. All runtime dependencies ship as
# manylinux wheels, so no compiler is needed in either stage.

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/lending
COPY pyproject.toml README.md ./
COPY lending_grpc ./lending_grpc
COPY generated ./generated
# The postgres extra brings psycopg with its bundled libpq; SQLite needs nothing more. The sentry
# extra is loaded only when LENDING_SENTRY_DSN is set; the nats extra only by `lending-grpc relay`,
# which runs from this same image (docs/events.md).
RUN /opt/lending/bin/pip install --no-compile '.[postgres,sentry,nats]'

FROM python:3.12-slim-bookworm
ENV PATH=/opt/lending/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LENDING_LISTEN=0.0.0.0:50051 \
    LENDING_DATABASE_URL=sqlite:////data/lending.db \
    LENDING_LOG_FORMAT=json
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 lending \
    && useradd --system --uid 10001 --gid lending --home-dir /nonexistent --shell /usr/sbin/nologin lending \
    && mkdir /data \
    && chown lending:lending /data \
    && chmod 0700 /data
COPY --from=build /opt/lending /opt/lending
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9090
# The server's own grpc.health.v1 service, asked over loopback (plaintext; pass --tls-ca and
# friends in an override when the server itself serves TLS).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["lending-grpc", "health", "--server", "127.0.0.1:50051", "--timeout", "3"]
ENTRYPOINT ["lending-grpc"]
# Plaintext on 0.0.0.0 is refused unless TLS is configured (LENDING_TLS_CERT/KEY) or
# LENDING_INSECURE=true says that a proxy or mesh in front terminates TLS.
CMD ["serve"]
