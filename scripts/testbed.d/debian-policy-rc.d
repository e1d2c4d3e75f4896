#!/bin/sh
# Installed into ccci-test/debian: packages installed inside an image must not
# try to start their services (there is no init system in a container).
exit 101
