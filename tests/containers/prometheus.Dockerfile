# A stand-in for the official prom/prometheus:v2.42.0 image, built by
# tests/container-engine.sh only where no registry answers: a test
# fixture, never what users run (docker-compose.yml names the official
# image). Debian's prometheus is 2.42.0, the version the compose file
# names. What the official image does, done the same way: the server is
# the entrypoint, as user nobody, in /prometheus (a volume), with the
# arguments of its CMD: the configuration /etc/prometheus/prometheus.yml
# (the compose file mounts docker/prometheus.yml there), the TSDB in
# /prometheus, the console directories under /usr/share/prometheus, and
# the default listen address, every interface on port 9090.
FROM docker.io/library/debian:12
# policy-rc.d answering 101 keeps the package's postinst from starting
# the server inside the build (no init system runs there). Debian keeps
# its (empty) console directories under /etc/prometheus; the official
# image has them under /usr/share/prometheus, where its CMD points.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
 && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -f /usr/sbin/policy-rc.d \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /etc/prometheus/console_libraries /usr/share/prometheus/console_libraries \
 && ln -s /etc/prometheus/consoles /usr/share/prometheus/consoles \
 && mkdir -p /prometheus \
 && chown -R nobody:nogroup /etc/prometheus /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus", \
     "--web.console.libraries=/usr/share/prometheus/console_libraries", \
     "--web.console.templates=/usr/share/prometheus/consoles"]
