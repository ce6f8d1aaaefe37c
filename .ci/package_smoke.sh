#!/usr/bin/env bash
# The package as a user gets it: `python -m build` writes the sdist and builds the wheel from it; the wheel is then
# installed in a fresh virtual environment (PyTorch first: a plain `torch` requirement would download a CUDA build)
# and run from outside the source tree: import, `pengster --version`, one epoch of training on synthetic data and
# the results written. The sdist is installed into the same environment and imported too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
TORCH="${TORCH:-torch==2.13.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
# The dependencies at the versions the project's own environment runs the tests with, when there is one (make setup):
# pip then resolves nothing and reuses its cache; without it, pip resolves the wheel's requirements afresh.
constraints=()
if [ -x .venv/bin/pip ]; then
  .venv/bin/pip freeze --exclude-editable | grep -v -E '^(pengster|torch)[= @]' > "$work/constraints.txt"
  constraints=(--constraint "$work/constraints.txt")
fi

# the builder: the project's environment (its test extra has build and hatchling), else a throwaway one
if .venv/bin/python -c "import build, hatchling" 2> /dev/null; then
  builder=(.venv/bin/python -m build --no-isolation)
else
  "$PYTHON" -m venv "$work/build-env"
  "$work/build-env/bin/pip" install --quiet "build>=1"
  builder=("$work/build-env/bin/python" -m build)
fi
"${builder[@]}" --outdir "$work/dist" . > "$work/build.log" || { cat "$work/build.log"; exit 1; }
wheel=("$work"/dist/pengster-*.whl)
sdist=("$work"/dist/pengster-*.tar.gz)
echo "package_smoke: built $(basename "${sdist[0]}") ($(du -k "${sdist[0]}" | cut -f1) KiB) and $(basename "${wheel[0]}")"

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$TORCH"
"$work/venv/bin/pip" install --quiet "${constraints[@]}" "${wheel[0]}"
echo "package_smoke: wheel installed in a fresh venv after $((SECONDS - start)) s"

cd "$work"  # away from the source tree, so that only the installed package can be imported
"$work/venv/bin/pengster" --version
PENGSTER_SMOKE_DIR="$work/smoke" OMP_NUM_THREADS=1 "$work/venv/bin/python" - <<'PY'
import os
from pathlib import Path

import numpy as np

import pengster

assert Path(pengster.__file__).is_relative_to(Path(os.environ["PENGSTER_SMOKE_DIR"]).parent / "venv"), pengster.__file__
mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 120, "cite": 120}, n_genes=60, n_peaks=80, n_proteins=8)
pengster.model.JointVAE.setup_mudata(
    mdata,
    rna_layer="counts",
    atac_layer="counts",
    protein_layer="counts",
    batch_key="batch",
    modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"},
)
model = pengster.model.JointVAE(mdata, n_latent=5)
model.train(max_epochs=1, enable_progress_bar=False)
assert model.is_trained
pengster.tl.write_results(model, mdata)
latent = mdata.obsm["X_pengster"]
assert latent.shape == (mdata.n_obs, 5) and np.isfinite(latent).all()
model.save(os.environ["PENGSTER_SMOKE_DIR"], save_anndata=False)
loaded = pengster.model.JointVAE.load(os.environ["PENGSTER_SMOKE_DIR"], adata=mdata)
np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
print(f"package_smoke: pengster {pengster.__version__} from the wheel trained one epoch on {mdata.n_obs} cells")
PY

"$work/venv/bin/pip" install --quiet --no-deps --force-reinstall "${sdist[0]}"
"$work/venv/bin/python" -c "import pengster; print(f'package_smoke: pengster {pengster.__version__} installed from the sdist')"
echo "package_smoke: passed in $((SECONDS - start)) s"
