# Sourced by scripts/gpu_check.sh and scripts/gpu_scale.sh (run from the repository root, PY set): installs the
# carried wheels (.whl/, scripts/gpu_wheels.sh) once per machine into /tmp/paperzoo_site (a marker file records the
# installed wheel list, so a second script in the same command skips it) and puts that folder and the checkout on
# PYTHONPATH.
SITE=/tmp/paperzoo_site
if compgen -G ".whl/*.whl" > /dev/null; then
  wheels=$(ls .whl/*.whl)
  if [[ "$(cat "$SITE/.installed" 2>/dev/null)" != "$wheels" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl || { echo "installing the carried wheels failed" >&2; exit 2; }
    echo "$wheels" > "$SITE/.installed"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
