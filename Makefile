# Two commands matter: `make demo` and `make test`. Both set everything up
# on a fresh machine first (system packages, .venv, the package and extras).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install system-deps node-deps generate check-generated lint test test-fast demo bench serve cluster clean

install: $(STAMP) node-deps

# System tools the sandboxes and tests use, installed only when missing and
# only where we can (root with apt-get): bubblewrap (namespaces), util-linux's
# setpriv, nsenter and mount, e2fsprogs' mkfs.ext4 (per-environment disk
# quotas), slirp4netns and nftables (egress networking), iproute2 (the network
# tests' own hosts), libseccomp2 (the seccomp filter), Node.js with npm for
# the polyglot client test, and PostgreSQL and redis-server, which the shared-store
# tests and `make cluster` start themselves in temp dirs (no service is enabled or used).
SYSTEM_TOOLS := bwrap:bubblewrap setpriv:util-linux nsenter:util-linux mkfs.ext4:e2fsprogs \
  slirp4netns:slirp4netns nft:nftables ip:iproute2 node:nodejs npm:npm \
  pg_ctlcluster:postgresql redis-server:redis-server \
  mmdebstrap:mmdebstrap skopeo:skopeo umoci:umoci busybox:busybox-static runsc:runsc

system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing="$$missing libseccomp2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing and cannot install them here; sandboxes fall back to weaker isolation" >&2; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,server,cli,metrics,analysis,local,inspect]'
	touch $(STAMP)

node-deps: tests/polyglot/node_modules/.installed

tests/polyglot/node_modules/.installed: tests/polyglot/package.json | system-deps
	cd tests/polyglot && npm ci --no-audit --no-fund --silent
	touch $@

# Code generated from other code, committed, and checked by CI against its source.
GENERATED := sandbox_sdk/api sandbox_sdk/client/_sync

# Regenerates sandbox_sdk/api/ from proto/ with the pinned grpcio-tools and
# mypy-protobuf, and the sync client from the asyncio one with unasync.
generate: $(STAMP)
	$(PY) scripts/generate_api.py
	$(PY) scripts/generate_sync_client.py

check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || \
	  { echo "generated code is out of date with its source: run 'make generate' and commit the result" >&2; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(GENERATED)); \
	  if [ -n "$$untracked" ]; then echo "untracked generated files: $$untracked" >&2; exit 1; fi

lint: install
	$(BIN)/buf lint
	$(BIN)/ruff check sandbox_sdk tests benchmarks scripts
	$(BIN)/ruff format --check sandbox_sdk tests benchmarks scripts
	$(BIN)/mypy --strict sandbox_sdk

# The tests mostly wait (sandboxes, servers, timeouts), so two pytest-xdist workers cut
# their wall time on a 2-core machine; a test file runs whole in one worker, its module's
# servers started once (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: lint check-generated
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The tests without the lint and generation checks, for a quick loop.
test-fast: install
	$(BIN)/pytest -x -q

demo: install
	$(PY) scripts/demo.py

bench: install
	$(PY) benchmarks/run_all.py

serve: install
	$(BIN)/sandbox-sdk serve

# A throwaway local cluster: PostgreSQL, redis-server, 2 gateways and 3 orchestrators
# as processes on loopback; prints the addresses and the SDK target, Ctrl-C stops it all.
cluster: install
	$(BIN)/sandbox-cluster up

clean:
	rm -rf $(VENV) build dist *.egg-info tests/polyglot/node_modules .pytest_cache .mypy_cache .ruff_cache
