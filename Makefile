# The two set-up commands of the README are `make run` and `make test`.
# Both install what is missing first, so they work on a fresh machine.
PYTHON ?= python3
STAMP := .install.stamp
TWISTD := $(PYTHON) -c "from twisted.scripts.twistd import run; run()"

.PHONY: run test install dcap-client bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m pip install --quiet --upgrade pip
	# compat mode puts the checkout itself on sys.path, which is what lets
	# Twisted find the flat-layout twisted/plugins/ directory.
	$(PYTHON) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

# The real DCAP clients (dccp, libpdcap) that the tests drive.
dcap-client:
	command -v dccp >/dev/null || { apt-get update -qq && apt-get install -y -qq dcap libdcap1 >/dev/null; }

run: $(STAMP)
	$(TWISTD) --nodaemon --pidfile= -y conf/local.tac

test: $(STAMP) dcap-client
	$(PYTHON) -m pytest -q

bench: $(STAMP) dcap-client
	for b in bench/*_bench.py bench/dcap_throughput.py; do $(PYTHON) $$b || exit 1; done

clean:
	rm -f $(STAMP)
