# audiosocket-ai container image: the wheel built from this repository, installed into a
# virtualenv in a slim Python image, run as an unprivileged user.
#
#   docker build -t registry.example.com/audiosocket-ai:0.1.0 .
#   docker push registry.example.com/audiosocket-ai:0.1.0
#   docker run --rm -p 9092:9092 -p 127.0.0.1:9093:9093 \
#     -v "$PWD/agent.toml:/etc/audiosocket-ai/agent.toml:ro" registry.example.com/audiosocket-ai:0.1.0
#
# Settings come from /etc/audiosocket-ai/agent.toml (deploy/container.toml is baked in as
# the default; mount your own over it, e.g. a Kubernetes ConfigMap), then
# AUDIOSOCKET_AI_<SECTION>_<KEY> environment variables, then extra flags after `serve`.
# API keys only from the environment (OPENAI_API_KEY, DEEPGRAM_API_KEY, ELEVENLABS_API_KEY).
#
# The project's CI does not build this image (its machine has no container engine);
# tests/test_packaging.py checks this file against the CLI and the repository instead, and
# .ci/package.sh installs and runs the same wheel in a fresh virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, exactly as `python -m build` makes it for a release -----------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m pip install --no-cache-dir "build>=1.2"
COPY pyproject.toml README.md ./
COPY audiosocket_ai ./audiosocket_ai
RUN python -m build --wheel --outdir /dist .

# --- runtime: the wheel and its dependencies (the offline models ship inside them) ---------
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m venv /opt/audiosocket-ai
COPY --from=build /dist/ /tmp/dist/
RUN /opt/audiosocket-ai/bin/pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist
# The same uid/gid as deploy/kubernetes.yaml's securityContext.
RUN groupadd --system --gid 10001 audiosocket-ai \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/audiosocket-ai --create-home \
      --shell /usr/sbin/nologin audiosocket-ai
COPY deploy/container.toml /etc/audiosocket-ai/agent.toml
# HOME and the cache (the Piper voice rewritten for speed, built once at start: ~3 s) live
# under /tmp, so the root file system can be read-only (Kubernetes: an emptyDir on /tmp).
ENV PATH=/opt/audiosocket-ai/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    AUDIOSOCKET_AI_CACHE=/tmp/cache/audiosocket-ai/voices
USER 10001:10001
WORKDIR /var/lib/audiosocket-ai
# 9092: AudioSocket (no authentication: the config's `allow` and the network must restrict it);
# 9093: /healthz /readyz /metrics /calls/<uuid>.
EXPOSE 9092 9093
# Liveness, as the Kubernetes manifest's probe: /healthz stays 200 while the server drains.
# (No curl in the slim image: the venv's Python does the request.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9093/healthz', timeout=2)"]
# SIGTERM drains (deploy/container.toml sets drain_timeout); `docker stop -t 90` or a
# Kubernetes terminationGracePeriodSeconds longer than the drain keeps calls from being cut.
STOPSIGNAL SIGTERM
ENTRYPOINT ["audiosocket-ai"]
CMD ["serve", "--config", "/etc/audiosocket-ai/agent.toml"]
