# edp programs in a small runtime image. Build stage: Debian 12 with the
# compiler and -dev packages; runtime stage: only the shared libraries the
# programs need (ca-certificates: the system CA store, which amqps:// URLs
# without cacertfile trust). No credentials in the image: the broker URL
# comes from EDP_URL or EDP_URL_FILE at run time (see docker-compose.yml).
FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make pkg-config librabbitmq-dev libjansson-dev libssl-dev \
      libmicrohttpd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY lib lib
COPY patterns patterns
COPY cmd cmd
RUN make -j2 all && make install PREFIX=/usr/local DESTDIR=/out

FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librabbitmq4 libjansson4 libssl3 libmicrohttpd12 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/edp --create-home edp
COPY --from=build /out/usr/local/bin/ /usr/local/bin/
USER edp
WORKDIR /var/lib/edp
CMD ["edp-forward-receiver", "--help"]
