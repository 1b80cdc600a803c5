"""Safe loading and saving of model artifacts: ``models/artifacts/<kind>/<version>/``.

An artifact directory holds ``model.skops`` (written with :mod:`skops.io`, never plain pickle) and
``sidecar.json`` (feature order, scikit-learn version, data fingerprint, calibration, metrics and the
artifact's sha256). :func:`load_model` checks everything before returning; any mismatch raises
:class:`~models.errors.ModelLoadError` naming the file and what did not match. There is no fallback.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from numpy.typing import NDArray

from models.errors import ModelLoadError
from models.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION

logger = logging.getLogger(__name__)

__all__ = ["ARTIFACT_FILE", "SIDECAR_FILE", "TRUSTED_TYPES", "LoadedModel", "load_model", "save_model", "sha256_of"]

ARTIFACT_FILE = "model.skops"
SIDECAR_FILE = "sidecar.json"
ARTIFACTS_ROOT = Path(__file__).resolve().parent / "artifacts"
#: The only types a model file may contain besides skops' built-in safe set.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "builtins.int",
    "numpy.int64",
    "numpy.float64",
    "numpy.dtype",
    "numpy.ndarray",
)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model with its sidecar."""

    kind: str
    version: str
    estimator: Any
    sidecar: dict[str, Any]
    path: Path

    @property
    def calibration(self) -> NDArray[np.float64]:
        """Raw-score quantiles at 0, 1, ..., 100 % of the training data (for the empirical CDF)."""
        return np.asarray(self.sidecar["calibration"]["raw_quantiles"], dtype=np.float64)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(estimator: Any, sidecar: dict[str, Any], out_dir: Path) -> Path:
    """Write ``model.skops`` and ``sidecar.json`` (with the artifact's sha256) into ``out_dir``."""
    import skops.io as sio

    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / ARTIFACT_FILE
    sio.dump(estimator, artifact)
    doc = dict(sidecar)
    doc["artifact_sha256"] = sha256_of(artifact)
    (out_dir / SIDECAR_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    logger.info("model saved path=%s sha256=%s", artifact, doc["artifact_sha256"])
    return out_dir


def _fail(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"model artifact {path}: {what}")


def load_model(path: Path) -> LoadedModel:
    """Load and verify an artifact directory (or ``ARTIFACTS_ROOT/<kind>/<version>``).

    Checks, in order: both files exist; the sidecar parses and has the required keys; the artifact's
    sha256 equals the sidecar's; the feature schema version and feature order equal this code's; the
    scikit-learn version equals the running one; the file holds only :data:`TRUSTED_TYPES`.

    Raises:
        ModelLoadError: naming the file and the mismatch.
    """
    import skops.io as sio

    artifact, sidecar_path = path / ARTIFACT_FILE, path / SIDECAR_FILE
    for f in (artifact, sidecar_path):
        if not f.is_file():
            raise _fail(f, "file is missing")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(sidecar_path, f"sidecar is not valid JSON ({exc})") from exc
    required = (
        "kind",
        "version",
        "feature_schema_version",
        "feature_names",
        "sklearn_version",
        "artifact_sha256",
        "calibration",
    )
    missing = [k for k in required if k not in sidecar]
    if missing:
        raise _fail(sidecar_path, f"sidecar lacks keys {missing}")
    digest = sha256_of(artifact)
    if digest != sidecar["artifact_sha256"]:
        raise _fail(artifact, f"sha256 mismatch: sidecar expects {sidecar['artifact_sha256']}, file has {digest}")
    if str(sidecar["feature_schema_version"]) != FEATURE_SCHEMA_VERSION:
        raise _fail(
            sidecar_path,
            f"feature schema version: expected {FEATURE_SCHEMA_VERSION}, " f"got {sidecar['feature_schema_version']}",
        )
    if tuple(sidecar["feature_names"]) != FEATURE_NAMES:
        raise _fail(sidecar_path, f"feature order: expected {list(FEATURE_NAMES)}, got {sidecar['feature_names']}")
    if sidecar["sklearn_version"] != sklearn.__version__:
        raise _fail(
            sidecar_path,
            f"scikit-learn version: expected {sidecar['sklearn_version']}, " f"running {sklearn.__version__}",
        )
    try:
        untrusted = sio.get_untrusted_types(file=artifact)
        extra = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if extra:
            raise _fail(artifact, f"untrusted types in model file: {extra}")
        estimator = sio.load(artifact, trusted=[t for t in untrusted if t in TRUSTED_TYPES])
    except ModelLoadError:
        raise
    except Exception as exc:  # skops raises many types for corrupt files; report them all the same way
        raise _fail(artifact, f"cannot load ({type(exc).__name__}: {exc})") from exc
    expected_cls = "sklearn.ensemble._iforest.IsolationForest"
    got_cls = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if got_cls != expected_cls:
        raise _fail(artifact, f"estimator type: expected {expected_cls}, got {got_cls}")
    cal = sidecar["calibration"].get("raw_quantiles")
    if not isinstance(cal, list) or len(cal) < 2:
        raise _fail(sidecar_path, "calibration.raw_quantiles: expected a list of at least 2 numbers")
    logger.info("model loaded kind=%s version=%s path=%s", sidecar["kind"], sidecar["version"], path)
    return LoadedModel(str(sidecar["kind"]), str(sidecar["version"]), estimator, sidecar, path)
