# Sourced by setup.sh, main.sh and test.sh: the Python they use, exported as PYTHON.
#   $PYTHON if set; else ./.venv when one is here; else python3, unless it is a system Python that
#   refuses pip installs (PEP 668 "externally managed", e.g. Debian's): then a ./.venv made from it.
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PYTHON=$PWD/.venv/bin/python
  elif python3 -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'; then
    echo "setup: $(command -v python3) is externally managed (PEP 668): creating ./.venv for dery_deploy"
    if ! python3 -m venv .venv; then
      echo "setup: python3 -m venv failed: install it (sudo apt-get install python3-venv) and rerun" >&2
      rm -rf .venv
      exit 1
    fi
    PYTHON=$PWD/.venv/bin/python
  else
    PYTHON=python3
  fi
fi
export PYTHON
