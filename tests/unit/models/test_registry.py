from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelLoadError
from models.registry import ARTIFACT_FILE, ARTIFACTS_ROOT, SIDECAR_FILE, load_model
from models.scoring import Scorer, _FlatForest
from streams.errors import UrbanSensingError

SHIPPED = ARTIFACTS_ROOT / "traffic" / "1"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    assert (SHIPPED / ARTIFACT_FILE).is_file(), "shipped traffic model missing; run `make models`"
    dest = tmp_path / "traffic" / "1"
    shutil.copytree(SHIPPED, dest)
    return dest


def _edit_sidecar(path: Path, **changes: object) -> None:
    doc = json.loads((path / SIDECAR_FILE).read_text())
    doc.update(changes)
    (path / SIDECAR_FILE).write_text(json.dumps(doc))


def test_loads_shipped_model_and_scores(artifact: Path) -> None:
    model = load_model(artifact)
    out = Scorer(model).score(np.random.default_rng(0).normal(size=(100, 7)))
    assert out.score.shape == (100,)
    assert np.all((out.score >= 0) & (out.score <= 1))
    assert out.model_version == "traffic/1"
    assert len(out.top_features) == 100


def test_flat_forest_matches_sklearn(artifact: Path) -> None:
    est = load_model(artifact).estimator
    x = np.random.default_rng(1).normal(0, 3, (2000, 7))
    assert np.allclose(_FlatForest(est).score_samples(x), est.score_samples(x), atol=1e-12)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: (p / ARTIFACT_FILE).unlink(), "file is missing"),
        (lambda p: (p / SIDECAR_FILE).write_text("{not json"), "not valid JSON"),
        (lambda p: (p / ARTIFACT_FILE).write_bytes((p / ARTIFACT_FILE).read_bytes() + b"x"), "sha256 mismatch"),
        (lambda p: _edit_sidecar(p, feature_names=["a", "b"]), "feature order"),
        (lambda p: _edit_sidecar(p, feature_schema_version="0"), "feature schema version"),
        (lambda p: _edit_sidecar(p, sklearn_version="0.1"), "scikit-learn version"),
    ],
)
def test_refuses_bad_artifacts(artifact: Path, mutate, match: str) -> None:  # noqa: ANN001
    mutate(artifact)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(artifact)
    assert str(artifact) in str(info.value)
    assert isinstance(info.value, UrbanSensingError)


def test_refuses_untrusted_types(artifact: Path) -> None:
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from models.registry import sha256_of

    sio.dump(Pipeline([("f", FunctionTransformer(math.sqrt))]), artifact / ARTIFACT_FILE)
    _edit_sidecar(artifact, artifact_sha256=sha256_of(artifact / ARTIFACT_FILE))
    with pytest.raises(ModelLoadError, match=r"untrusted types.*math\.sqrt"):
        load_model(artifact)


def test_refuses_wrong_estimator_type(artifact: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import StandardScaler

    from models.registry import sha256_of

    sio.dump(StandardScaler(), artifact / ARTIFACT_FILE)
    _edit_sidecar(artifact, artifact_sha256=sha256_of(artifact / ARTIFACT_FILE))
    with pytest.raises(ModelLoadError, match="estimator type"):
        load_model(artifact)
