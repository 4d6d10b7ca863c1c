"""The clustering experiment runs at a tiny size and writes a complete Dataset and figure."""

import json

import numpy as np
import xarray as xr

from experiments import clustering
from meanfield.io import write_atomic


def test_clustering_tiny(tmp_path):
    cfg = clustering.Config(n=12, t1=12.0, n_save=7)
    ds = clustering.run(cfg)
    assert ds.x.dims == ("time", "token", "dim") and ds.x.shape == (7, 12, 3)
    for name in ["energy", "diameter", "min_cosine", "mean_cosine", "n_clusters", "rank_collapse", "effective_rank"]:
        assert ds[name].dims == ("time",)
    assert json.loads(ds.attrs["config"])["n"] == 12 and ds.attrs["seed"] == 0 and "meanfield_version" in ds.attrs
    # the physics: collapse (diameter decays, one cluster at the end)
    assert ds.diameter.values[-1] < 1e-2 * ds.diameter.values[0]
    assert int(ds.n_clusters.values[-1]) == 1
    path = write_atomic(ds, tmp_path / "result.nc")
    back = xr.load_dataset(path)
    np.testing.assert_array_equal(back.x.values, ds.x.values)
    assert back.attrs["config"] == ds.attrs["config"]
    png = clustering.plot(ds, tmp_path)
    assert png.exists() and png.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_main_entry_point(tmp_path, capsys):
    clustering.main(["--out", str(tmp_path), "--n", "8", "--t1", "2", "--n-save", "3", "--mask", "causal"])
    assert (tmp_path / "result.nc").exists() and (tmp_path / "clustering.png").exists()
    assert "wrote" in capsys.readouterr().out
