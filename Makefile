# The two set-up commands of the README are `make run` and `make test`.
# Both make their own virtual environment first (Debian's python3 refuses
# `pip install` outside one), so they work on a fresh machine.
# PYTHON picks the interpreter the environment is made from: CPython's goes in .venv,
# PyPy's in .venv-pypy (so both coexist), installed under constraints-pypy.txt, which
# holds PyPy 3.9 to releases that ship wheels for it.  VENV= overrides the directory.
PYTHON ?= python3
# The interpreter says what it is; one not installed yet is known by its name
# (installing pypy3-venv then brings pypy3 too).
IMPLEMENTATION := $(or $(shell $(PYTHON) -c 'import sys; print(sys.implementation.name)' 2>/dev/null),\
                       $(if $(findstring pypy,$(notdir $(PYTHON))),pypy,cpython))
ifeq ($(IMPLEMENTATION),pypy)
VENV ?= .venv-pypy
CONSTRAINTS := constraints-pypy.txt
VENV_PACKAGE := pypy3-venv
else
VENV ?= .venv
CONSTRAINTS :=
VENV_PACKAGE := python3-venv
endif
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test install venv dcap-client bench clean

# Debian splits venv (and its ensurepip) into python3-venv (pypy3-venv for PyPy):
# install it when missing.
$(VPY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  echo "$(PYTHON) cannot make a virtual environment; installing $(VENV_PACKAGE)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(VENV_PACKAGE) >/dev/null \
	    && $(PYTHON) -m venv $(VENV); }

# An editable install: a .pth file puts the checkout on sys.path (setup.cfg's
# package_dir), so twistd finds twisted/plugins/ there and edits need no reinstall.
$(STAMP): $(VPY) setup.cfg pyproject.toml $(CONSTRAINTS)
	$(VPY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $(STAMP)

venv install: $(STAMP)

# The real DCAP clients (dccp, libpdcap) that the tests drive, and dcap's ssl tunnel plugin.
dcap-client:
	@command -v dccp >/dev/null && [ -n "$(wildcard /usr/lib/*/dcap/libsslTunnel.so)" ] || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcap libdcap1 dcap-tunnel-ssl >/dev/null; }

run: $(STAMP)
	$(VENV)/bin/twistd --nodaemon --pidfile= -y conf/local.tac

test: $(STAMP) dcap-client
	$(VPY) -m pytest -q

bench: $(STAMP) dcap-client
	for b in bench/*_bench.py bench/dcap_throughput.py; do $(VPY) $$b || exit 1; done

clean:
	rm -rf .venv .venv-pypy $(VENV)
