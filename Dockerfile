# graceserve: drains HTTP/TCP servers gracefully on SIGTERM.
#
#   docker build -t graceserve .
#   docker run -d --name gs -p 127.0.0.1:8000:8000 graceserve   # demo app on port 8000
#   curl -s 'http://127.0.0.1:8000/slow?seconds=3' & docker stop gs
#       -> the slow request still gets its answer; then:
#   docker inspect --format '{{.State.ExitCode}}' gs   # 0 clean, 4 stragglers were cut
#   docker logs gs && docker rm gs
#
# Serve your own handler (a BaseHTTPRequestHandler or BaseRequestHandler subclass):
#
#   FROM graceserve
#   COPY myapp.py /app/
#   CMD ["myapp:Handler"]
#
# TARGET is imported with the working directory (/app) on sys.path. The inherited
# HEALTHCHECK asks GET /healthz, which graceserve answers itself for any HTTP app
# (GRACESERVE_HEALTH_PATH below: 200, then 503 from the moment a stop begins), so a
# Flask or Django app needs no route for it. A plain TCP server (a BaseRequestHandler)
# has no HTTP: give it `ENV GRACESERVE_HEALTH_PATH=` and `HEALTHCHECK NONE` (or its
# own check).
#
# Another base image with Python >= 3.10 works too, e.g. the Debian-built stand-in that
# .ci/container-setup makes where no registry is reachable (tests/test_container.py):
#   podman build --build-arg BASE_IMAGE=localhost/pyslim:bookworm -t graceserve .
# Commands say python3, which the official python images and Debian's python3 both have.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# No bytecode written at run time (pip compiles it at install; the user cannot write
# there anyway) and unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# graceserve has no runtime dependencies: pip installs only the package and its
# console script. The source is only needed for the install.
COPY . /tmp/graceserve-src
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore /tmp/graceserve-src \
    && rm -rf /tmp/graceserve-src \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin graceserve \
    && mkdir -p /app

WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Listen on every interface of the container; the grace (8 s) fits inside the 10 s
# that `docker stop` / `podman stop` wait before SIGKILL, so graceserve, not SIGKILL,
# decides what is cut and logs it. Raise both together (docker stop -t, Kubernetes'
# terminationGracePeriodSeconds) for longer requests.
ENV GRACESERVE_BIND=0.0.0.0:8000 \
    GRACESERVE_GRACE=8 \
    GRACESERVE_HEALTH_PATH=/healthz
EXPOSE 8000

# graceserve drains on TERM. The exec form below makes Python PID 1 directly (no shell
# in between that would swallow the signal); graceserve installs its handlers, so PID 1
# does not ignore TERM.
STOPSIGNAL SIGTERM

# No curl in slim images: ask /healthz with urllib, on the port of GRACESERVE_BIND
# (503 while draining makes urlopen raise, so the check fails).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; h, _, p = os.environ.get('GRACESERVE_BIND', '0.0.0.0:8000').rpartition(':'); h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); r.urlopen('http://%s:%s/healthz' % (h, p), timeout=2)"]

# `docker run IMAGE --grace 20 myapp:Handler` passes flags and TARGET to graceserve.
# The empty CMD drops the base image's CMD ["python3"], which would become a TARGET.
ENTRYPOINT ["python3", "-m", "graceserve"]
CMD []
