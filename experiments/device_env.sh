# Sourced by the GPU scripts in experiments/: makes the source tree importable on a machine without network.
# - timm: installed from wheels carried in .whl/ when the Python at hand lacks it;
# - PYTHONPATH: the carried wheels (if any), then src/;
# - Fashion-MNIST: the IDX files carried in .carry/fashion-mnist/ are exposed through $SRET_FASHION_MNIST.
PY=${PYTHON:-python3}
if ! $PY -c "import timm" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
if [ -z "${SRET_FASHION_MNIST:-}" ] && [ -d .carry/fashion-mnist ]; then
  export SRET_FASHION_MNIST=$PWD/.carry/fashion-mnist
fi
