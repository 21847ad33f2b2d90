# certrl: the two commands a new user needs are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch==2.13.0 is the CPU build on local disk; pin it first so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[atari,mujoco,dev,sb3,stats,tensorboard]"
	# auto_LiRPA 0.3 pins torch<1.13 in its metadata: install without deps (see bounds/lirpa_compat.py)
	$(PIP) install -q --no-deps auto-lirpa==0.3
	$(VPY) -c "import bounds, certrl; from bounds.lirpa_compat import import_auto_lirpa; import_auto_lirpa()"
	touch $(STAMP)

demo: install
	$(VENV)/bin/certrl demo

test: install
	$(VPY) -m pytest -q -n 2 tests

test-slow: install
	$(VPY) -m pytest -q -m slow tests

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VPY) benchmarks/bounds_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
