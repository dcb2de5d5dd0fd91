#!/bin/sh
# Create the secrets deploy/compose.yaml mounts, once, readable by their owner only. Never commit them.
set -eu
cd "$(dirname "$0")"
umask 077
for name in ght_db_password ght_kek; do
    if [ ! -s "$name.txt" ]; then
        # 48 random bytes, base64: no quote or colon to escape anywhere.
        head -c 48 /dev/urandom | base64 | tr -d '\n=+/' > "$name.txt"
        echo "created deploy/secrets/$name.txt"
    fi
done
# The containers run as uid 10001 (ght) and postgres: compose bind-mounts these files as they are, so
# let those users read them (podman/docker rootless: use `podman unshare chown` instead).
echo "keep these files out of version control and back up ght_kek.txt: without it no signing key opens"
