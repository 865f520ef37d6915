# make test   - prepare the host (Debian packages as root, test user, .venv) and run the suite
# make check  - run the suite again without the set-up step
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: test setup check clean

test: setup check

setup:
	tests/setup-host.sh $(VENV) $(PYTHON)

# the venv's real path: tests/setup-host.sh may keep it outside the checkout (see there)
check:
	PATH="$(realpath $(VENV))/bin:$$PATH" $(realpath $(VENV))/bin/pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

clean:
	rm -rf $(realpath $(VENV)) $(VENV) build *.egg-info
