# ccci-test/postgres:15: Debian's PostgreSQL 15 server binaries, no cluster.
# Recipes run it with `user: postgres` and PGDATA=/var/lib/postgresql/data (a
# named volume mounted there inherits the owner and mode of the image's dir).
FROM ccci-test/debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
# create_main_cluster = false: a cluster baked into the image would only be
# dead weight; recipes run initdb into their own volume.
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
ENV LANG=C.UTF-8 PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data
