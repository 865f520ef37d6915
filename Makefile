# make test   - prepare the host (Debian packages as root, test user, .venv) and run the suite
# make check  - run the suite again without the set-up step
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: test setup check clean

test: setup check

setup:
	tests/setup-host.sh $(VENV) $(PYTHON)

check:
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
