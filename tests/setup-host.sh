#!/bin/bash
# Prepare this host for the test suite: Debian packages (as root), the unprivileged test user
# with subordinate id ranges, and a virtualenv with crate and its test dependencies.
# Idempotent: packages are installed only when missing, the venv is reused.
# usage: tests/setup-host.sh VENV [PYTHON]
set -euo pipefail
VENV=${1:?usage: setup-host.sh VENV [PYTHON]}
PYTHON=${2:-/usr/bin/python3}
TEST_USER=${CRATE_TEST_USER:-crate-test}

# what the tests drive for real: the distribution registry, busybox for test images, htpasswd
# for the basic-auth registry, new[ug]idmap for rootless ranges, libseccomp, the reference tools
# compared against (runc, skopeo, umoci), and Python's venv
PKGS=(docker-registry busybox-static apache2-utils uidmap libseccomp2 runc skopeo umoci
      python3 python3-venv util-linux iproute2)

if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  # rootless tests run as this user; useradd gives it /etc/subuid and /etc/subgid ranges
  if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$TEST_USER"
  fi
  uid=$(id -u "$TEST_USER")
  grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids 200000-265535 "$TEST_USER"
  grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids 200000-265535 "$TEST_USER"
elif [ "$(id -u)" != 0 ]; then
  echo "setup-host: not root: using the packages already installed (root-only tests will skip)" >&2
fi

# the rootless tests run crate-runc as $TEST_USER: when that user cannot reach this checkout
# (a clone under /root, say), the venv lives where it can and .venv points there
if [ "$(id -u)" = 0 ] && [ ! -e "$VENV" ] && id -u "$TEST_USER" >/dev/null 2>&1 &&
   ! setpriv --reuid "$TEST_USER" --regid "$TEST_USER" --clear-groups sh -c "cd '$(pwd)'" 2>/dev/null; then
  real=/var/tmp/crate-venv-$(pwd | sha256sum | cut -c1-12)
  mkdir -p "$real"
  ln -s "$real" "$VENV"
  echo "setup-host: $TEST_USER cannot reach $(pwd): the venv is $real" >&2
fi
VENV=$(readlink -f "$VENV")  # console scripts get this interpreter path in their #! line
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 || true
# a regular (not editable) install: the console scripts then start without import hooks
"$VENV/bin/python" -m pip install -q --disable-pip-version-check '.[test]' >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >&2
# setuptools is only needed to build (pip builds in an isolated environment); in the venv its
# distutils-precedence.pth costs every Python start ~0.7 ms, crate-runc's included
"$VENV/bin/python" -m pip uninstall -q -y setuptools >&2 2>/dev/null || true
