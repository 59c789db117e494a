# A stand-in for the official rabbitmq:3.10-management image, built by
# tests/container-engine.sh only where no registry answers: a test
# fixture, never what users run (docker-compose.yml names the official
# image). Debian's rabbitmq-server is 3.10.8, the version the compose file
# names; the management and consistent-hash plugins ship with it.
FROM docker.io/library/debian:12
# policy-rc.d answering 101 keeps the package's postinst from starting
# the server inside the build (no init system runs there).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
 && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/rabbitmq/conf.d \
 && echo '[rabbitmq_management,rabbitmq_consistent_hash_exchange].' > /etc/rabbitmq/enabled_plugins
COPY rabbitmq-entrypoint.sh /usr/local/bin/
# Logs on stdout, as the official image's (docker compose logs).
ENV RABBITMQ_LOGS=-
EXPOSE 5672 15672
ENTRYPOINT ["rabbitmq-entrypoint.sh"]
CMD ["rabbitmq-server"]
