# ccci-test/busybox:latest: the cheapest image for tests (about 2 MB).
# Context: busybox (the static binary from the host's busybox-static), passwd, group.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY passwd group /etc/
# /usr/bin/env for scripts with "#!/usr/bin/env sh"; /tmp world-writable and sticky.
RUN mkdir -p /usr/bin /home/www \
 && ln -s /bin/env /usr/bin/env \
 && chown 1000:1000 /home/www \
 && mkdir -m 1777 /tmp
CMD ["/bin/sh"]
