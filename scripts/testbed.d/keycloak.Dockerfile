# ccci-test/keycloak:<version>: the Keycloak Quarkus distribution on Debian's
# OpenJDK 17, run as uid 1000 like the upstream image.
# Context: keycloak/ (the unzipped keycloak-quarkus-dist).
FROM ccci-test/debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 1000 keycloak \
 && useradd -u 1000 -g keycloak -d /opt/keycloak -M -s /usr/sbin/nologin keycloak
COPY --chown=1000:1000 keycloak/ /opt/keycloak/
USER 1000
WORKDIR /opt/keycloak
ENV LANG=C.UTF-8
EXPOSE 8080
ENTRYPOINT ["/opt/keycloak/bin/kc.sh"]
