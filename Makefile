# The two set-up commands of the README:
#   make demo   install into .venv and run the whole slice on the bundled sample GHT (no server needed)
#   make test   install what the tests need (Debian packages, Python packages), lint, type-check, test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real servers the tests start themselves: OpenLDAP, PostgreSQL, Chromium and nginx (tests/test_cluster.py).
APT_PACKAGES := slapd ldap-utils postgresql chromium nginx
# ...and Samba Active Directory domain controllers (tests/servers/samba.py; they need root).
APT_PACKAGES += samba-ad-dc samba samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools smbclient
# ...and promtool (in Debian's prometheus package) to check the alerting rules and the metrics served.
APT_PACKAGES += prometheus

.PHONY: demo test lint system-packages node-packages benchmark

$(BIN)/ght: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/ght
	$(BIN)/ght demo

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The gateway's independent OIDC peers (npm openid-client, oidc-provider), pinned by package-lock.json.
node-packages: system-packages
	@command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --prefix tests/oidc_peers --no-audit --no-fund --loglevel=error

lint: $(BIN)/ght
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system-packages node-packages lint
	$(BIN)/pytest -q

# The benchmarks also need wrk (the gateway's grants are driven by it; without it, by a slower client).
benchmark: APT_PACKAGES += wrk
benchmark: system-packages node-packages $(BIN)/ght
	$(BIN)/python benchmarks/sync_full.py
	$(BIN)/python benchmarks/sync_delta.py
	$(BIN)/python benchmarks/gateway_grants.py --database sqlite
	$(BIN)/python benchmarks/gateway_grants.py --database postgres
