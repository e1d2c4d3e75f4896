# ccci-test/python:bookworm: Debian's python3 with psycopg2, for app fixtures.
FROM ccci-test/debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-psycopg2 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1
CMD ["python3"]
