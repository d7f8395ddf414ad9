# ossec-dfir: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= $(CURDIR)/demo

.PHONY: venv install demo test bench lint clean snippets fuzz

# Create the virtualenv and install ossec-dfir (editable) with the test extra.
# On a fresh Debian, python3 -m venv needs python3-venv: installed here when root.
$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	    rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; fi; }
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/.installed

# Install into an OSSEC/Wazuh tree: make install OSSEC_DIR=/var/ossec
OSSEC_DIR ?= /var/ossec
install: venv
	$(BIN)/ossec-dfir --ossec-dir $(OSSEC_DIR) install

# Simulated alert end to end on this host, then the incident is printed.
demo: venv
	$(BIN)/ossec-dfir demo --dir $(DEMO)

test: venv
	$(BIN)/python -m pytest -q

# A longer fuzzing run of the request parser and the entry point than CI's.
FUZZ_EXAMPLES ?= 100000
fuzz: venv
	OSSEC_DFIR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/hostile/test_fuzz.py

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: venv
	@$(BIN)/python -m ruff --version >/dev/null 2>&1 || $(BIN)/pip install -q ruff
	$(BIN)/python -m ruff check ossec_dfir tests bench

# Regenerate etc/ossec.conf.d/ (the <command> snippets of the shipped profiles,
# and the decoder and rules XML the package carries).
snippets: venv
	$(BIN)/python -c 'from ossec_dfir.ossec.snippets import write_snippets; write_snippets("etc/ossec.conf.d")'

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
